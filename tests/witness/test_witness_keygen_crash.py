"""``witness keygen`` stopped at any point (a crash, a power cut, an error): a key is
never left without the public key and origin it was written with, and what is left
is not taken for a key, or a key's origin, by the next ``keygen`` or ``serve``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from spanproof.verifier._cli import main
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import load_private_key
from spanproof.witness.signing import CheckpointSigner, default_origin

ORIGIN = "w.example/log"

# Runs `witness keygen` and ends the process, without any cleanup, just before the
# N-th (argv[1]) step that makes a file's bytes or name durable; at a write, after
# half its bytes.  Exits 0 when the command finished before that step.
_CRASHING_KEYGEN = """
import os, sys
from spanproof.verifier._cli import main

crash_at, steps = int(sys.argv[1]), 0

def stopping(real, partial=False):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == crash_at:
            if partial:
                real(args[0], bytes(args[1])[: len(args[1]) // 2])
            os._exit(137)
        return real(*args, **kwargs)
    return step

for name in ("fsync", "replace", "rename", "link"):
    setattr(os, name, stopping(getattr(os, name)))
os.write = stopping(os.write, partial=True)
status = main(sys.argv[2:])
sys.stdout.flush()
os._exit(0 if status == 0 else 100 + status)
"""


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
    crashes = 0
    for crash_at in range(1, 100):
        directory = tmp_path / f"at-{crash_at}"
        directory.mkdir()
        key = directory / "w.key"
        done = subprocess.run(
            [sys.executable, "-c", _CRASHING_KEYGEN, str(crash_at),
             "witness", "keygen", "--key", str(key), "--origin", ORIGIN],
            capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            _assert_whole_key(key, ORIGIN)
            break
        assert done.returncode == 137, done.stderr
        crashes += 1
        if os.path.lexists(key):
            _assert_whole_key(key, ORIGIN)
            assert main(["witness", "keygen", "--key", str(key)]) == 2
            continue
        # No key: `serve` finds none to load, and a new keygen (here without an
        # origin) writes a whole key, with no origin left over from the stopped one.
        with pytest.raises(InvalidKey, match=r"w\.key"):
            CheckpointSigner.load(key)
        assert main(["witness", "keygen", "--key", str(key)]) == 0, capsys.readouterr().err
        _assert_whole_key(key, None)
    else:
        raise AssertionError("keygen never finished")
    assert crashes >= 5  # every write, fsync and rename of the three files


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
