"""Sealing the journals of a producer that died (SPEC §5.3 ``recovered``).

Shared by the :class:`~spanproof.exporter.EvidenceSpanProcessor` and the SDK
exporter: whichever starts next in an output directory seals the traces that a
killed process had journaled but not sealed, under the dead process's producer
instance, continuing its chain of each trace (SPEC §4.4).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from spanproof.verifier._files import fsync_directory
from spanproof.verifier.bundle import BUNDLE_SUFFIX
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.disclosure import (
    MAX_PRODUCER_DISCLOSURE_FILE_BYTES,
    disclosures_path,
    load_disclosures,
)
from spanproof.verifier.errors import CanonicalizationError, InvalidDisclosure
from spanproof.verifier.keys import TrustedKey, TrustRoot
from spanproof.verifier.records import CER_MEDIA_TYPE
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.values import COMMITTED_VALUE, is_committed_value
from spanproof.verifier.verify import BundleReport, Verdict, check_bundle

from . import assembly
from ._leftovers import finish_interrupted_writes
from .assembly import RECOVERED, SealJob, body_bytes, segment_length
from .disclosure import AttributeMatcher
from .journal import RecoveredTrace, recover_orphans, release_claimed
from .keys import SigningKey
from .sealing import ChainPosition, SealedBundle, seal
from .sinks import BundleSink, DirectorySink, bundle_names

__all__ = [
    "continue_on_disk", "finish_writes_in", "position_from_json", "position_to_json",
    "seal_orphaned_journals", "written_segment",
]

_logger = logging.getLogger(__name__)

#: The note of a bundle sealed from an orphaned journal.  Its instance stopped before
#: writing a bundle of these spans (a crash, a kill) or, an EvidenceSpanProcessor,
#: discarded that bundle unwritten while its storage kept failing: which, the journal
#: does not say, and the note claims neither.
_RESTARTED_NOTE = (
    "the segment of instance {} these spans would continue from is in the output "
    "directory, signed by a key the recovering process does not trust, and the journal "
    "names no key: they start the chain of a new instance"
)

RECOVERED_NOTE = (
    "recovered: these spans were journaled by producer instance {} and made durable, "
    "but that instance wrote no bundle of them (it stopped first, or discarded the "
    "bundle unwritten while its storage was failing)"
)


def position_to_json(position: ChainPosition) -> dict[str, str]:
    """A chain position as the journal's ``sealed`` entries store it."""
    return {
        "index": str(position.segment_index),
        "firstSeq": str(position.first_seq),
        "start": position.start,
        "previousStatement": position.previous_statement,
    }


def declared_counts(completeness: Completeness) -> dict[str, int]:
    """The loss counts a sealed bundle declared, as the journal's ``sealed`` entries
    record them (replay takes them off the trace's journaled counts)."""
    c = completeness
    return {"dropped": c.dropped_spans, "rejected": c.rejected_spans,
            "unsampled": c.unsampled_spans}


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
    skip_instance: str | None = None,
    tidy_first: bool = True,
) -> list[str]:
    """Seal and write the unsealed traces of every orphaned journal in *journal_dir*
    (but producer instance *skip_instance*'s: see ``recover_orphans``).

    Journals held by a live process are left alone (``recover_orphans``).  Each
    recovered bundle has seal reason ``recovered``, names the dead instance as its
    producer instance and continues that instance's chain; losses the journal
    recorded are declared.  A bundle the dead instance already wrote but had not yet
    recorded as sealed in its journal (it stopped in between) is found in the sink's
    directory, checked against *signer*'s key, and not sealed a second time: only
    the spans it does not hold are sealed, as its continuation.  The journal files
    are deleted once every bundle is written.  *on_recovered* is called with (trace
    id, span id, body) for each span certified (the receiver remembers them so a
    retry is not certified again).  Returns the paths written.

    With a :class:`DirectorySink`, the writes a stopped process left half done in
    its directory are finished first (:func:`finish_interrupted_writes`); without
    *tidy_first*, only when an orphaned journal is found (a live process looking
    again does not list its output directory each time).

    Raises:
        OSError: a bundle could not be written; the journal files are kept, so the
            next start tries again.
    """
    # Another sink's bundles cannot be read back: a trace sealed just before the
    # crash is then sealed again.
    directory = _directory_of(sink)
    if directory is not None and tidy_first:
        _finish_writes(directory)
    traces, paths = recover_orphans(journal_dir, skip_instance=skip_instance)
    if not paths:
        return []
    written: list[str] = []
    try:
        if directory is not None and not tidy_first:
            _finish_writes(directory)
        for trace in traces:
            for bundle in _seal_trace(trace, signer=signer, producer_name=producer_name,
                                      producer_version=producer_version,
                                      max_records=max_records, clock=clock, redact=redact,
                                      on_recovered=on_recovered, directory=directory):
                written.append(sink.write(bundle))
    except BaseException:
        release_claimed(paths, delete=False)  # the next recovery takes them again
        raise
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
    directory: str | None = None,
) -> list[SealedBundle]:
    if trace.instance:
        # The spans were made durable by the dead instance: its chain continues.
        instance = trace.instance
        try:
            position = position_from_json(trace.trace_id, trace.next_position)
        except (KeyError, TypeError, ValueError):
            # Not of the form this version writes: the chain is walked on disk from
            # genesis, as for a position the journal no longer holds.
            _logger.warning("spanproof: trace %s: the journal's chain position %.200r "
                            "cannot be read; its chain is followed on disk instead",
                            trace.trace_id, trace.next_position)
            position = ChainPosition.genesis(trace.trace_id)
    else:
        # Only loss counts survive (no span entry names an instance): a new chain.
        instance = secrets.token_hex(8)
        position = ChainPosition.genesis(trace.trace_id)
    producer = Producer(producer_name, producer_version, instance)
    bodies: list[dict[str, Any]] = []
    versions: dict[str, list[bytes]] = {}
    conflicts: set[str] = set(trace.conflicts)
    rejected = 0
    unreadable = 0
    for body in trace.bodies:
        if not _is_body(body):
            unreadable += 1  # not a span body this version can make a record of
            continue
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
    dropped, unsampled = trace.dropped_spans, trace.unsampled_spans
    damaged = trace.damaged_spans + unreadable
    unencodable, rejected = rejected, rejected + trace.rejected_spans
    dead, restarted = instance, ""  # the instance that journaled them; why a new chain
    if directory is not None and trace.instance:
        earlier = _written_segments(trace.trace_id, instance, position, directory, signer,
                                    trace.public_key)
        if earlier:
            # The dead instance may have stopped between linking them and fsyncing
            # the directory: durable before their journal goes.
            fsync_directory(directory)
        unrecorded = 0
        for report in earlier:
            assert report.statement is not None
            held = len(bodies)
            _remove_certified(bodies, report.records or (), report.source)
            position = _after(report)
            if report.records and len(bodies) == held:
                # It certifies none of the journaled spans: its sealed entry was
                # journaled, which retired its spans and its counts, and then
                # deleted with its file (so no position led past it).  The counts
                # left are the trace's next bundle's.
                continue
            unrecorded += 1
            declared = report.statement.completeness
            dropped = max(0, dropped - declared.dropped_spans)
            unsampled = max(0, unsampled - declared.unsampled_spans)
            rejected = max(0, rejected - declared.rejected_spans)
            unencodable = min(unencodable, rejected)
        if unrecorded:
            _logger.warning(
                "spanproof: trace %s: %d bundle(s) were written before the crash but not "
                "recorded as sealed; %d span(s) left to seal after them",
                trace.trace_id, unrecorded, len(bodies))
        if earlier:
            if not bodies and not (dropped or unsampled or rejected or damaged):
                return []
        if trace.public_key is None and _slot_taken(directory, trace.trace_id, instance,
                                                     position):
            # A journal of an earlier version, which names no key: the bundle
            # there, not the continuation under this process's key, is likely the
            # dead instance's own under a key rotated at this restart.  Sealed
            # again as that segment, it was a second version of it (the trace
            # fails, SPEC §8 step 11): the spans start a chain of a new instance.
            dead, instance = instance, secrets.token_hex(8)
            _logger.warning(
                "spanproof: trace %s: segment %d of producer instance %s is in %s but "
                "not signed by this process's key, and the journal (of an earlier "
                "version) names no key; its spans are sealed under new instance %s",
                trace.trace_id, position.segment_index, dead, directory, instance)
            position = ChainPosition.genesis(trace.trace_id)
            producer = Producer(producer_name, producer_version, instance)
            restarted = _RESTARTED_NOTE.format(dead)
    notes = [RECOVERED_NOTE.format(dead)]
    if restarted:
        notes.append(restarted)
    if dropped or unsampled:
        notes.append(f"{dropped} dropped and {unsampled} unsampled "
                     "evidence span(s) were recorded in the journal")
    if trace.damaged_spans:
        notes.append(f"{trace.damaged_spans} journaled evidence span(s) lost: their "
                     "journal entries were damaged on disk")
    if unreadable:
        notes.append(f"{unreadable} journaled evidence span(s) lost: their journal "
                     "entries hold no span body this producer version can read")
    if unencodable:
        notes.append(f"{unencodable} journaled span(s) rejected: not representable as "
                     "canonical JSON")
    if rejected > unencodable:
        notes.append(f"{rejected - unencodable} evidence span(s) recorded in the journal "
                     "as rejected")
    chunks = _segments(bodies, max_records)
    bundles = []
    for n, chunk in enumerate(chunks):
        ids = {b["span"]["spanId"] for b in chunk}
        completeness = Completeness(
            dropped_spans=dropped + damaged if n == 0 else 0,
            rejected_spans=rejected if n == 0 else 0,
            unsampled_spans=unsampled if n == 0 else 0,
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


def _slot_taken(directory: str, trace_id: str, instance: str, position: ChainPosition) -> bool:
    """Whether a file holds the name of the segment at *position* of this trace and
    instance (one that :func:`_written_segments` found not to continue the chain)."""
    name = f"{trace_id}-{position.segment_index:04d}-{instance}{BUNDLE_SUFFIX}"
    return os.path.lexists(os.path.join(directory, name))


def _is_body(body: Any) -> bool:
    """Whether *body* has what a record is built of (``span`` with its id and
    attributes, ``resource``, ``scope``): a journal entry of another version's
    form otherwise, whose sealing raised and stopped every recovery in the
    directory."""
    if not isinstance(body, dict) or "resource" not in body or "scope" not in body:
        return False
    span = body.get("span")
    return (isinstance(span, dict) and isinstance(span.get("spanId"), str)
            and isinstance(span.get("traceId"), str) and isinstance(span.get("attributes"), dict))


def _segments(bodies: list[dict[str, Any]], max_records: int) -> list[list[dict[str, Any]]]:
    """*bodies* cut into segments as the assembler cuts a trace's: at most
    *max_records* each, and ending with the body that reaches about
    ``MAX_SEGMENT_BYTES``; one empty segment when there are none."""
    sizes = [body_bytes(body) for body in bodies]
    segments: list[list[dict[str, Any]]] = []
    start = 0
    while start < len(bodies):
        count = segment_length(sizes[start:], max_records, assembly.MAX_SEGMENT_BYTES)
        segments.append(bodies[start:start + count])
        start += count
    return segments or [[]]


def continue_on_disk(
    job: SealJob, instance: str, sink: BundleSink, signer: SigningKey
) -> SealJob:
    """*job*, or, when it would start the trace's chain at genesis although this
    instance already wrote segments of the trace to the sink's directory (a trace it
    sealed, then forgot when ``sealed_trace_memory`` was full), *job* continuing
    after the last of them that continues the chain.  One ``stat`` per genesis
    segment; earlier segments are read and verified only when they exist."""
    directory = _directory_of(sink)
    position = job.position
    if directory is None or position.segment_index != 0 or position.previous_statement:
        return job
    earlier = _written_segments(job.trace_id, instance, position, directory, signer)
    if not earlier:
        return job
    position = _after(earlier[-1])
    _logger.info("spanproof: trace %s was sealed before and no longer remembered; its "
                 "chain continues after segment %d found in %s", job.trace_id,
                 position.segment_index - 1, directory)
    return dataclasses.replace(job, position=position)


def written_segment(
    job: SealJob, instance: str, sink: BundleSink, signer: SigningKey
) -> tuple[str, ChainPosition] | None:
    """The bundle of *job* that is already in the sink's directory (a seal worker
    wrote it, then died before it answered): its path and the position after it, or
    None.  It is the file named for *job*'s segment of this instance, signed by
    *signer*'s key, starting exactly at *job*'s position; only *job* is ever sealed
    there, so it holds *job*'s spans.  One ``stat`` when there is none.  A bundle
    found is made durable (the directory fsynced: the worker may have died between
    linking it and that fsync) before this returns, as its spans are retired next.

    Raises:
        OSError: the directory could not be read or fsynced.
    """
    directory = _directory_of(sink)
    if directory is None:
        return None
    found = _written_segments(job.trace_id, instance, job.position, directory, signer)
    if not found:
        return None
    fsync_directory(directory)
    return found[0].source, _after(found[0])


def finish_writes_in(sink: BundleSink, instance: str | None = None) -> None:
    """Finish the writes a process that died left half done in the sink's directory
    (a :class:`DirectorySink`'s; see :func:`finish_interrupted_writes`): a seal
    worker killed between linking a bundle and naming its disclosures.  The
    temporary files of producer *instance*'s bundles are removed whatever their
    age (its workers are gone).  Never raises (a failure is logged)."""
    directory = _directory_of(sink)
    if directory is not None:
        _finish_writes(directory, instance)


def _finish_writes(directory: str, instance: str | None = None) -> None:
    """:func:`finish_interrupted_writes` in *directory*, which never stops a start."""
    try:
        finish_interrupted_writes(directory, instance=instance)
    except FileNotFoundError:
        pass  # nothing was ever written here
    except OSError as e:
        _logger.warning("spanproof: cannot look for interrupted writes in %s (%s)",
                        directory, e)


def _directory_of(sink: BundleSink) -> str | None:
    """Where earlier bundles can be read back: only a DirectorySink says."""
    return sink.directory if isinstance(sink, DirectorySink) else None


def _recovery_trust(signer: SigningKey, journaled_key: bytes | None) -> TrustRoot:
    """*signer*'s key, and the key the dead instance's journal names when it is
    another one that can be read as an Ed25519 key (else it is left out: its
    segments are then sealed again, as before journals named their key)."""
    keys = [TrustedKey.from_public_key(signer.private_key.public_key())]
    if journaled_key is not None:
        try:
            journaled = TrustedKey.from_public_key(
                Ed25519PublicKey.from_public_bytes(journaled_key), "the journal's key")
            if journaled.keyid != keys[0].keyid:
                return TrustRoot.from_keys([*keys, journaled])
        except ValueError:
            _logger.warning("spanproof: the journal names a key that is not an Ed25519 "
                            "public key; only this process's key is trusted for it")
    return TrustRoot.from_keys(keys)


def _written_segments(
    trace_id: str, instance: str, position: ChainPosition, directory: str, signer: SigningKey,
    journaled_key: bytes | None = None,
) -> list[BundleReport]:
    """The bundles already in *directory* that continue the chain from *position*:
    each named for the next segment of this trace and instance, signed by *signer*'s
    key or by *journaled_key* (the raw public key the instance's journal names: the
    key rotated at the restart, its segments are still its own, and sealed again
    they were a second version of each, failing the trace), and starting exactly
    where the previous one (or *position*) ends.

    A segment's bundle is looked for under every name the sink gives it
    (:func:`bundle_names`), up to the first it would have taken: the first is taken
    by another bundle when the trace's chain restarted (the one before could not be
    continued), or by the disclosure file of a bundle moved away.  One ``stat`` when
    there is none.
    """
    trust: TrustRoot | None = None
    found: list[BundleReport] = []
    while True:
        report = None
        other: tuple[str, str] | None = None  # the first bundle that is not this segment
        name = f"{trace_id}-{position.segment_index:04d}-{instance}{BUNDLE_SUFFIX}"
        for candidate in bundle_names(name):
            path = os.path.join(directory, candidate)
            if not os.path.isfile(path):
                if os.path.lexists(os.path.join(
                        directory, SealedBundle.disclosures_file_name(candidate))):
                    continue  # the name is taken all the same (DirectorySink.write)
                break  # the first free name: the sink wrote nothing after it
            if trust is None:
                trust = _recovery_trust(signer, journaled_key)
            checked = check_bundle(path, trust, allow_incomplete=True, keep_records=True)
            if _continues(checked, trace_id, instance, position):
                report = checked
                break
            # Not this chain's next segment (or not ours): the sink stored the next
            # one, if any, under a later name, never over this file.
            if other is None:
                other = (path, checked.reason if checked.verdict is not Verdict.OK
                         else "different chain position")
        if report is None:
            if other is not None:
                _logger.warning("spanproof: %s is not the continuation of trace %s's chain "
                                "(%s), nor is any bundle under a later name; its spans are "
                                "sealed again", other[0], trace_id, other[1])
            return found
        found.append(report)
        position = _after(report)


def _continues(
    report: BundleReport, trace_id: str, instance: str, position: ChainPosition
) -> bool:
    """Whether *report* verified as the segment of this chain that starts at *position*."""
    s = report.statement
    return (
        report.verdict is Verdict.OK
        and s is not None
        and report.statement_digest is not None
        and report.records is not None
        and (s.trace_id, s.producer.instance, s.segment_index, s.first_seq, s.start,
             s.previous_statement)
        == (trace_id, instance, position.segment_index, position.first_seq,
            position.start, position.previous_statement)
    )


def _after(report: BundleReport) -> ChainPosition:
    """The position a continuation of *report*'s verified segment starts from."""
    assert report.statement is not None and report.statement_digest is not None
    return ChainPosition.after(report.statement, report.statement_digest)


def _remove_certified(
    bodies: list[dict[str, Any]], records: Sequence[Mapping[str, Any]], source: str
) -> None:
    """Remove from *bodies* the spans that *records* (of the bundle at *source*)
    already certify: a record must hold the same span, resource and scope.  A
    committed value (SPEC §2.5) is compared as the value the disclosure file beside
    the bundle opens it to; a commitment that file does not open (it was moved away,
    or is damaged) cannot be compared, so only the rest of the span is."""
    opener: _Opener | None = None
    for record in records:
        span_id = record["span"]["spanId"]
        candidates = [i for i, body in enumerate(bodies) if body["span"]["spanId"] == span_id]
        if not candidates:
            continue
        if record["mediaType"] != CER_MEDIA_TYPE and opener is None:
            opener = _Opener(source)
        for i in candidates:
            if _certifies(record, bodies[i], opener):
                del bodies[i]
                break


def _certifies(record: Mapping[str, Any], body: Mapping[str, Any], opener: _Opener | None) -> bool:
    """Whether *record* certifies *body*: equal, each committed value opened by
    *opener* when it can be (and otherwise taken as equal)."""
    if body["resource"] != record["resource"] or body["scope"] != record["scope"]:
        return False
    span, mine = record["span"], body["span"]
    if opener is None:
        return bool(mine == span)
    if mine.keys() != span.keys() or any(mine[k] != span[k] for k in span if k != "attributes"):
        return False
    attributes, values = span["attributes"], mine["attributes"]
    if attributes.keys() != values.keys():
        return False
    for key, typed in attributes.items():
        if is_committed_value(typed):
            opened = opener.value(span["spanId"], key, typed[COMMITTED_VALUE]["digest"])
            if opened is not None and opened != values[key]:
                return False
        elif typed != values[key]:
            return False
    return True


class _Opener:
    """The values the disclosure file of the bundle at *source* opens commitments to,
    read when first asked for; none when it cannot be read."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._values: dict[tuple[str, str, str], Mapping[str, Any]] | None = None

    def value(self, span_id: str, key: str, digest: str) -> Mapping[str, Any] | None:
        """The typed value of *span_id*'s attribute *key* committed as *digest*."""
        if self._values is None:
            self._values = {}
            path = disclosures_path(self._source)
            try:
                opened = load_disclosures(path, MAX_PRODUCER_DISCLOSURE_FILE_BYTES)
            except (OSError, InvalidDisclosure) as e:
                _logger.warning("spanproof: cannot read %s (%s): a journaled span whose "
                                "committed values differ from its record's only there "
                                "is taken as certified by it", path, e)
            else:
                for d in opened.disclosures:
                    self._values[(d.span_id, d.key, d.digest)] = d.value
        return self._values.get((span_id, key, digest))
