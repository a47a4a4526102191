"""End to end over real HTTP (uvicorn on 127.0.0.1, the stdlib client): submit,
resubmit, conflict, look-ups, and proofs that verify against signed checkpoints."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, make_bundle, trace_id, write_bundle

from spanproof.verifier.checkpoint import WitnessKey, check_consistent, verify_checkpoint
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.merkle import verify_inclusion
from spanproof.verifier.receipt import verify_receipt
from spanproof.verifier.verify import check_bundle
from spanproof.witness.client import HTTPStatusError, MalformedAnswer, WitnessClient
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


def test_witness_over_http(
    tmp_path: Path,
    witness_private: Ed25519PrivateKey,
    producer_trust: TrustRoot,
    serve_witness: Any,
) -> None:
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(
        store,
        CheckpointSigner(witness_private, ORIGIN),
        producer_trust=producer_trust,
        clock=FakeClock(),
    )
    srv = serve_witness(witness)
    client = WitnessClient(srv.url, timeout=10)
    keys = [WitnessKey.from_vkey(json.loads(client.request("GET", "/v1/info").body)["vkey"])]
    try:
        paths = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(5)]
        receipts = []
        for path in paths:
            resp = client.submit(path.read_bytes())
            assert resp.status == 201
            receipts.append(resp.body)
        again = client.submit(paths[1].read_bytes())
        assert again.status == 200 and again.headers["spanproof-leaf-index"] == "1"
        conflicting = make_bundle(trace_id(2), name="another story")
        resp = client.submit(conflicting.data)
        assert resp.status == 201 and resp.headers["spanproof-conflict"] == "true"

        latest = verify_checkpoint(client.checkpoint(), keys, origin=ORIGIN)
        assert latest.size == 6
        doc = client.lookup(trace=trace_id(2))
        assert [(e["index"], e["conflict"]) for e in doc["entries"]] == [("2", True), ("5", True)]
        assert client.lookup(digest=conflicting.statement_digest)["entries"][0]["index"] == "5"
        paged = client.lookup(trace=trace_id(2), limit=1)
        assert ([e["index"] for e in paged["entries"]], paged["next"]) == (["2"], "2")
        assert [e["index"] for e in client.lookup_entries(trace=trace_id(2), limit=1)] \
            == ["2", "5"]

        for i, (path, receipt) in enumerate(zip(paths, receipts, strict=True)):
            verified = verify_receipt(receipt, check_bundle(path, producer_trust), keys)
            old = verified.checkpoint.checkpoint
            proof = client.consistency_proof(old.size, latest.size) if old.size < 6 else []
            check_consistent(old, latest.checkpoint, proof)
            inclusion = client.inclusion_proof(i, latest.size)
            verify_inclusion(verified.leaf_hash, i, latest.size, inclusion, latest.root)
        for size in range(7):
            note = client.checkpoint(size)
            assert verify_checkpoint(note, keys).size == size

        tampered = paths[0].read_bytes().replace(b"step 1", b"step X")
        try:
            client.submit(tampered)
        except HTTPStatusError as e:
            assert e.status == 422 and e.body["report"]["verdict"] == "FAIL"
        else:
            raise AssertionError("a tampered bundle was accepted")
        assert base64.b64decode(doc["entries"][0]["receipt"]["inclusionProof"][0])
    finally:
        srv.stop()
        store.close()


@pytest.mark.parametrize("pages", [
    [{"entries": [{"index": "3"}], "next": "3"}, {"entries": [{"index": "3"}], "next": "3"}],
    [{"entries": [{"index": "3"}], "next": "2"}],
    [{"entries": [], "next": "9"}],
    [{"entries": [{"index": "3"}], "next": 3}],
    [{"next": "3"}],
], ids=["repeats", "goes-back", "empty-page-with-next", "next-not-a-string", "no-entries"])
def test_lookup_entries_stops_at_pages_that_do_not_go_forward(
    pages: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A witness (or what answers in its place) whose pages never end must not keep
    # the reader looping.
    client = WitnessClient("http://127.0.0.1:9", timeout=1)
    answers = iter(pages)
    monkeypatch.setattr(client, "lookup", lambda **query: next(answers))
    with pytest.raises(MalformedAnswer):
        list(client.lookup_entries(trace=trace_id(1)))
