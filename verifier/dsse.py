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

__all__ = ["MAX_SIGNATURES", "PAYLOAD_TYPE", "Envelope", "Signature", "pae"]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: The most signatures an envelope may carry (SPEC §5.1, §8 step 2).  A producer writes
#: one; DSSE allows several.  Each signature may be tried against every trusted key
#: before anything is authenticated, so the bound also bounds that work.
MAX_SIGNATURES = 16
#: Key id hints named in a failure message before the rest are only counted.
_HINTS_SHOWN = 3
#: Characters of one hint shown in a message (a key id is 64).
_HINT_CHARS = 64


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


def _hint_list(hints: list[str]) -> str:
    """The first few key id hints, each cut to a key id's length, then how many more."""
    shown = [
        (h if len(h) <= _HINT_CHARS else h[:_HINT_CHARS] + "...") or "(none)"
        for h in hints[:_HINTS_SHOWN]
    ]
    more = len(hints) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


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
            InvalidBundle: missing or mistyped fields, bad base64, unknown payloadType,
                more than :data:`MAX_SIGNATURES` signatures.
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
        if len(raw_sigs) > MAX_SIGNATURES:
            raise InvalidBundle(
                f"envelope: {len(raw_sigs)} signatures; at most {MAX_SIGNATURES} are "
                "accepted (SPEC §5.1)"
            )
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

        A signature whose bytes repeat an earlier one's is not tried again: the earlier
        one was already tried under every trusted key.

        Raises:
            SignatureError: no signature verifies under any trusted key.
        """
        message = pae(self.payload_type, self.payload)
        tried: set[bytes] = set()
        for sig in self.signatures:
            if sig.sig in tried:
                continue
            tried.add(sig.sig)
            for key in trust.ordered_for(sig.keyid):
                if key.verify(sig.sig, message):
                    return key
        hints = _hint_list([s.keyid for s in self.signatures])
        trusted = {k.keyid for k in trust.keys}
        if any(s.keyid in trusted for s in self.signatures):
            reason = (
                "signature does not verify with the trusted key its key id names "
                "(altered statement, swapped signature, or a key id pointing to another key)"
            )
        else:
            reason = "signed by a key that is not trusted"
        raise SignatureError(f"{reason}; envelope key id hint(s): {hints}")
