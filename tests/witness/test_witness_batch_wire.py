"""The submitting side of ``POST /v1/submit-batch`` (``spanproof.verifier._batch``),
which the producer's submitter and ``spanproof witness submit`` share, against the
witness's own reading of requests and writing of answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, make_bundle, trace_id, write_bundle

from spanproof.verifier import errors
from spanproof.verifier._batch import batch_receipt, batch_request, batch_results
from spanproof.verifier.keys import TrustRoot
from spanproof.witness import app as witness_app
from spanproof.witness.service import SubmitResult, Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


@pytest.fixture
def witness(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> Iterator[Witness]:
    store = Store(str(tmp_path / "witness.db"))
    yield Witness(store, CheckpointSigner(witness_private, ORIGIN),
                  producer_trust=producer_trust, clock=FakeClock())
    store.close()


def test_a_request_reads_back_as_the_submissions_sent() -> None:
    submissions = [b"first", b"\x00\xff binary", b"{}"]
    assert witness_app._batch_bodies(batch_request(submissions)) == submissions


def test_an_answer_gives_each_result_and_its_receipt_file_bytes(
    tmp_path: Path, witness: Witness
) -> None:
    good = [write_bundle(tmp_path, make_bundle(trace_id(n))).read_bytes() for n in range(2)]
    logged = witness.submit_batch([good[0], b"not a bundle", good[1]])
    answer = json.dumps({"results": [witness_app._batch_result(r) for r in logged]}).encode()
    results = batch_results(answer, 3)
    assert [r["status"] for r in results] == [201, 400, 201]
    for result, done in zip((results[0], results[2]), (logged[0], logged[2]), strict=True):
        assert isinstance(done, SubmitResult)
        assert batch_receipt(result) == done.receipt.to_bytes()  # as /v1/submit answers


@pytest.mark.parametrize(("answer", "why"), [
    (b"not json", "no results"),
    (b'{"result": []}', "no results"),
    (b'{"results": {}}', "2 results expected"),
    (b'{"results": [{"status": 201, "receipt": {}}]}', "2 results expected"),
    (b'{"results": [{"status": "201", "receipt": {}}, {"status": 400, "error": ""}]}',
     "without a status"),
    (b'{"results": [{"status": true, "receipt": {}}, {"status": 400, "error": ""}]}',
     "without a status"),
    (b'{"results": [{"status": 201}, {"status": 400, "error": ""}]}', "without its receipt"),
    (b'{"results": [{"status": 201, "receipt": {}}, {"status": 422}]}', "without its reason"),
    # Python's own message for it says to raise the interpreter's digit limit.
    (b'{"results": [' + b"1" * 5000 + b"]}", r"integer literal too long \(over 4300 digits\)"),
])
def test_an_answer_that_is_not_one_result_each_is_refused(answer: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        batch_results(answer, 2)


@pytest.mark.parametrize("change", [
    lambda r: r.pop("checkpoint"),
    lambda r: r.update(leafIndex=3),
    lambda r: r.update(extra="field"),
], ids=["no-checkpoint", "number-index", "unknown-field"])
def test_a_result_whose_receipt_is_malformed_gives_no_receipt_file(
    tmp_path: Path, witness: Witness, change: Any
) -> None:
    (done,) = witness.submit_batch([write_bundle(tmp_path, make_bundle(trace_id(1))).read_bytes()])
    result = witness_app._batch_result(done)
    change(result["receipt"])
    with pytest.raises(errors.InvalidReceipt):
        batch_receipt(result)


def test_answers_nested_too_deeply_are_malformed_answers_not_crashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # json.loads raises RecursionError, not ValueError: `witness submit` and
    # `monitor` died with "unexpected RecursionError", the rest unprocessed.
    from spanproof.witness.client import MalformedAnswer, Response, TransportError, WitnessClient

    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="RecursionError"):
        batch_results(b'{"results":' + deep + b"}", 1)
    client = WitnessClient("http://127.0.0.1:9")

    def answer(*args: Any, **kwargs: Any) -> Response:
        return Response(200, {}, b'{"proof":' + deep + b"}")

    monkeypatch.setattr(client, "request", answer)
    with pytest.raises(TransportError, match="not JSON") as malformed:
        client.consistency_proof(1, 2)
    # Not JSON is no answer of the witness's (a proxy's page reads the same), so
    # the monitor takes it for unavailability, not a refusal to prove.
    assert not isinstance(malformed.value, MalformedAnswer)
