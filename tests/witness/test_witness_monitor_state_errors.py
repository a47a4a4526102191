"""``monitor``: a state file that cannot be read is named as the state file, with
why, not reported as a failure of the witness URL with a raw ``[Errno N]`` text."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main

URL = "http://127.0.0.1:9"  # never reached: the state is read first


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "Is a directory"),
    (lambda p: p.write_bytes(b" " * (1 << 20 + 1)), "larger than 1048576 bytes"),
])
def test_an_unreadable_state_file_is_named(capsys, tmp_path, make, why):
    pub = tmp_path / "witness.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    state = tmp_path / "state.json"
    make(state)
    status = main(["monitor", "--url", URL, "--state", str(state), "--witness-key", str(pub)])
    out = capsys.readouterr().out
    assert status == 1
    assert out == f"FAIL monitor state {state}: cannot read or write it ({why})\n"
