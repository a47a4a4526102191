"""A ``--witness-key`` verifier key string that cannot be used is named in the error:
with several flags, "verifier key: not a verifier key" did not say which."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main
from spanproof.witness.signing import CheckpointSigner

GOOD_VKEY = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(bytes(32)), "w.example/log").vkey


@pytest.mark.parametrize("bad, why", [
    ("a+b", "not a verifier key '<name>+<8 hex>+<base64 key>'"),
    ("w+12345678+AAAA", "verifier key is not an Ed25519 (type 0x01) key"),
    ("w+12345678+!!!!", "verifier key is not valid base64"),
])
def test_a_bad_verifier_key_string_is_named(capsys, tmp_path, keys, bad, why):
    status = main(["verify", "--key", str(keys.pub), "--witness-key", GOOD_VKEY,
                   "--witness-key", bad, str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"spanproof: error: verifier key {bad!r}: {why}\n"


def test_a_long_string_is_cut(capsys, tmp_path, keys):
    bad = "x+" + "y" * 500
    assert main(["verify", "--key", str(keys.pub), "--witness-key", bad, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"verifier key {bad[:120]!r}" not in err  # the quoted text is the cut one
    assert f"verifier key '{bad[:120]}...'" in err


def test_a_verifier_key_file_saved_with_a_byte_order_mark_is_refused_naming_it(
    capsys, tmp_path, keys
):
    # Some editors save UTF-8 with a byte-order mark: the error was "verifier key hash
    # does not match its name and key", which sent the user looking at the key.
    vkey = tmp_path / "witness.vkey"
    vkey.write_bytes(b"\xef\xbb\xbf" + GOOD_VKEY.encode() + b"\n")
    status = main(["verify", "--key", str(keys.pub), "--witness-key", str(vkey), str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == (f"spanproof: error: {vkey}: a byte-order mark (U+FEFF) in the verifier key; "
                   "save it as plain text without one\n")
