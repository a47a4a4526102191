"""The OpenTelemetry SDK span exporter: selected spans in, sealed bundle files out.

``export()`` runs on the span processor's thread and does only cheap work: select,
normalize, hand the bodies to the :class:`~spanproof.exporter.assembly.TraceAssembler`.
A daemon thread ("the sealer") seals traces when they are due, signs them and writes
them through the sink; file I/O and signing never happen on the caller's thread,
except in a process where gevent patched threading after the exporter was set up
(:mod:`._green`): no thread starts there, and ``export()`` seals what is due itself.

With ``sealing_process`` on, ``export()`` only selects and hands the fields of the
selected spans to a child process that runs this same exporter in-process
(:mod:`spanproof.exporter._sealing_process`); if that process cannot start or exits,
this process seals instead (logged), and starts sealing processes again a minute
later (under a producer instance of their own; the traces this process holds by
then stay here).

Locks: ``_lock`` guards the assembler and the sealer's state (held briefly, never
during signing or I/O); ``_seal_lock`` makes sealing cycles (worker, ``force_flush``,
``shutdown``) run one at a time, so when a cycle starts no segment is in flight.  A
signal handler that shuts down may interrupt a cycle on its own thread
(``force_flush``), or an ``export()`` (a ``SimpleSpanProcessor`` exports on the
thread that ends a span), which may hold any of these locks: that shutdown only asks
the cycle or export to shut down when it ends (when the handler returns, or as
``sys.exit`` in the handler unwinds it), instead of waiting for a lock its own
thread holds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Protocol

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext

from spanproof.verifier.statement import Producer

from ._disabled import BuiltDisabled
from ._green import GreenSince, warn_threadless
from ._recovery import continue_on_disk, seal_orphaned_journals
from ._sealing_process import (
    RestartSchedule,
    SealingProcess,
    SealingProcessError,
    SealingProcesses,
    SealingProcessUnreachable,
)
from ._setup import resolve_setup
from ._untraced import own_thread, own_timer, quiet_thread
from .assembly import SHUTDOWN, SealJob, TraceAssembler
from .config import ExporterConfig
from .keys import SigningKey
from .limits import check_value_sizes
from .normalize import span_to_body
from .sealing import SealedBundle, seal
from .selection import Selector
from .sinks import BundleSink, DirectorySink
from .submit import WitnessSubmitter

__all__ = ["PRODUCER_NAME", "SpanproofSpanExporter"]

_logger = logging.getLogger(__name__)

PRODUCER_NAME = "spanproof-exporter"
# The sealer re-reads the clock at least this often (seconds), so a clock that
# jumps, or a test clock, never leaves it asleep for long.
_MAX_SLEEP = 1.0
# Bundles kept in memory while the sink fails, and the wait between retries.
_MAX_UNWRITTEN = 1024
# ... and at most this many bytes of them (a bundle may be 64 MiB and more: a full
# disk kept 1,024 of them, and the process grew until it was killed, losing all).
_MAX_UNWRITTEN_BYTES = 256 << 20
#: How the limits on kept bundles read in notes and logs.
_KEPT_LIMIT = f"more than {_MAX_UNWRITTEN} bundles, or 256 MiB of them,"
# Traces whose discarded bundles are remembered for their declaration; beyond,
# the oldest trace's count is declared in the next bundle of any trace.
_MAX_DISCARDED_TRACES = 65_536
_DISCARDED_NOTE = (
    "evidence spans of this trace were dropped: {} sealed bundle(s) of it were discarded "
    f"unwritten, after {_KEPT_LIMIT} waited for a failing sink"
)
_PROCESS_LOST_NOTE = (
    "{} evidence span(s) sent to sealing process {} were lost unsealed when it exited "
    "(code {}); they belong to this trace or to others it held (this is the last "
    "trace sent to it)"
)
_RETRY_SECONDS = 1.0
_BACKOFF_SECONDS = 0.05
#: A warning about one span (one that cannot be certified) is logged at most this
#: often (seconds); the next one counts those held back.  The spans are declared in
#: their traces' bundles whatever the log says: one oversized attribute on every
#: request made a warning per request.
_SPAN_WARNING_SECONDS = 60.0
_MIN_SHUTDOWN_SECONDS = 5.0
#: The longest wait a timeout asks for: a year stands for "no limit".  Longer ones
#: (threading.TIMEOUT_MAX is about 292 years, sys.maxsize milliseconds far more)
#: raised OverflowError out of the waits.
_LONGEST_WAIT = 365 * 86_400.0
#: Seconds after the sealing processes were lost (or could not start) before the
#: exporter, sealing in the application's process meanwhile, starts them again;
#: twice as long after each loss or failed start, up to _MAX_RESTART_SECONDS, and
#: back to this after processes that ran that long.
_RESTART_SECONDS = 60.0
_MAX_RESTART_SECONDS = 3600.0
# Bundles written or waiting for the writer thread at most.
_MAX_IN_FLIGHT = 256


class _Behind(Exception):
    """The outcome of a write not tried: an earlier segment of the bundle's trace is
    not written (see :meth:`SpanproofSpanExporter._start_writes`)."""


_BEHIND = _Behind("an earlier segment of the trace is not written")
# A bundle queued for the writer thread, the future of its outcome, and the future of
# the write of its trace's previous segment when that was in flight as it was queued.
_Write = tuple[
    SealedBundle,
    concurrent.futures.Future[str | Exception],
    concurrent.futures.Future[str | Exception] | None,
]


def _package_version() -> str:
    try:
        return metadata.version("spanproof")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _new_producer() -> Producer:
    return Producer(PRODUCER_NAME, _package_version(), secrets.token_hex(8))


#: What the throttled warning about unselected spans the SDK dropped attributes of
#: names (README, "Faults and hostile input").
DROPPED_ATTRIBUTES_WARNINGS = "name spans not selected that lost attributes to a count limit"


def warn_dropped_attributes(warnings: Throttled, span_id: str, trace_id: str,
                            dropped: object, limit: str) -> None:
    """Warn, through *warnings*, that span *span_id* was not selected although
    *dropped* of its attributes were dropped before spanproof saw it, by *limit*.

    Selection sees only the attributes kept; the SDK drops the oldest first, and a
    selecting attribute is usually set as the span starts.  Nothing about the span
    is known, so nothing is declared: the warning is all that says so.
    """
    if type(dropped) is not int or dropped <= 0:
        return
    warnings.warn(
        "spanproof: span %s of trace %s was not selected as evidence, and %d of its "
        "attributes were dropped before spanproof saw it (%s): an attribute that "
        "selects it (SELECT_ATTRIBUTES, spanproof.evidence) may have been among them; "
        "raise the attribute count limit, or set the selecting attribute again after "
        "the others so that it is kept", span_id, trace_id, dropped, limit)


#: The limit that drops an SDK span's attributes, as the warning names it.
SDK_ATTRIBUTE_COUNT_LIMIT = ("the OpenTelemetry SDK's attribute count limit, "
                             "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT or OTEL_ATTRIBUTE_COUNT_LIMIT or "
                             "SpanLimits(max_span_attributes=...), 128 by default, drops the "
                             "oldest first")


def dropped_attributes(span: ReadableSpan) -> int:
    """How many attributes the SDK dropped from *span* (0 when it cannot say)."""
    try:
        count = getattr(getattr(span, "_attributes", None), "dropped", 0)
    except Exception:  # a property of a span of another kind
        return 0
    return count if type(count) is int and count > 0 else 0


def value_length_limit(spans: Sequence[ReadableSpan]) -> int | None:
    """The SDK's attribute value length limit the first of *spans* that has one
    was recorded under, else None (one attribute read per span)."""
    for span in spans:
        limit = getattr(getattr(span, "_attributes", None), "max_value_len", None)
        if type(limit) is int:
            return limit
    return None


def warn_value_length_limit(limit: int) -> None:
    """Say that the SDK truncated string values longer than *limit* before they were
    certified: a record cannot tell a truncated value from a whole one."""
    _logger.warning(
        "spanproof: spans arrive with an attribute value length limit of %d "
        "(OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT or "
        "SpanLimits(max_attribute_length=...)): the OpenTelemetry SDK truncated longer "
        "string values before they were certified, and their records certify them "
        "truncated; unset the limit for whole values (logged once)", limit)


def _selection_view(span: ReadableSpan) -> tuple[Mapping[str, Any], SpanContext | None]:
    """What selection reads of *span*: its attributes and its parent's context.

    Selection runs for every span the application ends, so it reads the SDK's own
    fields when *span* is the SDK's ``ReadableSpan`` (what the SDK hands its span
    processors): ``span.attributes`` wraps BoundedAttributes in a MappingProxyType
    whose lookups run in Python and cost ten times more than its dict's.
    """
    if type(span) is ReadableSpan and type(span._attributes) is BoundedAttributes:
        return span._attributes._dict, span._parent
    bounded = getattr(span, "_attributes", None)
    raw = getattr(bounded, "_dict", None)
    if type(raw) is dict:
        return raw, span.parent
    if type(bounded) is dict:
        return bounded, span.parent
    return span.attributes or {}, span.parent


class SpanproofSpanExporter(SpanExporter, BuiltDisabled):
    """Certifies evidence spans into signed, hash-chained bundle files.

    Every setting follows :class:`~spanproof.exporter.config.ExporterConfig`: an
    argument that is not ``None``, else its ``OTEL_EXPORTER_SPANPROOF_*`` variable,
    else the default, so ``SpanproofSpanExporter()`` (what ``OTEL_TRACES_EXPORTER=
    spanproof`` constructs) is configured by the environment alone.  With
    ``OTEL_SDK_DISABLED=true`` it is built disabled: it creates and starts nothing,
    and certifies nothing (README, "Drop-in, no code change").

    Args:
        output_dir: directory for bundle files (and the generated key).
        key_file: PKCS#8 PEM Ed25519 private key; unset, a key is generated once
            at ``<output_dir>/keys/signing.key``.
        selector: decides which spans are evidence (default: the configured
            attribute rules, see :class:`~spanproof.exporter.selection.AttributeSelector`).
        select_attributes, select_all: the default selector's rules.
        seal_grace: seconds to wait after a trace's local root span ended.
        idle_timeout: seconds without a new span after which a trace is sealed.
        max_records: records per bundle.
        max_pending_traces: open traces held in memory.
        sealed_trace_memory: sealed traces whose chain position is remembered.
        witness_url: submit every written bundle to this witness in the
            background; receipts are stored beside the bundles.
        witness_key: pinned witness public key (PEM path or verifier key string)
            to verify receipts with before storing them.
        max_value_bytes: largest attribute value certified; a span with a larger one
            is declared as rejected in its trace's bundle.
        redact_attributes: span attribute keys and glob patterns whose values are
            committed instead of stored (SPEC §2.5); the values and salts are
            written to ``<name>.disclosures.json`` (mode 0600) beside each bundle.
        signing_key: a :class:`~spanproof.exporter.keys.SigningKey` to sign with
            (overrides *key_file*; ``SigningKey(key)`` wraps a cryptography
            ``Ed25519PrivateKey``).
        clock: returns the current time as seconds since the epoch, for both the
            deadlines (grace, idle timeout, retries) and the bundles' ``sealedAt``:
            a test's clock.  By default the deadlines follow :func:`time.monotonic`,
            so that the wall clock stepped back (NTP) neither holds every trace nor,
            stepped forward, seals open ones early, and ``sealedAt`` is
            :func:`time.time`.
        sink: where bundles go (default: a :class:`~spanproof.exporter.sinks.DirectorySink`
            on *output_dir*).
        sealing_process: seal in a child Python process (started here, with the
            same settings and key): the span processor's thread then only selects
            and hands selected spans over.  A number N >= 2 starts N processes,
            each sealing the traces whose id is its number modulo N.  Needs the
            default *clock* and *sink*.  If a process cannot start, or exits, this
            process seals (logged) until new ones start, a minute later.

    Raises:
        TypeError: a ``str`` given for *select_attributes* or *redact_attributes*
            (a list of keys is expected), or a *signing_key* that is not a
            ``SigningKey``.
        ValueError: a malformed argument or a malformed variable that is not a
            tuning setting (naming it; see :mod:`~spanproof.exporter.config`), an
            output directory that cannot be created or written, a *witness_key*
            that is the signing key's public half, or *sealing_process* with a
            custom *clock* or *sink*.
        InvalidKey: the key file cannot be used.
        OSError: the key directory cannot be created.
    """

    # Whether this exporter finishes, when it starts, what an earlier run left in its
    # output directory (orphaned journals, the witness queue, bundles never
    # submitted).  Sealing processes after the first leave that to the first.
    _recovers_at_start = True
    # The environment the settings fall back to (None: os.environ); ``spanproof
    # demo``'s exporter reads none.
    _environ: Mapping[str, str] | None = None
    # Whether a forked multiprocessing worker shuts this exporter down as it exits
    # (see _shut_down_at_worker_exit); the processor's sealer leaves that to the
    # processor, which journals its queue first.
    _shuts_down_at_worker_exit = True

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
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] | None = None,
        sink: BundleSink | None = None,
        sealing_process: bool | int | None = None,
    ) -> None:
        setup = resolve_setup(
            output_dir, key_file, signing_key=signing_key, selector=selector,
            environ=self._environ, select_attributes=select_attributes, select_all=select_all,
            seal_grace=seal_grace, idle_timeout=idle_timeout, max_records=max_records,
            max_pending_traces=max_pending_traces, sealed_trace_memory=sealed_trace_memory,
            witness_url=witness_url, witness_key=witness_key,
            redact_attributes=redact_attributes, max_value_bytes=max_value_bytes,
            sealing_process=sealing_process,
            check=lambda config: self._check_arguments(config, clock, sink),
        )
        config = setup.config
        output = config.output_dir
        self._config = config
        self._signer = setup.signer
        self._selector: Selector = setup.selector
        self._redact = setup.redact
        # Deadlines on a clock that never steps; sealedAt on the wall clock.
        self._clock: Callable[[], float] = clock or time.monotonic
        self._wall_clock: Callable[[], float] = clock or time.time
        self._sink: BundleSink = sink or DirectorySink(output)
        self._shutdown = False
        self._witness_keys = setup.witness_keys
        # In a sealing process: told how many spans each written bundle settles.
        self._settle: Callable[[int], None] | None = None
        self._reset_process_state()
        weak_reinit = weakref.WeakMethod(self._after_fork_in_child)

        def after_in_child() -> None:
            reinit = weak_reinit()
            if reinit is not None:
                reinit()

        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=after_in_child)
        self._start_sealing()
        # The (first) sealing process recovers in its own start.
        if self._remote is None and self._recovers_at_start:
            self._recover_at_start()

    def _check_arguments(
        self, config: ExporterConfig, clock: Callable[[], float] | None,
        sink: BundleSink | None,
    ) -> None:
        """Refuse arguments that do not go together, before the output directory or a
        key is created (``resolve_setup``'s *check*).

        Raises:
            ValueError: *sealing_process* with a custom *clock* or *sink*.
        """
        if config.sealing_process and (clock is not None or sink is not None):
            raise ValueError("sealing_process needs the default clock and sink: "
                             "the sealing process cannot call back into this one")

    def _recover_at_start(self) -> None:
        """Seal what an ``EvidenceSpanProcessor`` that died in this output directory
        journaled but never sealed (SPEC §5.3 ``recovered``)."""
        self._recover_journals(os.path.join(self._config.output_dir, "journal"))

    def _recover_journals(self, journal_dir: str, *, again: bool = False) -> list[str]:
        """Seal the orphaned journals in *journal_dir*, and hand the bundles to the
        witness submitter; return their paths.  *again*: this process looks once
        more, while it runs (its own journal left alone).  Never raises: on failure
        the journals stay for the next start."""
        try:
            written = seal_orphaned_journals(
                journal_dir, signer=self._signer, sink=self._sink,
                producer_name=PRODUCER_NAME, producer_version=_package_version(),
                max_records=self._config.max_records, clock=self._wall_clock,
                redact=self._redact,
                skip_instance=self._producer.instance if again else None,
                tidy_first=not again,
            )
        except Exception:
            _logger.exception("spanproof: recovering the journals in %s failed; they are "
                              "kept for the next start", journal_dir)
            return []
        # Here, not left to the submitter's scan of the output directory at start:
        # that scan runs on a thread of its own, started before this recovery,
        # and had listed the directory before these bundles were there.
        submitter = self._submitter
        if submitter is not None:
            for path in written:
                submitter.submit(path)
        return written

    def _reset_process_state(self) -> None:
        """Everything that belongs to one process: locks, pending traces, the sealer."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seal_lock = threading.Lock()
        # The thread running a sealing pass, or None; and the timeout of a shutdown()
        # that thread asked for meanwhile (see the module docstring).
        self._in_pass = Interruptible()
        # The threads inside export(), and a shutdown() one of them asked for meanwhile.
        self._in_export = Interruptible()
        self._assembler = TraceAssembler.from_config(self._config)
        self._producer = _new_producer()
        self._thread: threading.Thread | None = None
        self._sealer_starts = ThreadStarts(
            "sealer thread", "traces are sealed by force_flush() and shutdown()")
        self._stopping = False
        self._span_warnings = Throttled(_logger, _SPAN_WARNING_SECONDS,
                                        "name spans that cannot be certified")
        self._unencodable_warnings = Throttled(_logger, _SPAN_WARNING_SECONDS,
                                               "name spans rejected at sealing")
        self._dropped_warnings = Throttled(_logger, _SPAN_WARNING_SECONDS,
                                           DROPPED_ATTRIBUTES_WARNINGS)
        # Whether the SDK's value length limit was warned about (once).
        self._value_length_warned = False
        # The segments a pass took from the assembler and has not sealed yet (those a
        # pass out of time left included: the next pass seals them first), and the
        # bundles it sealed and has not handed to the writer yet.  Kept here, not in
        # the pass's locals, so that an exception a signal handler raises into the
        # pass (sys.exit after shutdown()) leaves them to the shutdown it asked for.
        self._carried: list[SealJob] = []
        self._sealed_unwritten: list[SealedBundle] = []
        # When the waiting sealer will wake; -inf while it is not waiting.
        self._wake_at = float("-inf")
        self._unwritten: collections.deque[SealedBundle] = collections.deque()
        # What the bundles discarded from _unwritten held, by trace: (records lost,
        # spans they declared dropped, rejected and unsampled, bundles), declared once
        # bundles can be written again.
        self._discarded: dict[str, tuple[int, int, int, int, int]] = {}
        self._discarded_untracked = 0
        self._retry_at = float("-inf")
        # What the sink's last failure was (None while writes succeed): logged once.
        self._sink_condition: str | None = None
        self._submitter: WitnessSubmitter | None = None
        # The writer thread (started on first use), and the writes in flight in
        # sealing order (see _start_writes and _reap).
        self._writers: concurrent.futures.ThreadPoolExecutor | None = None
        # Bundles waiting for the writer thread, and whether it is writing.
        self._write_queue_lock = threading.Lock()
        self._write_queue: list[_Write] = []
        self._writer_busy = False
        self._inflight: collections.deque[
            tuple[SealedBundle, concurrent.futures.Future[str | Exception]]
        ] = collections.deque()
        self._remote: SealingProcesses | None = None
        # The sealing processes given up after a sibling was lost: they seal what
        # they hold and exit; force_flush() and shutdown() wait for them, and what
        # one leaves unsettled is declared lost (_await_survivors).
        self._survivors: list[SealingProcess] = []
        # Held while the sealing processes are taken away (lost, or stopped by
        # shutdown()), so a shutdown waits for a loss under way to be declared.
        # Reentrant: a signal handler that shuts down may interrupt a loss.
        self._remote_lock = threading.RLock()
        # After a fork, the sealing process starts on the first export (which the
        # other exporting threads wait for: meanwhile they would seal here, under
        # the instance the processes are about to share).
        self._start_pending = False
        self._start_lock = threading.Lock()
        # When to start sealing processes again after losing them.
        self._restarts = RestartSchedule(_RESTART_SECONDS, _MAX_RESTART_SECONDS)

    def _start_sealing(self, *, recover: bool = True) -> None:
        """Start the sealing process when configured; otherwise, or when it cannot
        start, seal here (with this process's witness submitter).  With *recover*
        (not in a forked child: the parent does that), what an earlier run left is
        finished: its journals sealed, its witness submissions taken over."""
        remote = None
        if self._config.sealing_process and self._sealer_starts.threadless:
            # Starting one from the exporting thread fails under gevent ("child
            # watchers are only available on the default loop"), and its reader
            # threads would be greenlets (see GreenSince).
            warn_threadless()
            _logger.error("spanproof: cannot start the sealing process: gevent patched the "
                          "threading module after the exporter was set up; sealing in this "
                          "process instead, without background threads")
        elif self._config.sealing_process:
            remote = self._spawn(self._producer.instance, recover=recover)
        if remote is not None:
            self._install(remote)
        elif not self._shutdown:
            self._submitter = self._start_submitter(catch_up=recover)

    def _install(self, remote: SealingProcesses) -> bool:
        """Make *remote* the sealing processes, unless shutdown() began while they
        started (after a fork, or when starting again), or others were installed
        meanwhile: then close them (nothing was sent to them, so they exit at once).
        Whether they were installed."""
        with self._cond:
            installed = not self._shutdown and self._remote is None
            if installed:
                self._restarts.started()
                self._remote = remote
        if not installed:
            remote.close(_MIN_SHUTDOWN_SECONDS)
        return installed

    def _seals_beside(self, remote: SealingProcesses) -> bool:
        """Whether this process seals traces of its own beside *remote*: it started
        them again after a loss, under another instance, and the traces it held by
        then (pending or remembered, see TraceAssembler.holds) stay here."""
        return remote.instance != self._producer.instance

    def _spawn(self, instance: str, *, recover: bool) -> SealingProcesses | None:
        """The sealing processes, started under producer *instance*; None (logged,
        and a start again scheduled) when they cannot start."""
        settings = {
            name: value for name, value in dataclasses.asdict(self._config).items()
            if name not in ("key_file", "sealing_process")
        }
        seed = self._signer.seed
        try:
            return SealingProcesses(settings, seed, instance, self._config.sealing_process,
                                    recover=recover)
        except (OSError, SealingProcessError) as e:
            if self._shutdown:
                _logger.error("spanproof: cannot start the sealing process (%s)", e)
                return None
            wait = self._restarts.failed()
            _logger.error("spanproof: cannot start the sealing process (%s); sealing in "
                          "this process instead, and trying again in %g s", e, wait)
            return None

    def _restart_sealing(self) -> None:
        """Start sealing processes again, in a thread of their own (a start takes
        about half a second, which export() does not wait for).  They seal under a
        producer instance of their own: this process goes on with its chains, and
        keeps the traces it holds (see :meth:`_export`)."""
        with self._cond:
            due = self._restarts.due
            if due is None or time.monotonic() < due:
                return  # another exporting thread took it
            self._restarts.due = None
        if self._sealer_starts.threadless:
            warn_threadless()  # for good: see _start_sealing
            _logger.error("spanproof: not starting the sealing process again: gevent "
                          "patched the threading module after the exporter was set up; "
                          "sealing in this process instead, without background threads")
            return
        thread = own_thread(self._start_again, "spanproof-sealing-start")
        try:
            thread.start()
        except RuntimeError as e:  # no thread to be had now, or the interpreter exits
            wait = self._restarts.failed()
            _logger.error("spanproof: cannot start a thread to start the sealing process "
                          "(%s); trying again in %g s", e, wait)

    def _start_again(self) -> None:
        """The thread :meth:`_restart_sealing` starts: start the processes, and hand
        them the traces this process does not hold (unless shutdown() began)."""
        remote = self._spawn(_new_producer().instance, recover=False)
        if remote is None or not self._install(remote):
            return
        _logger.warning("spanproof: sealing process(es) started again (pids %s, producer "
                        "instance %s); the traces this process holds are sealed here",
                        ", ".join(str(process.pid) for process in remote.processes),
                        remote.instance)

    def _lose_remote(self, remote: SealingProcesses, error: Exception) -> None:
        """A sealing process is gone: seal here until new ones start (see
        :data:`_RESTART_SECONDS`), as a new producer instance when this process
        shared theirs (it does not know the chain positions they reached, and an
        instance must continue its own chains, SPEC §4.4).  The other sealing
        processes, if any, seal what they hold and exit.  Nothing is done when
        *remote* is no longer the current group (another thread lost it first, or
        shutdown() took it)."""
        if self._remote is not remote:
            return  # (without waiting for whoever holds the lock)
        with self._remote_lock:
            with self._cond:
                if self._remote is not remote:
                    return
                # Together: a span admitted here once _remote is None is sealed under
                # the new instance, never under the one the processes shared.
                if self._producer.instance == remote.instance:
                    self._producer = _new_producer()
                self._remote = None
            gone = remote.give_up()
            with self._cond:
                self._survivors += [p for p in remote.processes if p not in gone]
            others = len(remote.processes) - 1
            wait = self._restarts.failed()
            _logger.error("spanproof: %s; the spans it held are lost (not sealed), %sand "
                          "this process seals until sealing processes start again in %g s",
                          error,
                          f"the other {others} seal what they hold and exit, " if others
                          else "", wait)
            self._declare_lost_with(gone, start_sealer=True)
            if self._submitter is None:
                self._submitter = self._start_submitter()

    def _declare_lost_with(self, gone: Sequence[SealingProcess], *, start_sealer: bool) -> None:
        """Declare the spans each sealing process in *gone* held unsettled as
        dropped (SPEC §5.3), in a bundle of the last trace sent to it, which this
        process seals (under its new producer instance).  The declaration is due as
        a trace whose root ended: ``force_flush()`` seals and writes it (it waited
        for the idle timeout, so a flush returned True with it in memory only)."""
        with self._cond:
            now = self._clock()
            for process in gone:
                lost = process.unsettled()
                if not lost or process.last_trace is None:
                    continue
                _logger.error("spanproof: %d span(s) the sealing process %d held are "
                              "declared lost in a bundle of trace %s", lost, process.pid,
                              process.last_trace)
                note = _PROCESS_LOST_NOTE.format(lost, process.pid, process.exit_code)
                if start_sealer:
                    self._admit_locked(now, (), (), (), dropped={process.last_trace: lost},
                                       dropped_note=note)
                else:
                    self._assembler.drop(process.last_trace, now, lost, note)
                self._assembler.root_ended(process.last_trace, now)

    def _await_survivors(self, deadline: float, *, stop: bool) -> bool:
        """Wait until *deadline* for the sealing processes given up after a sibling
        was lost (:meth:`_lose_remote`): each seals what it holds and exits.  What
        one that exited left unsettled (it was killed too, or could not write) is
        declared lost; with *stop* (shutdown), one still running at the deadline is
        killed, and what it held declared.  True when none is left.  Before, no
        one waited for them: a flush or a shutdown returned while they still
        sealed, and the spans of one killed then were lost without a word."""
        with self._cond:
            survivors = list(self._survivors)
        if not survivors:
            return True
        ended = []
        for process in survivors:
            if process.wait(max(0.0, deadline - time.monotonic())) is None:
                if not stop:
                    continue
                _logger.error("spanproof: sealing process %d did not finish sealing before "
                              "the shutdown deadline; it is stopped", process.pid)
                process.kill()
            ended.append(process)
        with self._cond:
            self._survivors = [p for p in self._survivors if p not in ended]
        self._declare_lost_with(ended, start_sealer=not stop)
        return len(ended) == len(survivors)

    def _start_submitter(self, *, catch_up: bool = True) -> WitnessSubmitter | None:
        """The background witness submitter, when a witness URL is configured.

        With *catch_up*, it resumes the queue an earlier run left, and bundles
        written before a crash that never reached the queue are found by a one-off
        scan of the output directory (bundles without a receipt); without, it
        delivers only what it is given.
        """
        url = self._config.witness_url
        if url is None:
            return None
        catch_up = catch_up and self._recovers_at_start
        submitter = WitnessSubmitter(
            url, os.path.join(self._config.output_dir, "witness-queue"),
            producer_key=self._signer.private_key.public_key(),
            witness_keys=self._witness_keys, resume=catch_up,
        )
        if submitter.resumed:  # the scan too is left to the process that resumed
            own_thread(_scan_quietly, "spanproof-witness-scan",
                       (submitter, self._config.output_dir)).start()
        return submitter

    def _serve_parent(self, producer_instance: str, settle: Callable[[int], None]) -> None:
        """Run as a sealing process's exporter: seal under the parent's
        *producer_instance*, and tell *settle* how many spans each written bundle
        settles (see :meth:`SealingProcess.unsettled`)."""
        self._producer = Producer(PRODUCER_NAME, _package_version(), producer_instance)
        self._settle = settle

    def _after_fork_in_child(self) -> None:
        # The parent's pending traces stay the parent's: it seals them.  The child
        # starts empty, with fresh locks (another thread may have held the parent's
        # at fork time), a new producer instance (so bundle names never collide),
        # and starts its own sealer (or sealing process) on its next export.  The
        # parent's sealing processes stay the parent's: this process's copies of
        # their pipes were closed already (_sealing_process abandons them at fork).
        # So do its pending witness submissions: the child's submitter delivers only
        # the child's bundles (taking the queue over, each worker delivered the same
        # files, and scanned the whole output directory).
        self._reset_process_state()
        if self._config.sealing_process:
            self._start_pending = True
        else:
            self._submitter = self._start_submitter(catch_up=False)
        if self._shuts_down_at_worker_exit:
            _shut_down_at_worker_exit(self)

    @property
    def config(self) -> ExporterConfig:
        """The resolved settings (``output_dir`` made absolute)."""
        return self._config

    @property
    def producer(self) -> Producer:
        """The producer identity stated in this process's bundles."""
        return self._producer

    @property
    def keyid(self) -> str:
        """The key id (SPEC §6.1) of the signing key."""
        return self._signer.keyid

    # -- SpanExporter ------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Select and normalize *spans* and queue them for sealing.

        Never raises and never blocks on I/O, except where gevent patched threading
        after this exporter was set up: it then seals and writes what is due
        (README, "gevent").  Returns FAILURE after shutdown or when a span could not
        be handled (a selected span that cannot be normalized is declared as
        rejected in its trace's bundle).
        """
        me = self._in_export.enter()
        try:
            return self._export(spans)
        except Exception:
            _logger.exception("spanproof: export failed")
            return SpanExportResult.FAILURE
        finally:
            asked = self._in_export.leave(me)
            if asked is not None:
                self._shutdown_now(asked)

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("spanproof: export called after shutdown; %d span(s) ignored",
                            len(spans))
            return SpanExportResult.FAILURE
        selected, roots, failed = select_spans(self._selector, spans, self._warn_dropped)
        if selected and not self._value_length_warned:
            # One span of the batch: a provider's spans share its limits, and this runs
            # on the span processor's thread, beside the application's.
            self.note_value_length(selected[:1])
        if self._start_pending:
            with self._start_lock:
                if self._start_pending:
                    try:
                        self._start_sealing(recover=False)  # a forked child's
                    finally:
                        # Once: a start that raised is not tried on every export.
                        self._start_pending = False
        remote = self._remote
        if remote is None:  # no sealing process: seal here
            due = self._restarts.due
            if due is not None and time.monotonic() >= due:
                self._restart_sealing()
            rejected = 0 if self._admit_spans(selected, roots) else 1
        elif self._seals_beside(remote) and (selected or roots):
            # Since the sealing processes started again, a trace this process holds
            # stays here: its chain is this process's instance's.
            here, here_roots, selected, roots = self._held_here(selected, roots)
            rejected = self._send(remote, selected, roots)
            if (here or here_roots) and not self._admit_spans(here, here_roots):
                rejected += 1
        else:
            rejected = self._send(remote, selected, roots)
        if self._thread is None and self._sealer_starts.threadless:
            self._seal_here()
        return SpanExportResult.FAILURE if failed or rejected else SpanExportResult.SUCCESS

    def _seal_here(self) -> None:
        """Seal and write what is due on the calling thread: no sealer thread may
        start (gevent patched threading after this exporter was set up, see
        :class:`GreenSince`).  What is not due yet waits for the next call, a
        ``force_flush()`` or the ``shutdown()``."""
        try:
            self._cycle(flush=False, deadline=None)
        except Exception:
            _logger.exception("spanproof: sealing pass failed")

    def _send(self, remote: SealingProcesses, spans: Sequence[ReadableSpan],
              roots: Sequence[str]) -> int:
        """Hand *spans* and *roots* to the sealing processes; what a process that
        is gone was to get is sealed here.  Returns how many spans could not be
        certified (or 1 when the exporter shut down meanwhile)."""
        try:
            remote.send_spans(spans, roots)
            return 0
        except SealingProcessUnreachable as e:
            self._lose_remote(remote, e)
            return 0 if self._admit_spans(e.spans, e.roots) else 1
        except Exception:
            # A value pickle cannot carry (nothing was sent): normalize here, send
            # the bodies.
            bodies, rejected, failed = self._normalize_all(spans)
        try:
            remote.send_bodies(bodies, rejected, roots)
        except SealingProcessUnreachable as e:
            self._lose_remote(remote, e)
            return failed or (0 if self._admit_bodies(e.spans, e.rejected, e.roots) else 1)
        return failed

    def _held_here(
        self, spans: Sequence[ReadableSpan], roots: Sequence[str]
    ) -> tuple[list[ReadableSpan], list[str], list[ReadableSpan], list[str]]:
        """*spans* and *roots* split into those of traces this process holds and
        the others (for the sealing processes)."""
        here: list[ReadableSpan] = []
        there: list[ReadableSpan] = []
        here_roots: list[str] = []
        there_roots: list[str] = []
        with self._cond:
            holds = self._assembler.holds
            for span in spans:
                trace_id = _trace_id_of(span)  # None (unreadable): not held here
                (here if trace_id is not None and holds(trace_id) else there).append(span)
            for root in roots:
                (here_roots if holds(root) else there_roots).append(root)
        return here, here_roots, there, there_roots

    def _normalize_all(
        self, spans: Sequence[Any]
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[str | None], int]:
        """The bodies of *spans* (by trace id), the trace ids of those that cannot
        be certified (declared as rejected; None for a span whose trace id cannot be
        read), and how many could not be."""
        bodies: list[tuple[str, dict[str, Any]]] = []
        rejected: list[str | None] = []
        failed = 0
        for span in spans:
            body = self._normalize(span)
            if body is None:
                failed += 1
                rejected.append(_trace_id_of(span))  # None: declared in any trace's bundle
            else:
                bodies.append((body["span"]["traceId"], body))
        return bodies, rejected, failed

    def _admit_spans(self, spans: Sequence[Any], roots: Sequence[str]) -> bool:
        """Normalize selected *spans* and queue them, with the ended local *roots*,
        for sealing.  False when a span could not be certified or the exporter
        shut down meanwhile."""
        bodies, rejected, failed = self._normalize_all(spans)
        return self._admit_bodies(bodies, rejected, roots) and not failed

    def _admit_bodies(
        self,
        bodies: Sequence[tuple[str, dict[str, Any]]],
        rejected: Sequence[str | None],
        roots: Sequence[str],
    ) -> bool:
        """Queue normalized *bodies* for sealing, with the traces of *rejected*
        spans (None: a trace id that cannot be read); False after shutdown."""
        now = self._clock()
        with self._cond:
            if self._shutdown:
                _logger.warning("spanproof: exporter shut down during export; %d evidence "
                                "span(s) not certified", len(bodies))
                return False
            self._admit_locked(now, bodies, rejected, roots)
        return True

    def _warn_dropped(self, span: ReadableSpan, dropped: object) -> None:
        """Warn (throttled) about a span not selected that lost attributes."""
        warn_dropped_attributes(self._dropped_warnings, _span_id_of(span),
                                _trace_id_of(span) or "(unreadable id)", dropped,
                                SDK_ATTRIBUTE_COUNT_LIMIT)

    def note_value_length(self, spans: Sequence[ReadableSpan]) -> None:
        """Warn once when one of *spans* (evidence) was recorded under the SDK's
        attribute value length limit: its values may be certified truncated."""
        if self._value_length_warned:
            return
        limit = value_length_limit(spans)
        if limit is not None:
            self._value_length_warned = True
            warn_value_length_limit(limit)

    def _normalize(self, span: ReadableSpan) -> dict[str, Any] | None:
        """The record body of a selected span; None (logged) when it cannot be
        certified, which the caller declares as rejected."""
        try:
            body = span_to_body(span)
            check_value_sizes(body, self._config.max_value_bytes)
        except Exception as e:
            self._span_warnings.warn(
                "spanproof: cannot certify span %s of trace %s (%s: %s); declared as "
                "rejected", _span_id_of(span), _trace_id_of(span) or "(unreadable id)",
                type(e).__name__, e)
            return None
        return body

    def _admit_locked(
        self,
        now: float,
        bodies: Sequence[tuple[str, dict[str, Any]]],
        rejected: Sequence[str | None],
        roots: Sequence[str],
        *,
        dropped: Mapping[str, int] | None = None,
        unsampled: Mapping[str, int] | None = None,
        dropped_note: str | None = None,
    ) -> None:
        """Hand spans and loss counts to the assembler and wake the sealer when
        something became due earlier.  Call with ``self._cond`` held."""
        if self._thread is None:
            self._start_sealer()
        wake = False
        assembler = self._assembler
        for trace_id, body in bodies:
            wake = assembler.add(trace_id, body, now) or wake
        for rejected_trace in rejected:
            if rejected_trace is None:
                assembler.reject_untracked()
            else:
                assembler.reject(rejected_trace, now)
        for trace_id, n in (dropped or {}).items():
            assembler.drop(trace_id, now, n, dropped_note)
        for trace_id, n in (unsampled or {}).items():
            assembler.unsampled(trace_id, now, n)
        # Roots last: a root and its children often arrive in one batch.
        for trace_id in roots:
            assembler.root_ended(trace_id, now)
        deadline = assembler.next_deadline()
        if wake or (deadline is not None and deadline < self._wake_at):
            self._cond.notify()

    def force_flush(self, timeout_millis: float | None = 30000) -> bool:
        """Seal and write every trace that is due, on the calling thread.

        Traces whose local root span ended are sealed without waiting for the
        grace (reason ``force_flush``); traces still open are not cut.  Returns
        True when everything due is written, False on timeout, after shutdown,
        while the sink keeps failing, or at once from a signal handler that
        interrupted an ``export()`` of its own thread to sealing processes (that
        export holds them until the handler returns).  *timeout_millis* None (as the SDK's
        ``BatchSpanProcessor.force_flush`` takes it), or longer than a year,
        waits without a limit.
        """
        if self._shutdown:
            return False
        seconds = _wait_seconds(timeout_millis)
        deadline = time.monotonic() + seconds
        remote = self._remote
        if remote is not None:
            if self._in_export.inside_here():
                # A signal handler that interrupted an export() of this thread, which
                # may hold a process until it returns: no flush can end before.
                return False
            # With nothing unsettled no process has anything to flush: True at once,
            # not after a round trip that a short timeout cuts off.
            try:
                done = remote.settled() or remote.request("flush", seconds)
            except SealingProcessError as e:
                self._lose_remote(remote, e)
                return False
            if not self._seals_beside(remote):
                return done
        else:
            done = True
        # Before the pass below, which then seals what they left declared.
        done = self._await_survivors(deadline, stop=False) and done
        try:
            return self._cycle(flush=True, deadline=deadline) and done
        except Exception:
            _logger.exception("spanproof: force_flush failed")
            return False

    def shutdown(self, timeout_millis: float | None = 30000) -> None:
        """Seal everything pending (reason ``shutdown``), write it, stop the sealer.

        Idempotent; later exports return FAILURE.  *timeout_millis* (which the SDK's
        BatchSpanProcessor passes) bounds the wait, but sealing pending traces gets
        at least 5 seconds: a smaller budget would lose evidence.  None, or longer
        than a year, waits without a limit.  A write still in flight then (a
        stalled disk) is not waited for: it goes on in the background.  Whatever is
        still unwritten at the end is logged as an error.
        """
        # At most a year, in milliseconds (what _shutdown_now and a deferred
        # shutdown take).
        timeout_millis = _wait_seconds(timeout_millis) * 1000
        # A signal handler that interrupted a sealing pass (force_flush()) or an
        # export() (a SimpleSpanProcessor's) of its own thread, which may hold the
        # locks the drain needs: that call shuts down as it ends.
        for inside, what, who, call in (
                (self._in_pass, "a sealing pass", "force_flush()", "pass"),
                (self._in_export, "an export()", "a SimpleSpanProcessor", "export")):
            deferred = inside.defer(timeout_millis)
            if deferred is None:
                continue
            if deferred and not self._shutdown:
                _logger.warning(
                    "spanproof: shutdown() called inside %s of its own thread (a signal "
                    "handler that interrupted %s?): it seals the %d pending trace(s) once "
                    "that %s ends, when the handler returns or raises; exiting at once "
                    "(os._exit) loses them", what, who, self._assembler.pending_traces, call)
            return
        self._shutdown_now(timeout_millis)

    def _shutdown_now(self, timeout_millis: float) -> None:
        with self._cond:
            if self._shutdown:
                return
            self._shutdown = True
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        deadline = time.monotonic() + max(timeout_millis / 1000, _MIN_SHUTDOWN_SECONDS)
        # After a loss under way is declared (see _lose_remote), which the drain below
        # then seals; not past the deadline (a loss that a signal handler running this
        # interrupted is not waited for: the lock is reentrant).
        got = self._remote_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            with self._cond:
                remote, self._remote = self._remote, None
            if remote is not None:
                gone = self._stop_remote(remote, deadline)
                if gone:
                    if self._producer.instance == remote.instance:
                        self._producer = _new_producer()  # sealing here: see _lose_remote
                    self._declare_lost_with(gone, start_sealer=False)
                    if self._submitter is None:
                        # The declaration sealed below goes to the witness as the
                        # children's bundles did (theirs: the next start's scan).
                        self._submitter = self._start_submitter(catch_up=False)
            # (Sealed here under the instance _lose_remote took when it gave them up.)
            self._await_survivors(deadline, stop=True)
        finally:
            if got:
                self._remote_lock.release()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            done = self._cycle(drain=SHUTDOWN, deadline=deadline)
        except Exception:
            _logger.exception("spanproof: sealing at shutdown failed")
            done = False
        if self._writers is not None:
            # The writes in flight were waited on until the deadline (above); the
            # writer thread is not: a write hung on a stalled disk would hold
            # shutdown without bound.  What it finishes later is still written.
            self._writers.shutdown(wait=False)
        # Counted now, after the bounded wait, not after the witness's delivery.
        # Traces still held: a segment an exception took out of a pass, never sealed.
        incomplete = (not done or self._unwritten or self._sealed_unwritten or self._inflight
                      or self._assembler.pending_traces or self._discarded
                      or self._discarded_untracked)
        # (A snapshot: a sealer thread the join above gave up on may still discard.)
        discarded = list(self._discarded.values())
        # Signed but not handed to the sink (a pass that could not finish), and writes
        # not finished: those done are written, only their outcomes not yet taken.
        counts = (len(self._unwritten) + len(self._sealed_unwritten),
                  sum(not future.done() for _, future in self._inflight),
                  self._assembler.pending_traces,
                  sum(sum(held[:4]) for held in discarded) + self._discarded_untracked)
        if self._submitter is not None:
            # Deliver what was just sealed while the witness answers, for at most
            # 5 s in all (README): waiting for the delivery under way to end as well
            # took up to the submitter's own timeout more.  Whatever is not
            # delivered stays queued on disk for the next start.
            witness_deadline = min(deadline, time.monotonic() + _MIN_SHUTDOWN_SECONDS)
            self._submitter.flush(max(0.0, witness_deadline - time.monotonic()))
            self._submitter.close(max(0.0, witness_deadline - time.monotonic()))
        self._span_warnings.held_back()
        self._unencodable_warnings.held_back()
        self._dropped_warnings.held_back()
        if incomplete:
            _logger.error("spanproof: shutdown incomplete: %d sealed bundle(s) not written, "
                          "%d still being written, %d trace(s) not sealed, %d span(s) of "
                          "discarded bundles not declared", *counts)
        undeclared = self._assembler.undeclared_untracked
        if undeclared:
            _logger.error("spanproof: %d span(s) of no known trace were lost or rejected "
                          "after the last bundle sealed; no bundle declares them", undeclared)

    @staticmethod
    def _stop_remote(remote: SealingProcesses, deadline: float) -> list[SealingProcess]:
        """Have the sealing processes seal everything pending and exit; the ones
        found gone instead (what they held is lost)."""
        try:
            done = remote.request("shutdown", max(0.0, deadline - time.monotonic()))
        except SealingProcessError as e:
            _logger.error("spanproof: %s before shutdown; the spans it held are lost", e)
            gone = remote.give_up()
            remote.close(max(1.0, deadline - time.monotonic()))  # the others seal theirs
            return gone
        code = remote.close(max(1.0, deadline - time.monotonic()))
        blocked = [process.pid for process in remote.processes if process.input_blocked]
        if blocked:
            # Stopped (SIGSTOP, a debugger) or stuck: waiting for it would hold the
            # application's exit without bound.
            _logger.error("spanproof: the sealing process %s did not read its input before "
                          "the shutdown deadline (stopped, or stuck); shutdown returns "
                          "without waiting for it: once it reads again it gets what it "
                          "was being sent, seals everything it holds and exits (its input "
                          "is closed then, or when this process exits)",
                          ", ".join(map(str, blocked)))
        elif code is None:
            _logger.error("spanproof: the sealing process did not finish sealing before "
                          "the shutdown deadline; it keeps running until it has")
        elif not done or code != 0:
            # It exited: it said what it could not write (its own "shutdown
            # incomplete" line); "keeps running" sent the reader after a process gone.
            _logger.error("spanproof: the sealing process exited (code %s) without "
                          "finishing its shutdown: what it did not write is lost (its own "
                          "error above says how many bundles)", code)
        return []

    # -- the sealer --------------------------------------------------------------

    def _start_sealer(self) -> None:
        # Where it cannot start (the provider's atexit shutdown exporting a short
        # script's first evidence on Python 3.12), the spans are admitted all the
        # same: force_flush() and shutdown() seal on the calling thread, and the next
        # export tries again.
        thread = own_thread(self._run, "spanproof-sealer")
        if self._sealer_starts.start(thread):
            self._thread = thread

    def _run(self) -> None:
        worked = True
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock()
                wake = self._assembler.next_deadline()
                if self._unwritten:
                    wake = self._retry_at if wake is None else min(wake, self._retry_at)
                timeout = _MAX_SLEEP if wake is None else min(max(wake - now, 0.0), _MAX_SLEEP)
                if timeout == 0 and not worked:
                    # Something looked due but the last pass sealed nothing: no spinning.
                    timeout = _BACKOFF_SECONDS
                if self._inflight and self._inflight[0][1].done():
                    timeout = 0.0  # a finished write waits for its outcome to be handled
                if self._carried:
                    timeout = 0.0  # segments a timed pass left
                if timeout > 0:
                    self._wake_at = now + timeout
                    self._cond.wait(timeout)
                    self._wake_at = float("-inf")
                if self._stopping:
                    return
            try:
                worked = self._cycle(flush=False, deadline=None, report_work=True)
            except Exception:
                _logger.exception("spanproof: sealing cycle failed")
                worked = False

    def _cycle(
        self,
        *,
        flush: bool = False,
        drain: str | None = None,
        deadline: float | None,
        report_work: bool = False,
    ) -> bool:
        """One sealing pass.  Returns whether it completed (or, with *report_work*,
        whether it sealed or wrote anything)."""
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        # Inside the pass before the lock is taken, and until it is released: a
        # signal handled in between, on a thread that held the lock without being
        # inside, had its handler's shutdown wait on that lock until its deadline
        # (30 s) instead of leaving the shutdown to the pass.
        me = self._in_pass.enter()
        acquired = False
        try:
            acquired = self._seal_lock.acquire(timeout=timeout)
        finally:
            if not acquired:
                asked = self._in_pass.leave(me)
                if asked is not None:
                    self._shutdown_now(asked)
        if not acquired:
            return False
        try:
            worked = self._reap(block=False)
            worked = self._retry_unwritten() or worked
            if self._sink_condition is None and (self._discarded or self._discarded_untracked):
                # Discarded while writing worked (later segments piling up behind
                # kept ones): no recovery of the sink is left to declare them.
                self._declare_discarded()
            if self._sealed_unwritten:  # a pass an exception cut short sealed these
                self._start_writes(deadline)  # (behind their traces' earlier segments)
                worked = True
            while True:
                with self._lock:
                    # Still in flight (a pass that stopped may have sealed the first).
                    self._carried = [job for job in self._carried
                                     if self._assembler.in_flight(job.trace_id)]
                    if not self._carried and drain is not None:
                        self._carried = self._assembler.drain_all(drain)
                    elif not self._carried:
                        self._carried = self._assembler.due(self._clock(), flush=flush)
                if not self._carried:
                    break
                # A flush's deadline bounds its signing; shutdown's drain seals what it
                # took (no sealer is left to seal carried segments after it).
                self._seal_jobs(deadline if drain is None and not self._stopping else None,
                                yield_to_shutdown=drain is None)
                bundles = len(self._sealed_unwritten)
                if bundles:
                    self._start_writes(deadline)
                    worked = True
                if self._carried:
                    with self._cond:
                        self._cond.notify()  # the sealer seals them
                    return False
                if not bundles:
                    return False  # every job failed: retry on a later pass
                if deadline is not None and time.monotonic() > deadline:
                    return False
                if self._unwritten:
                    # Under a steady load this loop does not end: the bundles kept
                    # while the sink failed are retried here too, once a write
                    # worked or at their time, or they wait for good (and their
                    # traces' later segments pile up behind them, then are discarded).
                    self._reap(block=False)
                    if self._sink_condition is None or self._clock() >= self._retry_at:
                        self._retry_unwritten()
            if report_work:  # the sealer: take what is written, wait for nothing
                return self._reap(block=False) or worked
            self._reap(block=True, deadline=deadline)
            return not self._unwritten and not self._inflight
        finally:
            try:
                self._pass_done()
            finally:
                self._seal_lock.release()
                asked = self._in_pass.leave(me)
                if asked is not None:
                    self._shutdown_now(asked)

    def _pass_done(self) -> None:
        """Called at the end of every sealing pass, still under the seal lock, after
        the pass accounted for its writes (:meth:`_write`); a subclass's hook."""

    def _seal_jobs(self, deadline: float | None, *, yield_to_shutdown: bool = False) -> None:
        """Seal the segments the pass took (``_carried``), first to last, into
        ``_sealed_unwritten``, until *deadline* (at least one); the rest stay for the
        next pass.  A caller's timeout (``force_flush``) bounds the pass, not only its
        waits: a thousand due traces take a second to sign.  With
        *yield_to_shutdown*, also until a shutdown begins: the pass then writes what
        it signed and leaves the rest to the shutdown's own pass (it signed them all
        before writing any, and a shutdown that gave up waiting for it lost them,
        signed, with the process)."""
        first = True
        while self._carried:
            if not first and ((deadline is not None and time.monotonic() > deadline)
                              or (yield_to_shutdown and self._stopping)):
                return
            first = False
            bundle = self._seal_job(self._carried[0])
            del self._carried[0]
            if bundle is not None:
                self._sealed_unwritten.append(bundle)

    def _seal_job(self, job: SealJob) -> SealedBundle | None:
        """Seal *job*; None when it could not be sealed (its spans are declared lost
        in the trace's next bundle)."""
        try:
            bundle = self._seal(job)
        except Exception as e:
            _logger.exception("spanproof: cannot seal segment of trace %s", job.trace_id)
            with self._lock:
                self._assembler.abandon(
                    job, f"{len(job.bodies)} span(s) lost: sealing failed ({type(e).__name__})"
                )
            return None
        with self._lock:
            self._assembler.sealed(job, bundle.next_position())
        return bundle

    def _start_writes(self, deadline: float | None = None) -> None:
        """Write the bundles the pass sealed (``_sealed_unwritten``), each taken off
        that list as it is handed over, waiting while more than
        :data:`_MAX_IN_FLIGHT` writes are in flight until *deadline* (a stalled disk
        held a flush or a shutdown without bound).  With a DirectorySink they are queued for the
        writer thread, which writes everything queued since its last group as one
        group (one durability barrier and one directory fsync for all, see
        :meth:`DirectorySink.write_many`) while the sealer goes on sealing, and
        :meth:`_reap` handles their outcomes in order on the sealing thread; any
        other sink (a DirectorySink subclass included) is written here, one bundle
        after another."""
        bundles = list(self._sealed_unwritten)
        submitted = 0
        # A bundle is written only once its trace's earlier segments are (SPEC §4.4):
        # written first, it would be stored after a crash (and, journaled, retired)
        # with its chain naming a segment never stored, or, that segment discarded,
        # hide the gap behind it.  It waits behind one kept for a retry, and a write
        # in flight decides whether it is written (see _drain_write_queue).
        behind = {bundle.statement.trace_id for bundle in self._unwritten}
        # Written here, as other sinks are, once no writer thread may start (see
        # GreenSince): the pass would wait for a thread that never runs.
        if type(self._sink) is DirectorySink and not self._sealer_starts.threadless:
            if self._writers is None:
                self._writers = concurrent.futures.ThreadPoolExecutor(
                    1, "spanproof-write", initializer=quiet_thread)
            futures: list[concurrent.futures.Future[str | Exception]] = [
                concurrent.futures.Future() for _ in bundles
            ]
            last = {bundle.statement.trace_id: future for bundle, future in self._inflight}
            queued: list[_Write] = []
            for bundle, future in zip(bundles, futures, strict=True):
                trace_id = bundle.statement.trace_id
                before = last.get(trace_id)
                last[trace_id] = future
                if before is None and trace_id in behind:
                    future.set_result(_BEHIND)  # kept behind it, not written
                else:
                    queued.append((bundle, future, before))
            with self._write_queue_lock:
                try:
                    if not self._writer_busy and queued:
                        self._writers.submit(self._drain_write_queue)
                        self._writer_busy = True
                except RuntimeError:
                    pass  # interpreter shutdown (an atexit shutdown): write here
                else:
                    self._write_queue.extend(queued)
                    self._inflight.extend(zip(bundles, futures, strict=True))
                    del self._sealed_unwritten[:len(bundles)]  # handed over
                    submitted = len(bundles)
        if submitted < len(bundles):
            self._reap(block=True)  # keep the order of outcomes
            behind = {bundle.statement.trace_id for bundle in self._unwritten}
            while self._sealed_unwritten:
                bundle = self._sealed_unwritten.pop(0)  # handed over: counted once
                trace_id = bundle.statement.trace_id
                try:
                    if not self._write(bundle, _BEHIND if trace_id in behind else None):
                        behind.add(trace_id)
                except BaseException:
                    # Raised into the write (sys.exit in a signal handler): the
                    # shutdown that follows retries it.
                    self._unwritten.append(bundle)
                    raise
        while len(self._inflight) > _MAX_IN_FLIGHT:
            if not self._reap(block=True, deadline=deadline, limit=1):
                break  # the deadline passed: the writes go on, reaped by a later pass

    def _drain_write_queue(self) -> None:
        """On the writer thread: write what is queued as one group, settle each
        bundle's future with its path or error, and repeat until the queue is empty.

        A bundle queued behind the write of its trace's previous segment (the future
        queued with it) is written only when that one was: otherwise its outcome is
        :data:`_BEHIND`.  When that write is in the same group, the group is written
        up to it first."""
        sink = self._sink
        assert type(sink) is DirectorySink
        while True:
            with self._write_queue_lock:
                queued, self._write_queue = self._write_queue, []
                if not queued:
                    self._writer_busy = False
                    return
            while queued:
                # Up to the first bundle whose trace's previous segment is in this
                # group: that one's outcome decides whether it is written.
                cut = next((i for i, (_, _, before) in enumerate(queued)
                            if i and before is not None and not before.done()), len(queued))
                group, queued = queued[:cut], queued[cut:]
                _write_group(sink, group)
                if self._settle is not None:
                    # Settled as soon as they are durable, not when the sealer takes
                    # the outcome: killed in between, a sealing process had its
                    # written spans declared lost as well (up to 207 in a run).
                    for bundle, future, _ in group:
                        if isinstance(future.result(), str):
                            self._settle(_settles(bundle))
            self._wake_sealer(None)

    def _wake_sealer(self, _: object) -> None:
        # A write finished: the sealer takes its outcome on its next pass.
        with self._cond:
            self._cond.notify()

    def _reap(self, *, block: bool, deadline: float | None = None,
              limit: int | None = None) -> bool:
        """Handle the outcomes of finished writes, oldest first, stopping at the
        first unfinished one (or, with *block*, waiting for it until *deadline*).
        Returns whether any was handled."""
        reaped = 0
        while self._inflight and (limit is None or reaped < limit):
            bundle, future = self._inflight[0]
            if not future.done():
                if not block:
                    break
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                concurrent.futures.wait([future], timeout)
                if not future.done():
                    break
            self._inflight.popleft()
            self._write(bundle, future.result())
            reaped += 1
        return reaped > 0

    def _seal(self, job: SealJob) -> SealedBundle:
        sealed_at = datetime.fromtimestamp(self._wall_clock(), timezone.utc)
        if self._assembler.forgot_sealed:
            job = self._continue_forgotten(job)
        bundle = seal(
            job.trace_id, job.bodies, job.position, signer=self._signer,
            producer=self._producer, sealed_at=sealed_at, reason=job.reason,
            completeness=job.completeness, redact=self._redact, reject_unencodable=True,
        )
        bad = bundle.statement.completeness.rejected_spans - job.completeness.rejected_spans
        if bad:
            self._unencodable_warnings.warn(
                "spanproof: %d span(s) of trace %s rejected at sealing: a value with no "
                "canonical JSON form, or a record longer than 64 MiB (the bundle's notes "
                "say which)", bad, job.trace_id)
        return bundle

    def _continue_forgotten(self, job: SealJob) -> SealJob:
        """*job*, continuing its trace's chain when it would start at genesis
        although the trace may have been sealed and forgotten (``sealed_trace_memory``
        full, or 0): after the trace's last segment sealed here and not written yet
        (kept for a retry, or being written), else after the last one in the output
        directory (:func:`continue_on_disk`).  Started at genesis meanwhile, the
        trace would have a second segment 0, and no chain."""
        position = job.position
        if position.segment_index != 0 or position.previous_statement:
            return job
        last: SealedBundle | None = None
        held = itertools.chain(self._unwritten, (bundle for bundle, _ in self._inflight),
                               self._sealed_unwritten)
        for bundle in held:
            statement = bundle.statement
            if statement.trace_id == job.trace_id and (
                    last is None or statement.segment_index > last.statement.segment_index):
                last = bundle
        if last is not None:
            return dataclasses.replace(job, position=last.next_position())
        return continue_on_disk(job, self._producer.instance, self._sink, self._signer)

    def _write(self, bundle: SealedBundle, outcome: str | Exception | None = None) -> bool:
        """Write *bundle* through the sink (or take *outcome*, the path or error of
        a write a writer thread made) and account for the result: True when
        written; otherwise it is kept for a retry.  An *outcome* of :data:`_BEHIND`
        keeps it, untried, behind its trace's earlier segment."""
        if outcome is _BEHIND:
            _logger.debug("spanproof: bundle %s waits behind an earlier segment of its trace",
                          bundle.file_name)
            self._keep_unwritten(bundle)
            return False
        try:
            if outcome is None:
                where = self._sink.write(bundle)
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                where = outcome
        except Exception as e:
            condition = _condition_of(e)
            if condition != self._sink_condition:
                # Once per condition (disk full, read-only, ...), not once per bundle.
                self._sink_condition = condition
                _logger.error("spanproof: cannot write bundles (%s: %s); they are kept in "
                              "memory (up to %d, and 256 MiB with their disclosures) and "
                              "retried every %.0f s",
                              type(e).__name__, e, _MAX_UNWRITTEN, _RETRY_SECONDS)
            else:
                _logger.debug("spanproof: still cannot write bundle %s (%s)",
                              bundle.file_name, e)
            self._keep_unwritten(bundle)
            self._retry_at = self._clock() + _RETRY_SECONDS
            return False
        if self._sink_condition is not None:
            self._sink_condition = None
            _logger.warning("spanproof: bundles can be written again (%d still queued)",
                            len(self._unwritten))
            self._declare_discarded()
        if self._submitter is not None:
            self._submitter.submit(where)
        if self._settle is not None and outcome is None:
            self._settle(_settles(bundle))  # (a writer thread's write it settled itself)
        return True

    def _keep_unwritten(self, bundle: SealedBundle) -> None:
        """Keep *bundle* for a retry, after every bundle kept before it (a trace's
        segments are retried in order), discarding the oldest beyond
        ``_MAX_UNWRITTEN`` bundles or ``_MAX_UNWRITTEN_BYTES`` (the newest is kept,
        whatever its size)."""
        self._unwritten.append(bundle)
        if len(self._unwritten) > _MAX_UNWRITTEN:
            self._discard(self._unwritten.popleft())
        # Their disclosures too: with redaction the values are there, not in the bundle.
        held = sum(kept.held_bytes for kept in self._unwritten)
        while held > _MAX_UNWRITTEN_BYTES and len(self._unwritten) > 1:
            oldest = self._unwritten.popleft()
            held -= oldest.held_bytes
            self._discard(oldest)

    def _discard(self, bundle: SealedBundle) -> None:
        """Give up on *bundle*, the oldest of more than ``_MAX_UNWRITTEN`` waiting
        for a failing sink: its spans are lost.  What it certified and declared is
        counted for its trace's next bundle (SPEC §5.3), sealed once writing works
        again: declared earlier, that bundle would only wait behind the others, or
        be discarded in turn."""
        records = bundle.statement.record_count
        self._count_discarded(bundle, records)
        _logger.error("spanproof: bundle %s discarded: %s are waiting for a failing sink; "
                      "its trace's next bundle declares its %d span(s) as dropped",
                      bundle.file_name, _KEPT_LIMIT.removesuffix(","), records)

    def _count_discarded(self, bundle: SealedBundle, records: int) -> None:
        """Count *records* of discarded *bundle*'s records, and the losses it
        declared, for :meth:`_declare_discarded`."""
        statement = bundle.statement
        done = statement.completeness
        held = self._discarded.pop(statement.trace_id, (0, 0, 0, 0, 0))
        self._discarded[statement.trace_id] = (
            held[0] + records, held[1] + done.dropped_spans, held[2] + done.rejected_spans,
            held[3] + done.unsampled_spans, held[4] + 1)
        if len(self._discarded) > _MAX_DISCARDED_TRACES:
            oldest = next(iter(self._discarded))
            self._discarded_untracked += sum(self._discarded.pop(oldest)[:4])

    def _declare_discarded(self) -> None:
        """Hand the counts of the discarded bundles to the assembler: each trace's
        next bundle declares them (an empty segment, when the trace sends nothing
        more), with a note naming the cause."""
        if not self._discarded and not self._discarded_untracked:
            return
        discarded, self._discarded = self._discarded, {}
        untracked, self._discarded_untracked = self._discarded_untracked, 0
        with self._cond:
            now = self._clock()
            assembler = self._assembler
            for trace_id, (records, dropped, rejected, unsampled, bundles) in discarded.items():
                assembler.drop(trace_id, now, records + dropped, _DISCARDED_NOTE.format(bundles))
                if rejected:
                    assembler.reject(trace_id, now, rejected)
                if unsampled:
                    assembler.unsampled(trace_id, now, unsampled)
            if untracked:
                assembler.drop_untracked(untracked)
            self._cond.notify()

    def _retry_unwritten(self) -> bool:
        """Retry the bundles kept unwritten, oldest first, until one fails: a trace's
        later segment is never tried before its earlier one."""
        wrote = False
        while self._unwritten:
            bundle = self._unwritten.popleft()
            if not self._write(bundle):
                # _write queued it at the back; keep the original order.
                self._unwritten.rotate(1)
                break
            wrote = True
        return wrote


class Throttled:
    """Warnings of one kind, logged at most once per *period* seconds: each logged
    one says how many were held back since the one before.  Those held back are also
    counted, as warnings that *what*, in a warning of their own when the period ends:
    a burst that stops is not left unsaid until the next warning or the shutdown."""

    def __init__(self, logger: logging.Logger, period: float, what: str) -> None:
        self._logger = logger
        self._period = period
        self._what = what
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0
        self._timer: threading.Timer | None = None
        self._green = GreenSince()

    def held_back(self) -> None:
        """Say how many warnings were held back since the last one logged (at
        shutdown: no later warning will)."""
        with self._lock:
            held, self._held = self._held, 0
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if held:
            self._logger.warning("spanproof: %d more warning(s) that %s were held back", held,
                                 self._what)

    def _period_ended(self) -> None:
        # On the timer's thread: the period of the last warning logged ended (the
        # next warning is logged whole, and starts a period of its own).
        with self._lock:
            held, self._held = self._held, 0
            self._timer = None
        if held:
            self._logger.warning("spanproof: %d more warning(s) that %s were held back in "
                                 "the last %g s", held, self._what, self._period)

    def warn(self, message: str, *args: object) -> None:
        """Log *message* % *args* as a warning, unless one was logged too recently."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                if self._held == 1 and self._timer is None:
                    self._start_timer(self._next - now)
                return
            held, self._held = self._held, 0
            self._next = now + self._period
        if held:
            message += " (%d more such warnings held back since the last, one per %g s)"
            args = (*args, held, self._period)
        self._logger.warning(message, *args)

    def _start_timer(self, seconds: float) -> None:
        # Under the lock.  Where no thread may start (the interpreter exiting, or
        # gevent patched since: see GreenSince), the count waits for the next warning
        # or the shutdown, as it did.
        if self._green.turned:
            return
        timer = own_timer(seconds, self._period_ended, "spanproof-held-warnings")
        try:
            timer.start()
        except RuntimeError:
            return
        self._timer = timer


class ThreadStarts:
    """Starts one kind of background thread, and says once when one cannot start.

    Python 3.12 refuses every new thread while the interpreter exits (in ``atexit``
    callbacks, where the SDK shuts its tracer provider down), and a process can run
    out of threads; the caller then does the thread's work itself.  Nothing is
    logged while the interpreter exits: that is expected there.  Nor does a thread
    start once gevent patched threading after this object was made (see
    :class:`GreenSince`; :attr:`threadless` says so): the caller then does the
    thread's work itself for good.
    """

    def __init__(self, what: str, meanwhile: str) -> None:
        self._what = what
        self._meanwhile = meanwhile
        self._warned = False
        self._green = GreenSince()

    @property
    def threadless(self) -> bool:
        """Whether gevent patched threading since this was made: no thread starts."""
        return self._green.turned

    def start(self, thread: threading.Thread) -> bool:
        """Start *thread*; False when no thread may start now."""
        if self._green.turned:
            warn_threadless()
            return False
        try:
            thread.start()
        except RuntimeError as e:
            exiting = sys.is_finalizing() or not threading.main_thread().is_alive()
            if not exiting and not self._warned:
                self._warned = True
                _logger.warning("spanproof: cannot start the %s (%s); %s until it starts",
                                self._what, e, self._meanwhile)
            return False
        return True


class Interruptible:
    """The threads inside a kind of call that a signal handler may interrupt while it
    holds locks a shutdown needs, and the shutdown such a handler asked for meanwhile,
    which the call runs as it ends on the thread that asked (the handler's ``sys.exit``
    unwinding it, or the handler returning).  Calls may nest on one thread (a handler
    that ends a span): the outermost runs it."""

    __slots__ = ("_asked", "_depth")

    def __init__(self) -> None:
        self._depth: dict[int, int] = {}
        self._asked: tuple[int, float] | None = None

    def enter(self) -> int:
        """Note that this thread entered such a call; its thread id, for :meth:`leave`."""
        me = threading.get_ident()
        self._depth[me] = self._depth.get(me, 0) + 1
        return me

    def leave(self, me: int) -> float | None:
        """Note that thread *me* left such a call: the timeout of the shutdown to run
        now, when this was its outermost and a shutdown was asked on it."""
        depth = self._depth[me] - 1
        if depth:
            self._depth[me] = depth
            return None
        del self._depth[me]
        asked = self._asked
        if asked is None or asked[0] != me:
            return None
        self._asked = None
        return asked[1]

    def inside_here(self) -> bool:
        """Whether the calling thread is inside such a call (a signal handler that
        interrupted it runs on that thread)."""
        return threading.get_ident() in self._depth

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until no thread is inside; whether none is."""
        deadline = time.monotonic() + timeout
        while self._depth:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def defer(self, timeout: float) -> bool | None:
        """A shutdown (its *timeout*) asked on this thread: None when the thread is
        not inside such a call (shut down now), else the shutdown is left to the call,
        and whether it is the first so asked (False: one already waits)."""
        me = threading.get_ident()
        if me not in self._depth:
            return None
        if self._asked is not None:
            return False
        self._asked = (me, timeout)
        return True


class _ShutsDown(Protocol):
    def shutdown(self) -> None: ...


def _shut_down_at_worker_exit(owner: _ShutsDown) -> None:
    """Have *owner* shut down as this forked child exits, when the child is a
    multiprocessing worker; call it from an ``os.register_at_fork`` child hook.

    Such a worker (a fork-context ``Process``, a ``Pool`` worker) runs its target,
    then multiprocessing's finalizers, and leaves through ``os._exit()``: the
    ``atexit`` hooks, the SDK's ``provider.shutdown()`` among them, never run, and
    the traces *owner* held were lost without a bundle declaring them.  The worker
    drops the finalizers it inherited after the fork hooks ran
    (``Process._bootstrap``), then runs multiprocessing's own after-fork hooks: the
    finalizer is registered from there.  A child of a plain ``os.fork()`` (gunicorn)
    runs neither and exits through ``atexit`` as before, where a finalizer run first
    would have shut the exporter down before the SDK's batch processor handed it its
    last spans.  Where multiprocessing is not imported, this child is none of its
    workers (a ``Process`` imports it before it forks); nothing is imported here.
    """
    if "multiprocessing.util" in sys.modules:
        from multiprocessing import util

        util.register_after_fork(owner, _shut_down_as_the_worker_exits)


def _shut_down_as_the_worker_exits(owner: _ShutsDown) -> None:
    # multiprocessing's after-fork hook, in the worker.  A finalizer of no object
    # runs once the target returned (util._exit_function); priority 0: among the
    # first, before the worker waits for its own children to exit.
    from multiprocessing import util

    util.Finalize(None, _shut_down, args=(weakref.ref(owner),), exitpriority=0)


def _shut_down(owner: weakref.ref[_ShutsDown]) -> None:
    """Shut *owner* down (a worker's finalizer: it never raises), unless it is gone."""
    alive = owner()
    if alive is None:
        return
    try:
        alive.shutdown()  # idempotent: the worker may have shut it down already
    except Exception:
        _logger.exception("spanproof: shutdown as the worker process exits failed")


def select_spans(
    selector: Selector, spans: Sequence[ReadableSpan],
    on_dropped: Callable[[ReadableSpan, object], None] | None = None,
) -> tuple[list[ReadableSpan], list[str], int]:
    """The per-span work every export does: the evidence spans among *spans*, the
    trace ids of the local root spans among them (evidence or not: a root's end
    makes its trace due), and how many spans could not be read (logged, skipped).

    *on_dropped*, when given, is called with each span not selected whose attributes
    the SDK dropped some of (a selecting one may have been among them), and their
    number."""
    selects = selector.selects
    selected: list[ReadableSpan] = []
    roots: list[str] = []
    failed = 0
    attributes: Mapping[str, Any]
    for span in spans:
        try:
            bounded = span._attributes if type(span) is ReadableSpan else None
            if type(bounded) is BoundedAttributes:
                # _selection_view's first case, inline: this loop sees every span.
                attributes, parent = bounded._dict, span._parent
                if selects(attributes):
                    selected.append(span)
                elif bounded.dropped and on_dropped is not None:
                    # One attribute read, for spans not selected alone (README, "Faults
                    # and hostile input": selection sees only the attributes kept).
                    on_dropped(span, bounded.dropped)
            else:
                attributes, parent = _selection_view(span)
                if selects(attributes):
                    selected.append(span)
                elif on_dropped is not None:
                    count = dropped_attributes(span)
                    if count:
                        on_dropped(span, count)
            if parent is None or parent.is_remote:
                trace_id = _trace_id_of(span)
                if trace_id is not None:
                    roots.append(trace_id)
        except Exception as e:
            failed += 1
            _logger.warning("spanproof: cannot read a span (%s: %s); skipped",
                            type(e).__name__, e)
    return selected, roots, failed


def _trace_id_of(span: ReadableSpan) -> str | None:
    """The span's trace id in hex; None when it cannot be read or is not a valid
    trace id (zero, or not 128 bits): such a span belongs to no trace we can name."""
    try:
        ctx = span.get_span_context()
        trace_id = None if ctx is None else ctx.trace_id
    except Exception:
        return None  # the caller logs the span it could not handle
    if type(trace_id) is int and 0 < trace_id < 1 << 128:
        return f"{trace_id:032x}"
    return None


def _span_id_of(span: ReadableSpan) -> str:
    try:
        ctx = span.get_span_context()
        return f"{ctx.span_id:016x}" if ctx is not None else "?"
    except Exception:
        return "?"


class _SealingProcessExporter(SpanproofSpanExporter):
    """The exporter a sealing process runs.  The process is started with
    ``OTEL_SDK_DISABLED=true`` (it is no instrumented application), which does not
    disable this exporter: it is not built from that process's environment."""


class _NonRecoveringExporter(_SealingProcessExporter):
    """The exporter a sealing process after the first runs: the first alone
    finishes what an earlier run left in the output directory, so two processes
    never race over the same journal, queue entry or unsubmitted bundle."""

    _recovers_at_start = False


class _DisabledSpanExporter(SpanproofSpanExporter):
    """What ``SpanproofSpanExporter(...)`` builds while ``OTEL_SDK_DISABLED`` is true.

    It does nothing: no key, directory, journal recovery, sealing process or witness
    submission, whatever its arguments or variables say.  The SDK's providers make
    no span then; a span given anyway is not certified (FAILURE, logged once).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # every argument ignored
        self._warned = False
        _logger.info("spanproof: OTEL_SDK_DISABLED is true: the spanproof exporter is "
                     "disabled (nothing is written, recovered or submitted)")

    def _disabled(self) -> RuntimeError:
        return RuntimeError("the spanproof exporter is disabled (OTEL_SDK_DISABLED=true)")

    @property
    def config(self) -> ExporterConfig:
        """Not available: raises ``RuntimeError`` (nothing was configured)."""
        raise self._disabled()

    @property
    def producer(self) -> Producer:
        """Not available: raises ``RuntimeError``."""
        raise self._disabled()

    @property
    def keyid(self) -> str:
        """Not available: raises ``RuntimeError`` (no key was loaded)."""
        raise self._disabled()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Certify nothing: FAILURE for spans (logged the first time), else SUCCESS."""
        if not spans:
            return SpanExportResult.SUCCESS
        if not self._warned:
            self._warned = True
            _logger.warning("spanproof: %d span(s) not certified: the exporter is disabled "
                            "(OTEL_SDK_DISABLED=true); later ones are not logged", len(spans))
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: float | None = 30000) -> bool:
        """Nothing is pending: True."""
        return True

    def shutdown(self, timeout_millis: float | None = 30000) -> None:
        """Nothing to stop."""


# OTEL_SDK_DISABLED=true: the configurator still builds this exporter, for a
# provider that makes no span.
SpanproofSpanExporter._disabled_kind = _DisabledSpanExporter


def _scan_quietly(submitter: WitnessSubmitter, directory: str) -> None:
    try:
        queued = submitter.scan(directory)
    except Exception:
        _logger.exception("spanproof: scanning %s for unsubmitted bundles failed", directory)
        return
    if queued:
        _logger.info("spanproof: %d bundle(s) without a witness receipt queued", queued)


def _settles(bundle: SealedBundle) -> int:
    """The spans a written *bundle* settles (see :meth:`SealingProcess.unsettled`):
    those it certifies and those it declares."""
    statement = bundle.statement
    done = statement.completeness
    return (statement.record_count + done.dropped_spans + done.rejected_spans
            + done.unsampled_spans)


def _write_group(sink: DirectorySink, group: Sequence[_Write]) -> None:
    """On the writer thread: write *group* as one group (one durability barrier, see
    :meth:`DirectorySink.write_many`) and settle each bundle's future with its path
    or error; a bundle whose trace's previous segment was not written is not written
    either (:data:`_BEHIND`)."""
    writable = [before is None or (before.done() and isinstance(before.result(), str))
                for _, _, before in group]
    outcomes: list[str | Exception] = []
    if any(writable):
        bundles = [bundle for (bundle, _, _), ok in zip(group, writable, strict=True) if ok]
        try:
            outcomes = list(sink.write_many(bundles))
        except Exception as e:  # a bug, not a disk condition: every write failed
            outcomes = [e] * len(bundles)
    written = iter(outcomes)
    for (_, future, _), ok in zip(group, writable, strict=True):
        future.set_result(next(written) if ok else _BEHIND)


def _wait_seconds(timeout_millis: float | None) -> float:
    """*timeout_millis* in seconds, at most :data:`_LONGEST_WAIT` (None: that)."""
    if timeout_millis is None:
        return _LONGEST_WAIT
    try:
        seconds = timeout_millis / 1000
    except OverflowError:  # an int too large for a float
        return _LONGEST_WAIT
    return seconds if seconds < _LONGEST_WAIT else _LONGEST_WAIT


def _condition_of(error: BaseException) -> str:
    """A failure's kind for logging once per condition: its type and errno."""
    return f"{type(error).__name__}:{getattr(error, 'errno', None)}"
