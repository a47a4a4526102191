"""DirectorySink: atomic, durable writes that never overwrite an existing file."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from exporter_support import signing_key

from spanproof.exporter import BundleSink, ChainPosition, DirectorySink, SealedBundle, seal
from spanproof.exporter import sinks as sinks_module
from spanproof.exporter.disclosure import redaction_matcher
from spanproof.exporter.sinks import SyncMode, syncfs_available
from spanproof.verifier import Producer

TRACE = "0af7651916cd43dd8448eb211c80319c"


def bundle(reason: str = "shutdown", *, trace: str = TRACE, bodies: Sequence[Any] = (),
           redact: Sequence[str] = ()) -> SealedBundle:
    return seal(trace, bodies, ChainPosition.genesis(trace), signer=signing_key(),
                producer=Producer("t", "0", "0123456789abcdef"),
                sealed_at=datetime(2027, 1, 1, tzinfo=timezone.utc), reason=reason,
                redact=redaction_matcher(redact) if redact else None)


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


def test_a_bundle_is_readable_by_everyone_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = DirectorySink(tmp_path).write(bundle())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_a_temporary_file_that_cannot_be_removed_does_not_hide_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cleanup after publishing unlinks the temporary name; its failure is not the
    # bundle's: the bundle is written and its path returned.
    from spanproof.verifier import _files

    def refusing(path: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(_files.os, "unlink", refusing)
    b = bundle()
    (outcome,) = DirectorySink(tmp_path).write_many([b])
    assert outcome == str(tmp_path / b.file_name)
    assert (tmp_path / b.file_name).read_bytes() == b.data


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


# -- groups (write_many) ---------------------------------------------------------


def trace_bundle(n: int) -> SealedBundle:
    """An empty bundle of the *n*-th trace: a group of them has no name in common."""
    return bundle(trace=f"{n + 1:032x}")


class _Calls:
    """Records the sink's durability calls, in order, and lets tests fail them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, syncfs: bool) -> None:
        self.log: list[str] = []
        self.fail_syncfs: OSError | None = None
        self.fail_dir_fsync: OSError | None = None
        real_fsync, real_link = os.fsync, os.link

        def fsync(fd: int) -> None:
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") \
                else False
            self.log.append("fsync-dir" if is_dir else "fsync-file")
            if is_dir and self.fail_dir_fsync is not None:
                raise self.fail_dir_fsync
            real_fsync(fd)

        def link(src: str, dst: str) -> None:
            self.log.append("link")
            real_link(src, dst)

        def fake_syncfs(fd: int) -> None:
            self.log.append("syncfs")
            if self.fail_syncfs is not None:
                raise self.fail_syncfs
            real_fsync(fd)

        monkeypatch.setattr(sinks_module.os, "fsync", fsync)
        monkeypatch.setattr(sinks_module.os, "link", link)
        monkeypatch.setattr(sinks_module, "_SYNCFS", fake_syncfs if syncfs else None)


@pytest.mark.parametrize(
    ("have_syncfs", "sync", "used", "barrier"),
    [
        # Every file is durable before any is published: one syncfs for the group...
        (True, "auto", "filesystem", ["syncfs"]),
        # ...or one fsync per file, when asked for or without syncfs.
        (True, "file", "file", ["fsync-file"] * 3),
        (False, "auto", "file", ["fsync-file"] * 3),
    ],
)
def test_a_group_is_made_durable_then_published_with_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, have_syncfs: bool, sync: SyncMode,
    used: str, barrier: list[str],
) -> None:
    calls = _Calls(monkeypatch, syncfs=have_syncfs)
    sink = DirectorySink(tmp_path, sync=sync)
    assert sink.sync == used
    group = [trace_bundle(n) for n in range(3)]
    assert sink.write_many(group) == [str(tmp_path / b.file_name) for b in group]
    for b in group:
        assert (tmp_path / b.file_name).read_bytes() == b.data
    assert sorted(os.listdir(tmp_path)) == sorted(b.file_name for b in group)  # no temps
    assert calls.log == barrier + ["link"] * 3 + ["fsync-dir"]


def test_sync_filesystem_is_refused_without_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Calls(monkeypatch, syncfs=False)
    with pytest.raises(ValueError, match="syncfs"):
        DirectorySink(tmp_path, sync="filesystem")


def test_a_single_bundle_is_fsynced_not_synced_with_the_whole_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch, syncfs=True)
    DirectorySink(tmp_path).write(trace_bundle(0))
    assert calls.log == ["fsync-file", "link", "fsync-dir"]


def test_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of"):
        DirectorySink(tmp_path, sync="never")  # type: ignore[arg-type]


def test_failed_syncfs_fails_the_whole_group_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch, syncfs=True)
    calls.fail_syncfs = OSError(errno.EIO, "Input/output error")
    outcomes = DirectorySink(tmp_path).write_many([trace_bundle(n) for n in range(3)])
    assert all(isinstance(o, OSError) and o.errno == errno.EIO for o in outcomes)
    assert os.listdir(tmp_path) == []  # no bundle, no temporary file
    assert "link" not in calls.log


def test_failed_directory_fsync_reports_every_published_bundle_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name whose directory entry may not survive a crash is not reported written;
    # the caller writes the bundles again, which finds them in place: no second copy.
    calls = _Calls(monkeypatch, syncfs=True)
    calls.fail_dir_fsync = OSError(errno.EIO, "Input/output error")
    group = [trace_bundle(0), trace_bundle(1)]
    sink = DirectorySink(tmp_path)
    assert all(isinstance(o, OSError) for o in sink.write_many(group))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    calls.fail_dir_fsync = None
    calls.log.clear()
    assert sink.write_many(group) == [str(tmp_path / b.file_name) for b in group]
    assert sorted(os.listdir(tmp_path)) == sorted(b.file_name for b in group)
    assert calls.log[-1] == "fsync-dir"


def test_writing_the_same_bundle_again_returns_its_path_without_a_copy(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    b = bundle(bodies=[], redact=())
    assert sink.write(b) == sink.write(b) == str(tmp_path / b.file_name)
    assert os.listdir(tmp_path) == [b.file_name]


def test_one_unwritable_bundle_does_not_fail_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Calls(monkeypatch, syncfs=True)
    group = [trace_bundle(n) for n in range(3)]
    real_open = os.open

    def open_failing_for_the_second(path: str, flags: int, *args: object) -> int:
        if group[1].file_name in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sinks_module.os, "open", open_failing_for_the_second)
    first, second, third = DirectorySink(tmp_path).write_many(group)
    assert isinstance(second, OSError) and second.errno == errno.ENOSPC
    assert Path(str(first)).read_bytes() == group[0].data
    assert Path(str(third)).read_bytes() == group[2].data
    assert sorted(os.listdir(tmp_path)) == sorted([group[0].file_name, group[2].file_name])


def test_a_name_taken_within_a_group_gets_an_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Calls(monkeypatch, syncfs=True)
    first, second = bundle("shutdown"), bundle("idle_timeout")
    p1, p2 = DirectorySink(tmp_path).write_many([first, second])
    assert isinstance(p1, str) and isinstance(p2, str) and p2.endswith(".1.spanproof.json")
    assert Path(p1).read_bytes() == first.data and Path(p2).read_bytes() == second.data


def test_a_group_with_disclosures_writes_them_beside_their_bundles_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch, syncfs=True)
    group = []
    for n in range(2):
        trace = f"{n + 1:032x}"
        body = {"span": {"traceId": trace, "spanId": f"{n + 1:016x}", "name": "s",
                         "attributes": {"app.secret": {"stringValue": f"value-{n}"}}},
                "resource": {"attributes": {}}, "scope": {"name": "tests"}}
        group.append(bundle("root_ended", trace=trace, bodies=[body], redact=["app.secret"]))
    assert all(b.disclosures for b in group)
    paths = DirectorySink(tmp_path).write_many(group)
    for b, path in zip(group, paths, strict=True):
        secret = tmp_path / SealedBundle.disclosures_file_name(b.file_name)
        assert Path(str(path)).read_bytes() == b.data
        assert secret.read_bytes() == b.disclosures_data()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert calls.log.count("syncfs") == 1 and "fsync-file" not in calls.log
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) reporting errors is Linux 5.8+")
def test_the_real_syncfs_writes_a_group(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path, sync="filesystem")
    group = [trace_bundle(n) for n in range(4)]
    assert [Path(str(p)).read_bytes() for p in sink.write_many(group)] == [b.data for b in group]


def test_sync_filesystem_syncs_the_directorys_filesystem_or_says_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(sinks_module, "_SYNCFS", None)
    assert sinks_module.sync_filesystem(str(tmp_path)) is False
    monkeypatch.setattr(sinks_module, "_SYNCFS", lambda fd: synced.append(os.fstat(fd).st_ino))
    assert sinks_module.sync_filesystem(str(tmp_path)) is True
    assert synced == [os.stat(tmp_path).st_ino]


def test_write_together_syncs_once_per_directory_and_reports_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    syncs: list[str] = []
    dir_fsyncs: list[str] = []
    monkeypatch.setattr(sinks_module, "syncfs_available", lambda: True)
    monkeypatch.setattr(sinks_module, "sync_filesystem", lambda d: syncs.append(d) or True)

    def fsync_directory(directory: str) -> None:
        dir_fsyncs.append(directory)
        if directory == str(b):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sinks_module, "fsync_directory", fsync_directory)
    files = [(str(a / "1.json"), b"one"), (str(b / "2.json"), b"two"),
             (str(a / "3.json"), b"three"), (str(tmp_path / "missing" / "4.json"), b"four")]
    errors = sinks_module.write_together(files)
    assert sorted(syncs) == [str(a), str(b)] and sorted(dir_fsyncs) == [str(a), str(b)]
    assert errors[0] is None and errors[2] is None
    # In place, but its directory could not be made durable: reported.
    assert isinstance(errors[1], OSError) and (b / "2.json").read_bytes() == b"two"
    assert isinstance(errors[3], FileNotFoundError)
    assert (a / "1.json").read_bytes() == b"one" and (a / "3.json").read_bytes() == b"three"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_write_together_leaves_nothing_when_the_group_cannot_be_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks_module, "syncfs_available", lambda: True)

    def failing(directory: str) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sinks_module, "sync_filesystem", failing)
    errors = sinks_module.write_together([(str(tmp_path / "1"), b"x"), (str(tmp_path / "2"), b"y")])
    assert all(isinstance(e, OSError) for e in errors) and list(tmp_path.iterdir()) == []
