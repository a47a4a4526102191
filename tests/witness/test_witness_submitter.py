"""The producer-side background submitter (``spanproof.exporter.submit``)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from no_threads import refuse_new_threads
from witness_helpers import (
    MAX_HEADER_BYTES,
    ORIGIN,
    FakeClock,
    free_port,
    make_bundle,
    padded,
    trace_id,
    write_bundle,
)

from spanproof.exporter import sinks
from spanproof.exporter import submit as submit_module
from spanproof.exporter.keys import SigningKey
from spanproof.exporter.submit import WitnessSubmitter, backoff_delay
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path, verify_receipt
from spanproof.verifier.verify import check_bundle
from spanproof.witness import app as witness_app
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeWitness:
    """An injected transport: fails while ``down``, else answers like the witness."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.down = True
        self.status: int | None = None
        self.calls = 0
        self.batches = True  # answers POST /v1/submit-batch (else 404)
        self.page: bytes | None = None  # answered instead, as a proxy might
        self.page_status = 200
        self.retry_after: str | None = None  # the Retry-After answered with ``status``
        self.urls: list[str] = []

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        self.calls += 1
        self.urls.append(url.rsplit("/", 1)[1])
        assert url.endswith(("/v1/submit", "/v1/submit-batch"))
        if self.down:
            raise ConnectionRefusedError("connection refused")
        if self.status is not None:
            return self.status, b'{"error":"nope"}', self.retry_after
        if self.page is not None:
            return self.page_status, self.page, None
        key = headers.get("Spanproof-Public-Key")
        if url.endswith("/v1/submit-batch"):
            if not self.batches:
                return 404, b'{"error":"Not Found"}', None
            results = self.witness.submit_batch(witness_app._batch_bodies(body), key)
            doc = {"results": [witness_app._batch_result(r) for r in results]}
            return 200, json.dumps(doc).encode(), None
        result = self.witness.submit(body, key)
        return (201 if result.created else 200), result.receipt.to_bytes(), None


@pytest.fixture
def witness(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> Iterator[Witness]:
    store = Store(str(tmp_path / "w.db"))
    yield Witness(
        store,
        CheckpointSigner(witness_private, ORIGIN),
        producer_trust=producer_trust,
        clock=FakeClock(),
    )
    store.close()


@pytest.fixture
def witness_keys(witness: Witness) -> list[WitnessKey]:
    return [WitnessKey.from_pem(witness.signer.key.public_pem())]


def _bundles(directory: Path, n: int) -> list[Path]:
    directory.mkdir(exist_ok=True)
    return [write_bundle(directory, make_bundle(trace_id(i))) for i in range(n)]


def _retired_reason(sub: WitnessSubmitter, queue: Path, path: Path) -> str:
    """Submit *path*, run one round, and return why it was retired (no receipt kept)."""
    sub.submit(path)
    assert sub.process_due() is None
    (failed,) = (queue / "failed").glob("*.json")
    assert not Path(receipt_path(path)).exists()
    return str(json.loads(failed.read_text())["reason"])


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    assert [backoff_delay(n, 1.0, 60.0, lambda: 1.0) for n in range(1, 9)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]
    assert backoff_delay(3, 1.0, 60.0, lambda: 0.0) == 2.0  # never below half
    assert backoff_delay(10_000, 1.0, 60.0, lambda: 0.5) == 45.0


@pytest.mark.parametrize("pinned", [True, False], ids=["witness-key", "no-witness-key"])
def test_queued_while_down_then_delivered_with_verified_receipts(
    tmp_path: Path,
    witness: Witness,
    witness_keys: list[WitnessKey],
    producer_key: SigningKey,
    producer_trust: TrustRoot,
    caplog: pytest.LogCaptureFixture,
    pinned: bool,
) -> None:
    caplog.set_level("DEBUG", "spanproof")
    clock, fake = Clock(), FakeWitness(witness)
    sub = WitnessSubmitter(
        "http://witness.invalid",
        tmp_path / "queue",
        producer_key=producer_key.private_key.public_key(),
        witness_keys=witness_keys if pinned else (),
        backoff_initial=1.0,
        backoff_max=8.0,
        clock=clock,
        rng=lambda: 1.0,
        post=fake,
        start=False,
    )
    paths = _bundles(tmp_path / "b", 3)
    assert all(sub.submit(p) for p in paths)
    assert sub.process_due() == 1.0  # first failure: retry in 1 s
    assert fake.calls == 1 and sub.pending == 3
    assert len(list((tmp_path / "queue").glob("*.json"))) == 3  # persisted
    assert sub.process_due() == 1.0 and fake.calls == 1  # not due yet: no attempt
    clock.t += 1.0
    assert sub.process_due() == 2.0 and fake.calls == 2  # second failure: 2 s
    clock.t += 2.0
    fake.down = False
    assert sub.process_due() is None
    assert sub.pending == 0 and not list((tmp_path / "queue").glob("*.json"))
    for path in paths:
        receipt = Path(receipt_path(path)).read_bytes()
        verify_receipt(receipt, check_bundle(path, producer_trust), witness_keys)
    sub.close()
    # One line a bundle is DEBUG: at INFO it was a line per trace in an application's
    # log (and, with a handler that traces log records, a span per bundle).
    said = [r.levelname for r in caplog.records if r.getMessage().startswith("receipt for")]
    assert said == ["DEBUG"] * 3


def test_a_2xx_that_is_not_the_bundles_receipt_is_retried_not_stored(
    tmp_path: Path,
    witness: Witness,
    witness_keys: list[WitnessKey],
    producer_key: SigningKey,
    producer_trust: TrustRoot,
) -> None:
    # With no witness key pinned, any 2xx body was written as the receipt and the
    # submission dropped: a proxy's maintenance page lost every submission.
    clock, fake = Clock(), FakeWitness(witness)
    fake.down, fake.batches = False, False
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q",
                           producer_key=producer_key.private_key.public_key(),
                           backoff_initial=1.0, backoff_max=8.0, clock=clock,
                           rng=lambda: 1.0, post=fake, start=False)
    first, second = _bundles(tmp_path / "b", 2)
    assert sub.submit(first) and sub.submit(second)
    fake.page = b"<html>down for maintenance</html>"
    assert sub.process_due() == 1.0  # retried later
    assert sub.pending == 2
    fake.page_status = 202  # a status the witness never answers: a proxy's too
    clock.t += 1.0
    assert sub.process_due() == 2.0
    assert sub.pending == 2 and not list((tmp_path / "q" / "failed").glob("*"))
    fake.page_status = 200
    assert not Path(receipt_path(first)).exists() and not Path(receipt_path(second)).exists()
    # The first bundle's receipt, answered for both: only the first is delivered.
    fake.page = witness.submit(Path(first).read_bytes(), None).receipt.to_bytes()
    clock.t += 2.0
    assert sub.process_due() == 4.0
    assert sub.pending == 1 and not Path(receipt_path(second)).exists()
    fake.page = None
    clock.t += 4.0
    assert sub.process_due() is None and sub.pending == 0
    for path in (first, second):
        verify_receipt(Path(receipt_path(path)).read_bytes(),
                       check_bundle(path, producer_trust), witness_keys)
    sub.close()


def test_a_2xx_page_is_retried_not_retired_when_witness_keys_are_pinned(
    tmp_path: Path,
    witness: Witness,
    witness_keys: list[WitnessKey],
    producer_key: SigningKey,
    producer_trust: TrustRoot,
) -> None:
    # With the witness key pinned, a proxy's 200 page was taken for a receipt that
    # does not verify: one round retired every pending submission to failed/.
    clock, fake = Clock(), FakeWitness(witness)
    fake.down, fake.batches = False, False
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q",
                           producer_key=producer_key.private_key.public_key(),
                           witness_keys=witness_keys, backoff_initial=1.0, backoff_max=8.0,
                           clock=clock, rng=lambda: 1.0, post=fake, start=False)
    paths = _bundles(tmp_path / "b", 3)
    assert all(sub.submit(p) for p in paths)
    fake.page = b"<html>down for maintenance</html>"
    assert sub.process_due() == 1.0 and fake.calls == 1
    assert sub.pending == 3 and not list((tmp_path / "q" / "failed").iterdir())
    fake.page = None
    clock.t += 1.0
    assert sub.process_due() is None and sub.pending == 0
    for path in paths:
        verify_receipt(Path(receipt_path(path)).read_bytes(),
                       check_bundle(path, producer_trust), witness_keys)
    sub.close()


def test_pending_submissions_survive_a_restart(
    tmp_path: Path, witness: Witness, producer_key: SigningKey
) -> None:
    fake = FakeWitness(witness)
    paths = _bundles(tmp_path / "b", 2)
    first = WitnessSubmitter(
        "http://w.invalid",
        tmp_path / "q",
        post=fake,
        clock=Clock(),
        producer_key=producer_key.private_key.public_key(),
        start=False,
    )
    for p in paths:
        first.submit(p)
    first.submit(paths[0])  # the same bundle twice is queued once
    first.process_due()
    assert first.close() and first.pending == 2
    fake.down = False
    second = WitnessSubmitter(
        "http://w.invalid",
        tmp_path / "q",
        post=fake,
        clock=Clock(),
        producer_key=producer_key.private_key.public_key(),
        start=False,
    )
    assert second.pending == 2
    second.submit(paths[1])  # still queued from the first run: not queued again
    second._drain_incoming()
    assert second.pending == 2 and len(list((tmp_path / "q").glob("*.json"))) == 2
    assert second.process_due() is None
    assert all(Path(receipt_path(p)).exists() for p in paths)
    assert witness.size == 2


def test_a_batch_of_submissions_is_made_durable_with_one_filesystem_sync(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[str] = []
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(sinks, "syncfs_available", lambda: True)
    monkeypatch.setattr(sinks, "sync_filesystem",
                        lambda directory: syncs.append(directory) or True)
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q",
                           post=FakeWitness(witness), start=False)
    paths = _bundles(tmp_path / "b", 3)
    for p in paths + paths[:1]:
        sub.submit(p)
    sub._drain_incoming()
    assert syncs == [str(tmp_path / "q")] and len(fsyncs) == 1  # the directory
    assert sub.pending == 3
    assert sorted(json.loads(f.read_bytes())["bundle"] for f in (tmp_path / "q").glob("*.json")
                  ) == sorted(str(p) for p in paths)
    assert not list((tmp_path / "q").glob("*.tmp"))
    # A lone submission is fsynced on its own (and its directory).
    sub.submit(tmp_path / "b" / "other.spanproof.json")
    sub._drain_incoming()
    assert len(syncs) == 1 and len(fsyncs) == 3 and sub.pending == 4


def test_a_failed_filesystem_sync_queues_nothing_of_its_batch(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    SyncSpy(monkeypatch, fail=True)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q",
                           post=FakeWitness(witness), start=False)
    for p in _bundles(tmp_path / "b", 2):
        sub.submit(p)
    sub._drain_incoming()
    assert sub.pending == 0
    assert not list((tmp_path / "q").glob("*.json*"))
    assert sum("cannot queue" in r.getMessage() for r in caplog.records) == 2


def test_close_persists_what_is_still_in_memory(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    sub = WitnessSubmitter(
        "http://w.invalid", tmp_path / "q", post=FakeWitness(witness), start=False
    )
    sub.submit(_bundles(tmp_path / "b", 1)[0])
    assert sub.close()
    assert len(list((tmp_path / "q").glob("*.json"))) == 1
    assert sub.close()  # idempotent
    assert not sub.submit(tmp_path / "b" / "x.spanproof.json")
    # Its last word points at the queue (it was a retry's "retrying in N s").
    said = [r.getMessage() for r in caplog.records if "not yet logged" in r.getMessage()]
    assert said == [f"1 bundle(s) not yet logged with the witness http://w.invalid are "
                    f"queued in {tmp_path / 'q'}: they are sent at the next start, or by "
                    "'spanproof witness submit'"]


def test_close_during_a_delivery_says_what_is_not_queued(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker still delivered when close() stopped waiting: a submission that
    # came meanwhile was never written to the queue, which the warning said it was.
    import threading

    delivering, release = threading.Event(), threading.Event()

    def slow(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Any:
        delivering.set()
        release.wait(10)
        raise ConnectionRefusedError("connection refused")

    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=slow)
    paths = _bundles(tmp_path / "b", 2)
    try:
        sub.submit(paths[0])
        assert delivering.wait(10)
        sub.submit(paths[1])
        assert not sub.close(0.2)
    finally:
        release.set()
    said = [r.getMessage() for r in caplog.records if "not yet logged" in r.getMessage()]
    assert said == [f"2 bundle(s) not yet logged with the witness http://w.invalid (a "
                    f"delivery was still under way): 1 queued in {tmp_path / 'q'}, sent at "
                    "the next start; the other 1 are not queued, and are found again by the "
                    "next start's scan or given to 'spanproof witness submit'"]
    assert len(list((tmp_path / "q").glob("*.json"))) == 1


def test_close_with_nothing_queued_says_nothing(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    sub = WitnessSubmitter(
        "http://w.invalid", tmp_path / "q", post=FakeWitness(witness), start=False
    )
    assert sub.close()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_rejections_and_bad_receipts_are_retired_not_retried(
    tmp_path: Path,
    witness: Witness,
    witness_keys: list[WitnessKey],
    producer_key: SigningKey,
) -> None:
    fake = FakeWitness(witness)
    fake.down = False
    fake.status = 422
    sub = WitnessSubmitter(
        "http://w.invalid", tmp_path / "q", post=fake, clock=Clock(), start=False
    )
    path = _bundles(tmp_path / "b", 1)[0]
    assert "HTTP 422: nope" in _retired_reason(sub, tmp_path / "q", path)

    # A receipt from a witness that is not the pinned one is not stored.
    fake.status = None
    other_keys = [
        WitnessKey.from_pem(CheckpointSigner(Ed25519PrivateKey.generate(), ORIGIN).key.public_pem())
    ]
    sub2 = WitnessSubmitter(
        "http://w.invalid",
        tmp_path / "q2",
        post=fake,
        clock=Clock(),
        producer_key=producer_key.private_key.public_key(),
        witness_keys=other_keys,
        start=False,
    )
    assert "checkpoint not signed by a pinned witness key" in _retired_reason(
        sub2, tmp_path / "q2", path)


def test_a_receipt_is_not_stored_for_a_bundle_the_producer_key_did_not_sign(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey]
) -> None:
    # The receipt's leaf is recomputed from the bundle's own signed statement, which
    # must verify against the producer's key before the receipt is checked.
    fake = FakeWitness(witness)
    fake.down = False
    other = SigningKey.generate()
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           producer_key=other.private_key.public_key(),
                           witness_keys=witness_keys, start=False)
    path = _bundles(tmp_path / "b", 1)[0]
    assert "own bundle's statement does not verify" in _retired_reason(
        sub, tmp_path / "q", path)


def test_transient_http_statuses_back_off(tmp_path: Path, witness: Witness) -> None:
    fake = FakeWitness(witness)
    fake.down, fake.status = False, 503
    sub = WitnessSubmitter(
        "http://w.invalid", tmp_path / "q", post=fake, clock=Clock(), rng=lambda: 0.0, start=False
    )
    sub.submit(_bundles(tmp_path / "b", 1)[0])
    assert sub.process_due() == 0.5 and sub.pending == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_retried_not_taken_for_a_rejection(
    tmp_path: Path, witness: Witness, status: int
) -> None:
    # A 3xx (a proxy sending clients to a maintenance page) retired every pending
    # submission to failed/ in one round, each logged as failed permanently.
    clock, fake = Clock(), FakeWitness(witness)
    fake.down, fake.status = False, status
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=clock,
                           rng=lambda: 1.0, backoff_initial=1.0, start=False)
    paths = _bundles(tmp_path / "b", 3)
    assert all(sub.submit(p) for p in paths)
    assert sub.process_due() == 1.0 and fake.calls == 1  # backing off after the probe
    assert sub.pending == 3 and not list((tmp_path / "q" / "failed").iterdir())
    fake.status = None
    clock.t += 1.0
    assert sub.process_due() is None and sub.pending == 0
    assert all(Path(receipt_path(p)).exists() for p in paths)
    sub.close()


#: The wall clock of the Retry-After tests: Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's
#: example date).
RFC_DATE = 784111777.0


def _asked_to_wait(
    tmp_path: Path, witness: Witness, status: int, retry_after: str
) -> tuple[WitnessSubmitter, FakeWitness, Clock]:
    """A submitter with one bundle queued for a witness that answers *status* with
    *retry_after*; its own backoff is 0.5 s (no jitter) and at most 60 s."""
    fake, clock = FakeWitness(witness), Clock()
    fake.down, fake.status, fake.retry_after = False, status, retry_after
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=clock,
                           wall_clock=lambda: RFC_DATE, rng=lambda: 0.0, backoff_max=60.0,
                           start=False)
    sub.submit(_bundles(tmp_path / "b", 1)[0])
    return sub, fake, clock


def _retries_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # nothing crashed
    return [r.getMessage() for r in caplog.records if "witness unavailable" in r.getMessage()]


@pytest.mark.parametrize("status", [503, 429])
def test_a_503_or_429_retry_after_longer_than_the_backoff_is_waited(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    sub, fake, clock = _asked_to_wait(tmp_path, witness, status, "30")
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() == 30.0
    assert _retries_logged(caplog) == [
        f"witness unavailable (HTTP {status}, Retry-After 30 s); 1 submissions pending, "
        "retrying in 30.0 s"]  # one line says it
    clock.t += 29.5
    assert sub.process_due() == 0.5 and fake.calls == 1  # not asked again before then
    fake.status = None
    clock.t += 0.5
    assert sub.process_due() is None and fake.calls == 2 and sub.pending == 0


@pytest.mark.parametrize("date", [
    "Sun, 06 Nov 1994 08:50:19 GMT",  # IMF-fixdate
    "Sunday, 06-Nov-94 08:50:19 GMT",  # the obsolete forms RFC 9110 §5.6.7 still takes
    "Sun Nov  6 08:50:19 1994",
])
def test_a_retry_after_date_is_waited_for(tmp_path: Path, witness: Witness, date: str) -> None:
    sub, _, _ = _asked_to_wait(tmp_path, witness, 503, date)
    assert sub.process_due() == 42.0


def test_a_retry_after_date_in_the_past_leaves_the_own_backoff(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    sub, _, _ = _asked_to_wait(tmp_path, witness, 503, "Sun, 06 Nov 1994 08:49:36 GMT")
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() == 0.5
    assert _retries_logged(caplog) == [
        "witness unavailable (HTTP 503, Retry-After 0 s); 1 submissions pending, "
        "retrying in 0.5 s"]


@pytest.mark.parametrize("retry_after", [
    "3600",
    pytest.param("9" * 5000, id="5000 nines"),
    pytest.param("0" * 5000 + "3600", id="3600 after 5000 zeros"),
    "Fri, 31 Dec 9999 23:59:59 GMT",
])
def test_a_retry_after_beyond_the_longest_backoff_is_cut_to_it(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture, retry_after: str
) -> None:
    sub, _, _ = _asked_to_wait(tmp_path, witness, 503, retry_after)
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() == 60.0
    (logged,) = _retries_logged(caplog)
    assert logged.endswith("; 1 submissions pending, retrying in 60.0 s")


@pytest.mark.parametrize("retry_after", [
    "", "soon", "-5", "+5", "1.5", "5 s", "5_0", "\u0665", "0x10", "NaN", "inf", "1e3",
    "Sun, 06 Nov 1994", "Mon, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 99999 08:49:37 GMT",
])
def test_a_malformed_retry_after_is_ignored_for_the_own_backoff(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture, retry_after: str
) -> None:
    sub, _, _ = _asked_to_wait(tmp_path, witness, 503, retry_after)
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() == 0.5
    assert _retries_logged(caplog) == [
        "witness unavailable (HTTP 503); 1 submissions pending, retrying in 0.5 s"]


@pytest.mark.parametrize("status", [408, 500, 502])
def test_a_retry_after_is_read_only_from_a_429_or_503(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    sub, _, _ = _asked_to_wait(tmp_path, witness, status, "30")
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() == 0.5
    assert _retries_logged(caplog) == [
        f"witness unavailable (HTTP {status}); 1 submissions pending, retrying in 0.5 s"]


class ConcurrentFake(FakeWitness):
    """Records how many submissions are in flight at once; the first *meet* calls
    after the probe wait for each other (a barrier), which only concurrent calls pass."""

    def __init__(self, witness: Witness, meet: int, fail: tuple[bytes, ...] = (),
                 asks: Mapping[bytes, str] | None = None) -> None:
        super().__init__(witness)
        self.down = False
        self.lock = threading.Lock()
        self.in_flight = self.most = self.arrived = 0
        self.barrier = threading.Barrier(meet, timeout=10)
        self.fail = fail  # bundles answered 503
        self.asks = dict(asks or {})  # a failed bundle's Retry-After

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.arrived += 1
            call = self.arrived
        try:
            if 2 <= call <= 1 + self.barrier.parties:
                self.barrier.wait()
            if body in self.fail:
                return 503, b'{"error":"busy"}', self.asks.get(body)
            with self.lock:  # the in-memory witness is not shared across threads here
                return super().__call__(url, body, headers, timeout)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_once_the_witness_answers_submissions_go_concurrently(
    tmp_path: Path, witness: Witness, producer_key: SigningKey
) -> None:
    fake = ConcurrentFake(witness, meet=3)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           producer_key=producer_key.private_key.public_key(),
                           concurrency=3, batch_size=1, start=False)
    paths = _bundles(tmp_path / "b", 7)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    assert fake.calls == 7 and fake.most == 3  # a probe alone, then 3, then 3
    assert all(Path(receipt_path(p)).exists() for p in paths) and witness.size == 7
    helpers = list(sub._helpers)  # two helper threads, kept for both batches
    assert len(helpers) == 2 and all(h.daemon and h.is_alive() for h in helpers)
    assert sub.close()
    for helper in helpers:
        helper.join(5)
    assert not any(h.is_alive() for h in helpers)  # closing stops them


def test_where_no_helper_thread_may_start_the_worker_delivers_alone(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_new_threads(monkeypatch)
    sub, paths = _queued(tmp_path, witness, 5, concurrency=3, batch_size=1)
    assert sub.process_due() is None and sub.pending == 0
    assert sub._helpers == []
    assert all(Path(receipt_path(p)).exists() for p in paths) and witness.size == 5
    assert sub.close()


def test_a_transient_failure_among_concurrent_submissions_keeps_only_that_one(
    tmp_path: Path, witness: Witness, producer_key: SigningKey
) -> None:
    paths = _bundles(tmp_path / "b", 4)
    fake = ConcurrentFake(witness, meet=3, fail=(paths[2].read_bytes(),))
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           producer_key=producer_key.private_key.public_key(),
                           concurrency=3, batch_size=1, rng=lambda: 0.0, start=False)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() == 0.5  # backing off after the 503
    assert sub.pending == 1 and witness.size == 3
    assert [Path(receipt_path(p)).exists() for p in paths] == [True, True, False, True]


@pytest.mark.parametrize("asks", [("20", "5"), ("5", "20")])
def test_the_longest_retry_after_among_concurrent_answers_is_waited(
    tmp_path: Path, witness: Witness, asks: tuple[str, str]
) -> None:
    paths = _bundles(tmp_path / "b", 4)
    data = [p.read_bytes() for p in paths]
    fake = ConcurrentFake(witness, meet=3, fail=(data[1], data[3]),
                          asks={data[1]: asks[0], data[3]: asks[1]})
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           concurrency=3, batch_size=1, rng=lambda: 0.0, start=False)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() == 20.0  # whichever of the two is settled first
    assert sub.pending == 2 and witness.size == 2


class SlowFake(FakeWitness):
    """Holds the answer to *slow* until *last* has been answered (or 10 s pass)."""

    def __init__(self, witness: Witness, slow: bytes, last: bytes) -> None:
        super().__init__(witness)
        self.down = False
        self.slow, self.last = slow, last
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.waited: bool | None = None
        self.answered: list[bytes] = []

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        if body == self.slow:
            self.waited = self.released.wait(10)
        with self.lock:
            answer = super().__call__(url, body, headers, timeout)
            self.answered.append(body)
        if body == self.last:
            self.released.set()
        return answer


def test_a_slow_answer_does_not_hold_up_the_other_submissions(
    tmp_path: Path, witness: Witness
) -> None:
    # Two in flight: while the first after the probe waits for its answer, the other
    # slot delivers the three behind it (in rounds of two, the second round could
    # not start before the slow answer came, which here waits for the last one).
    paths = _bundles(tmp_path / "b", 5)
    data = [p.read_bytes() for p in paths]
    fake = SlowFake(witness, slow=data[1], last=data[4])
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           concurrency=2, batch_size=1, start=False)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    assert fake.waited is True, "the slow answer was only released by the timeout"
    assert fake.answered == [data[0], data[2], data[3], data[4], data[1]]
    assert all(Path(receipt_path(p)).exists() for p in paths)
    sub.close()


def _queue_files(queue: Path) -> list[Path]:
    return sorted(queue.glob("*.json"))


def _queued(
    tmp_path: Path, witness: Witness, n: int, fake: FakeWitness | None = None, **options: Any
) -> tuple[WitnessSubmitter, list[Path]]:
    """A submitter (no thread) to a witness that answers (through *fake*, a
    ``FakeWitness`` by default), with *n* bundles queued and their queue files
    already written."""
    paths = _bundles(tmp_path / "b", n)
    fake = fake or FakeWitness(witness)
    fake.down = False
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           rng=lambda: 0.0, start=False, **options)
    for p in paths:
        sub.submit(p)
    sub._drain_incoming()  # the queue files, made durable with their own syncfs
    return sub, paths


class SyncSpy:
    """Counts the submitter's syncfs calls and directory fsyncs; *fail* makes syncfs
    report a writeback error."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.syncs: list[str] = []
        self.dir_fsyncs: list[str] = []
        self.fail = fail
        monkeypatch.setattr(sinks, "syncfs_available", lambda: True)
        monkeypatch.setattr(sinks, "sync_filesystem", self.sync)
        real_fsync_directory = sinks.fsync_directory

        def fsync_directory(directory: str) -> None:
            self.dir_fsyncs.append(directory)
            real_fsync_directory(directory)

        monkeypatch.setattr(sinks, "fsync_directory", fsync_directory)

    def sync(self, directory: str) -> bool:
        self.syncs.append(directory)
        if self.fail:
            raise OSError(5, "Input/output error")
        return True


def test_the_receipts_of_a_round_are_made_durable_together(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub, paths = _queued(tmp_path, witness, 7)
    spy = SyncSpy(monkeypatch)
    assert sub.process_due() is None and sub.pending == 0
    # One syncfs and one directory fsync for the seven receipts, not an fsync each.
    assert spy.syncs == [str(tmp_path / "b")] and spy.dir_fsyncs == [str(tmp_path / "b")]
    assert all(Path(receipt_path(p)).exists() for p in paths)
    assert not list((tmp_path / "b").glob(".*.tmp")) and _queue_files(tmp_path / "q") == []


def test_receipts_are_written_in_groups_of_at_most_receipt_group(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_module, "_RECEIPT_GROUP", 3)
    sub, paths = _queued(tmp_path, witness, 7, concurrency=1)
    spy = SyncSpy(monkeypatch)
    assert sub.process_due() is None and sub.pending == 0
    # Groups of 3, 3 and 1: a syncfs for each group of several (the last receipt
    # alone is fsynced itself), and each group's directory fsynced once.
    assert len(spy.syncs) == 2 and len(spy.dir_fsyncs) == 3
    assert all(Path(receipt_path(p)).exists() for p in paths)


def test_a_queue_file_is_kept_until_its_receipt_is_durable(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub, paths = _queued(tmp_path, witness, 3)
    spy = SyncSpy(monkeypatch, fail=True)
    # The witness logged all three, but the receipts could not be made durable: no
    # receipt is in place, nothing is left behind, and all three stay queued.
    assert sub.process_due() == 0.5 and sub.pending == 3 and witness.size == 3
    assert len(_queue_files(tmp_path / "q")) == 3
    assert not any(Path(receipt_path(p)).exists() for p in paths)
    assert not list((tmp_path / "b").glob(".*.tmp"))
    # Once the disk recovers, the next round gets the same entries again.
    spy.fail = False
    sub._not_before = 0.0
    assert sub.process_due() is None and sub.pending == 0 and witness.size == 3
    assert all(Path(receipt_path(p)).exists() for p in paths)
    assert _queue_files(tmp_path / "q") == []


def test_a_receipt_that_cannot_be_written_stays_queued_and_the_others_are_kept(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub, paths = _queued(tmp_path, witness, 3)
    real_write_temp = sinks.write_temp
    broken = Path(receipt_path(paths[1])).name

    def write_temp(directory: str, name: str, data: bytes, **kw: Any) -> str:
        if name == broken:
            raise OSError(28, "No space left on device")
        return real_write_temp(directory, name, data, **kw)

    monkeypatch.setattr(sinks, "write_temp", write_temp)
    assert sub.process_due() == 0.5 and sub.pending == 1
    assert [Path(receipt_path(p)).exists() for p in paths] == [True, False, True]
    monkeypatch.setattr(sinks, "write_temp", real_write_temp)
    sub._not_before = 0.0
    assert sub.process_due() is None and Path(receipt_path(paths[1])).exists()


def test_an_error_while_settling_a_round_loses_nothing(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error in the middle of a round (here removing a queue file) leaves it with
    # the helpers stopped; the next round delivers and records everything once.
    paths = _bundles(tmp_path / "b", 8)
    fake = SlowFake(witness, slow=b"", last=b"")
    real_call = fake.__call__

    def slowly(*args: Any) -> tuple[int, bytes, str | None]:
        time.sleep(0.02)  # helpers are still busy when the error comes
        return real_call(*args)

    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=slowly, clock=Clock(),
                           concurrency=3, batch_size=1, start=False)
    for p in paths:
        sub.submit(p)
    sub._drain_incoming()
    real_remove = sub._remove
    calls = 0

    def remove(name: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise PermissionError(13, "Permission denied")
        real_remove(name)

    monkeypatch.setattr(sub, "_remove", remove)
    monkeypatch.setattr(submit_module, "_RECEIPT_GROUP", 1)  # settle as they come
    with pytest.raises(PermissionError):
        sub.process_due()
    # The round ended with its helpers: none goes on delivering behind it.
    answered = len(fake.answered)
    time.sleep(0.2)
    assert len(fake.answered) == answered < 8
    monkeypatch.setattr(sub, "_remove", real_remove)
    assert sub.process_due() is None and sub.pending == 0
    assert all(Path(receipt_path(p)).exists() for p in paths)
    assert witness.size == 8 and _queue_files(tmp_path / "q") == []
    sub.close()


def test_a_receipt_for_a_submission_no_longer_pending_is_not_written_again(
    tmp_path: Path, witness: Witness
) -> None:
    sub, paths = _queued(tmp_path, witness, 2)
    (first, second) = sorted(sub._pending)
    got = sub._attempt(str(paths[0]))
    assert isinstance(got, submit_module._Delivered)
    sub._unwritten = [(first, got), (first, got), ("gone", got)]  # twice, and stale
    assert sub._write_receipts() is None
    assert sorted(sub._pending) == [second] and Path(got.target).exists()


def test_once_the_witness_answers_submissions_go_in_batches(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey], producer_key: SigningKey,
    producer_trust: TrustRoot, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import spanproof.verifier.receipt as receipt_module

    checked: list[object] = []  # the checkpoint signatures the submitter checked
    real_check = receipt_module.verify_checkpoint
    monkeypatch.setattr(receipt_module, "verify_checkpoint",
                        lambda *a, **k: checked.append(a[0]) or real_check(*a, **k))
    sub, paths = _queued(tmp_path, witness, 10, producer_key=producer_key.private_key.public_key(),
                         witness_keys=witness_keys, concurrency=1, batch_size=4)
    fake = cast(FakeWitness, sub._post)
    assert sub.process_due() is None and sub.pending == 0
    # The probe alone, then batches of 4, 4 and the last one alone.
    assert fake.urls == ["submit", "submit-batch", "submit-batch", "submit"]
    # A batch's receipts share their checkpoint, whose signature is checked once per
    # request by the witness's self-check and once by the submitter (20 otherwise).
    assert len(checked) == 8
    for path in paths:  # each receipt was checked before it was stored, and verifies
        verify_receipt(Path(receipt_path(path)).read_bytes(),
                       check_bundle(path, producer_trust), witness_keys)
    assert witness.size == 10
    sub.close()


def test_a_witness_without_batches_gets_the_submissions_one_by_one(
    tmp_path: Path, witness: Witness
) -> None:
    sub, paths = _queued(tmp_path, witness, 6, concurrency=1, batch_size=4)
    fake = cast(FakeWitness, sub._post)
    fake.batches = False
    assert sub.process_due() is None and sub.pending == 0
    assert fake.urls == ["submit", "submit-batch"] + ["submit"] * 5
    assert all(Path(receipt_path(p)).exists() for p in paths)
    # It is not asked again.
    more = [write_bundle(tmp_path / "b", make_bundle(trace_id(i))) for i in range(6, 9)]
    for p in more:
        sub.submit(p)
    assert sub.process_due() is None
    assert fake.urls[-3:] == ["submit"] * 3 and fake.urls.count("submit-batch") == 1
    sub.close()


def test_a_rejection_in_a_batch_retires_only_that_bundle(
    tmp_path: Path, witness: Witness
) -> None:
    sub, paths = _queued(tmp_path, witness, 4, concurrency=1, batch_size=8)
    tampered = tmp_path / "b" / "tampered.spanproof.json"
    tampered.write_bytes(
        make_bundle(trace_id(9)).data.replace(b'"name":"step 1"', b'"name":"step X"'))
    sub.submit(tampered)
    assert sub.process_due() is None and sub.pending == 0
    assert cast(FakeWitness, sub._post).urls == ["submit", "submit-batch"]
    assert all(Path(receipt_path(p)).exists() for p in paths)
    (failed,) = (tmp_path / "q" / "failed").glob("*.json")
    assert "HTTP 422" in json.loads(failed.read_text())["reason"]
    assert not Path(receipt_path(tampered)).exists() and witness.size == 4


def test_a_batch_carries_a_bounded_number_of_bundle_bytes(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub, paths = _queued(tmp_path, witness, 8, concurrency=1, batch_size=16)
    size = paths[0].stat().st_size
    # Room for three bundles a batch: the seven after the probe go as 3 + 3 + 1.
    monkeypatch.setattr(submit_module, "_BATCH_BYTES", 3 * size + size // 2)
    assert sub.process_due() is None and sub.pending == 0
    assert cast(FakeWitness, sub._post).urls == ["submit", "submit-batch", "submit-batch",
                                                 "submit"]
    # A bundle larger than the bound goes alone.
    monkeypatch.setattr(submit_module, "_BATCH_BYTES", size // 2)
    more = [write_bundle(tmp_path / "b", make_bundle(trace_id(i))) for i in range(8, 11)]
    for p in more:
        sub.submit(p)
    assert sub.process_due() is None
    assert cast(FakeWitness, sub._post).urls[-3:] == ["submit"] * 3
    assert all(Path(receipt_path(p)).exists() for p in paths + more)
    sub.close()


class AlteredBatchAnswer(FakeWitness):
    """A witness that logs a batch but answers it as *alter* (given the answer's
    JSON document, changed in place) makes it."""

    def __init__(self, witness: Witness, alter: Callable[[dict[str, Any]], object]) -> None:
        super().__init__(witness)
        self._alter = alter

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        status, answer, retry_after = super().__call__(url, body, headers, timeout)
        if url.endswith("/v1/submit-batch"):
            doc = json.loads(answer)
            self._alter(doc)
            answer = json.dumps(doc).encode()
        return status, answer, retry_after


def test_receipts_a_batch_answer_swapped_are_not_stored(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey], producer_key: SigningKey,
) -> None:
    fake = AlteredBatchAnswer(witness, lambda doc: doc["results"].reverse())
    sub, paths = _queued(tmp_path, witness, 3, fake, witness_keys=witness_keys,
                         producer_key=producer_key.private_key.public_key(),
                         concurrency=1, batch_size=4)
    assert sub.process_due() is None and sub.pending == 0
    assert fake.urls == ["submit", "submit-batch"]
    # The probe's receipt is its own; the two batched ones each got the other's.
    assert [Path(receipt_path(p)).exists() for p in paths] == [True, False, False]
    reasons = [json.loads(f.read_text())["reason"]
               for f in (tmp_path / "q" / "failed").glob("*.json")]
    assert len(reasons) == 2
    assert all("witness receipt does not verify" in r for r in reasons)


def test_a_malformed_receipt_in_a_batch_answer_retires_its_bundle(
    tmp_path: Path, witness: Witness
) -> None:
    # The last result's receipt without its checkpoint; no witness key: nothing verified.
    fake = AlteredBatchAnswer(witness, lambda doc: doc["results"][-1]["receipt"].pop("checkpoint"))
    sub, paths = _queued(tmp_path, witness, 3, fake, concurrency=1, batch_size=4)
    assert sub.process_due() is None and sub.pending == 0
    assert [Path(receipt_path(p)).exists() for p in paths] == [True, True, False]
    (failed,) = (tmp_path / "q" / "failed").glob("*.json")
    assert "witness receipt is not a receipt" in json.loads(failed.read_text())["reason"]


def test_a_receipt_with_a_lone_surrogate_in_a_batch_answer_retires_its_bundle(
    tmp_path: Path, witness: Witness
) -> None:
    # Its checkpoint could not be encoded: a UnicodeEncodeError, taken for a bug and
    # retried with backoff for ever, where a malformed receipt retires its bundle.
    def surrogate(doc: dict[str, Any]) -> None:
        doc["results"][-1]["receipt"]["checkpoint"] += "\ud800"

    fake = AlteredBatchAnswer(witness, surrogate)
    sub, paths = _queued(tmp_path, witness, 3, fake, concurrency=1, batch_size=4)
    assert sub.process_due() is None and sub.pending == 0
    assert [Path(receipt_path(p)).exists() for p in paths] == [True, True, False]
    (failed,) = (tmp_path / "q" / "failed").glob("*.json")
    reason = json.loads(failed.read_text())["reason"]
    assert "witness receipt is not a receipt" in reason and "lone surrogate" in reason


class RefusingBatches(FakeWitness):
    """Answers a batch as a whole with *status*, *body* and *retry_after*."""

    def __init__(self, witness: Witness, status: int, body: bytes,
                 retry_after: str | None = None) -> None:
        super().__init__(witness)
        self.down = False
        self.batch_answer = (status, body, retry_after)

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        if url.endswith("/v1/submit-batch"):
            self.calls += 1
            self.urls.append("submit-batch")
            return self.batch_answer
        return super().__call__(url, body, headers, timeout)


@pytest.mark.parametrize(("status", "answer"), [
    (413, b'{"error":"request body larger than 1 bytes"}'),  # refused as a whole
    (200, b"not json"),  # and answers that are not one result per submission
    (200, b'{"results": []}'),
    (200, b'{"results": [{"status": 201}, {"status": 201}]}'),
    (200, b'{"results": [{"status": 422}, {"status": 201}]}'),
])
def test_a_batch_refused_whole_or_answered_badly_is_sent_one_by_one(
    tmp_path: Path, witness: Witness, status: int, answer: bytes
) -> None:
    fake = RefusingBatches(witness, status, answer)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           concurrency=1, batch_size=8, start=False)
    paths = _bundles(tmp_path / "b", 3)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    assert fake.urls == ["submit", "submit-batch", "submit", "submit"]
    assert all(Path(receipt_path(p)).exists() for p in paths) and witness.size == 3
    assert sub._batches  # one such batch does not make a witness without batches
    sub.close()


def test_a_batch_answered_503_waits_its_retry_after(tmp_path: Path, witness: Witness) -> None:
    fake = RefusingBatches(witness, 503, b'{"error":"busy"}', "20")
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           concurrency=1, batch_size=8, rng=lambda: 0.0, start=False)
    for p in _bundles(tmp_path / "b", 3):
        sub.submit(p)
    assert sub.process_due() == 20.0
    assert fake.urls == ["submit", "submit-batch"] and sub.pending == 2
    sub.close()


def test_an_unexpected_error_in_a_delivery_is_retried_not_taken_as_delivered(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=FakeWitness(witness),
                           clock=Clock(), rng=lambda: 0.0, start=False)

    def broken(bundle: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sub, "_deliver", broken)
    sub.submit(_bundles(tmp_path / "b", 1)[0])
    assert sub.process_due() == 0.5 and sub.pending == 1


def test_queue_is_bounded(tmp_path: Path) -> None:
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", max_pending=2, start=False)
    assert sub.submit(tmp_path / "a.spanproof.json") and sub.submit(tmp_path / "b.spanproof.json")
    assert not sub.submit(tmp_path / "c.spanproof.json")
    sub.close()


def test_bundles_refused_while_the_queue_was_full_are_submitted_once_it_drains(
    tmp_path: Path, witness: Witness, producer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A witness outage longer than the queue: the bundles sealed meanwhile were
    # refused and waited for the next start's scan, however long the process ran.
    bundles = _bundles(tmp_path / "b", 5)
    clock, fake = Clock(), FakeWitness(witness)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", max_pending=2,
                           producer_key=producer_key.private_key.public_key(),
                           post=fake, clock=clock, rng=lambda: 0.0, start=False)
    with caplog.at_level("WARNING", logger="spanproof.exporter.submit"):
        assert sub.scan(tmp_path / "b") == 2
    assert caplog.text.count("witness queue full") == 1  # once, not once per bundle
    assert sub.process_due() is not None  # down: nothing delivered
    fake.down = False
    for _ in range(10):  # bounded: each round delivers, then queues what was refused
        clock.t += 3600
        if sub.process_due() is None:
            break
    sub.close()
    assert all(Path(receipt_path(b)).exists() for b in bundles)


def test_background_thread_delivers_once_the_witness_comes_up(
    tmp_path: Path,
    witness: Witness,
    witness_keys: list[WitnessKey],
    serve_witness: Any,
    producer_key: SigningKey,
    producer_trust: TrustRoot,
) -> None:
    port = free_port()
    sub = WitnessSubmitter(
        f"http://127.0.0.1:{port}",
        tmp_path / "q",
        producer_key=producer_key.private_key.public_key(),
        witness_keys=witness_keys,
        backoff_initial=0.05,
        backoff_max=0.2,
        timeout=2.0,
    )
    try:
        paths = _bundles(tmp_path / "b", 4)
        started = time.monotonic()
        for p in paths:
            assert sub.submit(p)
        assert time.monotonic() - started < 0.5  # submit never waits for the network
        time.sleep(0.3)  # a few failed rounds while nothing listens
        assert sub.pending == 4 and not Path(receipt_path(paths[0])).exists()
        serve_witness(witness, port)
        deadline = time.monotonic() + 15
        while sub.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sub.pending == 0
        for p in paths:
            verify_receipt(
                Path(receipt_path(p)).read_bytes(), check_bundle(p, producer_trust), witness_keys
            )
        assert sub.scan(tmp_path / "b") == 0  # every bundle has its receipt
    finally:
        assert sub.close(timeout=10)


def test_flush_waits_for_a_submission_being_queued_on_disk(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker writes each submission to the disk queue before delivering it;
    # flush() must count it while that write is in progress.
    fake = FakeWitness(witness)
    fake.down = False
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, timeout=2.0)
    persist = sub._persist
    in_persist = threading.Event()

    def slow_persist(bundle: str) -> None:
        in_persist.set()
        time.sleep(0.3)
        persist(bundle)

    monkeypatch.setattr(sub, "_persist", slow_persist)
    try:
        path = _bundles(tmp_path / "b", 1)[0]
        assert sub.submit(path)
        assert in_persist.wait(5)
        assert sub.flush(10)
        assert Path(receipt_path(path)).exists()
    finally:
        assert sub.close(timeout=10)


def test_a_receipt_already_beside_a_bundle_is_kept_and_its_submission_done(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    # Queued, then given a receipt by other means (`spanproof witness submit`, or this
    # submitter before a crash): the witness's later answer does not replace it.
    sub, (path,) = _queued(tmp_path, witness, 1)
    first = witness.submit(path.read_bytes(), None).receipt.to_bytes()
    Path(receipt_path(path)).write_bytes(first)
    for extra in _bundles(tmp_path / "more", 3):  # the log grows: a newer receipt differs
        witness.submit(extra.read_bytes(), None)
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() is None
    assert sub.pending == 0 and _queue_files(tmp_path / "q") == []
    assert Path(receipt_path(path)).read_bytes() == first
    assert "kept the receipt already beside it" in caplog.text


def test_a_receipt_for_another_statement_beside_a_bundle_is_kept(
    tmp_path: Path, witness: Witness, caplog: pytest.LogCaptureFixture
) -> None:
    sub, (path,) = _queued(tmp_path, witness, 1)
    (tmp_path / "more").mkdir()
    other = write_bundle(tmp_path / "more", make_bundle(trace_id(5)))
    foreign = witness.submit(other.read_bytes(), None).receipt.to_bytes()
    Path(receipt_path(path)).write_bytes(foreign)
    with caplog.at_level("INFO", "spanproof"):
        assert sub.process_due() is None
    assert sub.pending == 0
    assert Path(receipt_path(path)).read_bytes() == foreign
    assert "for another statement or signer" in caplog.text


@pytest.mark.parametrize("pinned", [True, False], ids=["keys pinned", "no keys"])
def test_a_rolled_back_witness_does_not_replace_the_receipt_that_proves_it(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot,
    witness: Witness, witness_keys: list[WitnessKey], producer_key: SigningKey,
    caplog: pytest.LogCaptureFixture, pinned: bool,
) -> None:
    # Kept either way; called a rollback or fork only when the kept receipt verifies
    # with the pinned witness key (an unsigned file proves nothing).
    sub, paths = _queued(tmp_path, witness, 2)
    assert sub.process_due() is None and sub.pending == 0
    evidence = Path(receipt_path(paths[1])).read_bytes()
    # The same log (key and origin) on an empty database: the second bundle would
    # now be entry 0, not 1.
    store = Store(str(tmp_path / "rolled-back.db"))
    try:
        rolled_back = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                              producer_trust=producer_trust, clock=FakeClock())
        fake = FakeWitness(rolled_back)
        fake.down = False
        keys = {"producer_key": producer_key.private_key.public_key(),
                "witness_keys": witness_keys} if pinned else {}
        again = WitnessSubmitter("http://w.invalid", tmp_path / "q2", post=fake,
                                 clock=Clock(), rng=lambda: 0.0, start=False, **keys)
        again.submit(paths[1])
        with caplog.at_level("INFO", "spanproof"):
            assert again.process_due() is None
        assert again.pending == 0
        assert Path(receipt_path(paths[1])).read_bytes() == evidence
        if pinned:
            assert "names index 1" in caplog.text and "rollback or a fork" in caplog.text
        else:
            assert "names index 1 of" in caplog.text and "proves no rollback" in caplog.text
        again.close()
    finally:
        store.close()
    sub.close()


@pytest.mark.parametrize(("shown", "defect"), [
    ([50, 1, 60], "fork: two checkpoints of tree size 3 with different roots"),
    ([0, 1], "rollback: the log now shows tree size 2, smaller than the size 3"),
], ids=["same-size", "kept-larger"])
def test_a_receipt_for_the_same_index_from_another_history_is_kept_beside_the_first(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot,
    witness: Witness, witness_keys: list[WitnessKey], producer_key: SigningKey,
    caplog: pytest.LogCaptureFixture, shown: list[int], defect: str,
) -> None:
    # The same index in both: the new receipt was dropped as "kept", and the other
    # signed checkpoint with it.  Now an error, and the new receipt kept beside it.
    pinned = {"producer_key": producer_key.private_key.public_key(),
              "witness_keys": witness_keys}
    sub, paths = _queued(tmp_path, witness, 3, **pinned)
    assert sub.process_due() is None and sub.pending == 0
    path = paths[1]  # entry 1, in a tree of 3 (the last two went in one batch)
    evidence = Path(receipt_path(path)).read_bytes()
    assert (json.loads(evidence)["leafIndex"], json.loads(evidence)["treeSize"]) == ("1", "3")
    store = Store(str(tmp_path / "forked.db"))
    try:
        forked = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                         producer_trust=producer_trust, clock=FakeClock())
        for i in shown:  # the same key and origin, another history: entry 1 is the same
            forked.submit(make_bundle(trace_id(i)).data, None)
        fake = FakeWitness(forked)
        fake.down = False
        again = WitnessSubmitter("http://w.invalid", tmp_path / "q2", post=fake, clock=Clock(),
                                 rng=lambda: 0.0, start=False, **pinned)
        again.submit(path)
        with caplog.at_level("INFO", "spanproof"):
            assert again.process_due() is None
        assert again.pending == 0
        assert Path(receipt_path(path)).read_bytes() == evidence
        stem = Path(receipt_path(path)[: -len(".json")])
        (conflict,) = stem.parent.glob(stem.name + ".conflict-*.json")
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and defect in errors[0] and str(conflict) in errors[0]
        assert json.loads(conflict.read_bytes())["leafIndex"] == "1"
        again.close()
    finally:
        store.close()
    sub.close()


class _ProofRequests:
    """Records the paths the witness client asks for; answers ``refused`` with 503."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refused: str | None = None,
                 retry_after: str | None = None) -> None:
        from spanproof.witness.client import HTTPStatusError, WitnessClient

        self.paths: list[str] = []
        self.refused = refused
        real = WitnessClient.request

        def request(client: WitnessClient, method: str, path: str, **kw: Any) -> Any:
            self.paths.append(path)
            if path == self.refused:
                raise HTTPStatusError(503, "unavailable, says the test", None, retry_after)
            return real(client, method, path, **kw)

        monkeypatch.setattr(WitnessClient, "request", request)


@pytest.mark.parametrize("case", ["grown", "forked", "unavailable", "forked-unavailable"])
def test_a_kept_receipt_of_a_smaller_tree_is_checked_with_the_witness_consistency_proof(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot,
    witness: Witness, witness_keys: list[WitnessKey], producer_key: SigningKey,
    serve_witness: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    # Compared offline only, a receipt beside the bundle from a smaller tree was kept
    # unchecked: a witness that forked after it went unnoticed, as the CLI's
    # `witness submit` would have noticed.  One that gives no proof now (a 503)
    # leaves the submission pending, as the CLI exits 3: kept unchecked and done, a
    # forked witness escaped the check by answering 503.
    paths = _bundles(tmp_path / "b", 2)  # traces 0 and 1
    witness.submit(make_bundle(trace_id(5)).data, None)
    kept = [witness.submit(path.read_bytes(), None).receipt for path in paths]  # of 2, 3
    for path, receipt in zip(paths, kept, strict=True):
        Path(receipt_path(path)).write_bytes(receipt.to_bytes())
    store = Store(str(tmp_path / "forked.db"))
    try:
        if case.startswith("forked"):  # the same key and origin, another history
            served = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                             producer_trust=producer_trust, clock=FakeClock())
            for i in (7, 0, 1, 8):
                served.submit(make_bundle(trace_id(i)).data, None)
        else:
            served = witness
            witness.submit(make_bundle(trace_id(2)).data, None)  # the log grew
        requests = _ProofRequests(
            monkeypatch, "/v1/proof/consistency" if case.endswith("unavailable") else None)
        # Each receipt written on its own, as a round's 65th is: still one proof asked.
        monkeypatch.setattr(submit_module, "_RECEIPT_GROUP", 1)
        srv = serve_witness(served)
        clock = Clock()
        sub = WitnessSubmitter(srv.url, tmp_path / "q", clock=clock, rng=lambda: 0.0,
                               start=False, producer_key=producer_key.private_key.public_key(),
                               witness_keys=witness_keys, batch_size=1, concurrency=4)
        # A bundle with no receipt yet goes first (alone), so that the two others are
        # delivered in one window.
        sub.submit(write_bundle(tmp_path / "b", make_bundle(trace_id(3))))
        for path in paths:
            sub.submit(path)
        with caplog.at_level("INFO", "spanproof"):
            sub.process_due()
            if case.endswith("unavailable"):
                # Still pending; the round's second submission waited for no second proof.
                assert sub.pending == 2
                assert requests.paths.count("/v1/proof/consistency") == 1
                assert any("no consistency proof now" in r.getMessage()
                           for r in caplog.records if r.levelname == "WARNING")
                requests.refused = None  # the witness answers again
                clock.t += 1000
                sub.process_due()
        assert sub.pending == 0
        sub.close()
    finally:
        store.close()
    for path, receipt in zip(paths, kept, strict=True):
        assert Path(receipt_path(path)).read_bytes() == receipt.to_bytes()
    assert "/v1/proof/consistency" in requests.paths
    stems = [Path(receipt_path(path)[: -len(".json")]) for path in paths]
    conflicts = [c for stem in stems for c in stem.parent.glob(stem.name + ".conflict-*.json")]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    if case.startswith("forked"):
        assert len(conflicts) == 2 and len(errors) == 2, caplog.text
        assert all("does not extend the tree of size" in e for e in errors)
    else:
        assert not conflicts and not errors
        assert "kept the receipt already beside it" in caplog.text


def test_a_proof_request_s_retry_after_is_waited_as_a_submission_s(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey],
    producer_key: SigningKey, serve_witness: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 503 to the consistency proof left the submitter's own backoff (0.5 s here):
    # asked again at once by every producer, a witness that asked for 30 s got none.
    (path,) = _bundles(tmp_path / "b", 1)
    kept = witness.submit(path.read_bytes(), None).receipt
    Path(receipt_path(path)).write_bytes(kept.to_bytes())
    witness.submit(make_bundle(trace_id(2)).data, None)  # the log grew
    requests = _ProofRequests(monkeypatch, "/v1/proof/consistency", retry_after="30")
    srv = serve_witness(witness)
    clock = Clock()
    sub = WitnessSubmitter(srv.url, tmp_path / "q", clock=clock, rng=lambda: 0.0,
                           start=False, producer_key=producer_key.private_key.public_key(),
                           witness_keys=witness_keys, batch_size=1)
    sub.submit(path)
    assert sub.process_due() == 30.0 and sub.pending == 1
    clock.t += 29.5
    assert sub.process_due() == 0.5  # not asked again before then
    assert requests.paths.count("/v1/proof/consistency") == 1
    requests.refused = None
    clock.t += 0.5
    assert sub.process_due() is None and sub.pending == 0
    assert requests.paths.count("/v1/proof/consistency") == 2
    assert Path(receipt_path(path)).read_bytes() == kept.to_bytes()
    sub.close()


@pytest.mark.parametrize(("submission", "proof", "waited"), [
    ("5", "30", 30.0), ("30", "5", 30.0), (None, "30", 30.0),
], ids=["proof-longer", "submission-longer", "submission-without"])
def test_the_longest_retry_after_of_a_round_counts_the_proof_s_among_them(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey],
    producer_key: SigningKey, monkeypatch: pytest.MonkeyPatch,
    submission: str | None, proof: str, waited: float,
) -> None:
    # SPEC §12.11: of several answered in one round, the longest counts.  A
    # submission's shorter (or no) Retry-After replaced the proof request's.
    new, kept_path, busy = _bundles(tmp_path / "b", 3)
    kept = witness.submit(kept_path.read_bytes(), None).receipt
    Path(receipt_path(kept_path)).write_bytes(kept.to_bytes())
    witness.submit(make_bundle(trace_id(9)).data, None)  # the log grew
    _ProofRequests(monkeypatch, "/v1/proof/consistency", retry_after=proof)
    fake = FakeWitness(witness)
    fake.down = False
    busy_trace = trace_id(2).encode()

    def answer(url: str, body: bytes, headers: Mapping[str, str],
               timeout: float) -> tuple[int, bytes, str | None]:
        if busy_trace in body:
            return 503, b'{"error":"busy"}', submission
        return fake(url, body, headers, timeout)

    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=answer, clock=Clock(),
                           rng=lambda: 0.0, start=False, batch_size=1, concurrency=1,
                           producer_key=producer_key.private_key.public_key(),
                           witness_keys=witness_keys)
    for path in (new, kept_path, busy):
        sub.submit(path)
    assert sub.process_due() == waited
    assert sub.pending == 2  # the kept receipt's bundle and the busy one
    sub.close()


# --- paths that are not UTF-8, failed rounds, the start-up scan --------------------------


def test_a_bundle_path_that_is_not_utf8_is_queued_delivered_and_resumed(
    tmp_path: Path, witness: Witness
) -> None:
    # Canonical JSON refused the path's lone surrogates (os.fsdecode's escapes of its
    # bytes): no queue file was written, the round failed on the same path again and
    # again (thousands of tracebacks a second), and close() raised.
    folder = Path(os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9")))
    (path,) = _bundles(folder, 1)
    fake = FakeWitness(witness)
    first = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                             rng=lambda: 0.0, start=False)
    assert first.submit(path)
    first._drain_incoming()
    assert first.pending == 1  # witness down: it stays queued, its file written
    first.close()
    fake.down = False
    again = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                             rng=lambda: 0.0, start=False)
    assert again.pending == 1  # read back as it was written
    assert again.process_due() is None and again.pending == 0
    assert Path(receipt_path(path)).is_file()
    again.close()


def test_a_failed_round_is_not_tried_again_at_once(
    tmp_path: Path, witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a submission waiting, the worker skipped its wait after a round that
    # raised, and ran into the same failure again at once, for good.
    rounds: list[float] = []

    def failing(self: WitnessSubmitter) -> float | None:
        rounds.append(time.monotonic())
        raise RuntimeError("a round that fails")

    monkeypatch.setattr(WitnessSubmitter, "process_due", failing)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=FakeWitness(witness),
                           backoff_initial=0.2, backoff_max=0.4)
    try:
        sub.submit(_bundles(tmp_path / "b", 1)[0])
        time.sleep(0.5)
    finally:
        sub.close(5)
    assert 1 <= len(rounds) <= 4, len(rounds)


def test_a_bundle_the_start_up_scan_found_is_not_sent_again_once_delivered(
    tmp_path: Path, witness: Witness
) -> None:
    # The scan runs beside the delivery of the queue the last run left: it found a
    # bundle of that queue still without its receipt, and the bundle was queued and
    # sent a second time once delivered.
    fake = FakeWitness(witness)
    sub, paths = _queued(tmp_path, witness, 2, fake)
    posted: list[str] = []

    def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float):
        posted.append(url)
        if len(posted) == 1:
            sub.scan(tmp_path / "b")  # during the first delivery: no receipt yet
        return fake(url, body, headers, timeout)

    sub._post = post
    sub.process_due()  # delivers both; the scan queued both meanwhile
    assert all(Path(receipt_path(p)).is_file() for p in paths)
    assert len(posted) == 2
    assert sub.process_due() is None and sub.pending == 0
    assert len(posted) == 2  # nothing sent again
    sub.close()


class TooLargeForBundles(FakeWitness):
    """A witness whose --max-body a whole bundle exceeds (413), as a segment cut at
    64 MiB of values exceeds the default's 64 MiB; a bare envelope fits."""

    def __init__(self, witness: Witness) -> None:
        super().__init__(witness)
        self.down = False
        self.bodies: list[bytes] = []

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        self.bodies.append(body[:12])
        if url.endswith("/v1/submit-batch") or body.startswith(b'{"envelope":'):
            self.calls += 1
            self.urls.append(url.rsplit("/", 1)[1])
            return 413, b'{"error":"request body larger than 67108864 bytes"}', None
        return super().__call__(url, body, headers, timeout)


def test_a_bundle_larger_than_the_witness_takes_is_submitted_as_its_envelope(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey],
    producer_key: SigningKey, producer_trust: TrustRoot, caplog: pytest.LogCaptureFixture,
) -> None:
    # A 413 retired it for good: such a bundle was never witnessed.
    fake = TooLargeForBundles(witness)
    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=fake, clock=Clock(),
                           producer_key=producer_key.private_key.public_key(),
                           witness_keys=witness_keys, concurrency=1, batch_size=8,
                           start=False)
    paths = _bundles(tmp_path / "b", 2)
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    assert not list((tmp_path / "q" / "failed").glob("*.json"))
    assert sum(b.startswith(b'{"payload":') for b in fake.bodies) == 2  # once each
    for path in paths:
        receipt = Path(receipt_path(path)).read_bytes()
        verify_receipt(receipt, check_bundle(path, producer_trust), witness_keys)
    assert witness.size == 2
    assert caplog.text.count("sent as its DSSE envelope alone") == 2
    sub.close()


def test_a_bundle_whose_header_the_witness_refuses_is_submitted_as_its_envelope(
    tmp_path: Path, witness: Witness, witness_keys: list[WitnessKey],
    producer_key: SigningKey, producer_trust: TrustRoot, caplog: pytest.LogCaptureFixture,
) -> None:
    # A witness refuses a bundle header over 1 MiB unverified, its batch whole (413,
    # SPEC §12.9): receipts written into a bundle's header do not keep it from being
    # witnessed, as its envelope alone.
    from starlette.testclient import TestClient

    client = TestClient(witness_app.create_app(witness))
    urls: list[str] = []

    def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> tuple[int, bytes, str | None]:
        urls.append(url.rsplit("/", 1)[1])
        resp = client.post(url.removeprefix("http://w.invalid"), content=body,
                           headers=dict(headers))
        return resp.status_code, resp.content, resp.headers.get("Retry-After")

    sub = WitnessSubmitter("http://w.invalid", tmp_path / "q", post=post, clock=Clock(),
                           producer_key=producer_key.private_key.public_key(),
                           witness_keys=witness_keys, concurrency=1, batch_size=8,
                           start=False)
    paths = _bundles(tmp_path / "b", 3)
    paths[2].write_bytes(padded(paths[2].read_bytes(), b'"' + b"x" * MAX_HEADER_BYTES + b'"'))
    for p in paths:
        sub.submit(p)
    assert sub.process_due() is None and sub.pending == 0
    assert not list((tmp_path / "q" / "failed").glob("*.json"))
    # The first alone; the batch of the others refused whole, then each alone.
    assert urls == ["submit", "submit-batch", "submit", "submit", "submit"]
    for path in paths:
        receipt = Path(receipt_path(path)).read_bytes()
        verify_receipt(receipt, check_bundle(path, producer_trust), witness_keys)
    assert [witness.lookup(index=i)[0][0].checked for i in range(3)] == [
        "bundle", "bundle", "envelope"]
    assert caplog.text.count("sent as its DSSE envelope alone") == 1
    sub.close()


def _leave_a_queue(tmp_path: Path, witness: Witness, n: int) -> Path:
    """A queue an earlier run left: *n* bundles submitted while the witness was down."""
    queue = tmp_path / "queue"
    sub = WitnessSubmitter("http://witness.invalid", queue, post=FakeWitness(witness),
                           start=False)
    for path in _bundles(tmp_path / "b", n):
        assert sub.submit(path)
    sub.process_due()
    sub.close()
    assert len(list(queue.glob("*.json"))) == n
    return queue


def test_only_one_running_submitter_resumes_what_an_earlier_run_left(
    tmp_path: Path, witness: Witness
) -> None:
    # Two gunicorn workers started on their own each took the queue over: each sent
    # every bundle an earlier run left (and the other's own, and scanned for more).
    queue = _leave_a_queue(tmp_path, witness, 3)
    first = WitnessSubmitter("http://w.invalid", queue, post=FakeWitness(witness), start=False)
    second = WitnessSubmitter("http://w.invalid", queue, post=FakeWitness(witness),
                              start=False)
    try:
        assert (first.resumed, first.pending) == (True, 3)
        assert (second.resumed, second.pending) == (False, 0)
    finally:
        first.close()
        second.close()
    third = WitnessSubmitter("http://w.invalid", queue, post=FakeWitness(witness), start=False)
    try:
        assert (third.resumed, third.pending) == (True, 3)  # the first one stopped
    finally:
        third.close()


def test_a_forked_process_does_not_keep_the_queue_from_the_next_one(
    tmp_path: Path, witness: Witness
) -> None:
    queue = _leave_a_queue(tmp_path, witness, 1)
    first = WitnessSubmitter("http://w.invalid", queue, post=FakeWitness(witness), start=False)
    assert first.resumed
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process: past its fork hooks, alive until told
        os.write(ready_w, b"r")
        os.read(stop_r, 1)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        first.close()  # the parent stops; its forked child still runs
        later = WitnessSubmitter("http://w.invalid", queue, post=FakeWitness(witness),
                                 start=False)
        try:
            assert later.resumed
        finally:
            later.close()
    finally:
        os.write(stop_w, b"s")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, stop_r, stop_w):
            os.close(fd)
