"""A trust-root entry whose window holds no time (``validFrom`` not before
``validUntil``) makes the trust root unusable (SPEC §6.2), as a malformed time does:
refused when read, naming the entry, rather than failing every bundle as 'outside its
trust-root window'."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import TRUST_ROOT_MEDIA_TYPE, TrustRoot

PEM = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _root(valid_from: str, valid_until: str) -> bytes:
    return json.dumps({"mediaType": TRUST_ROOT_MEDIA_TYPE, "keys": [
        {"publicKey": PEM, "validFrom": valid_from, "validUntil": valid_until}]}).encode()


@pytest.mark.parametrize("valid_from, valid_until", [
    ("2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),  # reversed
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),  # empty: validUntil is excluded
    ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.25Z"),
    ("2026-01-01T00:00:00.0000005Z", "2026-01-01T00:00:00.0000001Z"),  # in one microsecond
    ("2026-12-31T23:59:60Z", "2026-12-31T23:59:59.999999999Z"),
    # Instants compare to the microsecond (SPEC §5.3), a leap second as 23:59:59.999999:
    # these windows are shorter than any instant a verifier tells apart.
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000000001Z"),
    ("2026-12-31T23:59:59.999999999Z", "2026-12-31T23:59:60Z"),
])
def test_a_window_holding_no_time_is_refused(valid_from, valid_until):
    with pytest.raises(InvalidKey, match=rf"root\.json: keys\[0\]: validFrom {valid_from} "
                       rf"is not before validUntil {valid_until}"):
        TrustRoot.from_json(_root(valid_from, valid_until), "root.json")


def test_a_window_of_one_microsecond_is_taken():
    root = TrustRoot.from_json(
        _root("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000001Z"), "root.json")
    assert len(root.keys) == 1


def test_verify_with_a_reversed_window_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "root.json"
    path.write_bytes(_root("2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z"))
    (tmp_path / "b.spanproof.json").write_bytes(b"")
    assert main(["verify", "--trust-root", str(path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: keys[0]: validFrom 2030-01-01T00:00:00Z is not before validUntil" in err
