"""``witness keygen`` stopped at any point (a crash, a power cut, an error): a key is
never left without the public key and origin it was written with, what is left is
not taken for a key, or a key's origin, by the next ``keygen`` or ``serve``, and the
temporary files left (the key's holds the private key) the next ``keygen`` removes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from stopped_writes import (
    CRASHING_MAIN,
    holds_private_key,
    record_temporary_writes,
    temporaries,
)

from spanproof.verifier import _files
from spanproof.verifier._cli import main
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import load_private_key
from spanproof.witness import signing
from spanproof.witness.signing import CheckpointSigner, default_origin

ORIGIN = "w.example/log"

def _public_pem(key_path: Path) -> bytes:
    return load_private_key(key_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _assert_whole_key(key: Path, origin: str | None) -> None:
    """*key* loads, its .pub is its public key, and its .origin is *origin*'s."""
    assert (key.parent / f"{key.name}.pub").read_bytes() == _public_pem(key)
    origin_file = key.parent / f"{key.name}.origin"
    if origin is None:
        assert not origin_file.exists()
    else:
        assert origin_file.read_text() == origin + "\n"
    raw = load_private_key(key).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert CheckpointSigner.load(key).origin == (origin or default_origin(raw))


def test_keygen_stopped_at_any_step_leaves_no_key_without_its_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The key was written first and its origin last: stopped in between, the key
    # was there without <key>.origin, and `witness serve` took the origin derived
    # from the key, not the one `keygen --origin` had printed in its verifier key.
    # Stopped mid-write, the key file held half a key.
    crashes, private_leftovers = 0, 0
    for crash_at in range(1, 100):
        directory = tmp_path / f"at-{crash_at}"
        directory.mkdir()
        key = directory / "w.key"
        done = subprocess.run(
            [sys.executable, "-c", CRASHING_MAIN, str(crash_at),
             "witness", "keygen", "--key", str(key), "--origin", ORIGIN],
            capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            _assert_whole_key(key, ORIGIN)
            assert temporaries(directory) == []
            break
        assert done.returncode == 137, done.stderr
        crashes += 1
        private_leftovers += holds_private_key(directory)
        if os.path.lexists(key):
            _assert_whole_key(key, ORIGIN)
            assert main(["witness", "keygen", "--key", str(key)]) == 2
        else:
            # No key: `serve` finds none to load, and a new keygen (here without an
            # origin) writes a whole key, with no origin left over from the stopped one.
            with pytest.raises(InvalidKey, match=r"w\.key"):
                CheckpointSigner.load(key)
            assert main(["witness", "keygen", "--key", str(key)]) == 0, capsys.readouterr().err
            _assert_whole_key(key, None)
        # The stopped keygen's temporary files, its private key among them (mode
        # 0600, hidden), stayed for good: nothing read or removed them.
        assert temporaries(directory) == [], crash_at
    else:
        raise AssertionError("keygen never finished")
    assert crashes >= 5  # every write, fsync and rename of the three files
    assert private_leftovers >= 3  # a key's temporary file was there to remove


def test_keygen_failing_after_the_public_key_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The origin's rename failed after the public key's: the key was removed but
    # its <key>.pub stayed, the public half of no key.
    real_replace, calls = os.replace, []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), src, None, dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "--key", str(key), "--origin", ORIGIN]) == 2
    assert "cannot write the witness key" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["witness", "keygen", "--key", str(key)]) == 0
    _assert_whole_key(key, None)


def test_keygen_without_an_origin_removes_an_origin_that_belongs_to_no_key(
    tmp_path: Path,
) -> None:
    # Left by a keygen stopped before its key was written: taken for the new key's
    # origin, `serve` would sign the new key's log under an origin it never printed.
    key = tmp_path / "w.key"
    (tmp_path / "w.key.origin").write_text("old.example/log\n")
    (tmp_path / "w.key.pub").write_text("left over\n")
    assert main(["witness", "keygen", "--key", str(key)]) == 0
    _assert_whole_key(key, None)
    assert sorted(os.listdir(tmp_path)) == ["w.key", "w.key.pub"]


def test_keygen_leaves_an_existing_keys_files_alone(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "--key", str(key), "--origin", ORIGIN]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert main(["witness", "keygen", "--key", str(key)]) == 2
    assert main(["witness", "keygen", "--key", str(key), "--origin", "other/log"]) == 2
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    _assert_whole_key(key, ORIGIN)


def test_keygen_removes_only_the_temporary_files_of_its_own_three_files(
    tmp_path: Path,
) -> None:
    # A stopped keygen's temporary files are `.<file>.<8 hex>.tmp` of the key, its
    # .pub and its .origin; anything else that looks like a temporary file is
    # someone else's (another key's, `serve`'s checkpoint's) or no temporary file.
    leftovers = [".w.key.0123abcd.tmp", ".w.key.pub.0123abcd.tmp",
                 ".w.key.origin.0123abcd.tmp"]
    others = [".w.key.0123abc.tmp", ".w.key.0123ABCD.tmp", ".w.key.0123abcd.tmp.bak",
              "w.key.0123abcd.tmp", ".w.key.checkpoint.0123abcd.tmp",
              ".other.key.0123abcd.tmp", ".w.0123abcd.tmp", "..w.key.0123abcd.tmp"]
    for name in leftovers + others:
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / "elsewhere").write_text("kept\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".w.key.0123abce.tmp")
    (tmp_path / ".w.key.0123abcf.tmp").mkdir()
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "--key", str(key), "--origin", ORIGIN]) == 0
    _assert_whole_key(key, ORIGIN)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [*others, "elsewhere", ".w.key.0123abce.tmp", ".w.key.0123abcf.tmp",
         "w.key", "w.key.pub", "w.key.origin"])
    assert all((tmp_path / name).read_text() == f"{name}\n" for name in others)
    assert (tmp_path / ".w.key.0123abce.tmp").is_symlink()
    assert (tmp_path / "elsewhere").read_text() == "kept\n"


def test_keygen_writes_every_temporary_file_under_the_directory_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lock is what makes a temporary file found under it a stopped writer's:
    # the key's was written before the lock was taken, so a keygen holding it could
    # have removed the key of another one about to take it.
    written = record_temporary_writes(monkeypatch, signing)
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "--key", str(key), "--origin", ORIGIN]) == 0
    assert written == [("w.key", True), ("w.key.pub", True), ("w.key.origin", True)]


def test_keygen_without_directory_locks_removes_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unlocked, another keygen may be writing the temporary file this one finds.
    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(_files.fcntl, "flock", flock)
    (tmp_path / ".w.key.0123abcd.tmp").write_text("another keygen's\n")
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "--key", str(key)]) == 0
    _assert_whole_key(key, None)
    assert (tmp_path / ".w.key.0123abcd.tmp").read_text() == "another keygen's\n"
