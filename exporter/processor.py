"""A span processor that makes evidence durable before it acknowledges a flush.

:class:`EvidenceSpanProcessor` replaces ``BatchSpanProcessor(SpanproofSpanExporter())``
when losing evidence matters:

* ``on_end`` (the application's thread) only selects the span and puts it on a
  bounded queue; when the queue is full it waits at most ``queue_block`` seconds,
  then counts the span as dropped for its trace (declared in that trace's bundle,
  SPEC §5.3 ``droppedSpans``).  A selected span that was not sampled (it reaches
  ``on_end`` under record-only samplers) is counted as unsampled.
* A worker thread normalizes queued spans and appends them to a CRC-framed journal
  (:mod:`spanproof.exporter.journal`) with one fsync per batch, then hands them to
  the exporter's sealer (the same assembly, sealing and sink code as
  :class:`~spanproof.exporter.SpanproofSpanExporter`).  Once a sealing pass has
  written its bundles, their spans are retired from the journal with one write
  and fsync for all of them.
* When the journal cannot take a batch (a full disk, EIO), its spans are held in
  memory, and sealed as usual; the worker journals them again, ahead of newer
  spans, as soon as the journal can be written, except those a written bundle
  holds already (journaled again, they would be certified twice after a crash).
* ``force_flush()`` returns True only when every evidence span that ended before
  the call is in the journal on disk or in a written bundle (or declared
  dropped/unsampled in the journal); it then seals the traces whose root ended.
* At construction, journals left by a process that died (``kill -9``) in the same
  journal directory are sealed as bundles with seal reason ``recovered``.  The
  process that built the processor looks again every ``ORPHAN_CHECK_SECONDS`` and
  at shutdown: forked workers it outlives (killed, recycled, or left through
  ``os._exit`` without shutting down) leave their journals behind.  A
  ``multiprocessing`` worker whose target returned shuts the processor down as it
  exits (a finalizer), sealing its journal itself.

What can still be lost on a crash: evidence spans still in the queue or in the
worker's current batch, i.e. ended since the last completed ``force_flush()`` and
not yet journaled by the worker (normally a few milliseconds' worth), and those of
batches the journal could not take, while it still cannot (``force_flush()``
answers False meanwhile).  Call
``force_flush()`` at the points that must be durable (e.g. before answering a
request) to bound that window.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from spanproof.verifier._settings import parse_decimal
from spanproof.verifier.keys import raw_public_bytes

from ._disabled import BuiltDisabled
from ._exporter import (
    _KEPT_LIMIT,
    _LONGEST_WAIT,
    _MAX_DISCARDED_TRACES,
    Interruptible,
    SpanproofSpanExporter,
    ThreadStarts,
    _selection_view,
    _shut_down_at_worker_exit,
    _span_id_of,
    _trace_id_of,
)
from ._recovery import declared_counts, position_to_json
from ._setup import check_directory, writable_directory
from ._untraced import own_thread
from .assembly import SealJob
from .config import QUEUE_BLOCK_VAR, QUEUE_SIZE_VAR, ExporterConfig
from .journal import Journal
from .keys import SigningKey
from .sealing import Body, SealedBundle
from .selection import Selector
from .sinks import BundleSink

__all__ = ["DEFAULT_QUEUE_BLOCK", "DEFAULT_QUEUE_SIZE", "EvidenceSpanProcessor", "install"]

_logger = logging.getLogger(__name__)

#: Evidence spans the queue between ``on_end`` and the journal holds.
DEFAULT_QUEUE_SIZE = 2048
#: Seconds ``on_end`` waits for room in a full queue before counting a drop.
DEFAULT_QUEUE_BLOCK = 0.05
# Spans journaled with one fsync, at most.
_BATCH = 512
# The worker looks at the loss counters at least this often (seconds).
_POLL = 0.2
# How long the worker waits for a sealing pass to end before it journals the spans
# held since the journal failed; it tries again with its next batch (seconds).
_HELD_WAIT = 1.0
#: How often (seconds) the process that built an :class:`EvidenceSpanProcessor` seals
#: the journals of processes that died beside it (see the module documentation).
ORPHAN_CHECK_SECONDS = 60.0
_DROPPED_NOTE = ("evidence spans of this trace were dropped: the span processor's queue "
                 "({} spans) stayed full for {} ms")
_UNSTORED_NOTE = (
    "evidence spans of this trace were dropped: {} certified in sealed bundle(s) of it "
    f"discarded unwritten, after {_KEPT_LIMIT} waited for a failing "
    "sink, which the chain goes on without; they stay in the journal, and the producer's "
    "next start seals them again (recovered)"
)


class _Flush:
    """A flush request travelling through the queue behind the spans it covers."""

    __slots__ = ("durable", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.durable = False


class _Queue(queue.Queue[Any]):
    """The journal worker's queue, counting the items put in it.

    Only ``put``, ``get`` and ``_put`` are used: under gevent's monkey-patching,
    ``queue.Queue`` is gevent's, which has no ``mutex`` (a flush that took it failed
    every time, AttributeError).
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.put_total = 0

    def _put(self, item: Any) -> None:
        # As the item is queued: an on_end() that returned has counted its item.
        self.put_total += 1
        super()._put(item)


_STOP = object()
# How long shutdown() waits, beyond queue_block, for on_end() calls under way.
_IN_FLIGHT_SECONDS = 1.0


class _JournaledSealer(SpanproofSpanExporter):
    """The SDK exporter's sealer, fed with journaled bodies instead of spans.

    It retires a bundle's journal entries once the sink wrote the bundle.  Not a
    public class: it is the :class:`EvidenceSpanProcessor`'s engine.
    """

    # The processor shuts down as a multiprocessing worker exits, journaling its
    # queue before this sealer shuts down.
    _shuts_down_at_worker_exit = False

    def __init__(
        self, *args: Any, journal_dir: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> None:
        self._journal_dir_given = journal_dir
        self._journal_dir = ""  # resolved by _check_arguments, before anything is created
        super().__init__(*args, **kwargs)

    def _check_arguments(
        self, config: ExporterConfig, clock: Callable[[], float] | None,
        sink: BundleSink | None,
    ) -> None:
        super()._check_arguments(config, clock, sink)
        # The processor's journal directory (default under the output directory) is
        # one of its arguments: checked with the others, before the output directory
        # and a key are created; the processor creates it once the sealer is built.
        given = self._journal_dir_given
        self._journal_dir = os.path.abspath(
            os.fspath(given) if given is not None
            else os.path.join(config.output_dir, "journal"))
        check_directory(self._journal_dir, "journal_dir")

    def _reset_process_state(self) -> None:
        super()._reset_process_state()
        old: Journal | None = getattr(self, "_journal", None)
        if old is not None:
            old.forget_after_fork()  # the parent's journal stays the parent's
        self._journal: Journal | None = None
        self._assembler.on_dropped_body = self._dropped_body
        self._assembler.on_untracked = self._untracked
        # Journal key of each body the assembler holds, by the body's identity.
        self._body_keys: dict[int, str] = {}
        # Journal keys of each sealed bundle not yet written, by the bundle's identity.
        self._bundle_keys: dict[int, tuple[SealedBundle, list[str], dict[str, int]]] = {}
        # Journal keys of the spans of segments that could not be sealed, by trace:
        # the trace's next bundle declares those spans dropped, and its write retires
        # them (unretired, they kept their journal files, and each file's descriptor,
        # for as long as the process lived).
        self._abandoned_keys: dict[str, list[str]] = {}
        # Journal keys of dropped spans whose count joined the one the next bundle of
        # any trace declares (_untracked): waiting for that bundle, then by the
        # identity of the job that declares them; its write retires them.
        self._untracked_keys: list[str] = []
        self._job_keys: dict[int, list[str]] = {}
        # Written bundles whose journal entries this sealing pass retires:
        # (trace id, keys, next position, declared counts, file name).
        self._retiring: list[tuple[str, list[str], dict[str, Any], dict[str, int], str]] = []
        # The journaled spans of bundles discarded unwritten, by trace (see _discard).
        self._unstored: dict[str, int] = {}
        # Spans of batches the journal could not take, held in memory only until
        # journal_held() journals them or a written bundle holds them: those not yet
        # sealed, by the body's identity, and those sealed into a bundle not yet
        # written, by the bundle's.
        self._held: dict[int, tuple[str, dict[str, Any]]] = {}
        self._held_sealed: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        # Spans the journal could not encode, by the body's identity: journaled as
        # rejected counts of their traces, and declared rejected by their bundle (the
        # sealer cannot encode them either), whose "sealed" entry then records them
        # as declared.  Without that, a clean stop left the count owed, and the next
        # start declared the span rejected a second time, in a "recovered" bundle.
        self._journal_rejected: set[int] = set()

    def _recover_at_start(self) -> None:
        pass  # the processor recovers its own journal directory (EvidenceSpanProcessor)

    def journal(self) -> Journal:
        """This process's journal, opened on first use (under the producer instance)."""
        if self._journal is None:
            self._journal = Journal(self._journal_dir, self._producer.instance,
                                    raw_public_bytes(self._signer.private_key.public_key()))
        return self._journal

    def admit(
        self,
        items: Sequence[tuple[str, dict[str, Any], str | None]],
        rejected: Sequence[str | None],
        roots: Sequence[str],
        dropped: Mapping[str, int],
        unsampled: Mapping[str, int],
        dropped_note: str,
        unjournaled: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        """Hand journaled ``(trace id, body, journal key)`` items and loss counts
        to the assembler, as ``export()`` does for spans.  *unjournaled* are the
        ``(trace id, body)`` of those items the journal failed to take: they are
        held for :meth:`journal_held`."""
        now = self._clock()
        with self._cond:
            held = {id(body) for _, body in unjournaled}
            for _, body, key in items:
                if key is not None:
                    self._body_keys[id(body)] = key
                elif id(body) not in held:
                    self._journal_rejected.add(id(body))
            for item in unjournaled:
                self._held[id(item[1])] = item
            self._admit_locked(now, [(t, b) for t, b, _ in items], rejected, roots,
                               dropped=dropped, unsampled=unsampled, dropped_note=dropped_note)

    def _dropped_body(self, trace_id: str, body: Body) -> None:
        # The assembler's on_dropped_body, called under self._lock.  The span is
        # declared dropped in its trace's next bundle, whose write retires its
        # journal entry (left there, the next start certified it again, after it
        # had been declared lost); one the journal could not take is not held.
        key = self._body_keys.pop(id(body), None)
        if key is not None:
            self._abandoned_keys.setdefault(trace_id, []).append(key)
        self._held.pop(id(body), None)
        self._journal_rejected.discard(id(body))

    def _untracked(self, trace_id: str | None, job: SealJob | None) -> None:
        # The assembler's on_untracked, called under self._lock: the keys of a
        # trace whose count joined the untracked one are retired with the bundle
        # that declares that count.
        if trace_id is not None:
            self._untracked_keys.extend(self._abandoned_keys.pop(trace_id, ()))
        elif job is not None and self._untracked_keys:
            self._job_keys[id(job)], self._untracked_keys = self._untracked_keys, []

    @property
    def holding(self) -> bool:
        """Whether spans the journal failed to take are held in memory only (see
        :meth:`journal_held`)."""
        return bool(self._held or self._held_sealed)

    def journal_held(self, rejections: collections.Counter[str], timeout: float) -> bool:
        """Journal the spans held in memory only since the journal failed to take
        their batch (:meth:`admit`), ahead of newer ones.

        A held span still waiting to be sealed gets its key as a span journaled at
        first does; one sealed into a bundle not yet written adds its key to that
        bundle's, which retires it once written.  The spans of written bundles are
        durable and no longer held: journaled again, they would be certified twice
        after a crash.  Runs under the seal lock, so that no segment is being sealed
        meanwhile, waiting for it at most *timeout* seconds.  A held span the journal
        cannot encode is counted in *rejections*, for the caller to journal (the
        sealer rejects it, as :func:`_append_spans` says).

        Returns whether no span is held any more.

        Raises:
            OSError: the journal cannot be written; the spans stay held.
        """
        if not self._held and not self._held_sealed:
            return True
        if not self._seal_lock.acquire(timeout=timeout):
            return False
        try:
            with self._lock:
                waiting = list(self._held.values())
                sealed = list(self._held_sealed.items())
            items = waiting + [item for _, held in sealed for item in held]
            keys: list[str | None] = []
            try:
                _append_spans(self.journal(), items, keys, rejections)
            finally:
                # The spans journaled before a failure are not held any more.
                with self._lock:
                    for (_, body), key in zip(waiting, keys, strict=False):  # the shorter
                        if key is not None:
                            self._body_keys[id(body)] = key
                        else:
                            self._journal_rejected.add(id(body))
                        del self._held[id(body)]
                    rest = keys[len(waiting):]
                    for bundle_id, held in sealed:
                        if not rest:
                            break
                        part, rest = rest[:len(held)], rest[len(held):]
                        # Set in _seal and forgotten in _write together.
                        entry = self._bundle_keys[bundle_id]
                        entry[1].extend(k for k in part if k is not None)
                        # Counted rejected in the journal: declared by that bundle.
                        entry[2]["rejected"] += sum(k is None for k in part)
                        del held[:len(part)]
                        if not held:
                            del self._held_sealed[bundle_id]
        finally:
            self._seal_lock.release()
        _logger.warning("spanproof: %d span(s) kept in memory only while the journal could "
                        "not be written are journaled now", len(items))
        return True

    def _seal(self, job: SealJob) -> SealedBundle:
        with self._lock:
            taken = [(id(b), self._body_keys.pop(id(b), None)) for b in job.bodies]
            journal_rejected = ([id(b) for b in job.bodies if id(b) in self._journal_rejected]
                                if self._journal_rejected else [])
            self._journal_rejected.difference_update(journal_rejected)
            declared_keys = self._job_keys.pop(id(job), [])
            held = ([self._held.pop(id(b)) for b in job.bodies if id(b) in self._held]
                    if self._held else [])
        keys = [key for _, key in taken if key is not None] + declared_keys
        try:
            bundle = super()._seal(job)
        except Exception:
            # The held spans are declared lost with the others (_seal_job).
            with self._lock:
                self._abandoned_keys.setdefault(job.trace_id, []).extend(keys)
            raise
        except BaseException:
            # Raised into the pass (sys.exit in a signal handler): the job is sealed
            # again, by the shutdown that follows, and retires its keys then.
            with self._lock:
                self._body_keys.update((body, key) for body, key in taken if key is not None)
                self._held.update((id(body), (trace_id, body)) for trace_id, body in held)
                self._journal_rejected.update(journal_rejected)
            raise
        with self._lock:
            keys += self._abandoned_keys.pop(job.trace_id, [])
            declared = job.journaled_counts()
            declared["rejected"] += len(journal_rejected)
            self._bundle_keys[id(bundle)] = (bundle, keys, declared)
            if held:
                self._held_sealed[id(bundle)] = held
        return bundle

    def _start_writes(self, deadline: float | None = None) -> None:
        for bundle in self._sealed_unwritten:
            self._declare_unstored(bundle.statement.trace_id)
        super()._start_writes(deadline)

    def _write(self, bundle: SealedBundle, outcome: str | Exception | None = None) -> bool:
        if outcome is None:  # written here, not by the writer thread (_start_writes)
            self._declare_unstored(bundle.statement.trace_id)
        ok = super()._write(bundle, outcome)
        with self._lock:
            if ok:
                entry = self._bundle_keys.pop(id(bundle), None)
                self._held_sealed.pop(id(bundle), None)  # durable now: in the bundle
            else:
                entry = None
                # A bundle the exporter gave up on keeps its spans in the journal
                # (recovered at the next start); forget its keys here, but not
                # those of bundles still waiting for a retry or being written.
                waiting = {id(b) for b in self._unwritten}
                waiting.update(id(b) for b, _ in self._inflight)
                waiting.update(id(b) for b in self._sealed_unwritten)  # not written yet
                for stale in [k for k in self._bundle_keys if k not in waiting]:
                    del self._bundle_keys[stale]
                    # Its spans not journaled are declared dropped (_discard).
                    self._held_sealed.pop(stale, None)
        if ok and self._journal is not None:
            keys, declared = ((entry[1], entry[2]) if entry is not None
                              else ([], declared_counts(bundle.statement.completeness)))
            self._retiring.append((bundle.statement.trace_id, keys,
                                   position_to_json(bundle.next_position()), declared,
                                   bundle.file_name))
        return ok

    def _discard(self, bundle: SealedBundle) -> None:
        # The spans that were journaled stay there, and the next start seals them
        # (SPEC §5.3 "recovered"): declaring them dropped now as well would count
        # them twice.  Those that were not (the journal could not be written either)
        # are declared as the exporter declares them, with the bundle's own counts,
        # which may then be declared twice: more, never less.  Should the trace go
        # on here, its next segment continues this one, which is never stored: the
        # journaled spans are then declared too (_declare_unstored).
        with self._lock:
            entry = self._bundle_keys.get(id(bundle))
        records = bundle.statement.record_count
        unjournaled = records - (len(entry[1]) if entry else 0)
        if records > unjournaled:
            trace_id = bundle.statement.trace_id
            self._unstored[trace_id] = (self._unstored.pop(trace_id, 0)
                                        + records - max(0, unjournaled))
            if len(self._unstored) > _MAX_DISCARDED_TRACES:
                self._declare_unstored(next(iter(self._unstored)))  # early, not never
        if unjournaled <= 0:
            _logger.error("spanproof: bundle %s discarded: %s are waiting for a "
                          "failing sink; its spans stay in the journal and the next start "
                          "seals them (declared dropped as well should its trace go on "
                          "meanwhile)", bundle.file_name, _KEPT_LIMIT.removesuffix(","))
            return
        self._count_discarded(bundle, unjournaled)
        _logger.error("spanproof: bundle %s discarded: %s are waiting for a failing "
                      "sink; %d of its span(s) were not journaled either, and its trace's "
                      "next bundle declares them as dropped", bundle.file_name,
                      _KEPT_LIMIT.removesuffix(","), unjournaled)

    def _declare_unstored(self, trace_id: str) -> None:
        """Before a segment of *trace_id* is written: when it continues a segment
        discarded unwritten (SPEC §4.4: the chain misses a segment), declare that
        segment's journaled spans dropped in the trace's next bundle (SPEC §5.3:
        certified in a bundle that could not be stored), journaling the count first
        so that a start after a crash declares it if that bundle was not written.
        The spans stay journaled: that start seals them too, after the trace's last
        segment."""
        count = self._unstored.pop(trace_id, 0)
        if not count:
            return
        _logger.error("spanproof: trace %s goes on past a segment discarded unwritten; its "
                      "next bundle declares the %d journaled span(s) of it as dropped",
                      trace_id, count)
        try:
            self.journal().append_dropped(trace_id, count)
        except OSError as e:
            _logger.error("spanproof: cannot journal %d span(s) of trace %s as dropped (%s); "
                          "they are declared all the same", count, trace_id, e)
        with self._cond:
            self._assembler.drop(trace_id, self._clock(), count, _UNSTORED_NOTE.format(count))
            self._cond.notify()

    def _declare_discarded(self) -> None:
        # Journal the never-journaled records (all this sealer counts) as dropped
        # first, as the processor journals every count it admits: a crash before
        # their declaration is written then still declares them at the next start.
        # Only for the traces still named: one past the limit has its count in any
        # trace's bundle.  (The bundles' own counts are journaled already, or lost
        # with the journal: journaling them again would declare them twice after a
        # clean stop.)
        if self._discarded:
            try:
                journal = self.journal()
                for trace_id, (records, *_) in self._discarded.items():
                    journal.append_dropped(trace_id, records)
            except OSError as e:
                _logger.error("spanproof: cannot journal the spans of discarded bundles "
                              "as dropped (%s); they are declared all the same", e)
        super()._declare_discarded()

    def _shutdown_now(self, timeout_millis: float) -> None:
        super()._shutdown_now(timeout_millis)
        if self._journal is not None:
            # The processor closes it too; a shutdown a signal handler deferred to
            # the end of a sealing pass (see the exporter) runs here alone.
            self._journal.close()

    def _pass_done(self) -> None:
        # Retire every bundle this pass wrote with one journal write and fsync (a
        # sealing pass writes a group of bundles at once; one fsync each cost a
        # disk flush per bundle).  Under the seal lock, so a trace's entries stay
        # in the order its segments were sealed.
        retiring, self._retiring = self._retiring, []
        if self._journal is None:
            return
        retrying = self._journal.retire_pending
        if not retiring and not retrying:
            return
        try:
            self._journal.append_sealed_many(
                (trace_id, keys, nxt, declared) for trace_id, keys, nxt, declared, _ in retiring)
        except OSError as e:
            # The bundles are durable and their spans stay journaled: the journal
            # keeps the entries and writes them first, in order, at the next pass; a
            # start after a crash finds the bundles and does not seal them again.
            if not retrying:
                names = ", ".join(name for *_, name in retiring[:3])
                more = f" and {len(retiring) - 3} more" if len(retiring) > 3 else ""
                _logger.error("spanproof: cannot retire journal entries of %s%s (%s); "
                              "will retry", names, more, e)


class EvidenceSpanProcessor(SpanProcessor, BuiltDisabled):
    """A ``SpanProcessor`` that journals evidence spans off the application's thread
    and seals them into signed bundles; see the module documentation.

    Every exporter setting follows :class:`~spanproof.exporter.config.ExporterConfig`
    (argument, else ``OTEL_EXPORTER_SPANPROOF_*``, else default), so
    ``EvidenceSpanProcessor()`` is configured by the environment alone.  With
    ``OTEL_SDK_DISABLED=true`` it is built disabled, as the exporter is: no key,
    journal or recovery.  Two more settings belong to the processor:

    Args:
        queue_size: evidence spans waiting for the journal, at most
            (``OTEL_EXPORTER_SPANPROOF_QUEUE_SIZE``, default 2048).
        queue_block: seconds ``on_end`` waits when the queue is full before it
            counts the span as dropped (``OTEL_EXPORTER_SPANPROOF_QUEUE_BLOCK_MS``,
            default 50 ms; 0 never waits; at most a year).
        journal_dir: the journal directory (default ``<output_dir>/journal``).
        recover: seal orphaned journals, and finish the writes a stopped process
            left in the output directory, at construction (default True).
        other arguments: as :class:`~spanproof.exporter.SpanproofSpanExporter`,
            except ``sealing_process``, which is ignored: the processor seals in
            this process, after its journal.

    Raises:
        TypeError: a ``str`` given for ``select_attributes`` or
            ``redact_attributes`` (a list of keys is expected), or a
            ``signing_key`` that is not a ``SigningKey``.
        ValueError: a malformed argument or a malformed variable that is not a
            tuning setting (naming it; see :mod:`~spanproof.exporter.config`;
            ``QUEUE_SIZE`` and ``QUEUE_BLOCK_MS`` are tuning settings), an output
            or journal directory that cannot be created or written, or a
            ``witness_key`` that is the signing key's public half.
        InvalidKey: the key file cannot be used.
        OSError: the key directory cannot be created.
    """

    @classmethod
    def _bind_arguments(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Bind the arguments as ``__init__`` does, the exporter's settings among
        them to the sealer's (a misspelled one is a ``TypeError`` there)."""
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        settings = dict(bound.arguments.get("exporter_settings", {}))
        settings.pop("sealing_process", None)
        inspect.signature(SpanproofSpanExporter.__init__).bind(None, **settings)

    def __init__(
        self,
        output_dir: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        queue_size: int | None = None,
        queue_block: float | None = None,
        journal_dir: str | os.PathLike[str] | None = None,
        recover: bool = True,
        selector: Selector | None = None,
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] | None = None,
        sink: BundleSink | None = None,
        **exporter_settings: Any,
    ) -> None:
        # README: the processor always seals in this process and ignores this setting,
        # given as an argument as much as in the environment (it was a TypeError,
        # "multiple values for keyword argument", from a private class).
        exporter_settings.pop("sealing_process", None)
        self._queue_size = _resolve_int(queue_size, "queue_size", QUEUE_SIZE_VAR,
                                        DEFAULT_QUEUE_SIZE, 1)
        self._block = _resolve_seconds(queue_block, "queue_block", QUEUE_BLOCK_VAR,
                                       DEFAULT_QUEUE_BLOCK)
        # The processor seals here: its journal is its hand-off off the
        # application's thread, and its flush must reach this sealer's assembler.
        sealer = _JournaledSealer(output_dir, key_file, journal_dir=journal_dir,
                                  selector=selector, signing_key=signing_key, clock=clock,
                                  sink=sink, sealing_process=False, **exporter_settings)
        self._sealer = sealer
        self._journal_dir = sealer._journal_dir
        try:
            # Found at the first span instead, every span would be sealed from memory
            # only, and the durability this processor exists for silently gone.
            writable_directory(self._journal_dir, "journal_dir")
        except ValueError:
            sealer.shutdown()
            raise
        self._selects = sealer._selector.selects
        self._dropped_note = _DROPPED_NOTE.format(self._queue_size, round(self._block * 1000))
        self._shutdown = False
        self._warned_after_shutdown = False
        self.recovered: list[str] = []
        # The process that recovers (this one, with *recover*), and its thread that
        # looks again; a forked child has neither.
        self._recovering_pid = os.getpid() if recover else None
        self._orphans_stop = threading.Event()
        self._orphans_lock = threading.Lock()  # one recovery at a time (journal claims)
        if recover:
            self.recovered = sealer._recover_journals(self._journal_dir)
            looker = own_thread(self._look_for_orphans, "spanproof-orphans")
            ThreadStarts("journal recovery thread",
                         "orphaned journals are sealed at shutdown").start(looker)
        self._reset_process_state()
        weak_reinit = weakref.WeakMethod(self._after_fork_in_child)

        def after_in_child() -> None:
            reinit = weak_reinit()
            if reinit is not None:
                reinit()

        if hasattr(os, "register_at_fork"):  # POSIX; runs after the sealer's own hook
            os.register_at_fork(after_in_child=after_in_child)

    def _after_fork_in_child(self) -> None:
        # The parent's queue stays the parent's.  A multiprocessing worker, which
        # leaves through os._exit() without the SDK's exit hook, shuts down as it
        # exits: what it journaled is sealed by it rather than recovered by the parent.
        self._reset_process_state()
        _shut_down_at_worker_exit(self)

    def _reset_process_state(self) -> None:
        """The queue, loss counters and worker of this process."""
        self._queue: _Queue = _Queue(self._queue_size)
        self._processed = 0  # items of the queue the worker has processed
        self._counts_lock = threading.Lock()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._unsampled: collections.Counter[str] = collections.Counter()
        # The traces of local roots counted above instead of queued: their end
        # reaches the sealer with the counts.
        self._lost_roots: set[str] = set()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._worker_starts = ThreadStarts(
            "journal worker", "evidence spans are journaled by force_flush() and shutdown()")
        self._journal_failing = False
        # Batches whose evidence the journal did not take, so far: a flush answered
        # by a later batch is not durable when one of them held spans it covers.
        self._journal_failures = 0
        self._dropping = False
        # The threads inside on_end(), which may hold the queue's or the counters'
        # lock, and a shutdown() one of them asked for meanwhile.
        self._in_end = Interruptible()

    @property
    def exporter(self) -> SpanproofSpanExporter:
        """The sealer (a :class:`SpanproofSpanExporter`): its config, key id, producer."""
        return self._sealer

    @property
    def journal_dir(self) -> str:
        """The journal directory."""
        return self._journal_dir

    # -- SpanProcessor -----------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue *span* when it is evidence; never raises, waits at most ``queue_block``."""
        me = self._in_end.enter()
        try:
            self._on_end(span)
            if self._worker is None and self._worker_starts.threadless:
                self._work_here(span)
        except Exception:
            _logger.exception("spanproof: on_end failed for span %s", _span_id_of(span))
        finally:
            if self._in_end.leave(me) is not None:
                self.shutdown()

    def _on_end(self, span: ReadableSpan) -> None:
        if self._shutdown:
            # The SDK's processors log a span handed to them after shutdown; an
            # evidence span lost so must not be silent either.
            if not self._warned_after_shutdown and self._selects(_selection_view(span)[0]):
                self._warned_after_shutdown = True
                _logger.warning("spanproof: evidence span %s ended after the evidence span "
                                "processor was shut down: not certified; later ones are "
                                "not logged", _span_id_of(span))
            return
        attributes, parent = _selection_view(span)
        is_root = parent is None or parent.is_remote
        if not self._selects(attributes):
            if is_root:
                # The trace's local root ended: its evidence is due after the grace.
                self._ensure_worker()
                try:
                    self._queue.put_nowait(("root", span))
                except queue.Full:
                    pass  # the trace is sealed on its idle timeout instead
            # One attribute read (README, "Faults and hostile input": selection sees
            # only the attributes the SDK kept).
            try:
                dropped = span._attributes.dropped  # type: ignore[union-attr]
            except AttributeError:
                return
            if dropped:
                self._sealer._warn_dropped(span, dropped)
            return
        self._ensure_worker()
        ctx = span.get_span_context()
        if ctx is not None and not ctx.trace_flags.sampled:
            trace_id = _trace_id_of(span)
            if trace_id is not None:
                with self._counts_lock:
                    self._unsampled[trace_id] += 1
                    if is_root:
                        # No span of it queued carries the root's end: noted with the
                        # count, so that force_flush() seals the trace.
                        self._lost_roots.add(trace_id)
            return
        item = ("span", span)
        try:
            if self._block > 0:
                self._queue.put(item, timeout=self._block)
            else:
                self._queue.put_nowait(item)
        except queue.Full:
            trace_id = _trace_id_of(span)
            if trace_id is not None:
                with self._counts_lock:
                    self._dropped[trace_id] += 1
                    if is_root:
                        # As for an unsampled root: a marker would not fit either.
                        self._lost_roots.add(trace_id)
            if not self._dropping:
                self._dropping = True
                _logger.error("spanproof: evidence span queue full (%d); dropping evidence "
                              "spans, each counted in its trace's bundle", self._queue_size)

    def force_flush(self, timeout_millis: int | None = 30000) -> bool:
        """Wait until every evidence span that ended before this call is journaled
        and fsynced, then seal the traces whose root ended.

        *timeout_millis* None (as ``BatchSpanProcessor.force_flush`` takes it), or
        longer than any wait can be, waits without a limit.

        Returns True when the spans are durable (in the journal or a written
        bundle), at once when every span queued is journaled already, whatever the
        timeout; False on timeout, after shutdown, or when the journal cannot be
        written, and until the spans of batches it could not take earlier are
        journaled (or written in bundles).
        """
        if self._shutdown:
            return False
        failures = self._journal_failures
        try:
            deadline = _deadline(timeout_millis)
            if self._idle():
                # Every span queued so far is journaled: nothing for the worker to
                # answer, so even a zero timeout is met (the SDK's contract: False
                # only when the timeout is exceeded).
                self._sealer.force_flush(int(_left(deadline) * 1000))
                return True
            flush = _Flush()
            running = self._ensure_worker()
            if not running:
                # Room for the flush first: with the queue full and no worker to
                # drain it, the put waited out the whole timeout, and answered False.
                self._process_here()
            self._queue.put(flush, timeout=_left(deadline))
            if not running:
                self._process_here()
            if not flush.event.wait(_left(deadline)):
                return False
            self._sealer.force_flush(int(_left(deadline) * 1000))
            # The spans queued before the flush may have filled batches before its
            # own (more than one batch's worth, or processed here to make room for
            # it): the journal must have taken those too.
            return flush.durable and self._journal_failures == failures
        except queue.Full:
            return False
        except Exception:
            _logger.exception("spanproof: force_flush failed")
            return False

    def shutdown(self) -> None:
        """Journal what is queued, seal everything (reason ``shutdown``), close the
        journal.  Idempotent; spans ending afterwards are ignored."""
        if self._shutdown:
            return
        deferred = self._in_end.defer(0.0)
        if deferred is not None:
            # A signal handler interrupted an on_end() of this thread, which may hold
            # the queue's lock the shutdown needs: that on_end shuts down as it returns.
            if deferred:
                _logger.warning(
                    "spanproof: shutdown() called inside an on_end() of its own thread (a "
                    "signal handler?): it journals and seals what is pending once that "
                    "on_end returns, when the handler returns or raises; exiting at once "
                    "(os._exit) loses it")
            return
        self._shutdown = True
        # An on_end() already past its check still queues its span, or counts its
        # loss: the last batch must cover it (it was neither sealed nor declared).
        if not self._in_end.wait_idle(self._block + _IN_FLIGHT_SECONDS):
            _logger.warning("spanproof: shutdown: an on_end() still runs after %.1f s; a "
                            "span it ends later is not sealed", self._block + _IN_FLIGHT_SECONDS)
        if self._recovering_pid == os.getpid():
            self._orphans_stop.set()
            self._seal_orphans()  # before the sealer stops: the witness gets them too
        worker = self._worker
        if worker is not None and worker.is_alive():
            try:
                self._queue.put(_STOP, timeout=30)
                worker.join(30)
            except queue.Full:
                _logger.error("spanproof: shutdown: the journal worker does not drain")
        elif worker is None:
            self._process_here()
        if worker is None or not worker.is_alive():
            # What the worker's last batch did not hold: loss counts taken since.
            while batch := self._next_batch(wait=False):
                self._process_or_log(batch)
            self._process_or_log([])
        self._sealer.shutdown()
        journal = self._sealer._journal
        # Not while the sealer's shutdown waits for a pass this call interrupted (a
        # signal handler's): that pass and the shutdown after it still write to it.
        if journal is not None and self._sealer._shutdown:
            journal.close()

    def _look_for_orphans(self) -> None:
        while not self._orphans_stop.wait(ORPHAN_CHECK_SECONDS):
            self._seal_orphans()

    def _seal_orphans(self) -> None:
        """Seal the journals of processes that died beside this one (never this
        process's own), and hand the bundles to the witness submitter."""
        with self._orphans_lock:
            self._sealer._recover_journals(self._journal_dir, again=True)

    # -- the worker ----------------------------------------------------------------

    def _ensure_worker(self) -> bool:
        """Start the journal worker unless it runs; whether it runs.

        Where no thread may start (at interpreter exit on Python 3.12, for a span
        that ends there, or out of threads) spans stay queued: force_flush() and
        shutdown() process them on the calling thread, and the next span tries again.
        Once gevent patched threading after this processor was set up, none starts
        again: :meth:`on_end` processes them too (:meth:`_work_here`).
        """
        if self._worker is not None:
            return True
        with self._worker_lock:
            if self._worker is None:
                worker = own_thread(self._run, "spanproof-journal")
                if not self._worker_starts.start(worker):
                    return False
                self._worker = worker
        return True

    def _work_here(self, span: ReadableSpan) -> None:
        """Where no worker thread may start for good (gevent patched threading after
        this processor was set up, see :class:`._green.GreenSince`): once *span* ended a
        local root, or a batch is queued, journal what is queued and seal what is
        due on the calling thread, as the worker and the sealer would."""
        if self._shutdown:
            return
        _, parent = _selection_view(span)
        if parent is None or parent.is_remote or self._queue.qsize() >= _BATCH:
            self._process_here()
            self._sealer._seal_here()

    def _process_here(self) -> None:
        """Process everything queued on the calling thread, while no worker runs."""
        with self._worker_lock:  # no worker starts meanwhile
            if self._worker is not None:
                return
            while batch := self._next_batch(wait=False):
                self._process_and_count(batch)

    def _run(self) -> None:
        while not self._process_and_count(self._next_batch(wait=True)):
            pass

    def _process_and_count(self, batch: list[Any]) -> bool:
        """:meth:`_process_or_log` *batch*, then count its items processed (for
        :meth:`_idle`)."""
        try:
            return self._process_or_log(batch)
        finally:
            self._processed += len(batch)

    def _idle(self) -> bool:
        """Whether every item queued so far is processed, no loss waits to be counted
        in the journal, the journal was writable at the last write, and no span of a
        batch it failed to take is held in memory only."""
        if self._queue.put_total != self._processed:  # queued or being processed
            return False
        with self._counts_lock:
            if self._dropped or self._unsampled or self._lost_roots:
                return False
        return not self._journal_failing and not self._sealer.holding

    def _next_batch(self, *, wait: bool) -> list[Any]:
        """Up to ``_BATCH`` queued items (maybe none); with *wait*, the first is
        waited for up to ``_POLL`` seconds."""
        q = self._queue
        batch: list[Any] = []
        if wait:
            try:
                batch.append(q.get(timeout=_POLL))
            except queue.Empty:
                pass
        while len(batch) < _BATCH:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _process_or_log(self, batch: list[Any]) -> bool:
        """:meth:`_process` *batch*; a failure is logged and its flushes answered (not
        durable).  Returns whether the batch asked the worker to stop."""
        try:
            return self._process(batch)
        except Exception:
            self._journal_failures += 1
            _logger.exception("spanproof: journaling a batch failed")
            for item in batch:
                if isinstance(item, _Flush):
                    item.event.set()
            return any(item is _STOP for item in batch)

    def _process(self, batch: list[Any]) -> bool:
        """Normalize, journal and admit one batch; answer its flushes.  Returns
        whether the batch asked the worker to stop."""
        items: list[tuple[str, dict[str, Any]]] = []
        rejected: list[str | None] = []
        roots: list[str] = []
        flushes: list[_Flush] = []
        stop = False
        for item in batch:
            if item is _STOP:
                stop = True
            elif isinstance(item, _Flush):
                flushes.append(item)
            else:
                kind, span = item
                trace_id = _trace_id_of(span)
                if kind == "span":
                    self._sealer.note_value_length((span,))
                    body = self._sealer._normalize(span)
                    if body is None:
                        rejected.append(trace_id)  # None: declared in any trace's bundle
                    else:
                        items.append((body["span"]["traceId"], body))
                    parent = span.parent
                    if parent is None or parent.is_remote:
                        if trace_id is not None:
                            roots.append(trace_id)
                elif trace_id is not None:
                    roots.append(trace_id)
        # Counters are taken after the queue items: a flush covers every loss
        # counted before it was queued.
        with self._counts_lock:
            dropped, self._dropped = self._dropped, collections.Counter()
            unsampled, self._unsampled = self._unsampled, collections.Counter()
            if self._lost_roots:
                roots.extend(self._lost_roots)
                self._lost_roots = set()
        # Spans held since the journal failed are journaled as soon as it can be,
        # even when nothing else comes to be journaled.
        if not (items or rejected or roots or dropped or unsampled or flushes
                or self._sealer.holding):
            return stop
        keyed, unjournaled, durable = self._journal(items, rejected, dropped, unsampled)
        self._sealer.admit(keyed, rejected, roots, dropped, unsampled, self._dropped_note,
                           unjournaled)
        for flush in flushes:
            flush.durable = durable
            flush.event.set()
        return stop

    def _journal(
        self,
        items: list[tuple[str, dict[str, Any]]],
        rejected: list[str | None],
        dropped: Mapping[str, int],
        unsampled: Mapping[str, int],
    ) -> tuple[list[tuple[str, dict[str, Any], str | None]],
               list[tuple[str, dict[str, Any]]], bool]:
        """Append the spans held since the journal last failed
        (:meth:`_JournaledSealer.journal_held`), then *items*, the rejected spans'
        traces and the loss counts to the journal (fsynced).  Returns the items with
        their keys (None: not journaled), those of the items the journal failed to
        take (held until it can), and whether all is durable.  A rejected span whose
        trace id cannot be read has no trace to journal it under: it is declared
        from memory only."""
        rejections = collections.Counter(t for t in rejected if t is not None)
        keys: list[str | None] = []
        try:
            journal = self._sealer.journal()
            # The spans of batches it failed to take first: until they are journaled
            # (or in a written bundle), no flush is durable.
            caught_up = self._sealer.journal_held(rejections, _HELD_WAIT)
            _append_spans(journal, items, keys, rejections)
            # One write for every trace's counts: a batch holding losses of many
            # traces (an overloaded application's) took one fsync for each.
            journal.append_counts({"rejected": rejections, "dropped": dropped,
                                   "unsampled": unsampled})
        except OSError as e:
            self._journal_failures += 1
            if not self._journal_failing:
                self._journal_failing = True
                _logger.error("spanproof: cannot write the journal in %s (%s); evidence is "
                              "kept in memory only until it is writable again",
                              self._journal_dir, e)
            # The spans journaled before the failure keep their keys: without them
            # their bundle retired nothing, and the next start certified them again.
            kept = keys + [None] * (len(items) - len(keys))
            return ([(t, b, k) for (t, b), k in zip(items, kept, strict=True)],
                    items[len(keys):], False)
        if self._journal_failing:
            self._journal_failing = False
            _logger.warning("spanproof: the journal in %s is writable again", self._journal_dir)
        return [(t, b, k) for (t, b), k in zip(items, keys, strict=True)], [], caught_up


def _append_spans(
    journal: Journal,
    items: Sequence[tuple[str, dict[str, Any]]],
    keys: list[str | None],
    rejections: collections.Counter[str],
) -> None:
    """Append *items* to *journal* (fsynced), adding their keys to *keys* in order:
    None for a span the journal cannot take, which is counted in *rejections*.

    Raises:
        OSError: the journal cannot be written; *keys* holds those of the items
            written before the failure.
    """
    if not items:
        return
    try:
        keys.extend(journal.append_spans(items))
    except ValueError:
        # A value the journal's JSON cannot encode (a lone surrogate), or an entry
        # longer than a journal entry may be: journal the others; the sealer
        # declares that span rejected (no bundle line can hold the long one either),
        # and so does the journal.
        for trace_id, body in items:
            try:
                keys.extend(journal.append_spans([(trace_id, body)]))
            except ValueError:
                keys.append(None)
                rejections[trace_id] += 1


class _DisabledSpanProcessor(EvidenceSpanProcessor):
    """What ``EvidenceSpanProcessor(...)`` builds while ``OTEL_SDK_DISABLED`` is true.

    It does nothing: no key, journal, recovery or thread, whatever its arguments or
    variables say.  The SDK's providers make no span then; a span ended anyway is
    not certified (logged once).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # every argument ignored
        self._warned = False
        self.recovered = []
        _logger.info("spanproof: OTEL_SDK_DISABLED is true: the evidence span processor "
                     "is disabled (nothing is written or recovered)")

    def _disabled(self) -> RuntimeError:
        return RuntimeError("the evidence span processor is disabled (OTEL_SDK_DISABLED=true)")

    @property
    def exporter(self) -> SpanproofSpanExporter:
        """Not available: raises ``RuntimeError`` (nothing was configured)."""
        raise self._disabled()

    @property
    def journal_dir(self) -> str:
        """Not available: raises ``RuntimeError`` (no journal)."""
        raise self._disabled()

    def on_end(self, span: ReadableSpan) -> None:
        """Certify nothing (logged the first time)."""
        if not self._warned:
            self._warned = True
            _logger.warning("spanproof: span %s not certified: the evidence span processor "
                            "is disabled (OTEL_SDK_DISABLED=true); later ones are not logged",
                            _span_id_of(span))

    def force_flush(self, timeout_millis: int | None = 30000) -> bool:
        """Nothing is pending: True."""
        return True

    def shutdown(self) -> None:
        """Nothing to stop."""


# As the exporter: with OTEL_SDK_DISABLED=true no span reaches a processor.
EvidenceSpanProcessor._disabled_kind = _DisabledSpanProcessor


def install(**kwargs: Any) -> EvidenceSpanProcessor:
    """Add an :class:`EvidenceSpanProcessor` (built with *kwargs*, else from the
    environment) to the global SDK ``TracerProvider`` and return it.

    Meant for applications run under ``opentelemetry-instrument``, which installs
    the provider before the application's code runs: call this once at start-up.
    The provider shuts the processor down at exit.

    With the SDK disabled (``OTEL_SDK_DISABLED=true``; ``opentelemetry-instrument``
    then installs a disabled SDK provider, whose tracers make no span) it logs so
    and returns the disabled processor, which does nothing, without adding it.

    Raises:
        TypeError: an argument :class:`EvidenceSpanProcessor` does not take (said
            first); the global tracer provider is not the OpenTelemetry SDK's (the
            SDK is not configured).
        ValueError: a malformed setting (the SDK enabled).
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    # A misspelled argument first, with the SDK disabled or not.
    try:
        EvidenceSpanProcessor._bind_arguments((), kwargs)
    except TypeError as e:
        raise TypeError(f"install(): {e}") from None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        raise TypeError("the global tracer provider is not an OpenTelemetry SDK "
                        f"TracerProvider ({type(provider).__name__}); configure the SDK first")
    if getattr(provider, "_disabled", False):
        # opentelemetry-instrument installs the SDK's provider with the SDK disabled
        # too: its tracers make no span. The application runs on, spanproof with it
        # disabled (README, "Drop-in, no code change").
        _logger.info("spanproof: install(): the global tracer provider is disabled "
                     "(OTEL_SDK_DISABLED=true): the processor returned does nothing")
        return _DisabledSpanProcessor(**kwargs)
    processor = EvidenceSpanProcessor(**kwargs)
    provider.add_span_processor(processor)
    return processor


def _deadline(timeout_millis: float | None) -> float:
    """The ``time.monotonic()`` deadline *timeout_millis* from now; +inf for None."""
    if timeout_millis is None:
        return float("inf")
    try:
        return time.monotonic() + min(timeout_millis / 1000, _LONGEST_WAIT)
    except OverflowError:  # an int too large for a float
        return float("inf")


def _left(deadline: float) -> float:
    """Seconds left until *deadline*: 0 once past, at most :data:`_LONGEST_WAIT`."""
    return min(max(0.0, deadline - time.monotonic()), _LONGEST_WAIT)


def _resolve_int(value: int | None, name: str, var: str, default: int, minimum: int) -> int:
    if value is None:
        text = os.environ.get(var, "")
        if not text.strip():
            return default
        try:
            value = parse_decimal(text.strip())
        except ValueError:
            value = None
        if value is None or value < minimum:
            # As the exporter's tuning settings (spanproof.exporter.config): warn, use
            # the default (what a smaller queue drops is declared in the bundles).
            _logger.warning("spanproof: %s=%r is not valid (a whole number >= %d in the "
                            "digits 0-9); using the default", var, text, minimum)
            return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"spanproof processor setting {name} ({var}) must be an integer "
                         f">= {minimum}, got {value!r}")
    return value


def _resolve_seconds(value: float | None, name: str, var: str, default: float) -> float:
    if value is None:
        text = os.environ.get(var, "")
        if not text.strip():
            return default
        try:
            millis = parse_decimal(text.strip())
        except ValueError:
            millis = None
        if millis is None or millis > _LONGEST_WAIT * 1000:
            _logger.warning("spanproof: %s=%r is not valid (a whole number of milliseconds "
                            "in the digits 0-9, at most a year's); using the default",
                            var, text)
            return default
        value = millis / 1000
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 <= value <= _LONGEST_WAIT):
        # Over a year (and past what a wait can be: threading.TIMEOUT_MAX), every
        # on_end() that found the queue full raised in its wait, and its span was
        # lost without being counted as dropped.
        raise ValueError(f"spanproof processor setting {name} ({var}) must be a number of "
                         f"seconds >= 0 and at most {_LONGEST_WAIT:.0f} (a year), "
                         f"got {value!r}")
    return float(value)
