"""A file given as a private key that is something else: the message names what it
holds and what is expected, and a file holding no private key draws no warning about
its permissions."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.keys import load_private_key
from spanproof.witness.signing import CheckpointSigner

README = Path(__file__).resolve().parents[2] / "README.md"
_ED25519 = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
_PEM, _DER = serialization.Encoding.PEM, serialization.Encoding.DER
_PKCS8, _SPKI = serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
_PLAIN = serialization.NoEncryption()
EXPECTED = ("where an unencrypted PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----, "
            "as `spanproof keygen` writes) is expected")


def _openssh_private() -> bytes:
    return _ED25519.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, _PLAIN)


KINDS: dict[str, tuple[Callable[[], bytes], str]] = {
    "public-pem": (
        lambda: _ED25519.public_key().public_bytes(_PEM, _SPKI),
        "a public key (-----BEGIN PUBLIC KEY-----)",
    ),
    "encrypted-pkcs8": (
        lambda: _ED25519.private_bytes(
            _PEM, _PKCS8, serialization.BestAvailableEncryption(b"passphrase")),
        "an encrypted private key (-----BEGIN ENCRYPTED PRIVATE KEY-----)",
    ),
    "openssh-private": (_openssh_private,
                        "an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)"),
    "openssh-public": (
        lambda: _ED25519.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" me@host\n",
        "an OpenSSH public key line",
    ),
    "rsa-pkcs1": (
        lambda: rsa.generate_private_key(65537, 1024).private_bytes(
            _PEM, serialization.PrivateFormat.TraditionalOpenSSL, _PLAIN),
        "an RSA private key (PKCS#1) (-----BEGIN RSA PRIVATE KEY-----)",
    ),
    "ec-sec1": (
        lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
            _PEM, serialization.PrivateFormat.TraditionalOpenSSL, _PLAIN),
        "an EC private key (SEC1) (-----BEGIN EC PRIVATE KEY-----)",
    ),
    # `openssl ecparam -genkey -name prime256v1`: the curve's parameters, then the key.
    "ec-sec1-after-its-parameters": (
        lambda: (b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
                 + ec.generate_private_key(ec.SECP256R1()).private_bytes(
                     _PEM, serialization.PrivateFormat.TraditionalOpenSSL, _PLAIN)),
        "an EC private key (SEC1) (-----BEGIN EC PRIVATE KEY-----)",
    ),
    "der-private": (lambda: _ED25519.private_bytes(_DER, _PKCS8, _PLAIN),
                    "a DER (binary) private key"),
    "der-public": (lambda: _ED25519.public_key().public_bytes(_DER, _SPKI),
                   "a DER (binary) public key"),
    "text": (lambda: b"hello\n", "no PEM block (no -----BEGIN line)"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_file_given_as_private_key_is_refused_naming_what_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    make, found = KINDS[kind]
    path = tmp_path / "given.key"
    path.write_bytes(make())
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING), \
            pytest.raises(InvalidKey, match=re.escape(f"{path}: {found}, {EXPECTED}")):
        load_private_key(path)
    # Only a file holding a private key is a secret whose permissions matter.
    if "private" not in kind:
        assert caplog.records == []


@pytest.mark.parametrize(("kind", "hint"), [
    ("encrypted-pkcs8", "spanproof reads no passphrase: decrypt it with "
                        "`openssl pkey -in KEY -out KEY.plain`"),
    ("openssh-private", "ssh-keygen cannot write an Ed25519 key as PKCS#8; convert it as "
                        "the README shows"),
    ("rsa-pkcs1", "SPEC §6 allows only Ed25519 keys"),
    ("ec-sec1-after-its-parameters", "SPEC §6 allows only Ed25519 keys"),
    ("der-private", "write it as PEM with `openssl pkey -inform DER -in KEY -out KEY.pem`"),
])
def test_a_private_key_of_another_format_is_refused_saying_how_to_convert_it(
    tmp_path: Path, kind: str, hint: str
) -> None:
    path = tmp_path / "given.key"
    path.write_bytes(KINDS[kind][0]())
    with pytest.raises(InvalidKey, match=re.escape(f"; {hint}")):
        load_private_key(path)


def test_a_public_key_given_as_a_witness_key_names_the_witness_keygen(tmp_path: Path) -> None:
    path = tmp_path / "witness.key"
    path.write_bytes(KINDS["public-pem"][0]())
    with pytest.raises(InvalidKey, match=re.escape(
        f"{path}: a public key (-----BEGIN PUBLIC KEY-----), where an unencrypted PKCS#8 "
        "PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----, as `spanproof witness keygen` "
        "writes) is expected"
    )):
        CheckpointSigner.load(path)


def test_a_private_key_others_can_read_is_still_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(_ED25519.private_bytes(_PEM, _PKCS8, _PLAIN))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_private_key(path).private_bytes_raw() == b"\x07" * 32
    assert [r.getMessage() for r in caplog.records] == [
        f"private key {path} is accessible by group or others (mode 644); "
        "restrict it with chmod 600"
    ]


def test_an_unreadable_pkcs8_block_is_refused_saying_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(InvalidKey, match=re.escape(
        f"{path}: its -----BEGIN PRIVATE KEY----- block cannot be read (")
    ) as refused:
        load_private_key(path)
    assert str(refused.value).endswith(
        "expected an unencrypted PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----,"
        " as `spanproof keygen` writes)")


def test_the_readme_conversion_of_an_openssh_key_gives_a_key_spanproof_loads(
    tmp_path: Path,
) -> None:
    # README, "Keys, trust roots and rotation": the command ssh-keygen has no equivalent of.
    block = re.search(r"```sh\n\(umask 077; python -c '(.*?)' \\\n  ~/\.ssh/id_ed25519 "
                      r"> signing\.key\)\n```", README.read_text(), re.DOTALL)
    assert block, "the conversion is no longer in the README"
    (tmp_path / "id_ed25519").write_bytes(_openssh_private())
    converted = subprocess.run(
        [sys.executable, "-c", block[1], str(tmp_path / "id_ed25519")],
        capture_output=True, check=True,
    ).stdout
    (tmp_path / "signing.key").write_bytes(converted)
    (tmp_path / "signing.key").chmod(0o600)
    assert load_private_key(tmp_path / "signing.key").private_bytes_raw() == b"\x07" * 32


@pytest.mark.parametrize("second", [
    lambda: Ed25519PrivateKey.generate().private_bytes(_PEM, _PKCS8, _PLAIN),
    lambda: _ED25519.private_bytes(_PEM, _PKCS8, _PLAIN),
    _openssh_private,
], ids=["another-key", "the-same-key", "openssh"])
def test_a_file_holding_two_private_keys_is_refused(
    tmp_path: Path, second: Callable[[], bytes]
) -> None:
    # A new key appended to the old one's file at rotation: a reader taking the first
    # block would go on signing with the old key.
    path = tmp_path / "signing.key"
    path.write_bytes(_ED25519.private_bytes(_PEM, _PKCS8, _PLAIN) + second())
    with pytest.raises(InvalidKey, match=re.escape(
        f"{path}: 2 private keys in one file; which of them would sign is a guess: "
        "keep one private key in the file"
    )):
        load_private_key(path)
