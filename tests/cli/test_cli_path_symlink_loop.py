"""A path given on the command line that is a loop of symbolic links is named as
such, not as a file that does not exist (``os.path.exists`` says False to both)."""

from __future__ import annotations

import errno
import os

import pytest

from spanproof.verifier._cli import main


@pytest.fixture
def loop(tmp_path):
    a, b = tmp_path / "a.spanproof.json", tmp_path / "b.spanproof.json"
    os.symlink(b, a)
    os.symlink(a, b)
    return str(a)


def test_verify_names_a_symlink_loop(capsys, tmp_path, loop, keys):
    assert main(["verify", "--key", str(keys.pub), loop]) == 2
    err = capsys.readouterr().err
    assert err == (f"spanproof: error: {loop}: cannot look it up "
                   f"({os.strerror(errno.ELOOP)})\n")


def test_show_names_a_symlink_loop(capsys, loop):
    assert main(["show", loop]) == 2
    assert f"{loop}: cannot look it up ({os.strerror(errno.ELOOP)})" in capsys.readouterr().err


def test_a_missing_path_is_still_no_such_file(capsys, tmp_path):
    missing = str(tmp_path / "missing.spanproof.json")
    assert main(["show", missing]) == 2
    assert capsys.readouterr().err == f"spanproof: error: {missing}: no such file or directory\n"
