"""``witness keygen``: a bad origin or a place the key cannot be written is a usage
error with a message naming it, and leaves no key file behind to block the next try."""

from __future__ import annotations

import os

import pytest

from spanproof.verifier._cli import main


def test_a_bad_origin_writes_no_key(capsys, tmp_path):
    key = tmp_path / "witness.key"
    assert main(["witness", "keygen", "--key", str(key), "--origin", "a b"]) == 2
    assert "invalid witness key name 'a b'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    # the corrected command then works
    assert main(["witness", "keygen", "--key", str(key), "--origin", "a.example/log"]) == 0
    assert key.exists() and (tmp_path / "witness.key.pub").exists()


@pytest.mark.parametrize("where", ["missing/witness.key", "dir/"])
def test_a_key_path_that_cannot_be_written_is_a_usage_error(capsys, tmp_path, where):
    (tmp_path / "dir").mkdir()
    key = os.path.join(tmp_path, where)
    assert main(["witness", "keygen", "--key", key]) == 2
    err = capsys.readouterr().err
    assert f"{key}: cannot write the witness key (" in err
    assert "unexpected" not in err


def test_a_public_key_that_cannot_be_written_leaves_no_private_key(capsys, tmp_path):
    (tmp_path / "witness.key.pub").mkdir()  # in the way of the public key
    key = tmp_path / "witness.key"
    assert main(["witness", "keygen", "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert f"{key}.pub: cannot write the witness key (" in err
    assert "unexpected" not in err
    assert sorted(os.listdir(tmp_path)) == ["witness.key.pub"]
