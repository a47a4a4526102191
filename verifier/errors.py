"""The one exception hierarchy of spanproof.

Split by cause, as callers branch on it:

* :class:`InvalidBundle` -- the input is not a well-formed v1 document (bad JSON,
  duplicate keys, non-canonical bytes, unknown version, missing fields).
* :class:`VerificationError` -- the input is well formed but a check failed
  (signature, chain, head, trust).  A few subclasses name the check.
* :class:`TransportError` -- a network or storage edge failed (producers and the
  witness; the verifier itself never raises it).

Caller mistakes (wrong argument types, impossible options) stay ``ValueError`` /
``TypeError``.
"""

from __future__ import annotations

__all__ = [
    "CanonicalizationError",
    "ChainError",
    "DisclosureError",
    "IncompleteBundle",
    "InvalidBundle",
    "InvalidDisclosure",
    "InvalidKey",
    "InvalidReceipt",
    "LogInconsistent",
    "NoteSignatureError",
    "ProofError",
    "ReceiptMismatch",
    "SignatureError",
    "SpanproofError",
    "TransportError",
    "TrustError",
    "VerificationError",
]


class SpanproofError(Exception):
    """Base class of every error spanproof raises on purpose."""

    def detached(self) -> SpanproofError:
        """This error without its traceback or the errors it was raised from, to
        keep: their frames and arguments hold what was being read (a hostile line,
        decoded or parsed, many times its size), and the frame that caught it holds
        it, a cycle only the cyclic collector frees, which allocations of untracked
        objects never start.  The message keeps what they said."""
        self.__cause__ = self.__context__ = None
        return self.with_traceback(None)


class InvalidBundle(SpanproofError):
    """The input is not a well-formed spanproof v1 document (SPEC §3, §8 step 1)."""


class CanonicalizationError(InvalidBundle, ValueError):
    """A value cannot be encoded as RFC 8785 canonical JSON, or bytes are not canonical."""


class InvalidKey(SpanproofError, ValueError):
    """A key or trust-root file cannot be used (wrong algorithm, malformed PEM)."""


class VerificationError(SpanproofError):
    """A well-formed document failed a verification check."""


class SignatureError(VerificationError):
    """No trusted key produced a valid signature over the envelope (SPEC §8 step 3)."""


class TrustError(VerificationError):
    """The signing key is not trusted for this bundle (SPEC §8 step 5)."""


class ChainError(VerificationError):
    """The records do not form the signed hash chain (SPEC §8 steps 7-8)."""


class IncompleteBundle(VerificationError):
    """The bundle verified but declares evidence it did not certify (SPEC §8 step 9)."""


class InvalidDisclosure(InvalidBundle):
    """A disclosure file is not a well-formed v1 disclosure document (SPEC §2.5.4)."""


class DisclosureError(VerificationError):
    """A disclosed value does not open the commitment it names (SPEC §2.5.5)."""


class InvalidReceipt(InvalidBundle):
    """A witness receipt, checkpoint or signed note is not well formed (SPEC §12)."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1.3, §2.1.4)."""


class NoteSignatureError(VerificationError):
    """A checkpoint carries no valid signature by a pinned witness key (SPEC §12.5 step 2)."""


class ReceiptMismatch(VerificationError):
    """A receipt does not belong to this bundle or contradicts its own checkpoint
    (SPEC §12.5 steps 3-4)."""


class LogInconsistent(VerificationError):
    """Two checkpoints of one log cannot both be honest: a fork (same size, different
    roots, or a failing consistency proof) or a rollback (SPEC §12.7)."""


class TransportError(SpanproofError):
    """A network or storage operation at an edge failed."""
