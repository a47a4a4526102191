"""SigningKey's DSSE signatures: libsodium signs, and the bytes are the Ed25519
signatures the key defines (RFC 8032 signing is deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.dsse import PAYLOAD_TYPE, pae
from spanproof.verifier.keys import key_id

PAYLOADS = [b"", b"{}", bytes(range(256)) * 40, "statement \u00e9\u4e2d".encode()]


@pytest.mark.parametrize("seed", [bytes(32), bytes(range(32)), b"\xff" * 32])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["empty", "object", "10k", "utf8"])
def test_envelope_signature_is_the_keys_ed25519_signature_of_the_pae(
    seed: bytes, payload: bytes
) -> None:
    key = SigningKey.from_seed(seed)
    envelope = key.sign_envelope(payload)
    reference = Ed25519PrivateKey.from_private_bytes(seed)
    assert envelope.payload_type == PAYLOAD_TYPE
    assert envelope.payload == payload
    [signature] = envelope.signatures
    assert signature.sig == reference.sign(pae(PAYLOAD_TYPE, payload))
    assert signature.keyid == key_id(reference.public_key())
    reference.public_key().verify(signature.sig, pae(PAYLOAD_TYPE, payload))


def test_a_generated_key_signs_with_its_own_seed() -> None:
    signatures = []
    for key in (SigningKey.generate(), SigningKey.generate()):
        sig = key.sign_envelope(b"payload").signatures[0].sig
        key.private_key.public_key().verify(sig, pae(PAYLOAD_TYPE, b"payload"))
        signatures.append(sig)
    assert signatures[0] != signatures[1]


def test_a_key_loaded_from_its_pem_file_signs_as_the_original(tmp_path: Path) -> None:
    original = SigningKey.generate()
    private_path, _ = original.write(tmp_path)
    loaded = SigningKey.load(private_path)
    assert loaded.seed == original.seed
    assert loaded.sign_envelope(b"p").signatures == original.sign_envelope(b"p").signatures
