"""DirectorySink: atomic, durable writes that never overwrite an existing file."""

from __future__ import annotations

import errno
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from exporter_support import signing_key

from spanproof.exporter import BundleSink, ChainPosition, DirectorySink, SealedBundle, seal
from spanproof.verifier import Producer

TRACE = "0af7651916cd43dd8448eb211c80319c"


def bundle(reason: str = "shutdown") -> SealedBundle:
    return seal(TRACE, [], ChainPosition.genesis(TRACE), signer=signing_key(),
                producer=Producer("t", "0", "0123456789abcdef"),
                sealed_at=datetime(2027, 1, 1, tzinfo=timezone.utc), reason=reason)


def test_writes_the_exact_bytes_under_the_bundle_name(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "new" / "dir")
    assert isinstance(sink, BundleSink)
    b = bundle()
    path = sink.write(b)
    assert path == str(tmp_path / "new" / "dir" / b.file_name)
    assert Path(path).read_bytes() == b.data
    # Only hex ids and the segment number make up the name; no temp files remain.
    assert re.fullmatch(r"[0-9a-f]{32}-\d{4}-[0-9a-f]{16}\.spanproof\.json", b.file_name)
    assert os.listdir(tmp_path / "new" / "dir") == [b.file_name]


def test_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    first, second = bundle("shutdown"), bundle("idle_timeout")
    assert first.file_name == second.file_name and first.data != second.data
    p1 = sink.write(first)
    p2 = sink.write(second)
    assert p1 != p2
    assert Path(p1).read_bytes() == first.data  # untouched
    assert Path(p2).read_bytes() == second.data
    assert p2.endswith(".1.spanproof.json")
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(p1), os.path.basename(p2)])


def test_without_hard_links_still_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    sink = DirectorySink(tmp_path)
    first, second = bundle("shutdown"), bundle("idle_timeout")
    p1, p2 = sink.write(first), sink.write(second)
    assert Path(p1).read_bytes() == first.data
    assert Path(p2).read_bytes() == second.data
    assert len(os.listdir(tmp_path)) == 2


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        DirectorySink(tmp_path).write(bundle())
    assert os.listdir(tmp_path) == []
