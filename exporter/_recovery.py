"""Sealing the journals of a producer that died (SPEC §5.3 ``recovered``).

Shared by the :class:`~spanproof.exporter.EvidenceSpanProcessor` and the SDK
exporter: whichever starts next in an output directory seals the traces that a
killed process had journaled but not sealed, under the dead process's producer
instance, continuing its chain of each trace (SPEC §4.4).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.errors import CanonicalizationError
from spanproof.verifier.statement import Completeness, Producer

from .assembly import RECOVERED
from .disclosure import AttributeMatcher
from .journal import RecoveredTrace, recover_orphans, release_claimed
from .keys import SigningKey
from .sealing import ChainPosition, SealedBundle, seal
from .sinks import BundleSink

__all__ = ["position_from_json", "position_to_json", "seal_orphaned_journals"]

_logger = logging.getLogger(__name__)

RECOVERED_NOTE = (
    "recovered after a crash: these spans were journaled by producer instance {} "
    "and made durable, but the instance stopped before sealing them"
)


def position_to_json(position: ChainPosition) -> dict[str, str]:
    """A chain position as the journal's ``sealed`` entries store it."""
    return {
        "index": str(position.segment_index),
        "firstSeq": str(position.first_seq),
        "start": position.start,
        "previousStatement": position.previous_statement,
    }


def position_from_json(trace_id: str, raw: Mapping[str, Any] | None) -> ChainPosition:
    """The position stored by :func:`position_to_json`; genesis when there is none."""
    if not raw:
        return ChainPosition.genesis(trace_id)
    return ChainPosition(
        int(raw["index"]), int(raw["firstSeq"]), str(raw["start"]),
        str(raw["previousStatement"]),
    )


def seal_orphaned_journals(
    journal_dir: str,
    *,
    signer: SigningKey,
    sink: BundleSink,
    producer_name: str,
    producer_version: str,
    max_records: int,
    clock: Callable[[], float],
    redact: AttributeMatcher | None = None,
    on_recovered: Callable[[str, str, Mapping[str, Any]], None] | None = None,
) -> list[str]:
    """Seal and write the unsealed traces of every orphaned journal in *journal_dir*.

    Journals held by a live process are left alone (``recover_orphans``).  Each
    recovered bundle has seal reason ``recovered``, names the dead instance as its
    producer instance and continues that instance's chain; losses the journal
    recorded are declared.  The journal files are deleted once every bundle is
    written.  *on_recovered* is called with (trace id, span id, body) for each span
    certified (the receiver remembers them so a retry is not certified again).
    Returns the paths written.

    Raises:
        OSError: a bundle could not be written; the journal files are kept, so the
            next start tries again.
    """
    traces, paths = recover_orphans(journal_dir)
    if not paths:
        return []
    written: list[str] = []
    for trace in traces.values():
        for bundle in _seal_trace(trace, signer=signer, producer_name=producer_name,
                                  producer_version=producer_version,
                                  max_records=max_records, clock=clock, redact=redact,
                                  on_recovered=on_recovered):
            written.append(sink.write(bundle))
    release_claimed(paths)
    _logger.warning("spanproof: recovered %d trace(s) from %d orphaned journal file(s) into "
                    "%d bundle(s)", len(traces), len(paths), len(written))
    return written


def _seal_trace(
    trace: RecoveredTrace,
    *,
    signer: SigningKey,
    producer_name: str,
    producer_version: str,
    max_records: int,
    clock: Callable[[], float],
    redact: AttributeMatcher | None,
    on_recovered: Callable[[str, str, Mapping[str, Any]], None] | None,
) -> list[SealedBundle]:
    if trace.instance:
        # The spans were made durable by the dead instance: its chain continues.
        instance = trace.instance
        position = position_from_json(trace.trace_id, trace.next_position)
    else:
        # Only loss counts survive (no span entry names an instance): a new chain.
        instance = secrets.token_hex(8)
        position = ChainPosition.genesis(trace.trace_id)
    producer = Producer(producer_name, producer_version, instance)
    bodies: list[dict[str, Any]] = []
    versions: dict[str, list[bytes]] = {}
    conflicts: set[str] = set()
    rejected = 0
    for body in trace.bodies:
        try:
            fingerprint = canonicalize(body)
        except CanonicalizationError:
            rejected += 1
            continue
        span_id = body["span"]["spanId"]
        seen = versions.setdefault(span_id, [])
        if fingerprint in seen:
            continue  # journaled twice (an identical re-delivery): certified once
        if seen:
            conflicts.add(span_id)
        seen.append(fingerprint)
        bodies.append(body)
        if on_recovered is not None:
            on_recovered(trace.trace_id, span_id, body)
    notes = [RECOVERED_NOTE.format(instance)]
    if trace.dropped_spans or trace.unsampled_spans:
        notes.append(f"{trace.dropped_spans} dropped and {trace.unsampled_spans} unsampled "
                     "evidence span(s) were recorded in the journal")
    if rejected:
        notes.append(f"{rejected} journaled span(s) rejected: not representable as "
                     "canonical JSON")
    chunks = [bodies[i:i + max_records] for i in range(0, len(bodies), max_records)] or [[]]
    bundles = []
    for n, chunk in enumerate(chunks):
        ids = {b["span"]["spanId"] for b in chunk}
        completeness = Completeness(
            dropped_spans=trace.dropped_spans if n == 0 else 0,
            rejected_spans=rejected if n == 0 else 0,
            unsampled_spans=trace.unsampled_spans if n == 0 else 0,
            conflicts=tuple(sorted(conflicts & ids)),
            notes=tuple(notes),
        )
        bundle = seal(
            trace.trace_id, chunk, position, signer=signer, producer=producer,
            sealed_at=datetime.fromtimestamp(clock(), timezone.utc), reason=RECOVERED,
            completeness=completeness, redact=redact,
        )
        bundles.append(bundle)
        position = bundle.next_position()
    return bundles
