"""The files the producer-side submitter keeps (SPEC §12.11): its queue, its
``failed/`` entries, and the receipts it writes beside the bundles."""

from __future__ import annotations

import os
import time
from pathlib import Path

from spanproof.exporter._leftovers import LEFTOVER_AGE_S
from spanproof.exporter.submit import WitnessSubmitter

ENTRY = "000000000003-0123456789abcdef.json"  # a queue entry's name
OLD = time.time() - LEFTOVER_AGE_S - 60


def _temporary(directory: Path, name: str, mtime: float | None = None) -> Path:
    """A temporary file as ``write_temp`` names it, left by a write cut short."""
    path = directory / f".{name}.0a1b2c3d.tmp"
    path.write_bytes(b'{"bund')
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_a_queue_files_temporary_file_left_by_a_crash_is_removed_once_old(
    tmp_path: Path,
) -> None:
    # A kill -9 while a queue entry (or a failed/ entry) was being written left its
    # temporary file, and no start ever removed it.
    queue = tmp_path / "q"
    (queue / "failed").mkdir(parents=True)
    old = [_temporary(queue, ENTRY, OLD), _temporary(queue / "failed", ENTRY, OLD)]
    young = [_temporary(queue, "000000000004-0123456789abcdef.json"),
             _temporary(queue / "failed", "000000000004-0123456789abcdef.json")]
    other = _temporary(queue, "notes.txt", OLD)  # not the submitter's: never touched
    WitnessSubmitter("http://w.invalid", queue, start=False)
    assert [p.exists() for p in old] == [False, False]
    assert [p.exists() for p in young] == [True, True]  # maybe a live process's write
    assert other.exists()


def test_a_submitter_that_does_not_resume_the_queue_leaves_its_temporary_files(
    tmp_path: Path,
) -> None:
    # The one that takes the queue over tidies it; the others only deliver.
    queue = tmp_path / "q"
    queue.mkdir()
    left = _temporary(queue, ENTRY, OLD)
    WitnessSubmitter("http://w.invalid", queue, start=False, resume=False)
    assert left.exists()
