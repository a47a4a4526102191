"""``shutdown(timeout_millis)`` with a bundle write that hangs (a stalled disk).

The exporter waits on the writes in flight until its deadline, not on the writer
thread: shutdown returns while the write still hangs, says that one bundle is still
being written, and the write, once the disk answers, still publishes the bundle.
"""

from __future__ import annotations

import logging
import threading
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
