"""spanproof's evidence format and its offline verifier.

Pure: no network, no clock reads, no OpenTelemetry.  An auditor can install and
use this package alone.  See ``docs/SPEC.md`` for the format.
"""

from __future__ import annotations

from .bundle import BUNDLE_MEDIA_TYPE, BUNDLE_SUFFIX, BundleReader, encode_bundle
from .canonical import canonicalize, loads_canonical, parse_strict
from .dsse import PAYLOAD_TYPE, Envelope, Signature, pae
from .errors import (
    CanonicalizationError,
    ChainError,
    IncompleteBundle,
    InvalidBundle,
    InvalidKey,
    SignatureError,
    SpanproofError,
    TransportError,
    TrustError,
    VerificationError,
)
from .keys import TRUST_ROOT_MEDIA_TYPE, TrustedKey, TrustRoot, key_id, load_public_key
from .records import CER_MEDIA_TYPE, genesis_hash, record_hash, validate_record
from .statement import PREDICATE_TYPE, STATEMENT_TYPE, Completeness, Producer, Statement
from .verify import (
    BundleReport,
    Check,
    Status,
    TraceLink,
    Verdict,
    VerifiedBundle,
    check_bundle,
    find_bundles,
    link_segments,
    verify_bundle,
)

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "BUNDLE_SUFFIX",
    "CER_MEDIA_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "TRUST_ROOT_MEDIA_TYPE",
    "BundleReader",
    "BundleReport",
    "CanonicalizationError",
    "ChainError",
    "Check",
    "Completeness",
    "Envelope",
    "IncompleteBundle",
    "InvalidBundle",
    "InvalidKey",
    "Producer",
    "Signature",
    "SignatureError",
    "SpanproofError",
    "Statement",
    "Status",
    "TraceLink",
    "TransportError",
    "TrustError",
    "TrustRoot",
    "TrustedKey",
    "Verdict",
    "VerificationError",
    "VerifiedBundle",
    "canonicalize",
    "check_bundle",
    "encode_bundle",
    "find_bundles",
    "genesis_hash",
    "key_id",
    "link_segments",
    "load_public_key",
    "loads_canonical",
    "pae",
    "parse_strict",
    "record_hash",
    "validate_record",
    "verify_bundle",
]
