"""DSSE envelopes (SPEC §5.1): pre-authentication encoding and signature checks.

Follows the DSSE v1 protocol: the signature covers
``PAE(payloadType, payload)``; the verifier checks it over the exact payload bytes
*before* the payload is parsed, and afterwards uses only those bytes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .errors import InvalidBundle, SignatureError
from .keys import TrustedKey, TrustRoot

__all__ = ["PAYLOAD_TYPE", "Envelope", "Signature", "pae"]

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return DSSE's PAE: ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def _b64decode(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidBundle(f"{where}: must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidBundle(f"{where}: not valid standard base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidBundle(f"{where}: not canonical padded base64 (SPEC §5.1)")
    return raw


@dataclass(frozen=True)
class Signature:
    """One DSSE signature: raw bytes and the (untrusted) key id hint."""

    sig: bytes
    keyid: str


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope.  ``payload`` holds the exact signed bytes."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        """Build from the envelope's JSON object.

        Raises:
            InvalidBundle: missing or mistyped fields, bad base64, unknown payloadType.
        """
        if not isinstance(obj, dict):
            raise InvalidBundle("envelope: must be an object")
        extra = set(obj) - {"payload", "payloadType", "signatures"}
        if extra:
            raise InvalidBundle(f"envelope: unknown fields {sorted(extra)}")
        payload_type = obj.get("payloadType")
        if payload_type != PAYLOAD_TYPE:
            raise InvalidBundle(
                f"envelope: unknown payloadType {payload_type!r} (expected {PAYLOAD_TYPE!r})"
            )
        payload = _b64decode(obj.get("payload"), "envelope.payload")
        raw_sigs = obj.get("signatures")
        if not isinstance(raw_sigs, list) or not raw_sigs:
            raise InvalidBundle("envelope: 'signatures' must be a non-empty array")
        sigs = []
        for i, raw in enumerate(raw_sigs):
            if not isinstance(raw, dict) or set(raw) - {"sig", "keyid"}:
                raise InvalidBundle(f"envelope.signatures[{i}]: must be {{'keyid','sig'}}")
            keyid = raw.get("keyid", "")
            if not isinstance(keyid, str):
                raise InvalidBundle(f"envelope.signatures[{i}].keyid: must be a string")
            sigs.append(
                Signature(_b64decode(raw.get("sig"), f"envelope.signatures[{i}].sig"), keyid)
            )
        return cls(payload_type, payload, tuple(sigs))

    def to_json(self) -> dict[str, Any]:
        """Return the envelope's JSON object (standard base64, DSSE field names)."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def verify(self, trust: TrustRoot) -> TrustedKey:
        """Return the first trusted key with a valid signature over PAE(type, payload).

        Raises:
            SignatureError: no signature verifies under any trusted key.
        """
        message = pae(self.payload_type, self.payload)
        for sig in self.signatures:
            for key in trust.ordered_for(sig.keyid):
                if key.verify(sig.sig, message):
                    return key
        hints = ", ".join(s.keyid or "(none)" for s in self.signatures)
        trusted = {k.keyid for k in trust.keys}
        if any(s.keyid in trusted for s in self.signatures):
            reason = (
                "signature does not verify with the trusted key its key id names "
                "(altered statement, swapped signature, or a key id pointing to another key)"
            )
        else:
            reason = "signed by a key that is not trusted"
        raise SignatureError(f"{reason}; envelope key id hint(s): {hints}")
