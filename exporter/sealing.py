"""Sealing: turn a trace segment's record bodies into a signed bundle (pure).

No clock, randomness or I/O here: the sealing time, the signer and the chain
position are passed in, so the same inputs always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from spanproof.verifier.bundle import BUNDLE_SUFFIX, MAX_RECORD_BYTES, encode_bundle
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.disclosure import DISCLOSURES_SUFFIX, Disclosure, DisclosureFile
from spanproof.verifier.errors import CanonicalizationError
from spanproof.verifier.records import (
    CER_COMMITTED_MEDIA_TYPE,
    CER_MEDIA_TYPE,
    digest_hex,
    genesis_hash,
    record_hash,
)
from spanproof.verifier.statement import Completeness, Producer, Statement
from spanproof.verifier.values import is_committed_value

from .disclosure import AttributeMatcher, commit_body, new_salt
from .keys import SigningKey

__all__ = [
    "OVERSIZED_NOTE", "UNENCODABLE_NOTE", "Body", "ChainPosition", "SealedBundle", "SerializedBody",
    "body_span_id", "build_record", "seal",
]

UNENCODABLE_NOTE = (
    "{} span(s) rejected: a value has no canonical JSON form "
    "(e.g. a string with a lone surrogate)"
)

OVERSIZED_NOTE = (
    "{} span(s) rejected: the record would be longer than a bundle line may be "
    "(64 MiB, SPEC §7.1)"
)


@dataclass(frozen=True, slots=True)
class SerializedBody:
    """A record body (``span``, ``resource``, ``scope``) kept as the UTF-8 JSON of
    its dict, with its span id.

    The receiver holds a pending span so, as the key-sorted JSON it journals: about
    a third of the memory of the dict (1.4 KB against 4 KB for a span of the
    benchmark's workload), and the bytes go to a seal worker as they are.  Two are
    equal when their span ids and JSON are, which for key-sorted JSON is when their
    dicts are.  :func:`seal` parses it.
    """

    span_id: str
    json: bytes

    def parse(self) -> dict[str, Any]:
        """The body as a dict (``orjson.loads``)."""
        body: dict[str, Any] = orjson.loads(self.json)
        return body


#: A record body as :func:`seal` takes it: a mapping, or its JSON.
Body = Mapping[str, Any] | SerializedBody


def body_span_id(body: Body) -> str:
    """The span id of *body* (``body["span"]["spanId"]``)."""
    if isinstance(body, SerializedBody):
        return body.span_id
    span_id: str = body["span"]["spanId"]
    return span_id


@dataclass(frozen=True)
class ChainPosition:
    """Where a trace's next segment starts (SPEC §4.4)."""

    segment_index: int
    first_seq: int
    start: str
    previous_statement: str

    @classmethod
    def genesis(cls, trace_id: str) -> ChainPosition:
        """The position of a trace's first segment."""
        return cls(0, 0, genesis_hash(trace_id), "")

    @classmethod
    def after(cls, statement: Statement, statement_digest: str) -> ChainPosition:
        """The position of the segment that continues the one *statement* seals."""
        s = statement
        return cls(s.segment_index + 1, s.first_seq + s.record_count, s.head, statement_digest)


@dataclass(frozen=True)
class SealedBundle:
    """A sealed bundle's bytes and what they state.

    ``disclosures`` holds the values and salts of the bundle's committed attributes
    (SPEC §2.5); they are not part of ``data`` and go to their own file.
    """

    data: bytes
    statement: Statement
    statement_digest: str
    disclosures: tuple[Disclosure, ...] = ()

    @property
    def file_name(self) -> str:
        """``<trace id>-<segment>-<producer instance>.spanproof.json`` (hex only)."""
        s = self.statement
        return f"{s.trace_id}-{s.segment_index:04d}-{s.producer.instance}{BUNDLE_SUFFIX}"

    @functools.cached_property
    def held_bytes(self) -> int:
        """What the bundle holds in memory, about: its bytes and its disclosure file's
        (the committed values, which ``data`` does not hold).  Computed once."""
        return len(self.data) + len(self.disclosures_data())

    def disclosures_data(self) -> bytes:
        """The disclosure file's bytes (SPEC §2.5.4); empty when nothing was committed."""
        if not self.disclosures:
            return b""
        return DisclosureFile(self.disclosures).to_bytes()

    @staticmethod
    def disclosures_file_name(bundle_file_name: str) -> str:
        """``<name>.disclosures.json`` for the bundle file ``<name>.spanproof.json``."""
        return bundle_file_name.removesuffix(BUNDLE_SUFFIX) + DISCLOSURES_SUFFIX

    def next_position(self) -> ChainPosition:
        """The position a continuation segment of this trace starts from."""
        return ChainPosition.after(self.statement, self.statement_digest)


def build_record(body: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """Return the CER for *body* (``span``, ``resource``, ``scope``) at chain position *seq*.

    A body holding a committed value gets the committed-record media type (SPEC §2.5.3).
    """
    committed = any(is_committed_value(v) for v in body["span"]["attributes"].values())
    return {
        "mediaType": CER_COMMITTED_MEDIA_TYPE if committed else CER_MEDIA_TYPE,
        "seq": str(seq),
        "prev": prev,
        "span": body["span"],
        "resource": body["resource"],
        "scope": body["scope"],
    }


def seal(
    trace_id: str,
    bodies: Sequence[Body],
    position: ChainPosition,
    *,
    signer: SigningKey,
    producer: Producer,
    sealed_at: datetime,
    reason: str,
    completeness: Completeness | None = None,
    redact: AttributeMatcher | None = None,
    salt: Callable[[], bytes] = new_salt,
    reject_unencodable: bool = False,
) -> SealedBundle:
    """Chain *bodies* from *position*, sign the statement, and frame the bundle.

    A :class:`SerializedBody` is parsed first; the bundle is the one its dict gives.

    With *redact*, the span attributes it selects are committed first (SPEC §2.5;
    :func:`~spanproof.exporter.disclosure.commit_body`) and their disclosures are
    returned in :attr:`SealedBundle.disclosures`; *salt* supplies the fresh salts.
    With *reject_unencodable*, a body holding a value JSON cannot carry (a string
    with a lone surrogate) does not fail the segment: it is left out, and the
    statement declares it rejected (SPEC §5.3) with :data:`UNENCODABLE_NOTE`.
    A body whose record would be longer than a bundle line may be
    (:data:`~spanproof.verifier.bundle.MAX_RECORD_BYTES`, SPEC §7.1) is always left
    out so, with :data:`OVERSIZED_NOTE`: no verifier could read it.

    Raises:
        CanonicalizationError: a body holds a value JSON cannot carry (not with
            *reject_unencodable*).
    """
    mappings: Sequence[Mapping[str, Any]] = [
        b.parse() if isinstance(b, SerializedBody) else b for b in bodies
    ]
    if reject_unencodable:
        try:
            return seal(trace_id, mappings, position, signer=signer, producer=producer,
                        sealed_at=sealed_at, reason=reason, completeness=completeness,
                        redact=redact, salt=salt)
        except CanonicalizationError:
            pass
        mappings, completeness = _without_unencodable(mappings, completeness or Completeness())
    lines: list[bytes] = []
    disclosures: list[Disclosure] = []
    oversized = 0
    head = position.start
    for body in mappings:
        committed, opened = commit_body(body, redact, salt=salt) if redact else (body, ())
        raw = canonicalize(build_record(committed, position.first_seq + len(lines), head))
        if len(raw) > MAX_RECORD_BYTES:
            oversized += 1  # no verifier would read its line (SPEC §7.1)
            continue
        head = record_hash(raw)
        lines.append(raw)
        disclosures.extend(opened)
    if oversized:
        completeness = completeness or Completeness()
        completeness = dataclasses.replace(
            completeness,
            rejected_spans=completeness.rejected_spans + oversized,
            notes=(*completeness.notes, OVERSIZED_NOTE.format(oversized)),
        )
    statement = Statement(
        trace_id=trace_id,
        segment_index=position.segment_index,
        first_seq=position.first_seq,
        start=position.start,
        previous_statement=position.previous_statement,
        record_count=len(lines),
        head=head,
        seal_reason=reason,
        sealed_at=sealed_at,
        producer=producer,
        completeness=completeness or Completeness(),
    )
    payload = statement.to_payload()
    envelope = signer.sign_envelope(payload)
    return SealedBundle(
        encode_bundle(envelope, lines), statement, digest_hex(payload), tuple(disclosures)
    )


def _without_unencodable(
    bodies: Sequence[Mapping[str, Any]], completeness: Completeness
) -> tuple[list[Mapping[str, Any]], Completeness]:
    """The bodies JSON can carry, and *completeness* declaring the others rejected."""
    kept = []
    for body in bodies:
        try:
            canonicalize(body)
        except CanonicalizationError:
            continue
        kept.append(body)
    bad = len(bodies) - len(kept)
    return kept, dataclasses.replace(
        completeness,
        rejected_spans=completeness.rejected_spans + bad,
        notes=(*completeness.notes, UNENCODABLE_NOTE.format(bad)),
    )
