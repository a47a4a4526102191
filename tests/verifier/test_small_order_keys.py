"""Keys of small order (SPEC §6.1): a point of order 1, 2, 4 or 8 verifies signatures
nobody made, so no trust root, key file or pinned witness key may hold one."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from spanproof.exporter.keys import SigningKey
from spanproof.verifier import (
    BUNDLE_MEDIA_TYPE,
    TRUST_ROOT_MEDIA_TYPE,
    InvalidKey,
    TrustedKey,
    TrustRoot,
    canonicalize,
    key_id,
    load_public_key,
)
from spanproof.verifier.checkpoint import WitnessKey, verify_checkpoint
from spanproof.verifier.dsse import PAYLOAD_TYPE, pae
from spanproof.verifier.keys import has_small_order, raw_public_bytes

if TYPE_CHECKING:
    from conftest import Kit

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
    unchecked = object.__new__(WitnessKey)
    for field, value in (("public_key", Ed25519PublicKey.from_public_bytes(IDENTITY)),
                         ("name", None), ("source", "witness key")):
        object.__setattr__(unchecked, field, value)
    assert verify_checkpoint(forged, [unchecked])
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


_RECORDS_OPEN = b',"records":['


def _header(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(data.split(b"\n", 1)[0][: -len(_RECORDS_OPEN)] + b"}")
    return doc


def _forged_for_any_key(kit: Kit, raw: bytes) -> bytes:
    """A sealed bundle whose signature is replaced by R = the identity, S = 0, under
    the key id of the small-order key *raw*: signed by no one."""
    data = kit.seal().data
    doc = _header(data)
    signature = {"keyid": key_id(Ed25519PublicKey.from_public_bytes(raw)),
                 "sig": base64.b64encode(ANY_MESSAGE_SIGNATURE).decode()}
    doc["envelope"]["signatures"] = [signature]
    assert doc["mediaType"] == BUNDLE_MEDIA_TYPE
    return canonicalize(doc)[:-1] + _RECORDS_OPEN + b"\n" + data.split(b"\n", 1)[1]


@pytest.mark.parametrize("raw", [IDENTITY, SMALL_ORDER["order_4"]], ids=["identity", "zero"])
def test_small_order_trusted_key_from_python_fail(raw: bytes) -> None:
    key = Ed25519PublicKey.from_public_bytes(raw)
    with pytest.raises(InvalidKey, match=r"^mine: key is a point of small order"):
        TrustedKey.from_public_key(key, "mine")
    with pytest.raises(InvalidKey, match=r"^mine: key is a point of small order"):
        TrustedKey(key, key_id(key), "mine")


def test_small_order_trusted_key_never_verifies_a_bundle_nobody_signed(kit: Kit) -> None:
    forged = _forged_for_any_key(kit, IDENTITY)
    # The forgery is real: OpenSSL verifies it under the identity key.
    payload = base64.b64decode(_header(forged)["envelope"]["payload"])
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(
        ANY_MESSAGE_SIGNATURE, pae(PAYLOAD_TYPE, payload))
    # No trust root that holds the key can be built to check it with.
    with pytest.raises(InvalidKey, match="small order"):
        TrustRoot.from_keys([TrustedKey.from_public_key(
            Ed25519PublicKey.from_public_bytes(IDENTITY), "identity")])
    # Under an ordinary trust root it fails.
    assert not kit.check(forged).ok


@pytest.mark.parametrize("raw", [IDENTITY, SMALL_ORDER["order_4"]], ids=["identity", "zero"])
def test_small_order_witness_key_from_python_fail(raw: bytes) -> None:
    key = Ed25519PublicKey.from_public_bytes(raw)
    with pytest.raises(InvalidKey, match=r"^pinned: key is a point of small order"):
        WitnessKey(key, None, "pinned")
    with pytest.raises(InvalidKey, match=r"^pinned: key is a point of small order"):
        WitnessKey(key, "witness.test/log", "pinned")
