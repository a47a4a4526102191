"""Certified Execution Records (SPEC §2) and the hash chain over them (SPEC §4).

A record is a JSON object describing one span, plus its position in the trace's
chain (``seq``) and the hash of the record before it (``prev``).  The record hash
is SHA-256 over the record's RFC 8785 bytes; the first record of a trace links to
a genesis value bound to the trace id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidBundle
from .values import is_committed_value, validate_committed_value, validate_value

__all__ = [
    "CER_COMMITTED_MEDIA_TYPE",
    "CER_MEDIA_TYPE",
    "SPAN_KINDS",
    "STATUS_CODES",
    "ChainState",
    "digest_hex",
    "genesis_hash",
    "record_hash",
    "validate_record",
]

CER_MEDIA_TYPE = "application/vnd.spanproof.cer.v1+json"
#: The media type of a record holding at least one committed value (SPEC §2.5.3).
CER_COMMITTED_MEDIA_TYPE = "application/vnd.spanproof.cer.v1.1+json"
GENESIS_PREFIX = b"spanproof.genesis.v1\x00"

SPAN_KINDS = frozenset(
    {
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
    }
)
STATUS_CODES = frozenset({"STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"})

_TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")
_SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")
_UINT = re.compile(r"(0|[1-9][0-9]{0,19})\Z")  # at most 20 digits: uint64
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_UINT64_MAX = 2**64 - 1

_RECORD_KEYS = frozenset({"mediaType", "seq", "prev", "span", "resource", "scope"})
_SPAN_KEYS = frozenset(
    {
        "traceId", "spanId", "parentSpanId", "traceState", "name", "kind",
        "startTimeUnixNano", "endTimeUnixNano", "status", "attributes",
        "droppedAttributesCount", "events", "droppedEventsCount", "links",
        "droppedLinksCount",
    }
)
_EVENT_KEYS = frozenset({"timeUnixNano", "name", "attributes", "droppedAttributesCount"})
_LINK_KEYS = frozenset(
    {"traceId", "spanId", "traceState", "attributes", "droppedAttributesCount"}
)
_RESOURCE_KEYS = frozenset({"attributes", "droppedAttributesCount", "schemaUrl"})
_SCOPE_KEYS = frozenset({"name", "version", "attributes", "droppedAttributesCount", "schemaUrl"})


def digest_hex(data: bytes) -> str:
    """Return ``sha256:<lowercase hex>`` of *data* (SPEC §4.1 spelling)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def record_hash(canonical_record: bytes) -> str:
    """Return the SPEC §4.1 hash of a record given its canonical bytes."""
    return "sha256:" + hashlib.sha256(canonical_record).hexdigest()


def genesis_hash(trace_id: str) -> str:
    """Return the SPEC §4.2 genesis value: the ``prev`` of a trace's first record."""
    return "sha256:" + hashlib.sha256(GENESIS_PREFIX + trace_id.encode("ascii")).hexdigest()


def is_digest(value: Any) -> bool:
    """True when *value* is a ``sha256:<64 lowercase hex>`` string."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def is_uint(value: Any, maximum: int = _UINT64_MAX) -> bool:
    """True when *value* is a canonical unsigned decimal string no larger than *maximum*."""
    return isinstance(value, str) and _UINT.match(value) is not None and int(value) <= maximum


def is_trace_id(value: Any) -> bool:
    """True when *value* is 32 lowercase hex digits, not all zero."""
    return isinstance(value, str) and _TRACE_ID.match(value) is not None and value != "0" * 32


def is_span_id(value: Any) -> bool:
    """True when *value* is 16 lowercase hex digits, not all zero."""
    return isinstance(value, str) and _SPAN_ID.match(value) is not None and value != "0" * 16


def _fields(obj: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidBundle(f"{where}: must be an object")
    keys = obj.keys()
    if keys != allowed:
        missing = sorted(allowed - keys)
        extra = sorted(keys - allowed)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(extra))
        raise InvalidBundle(f"{where}: {'; '.join(parts)}")
    return obj


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidBundle(f"{where}.{key}: must be a string")
    return value


def _uint(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj[key]
    if not is_uint(value):
        raise InvalidBundle(f"{where}.{key}: must be an unsigned decimal string")
    return int(value)


def _attributes(obj: Mapping[str, Any], where: str, *, committable: bool = False) -> int:
    """Validate an attributes object; return how many committed values it holds.

    Only span attributes are *committable* (SPEC §2.5.1); anywhere else a committed
    value is an unknown value type.
    """
    attrs = obj["attributes"]
    if not isinstance(attrs, dict):
        raise InvalidBundle(f"{where}.attributes: must be an object")
    committed = 0
    for key, value in attrs.items():
        if committable and is_committed_value(value):
            validate_committed_value(value, f"{where}.attributes[{key!r}]")
            committed += 1
        else:
            validate_value(value, f"{where}.attributes[{key!r}]")
    _uint(obj, "droppedAttributesCount", where)
    return committed


def validate_record(record: Any, where: str = "record") -> None:
    """Check that *record* is a well-formed v1 CER (SPEC §2.1).

    The chain fields are checked for form only; their values are checked by
    :class:`ChainState`.

    Raises:
        InvalidBundle: naming the field and the defect.
    """
    rec = _fields(record, _RECORD_KEYS, where)
    media_type = rec["mediaType"]
    if not isinstance(media_type, str) or media_type not in (
        CER_MEDIA_TYPE, CER_COMMITTED_MEDIA_TYPE
    ):
        raise InvalidBundle(f"{where}: unknown record media type {media_type!r}")
    _uint(rec, "seq", where)
    if not is_digest(rec["prev"]):
        raise InvalidBundle(f"{where}.prev: must be sha256:<64 hex>")

    w = f"{where}.span"
    span = _fields(rec["span"], _SPAN_KEYS, w)
    if not is_trace_id(span["traceId"]):
        raise InvalidBundle(f"{w}.traceId: must be 32 lowercase hex digits, not all zero")
    if not is_span_id(span["spanId"]):
        raise InvalidBundle(f"{w}.spanId: must be 16 lowercase hex digits, not all zero")
    if span["parentSpanId"] != "" and not is_span_id(span["parentSpanId"]):
        raise InvalidBundle(f"{w}.parentSpanId: must be empty or 16 lowercase hex digits")
    _str(span, "traceState", w)
    _str(span, "name", w)
    # isinstance first: an array or object is unhashable and would raise TypeError.
    if not isinstance(span["kind"], str) or span["kind"] not in SPAN_KINDS:
        raise InvalidBundle(f"{w}.kind: unknown span kind {span['kind']!r}")
    _uint(span, "startTimeUnixNano", w)
    _uint(span, "endTimeUnixNano", w)
    status = _fields(span["status"], frozenset({"code", "message"}), f"{w}.status")
    if not isinstance(status["code"], str) or status["code"] not in STATUS_CODES:
        raise InvalidBundle(f"{w}.status.code: unknown status code {status['code']!r}")
    _str(status, "message", f"{w}.status")
    committed = _attributes(span, w, committable=True)
    # SPEC §2.5.3: the v2 media type exactly when the record holds a committed value.
    if committed and media_type != CER_COMMITTED_MEDIA_TYPE:
        raise InvalidBundle(f"{where}: a record with committed values must have mediaType "
                            f"{CER_COMMITTED_MEDIA_TYPE!r}")
    if not committed and media_type == CER_COMMITTED_MEDIA_TYPE:
        raise InvalidBundle(f"{where}: mediaType {CER_COMMITTED_MEDIA_TYPE!r} requires at "
                            "least one committed value")
    for key in ("droppedEventsCount", "droppedLinksCount"):
        _uint(span, key, w)
    if not isinstance(span["events"], list):
        raise InvalidBundle(f"{w}.events: must be an array")
    for i, event in enumerate(span["events"]):
        we = f"{w}.events[{i}]"
        ev = _fields(event, _EVENT_KEYS, we)
        _uint(ev, "timeUnixNano", we)
        _str(ev, "name", we)
        _attributes(ev, we)
    if not isinstance(span["links"], list):
        raise InvalidBundle(f"{w}.links: must be an array")
    for i, link in enumerate(span["links"]):
        wl = f"{w}.links[{i}]"
        ln = _fields(link, _LINK_KEYS, wl)
        if not is_trace_id(ln["traceId"]) or not is_span_id(ln["spanId"]):
            raise InvalidBundle(f"{wl}: traceId/spanId must be lowercase hex ids")
        _str(ln, "traceState", wl)
        _attributes(ln, wl)

    res = _fields(rec["resource"], _RESOURCE_KEYS, f"{where}.resource")
    _attributes(res, f"{where}.resource")
    _str(res, "schemaUrl", f"{where}.resource")
    scope = _fields(rec["scope"], _SCOPE_KEYS, f"{where}.scope")
    for key in ("name", "version", "schemaUrl"):
        _str(scope, key, f"{where}.scope")
    _attributes(scope, f"{where}.scope")


@dataclass
class ChainState:
    """Running state of a hash-chain walk (SPEC §4.3), one record at a time.

    Start it at a segment's ``firstSeq`` and ``start`` hash; feed each record's
    parsed value and canonical bytes to :meth:`append`.
    """

    trace_id: str
    next_seq: int
    head: str
    count: int = 0

    def append(self, record: Mapping[str, Any], canonical: bytes, position: int) -> str:
        """Check one record's place in the chain and advance; return its hash.

        Raises:
            ChainError: wrong trace, sequence number or previous hash.
        """
        from .errors import ChainError

        trace_id = record["span"]["traceId"]
        if trace_id != self.trace_id:
            raise ChainError(
                f"record {position}: trace id {trace_id} does not match the bundle's "
                f"trace {self.trace_id} (record moved from another trace)"
            )
        seq = int(record["seq"])
        if seq != self.next_seq:
            raise ChainError(
                f"record {position}: sequence number {seq}, expected {self.next_seq} "
                "(records reordered, inserted, deleted or duplicated)"
            )
        if record["prev"] != self.head:
            raise ChainError(
                f"record {position}: previous-hash mismatch (the record before it was "
                "altered, or records were removed, inserted or reordered)"
            )
        self.head = record_hash(canonical)
        self.next_seq += 1
        self.count += 1
        return self.head
