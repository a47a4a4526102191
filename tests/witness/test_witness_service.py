"""The witness service through its HTTP API (Starlette TestClient, no sockets)."""

from __future__ import annotations

import base64
import dataclasses
import gc
import json
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from odd_keys import unknown_type_public_der
from starlette.testclient import TestClient
from witness_helpers import (
    INSTANCE,
    ORIGIN,
    OTHER_PRODUCER_SEED,
    OTHER_WITNESS_SEED,
    PRODUCER_SEED,
    SEALED_AT,
    FakeClock,
    body,
    make_bundle,
    trace_id,
    write_bundle,
)

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.checkpoint import WitnessKey, verify_checkpoint
from spanproof.verifier.errors import TransportError
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.merkle import leaf_hash, verify_consistency, verify_inclusion
from spanproof.verifier.receipt import WitnessLeaf, verify_receipt
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.verify import check_bundle
from spanproof.witness.app import create_app
from spanproof.witness.service import LogCorrupted, Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Entry, Store, StoredCheckpoint

BUNDLE_TYPE = {"Content-Type": "application/vnd.spanproof.bundle.v1+json"}


class Harness:
    """A witness on a database file, reopenable like a restart."""

    def __init__(self, db: Path, key: Ed25519PrivateKey, trust: TrustRoot | None) -> None:
        self.db, self.key, self.trust = db, key, trust
        self.store: Store | None = None
        self.open()

    def open(self, *, key: Ed25519PrivateKey | None = None, origin: str = ORIGIN) -> None:
        self.store = Store(str(self.db))
        try:
            self.witness = Witness(
                self.store,
                CheckpointSigner(key or self.key, origin),
                producer_trust=self.trust,
                clock=FakeClock(),
            )
        except BaseException:
            self.store.close()
            raise
        self.client = TestClient(create_app(self.witness, max_body=1 << 20))

    def close(self) -> None:
        assert self.store is not None
        self.store.close()

    @property
    def keys(self) -> list[WitnessKey]:
        return [WitnessKey.from_pem(self.witness.signer.key.public_pem())]

    def submit(self, data: bytes, headers: dict[str, str] | None = None) -> Any:
        return self.client.post(
            "/v1/submit", content=data, headers={**BUNDLE_TYPE, **(headers or {})}
        )


@pytest.fixture
def harness(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> Iterator[Harness]:
    h = Harness(tmp_path / "w.db", witness_private, producer_trust)
    yield h
    h.close()


def _bundles(tmp_path: Path, n: int, start: int = 0) -> list[Path]:
    return [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(start, start + n)]


def test_submit_returns_a_receipt_that_verifies_offline(
    harness: Harness, tmp_path: Path, producer_trust: TrustRoot
) -> None:
    paths = _bundles(tmp_path, 3)
    for i, path in enumerate(paths):
        resp = harness.submit(path.read_bytes())
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"] == "application/vnd.spanproof.receipt.v1+json"
        assert resp.headers["spanproof-leaf-index"] == str(i)
        assert resp.headers["spanproof-conflict"] == "false"
        verified = verify_receipt(resp.content, check_bundle(path, producer_trust), harness.keys)
        assert (verified.leaf_index, verified.tree_size) == (i, i + 1)


def test_resubmission_is_idempotent_with_a_fresh_receipt(
    harness: Harness, tmp_path: Path, producer_trust: TrustRoot
) -> None:
    a, b = _bundles(tmp_path, 2)
    harness.submit(a.read_bytes())
    harness.submit(b.read_bytes())
    again = harness.submit(a.read_bytes())
    assert again.status_code == 200
    receipt = json.loads(again.content)
    assert (receipt["leafIndex"], receipt["treeSize"]) == ("0", "2")
    verify_receipt(again.content, check_bundle(a, producer_trust), harness.keys)
    assert harness.witness.size == 2


def test_conflicting_statement_is_logged_and_flagged(harness: Harness, tmp_path: Path) -> None:
    trace = trace_id(7)
    first = make_bundle(trace, name="approve refund")
    second = make_bundle(trace, name="deny refund")  # same trace, segment, instance
    assert first.statement_digest != second.statement_digest
    r1 = harness.submit(first.data)
    assert r1.headers["spanproof-conflict"] == "false"
    r2 = harness.submit(second.data)
    assert r2.status_code == 201 and r2.headers["spanproof-conflict"] == "true"
    doc = harness.client.get("/v1/lookup", params={"trace": trace}).json()
    assert [(e["index"], e["conflict"]) for e in doc["entries"]] == [("0", True), ("1", True)]
    # Another producer instance sealing the same trace is not a conflict.
    other = make_bundle(trace_id(8), instance="aaaaaaaaaaaaaaaa")
    harness.submit(other.data)
    assert (
        harness.client.get("/v1/lookup", params={"trace": trace_id(8)}).json()["entries"][0][
            "conflict"
        ]
        is False
    )


def test_lookups(harness: Harness, tmp_path: Path) -> None:
    sealed = make_bundle(trace_id(3))
    harness.submit(make_bundle(trace_id(2)).data)
    harness.submit(sealed.data)
    by_trace = harness.client.get("/v1/lookup", params={"trace": trace_id(3)}).json()
    by_digest = harness.client.get("/v1/lookup", params={"digest": sealed.statement_digest}).json()
    by_index = harness.client.get("/v1/lookup", params={"index": "1"}).json()
    for doc in (by_trace, by_digest, by_index):
        (entry,) = doc["entries"]
        assert entry["index"] == "1" and entry["statementDigest"] == sealed.statement_digest
        assert entry["traceId"] == trace_id(3) and entry["segment"] == "0"
        assert entry["producerInstance"] == INSTANCE and entry["producerKey"] == "pinned"
        assert entry["checked"] == "bundle" and entry["conflict"] is False
        assert {c["status"] for c in entry["submissionChecks"]} == {"PASS"}
        assert doc["treeSize"] == "2" and doc["origin"] == ORIGIN
    assert harness.client.get("/v1/lookup", params={"trace": trace_id(9)}).json()["entries"] == []
    for bad in ({}, {"trace": "XYZ"}, {"digest": "md5:00"}, {"trace": trace_id(1), "index": "0"}):
        assert harness.client.get("/v1/lookup", params=bad).status_code == 400
    receipt = harness.client.get("/v1/receipt", params={"digest": sealed.statement_digest})
    assert receipt.status_code == 200 and json.loads(receipt.content)["leafIndex"] == "1"
    assert harness.client.get("/v1/receipt", params={"index": "5"}).status_code == 404


def test_a_lookup_s_tree_size_is_its_receipts_with_an_append_in_between(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer's treeSize and checkpoint were read again after its receipts: an
    # append between the two made them another checkpoint's than the receipts'.
    witness = harness.witness
    harness.submit(make_bundle(trace_id(30)).data)
    for name in ("lookup", "_lookup"):  # where the entries are found, whichever
        found = getattr(witness, name, None)
        if found is None:
            continue

        def then_append(*args: Any, _found: Any = found, **kwargs: Any) -> Any:
            result = _found(*args, **kwargs)
            witness.submit(make_bundle(trace_id(31 + witness.size)).data, None)
            return result

        monkeypatch.setattr(witness, name, then_append)
    doc = witness.lookup_json(trace=trace_id(30))
    (entry,) = doc["entries"]
    assert witness.size == 2  # the append came in between
    assert doc["treeSize"] == entry["receipt"]["treeSize"] == "1"
    assert doc["checkpoint"] == entry["receipt"]["checkpoint"]


def _page(harness: Harness, **params: str) -> tuple[list[str], str | None]:
    resp = harness.client.get("/v1/lookup", params=params)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    return [e["index"] for e in doc["entries"]], doc.get("next")


def test_a_trace_lookup_is_answered_in_pages(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every entry of a trace came in one answer: in a log open to any producer key,
    # anyone could make a trace's look-up as large as they liked.
    trace = trace_id(20)
    for name in ("a", "b", None, "c", "d", "e"):
        sealed = make_bundle(trace_id(21)) if name is None else make_bundle(trace, name=name)
        assert harness.submit(sealed.data).status_code == 201
    assert _page(harness, trace=trace, limit="2") == (["0", "1"], "1")
    assert _page(harness, trace=trace, limit="2", after="1") == (["3", "4"], "4")
    assert _page(harness, trace=trace, limit="2", after="4") == (["5"], None)
    assert _page(harness, trace=trace, limit="2", after="3") == (["4", "5"], None)
    assert _page(harness, trace=trace, after="5") == ([], None)
    assert _page(harness, trace=trace) == (["0", "1", "3", "4", "5"], None)
    from spanproof.witness import app

    monkeypatch.setattr(app, "LOOKUP_PAGE_ENTRIES", 3)  # the page without limit=
    assert _page(harness, trace=trace) == (["0", "1", "3"], "3")
    for bad in ({"limit": "0"}, {"limit": "4"}, {"after": "-1"}, {"after": "x"}):
        resp = harness.client.get("/v1/lookup", params={"trace": trace, **bad})
        assert resp.status_code == 400, bad
    for paged in ({"after": "0"}, {"limit": "1"}):
        resp = harness.client.get("/v1/lookup", params={"index": "0", **paged})
        assert resp.status_code == 400
        assert resp.json()["error"] == "after= and limit= page a trace= or digest= look-up"


def test_a_digest_lookup_is_paged_and_a_shared_digest_has_no_single_receipt(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    h = Harness(tmp_path / "open.db", witness_private, None)
    try:
        keys = [SigningKey.from_seed(seed) for seed in (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)]
        digests = set()
        for key in keys:  # one statement, signed by three keys: three entries
            sealed = make_bundle(trace_id(22), key=key)
            digests.add(sealed.statement_digest)
            der = key.private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            header = {"Spanproof-Public-Key": base64.b64encode(der).decode()}
            assert h.submit(sealed.data, header).status_code == 201
        (digest,) = digests
        assert _page(h, digest=digest, limit="2") == (["0", "1"], "1")
        assert _page(h, digest=digest, after="1") == (["2"], None)
        resp = h.client.get("/v1/receipt", params={"digest": digest})
        assert resp.status_code == 409
        assert resp.json()["error"] == (
            "several entries have this digest (other signers); use index=")
    finally:
        h.close()


def test_submissions_and_checks_are_verified_one_at_a_time(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A line of tiny JSON values takes ~30 times its size while it is parsed, before
    # it can fail (a 60 MB line ~2 GB): the 8 requests the app reads at once were
    # verified side by side, and 8 hostile submissions took the witness to ~15 GB.
    from spanproof.witness import service

    real = service.check_bundle
    running, most = 0, 0
    count = threading.Lock()

    def watched(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        with count:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with count:
                running -= 1

    monkeypatch.setattr(service, "check_bundle", watched)
    bodies = [make_bundle(trace_id(40 + i)).data for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(harness.witness.submit, bodies[:4]))
        checks = list(pool.map(harness.witness.check, bodies[4:]))
    assert [r.created for r in results] == [True] * 4
    assert all(c["report"]["verdict"] == "OK" for c in checks)
    assert most == 1


@pytest.mark.parametrize("path", ["/v1/submit", "/v1/submit-batch", "/v1/check"])
def test_a_submission_behind_a_slow_verification_waits_a_bounded_time_then_503(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot,
    monkeypatch: pytest.MonkeyPatch, path: str,
) -> None:
    # The turn to be verified was waited for without end: three checks of 64 MiB
    # headers padded with numbers (no key needed) kept a genuine submission 107 s,
    # and at a witness that pins no producer keys anyone can sign 64 MiB of records.
    from spanproof.witness import service

    real = service.check_bundle
    inside, release = threading.Event(), threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "VERIFY_WAIT", 0.3, raising=False)
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                      producer_trust=producer_trust, clock=FakeClock())
    client = TestClient(create_app(witness))
    monkeypatch.setattr(service, "check_bundle", slow)
    unstuck = threading.Timer(3, release.set)  # without a bound, the request waits for it
    unstuck.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(witness.submit, make_bundle(trace_id(60)).data)
            assert inside.wait(10)
            data = make_bundle(trace_id(61)).data
            if path == "/v1/submit-batch":
                data = json.dumps({"submissions": [base64.b64encode(data).decode()]}).encode()
            started = time.monotonic()
            resp = client.post(path, content=data)
            took = time.monotonic() - started
            release.set()
            assert first.result().created
        assert resp.status_code == 503, resp.text[:200]
        assert resp.headers["Retry-After"] == "1"
        assert resp.json()["error"] == ("busy: other submissions are being verified, and "
                                        "this one had no turn within 0.3 s; retry later")
        assert 0.25 < took < 3, took
        assert witness.size == 1  # the first alone: nothing of the refused one
    finally:
        unstuck.cancel()
        release.set()
        store.close()


@pytest.mark.parametrize("kind", ["parsed", "invalid JSON"])
def test_a_batch_keeps_none_of_its_refused_submissions_parsed(
    harness: Harness, kind: str
) -> None:
    # Each refused submission's error was kept with its traceback, whose frames held
    # the submission as parsed (~30 times its size) and the batch's list of results,
    # which held the error: every refused submission of a batch stayed parsed until
    # the batch was answered, and after it until the cyclic collector ran.  Invalid
    # JSON: the parser's error, chained to it, held the decoded submission.
    refused = (b'{"payloadType":"x","z":[' + b"{}," * 100_000 + b"{}]}" if kind == "parsed"
               else b'{"payloadType":"' + b"x" * 1_000_000)
    gc.disable()
    tracemalloc.start()
    try:
        results = harness.witness.submit_batch([refused] * 4)
        left, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    if kind == "parsed":
        assert all(str(r) == "envelope: unknown fields ['z']" for r in results)
    else:
        assert all("invalid JSON" in str(r) for r in results), results
    assert left < 2_000_000, left


def _same_statement_entries(store: Store, start: int, count: int, digest: str) -> None:
    # *count* entries of one trace segment's statement, each by another signer.
    entries = []
    for i in range(start, start + count):
        leaf = WitnessLeaf(digest, trace_id(23), 0, INSTANCE, f"{i:064x}")
        data = leaf.encode()
        entries.append(Entry(i, leaf_hash(data), leaf, data, "unverified-producer", "envelope",
                             "2026-03-02T10:00:00Z", b"{}", "{}"))
    store.add(entries, StoredCheckpoint(start + count, bytes(32), b"note", "2026-03-02T10:00:00Z"))


def _conflict_steps(store: Store, entry: Entry) -> tuple[bool, int]:
    # Whether the entry is in conflict, and the SQLite VM steps (in thousands) that took.
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._db.set_progress_handler(count, 1000)
    try:
        conflict = store.in_conflict(entry)
    finally:
        store._db.set_progress_handler(None, 0)
    return conflict, steps


def test_conflict_check_does_not_scan_entries_of_the_same_statement(tmp_path: Path) -> None:
    # One statement signed by many keys is as many entries of one trace segment, and
    # anyone can log them in a log open to any producer key.  Whether an entry was in
    # conflict skipped them one by one: each append and each look-up entry cost as
    # much as there were, a 1,000-entry look-up page (under the witness's lock) ~26 s
    # with 100,000 of them.
    store = Store(str(tmp_path / "w.db"))
    try:
        _same_statement_entries(store, 0, 10, "sha256:" + "5" * 64)
        first = store.entry(0)
        assert first is not None
        few = _conflict_steps(store, first)
        _same_statement_entries(store, 10, 5000, "sha256:" + "5" * 64)
        many = _conflict_steps(store, first)
        assert few[0] is False and many[0] is False
        assert many[1] <= few[1] + 2, (few, many)
        # Another statement for the segment is found, its digest above or below.
        _same_statement_entries(store, 5010, 1, "sha256:" + "9" * 64)
        assert store.in_conflict(first) is True
        _same_statement_entries(store, 5011, 1, "sha256:" + "1" * 64)
        last = store.entry(5010)
        assert last is not None and store.in_conflict(last) is True
    finally:
        store.close()


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [("/v1/lookup", "index"), ("/v1/receipt", "index"), ("/v1/proof/inclusion", "index"),
     ("/v1/proof/consistency", "from")],
)
@pytest.mark.parametrize("value", [str(2**63), "99999999999999999999"])
def test_a_position_no_log_can_hold_is_a_bad_request(
    harness: Harness, endpoint: str, name: str, value: str
) -> None:
    # 2**63 used to reach the database, which raised OverflowError: HTTP 500.
    resp = harness.client.get(endpoint, params={name: value})
    assert resp.status_code == 400
    assert resp.json()["error"] == (
        f"query parameter {name!r} is out of range (at most {2**63 - 1})"
    )


def test_proof_endpoints_verify_against_signed_checkpoints(
    harness: Harness, tmp_path: Path
) -> None:
    for path in _bundles(tmp_path, 6):
        harness.submit(path.read_bytes())
    keys = harness.keys

    def checkpoint(size: int | None = None) -> Any:
        params = {"size": str(size)} if size is not None else {}
        resp = harness.client.get("/v1/checkpoint", params=params)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        return verify_checkpoint(resp.content, keys, origin=ORIGIN)

    latest = checkpoint()
    assert latest.size == 6
    for size in range(1, 7):
        cp = checkpoint(size)
        for index in range(size):
            doc = harness.client.get(
                "/v1/proof/inclusion", params={"index": index, "size": size}
            ).json()
            proof = [base64.b64decode(h) for h in doc["proof"]]
            verify_inclusion(base64.b64decode(doc["leafHash"]), index, size, proof, cp.root)
        doc = harness.client.get("/v1/proof/consistency", params={"from": size, "to": 6}).json()
        verify_consistency(
            size, 6, [base64.b64decode(h) for h in doc["proof"]], cp.root, latest.root
        )
    assert harness.client.get("/v1/checkpoint", params={"size": "0"}).status_code == 200
    assert harness.client.get("/v1/checkpoint", params={"size": "7"}).status_code == 404
    assert harness.client.get("/v1/proof/inclusion", params={"index": 6}).status_code == 400
    assert harness.client.get("/v1/proof/consistency", params={"from": 0}).status_code == 400
    assert harness.client.get("/v1/proof/consistency", params={"from": "x"}).status_code == 400


def test_envelope_only_submission(
    harness: Harness, producer_trust: TrustRoot, tmp_path: Path
) -> None:
    sealed = make_bundle(trace_id(4))
    envelope = json.loads(sealed.data)["envelope"]
    resp = harness.client.post("/v1/submit", json=envelope)
    assert resp.status_code == 201, resp.text
    (entry,) = harness.client.get("/v1/lookup", params={"index": "0"}).json()["entries"]
    assert entry["checked"] == "envelope"
    skipped = [c["name"] for c in entry["submissionChecks"] if c["status"] == "SKIPPED"]
    assert skipped == ["records", "chain", "head", "completeness"]
    # The receipt is the same as for the full bundle: the leaf is the statement's.
    path = write_bundle(tmp_path, sealed)
    verify_receipt(resp.content, check_bundle(path, producer_trust), harness.keys)
    assert harness.submit(sealed.data).status_code == 200


def test_a_submission_is_not_parsed_whole_unless_it_is_an_envelope(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every submission was parsed whole before anything looked at it: 60 MiB of
    # [{},{},...] took the witness to 3 GB, and was then a 400.  A bundle is read as
    # the verifier reads it, a line at a time; anything else larger than an
    # envelope can be is refused unparsed.
    from spanproof.witness import service

    monkeypatch.setattr(service, "MAX_ENVELOPE_BYTES", 10_000)
    flood = b"[" + b"{}," * 5_000 + b"{}]"
    resp = harness.client.post("/v1/submit", content=flood)
    assert resp.status_code == 400
    assert "too large for a DSSE envelope" in resp.json()["error"]
    # A bundle that is not in its canonical form is not one.
    sealed = make_bundle(trace_id(5))
    loose = json.dumps(json.loads(sealed.data), indent=1).encode()
    resp = harness.client.post("/v1/submit", content=loose)
    assert resp.status_code == 400 and "canonical form" in resp.json()["error"]
    assert harness.witness.size == 0
    assert harness.submit(sealed.data).status_code == 201


def test_envelope_with_a_lone_surrogate_keyid_is_400_and_leaves_no_phantom_leaf(
    harness: Harness,
) -> None:
    # The keyid is only a hint, so the signature still verifies; the JSON text itself
    # is not I-JSON.  Were it parsed, the leaf would be appended to the tree before the
    # envelope failed to encode for storage: signed over, never stored.
    envelope = json.loads(make_bundle(trace_id(4)).data)["envelope"]
    envelope["signatures"][0]["keyid"] = "\ud800"
    resp = harness.client.post("/v1/submit", content=json.dumps(envelope).encode())
    assert resp.status_code == 400 and "lone surrogate" in resp.json()["error"]
    honest = harness.submit(make_bundle(trace_id(5)).data)
    assert honest.status_code == 201 and honest.headers["spanproof-leaf-index"] == "0"
    assert json.loads(honest.content)["treeSize"] == "1"
    harness.close()
    harness.open()  # the log on disk matches its checkpoints
    assert harness.witness.size == 1


def test_a_failure_while_appending_leaves_no_phantom_leaf(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = _bundles(tmp_path, 3)
    assert harness.store is not None
    store, real = harness.store, harness.store.by_leaf_hash
    calls = []

    def failing_second_call(leaf_hash: bytes) -> Any:
        calls.append(leaf_hash)
        if len(calls) == 2:  # after the batch's first leaf was appended to the tree
            raise RuntimeError("unexpected failure")
        return real(leaf_hash)

    monkeypatch.setattr(store, "by_leaf_hash", failing_second_call)
    with pytest.raises(RuntimeError):
        harness.witness.submit_batch([first.read_bytes(), second.read_bytes()])
    monkeypatch.setattr(store, "by_leaf_hash", real)
    resp = harness.submit(third.read_bytes())
    assert resp.status_code == 201 and resp.headers["spanproof-leaf-index"] == "0"
    assert json.loads(resp.content)["treeSize"] == "1"
    harness.close()
    harness.open()
    assert harness.witness.size == 1


def test_bundles_that_fail_verification_are_rejected(harness: Harness) -> None:
    sealed = make_bundle(trace_id(5))
    tampered = sealed.data.replace(b'"name":"step 1"', b'"name":"step X"')
    resp = harness.submit(tampered)
    assert resp.status_code == 422
    doc = resp.json()
    assert "bundle rejected" in doc["error"]
    assert doc["report"]["verdict"] == "FAIL"
    assert {c["name"]: c["status"] for c in doc["report"]["checks"]}["head"] == "FAIL"
    other = make_bundle(trace_id(5), key=SigningKey.from_seed(OTHER_PRODUCER_SEED))
    resp = harness.submit(other.data)
    assert resp.status_code == 422 and "not trusted" in resp.json()["error"]
    envelope = json.loads(other.data)["envelope"]
    assert harness.client.post("/v1/submit", json=envelope).status_code == 422
    assert harness.witness.size == 0


@pytest.mark.parametrize(
    "body, status",
    [
        (b"", 400),
        (b"not json", 400),
        (b"[]", 400),
        (b'{"mediaType":"x"}', 400),
        (b"x" * (2 << 20), 413),
    ],
)
def test_malformed_submissions(harness: Harness, body: bytes, status: int) -> None:
    resp = harness.submit(body)
    assert resp.status_code == status
    assert resp.json()["error"]


def test_unpinned_witness_needs_and_records_the_submitters_key(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey
) -> None:
    h = Harness(tmp_path / "open.db", witness_private, None)
    try:
        sealed = make_bundle(trace_id(6))
        resp = h.submit(sealed.data)
        assert resp.status_code == 400 and "Spanproof-Public-Key" in resp.json()["error"]
        der = producer_key.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"Spanproof-Public-Key": base64.b64encode(der).decode()}
        resp = h.submit(sealed.data, header)
        assert resp.status_code == 201
        (entry,) = h.client.get("/v1/lookup", params={"index": "0"}).json()["entries"]
        assert entry["producerKey"] == "unverified-producer"
        # The signature must still verify under the supplied key.
        other = SigningKey.from_seed(OTHER_PRODUCER_SEED).private_key.public_key()
        wrong = {
            "Spanproof-Public-Key": base64.b64encode(
                other.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).decode()
        }
        assert h.submit(make_bundle(trace_id(7)).data, wrong).status_code == 422
        assert (
            h.submit(make_bundle(trace_id(7)).data, {"Spanproof-Public-Key": "!!"}).status_code
            == 400
        )
        # A key of a type the crypto library does not know is the submitter's mistake.
        odd = {"Spanproof-Public-Key": base64.b64encode(unknown_type_public_der()).decode()}
        resp = h.submit(make_bundle(trace_id(7)).data, odd)
        assert resp.status_code == 400, resp.text
        assert "Spanproof-Public-Key: key is not Ed25519" in resp.json()["error"]
        assert h.client.get("/v1/info").json()["producerKeys"] == "unverified-producer"
    finally:
        h.close()


def test_unpinned_witness_refuses_a_submitters_key_of_small_order(
    tmp_path: Path, witness_private: Ed25519PrivateKey
) -> None:
    # The identity point verifies R = identity, S = 0 for every message: an entry
    # logged under it would name a key anyone can sign for (SPEC §6.1).
    h = Harness(tmp_path / "open.db", witness_private, None)
    try:
        identity = bytes.fromhex("302a300506032b6570032100") + b"\x01" + bytes(31)
        header = {"Spanproof-Public-Key": base64.b64encode(identity).decode()}
        resp = h.submit(make_bundle(trace_id(8)).data, header)
        assert resp.status_code == 400, resp.text
        assert "Spanproof-Public-Key: key is a point of small order" in resp.json()["error"]
        assert h.client.get("/v1/info").json()["treeSize"] == "0"
    finally:
        h.close()


def test_restart_preserves_log_and_checkpoint(
    harness: Harness, tmp_path: Path, producer_trust: TrustRoot
) -> None:
    paths = _bundles(tmp_path, 4)
    receipts = [harness.submit(p.read_bytes()).content for p in paths]
    before = harness.client.get("/v1/checkpoint").content
    harness.close()
    harness.open()
    assert harness.client.get("/v1/checkpoint").content == before
    more = _bundles(tmp_path, 1, start=10)[0]
    harness.submit(more.read_bytes())
    latest = verify_checkpoint(harness.client.get("/v1/checkpoint").content, harness.keys)
    assert latest.size == 5
    for path, receipt in zip(paths, receipts, strict=True):
        verified = verify_receipt(receipt, check_bundle(path, producer_trust), harness.keys)
        proof = harness.client.get(
            "/v1/proof/consistency", params={"from": verified.tree_size, "to": 5}
        ).json()["proof"]
        verify_consistency(
            verified.tree_size,
            5,
            [base64.b64decode(h) for h in proof],
            verified.checkpoint.root,
            latest.root,
        )


def _tamper(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db)
    for name in (
        "leaves_append_only_u",
        "leaves_append_only_d",
        "checkpoints_append_only_u",
        "checkpoints_append_only_d",
    ):
        con.execute(f"DROP TRIGGER {name}")
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    "statements, message",
    [
        (["UPDATE leaves SET leaf = x'00' WHERE idx = 1"], "does not hash to its leaf hash"),
        (["DELETE FROM leaves WHERE idx = 2"], "signed but only 2 entries"),
        (["DELETE FROM leaves WHERE idx = 1"], "entry 1 is missing"),
        (["DELETE FROM checkpoints WHERE size = 3"], "entry written without its checkpoint"),
        (["UPDATE checkpoints SET root = x'00' WHERE size = 2"], "disagrees with its note"),
    ],
)
def test_startup_refuses_a_tampered_log(
    harness: Harness, tmp_path: Path, statements: list[str], message: str
) -> None:
    for path in _bundles(tmp_path, 3):
        harness.submit(path.read_bytes())
    harness.close()
    _tamper(harness.db, *statements)
    with pytest.raises(LogCorrupted, match=message):
        harness.open()
    harness.store = Store(str(harness.db))  # for the fixture's close()


def test_startup_refuses_another_key_or_origin(harness: Harness, tmp_path: Path) -> None:
    harness.submit(_bundles(tmp_path, 1)[0].read_bytes())
    harness.close()
    with pytest.raises(LogCorrupted, match=r"not 'other\.example/log'"):
        harness.open(origin="other.example/log")
    with pytest.raises(LogCorrupted, match="stored checkpoint of size 0"):
        harness.open(key=Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED))
    harness.open()


def test_the_database_is_append_only(harness: Harness, tmp_path: Path) -> None:
    harness.submit(_bundles(tmp_path, 1)[0].read_bytes())
    con = sqlite3.connect(harness.db)
    for sql in (
        "UPDATE leaves SET trace_id = 'x'",
        "DELETE FROM checkpoints",
        "INSERT INTO checkpoints VALUES (1, x'00', x'00', 't')",
    ):
        with pytest.raises(sqlite3.DatabaseError):
            con.execute(sql)
    con.close()
    assert con is not None
    assert sqlite3.connect(harness.db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_check_endpoint_reports_every_check_without_logging(harness: Harness) -> None:
    sealed = make_bundle(trace_id(11))
    harness.submit(sealed.data)
    doc = harness.client.post("/v1/check", content=sealed.data).json()
    assert doc["report"]["verdict"] == "OK"
    assert [c["name"] for c in doc["report"]["checks"]][:3] == ["format", "envelope", "signature"]
    assert doc["entries"][0]["index"] == "0"
    unknown = make_bundle(trace_id(12))
    doc = harness.client.post("/v1/check", content=unknown.data).json()
    assert doc["report"]["verdict"] == "OK" and doc["entries"] == []
    tampered = sealed.data.replace(b'"name":"step 0"', b'"name":"step X"')
    doc = harness.client.post("/v1/check", content=tampered).json()
    assert doc["report"]["verdict"] == "FAIL"
    assert harness.witness.size == 1


def test_page_is_self_contained_with_a_strict_csp(harness: Harness) -> None:
    resp = harness.client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    html = resp.text
    assert "src=" not in html and "href=" not in html.replace('href=""', "")
    assert "http://" not in html and "https://" not in html


def test_info(harness: Harness) -> None:
    info = harness.client.get("/v1/info").json()
    assert info["origin"] == ORIGIN and info["treeSize"] == "0"
    assert WitnessKey.from_vkey(info["vkey"]).name == ORIGIN
    assert WitnessKey.from_pem(info["publicKey"].encode()).public_key == harness.keys[0].public_key
    assert info["producerKeys"] == "pinned"


def _break_storage(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the witness's database writes fail; return what mends them."""
    from spanproof.verifier.errors import TransportError

    assert harness.store is not None
    store, real_add = harness.store, harness.store.add

    def failing_add(*args: Any) -> None:
        raise TransportError("witness database write failed: disk I/O error")

    monkeypatch.setattr(store, "add", failing_add)
    return lambda: monkeypatch.setattr(store, "add", real_add)


def test_storage_failure_is_503_and_logs_nothing(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, producer_trust: TrustRoot
) -> None:
    first, second = _bundles(tmp_path, 2)
    harness.submit(first.read_bytes())
    restore = _break_storage(harness, monkeypatch)
    resp = harness.submit(second.read_bytes())
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert harness.witness.size == 1
    restore()
    resp = harness.submit(second.read_bytes())
    assert resp.status_code == 201
    verify_receipt(resp.content, check_bundle(second, producer_trust), harness.keys)
    harness.close()
    harness.open()  # the log on disk matches its checkpoints
    assert harness.witness.size == 2


def test_a_bundle_declaring_losses_is_logged(harness: Harness) -> None:
    from witness_helpers import PRODUCER_SEED, SEALED_AT, body

    from spanproof.exporter.sealing import ChainPosition, seal
    from spanproof.verifier.statement import Completeness, Producer

    trace = trace_id(30)
    sealed = seal(
        trace,
        [body(trace, 0)],
        ChainPosition.genesis(trace),
        signer=SigningKey.from_seed(PRODUCER_SEED),
        producer=Producer("spanproof", "0", INSTANCE),
        sealed_at=SEALED_AT,
        reason="shutdown",
        completeness=Completeness(dropped_spans=3),
    )
    resp = harness.submit(sealed.data)
    assert resp.status_code == 201
    (entry,) = harness.client.get("/v1/lookup", params={"trace": trace}).json()["entries"]
    checks = {c["name"]: c for c in entry["submissionChecks"]}
    assert "3 evidence spans dropped" in checks["completeness"]["message"]


def _batch(harness: Harness, bodies: list[bytes]) -> Any:
    doc = {"submissions": [base64.b64encode(b).decode() for b in bodies]}
    return harness.client.post("/v1/submit-batch", json=doc)


def _checkpoint_sizes(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [s for (s,) in conn.execute("SELECT size FROM checkpoints ORDER BY size")]


def test_a_batch_is_logged_under_one_checkpoint_with_an_answer_for_each(
    harness: Harness, tmp_path: Path, producer_trust: TrustRoot
) -> None:
    a, b, c = _bundles(tmp_path, 3)
    tampered = make_bundle(trace_id(9)).data.replace(b'"name":"step 1"', b'"name":"step X"')
    bodies = [a.read_bytes(), b.read_bytes(), a.read_bytes(), tampered, b"not json",
              c.read_bytes()]
    resp = _batch(harness, bodies)
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 200, 422, 400, 201]
    assert [r.get("leafIndex") for r in results] == ["0", "1", "0", None, None, "2"]
    assert results[3]["report"]["verdict"] == "FAIL" and "bundle rejected" in results[3]["error"]
    assert "error" in results[4] and "report" not in results[4]
    # One checkpoint for the three new entries, in one transaction.
    assert harness.witness.size == 3 and _checkpoint_sizes(harness.db) == [0, 3]
    for path, result in zip([a, b, a, c], [results[i] for i in (0, 1, 2, 5)], strict=True):
        receipt = canonicalize(result["receipt"]) + b"\n"
        verify_receipt(receipt, check_bundle(path, producer_trust), harness.keys)
        assert result["conflict"] is False
    # The receipt object is the receipt file /v1/submit and /v1/receipt serve.
    assert canonicalize(results[5]["receipt"]) + b"\n" == harness.client.get(
        "/v1/receipt", params={"index": 2}).content


def test_a_batch_the_log_cannot_store_logs_nothing_and_is_503(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = _bundles(tmp_path, 3)
    harness.submit(first.read_bytes())
    restore = _break_storage(harness, monkeypatch)
    resp = _batch(harness, [second.read_bytes(), third.read_bytes()])
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert harness.witness.size == 1
    restore()
    resp = _batch(harness, [second.read_bytes(), third.read_bytes()])
    assert [r["status"] for r in resp.json()["results"]] == [201, 201]
    harness.close()
    harness.open()  # the log on disk matches its checkpoints
    assert harness.witness.size == 3 and _checkpoint_sizes(harness.db) == [0, 1, 3]


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "batch: invalid JSON"),
        # Refused before parsing: base64 holds no brackets (parsed, a body of empty
        # objects or arrays took ~50 times its size).
        (b'{"submissions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "expected"),
        (b'{"submissions": [' + b"{}," * 100_000 + b'"eA=="]}', "expected"),
        (b'{"submissions": [' + b'"",' * 300 + b'"eA=="]}', "expected"),
        (b'{"submissions": [{}, "eA=="]}', "expected"),  # not "submission 0 is not base64"
        (b'{"a": 1, "a": 2, "submissions": ["eA=="]}', "duplicate JSON key"),
        (b'{"submissions": ["\\ud800"]}', "lone surrogate"),
        (b"[]", "expected"),
        (b'{"submissions": []}', "expected"),
        (b'{"submissions": "abc"}', "expected"),
        (json.dumps({"submissions": ["eA=="] * 257}).encode(), "expected"),
        (b'{"submissions": ["not base64!"]}', "submission 0 is not base64"),
        (b'{"submissions": [1]}', "submission 0 is not base64"),
    ],
)
def test_malformed_batches_are_400(harness: Harness, body: bytes, reason: str) -> None:
    resp = harness.client.post("/v1/submit-batch", content=body,
                               headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and reason in resp.json()["error"]
    assert harness.witness.size == 0


def test_a_batch_larger_than_max_body_is_413(harness: Harness) -> None:
    resp = _batch(harness, [b"x" * (1 << 20)])
    assert resp.status_code == 413 and harness.witness.size == 0


def test_a_second_process_cannot_serve_the_same_database(tmp_path: Path) -> None:
    # Each process keeps its own tree: a second one on the same file fell behind the
    # first, served a smaller checkpoint than the log had signed (a monitor's
    # rollback alarm), answered 500 for the first one's entries and 503 for new ones.
    import subprocess
    import sys

    db = tmp_path / "w.db"
    store = Store(str(db))
    try:
        with pytest.raises(TransportError, match="served by another process"):
            Store(str(db))
        other = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom spanproof.witness.store import Store\n"
             "try:\n    Store(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
             "    sys.exit(3)\n", str(db)],
            capture_output=True, text=True, timeout=60)
        assert other.returncode == 3 and "served by another process" in other.stdout
    finally:
        store.close()
    Store(str(db)).close()  # free once closed


def test_an_entry_beyond_the_tree_is_a_storage_fault_not_a_crash(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What another process's append looked like: the entry exists, the tree held
    # here does not reach it; building its proof raised ValueError (500).
    (path,) = _bundles(tmp_path, 1)
    assert harness.submit(path.read_bytes()).status_code == 201
    assert harness.store is not None
    real = harness.store.by_leaf_hash

    def beyond(h: bytes) -> Entry | None:
        found = real(h)
        return None if found is None else dataclasses.replace(found, index=5)

    monkeypatch.setattr(harness.store, "by_leaf_hash", beyond)
    answer = harness.submit(path.read_bytes())
    assert answer.status_code == 503
    assert "beyond the tree of 1 leaves" in answer.text


def test_a_lookup_reads_neither_envelopes_nor_whole_reports(
    harness: Harness, tmp_path: Path, producer_trust: TrustRoot
) -> None:
    # A statement's notes may be megabytes (nothing bounds them when the witness pins
    # no producer key): a look-up read every entry's envelope and parsed its whole
    # report, taking many times their size to answer a few kilobytes.
    trace = trace_id(4)
    notes = ("n" * 300_000,)
    sealed = seal(trace, [body(trace, 0)], ChainPosition.genesis(trace),
                  signer=SigningKey.from_seed(PRODUCER_SEED),
                  producer=Producer("spanproof", "0.1.0", INSTANCE), sealed_at=SEALED_AT,
                  reason="root_ended", completeness=Completeness(notes=notes))
    assert harness.submit(sealed.data).status_code == 201
    assert harness.store is not None
    (entry,) = harness.store.by_trace(trace)
    assert entry.envelope == b""
    assert json.loads(entry.report).keys() == {"checks"}
    tracemalloc.start()
    try:
        doc = harness.witness.lookup_json(trace=trace)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {c["status"] for c in doc["entries"][0]["submissionChecks"]} == {"PASS"}
    assert peak < 200_000  # the envelope alone holds the notes, twice (base64)


@pytest.mark.parametrize("query", ["size=", "size=1&size=1", "size=x&size=1"])
def test_a_query_number_empty_or_given_twice_is_refused(harness: Harness, tmp_path: Path,
                                                         query: str) -> None:
    # SPEC §12.9: anything but one decimal number is 400.  An empty one was taken
    # as absent (the latest checkpoint), and of two the last counted.
    (path,) = _bundles(tmp_path, 1)
    harness.submit(path.read_bytes())
    answer = harness.client.get(f"/v1/checkpoint?{query}")
    assert answer.status_code == 400
    assert harness.client.get("/v1/checkpoint?size=1").status_code == 200


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/lookup", "trace"), ("/v1/lookup", "digest"), ("/v1/receipt", "digest")])
def test_a_look_up_naming_its_trace_or_digest_twice_is_refused(
    harness: Harness, tmp_path: Path, path: str, name: str
) -> None:
    # Of two, the last counted: a look-up for one trace answered for another, though
    # SPEC §12.9 takes each parameter once.
    (bundle,) = _bundles(tmp_path, 1)
    harness.submit(bundle.read_bytes())
    entry = harness.client.get("/v1/lookup", params={"index": "0"}).json()["entries"][0]
    value = entry["traceId"] if name == "trace" else entry["statementDigest"]
    other = "0" * 32 if name == "trace" else "sha256:" + "0" * 64
    answer = harness.client.get(f"{path}?{name}={other}&{name}={value}")
    assert answer.status_code == 400, answer.text
    assert f"query parameter '{name}' is given 2 times" in answer.json()["error"]
    assert harness.client.get(f"{path}?{name}={value}").status_code == 200
