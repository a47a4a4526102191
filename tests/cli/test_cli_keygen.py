"""``spanproof keygen``: key files, permissions, key id, refusing to overwrite."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from cli_support import spanproof_script

from spanproof.exporter.keys import SigningKey
from spanproof.verifier import key_id, load_public_key
from spanproof.verifier._cli import main


def _printed_keyid(out: str) -> str:
    match = re.search(r"^key id\s+([0-9a-f]{64})$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def test_keygen_writes_a_private_key_0600_and_the_public_key(capsys, tmp_path):
    out_dir = tmp_path / "keys"
    assert main(["keygen", "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    priv, pub = out_dir / "signing.key", out_dir / "signing.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    public_key = load_public_key(pub.read_bytes())
    assert _printed_keyid(out) == key_id(public_key)
    assert SigningKey.load(priv).keyid == key_id(public_key)
    assert str(priv) in out and str(pub) in out
    assert err == ""


def test_keygen_refuses_to_overwrite_an_existing_key(capsys, tmp_path):
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "signing.key").read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"spanproof: error: {tmp_path / 'signing.key'} already exists")
    assert "--force" in err
    assert (tmp_path / "signing.key").read_bytes() == before


def test_keygen_refuses_when_only_the_public_key_exists(capsys, tmp_path):
    (tmp_path / "signing.pub").write_text("someone else's key")
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "signing.pub").read_text() == "someone else's key"


def test_keygen_force_replaces_the_key(capsys, tmp_path):
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    first = _printed_keyid(capsys.readouterr().out)
    assert main(["keygen", "--out", str(tmp_path), "--force"]) == 0
    second = _printed_keyid(capsys.readouterr().out)
    assert first != second
    assert SigningKey.load(tmp_path / "signing.key").keyid == second
    assert stat.S_IMODE(os.stat(tmp_path / "signing.key").st_mode) == 0o600


def test_keygen_needs_out(capsys):
    assert main(["keygen"]) == 2
    err = capsys.readouterr().err
    assert "spanproof: error: the following arguments are required: --out" in err


def test_keygen_into_an_unwritable_place_fails_with_a_message(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["keygen", "--out", str(blocker / "keys")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("spanproof: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_keygen_out_naming_a_file_says_it_is_not_a_directory(capsys, tmp_path, force):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["keygen", "--out", str(blocker), *force]) == 2
    _, err = capsys.readouterr()
    assert f"cannot write the key to {blocker}: not a directory" in err
    assert "already exists" not in err and "--force" not in err
    assert blocker.read_text() == "not a directory"


def test_keygen_error_shows_control_characters_of_a_path_escaped(capsys, tmp_path):
    # The message quotes the path it was given: an escape sequence in it must not
    # reach the terminal (clear the screen, recolour, rewrite the line), as verify's,
    # show's and the witness's messages already keep it out.
    blocker = tmp_path / "evil\x1b[2J\rname"
    blocker.write_text("not a directory")
    assert main(["keygen", "--out", str(blocker)]) == 2
    _, err = capsys.readouterr()
    assert "\x1b" not in err and "\r" not in err
    assert "evil\\x1b[2J\\rname: not a directory" in err


def test_keygen_output_shows_control_characters_of_a_path_escaped(capsys, tmp_path):
    # The lines naming the written files quoted them raw: a name holding an OSC
    # sequence set the terminal's title.
    out_dir = tmp_path / "kg\x1b]0;PWNED\x07"
    assert main(["keygen", "--out", str(out_dir)]) == 0
    out, _ = capsys.readouterr()
    assert "\x1b" not in out and "\x07" not in out
    assert "kg\\x1b]0;PWNED\\x07" in out


@pytest.mark.skipif(os.name == "nt", reason="POSIX console script")
def test_keygen_console_script(tmp_path):
    done = subprocess.run([spanproof_script(), "keygen", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _printed_keyid(done.stdout) == SigningKey.load(tmp_path / "signing.key").keyid


def test_keygen_and_witness_keygen_refuse_an_existing_key_with_the_same_status(
    capsys, tmp_path
):
    # SPEC §12.10: refusing a key file that exists is a usage error (2), in both
    # commands; 1 would read as a check that failed.
    producer, witness = tmp_path / "producer", tmp_path / "witness.key"
    assert main(["keygen", "--out", str(producer)]) == 0
    assert main(["witness", "keygen", "--key", str(witness)]) == 0
    before = {p: p.read_bytes() for p in (producer / "signing.key", witness)}
    capsys.readouterr()
    statuses = [main(["keygen", "--out", str(producer)]),
                main(["witness", "keygen", "--key", str(witness)])]
    assert statuses == [2, 2]
    err = capsys.readouterr().err
    assert "already exists; not replacing a key" in err
    assert "exists; refusing to overwrite a witness key" in err
    assert {p: p.read_bytes() for p in before} == before
