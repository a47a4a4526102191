"""The witness queue (SPEC §12.11) of a producer run under a private umask (systemd
``UMask=0077``): ``witness-queue/`` and its ``failed/`` were 0700, and ``spanproof
verify OUTPUT_DIR`` run by any other account failed on them (``cannot list the
directory``).  The directories the submitter creates are 0755; a queue directory
that was there already keeps its mode.  Entries name a bundle (and why it failed),
nothing secret: they are 0644."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from private_umask import LISTABLE, mode, operators_directory, private_umask

from spanproof.exporter.submit import WitnessSubmitter


def _refuse(url: str, body: bytes, headers: Any, timeout: float) -> tuple[int, bytes, None]:
    return 422, b'{"error":"nope"}', None


def test_the_queue_directories_the_submitter_creates_are_listable(tmp_path: Path) -> None:
    queue, bundle = tmp_path / "out" / "witness-queue", tmp_path / "b.spanproof.json"
    bundle.write_bytes(b"{}")
    with private_umask():
        sub = WitnessSubmitter("http://w.invalid", queue, post=_refuse, start=False)
        try:
            assert sub.submit(bundle)
            sub._drain_incoming()
            (entry,) = queue.glob("*.json")
            assert mode(entry) == 0o644
            sub.process_due()  # refused for good: retired to failed/
            (failed,) = (queue / "failed").glob("*.json")
            assert mode(failed) == 0o644
        finally:
            sub.close()
    for directory in (tmp_path / "out", queue, queue / "failed"):
        assert mode(directory) == LISTABLE, directory


def test_a_queue_directory_the_operator_made_keeps_its_mode(tmp_path: Path) -> None:
    queue = tmp_path / "witness-queue"
    operators_directory(queue)
    with private_umask():
        WitnessSubmitter("http://w.invalid", queue, start=False).close()
    assert mode(queue) == 0o700
    assert mode(queue / "failed") == LISTABLE
