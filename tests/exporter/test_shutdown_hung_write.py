"""``shutdown(timeout_millis)`` with a bundle write that hangs (a stalled disk).

The exporter waits on the writes in flight until its deadline, not on the writer
thread: shutdown returns while the write still hangs, says that one bundle is still
being written, and the write, once the disk answers, still publishes the bundle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from exporter_support import FakeClock, Recorder, evidence, make_exporter, trust_root, verified

from spanproof.exporter import DirectorySink, SealedBundle
from spanproof.exporter import _exporter as exporter_module

# Generous: how long a hung write waits to be let go, so that a shutdown that
# waits on the writer thread shows as a failure instead of hanging the run.
_RELEASE_AFTER = 30.0


class _HungDisk:
    """``DirectorySink.write_many`` held until :meth:`release` (or ``_RELEASE_AFTER``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.finished = threading.Event()
        self._release = threading.Event()
        write_many = DirectorySink.write_many

        def hung(sink: DirectorySink, bundles: Sequence[SealedBundle]) -> list[str | Exception]:
            self.entered.set()
            try:
                self._release.wait(_RELEASE_AFTER)
                return write_many(sink, bundles)
            finally:
                self.finished.set()

        monkeypatch.setattr(DirectorySink, "write_many", hung)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def hung_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HungDisk]:
    disk = _HungDisk(monkeypatch)
    yield disk
    disk.release()
    assert disk.finished.wait(_RELEASE_AFTER)


def test_shutdown_does_not_wait_on_a_hung_write_past_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    hung_disk: _HungDisk,
) -> None:
    # Sealing's floor shortened so that the test need not wait 5 s for the deadline.
    monkeypatch.setattr(exporter_module, "_MIN_SHUTDOWN_SECONDS", 0.2)
    rec = Recorder()
    with evidence(rec, "step"):
        pass
    exporter = make_exporter(tmp_path / "out", FakeClock())
    exporter.export(rec.take())
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter.shutdown(timeout_millis=0)
    # Shutdown returned while the write was still hanging ...
    assert hung_disk.entered.is_set()
    assert not hung_disk.finished.is_set()
    # ... and said so: the bundle is being written, not lost.
    assert ("shutdown incomplete: 0 sealed bundle(s) not written, 1 still being written, "
            "0 trace(s) not sealed") in caplog.text
    # Once the disk answers, the write completes in the background.
    hung_disk.release()
    assert hung_disk.finished.wait(_RELEASE_AFTER)
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert report.records is not None and len(report.records) == 1


def _traces(rec: Recorder, count: int) -> None:
    for n in range(count):
        with evidence(rec, f"step-{n}"):
            pass


def test_shutdown_with_more_writes_than_may_be_in_flight_keeps_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    hung_disk: _HungDisk,
) -> None:
    # Past 256 writes in flight, handing more over waited for the oldest without a
    # deadline: shutdown (and force_flush) hung as long as the disk did.
    monkeypatch.setattr(exporter_module, "_MIN_SHUTDOWN_SECONDS", 0.2)
    monkeypatch.setattr(exporter_module, "_MAX_IN_FLIGHT", 8)
    rec = Recorder()
    _traces(rec, 20)
    exporter = make_exporter(tmp_path / "out", FakeClock())
    exporter.export(rec.take())
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter.shutdown(timeout_millis=0)
    assert time.monotonic() - started < _RELEASE_AFTER / 3
    assert not hung_disk.finished.is_set()  # returned while the disk still hung
    assert "shutdown incomplete" in caplog.text
    hung_disk.release()
    deadline = time.monotonic() + _RELEASE_AFTER
    while (len(list((tmp_path / "out").glob("*.spanproof.json"))) < 20
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert len(verified(tmp_path / "out", trust_root(tmp_path))) == 20  # all written


def test_force_flush_with_more_writes_than_may_be_in_flight_keeps_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hung_disk: _HungDisk,
) -> None:
    monkeypatch.setattr(exporter_module, "_MAX_IN_FLIGHT", 8)
    rec = Recorder()
    _traces(rec, 20)
    clock = FakeClock()
    exporter = make_exporter(tmp_path / "out", clock)
    try:
        exporter.export(rec.take())
        clock.advance(5.0)  # every trace due
        started = time.monotonic()
        assert exporter.force_flush(timeout_millis=300) is False
        assert time.monotonic() - started < _RELEASE_AFTER / 3
        assert not hung_disk.finished.is_set()
        hung_disk.release()
        assert exporter.force_flush(timeout_millis=int(_RELEASE_AFTER * 1000)) is True
    finally:
        hung_disk.release()
        exporter.shutdown()
    assert len(verified(tmp_path / "out", trust_root(tmp_path))) == 20


def test_a_sealing_pass_hands_its_bundles_to_a_shutdown_that_begins_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # The sealer's pass signed every due trace before writing any; a shutdown that
    # gave up waiting for it returned with them signed and unwritten (lost with the
    # process), and its error counted none of them.
    monkeypatch.setattr(exporter_module, "_MIN_SHUTDOWN_SECONDS", 0.2)
    rec = Recorder()
    _traces(rec, 100)
    clock = FakeClock()
    exporter = make_exporter(tmp_path / "out", clock)
    signing = threading.Event()
    seal = exporter._seal

    def slow(job: object) -> object:
        signing.set()
        time.sleep(0.01)  # a busy machine: 100 traces take a second to sign
        return seal(job)  # type: ignore[arg-type]

    monkeypatch.setattr(exporter, "_seal", slow)
    exporter.export(rec.take())
    clock.advance(5.0)  # every trace due: the sealer's next pass takes them all
    exporter.export([])  # wakes it
    assert signing.wait(_RELEASE_AFTER)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter.shutdown(timeout_millis=0)
    # The sealer stopped at the shutdown, which signed the rest and handed every
    # bundle to the writer (only their writes may still be under way).
    thread = exporter._thread
    assert thread is not None and not thread.is_alive()
    assert "0 sealed bundle(s) not written" in caplog.text or not caplog.text
    assert " 0 trace(s) not sealed" in caplog.text or not caplog.text
    deadline = time.monotonic() + _RELEASE_AFTER
    while (len(list((tmp_path / "out").glob("*.spanproof.json"))) < 100
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert len(verified(tmp_path / "out", trust_root(tmp_path))) == 100
