"""The OTLP receiver: Collector-delivered spans in, sealed bundle files out.

A :class:`Receiver` is the ``ingest`` callable of the OTLP transports
(:mod:`spanproof.exporter.otlp_server`).  For each export request it

1. selects the evidence spans (the same :class:`~spanproof.exporter.selection.Selector`
   as the SDK exporter) and normalizes them with :mod:`spanproof.exporter.otlp`, so a
   span gives byte-identical records on both paths;
2. drops identical re-deliveries (a Collector retries whole batches), and marks a
   different version of an already-seen span id as a conflict (SPEC §4.3);
3. appends the new bodies to its :class:`~spanproof.exporter.journal.Journal` and
   fsyncs it, **before** the transport answers OK;
4. hands them to a :class:`~spanproof.exporter.assembly.TraceAssembler`, which a
   background thread ("the sealer") drains as in the SDK exporter: seal, write
   through the sink, retire the journal entries, submit to the witness.  With
   ``sealing_processes`` the sealer hands sealing, and writing to a plain
   :class:`~spanproof.exporter.sinks.DirectorySink`, to seal workers
   (:mod:`spanproof.exporter._seal_workers`) and keeps the rest.

Overload (too many spans waiting to be sealed) and storage failure (the journal or
the sink cannot be written) raise :class:`~spanproof.exporter.otlp_server.Unavailable`,
which the transports answer with ``UNAVAILABLE`` / 503 so the Collector retries.

On :meth:`Receiver.start` the journals of a receiver that died without sealing
(``kill -9``, power loss) are replayed and their spans sealed with seal reason
``recovered`` under the dead receiver's producer instance, continuing its chains
(SPEC §5.3).

Locks: ``_decode_lock`` decodes and admits requests one at a time, a large one in
chunks of whole traces (see :meth:`Receiver._decode`);
``_ingest_lock`` serializes dedup, journaling and admission (so a span is never
acknowledged before the one it duplicates is durable); ``_lock`` guards the
assembler and the sealer's state and is held briefly, never during signing or
I/O; ``_seal_lock`` runs sealing cycles one at a time.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, TypeGuard

import orjson
from opentelemetry.proto.trace.v1 import trace_pb2

from spanproof.verifier._files import fsync_directory, open_regular, write_atomic
from spanproof.verifier.keys import raw_public_bytes
from spanproof.verifier.statement import Producer

from ._exporter import (
    _SPAN_WARNING_SECONDS,
    DROPPED_ATTRIBUTES_WARNINGS,
    Throttled,
    warn_dropped_attributes,
)
from ._recovery import (
    continue_on_disk,
    finish_writes_in,
    position_to_json,
    seal_orphaned_journals,
    written_segment,
)
from ._seal_workers import SealWorkerError, SealWorkers
from ._sealed_spans import SEALED_SPANS_DIR, SealedSpanLog
from ._sealing_process import RestartSchedule
from ._setup import check_directory, resolve_setup, writable_directory
from ._untraced import own_thread
from .assembly import SHUTDOWN, SealJob, TraceAssembler
from .config import MAX_SEALING_PROCESSES, ExporterConfig
from .journal import Journal
from .keys import SigningKey
from .limits import OversizedValue, check_value_sizes, fits_by_json_length
from .otlp import NO_SPAN_ID, MalformedSpan, iter_request_spans, otlp_span_to_body
from .otlp_server import IngestResult, InvalidRequest, Unavailable
from .sealing import ChainPosition, SealedBundle, SerializedBody, seal
from .selection import EVIDENCE_ATTRIBUTE, Selector
from .sinks import BundleSink, DirectorySink
from .submit import WitnessSubmitter

__all__ = ["RECEIVER_PRODUCER_NAME", "Receiver"]

_logger = logging.getLogger(__name__)

#: The producer name stated in the receiver's bundles.
RECEIVER_PRODUCER_NAME = "spanproof-receiver"

# OTLP span flags (trace.proto SpanFlags): whether the parent is known to be remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_MAX_SLEEP = 1.0
_BACKOFF_SECONDS = 0.05
_RETRY_AFTER = 1.0
_STORAGE_RETRY_AFTER = 5.0
_MIN_SHUTDOWN_SECONDS = 5.0
_MAX_MESSAGE_SAMPLES = 3
_NOT_RUNNING = "receiver is not running"
_STARTING = "receiver is starting"
_RECOVERING = "receiver is starting: sealing the spans of an earlier receiver's journal"
#: Seconds after the seal workers failed (or could not start) before the receiver,
#: sealing alone meanwhile, starts them again; twice as long after each failure
#: that follows, up to _MAX_WORKERS_RESTART_SECONDS, and back to this after workers
#: that ran that long (see RestartSchedule).
_WORKERS_RESTART_SECONDS = 60.0
_MAX_WORKERS_RESTART_SECONDS = 3600.0

# A decoded evidence span: trace id, record body as its key-sorted JSON, and the
# fingerprint of that JSON (see _serialized).
_Item = tuple[str, SerializedBody, bytes]
# A rejected span: its trace id (None when unreadable), why, and its fingerprint.
_Rejected = tuple[str | None, str, bytes]


def _package_version() -> str:
    try:
        return metadata.version("spanproof")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _serialized(body: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """A record body as key-sorted JSON (UTF-8, journaled as is) and the SHA-256
    digest of that JSON (its content fingerprint, independent of key order; ~1.1 µs
    for a 1.4 KB body here, against ~1.7 for a 16-byte BLAKE2b)."""
    # Bodies hold only strings, booleans, lists and dicts with string keys, for which
    # orjson writes what json.dumps(sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False) writes (a test compares them).  Their strings come from
    # protobuf, which never holds a lone surrogate (an OTLP/JSON span holding one is
    # set apart and rejected before protobuf parses the request), so every one is
    # valid UTF-8.  orjson's result keeps the buffer it was written
    # in, at least 4 KiB (three to four times a workload span's JSON): the copy
    # the receiver holds while the span is pending is made to measure.
    data = bytes(memoryview(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)))
    return data, hashlib.sha256(data).digest()


def _fingerprint(body: Mapping[str, Any]) -> bytes:
    """The content fingerprint of a record body (see :func:`_serialized`)."""
    return _serialized(body)[1]


def _selection_attributes(span: trace_pb2.Span) -> dict[str, Any]:
    """The span's attribute keys for a :class:`Selector`; only the marker's value matters.

    The marker counts only when it is an OTLP ``bool_value``, as on the SDK path.
    """
    attributes: dict[str, Any] = {kv.key: None for kv in span.attributes}
    if EVIDENCE_ATTRIBUTE in attributes:  # its last occurrence decides, as in a dict
        for kv in span.attributes:
            if kv.key == EVIDENCE_ATTRIBUTE:
                value = kv.value
                attributes[EVIDENCE_ATTRIBUTE] = (
                    value.bool_value if value.WhichOneof("value") == "bool_value" else None)
    return attributes


_RequestSpan = tuple[
    trace_pb2.Span, dict[str, Any] | MalformedSpan, dict[str, Any] | MalformedSpan
]

#: A request with more spans than this is decoded and admitted in chunks of whole
#: traces of about this many spans (see _trace_chunks).
_ADMIT_CHUNK_SPANS = 1024


def _trace_chunks(
    resource_spans: Sequence[trace_pb2.ResourceSpans], size: int, max_traces: int
) -> Iterator[list[_RequestSpan]]:
    """A request's spans (:func:`iter_request_spans`) in chunks to admit one after
    the other: all of them at once when they are at most *size* and of at most
    *max_traces* traces, else grouped by trace, in chunks of whole traces of at
    least *size* spans or of *max_traces* traces (the last one may be smaller).

    A Collector's batch holds thousands of spans (rotel's up to 8,192): admitted
    whole, none of its traces could be sealed before the last span was decoded, and
    the seal workers sat idle meanwhile.  A trace's spans of one request stay in one
    chunk, in their order, so chunking never makes a trace's seal grace run out
    between two of its spans from the same request.

    The receiver passes half of ``max_pending_traces`` as *max_traces*: a chunk is
    refused while its new traces and those pending would reach twice that limit
    (:meth:`Receiver._admit`), and under steady traffic about the limit's worth of
    traces is pending, so a chunk of the whole limit was refused on every retry.
    """
    spans = list(iter_request_spans(resource_spans))
    if len(spans) <= min(size, max_traces):
        yield spans
        return
    by_trace: dict[bytes, list[_RequestSpan]] = {}
    for fields in spans:
        by_trace.setdefault(fields[0].trace_id, []).append(fields)
    if len(spans) <= size and len(by_trace) <= max_traces:
        yield spans
        return
    chunk: list[_RequestSpan] = []
    traces = 0
    for group in by_trace.values():
        chunk += group
        traces += 1
        if len(chunk) >= size or traces >= max_traces:
            yield chunk
            chunk = []
            traces = 0
    if chunk:
        yield chunk


def _named_trace(trace_id: str | None) -> TypeGuard[str]:
    """Whether a rejected span's trace id names a trace: readable and not zero."""
    return trace_id is not None and trace_id != "0" * 32


def _is_local_root(span: trace_pb2.Span) -> bool:
    parent = span.parent_span_id
    if not parent or parent == NO_SPAN_ID:  # no parent (SPEC §2.4.1)
        return True
    return span.flags & (_HAS_IS_REMOTE | _IS_REMOTE) == _HAS_IS_REMOTE | _IS_REMOTE


#: In the journal directory: the spans of requests admitted in part, then refused
#: (a later chunk overloaded, or storage failing), which the sender retries whole.
UNANSWERED_FILE = "unanswered-spans.jsonl"
#: How many of them are kept across a restart (each ~150 bytes in the file), and the
#: size past which the file is cut down to them.
_UNANSWERED_KEPT = 65_536
_UNANSWERED_MAX_BYTES = 16 << 20


class _SpanMemory:
    """Fingerprints of recently accepted spans by (trace, span id), oldest trace evicted
    first once more than *capacity* spans are remembered (a trace's oldest span ids
    when it is the only one)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._traces: collections.OrderedDict[str, dict[str, dict[bytes, None]]] = (
            collections.OrderedDict()
        )
        self._size = 0

    def versions(self, trace_id: str, span_id: str) -> Container[bytes] | None:
        """The fingerprints remembered for the span, or None when there are none."""
        spans = self._traces.get(trace_id)
        return None if spans is None else spans.get(span_id)

    def add(self, trace_id: str, span_id: str, fingerprint: bytes) -> None:
        spans = self._traces.get(trace_id)
        if spans is None:
            spans = self._traces[trace_id] = {}
        else:
            self._traces.move_to_end(trace_id)
        versions = spans.setdefault(span_id, {})
        if fingerprint in versions:
            return
        versions[fingerprint] = None
        self._size += 1
        while self._size > self._capacity:
            if len(self._traces) > 1:
                _, forgotten = self._traces.popitem(last=False)
                self._size -= sum(len(v) for v in forgotten.values())
                continue
            # One trace holds them all (one sender's span ids): its oldest span id
            # goes, or, when that is this span's, its oldest version.
            oldest = next(iter(spans))
            if oldest == span_id and len(versions) > 1:
                del versions[next(iter(versions))]
                self._size -= 1
            else:
                self._size -= len(spans.pop(oldest))
                if not spans:
                    del self._traces[trace_id]

    def remove(self, trace_id: str, span_id: str, fingerprint: bytes) -> None:
        """Forget one fingerprint added by :meth:`add` (if still remembered), and the
        span id and the trace with it once they hold no other."""
        spans = self._traces.get(trace_id)
        versions = None if spans is None else spans.get(span_id)
        if spans is None or versions is None or fingerprint not in versions:
            return
        del versions[fingerprint]
        self._size -= 1
        if not versions:
            del spans[span_id]
            if not spans:
                del self._traces[trace_id]


class Receiver:
    """Certifies spans delivered over OTLP into signed, hash-chained bundle files.

    Configured like :class:`~spanproof.exporter.SpanproofSpanExporter`: an argument
    that is not ``None``, else its ``OTEL_EXPORTER_SPANPROOF_*`` variable, else the
    default.  Call :meth:`start` before serving and :meth:`shutdown` after the
    transports stopped; the instance itself is the transports' ``ingest`` callable.

    Args:
        output_dir, key_file, select_attributes, select_all, seal_grace,
            idle_timeout, max_records, max_pending_traces, sealed_trace_memory,
            witness_url, witness_key: as for the SDK exporter.  ``seal_grace`` is a
            quiet period here: a trace whose local root arrived is sealed once no
            span of it arrived for that long.
        selector: decides which spans are evidence (default: the configured rules).
        journal_dir: where the journal lives (default ``<output_dir>/journal``).
        max_backlog_spans: accepted spans not yet sealed and written beyond which
            requests are answered ``UNAVAILABLE`` (the Collector retries).
        dedup_memory: spans whose fingerprint is remembered to recognise
            re-deliveries after their trace was sealed; as many rejected spans are
            remembered, so that one delivered again is declared once.
        signing_key: a :class:`~spanproof.exporter.keys.SigningKey` to sign with
            (overrides *key_file*; ``SigningKey(key)`` wraps a cryptography
            ``Ed25519PrivateKey``).
        clock: seconds since the epoch, for both the deadlines and ``sealedAt``: a
            test's clock.  By default the deadlines follow :func:`time.monotonic`
            (a stepped wall clock neither holds every trace nor seals open ones
            early) and ``sealedAt`` is :func:`time.time`.
        sink: where bundles go (default: a :class:`DirectorySink` on *output_dir*).
        sealing_processes: worker processes that encode, hash, sign and (with
            the default sink) write the bundles while this process goes on
            ingesting (default 0: all in this process).  The journal, retiring,
            retries of failed writes and witness submission stay here.  When a
            worker fails (or the workers cannot start), the receiver logs an ERROR,
            seals in its own process, and starts them again a minute later (twice as
            long after each failure that follows, up to an hour; back to a minute
            after workers that ran an hour).
        before_creating: called once every argument is checked, before the output
            directory, the journal directory or a signing key is created; what it
            raises refuses the construction, leaving the file system as it was.
            (``spanproof receiver`` binds its ports here: one it cannot listen on
            leaves no output directory or generated key behind.)

    Raises:
        TypeError: a ``str`` given for *select_attributes* or *redact_attributes*
            (a list of keys is expected), or a *signing_key* that is not a
            ``SigningKey``.
        ValueError: a malformed argument or a malformed variable that is not a
            tuning setting (naming it; see :mod:`~spanproof.exporter.config`), an
            output or journal directory that cannot be created or written, or a
            *witness_key* that is the signing key's public half.
        InvalidKey: the key file cannot be used.
        OSError: the key directory cannot be created.
        Exception: what *before_creating* raises.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        selector: Selector | None = None,
        select_attributes: Sequence[str] | None = None,
        select_all: bool | None = None,
        seal_grace: float | None = None,
        idle_timeout: float | None = None,
        max_records: int | None = None,
        max_pending_traces: int | None = None,
        sealed_trace_memory: int | None = None,
        witness_url: str | None = None,
        witness_key: str | os.PathLike[str] | None = None,
        redact_attributes: Sequence[str] | None = None,
        max_value_bytes: int | None = None,
        journal_dir: str | os.PathLike[str] | None = None,
        max_backlog_spans: int = 200_000,
        dedup_memory: int = 262_144,
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] | None = None,
        sink: BundleSink | None = None,
        sealing_processes: int = 0,
        before_creating: Callable[[], None] | None = None,
    ) -> None:
        if max_backlog_spans < 1 or dedup_memory < 0:
            raise ValueError("max_backlog_spans must be >= 1 and dedup_memory >= 0")
        if not 0 <= sealing_processes <= MAX_SEALING_PROCESSES:
            raise ValueError(f"sealing_processes must be from 0 to {MAX_SEALING_PROCESSES}, "
                             f"got {sealing_processes}")
        def check_journal_dir(config: ExporterConfig) -> None:
            # An argument like the others: checked before the output directory and
            # a key are created, so that a refused one leaves nothing behind.
            self._journal_dir = os.path.abspath(
                os.fspath(journal_dir) if journal_dir is not None
                else os.path.join(config.output_dir, "journal"))
            check_directory(self._journal_dir, "journal_dir")
            if before_creating is not None:
                before_creating()

        setup = resolve_setup(
            output_dir, key_file, signing_key=signing_key, selector=selector,
            select_attributes=select_attributes, select_all=select_all,
            seal_grace=seal_grace, idle_timeout=idle_timeout, max_records=max_records,
            max_pending_traces=max_pending_traces, sealed_trace_memory=sealed_trace_memory,
            witness_url=witness_url, witness_key=witness_key,
            redact_attributes=redact_attributes, max_value_bytes=max_value_bytes,
            check=check_journal_dir,
        )
        config = setup.config
        output = config.output_dir
        self._config = config
        self._signer = setup.signer
        self._selector: Selector = setup.selector
        self._dropped_warnings = Throttled(_logger, _SPAN_WARNING_SECONDS,
                                           DROPPED_ATTRIBUTES_WARNINGS)
        # Committed attributes (SPEC §2.5): committed at sealing, never before
        # assembly, so a re-delivered span still matches its first delivery.
        self._redact = setup.redact
        # Deadlines on a clock that never steps; sealedAt on the wall clock.
        self._clock: Callable[[], float] = clock or time.monotonic
        self._wall_clock: Callable[[], float] = clock or time.time
        self._sink: BundleSink = sink or DirectorySink(output)
        # As the processor's: found only at start(), after the servers listen, an
        # unusable --journal-dir was an error exit (1) instead of a usage error (2).
        writable_directory(self._journal_dir, "journal_dir")
        self._max_backlog = max_backlog_spans
        self._max_pending = self._config.max_pending_traces
        self._producer = Producer(RECEIVER_PRODUCER_NAME, _package_version(), secrets.token_hex(8))
        self._witness_keys = setup.witness_keys

        self._decode_lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seal_lock = threading.Lock()
        self._assembler = TraceAssembler.from_config(self._config)
        self._memory = _SpanMemory(dedup_memory)
        self._dedup_memory = dedup_memory
        self._unanswered_kept = min(dedup_memory, _UNANSWERED_KEPT)
        # Appends to the file of spans admitted from requests then refused (see
        # _note_unanswered), one at a time.
        self._unanswered_lock = threading.Lock()
        self._sealed_spans: SealedSpanLog | None = None
        # Fingerprints of the rejected spans already declared, oldest forgotten first.
        self._rejected_seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._rejected_limit = dedup_memory
        # Traces whose local root arrived (so their later spans get the quiet period).
        self._rooted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._rooted_limit = max(self._config.max_pending_traces,
                                 self._config.sealed_trace_memory)
        # Journal key of every body the assembler holds, by the body's identity.
        self._keys: dict[int, tuple[str, SerializedBody, bytes]] = {}
        self._unwritten: collections.deque[tuple[SealedBundle, SealJob]] = collections.deque()
        # Segments the seal workers wrote, retired while they seal the next pass
        # (see _seal_jobs) or at the end of the sealing cycle.
        self._to_retire: list[tuple[SealJob, ChainPosition]] = []
        self._storage_error: str | None = None
        # The last journal write of a request that failed (monotonic time, why),
        # until one succeeds: see not_serving().
        self._journal_failed: tuple[float, str] | None = None
        self._journal: Journal | None = None
        self._submitter: WitnessSubmitter | None = None
        self._sealing_processes = sealing_processes
        self._workers: SealWorkers | None = None
        # While there are no workers but should be: when to start them.
        self._workers_restarts = RestartSchedule(_WORKERS_RESTART_SECONDS,
                                                 _MAX_WORKERS_RESTART_SECONDS)
        self._thread: threading.Thread | None = None
        self._started = False
        # start() is sealing orphaned journals / failed (see _refusal).
        self._recovering = False
        self._start_error: str | None = None
        self._stopping = False
        self._shut_down = False
        self._wake_at = float("-inf")

    # -- properties --------------------------------------------------------------

    @property
    def config(self) -> ExporterConfig:
        """The resolved settings (``output_dir`` made absolute)."""
        return self._config

    @property
    def producer(self) -> Producer:
        """The producer identity stated in this receiver's bundles."""
        return self._producer

    @property
    def journal_dir(self) -> str:
        """The journal directory."""
        return self._journal_dir

    @property
    def keyid(self) -> str:
        """The key id (SPEC §6.1) of the signing key."""
        return self._signer.keyid

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> list[str]:
        """Recover orphaned journals, open this receiver's journal, start the sealer
        (and the seal workers, with ``sealing_processes``).

        Returns the paths of the bundles sealed from recovered journals (reason
        ``recovered``); they are written before this returns, so recovered spans
        are on disk before the receiver acknowledges anything new.  Requests that
        arrive meanwhile are answered ``UNAVAILABLE`` (retry in 1 s), and
        :meth:`not_serving` says why.

        Raises:
            OSError: the journal or output directory cannot be used.
            RuntimeError: already started, or already shut down.
        """
        with self._cond:
            if self._shut_down:
                # Started now, it would accept spans nothing seals at the end: its
                # shutdown has run.
                raise RuntimeError("receiver already shut down")
            if self._started:
                raise RuntimeError("receiver already started")
            self._started = True
        try:
            written = self._start()
        except BaseException as e:
            self._start_error = str(e) or type(e).__name__
            raise
        return written

    def _start(self) -> list[str]:
        """:meth:`start` once it is known to be the first call."""
        self._recovering = True
        try:
            self._take_over_sealed_spans()
            written = self._recover()
            self._remember_unanswered()
        finally:
            self._recovering = False
        self._journal = Journal(self._journal_dir, self._producer.instance,
                                raw_public_bytes(self._signer.private_key.public_key()))
        if self._sealing_processes:
            self._start_workers()
        if self._config.witness_url is not None:
            self._submitter = WitnessSubmitter(
                self._config.witness_url,
                os.path.join(self._config.output_dir, "witness-queue"),
                producer_key=self._signer.private_key.public_key(),
                witness_keys=self._witness_keys,
            )
            for path in written:
                self._submitter.submit(path)
            if self._submitter.resumed:  # else another running receiver scans
                own_thread(self._scan_unsubmitted, "spanproof-witness-scan").start()
        thread = own_thread(self._run, "spanproof-sealer")
        thread.start()
        self._thread = thread  # last: from now on the receiver runs (_running)
        return written

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Seal everything pending (reason ``shutdown``), write it, stop the sealer.

        Call after the transports stopped.  Idempotent; later requests are answered
        ``UNAVAILABLE``.  Sealing gets at least 5 seconds whatever *timeout* says.
        Returns True when everything was sealed and written (and, quietly, when
        :meth:`start` was never called: nothing was accepted); otherwise what is
        left stays in the journal and is recovered by the next start.
        """
        with self._cond:
            if self._shut_down:
                return True
            self._shut_down = True
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
            if not self._started:
                return True  # no journal, no sealer: nothing to seal
        deadline = time.monotonic() + max(timeout, _MIN_SHUTDOWN_SECONDS)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        workers = self._workers
        if workers is not None:
            if self._seal_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._seal_lock.release()
            else:
                # A pass (the sealer's, or a flush()) is still with the workers at
                # the deadline, and a worker that stopped reading or answering
                # (SIGSTOP, stuck) would hold it, and this shutdown, for good.  They
                # hold nothing the journal does not: the pass falls back to this
                # process, and what it does not finish the next start recovers.
                _logger.error("receiver: the seal workers have not finished their pass "
                              "by the shutdown deadline; stopping them")
                workers.kill()
        with self._decode_lock, self._ingest_lock:  # no request is half-way through admission
            pass
        done = False
        if self._journal is not None:
            try:
                done = self._cycle(drain=SHUTDOWN, deadline=deadline)
            except Exception:
                _logger.exception("receiver: sealing at shutdown failed")
        if self._submitter is not None:
            remaining = max(0.0, deadline - time.monotonic())
            self._submitter.flush(min(remaining, _MIN_SHUTDOWN_SECONDS))
            self._submitter.close(max(0.0, deadline - time.monotonic()))
        if self._journal is not None:
            self._journal.close()
        if self._sealed_spans is not None:
            self._sealed_spans.close()
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if not done:
            _logger.error("receiver: shutdown incomplete: %d bundle(s) not written, %d trace(s) "
                          "not sealed; they stay in the journal for the next start",
                          len(self._unwritten), self._assembler.pending_traces)
        self._dropped_warnings.held_back()
        undeclared = self._assembler.undeclared_untracked
        if undeclared:
            _logger.error("receiver: %d span(s) of no known trace were lost or rejected "
                          "after the last bundle sealed; no bundle declares them", undeclared)
        return done

    def flush(self, timeout: float = 30.0) -> bool:
        """Seal and write every trace that is due now; True when nothing due is left."""
        return self._cycle(deadline=time.monotonic() + timeout)

    @property
    def _running(self) -> bool:
        """Started (what an earlier run left sealed, its journal open and, last of
        all, its sealer running) and not shut down."""
        return self._thread is not None and not self._shut_down

    def _refusal(self) -> str:
        """Why a receiver that is not :attr:`_running` refuses requests."""
        if self._shut_down or not self._started:
            return _NOT_RUNNING
        if self._start_error is not None:
            return f"receiver failed to start: {self._start_error}"
        return _RECOVERING if self._recovering else _STARTING

    def not_serving(self) -> str | None:
        """Why the receiver refuses every request now, or None while it accepts them.

        Not started, starting (sealing an earlier receiver's journal first), failed
        to start, or shut down; or storage failing (it accepts again once a write
        succeeds; a request whose spans the journal could not take counts for the
        5 s retry delay it was answered, or until a request's journal write
        succeeds, and requests are still tried meanwhile).  An overload is not
        counted, as it passes with the backlog.  The health checks answer with it
        (``NOT_SERVING`` / HTTP 503).
        """
        if not self._running:
            return self._refusal()
        error = self._storage_error
        if error is not None:
            return f"storage is failing: {error}"
        failed = self._journal_failed
        if failed is not None and time.monotonic() - failed[0] < _STORAGE_RETRY_AFTER:
            # Requests are still admitted (each retry tries the journal again), but
            # every one is refused meanwhile: a probe must send the traffic elsewhere.
            # Without requests, the failure counts for the retry delay it answered.
            return f"storage is failing: {failed[1]}"
        return None

    def check_accepting(self) -> None:
        """Refuse now, before a request is decoded, what :meth:`__call__` would
        refuse whatever the request held: see :meth:`not_serving`.

        Raises:
            Unavailable: the receiver is not running, or storage is failing.
        """
        if not self._running:
            raise Unavailable(self._refusal(), _RETRY_AFTER)
        error = self._storage_error
        if error is not None:
            raise Unavailable(f"storage is failing: {error}", _STORAGE_RETRY_AFTER)

    # -- ingest (the transports' callable) ----------------------------------------

    def __call__(self, resource_spans: Sequence[trace_pb2.ResourceSpans]) -> IngestResult:
        """Accept one export request's spans; see the module docstring.

        Returns how many spans were rejected (malformed evidence spans) and why.

        Raises:
            InvalidRequest: every evidence span of the request is malformed.
            Unavailable: not running (see :meth:`not_serving`), overloaded, or
                storage failing.
        """
        if not self._running:
            raise Unavailable(self._refusal(), _RETRY_AFTER)
        decoded = 0
        rejected: list[_Rejected] = []
        with self._decode_lock:
            # A request that began before shutdown() is admitted to its end:
            # shutdown() waits for it, so none is left half admitted.
            chunks = _trace_chunks(resource_spans, _ADMIT_CHUNK_SPANS,
                                   max(1, self._max_pending // 2))
            admitted: list[tuple[str, str, bytes]] = []
            declared: list[bytes] = []
            try:
                for i, chunk in enumerate(chunks):
                    items, chunk_rejected, roots = self._decode(chunk)
                    with self._ingest_lock:
                        accepted, counted = self._admit(items, chunk_rejected, roots,
                                                        first=i == 0)
                    admitted += accepted
                    declared += counted
                    decoded += len(items)
                    rejected += chunk_rejected
            except Unavailable:
                if admitted or declared:
                    # Refused after earlier chunks were accepted: the sender retries
                    # the whole request, maybe after this receiver restarted.
                    self._note_unanswered(admitted, declared)
                raise
        if rejected and not decoded:
            # Declared in the traces' next bundles by _admit; the request is refused.
            raise InvalidRequest(self._rejection_message(rejected))
        if rejected:
            return IngestResult(len(rejected), self._rejection_message(rejected))
        return IngestResult()

    def _decode(
        self, spans: Sequence[_RequestSpan]
    ) -> tuple[list[_Item], list[_Rejected], list[str]]:
        """Select, normalize, check and serialize a chunk of a request's spans
        (:func:`_trace_chunks`): the items to admit, the rejected spans (trace id,
        why, fingerprint) and the local roots' trace ids.

        Called under ``_decode_lock``.  The work is pure Python, so requests decoded
        side by side only take turns on the GIL: a Collector's concurrent batches
        of thousands of spans then all finished at about the same time, and no trace
        of them could be sealed until then (seal workers idle while the receiver
        decoded, then the receiver idle while they sealed).  One at a time, each
        chunk is admitted as soon as it is decoded, and its traces are sealed while
        the next one is decoded.
        """
        selects = self._selector.selects
        max_value_bytes = self._config.max_value_bytes
        items: list[_Item] = []
        rejected: list[_Rejected] = []
        roots: list[str] = []
        for span, resource, scope in spans:
            if _is_local_root(span) and len(span.trace_id) == 16:
                roots.append(span.trace_id.hex())
            if not selects(_selection_attributes(span)):
                if span.dropped_attributes_count:  # one attribute read, unselected spans only
                    self._warn_dropped(span)
                continue
            trace_id = span.trace_id.hex() if len(span.trace_id) == 16 else None
            try:
                # A new exception for each span: raising the shared one again would
                # chain this frame, which holds it through `spans`, to its traceback:
                # a cycle that held the request, and a gRPC call and its HTTP/2
                # stream, until a garbage collection.
                if isinstance(resource, MalformedSpan):
                    raise MalformedSpan(str(resource))
                if isinstance(scope, MalformedSpan):
                    raise MalformedSpan(str(scope))
                body = otlp_span_to_body(span, resource, scope)
                # Only the JSON is kept: a third of the dict's memory while the trace
                # is pending, and what a seal worker takes as it is.
                data, fingerprint = _serialized(body)
                if not fits_by_json_length(len(data), max_value_bytes):
                    check_value_sizes(body, max_value_bytes)
            except (MalformedSpan, OversizedValue) as e:
                rejected.append((trace_id, f"span {span.span_id.hex() or '?'}: {e}",
                                 hashlib.sha256(span.SerializeToString(deterministic=True))
                                 .digest()))
                continue
            items.append((body["span"]["traceId"],
                          SerializedBody(body["span"]["spanId"], data), fingerprint))
        return items, rejected, roots

    def _warn_dropped(self, span: trace_pb2.Span) -> None:
        """Warn (throttled) about a span not selected whose sender dropped attributes
        (README, "Faults and hostile input": selection sees only those kept)."""
        warn_dropped_attributes(
            self._dropped_warnings, span.span_id.hex() or "?", span.trace_id.hex() or "?",
            span.dropped_attributes_count,
            "dropped_attributes_count: by its sender, as the OpenTelemetry SDK's attribute "
            "count limit does, OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT or SpanLimits, the oldest "
            "first")

    @staticmethod
    def _rejection_message(rejected: list[_Rejected]) -> str:
        shown = "; ".join(why for _, why, _ in rejected[:_MAX_MESSAGE_SAMPLES])
        more = len(rejected) - _MAX_MESSAGE_SAMPLES
        suffix = f" (and {more} more)" if more > 0 else ""
        return f"{len(rejected)} evidence span(s) rejected: {shown}{suffix}"

    def _admit(
        self,
        items: list[_Item],
        rejected: list[_Rejected],
        roots: list[str],
        *,
        first: bool = True,
    ) -> tuple[list[tuple[str, str, bytes]], list[bytes]]:
        """Journal and admit one decoded chunk of a request (its *first* or a later
        one: a request admitted in part is finished even while shutting down).
        Returns the (trace id, span id, fingerprint) of the spans it accepted anew,
        and the fingerprints of the rejected spans it declared."""
        assert self._journal is not None
        if self._shut_down and first:
            raise Unavailable("receiver is shutting down", _RETRY_AFTER)
        if self._storage_error is not None:
            raise Unavailable(f"storage is failing: {self._storage_error}", _STORAGE_RETRY_AFTER)
        backlog = len(self._keys)
        # A chunk that fits the limit waits for its room; one larger than the whole
        # limit (one trace's spans) could never fit beside a single waiting span, so
        # under steady traffic it would be refused for good: it waits only until the
        # backlog is under the limit, which it then exceeds by at most its own size.
        if backlog >= self._max_backlog or (
                backlog + len(items) > self._max_backlog >= len(items)):
            raise Unavailable(
                f"overloaded: {backlog} accepted spans are waiting to be sealed",
                _RETRY_AFTER,
            )
        memory = self._memory
        fresh: list[tuple[str, SerializedBody, bytes, bool]] = []
        # A span the chunk holds twice: the memory may have forgotten the first copy
        # by the second (more than its capacity of spans in between), and neither is
        # pending yet, so both were journaled; the second joined no bundle, its entry
        # was never retired, and the next start certified the span again.
        chunk: set[tuple[str, str, bytes]] = set()
        for trace_id, body, fingerprint in items:
            if (trace_id, body.span_id, fingerprint) in chunk:
                continue
            chunk.add((trace_id, body.span_id, fingerprint))
            versions = memory.versions(trace_id, body.span_id)
            if versions is not None and fingerprint in versions:
                continue  # an identical re-delivery: already durable
            memory.add(trace_id, body.span_id, fingerprint)
            fresh.append((trace_id, body, fingerprint, versions is not None))
        if fresh:
            # The memory forgets a trace that waited while more than its capacity
            # of spans arrived, even one still pending here, or (one trace holding
            # it all) a span id's older versions.  A retry of its span is a
            # re-delivery all the same, even when the memory still holds another
            # version: journaled again, it joined no bundle (the assembler ignores
            # the copy), so its entry was never retired, and the next start
            # certified the span a second time.
            # A span id an earlier segment of its chain certified is a conflict
            # (SPEC §4.3) even when the memory forgot it: the assembler lists it,
            # and the journal must say so too, or the bundle recovered after a
            # crash certifies the span id again undeclared.
            with self._lock:
                copy = self._assembler.holds_copy
                chain = self._assembler.chain_holds
                fresh = [(t, body, fingerprint, conflict or chain(t, body.span_id))
                         for t, body, fingerprint, conflict in fresh
                         if not copy(t, body)]
        new_traces = {item[0] for item in fresh}
        if self._assembler.pending_traces + len(new_traces) >= 2 * self._max_pending:
            # Beyond this the assembler would have to drop spans (SPEC §5.3).
            self._forget(fresh)
            raise Unavailable(
                f"overloaded: {self._assembler.pending_traces} traces are waiting to be sealed",
                _RETRY_AFTER,
            )
        keys: list[str] = []
        # Rejections and conflicts are journaled with the spans: a crash before
        # the trace is sealed must not leave its recovered bundle silent about them.
        # A rejected span delivered again (a Collector's retry) is declared once, in
        # a later request or in this one (a retry batched with its first delivery).
        seen = self._rejected_seen
        unseen = {fingerprint: t for t, _, fingerprint in rejected if fingerprint not in seen}
        counted = [(t, fingerprint) for fingerprint, t in unseen.items()]
        # A span whose trace id cannot be read (wrong length, or zero) belongs to no
        # trace: declared in the next bundle of any trace, from memory only.
        rejections = collections.Counter(t for t, _ in counted if _named_trace(t))
        if fresh or rejections:
            try:
                keys = self._journal.append_spans(
                    ((item[0], item[1].json) for item in fresh),
                    conflicting={i for i, item in enumerate(fresh) if item[3]},
                    rejected=rejections,
                )
            except OSError as e:
                self._forget(fresh)  # not acknowledged: the retry must be admitted
                _logger.error("receiver: cannot write the journal: %s", e)
                self._journal_failed = (time.monotonic(), f"journal write failed: {e}")
                raise Unavailable(f"journal write failed: {e}", _STORAGE_RETRY_AFTER) from e
            self._journal_failed = None
        now = self._clock()
        with self._cond:
            assembler = self._assembler
            wake = False
            for (trace_id, body, fingerprint, conflict), key in zip(fresh, keys, strict=True):
                # Pinning the body keeps its id unique while the key is held.
                self._keys[id(body)] = (key, body, fingerprint)
                wake = assembler.add(trace_id, body, now, conflict=conflict) or wake
            for rejected_trace, fingerprint in counted:
                if _named_trace(rejected_trace):
                    assembler.reject(rejected_trace, now)
                else:
                    assembler.reject_untracked()
                seen[fingerprint] = None
            while len(seen) > self._rejected_limit:
                seen.popitem(last=False)
            rooted = self._rooted
            for trace_id in roots:
                rooted[trace_id] = None
                rooted.move_to_end(trace_id)
            while len(rooted) > self._rooted_limit:
                rooted.popitem(last=False)
            # Once a trace's local root arrived, each new span restarts its quiet period.
            for trace_id in new_traces | set(roots):
                if trace_id in rooted:
                    assembler.root_ended(trace_id, now)
            deadline = assembler.next_deadline()
            if wake or (deadline is not None and deadline < self._wake_at):
                self._cond.notify()
        # Only the journaled rejections (of a named trace): one of no trace is declared
        # from memory only, and kept as declared it would be declared by nothing after
        # a crash.
        return ([(trace_id, body.span_id, fingerprint) for trace_id, body, fingerprint, _ in fresh],
                [fingerprint for trace, fingerprint in counted if _named_trace(trace)])

    def _note_unanswered(self, spans: list[tuple[str, str, bytes]],
                         rejected: list[bytes]) -> None:
        """Keep *spans* accepted, and the fingerprints of spans *rejected* (declared),
        from a request that was then refused, in the journal directory (fsynced,
        before the refusal is answered): the sender retries the whole request, and a
        receiver started meanwhile (a restart, a crash after they were sealed)
        remembers them as a retry's identical re-deliveries, and its rejections as
        declared, instead of certifying or declaring them a second time
        (:meth:`_remember_unanswered`).  Never raises: on failure the retry may
        certify them again (logged)."""
        if not self._dedup_memory:
            return
        lines = b"".join(
            [orjson.dumps({"t": t, "s": s, "f": f.hex()}) + b"\n" for t, s, f in spans]
            + [orjson.dumps({"r": f.hex()}) + b"\n" for f in rejected])
        path = os.path.join(self._journal_dir, UNANSWERED_FILE)
        try:
            with self._unanswered_lock:
                created = not os.path.lexists(path)
                # Not through a link, never blocking on a pipe: a regular file only.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                             | os.O_NONBLOCK, 0o600)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise OSError(errno.EINVAL, "not a regular file")
                    os.write(fd, lines)
                    os.fsync(fd)
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
                if created:
                    fsync_directory(self._journal_dir)
                if size > _UNANSWERED_MAX_BYTES:
                    self._keep_unanswered(path, self._unanswered_kept)
        except OSError as e:
            _logger.error("receiver: cannot keep the %d span(s) admitted from a request then "
                          "refused in %s (%s); a retry after a restart certifies them again",
                          len(spans) + len(rejected), path, e)

    def _remember_unanswered(self) -> None:
        """Remember the spans :meth:`_note_unanswered` kept (the newest, up to the
        memory's capacity), and keep only those in the file."""
        path = os.path.join(self._journal_dir, UNANSWERED_FILE)
        if not self._dedup_memory or not os.path.lexists(path):
            return
        try:
            spans, rejected = self._keep_unanswered(path, self._unanswered_kept)
        except OSError as e:
            _logger.error("receiver: cannot read %s (%s): a Collector's retry of a request "
                          "refused in part before the restart may be certified again", path, e)
            return
        for trace_id, span_id, fingerprint in spans:
            self._memory.add(trace_id, span_id, fingerprint)
        for fingerprint in rejected:
            self._rejected_seen[fingerprint] = None
        while len(self._rejected_seen) > self._rejected_limit:
            self._rejected_seen.popitem(last=False)

    @staticmethod
    def _keep_unanswered(
        path: str, most: int
    ) -> tuple[list[tuple[str, str, bytes]], list[bytes]]:
        """The spans (trace id, span id, fingerprint) and rejected fingerprints of the
        last *most* lines of *path* (a regular file: anything else is refused without
        reading; at most its last 16 MiB read), oldest first, without the lines
        that are not well formed; *path* is rewritten (atomically) to hold only
        those when it held more.

        Raises:
            OSError: it cannot be read, or is not a regular file.
        """
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _UNANSWERED_MAX_BYTES))
            lines = f.read(_UNANSWERED_MAX_BYTES).splitlines()
        spans: list[tuple[str, str, bytes]] = []
        rejected: list[bytes] = []
        kept: list[bytes] = []
        for line in lines[-most:]:
            try:
                entry = orjson.loads(line)
                if "r" in entry:
                    rejected.append(bytes.fromhex(entry["r"]))
                else:
                    spans.append((str(entry["t"]), str(entry["s"]), bytes.fromhex(entry["f"])))
            except (ValueError, TypeError, KeyError):
                continue  # a torn tail, or the cut through the first line kept
            kept.append(line + b"\n")
        if len(kept) < len(lines):
            write_atomic(path, b"".join(kept), mode=0o600)
        return spans, rejected

    def _forget(self, fresh: list[tuple[str, SerializedBody, bytes, bool]]) -> None:
        """Forget the fingerprints of spans that were not acknowledged, so that the
        Collector's unchanged retry is admitted as they were (not as a conflict with
        itself)."""
        for trace_id, body, fingerprint, _ in fresh:
            self._memory.remove(trace_id, body.span_id, fingerprint)

    # -- recovery ----------------------------------------------------------------

    def _take_over_sealed_spans(self) -> None:
        """Remember the spans earlier receivers in this journal directory sealed (their
        :class:`SealedSpanLog` files), so a Collector's retry that outlived their
        process is not certified again, and start this receiver's own log."""
        if not self._dedup_memory:
            return
        log = SealedSpanLog(os.path.join(self._journal_dir, SEALED_SPANS_DIR),
                            self._producer.instance, self._dedup_memory)
        try:
            spans = log.take_over()
        except OSError as e:
            _logger.error("receiver: cannot remember the spans sealed before this start "
                          "(%s): a Collector's retry of them is certified again",
                          e.strerror or e)
            log.close()
            return
        for trace_id, span_id, fingerprint in spans:
            self._memory.add(trace_id, span_id, fingerprint)
        self._sealed_spans = log

    def _recover(self) -> list[str]:
        """Seal the traces of orphaned journals (SPEC §5.3 ``recovered``), remembering
        their spans so a Collector's retry of them is not certified again (by this
        receiver, and by the next ones: :class:`SealedSpanLog`)."""
        recovered: list[tuple[str, str, bytes]] = []

        def remember(trace_id: str, span_id: str, body: Mapping[str, Any]) -> None:
            fingerprint = _fingerprint(body)
            self._memory.add(trace_id, span_id, fingerprint)
            recovered.append((trace_id, span_id, fingerprint))

        written = seal_orphaned_journals(
            self._journal_dir, signer=self._signer, sink=self._sink,
            producer_name=RECEIVER_PRODUCER_NAME, producer_version=_package_version(),
            max_records=self._config.max_records, clock=self._wall_clock, redact=self._redact,
            on_recovered=remember,
        )
        if self._sealed_spans is not None:
            self._sealed_spans.append(recovered)
        return written

    def _scan_unsubmitted(self) -> None:
        assert self._submitter is not None
        try:
            queued = self._submitter.scan(self._config.output_dir)
        except Exception:
            _logger.exception("receiver: scanning %s for unsubmitted bundles failed",
                              self._config.output_dir)
            return
        if queued:
            _logger.info("receiver: %d bundle(s) without a witness receipt queued", queued)

    # -- the sealer --------------------------------------------------------------

    def _run(self) -> None:
        worked = True
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock()
                wake = self._assembler.next_deadline()
                if self._unwritten or self._retire_pending():
                    wake = now + _RETRY_AFTER if wake is None else min(wake, now + _RETRY_AFTER)
                timeout = _MAX_SLEEP if wake is None else min(max(wake - now, 0.0), _MAX_SLEEP)
                if timeout == 0 and not worked:
                    timeout = _BACKOFF_SECONDS  # something looked due but nothing sealed
                if timeout > 0:
                    self._wake_at = now + timeout
                    self._cond.wait(timeout)
                    self._wake_at = float("-inf")
                if self._stopping:
                    return
            try:
                worked = self._cycle(deadline=None, report_work=True)
            except Exception:
                _logger.exception("receiver: sealing cycle failed")
                worked = False

    def _cycle(
        self, *, drain: str | None = None, deadline: float | None, report_work: bool = False
    ) -> bool:
        """One sealing pass: seal what is due (or everything, with *drain*), write it,
        retire its journal entries.  Returns whether it completed (or, with
        *report_work*, whether it sealed or wrote anything)."""
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._seal_lock.acquire(timeout=timeout):
            return False
        try:
            if self._retire_pending():
                self._retire(())
            worked = self._write_pending()
            if self._unwritten:
                # Nothing more is sealed until they are written: a trace's next segment
                # written (and retired) before its unwritten one would leave, after a
                # crash, a chain whose segment was never stored (its spans recovered
                # into a later one).  Requests are answered UNAVAILABLE meanwhile.
                return False
            while True:
                with self._lock:
                    if drain is not None:
                        jobs = self._assembler.drain_all(drain)
                    else:
                        jobs = self._assembler.due(self._clock())
                if not jobs:
                    break
                self._seal_jobs(jobs)
                worked = self._write_pending() or worked
                if self._unwritten:
                    return False
                if deadline is not None and time.monotonic() > deadline:
                    return False
            return worked if report_work else not self._unwritten
        finally:
            try:
                self._retire_written()
            finally:
                self._seal_lock.release()

    def _start_workers(self) -> None:
        """Start the seal workers (at start, and again after they failed)."""
        try:
            self._workers = SealWorkers(self._sealing_processes, self._signer,
                                        self._producer, self._redact, self._sink)
        except (OSError, SealWorkerError) as e:
            self._workers_failed(f"cannot start the seal workers ({e})")
            return
        if self._workers_restarts.due is not None:
            _logger.warning("receiver: seal workers started again (pids %s)",
                            ", ".join(map(str, self._workers.pids)))
        self._workers_restarts.started()

    def _workers_failed(self, why: str) -> None:
        """The workers failed or could not start: seal here until they start again."""
        _logger.error("receiver: %s; sealing in the receiver's process, and starting the "
                      "seal workers again in %g s", why, self._workers_restarts.failed())

    def _seal_jobs(self, jobs: Sequence[SealJob]) -> None:
        """Seal *jobs* (in the seal workers when there are any, which also write what
        they seal) and queue what is not written yet for :meth:`_write_pending`; a job
        that cannot be sealed is abandoned (its spans are declared lost in the
        trace's next bundle)."""
        due = self._workers_restarts.due
        if due is not None and time.monotonic() >= due and not self._stopping:
            self._start_workers()
        sealed_at = datetime.fromtimestamp(self._wall_clock(), timezone.utc)
        if self._assembler.forgot_sealed:
            jobs = [continue_on_disk(job, self._producer.instance, self._sink, self._signer)
                    for job in jobs]
        results: Sequence[tuple[Any, ...]] | None = None
        remote = False  # the results came from the workers: their failures are logged here
        if self._workers is not None:
            try:
                results = self._workers.seal(jobs, sealed_at, meanwhile=self._retire_written)
                remote = True
            except SealWorkerError as e:
                self._workers.close(0)
                self._workers = None
                self._workers_failed(str(e))
                # A worker may have written some of this pass's bundles before it
                # died: those are taken as written, not sealed a second time (with
                # committed values, whose salts are fresh, that would fork the chain).
                # One it killed between linking a bundle and naming its disclosures
                # left them under a temporary name: named first.  The temporary
                # files of the bundles they were writing are removed: left until
                # the next start (an hour old), every worker killed added a pass's.
                finish_writes_in(self._sink, self._producer.instance)
                results = [self._found_or_sealed_here(job, sealed_at) for job in jobs]
        if results is None:
            results = [self._seal_here(job, sealed_at) for job in jobs]
        retire: list[tuple[SealJob, ChainPosition]] = []
        paths: list[str] = []
        failure = None
        for job, result in zip(jobs, results, strict=True):
            if result[0] == "failed":
                if remote:  # (_seal_here logged its own, with the traceback)
                    _logger.error("receiver: a seal worker could not seal a segment of "
                                  "trace %s: %s", job.trace_id, result[1])
                with self._lock:
                    self._assembler.abandon(
                        job, f"{len(job.bodies)} span(s) lost: sealing failed "
                             f"({result[1].partition(':')[0]})"
                    )
                # The next bundle of the trace declares them; their journal entries go.
                retire.append((job, job.position))
                continue
            position = result[2] if result[0] == "written" else result[1].next_position()
            with self._lock:
                self._assembler.sealed(job, position)
            if result[0] == "written":
                retire.append((job, position))
                paths.append(result[1])
            else:
                self._unwritten.append((result[1], job))
                if result[0] == "unwritten":
                    failure = failure or result[2]
        if failure is not None:
            # _write_pending retries them at once, and reports if that fails too.
            _logger.warning("receiver: a seal worker could not write bundles (%s)", failure)
        if remote:
            # Retired while the workers seal the next pass: the journal's fsync here
            # left them idle (about a tenth of a run through rotel, with the
            # sealer waiting for the GIL the gRPC threads hold).
            self._to_retire += retire
        elif retire:
            self._retire(retire)
        if self._submitter is not None:
            for path in paths:
                self._submitter.submit(path)

    def _retire_written(self) -> None:
        """Retire what the seal workers wrote in the previous pass (if anything)."""
        if self._to_retire:
            self._retire(())

    def _found_or_sealed_here(self, job: SealJob, sealed_at: datetime) -> tuple[Any, ...]:
        """*job*'s bundle as a dead seal worker wrote it (``("written", path,
        next_position)``), else :meth:`_seal_here`."""
        try:
            found = written_segment(job, self._producer.instance, self._sink, self._signer)
        except OSError as e:
            _logger.warning("receiver: cannot look for a bundle of trace %s a seal worker "
                            "may have written (%s)", job.trace_id, e)
            found = None
        if found is not None:
            return ("written", *found)
        return self._seal_here(job, sealed_at)

    def _seal_here(self, job: SealJob, sealed_at: datetime) -> tuple[Any, ...]:
        """*job* sealed in this process (``("sealed", bundle)``), or the error that
        stopped it (``("failed", text)``, logged with its traceback)."""
        try:
            return ("sealed", self._seal(job, sealed_at))
        except Exception as e:
            _logger.exception("receiver: sealing a segment of trace %s failed", job.trace_id)
            return ("failed", f"{type(e).__name__}: {e}")

    def _write_pending(self) -> bool:
        """Write the sealed bundles (with a DirectorySink as one group: one
        durability barrier and one directory fsync for all, see
        :meth:`DirectorySink.write_many`), then retire their journal entries with one
        fsync.  Failed ones are kept for retry; requests are answered UNAVAILABLE
        meanwhile."""
        if not self._unwritten:
            return False
        batch = list(self._unwritten)
        self._unwritten.clear()
        outcomes: list[str | Exception]
        # A DirectorySink writes a group at once; any other sink (a DirectorySink
        # subclass included) is written bundle by bundle through its write().
        if type(self._sink) is DirectorySink:
            try:
                outcomes = list(self._sink.write_many([bundle for bundle, _ in batch]))
            except Exception as e:  # a bug, not a disk condition: every write failed
                outcomes = [e] * len(batch)
        else:
            outcomes = [self._try_write(item) for item in batch]
        done: list[tuple[SealJob, ChainPosition]] = []
        paths: list[str] = []
        failure: Exception | None = None
        for (bundle, job), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._unwritten.append((bundle, job))
                failure = failure or outcome
            else:
                paths.append(outcome)
                done.append((job, bundle.next_position()))
        if failure is not None:
            if self._storage_error is None:
                _logger.error("receiver: cannot write %d bundle(s) (%s); will retry",
                              len(self._unwritten), failure)
            self._storage_error = f"cannot write bundles: {failure}"
        if done:
            self._retire(done)
        if self._submitter is not None:
            for path in paths:
                self._submitter.submit(path)
        return bool(done)

    def _try_write(self, item: tuple[SealedBundle, SealJob]) -> str | Exception:
        try:
            return self._sink.write(item[0])
        except Exception as e:
            return e

    def _retire(self, done: Iterable[tuple[SealJob, ChainPosition]]) -> None:
        """Journal that the bundles of *done* are written (their spans sealed), after
        the entries an earlier failed append left, which are retried first and in
        order, and those waiting in ``_to_retire``.  While entries are left, or
        bundles unwritten, requests are answered UNAVAILABLE; the sealer retries
        them (:meth:`_cycle`)."""
        assert self._journal is not None
        retrying = self._journal.retire_pending
        items = []
        done = [*self._to_retire, *done]
        self._to_retire = []
        sealed: list[tuple[str, str, bytes]] = []
        with self._lock:
            for job, position in done:
                held = [h for h in (self._keys.pop(id(b), None) for b in job.bodies)
                        if h is not None]
                items.append((job.trace_id, [h[0] for h in held], position_to_json(position),
                              job.journaled_counts()))
                sealed.extend((job.trace_id, h[1].span_id, h[2]) for h in held)
        if self._sealed_spans is not None:
            # Before the journal retires them: until then a restart recovers them.
            self._sealed_spans.append(sealed)
        try:
            self._journal.append_sealed_many(items)
        except OSError as e:
            # The bundles are durable and their spans stay journaled (the journal
            # keeps the entries for its next write); the next start finds the
            # bundles and does not seal them again (_recovery).
            if not retrying:
                _logger.error("receiver: cannot retire journal entries (%s); will retry", e)
            self._storage_error = f"journal write failed: {e}"
            return
        if not self._unwritten:
            self._storage_error = None

    def _retire_pending(self) -> bool:
        return self._journal is not None and self._journal.retire_pending

    def _seal(self, job: SealJob, sealed_at: datetime) -> SealedBundle:
        return seal(
            job.trace_id, job.bodies, job.position, signer=self._signer,
            producer=self._producer, sealed_at=sealed_at, reason=job.reason,
            completeness=job.completeness, redact=self._redact, reject_unencodable=True,
        )
