"""A producer key write stopped part-way (a crash, a power cut) left its hidden
temporary file, holding the private key, in the key directory for good: nothing read
it or removed it.  Writers now write their temporary files under the directory's
lock, and the next writer of that directory removes what a stopped one left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stopped_writes import (
    CRASHING_MAIN,
    holds_private_key,
    record_temporary_writes,
    temporaries,
    without_directory_locks,
)

from spanproof.exporter import keys
from spanproof.exporter.keys import SigningKey, load_or_create


def _assert_pair(directory: Path) -> SigningKey:
    key = SigningKey.load(directory / "signing.key")
    assert (directory / "signing.pub").read_bytes() == key.public_pem()
    return key


def test_keygen_stopped_at_any_step_leaves_no_private_key_once_a_producer_starts(
    tmp_path: Path,
) -> None:
    crashes, private_leftovers = 0, 0
    for crash_at in range(1, 60):
        directory = tmp_path / f"at-{crash_at}"
        done = subprocess.run(
            [sys.executable, "-c", CRASHING_MAIN, str(crash_at), "keygen", "--out",
             str(directory)], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            _assert_pair(directory)
            assert temporaries(directory) == []
            break
        assert done.returncode == 137, done.stderr
        crashes += 1
        private_leftovers += holds_private_key(directory)
        # What the exporter does at its start with a default key directory.
        key = load_or_create(directory)
        assert _assert_pair(directory).keyid == key.keyid
        assert temporaries(directory) == [], crash_at
    else:
        raise AssertionError("keygen never finished")
    assert crashes >= 3  # the private key's write and fsync, its link, signing.pub's
    assert private_leftovers >= 2  # a private key's temporary file was there to remove


def test_a_key_write_removes_only_the_temporary_files_of_the_key_pair(tmp_path: Path) -> None:
    leftovers = [".signing.key.0123abcd.tmp", ".signing.pub.0123abcd.tmp"]
    others = [".signing.key.0123ABCD.tmp", ".signing.key.0123abc.tmp", "signing.key.tmp",
              ".other.key.0123abcd.tmp", ".signing.key.disclosures.0123abcd.tmp"]
    for name in leftovers + others:
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / ".signing.key.0123abce.tmp").mkdir()
    SigningKey.generate().write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, ".signing.key.0123abce.tmp", "signing.key", "signing.pub"])
    assert all((tmp_path / name).read_text() == f"{name}\n" for name in others)


@pytest.mark.parametrize("how", ["create", "replace", "public-half"])
def test_every_temporary_key_file_is_written_under_the_directory_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # The lock is what makes a temporary file found under it a stopped writer's:
    # the private key's was written before the lock was taken, and signing.pub's
    # (a key found without it) with no lock at all.
    if how != "create":
        SigningKey.generate().write(tmp_path)
    if how == "public-half":
        (tmp_path / "signing.pub").unlink()
    written = record_temporary_writes(monkeypatch, keys)
    if how == "replace":
        SigningKey.generate().write(tmp_path, exist_ok=True)
    else:
        load_or_create(tmp_path)
    names = ["signing.pub"] if how == "public-half" else ["signing.key", "signing.pub"]
    assert written == [(name, True) for name in names]


def test_without_directory_locks_no_temporary_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a filesystem that locks no directories another writer's may be in progress.
    without_directory_locks(monkeypatch, keys)
    (tmp_path / ".signing.key.0123abcd.tmp").write_text("another writer's\n")
    SigningKey.generate().write(tmp_path)
    assert (tmp_path / ".signing.key.0123abcd.tmp").read_text() == "another writer's\n"


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on FAT, some FUSE and network filesystems: link() fails with EPERM."""

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", src, None, dst)

    monkeypatch.setattr(os, "link", link)


def test_a_default_key_is_created_where_the_filesystem_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The private key was linked into place, so a producer on such a filesystem could
    # not start: "Operation not permitted" from the key directory.
    _no_hard_links(monkeypatch)
    key = load_or_create(tmp_path)
    assert _assert_pair(tmp_path).keyid == key.keyid
    assert temporaries(tmp_path) == []
    with pytest.raises(FileExistsError):
        SigningKey.generate().write(tmp_path)
    assert _assert_pair(tmp_path).keyid == key.keyid


def test_without_hard_links_or_directory_locks_a_key_is_still_placed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_hard_links(monkeypatch)
    without_directory_locks(monkeypatch, keys)
    key = SigningKey.generate()
    key.write(tmp_path)
    assert _assert_pair(tmp_path).keyid == key.keyid
    with pytest.raises(FileExistsError):
        SigningKey.generate().write(tmp_path)
    assert _assert_pair(tmp_path).keyid == key.keyid
