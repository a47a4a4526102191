"""Per-trace assembly: which record bodies go into which bundle, and when.

A trace's spans arrive over many export calls, interleaved with other traces.  The
:class:`TraceAssembler` keeps each open trace's bodies and chain position, decides
when a trace is due for sealing (SPEC §5.3 seal reasons), and hands out
:class:`SealJob` values; whoever seals a job reports back with :meth:`~TraceAssembler.sealed`
so the trace's next segment continues the chain (SPEC §4.4).

Pure state: no OpenTelemetry, no I/O, no clock reads (every call takes ``now``, in
seconds), no threads.  **Not thread-safe**: the owner serializes every call (the
SDK exporter holds one lock around each).  Sealing itself happens outside, so a
trace's segment is "in flight" between :meth:`~TraceAssembler.due` and
:meth:`~TraceAssembler.sealed`; spans arriving meanwhile wait for the next segment.

When a trace is due:

* ``root_ended``: its local root span ended ``seal_grace`` seconds ago (children
  still queued in the span processor arrive within the grace);
* ``idle_timeout``: no span for ``idle_timeout`` seconds, or it was the least
  recently active open trace when a new trace needed room (``max_pending_traces``;
  the bundle's notes say so);
* ``size_limit``: it holds ``max_records`` bodies, or about ``MAX_SEGMENT_BYTES``
  of them (:func:`body_bytes`); the rest continue in the next segment.  Or it was
  the largest open trace when the open traces held more than ``MAX_PENDING_BYTES``
  (the bundle's notes say so);
* ``force_flush`` (:meth:`~TraceAssembler.due` with ``flush=True``): its root ended
  but the grace has not passed; open traces are never cut by a flush;
* ``shutdown`` (or any reason given to :meth:`~TraceAssembler.drain_all`): everything.

Losses are declared, never silent (SPEC §5.3): a span that cannot be admitted
(every slot taken and the sealer far behind) is counted as dropped in its trace's
next bundle; a span that could not be certified (:meth:`~TraceAssembler.reject`) is
counted as rejected.  A re-delivered span identical to one still pending is
ignored; the same span id with different content is kept as its own record and
listed in the bundle's ``conflicts``.  A span id that an earlier segment of the
trace's chain already certified is listed in ``conflicts`` too, whatever its content
(the earlier segment's content is not kept, only its span ids: 16 bytes each, the
last :data:`SEALED_SPAN_IDS` of them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spanproof.verifier.statement import SEAL_REASONS, Completeness

from .config import ExporterConfig
from .sealing import Body, ChainPosition, SerializedBody, body_span_id

#: Spans of a trace dropped for want of room (see TraceAssembler.drop()), waiting to
#: be declared: how many, and the notes given with them.
_Lost = tuple[int, tuple[str, ...]]

#: A trace's pending bodies are sealed as a segment (``size_limit``) once they hold
#: this many bytes (:func:`body_bytes`), however few they are: a long-lived trace
#: (an agent's session, its root open for hours) with large prompts otherwise held
#: up to ``max_records`` of them in memory, and lost them all in a crash.
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
#: Once the pending bodies of all open traces hold more bytes than this, the largest
#: open traces are sealed early (``size_limit``, with a note) until they hold less:
#: ``max_pending_traces``
#: traces of up to ``MAX_SEGMENT_BYTES`` each would otherwise be 128 GiB.  Checked
#: each time they grow by a 64th of it, so it can be passed by that much.
MAX_PENDING_BYTES = 1024 * 1024 * 1024
#: What each pending span adds to that total beyond :func:`body_bytes`: its body's
#: dicts, lists and bookkeeping (~2.1 KB measured for a span of six attributes, two
#: of them ~230 characters, whose strings body_bytes counts as ~210).  Counting the
#: strings alone, open traces of small spans reached the bound only at ~5 million
#: spans, ~12 GB.  A segment's own limit (``MAX_SEGMENT_BYTES``) counts the strings.
PENDING_SPAN_BYTES = 2048
#: Span ids, 16 characters each: one after the other in a string while they are few
#: (compact, and not scanned by the garbage collector), a set once they are more than
#: _SCANNED_IDS (a look-up in the string scanned all of them: ~0.5 ms a span for a
#: trace with 100,000 sealed).
SpanIds = str | set[str]
_SCANNED_IDS = 256
#: How many span ids of sealed segments are remembered (16 bytes each in a string,
#: ~90 in a set), those of the least recently sealed traces forgotten first, so that
#: a span id certified again in a later segment of its chain is listed in that
#: segment's ``conflicts`` (SPEC §4.3).
SEALED_SPAN_IDS = 1 << 18


def body_bytes(body: Body) -> int:
    """About the size of a record body: its JSON's length when it is kept as JSON,
    else the UTF-8 length of its span's name and of the string values of its
    attributes, events' and links', and the length of their bytes values' base64,
    those in arrays and kvlists included (what makes a span large; the rest is
    small; JSON's escapes of control characters are not counted)."""
    if isinstance(body, SerializedBody):
        return len(body.json)
    span = body["span"]
    size = _text_bytes(span.get("name", "")) + _value_bytes(span.get("attributes", {}))
    for group in ("events", "links"):
        for item in span.get(group, ()):
            size += _value_bytes(item.get("attributes", {}))
    return size


def segment_length(sizes: Sequence[int], max_records: int, max_bytes: int) -> int:
    """How many of the bodies of *sizes* (:func:`body_bytes` each), first to last,
    make one segment: at most *max_records*, the body that reaches *max_bytes* the
    last (at least one, when there is one)."""
    count = min(len(sizes), max_records)
    total = 0
    for i in range(count):
        total += sizes[i]
        if total >= max_bytes:
            return i + 1
    return count


def _text_bytes(text: str) -> int:
    """The UTF-8 length of *text*; checking for ASCII first takes no scan."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _value_bytes(attributes: Mapping[str, Any]) -> int:
    size = 0
    for typed in attributes.values():
        text = typed.get("stringValue")
        size += _text_bytes(text) if text is not None else _other_bytes(typed)
    return size


def _other_bytes(typed: Mapping[str, Any]) -> int:
    """A typed value other than a string: bytes, or arrays and kvlists of values
    (GenAI message lists are often arrays), counted as their strings are."""
    if "bytesValue" in typed:
        return len(typed["bytesValue"])
    if "arrayValue" in typed:
        return sum(_typed_bytes(value) for value in typed["arrayValue"])
    if "kvlistValue" in typed:
        return sum(_text_bytes(key) + _typed_bytes(value)
                   for key, value in typed["kvlistValue"].items())
    return 0


def _typed_bytes(typed: Mapping[str, Any]) -> int:
    text = typed.get("stringValue")
    return _text_bytes(text) if text is not None else _other_bytes(typed)

__all__ = [
    "FORCE_FLUSH",
    "IDLE_TIMEOUT",
    "RECOVERED",
    "ROOT_ENDED",
    "SHUTDOWN",
    "SIZE_LIMIT",
    "SealJob",
    "TraceAssembler",
]

ROOT_ENDED = "root_ended"
IDLE_TIMEOUT = "idle_timeout"
SIZE_LIMIT = "size_limit"
SHUTDOWN = "shutdown"
FORCE_FLUSH = "force_flush"
RECOVERED = "recovered"
assert {ROOT_ENDED, IDLE_TIMEOUT, SIZE_LIMIT, SHUTDOWN, FORCE_FLUSH, RECOVERED} == SEAL_REASONS


@dataclass(frozen=True)
class SealJob:
    """One segment to seal: these bodies, chained from this position, for this reason."""

    trace_id: str
    bodies: tuple[Body, ...]
    position: ChainPosition
    reason: str
    completeness: Completeness
    #: Of the completeness's dropped and rejected spans, those of no trace this
    #: assembler could name, declared here: not the trace's own, so not taken off
    #: the counts its journal holds (:func:`journaled_counts`).
    untracked_dropped: int = 0
    untracked_rejected: int = 0

    def journaled_counts(self) -> dict[str, int]:
        """The trace's own loss counts the bundle declares, as a journal's ``sealed``
        entry records them (replay takes them off the trace's journaled counts)."""
        c = self.completeness
        return {"dropped": c.dropped_spans - self.untracked_dropped,
                "rejected": c.rejected_spans - self.untracked_rejected,
                "unsampled": c.unsampled_spans}


#: Versions of one span id compared one by one; from this many on, looked up by hash.
_INDEXED_FROM = 8


class _IndexedVersions(list[Body]):
    """The pending bodies of one span id with many versions, with a set of them when
    they are all :class:`SerializedBody` (the receiver's: its senders choose span ids,
    and thousands of versions of one id were compared one by one)."""

    def __init__(self, bodies: list[Body]) -> None:
        super().__init__(bodies)
        self.hashed: set[SerializedBody] | None = set()
        for body in bodies:
            self._index(body)

    def _index(self, body: Body) -> None:
        if self.hashed is not None:
            if isinstance(body, SerializedBody):
                self.hashed.add(body)
            else:
                self.hashed = None  # the SDK path's dicts: compared one by one

    def append(self, body: Body) -> None:
        super().append(body)
        self._index(body)


def _holds(versions: list[Body], body: Body) -> bool:
    """Whether a body equal to *body* is among *versions*."""
    if type(versions) is _IndexedVersions and versions.hashed is not None and isinstance(
            body, SerializedBody):
        return body in versions.hashed
    return any(version == body for version in versions)


@dataclass
class _Trace:
    """An open trace.  ``position is None`` while a segment of it is in flight."""

    trace_id: str
    position: ChainPosition | None
    last_activity: float
    bodies: list[Body] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # body_bytes of each of bodies
    size: int = 0  # their sum
    seen: dict[str, list[Body]] = field(default_factory=dict)
    conflicts: set[str] = field(default_factory=set)
    dropped: int = 0
    rejected: int = 0
    unsampled: int = 0
    notes: list[str] = field(default_factory=list)
    root_ended: bool = False
    #: The span ids (16 characters each, one after the other) of the trace's sealed
    #: segments the assembler remembers, and of the segment in flight.
    certified_ids: SpanIds = ""
    in_flight_ids: SpanIds = ""

    def has_work(self) -> bool:
        return bool(self.bodies) or self.dropped > 0 or self.rejected > 0 or self.unsampled > 0


@dataclass(frozen=True)
class _Sealed:
    """What is remembered of a sealed trace: where its chain continues."""

    position: ChainPosition
    root_ended: bool


class TraceAssembler:
    """Collects record bodies per trace and decides when each trace is sealed.

    Not thread-safe; see the module docstring for the rules.

    Raises:
        ValueError: a limit below 1 (``sealed_trace_memory`` may be 0) or a
            negative duration.
    """

    def __init__(
        self,
        *,
        seal_grace: float = 2.0,
        idle_timeout: float = 30.0,
        max_records: int = 10_000,
        max_pending_traces: int = 2048,
        sealed_trace_memory: int = 65_536,
        max_segment_bytes: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> None:
        if seal_grace < 0 or idle_timeout < 0:
            raise ValueError("seal_grace and idle_timeout must be >= 0")
        if max_records < 1 or max_pending_traces < 1 or sealed_trace_memory < 0:
            raise ValueError(
                "max_records and max_pending_traces must be >= 1, sealed_trace_memory >= 0"
            )
        self._grace = seal_grace
        self._idle = idle_timeout
        self._max_records = max_records
        self._max_bytes = MAX_SEGMENT_BYTES if max_segment_bytes is None else max_segment_bytes
        self._max_total = MAX_PENDING_BYTES if max_pending_bytes is None else max_pending_bytes
        # The bytes of every pending body (body_bytes), and at what total the open
        # traces' share is looked at next (see _bound_bytes).
        self._bytes = 0
        self._next_look = self._max_total
        self._max_pending = max_pending_traces
        self._memory = sealed_trace_memory
        self._forgot_sealed = sealed_trace_memory == 0
        self._traces: dict[str, _Trace] = {}
        # Traces with something to seal are in exactly one of _open (by last
        # activity, oldest first) and _ready (due now: value is the reason).
        # _roots holds those whose local root ended, with their sealing deadline;
        # the grace is constant, so insertion order is deadline order.
        self._open: OrderedDict[str, None] = OrderedDict()
        self._ready: OrderedDict[str, str] = OrderedDict()
        self._roots: OrderedDict[str, float] = OrderedDict()
        self._sealed: OrderedDict[str, _Sealed] = OrderedDict()
        # The span ids of the sealed segments of each trace (SpanIds), least
        # recently sealed first, and how many they hold in all (SEALED_SPAN_IDS).
        self._certified: dict[str, SpanIds] = {}
        self._certified_count = 0
        # Spans dropped for traces that had no slot, by trace (with the notes given
        # with them), and those whose trace could not even be remembered.
        self._lost: OrderedDict[str, _Lost] = OrderedDict()
        self._untracked_lost = 0
        # Spans refused whose trace id could not be read (zero, or unreadable).
        self._untracked_rejected = 0
        #: Called with ``(trace id, body)`` of each body :meth:`add` drops for want
        #: of room (counted lost for the trace), so that a caller holding the body
        #: elsewhere (the processor's journal) can let it go with the declaration.
        self.on_dropped_body: Callable[[str, Body], None] | None = None
        #: Called with a trace id whose dropped spans' count could not be kept by
        #: trace any more (it joins the count the next bundle of any trace declares),
        #: and with each job that declares such counts, as it is made.
        self.on_untracked: Callable[[str | None, SealJob | None], None] | None = None

    @classmethod
    def from_config(cls, config: ExporterConfig) -> TraceAssembler:
        """An assembler with *config*'s timing and limits."""
        return cls(
            seal_grace=config.seal_grace,
            idle_timeout=config.idle_timeout,
            max_records=config.max_records,
            max_pending_traces=config.max_pending_traces,
            sealed_trace_memory=config.sealed_trace_memory,
        )

    @property
    def forgot_sealed(self) -> bool:
        """Whether a sealed trace may have been forgotten (``sealed_trace_memory``
        was full, or is 0): until then, a trace this assembler does not remember
        was never sealed by it, and its chain starts at genesis."""
        return self._forgot_sealed

    @property
    def pending_traces(self) -> int:
        """Traces held in memory (open, due, or with a segment in flight)."""
        return len(self._traces)

    def in_flight(self, trace_id: str) -> bool:
        """Whether a segment of the trace was taken (:meth:`due`, :meth:`drain_all`)
        and not yet reported (:meth:`sealed`, :meth:`abandon`)."""
        entry = self._traces.get(trace_id)
        return entry is not None and entry.position is None

    def holds(self, trace_id: str) -> bool:
        """Whether the trace's next span belongs here: it is pending, remembered as
        sealed (its chain continues here), or has a loss waiting to be declared."""
        return trace_id in self._traces or trace_id in self._sealed or trace_id in self._lost

    def holds_copy(self, trace_id: str, body: Body) -> bool:
        """Whether a body equal to *body* (same span id and content) is pending in
        the trace, not yet handed out to be sealed: :meth:`add` would ignore it."""
        entry = self._traces.get(trace_id)
        versions = None if entry is None else entry.seen.get(body_span_id(body))
        return versions is not None and _holds(versions, body)

    def chain_holds(self, trace_id: str, span_id: str) -> bool:
        """Whether an earlier segment of the trace's chain, sealed or in flight, holds
        *span_id*: :meth:`add` would list the span id in ``conflicts``."""
        entry = self._traces.get(trace_id)
        if entry is not None:
            return bool(entry.certified_ids or entry.in_flight_ids) and (
                _holds_id(entry.certified_ids, span_id)
                or _holds_id(entry.in_flight_ids, span_id))
        return trace_id in self._sealed and _holds_id(
            self._certified.get(trace_id, ""), span_id)

    # -- input -----------------------------------------------------------------

    def add(
        self, trace_id: str, body: Body, now: float, *, conflict: bool = False
    ) -> bool:
        """Add one span's record body (its span id identifies it: ``body["span"]["spanId"]``,
        or a :class:`~spanproof.exporter.sealing.SerializedBody`'s ``span_id``).

        *conflict*: the caller knows a different version of this span id was
        already certified in an earlier segment (the receiver remembers sealed
        spans); the span id is then listed in ``conflicts`` like a pending one.

        Returns True when something became due at once (size limit, or a trace
        sealed early for room), so the caller can wake its sealer.
        """
        entry = self._entry(trace_id, now)
        if entry is None:
            self._count_lost(trace_id)
            if self.on_dropped_body is not None:
                self.on_dropped_body(trace_id, body)
            return True
        span_id = body_span_id(body)
        versions = entry.seen.get(span_id)
        if versions is None:
            entry.seen[span_id] = [body]
            if (entry.certified_ids or entry.in_flight_ids) and (
                    _holds_id(entry.certified_ids, span_id)
                    or _holds_id(entry.in_flight_ids, span_id)):
                conflict = True  # an earlier segment of the chain holds this span id
        elif _holds(versions, body):
            return False  # an identical re-delivery: already pending
        else:
            versions.append(body)  # same span id, different content: a conflict
            if len(versions) >= _INDEXED_FROM and type(versions) is list:
                entry.seen[span_id] = _IndexedVersions(versions)
            entry.conflicts.add(span_id)
        if conflict:
            entry.conflicts.add(span_id)
        size = body_bytes(body)
        entry.bodies.append(body)
        entry.sizes.append(size)
        entry.size += size
        self._bytes += size + PENDING_SPAN_BYTES
        self._touch(entry, now)
        if self._full(entry) and trace_id not in self._ready:
            del self._open[trace_id]
            self._ready[trace_id] = SIZE_LIMIT
            return True
        if self._bytes >= self._next_look:
            self._bound_bytes()
        return bool(self._ready)

    def _bound_bytes(self) -> None:
        """Seal open traces early, largest first, until the open traces hold at most
        ``max_pending_bytes`` (those already due are on their way out)."""
        self._next_look = self._bytes + max(1, self._max_total // 64)
        due = sum(_held_bytes(self._traces[trace_id]) for trace_id in self._ready)
        excess = self._bytes - due - self._max_total
        if excess <= 0:
            return
        for trace_id in sorted(self._open, key=lambda t: _held_bytes(self._traces[t]),
                               reverse=True):
            entry = self._traces[trace_id]
            if excess <= 0 or not entry.bodies:
                break
            del self._open[trace_id]
            self._ready[trace_id] = SIZE_LIMIT
            entry.notes.append(_early(entry, _BYTES_NOTE.format(self._max_total)))
            excess -= _held_bytes(entry)

    def reject(self, trace_id: str, now: float, count: int = 1) -> None:
        """Count *count* spans of the trace that could not be certified (malformed);
        its next bundle declares them as rejected."""
        entry = self._entry(trace_id, now)
        if entry is None:
            self._count_lost(trace_id, count)
            return
        entry.rejected += count
        self._touch(entry, now)

    def drop(self, trace_id: str, now: float, count: int = 1, note: str | None = None) -> None:
        """Count *count* evidence spans of the trace that were lost before they
        reached the assembler (e.g. a full queue); its next bundle declares them as
        dropped, with *note* when given (also when the count has to wait for room:
        the note waits with it)."""
        entry = self._entry(trace_id, now)
        if entry is None:
            self._count_lost(trace_id, count, note)
            return
        entry.dropped += count
        if note is not None and note not in entry.notes:
            entry.notes.append(note)
        self._touch(entry, now)

    def drop_untracked(self, count: int) -> None:
        """Count *count* evidence spans lost whose traces cannot be named; the next
        bundle of any trace declares them as dropped (SPEC §5.3)."""
        self._untracked_lost += count

    def reject_untracked(self, count: int = 1) -> None:
        """Count *count* spans that could not be certified and whose trace id could
        not be read (zero, or a context that cannot be read); the next bundle of any
        trace declares them as rejected, with a note that they may be other traces'
        (SPEC §5.3)."""
        self._untracked_rejected += count

    @property
    def undeclared_untracked(self) -> int:
        """Losses of no known trace still waiting for a bundle to declare them."""
        return self._untracked_lost + self._untracked_rejected

    def unsampled(self, trace_id: str, now: float, count: int = 1) -> None:
        """Count *count* evidence spans of the trace that sampling removed; its
        next bundle declares them as unsampled (SPEC §5.3)."""
        entry = self._entry(trace_id, now)
        if entry is None:
            self._count_lost(trace_id, count)
            return
        entry.unsampled += count
        self._touch(entry, now)

    def root_ended(self, trace_id: str, now: float) -> None:
        """The trace's local root span (no parent, or a remote parent) ended at *now*.

        A trace with nothing pending is not tracked for this (most traces of an
        application carry no evidence), except that a remembered sealed trace
        records it, so a late span's segment gets the grace and not the idle timeout.
        """
        entry = self._traces.get(trace_id)
        if entry is None:
            sealed = self._sealed.get(trace_id)
            if sealed is not None and not sealed.root_ended:
                self._sealed[trace_id] = _Sealed(sealed.position, True)
            return
        entry.root_ended = True
        if entry.has_work():
            self._roots[trace_id] = now + self._grace
            self._roots.move_to_end(trace_id)

    # -- output ----------------------------------------------------------------

    def due(self, now: float, *, flush: bool = False) -> list[SealJob]:
        """Take the segments due at *now*: at most one per trace.

        A trace with a segment in flight waits until :meth:`sealed`; call again
        after reporting to collect it.  With *flush*, traces whose root ended are
        sealed without waiting for the grace (reason ``force_flush``); traces whose
        root has not ended stay open.
        """
        jobs: list[SealJob] = []
        for trace_id, reason in list(self._ready.items()):
            entry = self._traces[trace_id]
            if entry.position is None:
                continue
            job = self._emit(entry, reason)
            jobs.append(job)
            if not entry.has_work():
                self._forget_queues(trace_id)
            elif reason == SIZE_LIMIT and not self._full(entry):
                del self._ready[trace_id]
                self._open[trace_id] = None

        skipped: list[tuple[str, float]] = []
        while self._roots:
            trace_id, deadline = next(iter(self._roots.items()))
            if deadline > now and not flush:
                break
            del self._roots[trace_id]
            entry = self._traces[trace_id]
            if entry.position is None:
                skipped.append((trace_id, deadline))
                continue
            jobs.append(self._emit(entry, ROOT_ENDED if deadline <= now else FORCE_FLUSH))
            if entry.has_work():
                skipped.append((trace_id, deadline))
            else:
                self._forget_queues(trace_id)
        self._reinstate(self._roots, skipped)

        idle: list[tuple[str, None]] = []
        while self._open:
            trace_id = next(iter(self._open))
            entry = self._traces[trace_id]
            if entry.last_activity + self._idle > now:
                break
            del self._open[trace_id]
            if entry.position is None:
                idle.append((trace_id, None))
                continue
            jobs.append(self._emit(entry, IDLE_TIMEOUT))
            if entry.has_work():
                idle.append((trace_id, None))
            else:
                self._forget_queues(trace_id)
        self._reinstate(self._open, idle)

        # Declare spans dropped for want of a slot once there is room again, even
        # if their trace sends nothing more: an empty segment stating the loss.
        while self._lost and len(self._ready) < self._max_pending:
            trace_id, lost = self._lost.popitem(last=False)
            entry = self._declare_lost(trace_id, lost, now)
            if entry.position is not None:
                jobs.append(self._emit(entry, IDLE_TIMEOUT))
                if not entry.has_work():
                    self._forget_queues(trace_id)
        return jobs

    def drain_all(self, reason: str = SHUTDOWN) -> list[SealJob]:
        """Take every pending segment (at most one per trace), due or not.

        Call again after reporting the jobs with :meth:`sealed` until it returns
        an empty list: a trace with a segment in flight, or with more than
        ``max_records`` bodies, yields its next segment on the next call.

        Raises:
            ValueError: *reason* is not a SPEC §5.3 seal reason.
        """
        if reason not in SEAL_REASONS:
            raise ValueError(f"unknown seal reason {reason!r}")
        jobs = []
        for trace_id, lost in self._lost.items():
            self._declare_lost(trace_id, lost, 0.0)
        self._lost.clear()
        for trace_id, entry in list(self._traces.items()):
            if entry.position is None or not entry.has_work():
                continue
            # One already due keeps its own reason for this segment (sealed early for
            # room, its note says so: "shutdown" beside it misstated why).
            jobs.append(self._emit(entry, self._ready.pop(trace_id, reason)))
            if not entry.has_work():
                self._forget_queues(trace_id)
        return jobs

    def sealed(self, job: SealJob, next_position: ChainPosition) -> None:
        """Report that *job* was sealed; the trace's next segment starts at *next_position*.

        Raises:
            ValueError: *job* is not in flight.
        """
        entry = self._traces.get(job.trace_id)
        if entry is None or entry.position is not None:
            raise ValueError(f"trace {job.trace_id} has no segment in flight")
        entry.position = next_position
        entry.certified_ids = self._certify(job.trace_id, entry.in_flight_ids)
        entry.in_flight_ids = ""
        if not entry.has_work():
            del self._traces[job.trace_id]
            self._remember(job.trace_id, _Sealed(next_position, entry.root_ended))

    def abandon(self, job: SealJob, note: str) -> None:
        """Report that *job* could not be sealed: its spans are lost.

        The trace's next bundle (due at once) starts where *job* would have and
        declares the job's bodies as dropped, with *note*.

        Raises:
            ValueError: *job* is not in flight.
        """
        entry = self._traces.get(job.trace_id)
        if entry is None or entry.position is not None:
            raise ValueError(f"trace {job.trace_id} has no segment in flight")
        entry.position = job.position
        entry.in_flight_ids = ""  # never certified
        entry.dropped += len(job.bodies) + job.completeness.dropped_spans
        entry.rejected += job.completeness.rejected_spans
        entry.unsampled += job.completeness.unsampled_spans
        entry.notes.extend(job.completeness.notes)
        entry.notes.append(note)
        self._open.pop(job.trace_id, None)
        self._ready[job.trace_id] = job.reason

    def next_deadline(self) -> float | None:
        """The earliest time something may become due (``-inf``: now), or None."""
        if self._ready or self._lost:
            return float("-inf")
        deadlines = []
        if self._roots:
            deadlines.append(next(iter(self._roots.values())))
        if self._open:
            deadlines.append(self._traces[next(iter(self._open))].last_activity + self._idle)
        return min(deadlines) if deadlines else None

    # -- internals -------------------------------------------------------------

    def _new_entry(self, trace_id: str, now: float) -> _Trace:
        sealed = self._sealed.pop(trace_id, None)
        if sealed is None:
            return _Trace(trace_id, ChainPosition.genesis(trace_id), now)
        return _Trace(trace_id, sealed.position, now, root_ended=sealed.root_ended,
                      certified_ids=self._certified.get(trace_id, ""))

    def _entry(self, trace_id: str, now: float) -> _Trace | None:
        entry = self._traces.get(trace_id)
        if entry is not None:
            return entry
        if len(self._open) >= self._max_pending:
            if len(self._ready) >= self._max_pending:
                return None  # the sealer is far behind: no room, the span is dropped
            # Make room: the least recently active open trace is sealed early.
            oldest = next(iter(self._open))
            del self._open[oldest]
            evicted = self._traces[oldest]
            # A trace whose root ended is sealed for that, only before its grace.
            self._ready[oldest] = ROOT_ENDED if evicted.root_ended else IDLE_TIMEOUT
            evicted.notes.append(_early(evicted, _EVICTED_NOTE.format(self._max_pending)))
        entry = self._new_entry(trace_id, now)
        lost = self._lost.pop(trace_id, None)
        if lost is not None:
            self._take_lost(entry, lost)
        self._traces[trace_id] = entry
        return entry

    def _declare_lost(self, trace_id: str, lost: _Lost, now: float) -> _Trace:
        """Give *count* dropped spans of *trace_id* a pending entry that declares them."""
        entry = self._traces.get(trace_id)
        if entry is None:
            entry = self._new_entry(trace_id, now)
            self._traces[trace_id] = entry
        self._take_lost(entry, lost)
        if entry.trace_id not in self._ready:
            self._open[trace_id] = None
        return entry

    def _take_lost(self, entry: _Trace, lost: _Lost) -> None:
        """Declare on *entry* the spans of its trace that were dropped for want of
        room, with the notes given with them (see :meth:`drop`)."""
        count, notes = lost
        entry.dropped += count
        entry.notes.append(_LIMIT_NOTE.format(self._max_pending))
        entry.notes.extend(notes)

    def _touch(self, entry: _Trace, now: float) -> None:
        trace_id = entry.trace_id
        entry.last_activity = now
        if trace_id not in self._ready:
            self._open[trace_id] = None
            self._open.move_to_end(trace_id)
        if entry.root_ended and trace_id not in self._roots:
            # A span after the root's segment was sealed: its continuation segment
            # waits the usual grace for siblings.
            self._roots[trace_id] = now + self._grace

    def _count_lost(self, trace_id: str, count: int = 1, note: str | None = None) -> None:
        held, notes = self._lost.get(trace_id, (0, ()))
        if note is not None and note not in notes:
            notes += (note,)
        self._lost[trace_id] = (held + count, notes)
        if len(self._lost) > self._max_pending:
            forgotten_trace, (forgotten, _) = self._lost.popitem(last=False)
            self._untracked_lost += forgotten
            if self.on_untracked is not None:
                self.on_untracked(forgotten_trace, None)

    def _full(self, entry: _Trace) -> bool:
        """Whether *entry*'s pending bodies make a segment of their own."""
        return len(entry.bodies) >= self._max_records or entry.size >= self._max_bytes

    def _emit(self, entry: _Trace, reason: str) -> SealJob:
        assert entry.position is not None
        bodies, sizes = entry.bodies, entry.sizes
        count = (segment_length(sizes, self._max_records, self._max_bytes)
                 if entry.size >= self._max_bytes else min(len(bodies), self._max_records))
        if count < len(bodies):
            taken, rest = bodies[:count], bodies[count:]
            entry.sizes = sizes[count:]
            reason = SIZE_LIMIT
            entry.in_flight_ids = _span_ids([body_span_id(body) for body in taken])
        else:
            taken, rest = bodies, []
            entry.sizes = []
            entry.in_flight_ids = _span_ids(entry.seen)  # every body's span id, once
        left = sum(entry.sizes)
        self._bytes -= entry.size - left + PENDING_SPAN_BYTES * len(taken)
        self._next_look = min(self._next_look, max(self._bytes, self._max_total))
        entry.size = left
        conflicts: tuple[str, ...] = ()
        if entry.conflicts:
            ids = {body_span_id(body) for body in taken}
            conflicts = tuple(sorted(entry.conflicts & ids))
        notes = tuple(entry.notes)
        # Losses whose trace could not be remembered are declared in the next bundle
        # of any trace: over-declaring beats silence.
        untracked_dropped, untracked_rejected = self._untracked_lost, self._untracked_rejected
        if untracked_dropped:
            notes += (_UNTRACKED_NOTE.format(untracked_dropped),)
        if untracked_rejected:
            notes += (_UNTRACKED_REJECTED_NOTE.format(untracked_rejected),)
        self._untracked_lost = self._untracked_rejected = 0
        job = SealJob(
            entry.trace_id,
            tuple(taken),
            entry.position,
            reason,
            Completeness(
                dropped_spans=entry.dropped + untracked_dropped,
                rejected_spans=entry.rejected + untracked_rejected,
                unsampled_spans=entry.unsampled,
                conflicts=conflicts,
                notes=notes,
            ),
            untracked_dropped,
            untracked_rejected,
        )
        if untracked_dropped and self.on_untracked is not None:
            self.on_untracked(None, job)
        entry.bodies = rest
        entry.seen = {}
        for body in rest:
            entry.seen.setdefault(body_span_id(body), []).append(body)
        for span_id, versions in entry.seen.items():
            if len(versions) >= _INDEXED_FROM:
                entry.seen[span_id] = _IndexedVersions(versions)
        entry.conflicts = {c for c in entry.conflicts if c in entry.seen}
        entry.dropped = entry.rejected = entry.unsampled = 0
        entry.notes = []
        entry.position = None
        return job

    def _forget_queues(self, trace_id: str) -> None:
        self._open.pop(trace_id, None)
        self._ready.pop(trace_id, None)
        self._roots.pop(trace_id, None)

    @staticmethod
    def _reinstate(queue: OrderedDict[str, Any], items: list[tuple[str, Any]]) -> None:
        for key, value in reversed(items):
            queue[key] = value
            queue.move_to_end(key, last=False)

    def _remember(self, trace_id: str, sealed: _Sealed) -> None:
        if self._memory == 0:
            self._forget_certified(trace_id)
            return
        self._sealed[trace_id] = sealed
        self._sealed.move_to_end(trace_id)
        if len(self._sealed) > self._memory:
            forgotten, _ = self._sealed.popitem(last=False)
            self._forget_certified(forgotten)
            self._forgot_sealed = True

    def _certify(self, trace_id: str, ids: SpanIds) -> SpanIds:
        """Remember *ids*, the span ids a segment of the trace certified (see
        :data:`SEALED_SPAN_IDS`); return all those remembered of the trace."""
        certified = self._certified
        earlier = certified.pop(trace_id, "")
        before = _count(earlier)
        held = _joined(earlier, ids)
        certified[trace_id] = held  # last: the most recently sealed
        self._certified_count += _count(held) - before
        while self._certified_count > SEALED_SPAN_IDS:
            self._forget_certified(next(iter(certified)))
        return certified.get(trace_id, "")  # "" when it was forgotten at once

    def _forget_certified(self, trace_id: str) -> None:
        forgotten = self._certified.pop(trace_id, None)
        if forgotten is not None:
            self._certified_count -= _count(forgotten)


def _span_ids(ids: Collection[str]) -> SpanIds:
    """*ids* (SpanIds), those of 16 characters (a record's always are)."""
    if len(ids) > _SCANNED_IDS:
        return {i for i in ids if len(i) == 16}
    joined = "".join(ids)
    if len(joined) != 16 * len(ids):
        joined = "".join(i for i in ids if len(i) == 16)
    return joined


def _joined(earlier: SpanIds, later: SpanIds) -> SpanIds:
    """The span ids of *earlier* and *later* (SpanIds); a set *earlier* is added to
    in place (the open trace holding it sees the same)."""
    if isinstance(earlier, str) and isinstance(later, str):
        both = earlier + later
        if len(both) <= 16 * _SCANNED_IDS:
            return both
        return _as_set(both)
    held = earlier if isinstance(earlier, set) else _as_set(earlier)
    held.update(later if isinstance(later, set) else _as_set(later))
    return held


def _as_set(ids: str) -> set[str]:
    return {ids[k:k + 16] for k in range(0, len(ids), 16)}


def _count(ids: SpanIds) -> int:
    return len(ids) >> 4 if isinstance(ids, str) else len(ids)


def _held_bytes(entry: _Trace) -> int:
    """What *entry*'s pending bodies count toward ``max_pending_bytes``."""
    return entry.size + PENDING_SPAN_BYTES * len(entry.bodies)


def _holds_id(certified: SpanIds, span_id: str) -> bool:
    """Whether *certified* (SpanIds) holds *span_id*."""
    if len(span_id) != 16:
        return False
    if not isinstance(certified, str):
        return span_id in certified
    at = certified.find(span_id)
    while at != -1:
        if at & 15 == 0:
            return True
        at = certified.find(span_id, at + 1)
    return False


_EVICTED_NOTE = "{} traces were open (max_pending_traces)"
_BYTES_NOTE = "the open traces held more than {} bytes (the largest is sealed first)"


def _early(entry: _Trace, cause: str) -> str:
    """The note of a trace sealed early for *cause*: before its root span ended or
    went idle, or, its root ended, before its grace period did (a note that said
    its root had not ended misstated a complete trace)."""
    when = ("before its grace period ended" if entry.root_ended
            else "before its root span ended or went idle")
    return f"sealed {when}: {cause}"
_LIMIT_NOTE = (
    "evidence spans of this trace were dropped: {} traces were waiting to be sealed "
    "(max_pending_traces) and the sealer had fallen behind"
)
_UNTRACKED_NOTE = (
    "{} evidence span(s) of other traces were dropped while the sealer had fallen "
    "behind or bundles could not be written; their trace ids could not be kept"
)
_UNTRACKED_REJECTED_NOTE = (
    "{} span(s) were rejected whose trace id could not be read (zero or malformed); "
    "they may be other traces'"
)
