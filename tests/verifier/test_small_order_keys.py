"""Keys of small order (SPEC §6.1): a point of order 1, 2, 4 or 8 verifies signatures
nobody made, so no trust root, key file or pinned witness key may hold one."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from spanproof.exporter.keys import SigningKey
from spanproof.verifier import TRUST_ROOT_MEDIA_TYPE, InvalidKey, TrustRoot, load_public_key
from spanproof.verifier.checkpoint import WitnessKey, verify_checkpoint
from spanproof.verifier.keys import has_small_order, raw_public_bytes

_P = 2**255 - 19
IDENTITY = bytes([1]) + bytes(31)
# The encodings of points of order 1, 2, 4 and 8, canonical and not (y + p).
SMALL_ORDER = {
    "identity": IDENTITY,
    "identity_y_plus_p": (_P + 1).to_bytes(32, "little"),
    "order_2": (_P - 1).to_bytes(32, "little"),
    "order_4": bytes(32),
    "order_4_y_plus_p": _P.to_bytes(32, "little"),
    "order_8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order_8_negated": bytes.fromhex(
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    "order_8_other": bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
}
# With the identity as the key, R = the identity and S = 0 verify for every message.
ANY_MESSAGE_SIGNATURE = IDENTITY + bytes(32)


def _pem(raw: bytes) -> bytes:
    der = bytes.fromhex("302a300506032b6570032100") + raw
    b64 = base64.b64encode(der).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n".encode()


def test_the_identity_key_verifies_a_signature_nobody_made() -> None:
    # Why the keys are refused: OpenSSL verifies this for any message.
    key = Ed25519PublicKey.from_public_bytes(IDENTITY)
    key.verify(ANY_MESSAGE_SIGNATURE, b"any bundle at all")


@pytest.mark.parametrize("raw", SMALL_ORDER.values(), ids=SMALL_ORDER.keys())
def test_small_order_key_file_fail(raw: bytes) -> None:
    assert has_small_order(raw)
    with pytest.raises(InvalidKey, match="small order"):
        load_public_key(_pem(raw), "key.pem")


def test_small_order_key_in_trust_root_fail() -> None:
    doc = {"mediaType": TRUST_ROOT_MEDIA_TYPE, "keys": [
        {"publicKey": SigningKey.from_seed(b"\xaa" * 32).public_pem().decode()},
        {"publicKey": _pem(IDENTITY).decode()},
    ]}
    with pytest.raises(InvalidKey, match=r"trust\.json: keys\[1\]: key is a point of small"):
        TrustRoot.from_json(json.dumps(doc).encode(), "trust.json")


def test_small_order_witness_key_forging_any_checkpoint_fail(tmp_path: Path) -> None:
    name = "witness.test/forged"
    text = f"{name}\n1\n{base64.b64encode(hashlib.sha256(b'any').digest()).decode()}\n"
    khash = hashlib.sha256(name.encode() + b"\n\x01" + IDENTITY).digest()[:4]
    forged = (f"{text}\n\u2014 {name} "
              f"{base64.b64encode(khash + ANY_MESSAGE_SIGNATURE).decode()}\n").encode()
    blob = base64.b64encode(b"\x01" + IDENTITY).decode()
    vkey = f"{name}+{khash.hex()}+{blob}"
    # Pinned unchecked, the key would make the forged checkpoint verify.
    assert verify_checkpoint(forged, [WitnessKey(Ed25519PublicKey.from_public_bytes(IDENTITY))])
    with pytest.raises(InvalidKey, match="small order"):
        WitnessKey.from_vkey(vkey)
    (tmp_path / "w.pem").write_bytes(_pem(IDENTITY))
    for spec in (vkey, str(tmp_path / "w.pem")):
        with pytest.raises(InvalidKey, match="small order"):
            WitnessKey.load(spec)


def test_ordinary_keys_are_not_of_small_order() -> None:
    for seed in range(32):
        key = load_public_key(SigningKey.from_seed(bytes([seed]) * 32).public_pem())
        assert not has_small_order(raw_public_bytes(key))
