"""Cross-check our DSSE envelopes with an independent implementation.

``securesystemslib`` (the DSSE implementation python-tuf and in-toto use) verifies
the envelopes spanproof writes, given only the public key, and our verifier accepts
an envelope securesystemslib signs.  Note: securesystemslib only tries a key whose
key id equals the signature's ``keyid`` (its issue #416), so the key is built with
our SPEC §6.1 key id; our verifier treats the key id as a hint only.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from spanproof.verifier import (
    PAYLOAD_TYPE,
    Envelope,
    SignatureError,
    TrustedKey,
    TrustRoot,
    pae,
)

if TYPE_CHECKING:
    from conftest import Kit


def _envelope_json(data: bytes) -> dict[str, Any]:
    header = data.split(b"\n", 1)[0].removesuffix(b',"records":[')
    doc: dict[str, Any] = json.loads(header + b"}")
    return doc["envelope"]


def _sslib_key(kit: Kit) -> SSlibKey:
    return SSlibKey.from_crypto(kit.key.private_key.public_key(), keyid=kit.key.keyid)


def test_securesystemslib_verifies_our_envelope(kit: Kit) -> None:
    envelope = _envelope_json(kit.seal().data)
    theirs = SslibEnvelope.from_dict(copy.deepcopy(envelope))
    ours = Envelope.from_json(envelope)
    assert theirs.payload_type == PAYLOAD_TYPE == ours.payload_type
    assert theirs.payload == ours.payload
    assert theirs.pae() == pae(ours.payload_type, ours.payload)
    accepted = theirs.verify([_sslib_key(kit)], 1)
    assert list(accepted) == [kit.key.keyid]


def test_securesystemslib_rejects_a_modified_payload(kit: Kit) -> None:
    envelope = _envelope_json(kit.seal().data)
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    stmt["predicate"]["recordCount"] = "3"
    envelope["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    theirs = SslibEnvelope.from_dict(copy.deepcopy(envelope))
    with pytest.raises(sslib_exceptions.VerificationError):
        theirs.verify([_sslib_key(kit)], 1)
    # ... and so do we.
    with pytest.raises(SignatureError, match="signature does not verify"):
        Envelope.from_json(envelope).verify(kit.trust)


def test_securesystemslib_rejects_another_key(kit: Kit) -> None:
    envelope = _envelope_json(kit.seal(signer=kit.attacker).data)
    envelope["signatures"][0]["keyid"] = kit.key.keyid
    theirs = SslibEnvelope.from_dict(copy.deepcopy(envelope))
    with pytest.raises(sslib_exceptions.VerificationError):
        theirs.verify([_sslib_key(kit)], 1)


def test_we_verify_an_envelope_securesystemslib_signed(kit: Kit) -> None:
    payload = kit.seal().statement.to_payload()
    signer = CryptoSigner(kit.key.private_key)
    theirs = SslibEnvelope(payload, PAYLOAD_TYPE, {})
    theirs.sign(signer)
    ours = Envelope.from_json(theirs.to_dict())
    assert ours.payload == payload
    signer_key = ours.verify(kit.trust)
    assert signer_key.keyid == kit.key.keyid
    # Their key id is their own (sslib's default); ours is only a hint, so it still
    # verifies, and never adds trust.
    assert ours.signatures[0].keyid != kit.key.keyid
    attacker_only = TrustRoot.from_keys(
        [TrustedKey.from_public_key(kit.attacker.private_key.public_key())]
    )
    with pytest.raises(SignatureError, match="not trusted"):
        ours.verify(attacker_only)
