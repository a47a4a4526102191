"""``monitor``: a ``--state`` path it cannot use is a usage error (exit status 2),
named as the state file with why, not a failed check (1, which a job alerting on
forks reads as one) nor a failure of the witness URL with a raw ``[Errno N]``
text.  A state file that is read but malformed is a failed check, as before."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main

URL = "http://127.0.0.1:9"  # never reached: the state is read first


def _monitor(tmp_path: Path, state: Path) -> int:
    pub = tmp_path / "witness.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return main(["monitor", "--url", URL, "--state", str(state), "--witness-key", str(pub)])


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "Is a directory"),
    # Twice the largest note (each byte escaped in two), and 4 KiB for the rest.
    (lambda p: p.write_bytes(b" " * (2 * (1 << 20) + 4097)), "larger than 2101248 bytes"),
])
def test_an_unreadable_state_file_is_a_usage_error(capsys, tmp_path, make, why):
    state = tmp_path / "state.json"
    make(state)
    assert _monitor(tmp_path, state) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"spanproof: error: --state {state}: cannot read or write it ({why})\n"


def test_a_state_in_a_missing_directory_is_a_usage_error(capsys, tmp_path):
    state = tmp_path / "missing" / "m.json"
    assert _monitor(tmp_path, state) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"spanproof: error: --state {state}: the directory "
                   f"{tmp_path / 'missing'} does not exist\n")
    assert not (tmp_path / "missing").exists()


def test_a_state_in_a_directory_it_cannot_write_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "m.json"
    lock = f"{state}.lock"
    real_open = os.open

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:  # the tests may run as root
        if os.fspath(path) == lock:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), lock)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    assert _monitor(tmp_path, state) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"spanproof: error: --state {state}: cannot open its lock {lock} "
                   f"(Permission denied)\n")


def test_a_state_file_it_cannot_read_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanproof.witness import monitor

    state = tmp_path / "m.json"
    state.write_bytes(b"{}")

    def unreadable(path: Any, **kwargs: Any) -> Any:  # the tests may run as root
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(monitor, "read_named_file", unreadable)
    assert _monitor(tmp_path, state) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"spanproof: error: --state {state}: cannot read or write it "
                   f"(Permission denied)\n")


def test_a_malformed_state_file_is_still_a_failed_check(capsys, tmp_path):
    state = tmp_path / "m.json"
    state.write_bytes(b'{"mediaType": "something else"}')
    assert _monitor(tmp_path, state) == 1
    out, _ = capsys.readouterr()
    assert out == (f"FAIL {URL}: monitor state {state}: not a "
                   f"application/vnd.spanproof.monitor-state.v1+json document\n")


def test_a_closed_standard_output_is_not_a_state_it_cannot_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its OK line was printed where an OSError was read as the state's: a reader
    # gone from the pipe made "--state ...: cannot read or write it (Broken pipe)".
    import io
    import sys
    from types import SimpleNamespace

    from spanproof.witness import monitor

    class Gone(io.TextIOBase):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(monitor, "monitor_once", lambda *a, **k: SimpleNamespace(
        message="OK http://127.0.0.1:9: first checkpoint, tree size 1", current=None))
    monkeypatch.setattr(sys, "stdout", Gone())
    status = _monitor(tmp_path, tmp_path / "m.json")
    err = capsys.readouterr().err
    assert (status, err) == (141, ""), err  # as any command whose reader went away
