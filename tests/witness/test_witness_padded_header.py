"""A bundle header padded with an unsigned ``receipts`` member is refused at intake,
before it is verified (SPEC §12.9): checked token by token before its signature can
be, a 64 MiB one of ``1e+21`` took the witness 33 s, and every other submission waited
for it, whoever sent it and with whatever signature."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient
from witness_helpers import (
    MAX_HEADER_BYTES,
    ORIGIN,
    FakeClock,
    header_size,
    make_bundle,
    padded,
    trace_id,
)

from spanproof.verifier.keys import TrustRoot
from spanproof.witness import service
from spanproof.witness.app import create_app
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


def tiny_values(size: int) -> bytes:
    """A JSON array of about *size* bytes of ``1e+21``, the slowest to check."""
    return b"[" + b"1e+21," * (size // 6) + b"1e+21]"


@pytest.fixture
def witness(tmp_path: Path, witness_private: Ed25519PrivateKey,
            producer_trust: TrustRoot) -> Iterator[Witness]:
    store = Store(str(tmp_path / "w.db"))
    try:
        yield Witness(store, CheckpointSigner(witness_private, ORIGIN),
                      producer_trust=producer_trust, clock=FakeClock())
    finally:
        store.close()


@pytest.fixture
def client(witness: Witness) -> TestClient:
    # A --max-body the padded bundles are well under: only their header is refused.
    return TestClient(create_app(witness, max_body=8 << 20))


@pytest.fixture
def unverified(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fails a test that verifies a bundle; the list counts the bundles verified."""
    calls: list[int] = []

    def refused(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise AssertionError("the padded bundle was verified")

    monkeypatch.setattr(service, "check_bundle", refused)
    return calls


@pytest.mark.parametrize("path", ["/v1/submit", "/v1/check"])
def test_a_header_padded_past_1_mib_is_refused_before_it_is_verified(
    witness: Witness, client: TestClient, unverified: list[int], path: str,
) -> None:
    data = padded(make_bundle(trace_id(1)).data, tiny_values(3 << 20))
    resp = client.post(path, content=data)
    assert resp.status_code == 413, resp.text[:300]
    line = data.index(b"\n") + 1
    assert resp.json()["error"] == (
        f"bundle: its header line is {line} bytes, and this witness "
        f"takes a bundle header of at most {MAX_HEADER_BYTES} bytes (it is checked "
        "before its signature is); send the bundle's DSSE envelope alone")
    assert unverified == [] and witness.size == 0


def test_a_header_of_1_mib_is_taken_and_one_byte_more_is_not(
    witness: Witness, client: TestClient,
) -> None:
    data = make_bundle(trace_id(2)).data
    fill = MAX_HEADER_BYTES - header_size(padded(data, b'""'))
    at_most = padded(data, b'"' + b"x" * fill + b'"')
    over = padded(data, b'"' + b"x" * (fill + 1) + b'"')
    assert header_size(at_most) == MAX_HEADER_BYTES == header_size(over) - 1
    assert client.post("/v1/submit", content=over).status_code == 413
    assert witness.size == 0
    resp = client.post("/v1/submit", content=at_most)
    assert resp.status_code == 201, resp.text[:300]
    # Its receipts member is not the witness's to check: logged as the bundle it is.
    assert witness.lookup(index=0)[0][0].checked == "bundle"


def test_a_batch_holding_a_padded_header_is_refused_whole_unverified(
    witness: Witness, client: TestClient, unverified: list[int],
) -> None:
    # Refused whole, as a batch over --max-body is: both submitters then send each
    # submission alone, and that one, answered 413 again, as its envelope alone.
    genuine = make_bundle(trace_id(3)).data
    data = padded(make_bundle(trace_id(4)).data, tiny_values(2 << 20))
    body = json.dumps({"submissions": [base64.b64encode(d).decode()
                                       for d in (genuine, data)]})
    resp = client.post("/v1/submit-batch", content=body)
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"].startswith("batch submission 1: its header line is ")
    assert unverified == [] and witness.size == 0
