"""Seal workers: the receiver's opt-in ``sealing_processes`` mode.

In one Python process the receiver's gRPC threads, which ingest, and its sealer
thread, which encodes, hashes, signs and writes, take turns on one GIL, so the
receiver uses one core whatever the machine has.  With ``sealing_processes=N`` the
sealer thread hands each sealing pass's segments to N worker processes, which seal
them (:func:`~spanproof.exporter.sealing.seal` with ``reject_unencodable``) and, when the receiver
writes to a plain :class:`~spanproof.exporter.sinks.DirectorySink`, write them to
the same directory the same way, while the receiver goes on ingesting.  The rest
stays in the receiver's process: the journal, assembly, retiring the journal
entries of what was written, retrying what a worker could not write, and witness
submission, so what is acknowledged, what is durable and what a restart recovers do
not change, and a bundle's bytes are those the receiver would have sealed itself
(a test compares them).

Protocol (private to the processes; both run this module's code): the framing of
:mod:`~spanproof.exporter._sealing_process` (a 4-byte big-endian length and a
pickle), requests on the worker's stdin and replies on its stdout.  Messages:

* ``("start", key_seed, producer, redact, directory, sync)``: answered
  ``("ready",)``, or ``("error", text)`` when the worker cannot start; with a
  *directory* (and the sink's *sync* mode) the worker writes what it seals;
* ``("seal", sealed_at, jobs)``, each job ``(trace_id, bodies, position, reason,
  completeness)`` with the bodies as one JSON array (the receiver's
  :class:`~spanproof.exporter.sealing.SerializedBody` JSON joined, other bodies
  encoded with orjson) or, when JSON cannot carry them, a list, and the position
  and completeness as tuples of their fields: answered ``("sealed", results)``,
  one per job in order: ``("written", path, next_position)`` (its fields),
  ``("sealed", bundle)`` (not written: no directory), ``("unwritten", bundle,
  error)`` (the write failed; the receiver retries it) or ``("failed", error)``
  (it could not be sealed).

Plain tuples, not the dataclasses, cross the pipe: pickling a job's position,
completeness and time as objects cost ~15 µs, three times its five bodies as JSON.

A pass goes in rounds of at most 256 segments per worker, so a large one (every
pending trace, at shutdown) is never encoded and framed whole.  A worker reads a
whole request before it answers, and the parent writes every request of a round
before it reads the first answer, so neither waits on a full pipe of the other.

A round that outlasts its allowance (:data:`_ROUND_SECONDS` plus
:data:`_SECONDS_PER_BODY` per span, counted while the parent writes the requests
and waits for the answers) has a worker that stopped reading or answering: a watch
thread (:func:`~spanproof.exporter._sealing_process.start_watch`) kills the workers,
the round raises :class:`SealWorkerError`, and the receiver seals in its own process
until it starts new workers.  Killing loses nothing, as the receiver journaled every
span a worker is sent.

A worker exits at end of input (the receiver closed its pipe, or exited or was
killed); it ignores SIGINT and SIGTERM, which a terminal or a service manager sends
to the whole process group: the receiver decides, and seals what is pending with
its workers' help before it stops.  A worker whose receiver died (it is re-parented)
writes nothing more, not even the round it holds: the next receiver seals those
spans from the journal, and a bundle written by both would certify them twice.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from spanproof.verifier._gc import collecting_rarely
from spanproof.verifier.statement import Completeness, Producer

from ._sealing_process import (
    _frame,
    _read_frame,
    _reply_to,
    child_replies,
    spawn_child,
    start_watch,
)
from .assembly import SealJob
from .disclosure import AttributeMatcher
from .keys import SigningKey
from .sealing import ChainPosition, SealedBundle, SerializedBody, seal
from .sinks import BundleSink, DirectorySink

__all__ = ["SealWorkerError", "SealWorkers"]

_START_TIMEOUT = 60.0
#: How long a round may take before its workers are taken to be stopped or stuck:
#: this many seconds, plus :data:`_SECONDS_PER_BODY` for each span it seals (a
#: worker seals and writes one in ~35 µs on a 2-core machine, so a large round
#: has thirty times its usual time, and a small one seconds of disk stall).
_ROUND_SECONDS = 30.0
_SECONDS_PER_BODY = 0.001
# Segments sent to one worker at a time: a pass can hold every pending trace (at
# shutdown), and its bodies must not all be encoded and framed at once.
_ROUND_JOBS = 256

#: A job's result: ``("written", path, next_position)``, ``("sealed", bundle)``,
#: ``("unwritten", bundle, error)`` or ``("failed", error)``.
Result = tuple[Any, ...]


class SealWorkerError(RuntimeError):
    """A seal worker could not be started, or stopped answering."""


class _Worker:
    def __init__(self, key_seed: bytes, producer: Producer,
                 redact: AttributeMatcher | None, directory: str | None, sync: str) -> None:
        self.proc = spawn_child("_seal_workers", "worker_main")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout
        try:
            self.send(("start", key_seed, producer, redact, directory, sync))
            ready, _, _ = select.select([self.stdout], [], [], _START_TIMEOUT)
            if not ready:
                raise SealWorkerError(f"a seal worker did not answer in {_START_TIMEOUT:.0f} s")
            reply = self.receive()
            if reply[0] != "ready":
                raise SealWorkerError(f"a seal worker did not start: {reply[1]}")
        except BaseException:
            self.close(0)
            raise

    def send(self, message: Any) -> None:
        try:
            self.stdin.write(_frame(message))
            self.stdin.flush()
        except (OSError, ValueError) as e:
            raise SealWorkerError(f"seal worker {self.proc.pid} is gone: {e}") from e

    def receive(self) -> Any:
        try:
            reply = _read_frame(self.stdout)
        except (OSError, ValueError, EOFError) as e:
            raise SealWorkerError(f"seal worker {self.proc.pid} is gone: {e}") from e
        if reply is None:
            try:
                code = self.proc.wait(1.0)  # its output ended: it has exited, or is about to
            except subprocess.TimeoutExpired:
                code = None
            raise SealWorkerError(f"seal worker {self.proc.pid} exited (exit code {code})")
        return reply

    def close(self, timeout: float) -> None:
        """End the worker's input; kill it when it has not exited after *timeout*."""
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class SealWorkers:
    """*count* worker processes that seal with *signer* as *producer* and, given a
    *sink* that is a plain :class:`DirectorySink`, write to its directory.

    Not thread-safe: one thread (the receiver's sealer) calls :meth:`seal`.

    Raises:
        SealWorkerError: a worker could not be started (none is left running).
        OSError: a worker process could not be created.
    """

    def __init__(self, count: int, signer: SigningKey, producer: Producer,
                 redact: AttributeMatcher | None, sink: BundleSink | None = None) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        directory, sync = None, "auto"
        if type(sink) is DirectorySink:  # a subclass may write otherwise: the caller writes
            directory, sync = sink.directory, sink.sync
        self._workers: list[_Worker] = []
        #: The round under way: its workers, segments, spans and start.
        self._in_flight: tuple[list[_Worker], int, int, float] = ([], 0, 0, 0.0)
        # When the round under way has outlasted its allowance (None: no round, or
        # the receiver's own work meanwhile).
        self._round_deadline: float | None = None
        #: Why the workers were killed, once a round outlasted its allowance.
        self._expiry: str | None = None
        self._watch_stop = start_watch(self._check_round, "spanproof-seal-watchdog")
        try:
            for _ in range(count):
                self._workers.append(_Worker(signer.seed, producer, redact, directory, sync))
        except BaseException:
            self.close(0)
            raise

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [worker.proc.pid for worker in self._workers]

    def seal(self, jobs: Sequence[SealJob], sealed_at: datetime,
             meanwhile: Callable[[], None] | None = None) -> list[Result]:
        """Seal (and write) *jobs* at *sealed_at*, spread over the workers; one
        :data:`Result` per job, in order.  *meanwhile* is called once, while the
        workers seal the first round (the receiver retires the previous pass's
        journal entries then, instead of leaving the workers idle meanwhile); an
        exception from it is raised once the round's answers are read.

        A round that outlasts its allowance (:data:`_ROUND_SECONDS`, plus
        :data:`_SECONDS_PER_BODY` per span) has a worker that stopped reading or
        answering (SIGSTOP, a debugger, a deadlock, a disk that does not return):
        the workers are killed, so the receiver's sealer is not held for good.

        Raises:
            SealWorkerError: a worker is gone, was killed for outlasting a round's
                allowance, or the workers are closed; no result is returned, and
                what a worker wrote before it died may be on disk (the receiver
                takes those bundles as written, see
                :func:`~spanproof.exporter._recovery.written_segment`, and seals the
                other jobs itself).
        """
        if self._expiry is not None:
            raise SealWorkerError(self._expiry)
        if not self._workers:
            raise SealWorkerError("the seal workers are closed")
        results: list[Result] = []
        step = _ROUND_JOBS * len(self._workers)
        for start in range(0, len(jobs), step):
            results.extend(self._round(jobs[start:start + step], sealed_at, meanwhile))
            meanwhile = None
        return results

    def _round(self, jobs: Sequence[SealJob], sealed_at: datetime,
               meanwhile: Callable[[], None] | None) -> list[Result]:
        """:meth:`seal` for at most :data:`_ROUND_JOBS` jobs per worker."""
        count = min(len(self._workers), len(jobs))
        workers = self._workers[:count]
        spans = sum(len(job.bodies) for job in jobs)
        allowance = _ROUND_SECONDS + spans * _SECONDS_PER_BODY
        self._in_flight = (workers, len(jobs), spans, time.monotonic())
        failure: BaseException | None = None
        # From the first write: a worker that does not read blocks it once the pipe
        # is full.
        self._round_deadline = time.monotonic() + allowance
        try:
            for i, worker in enumerate(workers):
                worker.send(("seal", sealed_at, [_portable(job) for job in jobs[i::count]]))
            if meanwhile is not None:
                # The receiver's own work, not the workers': their allowance starts
                # again once it is done.
                self._round_deadline = None
                try:
                    meanwhile()
                except BaseException as e:  # the answers are read first: the pipes stay in step
                    failure = e
                self._round_deadline = time.monotonic() + allowance
            answers = []
            for i, worker in enumerate(workers):
                reply = worker.receive()
                if reply[0] != "sealed" or len(reply[1]) != len(jobs[i::count]):
                    raise SealWorkerError(f"seal worker {worker.proc.pid} answered {reply[0]!r}")
                answers.append(reply[1])
        except SealWorkerError as e:
            if self._expiry is not None:
                raise SealWorkerError(self._expiry) from e
            raise
        finally:
            self._round_deadline = None
        if failure is not None:
            raise failure
        results = [answers[i % count][i // count] for i in range(len(jobs))]
        return [("written", r[1], ChainPosition(*r[2])) if r[0] == "written" else r
                for r in results]

    def close(self, timeout: float = 10.0) -> None:
        """End the workers' input and wait for them to exit (killing a worker that
        has not after *timeout* seconds)."""
        self._watch_stop.set()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close(timeout)

    def _check_round(self, now: float) -> None:
        """The watch's call: kill the workers once the round under way outlasted
        its allowance."""
        deadline = self._round_deadline
        if deadline is None or now < deadline or self._expiry is not None:
            return
        workers, segments, spans, started = self._in_flight
        self._expiry = (
            f"seal worker(s) {', '.join(str(w.proc.pid) for w in workers)} did not finish "
            f"a round of {segments} segment(s) ({spans} span(s)) in {now - started:.1f} s "
            f"(stopped or stuck) and were killed"
        )
        self.kill()

    def kill(self) -> None:
        """Kill every worker at once, from any thread: a :meth:`seal` under way
        then raises :class:`SealWorkerError` instead of waiting on a worker that
        does not read or answer (stopped, or stuck)."""
        for worker in list(self._workers):
            try:
                worker.proc.kill()
            except OSError:
                pass


# Types orjson would otherwise encode as strings or objects raise instead.
_STRICT = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
           | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _portable(job: SealJob) -> tuple[Any, ...]:
    """*job* as plain values, its bodies as one JSON array: the receiver's bodies
    are :class:`SerializedBody` values, whose JSON is joined as it is.  Other
    bodies (mappings) are encoded with orjson: several times faster than pickle,
    and a receiver's bodies hold only strings, booleans, lists and dicts with string
    keys, which orjson encodes and decodes as they are.  Bodies JSON cannot carry (a
    lone surrogate) go as they are."""
    bodies: Any
    serialized = [body.json for body in job.bodies if isinstance(body, SerializedBody)]
    if len(serialized) == len(job.bodies):
        bodies = b"[" + b",".join(serialized) + b"]"
    else:
        try:
            bodies = orjson.dumps(job.bodies, option=_STRICT)
        except orjson.JSONEncodeError:
            bodies = list(job.bodies)
    c = job.completeness
    return (job.trace_id, bodies, _fields(job.position), job.reason,
            (c.dropped_spans, c.rejected_spans, c.unsampled_spans, c.conflicts, c.notes))


def _fields(p: ChainPosition) -> tuple[int, int, str, str]:
    return (p.segment_index, p.first_seq, p.start, p.previous_statement)


# -- worker side -------------------------------------------------------------------


def worker_main() -> None:
    """A seal worker: answer ``seal`` requests from stdin until end of input."""
    # The receiver decides when to stop: a terminal's Ctrl-C, or a service manager's
    # SIGTERM to the whole group, reaches its workers too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = child_replies("seal worker")
    inp = sys.stdin.buffer
    start = _read_frame(inp)
    if start is None or start[0] != "start":
        return
    try:
        _, seed, producer, redact, directory, sync = start
        signer = SigningKey.from_seed(seed)
        sink = None if directory is None else DirectorySink(directory, sync=sync)
    except Exception as e:
        _reply_to(out, ("error", f"{type(e).__name__}: {e}"))
        return
    _reply_to(out, ("ready",))
    # A receiver that was killed (kill -9, the OOM killer) leaves its journal to the
    # next one, which seals the journaled spans again ("recovered") as soon as it
    # starts; a round this worker still holds (read, or waiting in the pipe) must
    # not be written then as well: the spans would be certified twice.  The worker
    # is re-parented when its receiver dies.
    receiver = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != receiver

    with collecting_rarely():
        while (message := _read_frame(inp)) is not None and not orphaned():
            _, sealed_at, jobs = message
            results = _seal_and_write(jobs, sealed_at, signer, producer, redact, sink,
                                      orphaned)
            if results is None:
                return
            _reply_to(out, ("sealed", results))


def _seal_and_write(jobs: Sequence[tuple[Any, ...]], sealed_at: datetime, signer: SigningKey,
                    producer: Producer, redact: AttributeMatcher | None,
                    sink: DirectorySink | None,
                    orphaned: Callable[[], bool] = lambda: False) -> list[Result] | None:
    """The results of sealing (and writing) *jobs*; None, writing nothing, once
    *orphaned* says the receiver that sent them is gone."""
    results: list[Result] = []
    sealed: list[tuple[int, SealedBundle]] = []
    for trace_id, bodies, position, reason, completeness in jobs:
        try:
            bundle = seal(
                trace_id, orjson.loads(bodies) if isinstance(bodies, bytes) else bodies,
                ChainPosition(*position), signer=signer, producer=producer,
                sealed_at=sealed_at, reason=reason, completeness=Completeness(*completeness),
                redact=redact, reject_unencodable=True,
            )
        except Exception as e:
            results.append(("failed", f"{type(e).__name__}: {e}"))
            continue
        sealed.append((len(results), bundle))
        results.append(("sealed", bundle))
    if sink is not None and sealed:
        if orphaned():
            return None
        try:
            outcomes: list[str | OSError] = sink.write_many([bundle for _, bundle in sealed])
        except Exception as e:  # a bug, not a disk condition: every write failed
            outcomes = [OSError(f"{type(e).__name__}: {e}")] * len(sealed)
        for (i, bundle), outcome in zip(sealed, outcomes, strict=True):
            if isinstance(outcome, str):
                results[i] = ("written", outcome, _fields(bundle.next_position()))
            else:
                results[i] = ("unwritten", bundle, f"{type(outcome).__name__}: {outcome}")
    return results
