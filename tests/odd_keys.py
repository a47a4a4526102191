"""Keys of a type OpenSSL does not know: cryptography raises ``UnsupportedAlgorithm``
for them (not ``ValueError``), which key loaders must turn into their own error."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_ED25519_OID = bytes.fromhex("06032b6570")  # 1.3.101.112
_UNKNOWN_OID = bytes.fromhex("06032b6563")  # 1.3.101.99: no such key type
_KEY = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)


def unknown_type_public_der() -> bytes:
    """A SubjectPublicKeyInfo like an Ed25519 key's, with an unknown algorithm."""
    der = _KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.replace(_ED25519_OID, _UNKNOWN_OID)


def unknown_type_public_pem() -> bytes:
    return _pem("PUBLIC KEY", unknown_type_public_der())


def unknown_type_private_pem() -> bytes:
    """A PKCS#8 private key like an Ed25519 key's, with an unknown algorithm."""
    der = _KEY.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _pem("PRIVATE KEY", der.replace(_ED25519_OID, _UNKNOWN_OID))


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()
