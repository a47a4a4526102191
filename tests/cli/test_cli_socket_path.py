"""A Unix socket given as a bundle or a key file is named as a socket, not reported
with open()'s "No such device or address"."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from spanproof.verifier._cli import main


@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory() as short:  # a socket's path is at most ~100 bytes
        path = os.path.join(short, "s.spanproof.json")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
            yield path


def test_verify_names_a_socket_as_a_bundle(capsys, keys, sock_path):
    assert main(["verify", "--key", str(keys.pub), sock_path]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {sock_path}: cannot read: not a regular file (a socket)\n")


def test_show_names_a_socket(capsys, sock_path):
    assert main(["show", sock_path]) == 1
    assert "not a regular file (a socket)" in capsys.readouterr().out


def test_verify_names_a_socket_as_a_key_file(capsys, tmp_path, sock_path):
    assert main(["verify", "--key", sock_path, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"spanproof: error: {sock_path}: cannot read key file (not a regular " \
                  "file (a socket))\n"
