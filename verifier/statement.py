"""The signed in-toto Statement v1 and its spanproof bundle predicate (SPEC §5.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .canonical import canonicalize, loads_canonical
from .errors import InvalidBundle
from .keys import format_time, parse_time
from .records import genesis_hash, is_digest, is_span_id, is_trace_id, is_uint

__all__ = [
    "PREDICATE_TYPE",
    "SEAL_REASONS",
    "STATEMENT_TYPE",
    "Completeness",
    "Producer",
    "Statement",
]

_INSTANCE = re.compile(r"[0-9a-f]{1,64}\Z")

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://spanproof.dev/bundle/v1"
SEAL_REASONS = frozenset(
    {"root_ended", "idle_timeout", "size_limit", "shutdown", "force_flush", "recovered"}
)


@dataclass(frozen=True)
class Producer:
    """Who sealed the bundle: software name, version, and a per-process instance id."""

    name: str
    version: str
    instance: str


@dataclass(frozen=True)
class Completeness:
    """What the producer knows it did not certify (SPEC §5.3).

    ``dropped_spans``: evidence spans lost before certification (queue overflow,
    limits); ``rejected_spans``: spans refused as not certifiable (malformed, or over
    the producer's limits); ``unsampled_spans``:
    evidence spans known to be removed by sampling; ``conflicts``: span ids that
    arrived twice with different content (each version is certified as its own
    record); ``notes``: human-readable notes (limits applied, recovery).
    """

    dropped_spans: int = 0
    rejected_spans: int = 0
    unsampled_spans: int = 0
    conflicts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        """Spans the bundle declares it did not certify."""
        return self.dropped_spans + self.rejected_spans + self.unsampled_spans

    def to_json(self) -> dict[str, Any]:
        """Return the predicate's ``completeness`` object."""
        return {
            "droppedSpans": str(self.dropped_spans),
            "rejectedSpans": str(self.rejected_spans),
            "unsampledSpans": str(self.unsampled_spans),
            "conflicts": sorted(self.conflicts),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Statement:
    """A bundle's signed statement: which chain segment of which trace, and its head."""

    trace_id: str
    segment_index: int
    first_seq: int
    start: str
    previous_statement: str
    record_count: int
    head: str
    seal_reason: str
    sealed_at: datetime
    producer: Producer
    completeness: Completeness = field(default_factory=Completeness)

    def to_json(self) -> dict[str, Any]:
        """Return the in-toto Statement v1 object (an explicit allow-list of fields)."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [
                {
                    "name": f"trace/{self.trace_id}/segment/{self.segment_index}",
                    "digest": {"sha256": self.head.removeprefix("sha256:")},
                }
            ],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "traceId": self.trace_id,
                "segment": {
                    "index": str(self.segment_index),
                    "firstSeq": str(self.first_seq),
                    "start": self.start,
                    "previousStatement": self.previous_statement,
                },
                "recordCount": str(self.record_count),
                "head": self.head,
                "sealReason": self.seal_reason,
                "sealedAt": format_time(self.sealed_at),
                "producer": {
                    "name": self.producer.name,
                    "version": self.producer.version,
                    "instance": self.producer.instance,
                },
                "completeness": self.completeness.to_json(),
            },
        }

    def to_payload(self) -> bytes:
        """Return the canonical bytes that the DSSE envelope signs."""
        return canonicalize(self.to_json())

    @classmethod
    def from_payload(cls, payload: bytes) -> Statement:
        """Parse verified payload bytes (SPEC §8 step 4).

        Raises:
            InvalidBundle: not canonical strict JSON, unknown ``_type`` or
                ``predicateType``, or a malformed predicate.
        """
        doc = loads_canonical(payload, "statement")
        if not isinstance(doc, dict):
            raise InvalidBundle("statement: must be an object")
        if doc.get("_type") != STATEMENT_TYPE:
            raise InvalidBundle(f"statement: unknown _type {doc.get('_type')!r}")
        if doc.get("predicateType") != PREDICATE_TYPE:
            raise InvalidBundle(
                f"statement: unknown predicateType {doc.get('predicateType')!r} "
                f"(this verifier knows {PREDICATE_TYPE!r})"
            )
        if set(doc) != {"_type", "subject", "predicateType", "predicate"}:
            raise InvalidBundle(f"statement: unexpected fields {sorted(doc)}")
        p = doc["predicate"]
        want = {
            "traceId",
            "segment",
            "recordCount",
            "head",
            "sealReason",
            "sealedAt",
            "producer",
            "completeness",
        }
        if not isinstance(p, dict) or set(p) != want:
            raise InvalidBundle(f"statement.predicate: fields must be exactly {sorted(want)}")
        if not is_trace_id(p["traceId"]):
            raise InvalidBundle("statement.predicate.traceId: must be 32 lowercase hex digits")
        seg = p["segment"]
        if not isinstance(seg, dict) or set(seg) != {
            "index",
            "firstSeq",
            "start",
            "previousStatement",
        }:
            raise InvalidBundle(
                "statement.predicate.segment: needs index, firstSeq, start, previousStatement"
            )
        for key in ("index", "firstSeq"):
            if not is_uint(seg[key]):
                raise InvalidBundle(f"statement.predicate.segment.{key}: must be a decimal string")
        if not is_digest(seg["start"]):
            raise InvalidBundle("statement.predicate.segment.start: must be sha256:<hex>")
        if seg["previousStatement"] != "" and not is_digest(seg["previousStatement"]):
            raise InvalidBundle(
                "statement.predicate.segment.previousStatement: must be empty or sha256:<hex>"
            )
        if not is_uint(p["recordCount"]):
            raise InvalidBundle("statement.predicate.recordCount: must be a decimal string")
        if not is_digest(p["head"]):
            raise InvalidBundle("statement.predicate.head: must be sha256:<hex>")
        if not isinstance(p["sealReason"], str) or p["sealReason"] not in SEAL_REASONS:
            raise InvalidBundle(f"statement.predicate.sealReason: unknown {p['sealReason']!r}")
        sealed_at = parse_time(p["sealedAt"], "statement.predicate.sealedAt")
        prod = p["producer"]
        if (
            not isinstance(prod, dict)
            or set(prod) != {"name", "version", "instance"}
            or not all(isinstance(v, str) for v in prod.values())
        ):
            raise InvalidBundle(
                "statement.predicate.producer: needs string name, version, instance"
            )
        if not _INSTANCE.match(prod["instance"]):
            raise InvalidBundle(
                "statement.predicate.producer.instance: must be 1-64 lowercase hex digits"
            )
        comp = _completeness(p["completeness"])
        stmt = cls(
            trace_id=p["traceId"],
            segment_index=int(seg["index"]),
            first_seq=int(seg["firstSeq"]),
            start=seg["start"],
            previous_statement=seg["previousStatement"],
            record_count=int(p["recordCount"]),
            head=p["head"],
            seal_reason=p["sealReason"],
            sealed_at=sealed_at,
            producer=Producer(prod["name"], prod["version"], prod["instance"]),
            completeness=comp,
        )
        expected_subject = stmt.to_json()["subject"]
        if doc["subject"] != expected_subject:
            raise InvalidBundle(
                "statement.subject: must be exactly one subject naming the trace segment "
                "with the chain head as its sha256 digest"
            )
        stmt._check_segment_rules()
        return stmt

    def _check_segment_rules(self) -> None:
        # SPEC §4.4: a first segment starts at genesis; a continuation names its predecessor.
        first = self.segment_index == 0
        if first and (self.first_seq != 0 or self.start != genesis_hash(self.trace_id)):
            raise InvalidBundle(
                "statement.predicate.segment: segment 0 must start at seq 0 from the genesis hash"
            )
        if first and self.previous_statement != "":
            raise InvalidBundle("statement.predicate.segment: segment 0 has no previous statement")
        if not first and self.previous_statement == "":
            raise InvalidBundle(
                "statement.predicate.segment: a continuation segment needs a previousStatement"
            )


def _completeness(obj: Any) -> Completeness:
    where = "statement.predicate.completeness"
    keys = {"droppedSpans", "rejectedSpans", "unsampledSpans", "conflicts", "notes"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise InvalidBundle(f"{where}: fields must be exactly {sorted(keys)}")
    for key in ("droppedSpans", "rejectedSpans", "unsampledSpans"):
        if not is_uint(obj[key]):
            raise InvalidBundle(f"{where}.{key}: must be a decimal string")
    conflicts = obj["conflicts"]
    if not isinstance(conflicts, list) or not all(is_span_id(c) for c in conflicts):
        raise InvalidBundle(f"{where}.conflicts: must be an array of span ids")
    notes = obj["notes"]
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise InvalidBundle(f"{where}.notes: must be an array of strings")
    return Completeness(
        dropped_spans=int(obj["droppedSpans"]),
        rejected_spans=int(obj["rejectedSpans"]),
        unsampled_spans=int(obj["unsampledSpans"]),
        conflicts=tuple(conflicts),
        notes=tuple(notes),
    )
