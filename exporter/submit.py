"""Producer-side delivery of sealed bundles to a witness, in the background (SPEC §12.6).

:class:`WitnessSubmitter` takes bundle paths from the sealing code and never
blocks it: :meth:`~WitnessSubmitter.submit` only hands the path to a worker
thread.  The worker records each pending submission as a small file in a queue
directory (so nothing is lost while the witness is down or when the process
restarts; the submissions that arrived since its last round are made durable
together, with one ``syncfs`` where available), POSTs the bundle to the witness,
and writes the receipt it gets back atomically beside the bundle as
``<name>.receipt.json`` (a round's receipts made durable together, in the same
way).  When the witness is
unreachable or overloaded (connection error, HTTP 3xx, 408, 429 or 5xx), delivery is
retried with exponential backoff and jitter, waiting at least what a 429 or 503
asks in its ``Retry-After`` (up to the longest backoff); a bundle the witness
rejects, a receipt that does not verify, or one this process may not write beside
the bundle (a read-only directory or file system), is moved to ``<queue>/failed/``
with the reason and logged as an error.

The clock, the jitter source and the HTTP transport are injected, so the retry
schedule is testable without sleeping; :meth:`~WitnessSubmitter.process_due` runs
one delivery round without the thread.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import queue
import random
import re
import threading
import time
import urllib.error
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from spanproof.verifier._batch import (
    BATCH_BYTES,
    BATCH_SIZE,
    MAX_BATCH,
    backoff_delay,
    batch_receipt,
    batch_request,
    batch_results,
    envelope_submission,
    retry_after_asks,
    witness_url_error,
)
from spanproof.verifier._files import make_directories, write_atomic
from spanproof.verifier.bundle import BUNDLE_SUFFIX, BundleReader
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.errors import LogInconsistent, SpanproofError, TransportError
from spanproof.verifier.keys import TrustedKey, TrustRoot
from spanproof.verifier.receipt import (
    Receipt,
    ReceiptVerifier,
    kept_receipt,
    receipt_path,
    unverified_receipt_for,
)
from spanproof.verifier.records import digest_hex
from spanproof.verifier.statement import Statement

from . import _held_locks as held_locks
from ._green import GreenSince
from ._http import KeepAlivePost
from ._leftovers import remove_old_temporaries
from ._untraced import own_thread
from .sinks import write_together

__all__ = ["Post", "WitnessSubmitter", "backoff_delay"]

_logger = logging.getLogger(__name__)

#: ``post(url, body, headers, timeout) -> (status, body, retry_after)``, where
#: *retry_after* is the answer's ``Retry-After`` header as sent (None without one);
#: raises ``OSError`` (or ``urllib.error.URLError``) when the witness cannot be
#: reached.  The default is a :class:`~spanproof.exporter._http.KeepAlivePost`: one
#: persistent connection per delivery thread.
Post = Callable[[str, bytes, Mapping[str, str], float], tuple[int, bytes, str | None]]

_MAX_RESPONSE = 4 * 1024 * 1024
_FAILED_DIR = "failed"
#: A queue entry's name (and a failed one's): its sequence number and its bundle
#: path's tag (see ``_persist``).
_ENTRY_NAME = re.compile(r"[0-9]{12,}-[0-9a-f]{16}\.json")
#: Why a receipt cannot be written that no retry fixes: the bundle's directory (or
#: its file system) is not writable for this process.
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: Receipts written (and made durable) together at most; a round writes what it has
#: at its end.
_RECEIPT_GROUP = 64
#: Bundle bytes one batch carries at most (a larger bundle goes alone), so that a
#: delivery thread holds a bounded amount in memory (a name of its own for tests).
_BATCH_BYTES = BATCH_BYTES


@dataclass
class _Pending:
    seq: int
    bundle: str
    file: str


@dataclass(frozen=True)
class _Delivered:
    """A delivery's receipt, checked, not yet written to *target*."""

    target: str
    receipt: bytes
    #: How a receipt already beside the bundle is verified (kept_receipt) when
    #: witness keys are pinned.
    verify: Callable[[bytes], object] | None


class _OneByOne(Exception):
    """The witness did not take a batch as a whole: submit its bundles one by one."""


class _Permanent(Exception):
    """A submission that retrying will not fix."""


class _Transient(Exception):
    """The witness is unreachable or asked us to come back later: after *asked*
    seconds at the soonest, when it said so (``Retry-After``)."""

    def __init__(self, message: str, asked: float = 0.0) -> None:
        super().__init__(message)
        self.asked = asked


def _longer(one: _Transient | None, other: _Transient | None) -> _Transient | None:
    """Of two failures (None: none), the one whose ``Retry-After`` asks the longer
    wait; *one* when they ask the same."""
    if one is None or (other is not None and other.asked > one.asked):
        return other
    return one


class WitnessSubmitter:
    """Submit sealed bundles to a witness from a background thread.

    Args:
        url: the witness base URL (``http://host:port``).
        queue_dir: directory holding pending submissions (created if missing).
        producer_key: the producer's own public key; sent in the
            ``Spanproof-Public-Key`` header (for witnesses that pin no producer keys)
            and needed to verify receipts.
        witness_keys: pinned witness keys; when given (with *producer_key*) each
            receipt is verified before it is stored.
        max_pending: bound on queued submissions; beyond it :meth:`submit` refuses
            (the bundle stays on disk and can be submitted later).
        concurrency: deliveries in flight to the witness once it answers (see
            :meth:`process_due`).
        batch_size: submissions sent in one request (``POST /v1/submit-batch``);
            1 sends each alone.  A witness without batches gets them one by one.
        timeout: HTTP timeout per attempt, seconds.
        backoff_initial, backoff_max: retry schedule bounds, seconds.  After a 429
            or 503 the wait is at least what its ``Retry-After`` asks, but never
            more than *backoff_max*.
        clock: monotonic seconds (injected for tests).
        wall_clock: seconds since the epoch, to read a ``Retry-After`` date
            (injected for tests).
        rng: uniform [0, 1) source for jitter (injected for tests).
        post: HTTP transport (injected for tests); by default one persistent
            connection per delivery thread, reused while the witness keeps it open.
        start: start the worker thread now.
        resume: take over the submissions a previous run left in *queue_dir*.
            False when another submitter on the same queue does (each then
            delivers only what it is given).

    Raises:
        ValueError: an argument is out of range or *url* cannot be a witness URL.
        OSError: the queue directory cannot be created or read.
    """

    def __init__(
        self,
        url: str,
        queue_dir: str | os.PathLike[str],
        *,
        producer_key: Ed25519PublicKey | None = None,
        witness_keys: Sequence[WitnessKey] = (),
        max_pending: int = 10_000,
        concurrency: int = 4,
        batch_size: int = BATCH_SIZE,
        timeout: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        post: Post | None = None,
        start: bool = True,
        resume: bool = True,
    ) -> None:
        url_error = witness_url_error(url)
        if url_error is not None:
            raise ValueError(url_error)
        if (max_pending < 1 or concurrency < 1 or not 1 <= batch_size <= MAX_BATCH
                or timeout <= 0 or not 0 < backoff_initial <= backoff_max):
            raise ValueError(f"max_pending >= 1, concurrency >= 1, 1 <= batch_size <= "
                             f"{MAX_BATCH}, timeout > 0, 0 < backoff_initial <= backoff_max")
        self._base_url = url.rstrip("/")
        self._url = self._base_url + "/v1/submit"
        self._batch_url = url.rstrip("/") + "/v1/submit-batch"
        self._dir = os.fspath(queue_dir)
        self._headers = {"Content-Type": "application/vnd.spanproof.bundle.v1+json"}
        self._trust: TrustRoot | None = None
        if producer_key is not None:
            der = producer_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self._headers["Spanproof-Public-Key"] = base64.b64encode(der).decode("ascii")
            self._trust = TrustRoot((TrustedKey.from_public_key(producer_key, "producer key"),))
        self._witness_keys = tuple(witness_keys)
        if self._witness_keys and self._trust is None:
            _logger.warning(
                "witness receipts cannot be verified without the producer's public key; "
                "they are stored unverified"
            )
        self._max_pending = max_pending
        self._timeout = timeout
        self._backoff = (backoff_initial, backoff_max)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._transport: KeepAlivePost | None = None
        if post is None:
            self._transport = post = KeepAlivePost(_MAX_RESPONSE)
        self._post: Post = post
        self._cond = threading.Condition()
        self._incoming: deque[str] = deque()
        #: The paths in _incoming that scan() found (without a receipt, then).
        self._scanned: set[str] = set()
        self._pending: dict[str, _Pending] = {}  # keyed by queue file name
        self._tags: dict[str, str] = {}  # bundle path tag -> its queue file name
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._batches = batch_size > 1  # until the witness turns out to take none
        self._batch_headers = {**self._headers, "Content-Type": "application/json"}
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._helpers: list[threading.Thread] = []
        # Helpers started once gevent patched threading since would be greenlets of
        # the worker's thread, blocking it on the job queue (see GreenSince).
        self._green = GreenSince()
        self._unwritten: list[tuple[str, _Delivered]] = []  # worker thread only
        # Why the witness gave no consistency proof this round, once it did not
        # (worker thread only; see _kept).
        self._unproved: list[str] = []
        self._failures = 0
        self._transient_events = 0
        self._not_before = 0.0
        self._closing = False
        self._closed = False
        # The directory scan() last looked in, and whether a bundle was refused for
        # room since: once the queue has drained to half, the worker looks there
        # again, so what was refused is submitted without waiting for a restart.
        self._scan_dir: str | None = None
        self._refused = False
        make_directories(os.path.join(self._dir, _FAILED_DIR))
        self._seq = 0
        #: Whether this submitter took over what an earlier run left in the queue: only
        #: one live process at a time does (the queue directory's resume lock).
        self.resumed = False
        self._resume_lock: int | None = None
        if resume:
            self.resumed, self._resume_lock = _take_resume_lock(self._dir)
            if self.resumed:
                self._remove_interrupted_writes()
                self._seq = self._load()
            else:
                _logger.info("witness queue %s: another running process is finishing what "
                             "an earlier run left there; this one submits its own bundles",
                             self._dir)
        self._thread: threading.Thread | None = None
        if start:
            self._thread = own_thread(self._run, "spanproof-witness-submitter")
            self._thread.start()

    # --- the queue ------------------------------------------------------------------

    def _remove_interrupted_writes(self) -> None:
        """Remove the temporary files of queue and failed entries that a process
        stopped while writing (``kill -9``, power loss), once old enough that no live
        process can still be writing them (SPEC §12.11)."""
        for directory in (self._dir, os.path.join(self._dir, _FAILED_DIR)):
            remove_old_temporaries(directory, _ENTRY_NAME, now=self._wall_clock())

    def _load(self) -> int:
        seq = 0
        for name in sorted(os.listdir(self._dir)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self._dir, name)
            try:
                with open(path, "rb") as f:
                    doc = json.loads(f.read())
                bundle = doc["bundle"]
                n = int(name.split("-", 1)[0])
            except (OSError, ValueError, KeyError, TypeError):
                _logger.error("ignoring unreadable queue entry %s", path)
                continue
            self._pending[name] = _Pending(n, str(bundle), path)
            self._tags[name.split("-", 1)[1].removesuffix(".json")] = name
            seq = max(seq, n + 1)
        if self._pending:
            _logger.info("%d witness submissions pending from a previous run", len(self._pending))
        return seq

    def _persist(self, bundles: Sequence[str]) -> None:
        # Called by the worker only.  One small file per pending bundle, named so
        # that a second submission of the same path is recognized; those of one
        # round are made durable together (write_together).
        # A bundle scan() found without a receipt may have one now: found while the
        # queue the last run left was being delivered, it was sent a second time.
        # (One given to submit() is sent whatever lies beside it: a receipt there
        # is checked against the new one, SPEC §12.6.)
        with self._cond:
            scanned = [bundle in self._scanned for bundle in bundles]
            self._scanned.difference_update(bundles)
        new: dict[str, str] = {}  # tag -> bundle, in submission order
        for bundle, found in zip(bundles, scanned, strict=True):
            tag = hashlib.sha256(bundle.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            if tag not in self._tags and not (found and os.path.exists(receipt_path(bundle))):
                new.setdefault(tag, bundle)
        queued = []  # sequence number, tag, bundle
        for tag, bundle in new.items():
            queued.append((self._seq, tag, bundle))
            self._seq += 1
        names = [f"{seq:012d}-{tag}.json" for seq, tag, _ in queued]
        errors = write_together([(os.path.join(self._dir, name), _entry({"bundle": b}))
                                 for name, (_, _, b) in zip(names, queued, strict=True)])
        for name, (seq, tag, bundle), error in zip(names, queued, errors, strict=True):
            if error is not None:
                _log_unqueued(bundle, error)
                continue
            self._pending[name] = _Pending(seq, bundle, os.path.join(self._dir, name))
            self._tags[tag] = name

    def _drain_incoming(self) -> None:
        # The submissions stay in _incoming until they are in _pending, so flush()
        # never sees one in neither.  Only the worker takes from _incoming.
        with self._cond:
            batch = list(self._incoming)
        if not batch:
            return
        self._persist(batch)
        with self._cond:
            for _ in batch:
                self._incoming.popleft()

    @property
    def pending(self) -> int:
        """Submissions not yet delivered (queued in memory or on disk)."""
        with self._cond:
            return len(self._incoming) + len(self._pending)

    def submit(self, bundle_path: str | os.PathLike[str]) -> bool:
        """Queue a sealed bundle for the witness; never blocks on I/O or the network.

        Returns False (and logs) when the queue is full or the submitter is closed;
        the bundle file itself is untouched and can be submitted later.  Once the
        queue has drained to half, the directory :meth:`scan` last looked in is
        looked in again, so the bundles refused meanwhile are queued then.
        """
        return self._enqueue(os.path.abspath(os.fspath(bundle_path)), scanned=False)

    def _enqueue(self, path: str, *, scanned: bool) -> bool:
        """:meth:`submit` *path*, which :meth:`scan` found (without a receipt) when
        *scanned*."""
        with self._cond:
            if self._closing:
                _logger.warning("witness submitter is closed; %s not queued", path)
                return False
            if len(self._incoming) + len(self._pending) >= self._max_pending:
                if self._scan_dir is None:
                    _logger.warning(
                        "witness queue full (%d pending); %s not queued (submit it later "
                        "with 'spanproof witness submit')", self._max_pending, path)
                elif not self._refused:  # once while full, not once per bundle
                    _logger.warning(
                        "witness queue full (%d pending); %s and the bundles after it are "
                        "queued once it has drained to half (looked for again in %s)",
                        self._max_pending, path, self._scan_dir)
                self._refused = True
                return False
            self._incoming.append(path)
            if scanned:
                self._scanned.add(path)
            self._cond.notify()
        return True

    def scan(self, directory: str | os.PathLike[str]) -> int:
        """Queue every bundle below *directory* that has no receipt yet (recovery
        after a crash between sealing and queueing); return how many were queued.
        Bundles refused for room are looked for here again once the queue drains."""
        with self._cond:
            self._scan_dir = os.fspath(directory)
        queued = 0
        for root, _dirs, files in os.walk(directory):
            for name in sorted(files):
                path = os.path.join(root, name)
                if (
                    name.endswith(BUNDLE_SUFFIX)
                    and not os.path.exists(receipt_path(path))
                    and self._enqueue(os.path.abspath(path), scanned=True)
                ):
                    queued += 1
        return queued

    # --- delivery -------------------------------------------------------------------

    def process_due(self) -> float | None:
        """Persist new submissions and try to deliver every pending one once, unless
        backing off.  Return the seconds until the next attempt is due (None when
        nothing is pending).

        The oldest pending submission goes first, alone: while the witness is down
        that is the only attempt per backoff period.  Once it is delivered, the
        others go with ``concurrency`` in flight (see :meth:`_deliver_window`), so a
        round trip to the witness does not bound the submission rate.  After a
        transient failure no new delivery starts until the backoff has passed."""
        self._drain_incoming()
        order = sorted(self._pending, key=lambda n: self._pending[n].seq)
        self._unproved = []  # once the witness gave no proof, none is asked this round
        if order and self._clock() >= self._not_before and not self._stopping():
            first = order[0]
            transient = self._settle(first, self._attempt(self._pending[first].bundle))
            if transient is None and len(order) > 1:
                transient = self._deliver_window(
                    [(name, self._pending[name].bundle) for name in order[1:]]
                )
            # Of the round's failures, the one that asks the longest wait counts.
            transient = _longer(transient, self._write_receipts())
            if transient is not None:
                self._failures += 1
                self._transient_events += 1
                # The longer of the own backoff and the witness's Retry-After, which
                # a broken or hostile witness cannot stretch beyond backoff_max.
                delay = max(backoff_delay(self._failures, *self._backoff, self._rng),
                            min(transient.asked, self._backoff[1]))
                self._not_before = self._clock() + delay
                _logger.warning(
                    "witness unavailable (%s); %d submissions pending, retrying in %.1f s",
                    transient, len(self._pending), delay,
                )
            else:
                self._failures = 0
        self._queue_refused()
        if not self._pending and not self._incoming:
            return None
        return max(0.0, self._not_before - self._clock())

    def _queue_refused(self) -> None:
        """Once the queue has drained to half after refusing bundles for room, look
        for them again where :meth:`scan` last looked (worker thread only)."""
        with self._cond:
            if (not self._refused or self._scan_dir is None or self._closing
                    or len(self._incoming) + len(self._pending) > self._max_pending // 2):
                return
            self._refused = False
            directory = self._scan_dir
        queued = self.scan(directory)
        if queued:
            _logger.info("witness queue: %d bundle(s) refused while it was full queued now",
                         queued)

    def _stopping(self) -> bool:
        # close() was called on a submitter with a worker thread: start nothing new.
        with self._cond:
            return self._closing and self._thread is not None

    def _settle(self, name: str, outcome: Exception | _Delivered) -> _Transient | None:
        """Record one delivery's outcome (worker thread only, which alone changes
        ``_pending``); return it, or a failure to write the receipts, when it is a
        transient failure.  A receipt waits for the others of its group (see
        :meth:`_write_receipts`)."""
        if isinstance(outcome, _Delivered):
            self._unwritten.append((name, outcome))
            if len(self._unwritten) >= _RECEIPT_GROUP:
                return self._write_receipts()
            return None
        if isinstance(outcome, _Transient):
            return outcome
        self._retire(self._pending[name], str(outcome))
        return None

    def _write_receipts(self) -> _Transient | None:
        """Write the receipts delivered since the last call beside their bundles, made
        durable together (:func:`~spanproof.exporter.sinks.write_together`), and only
        then forget their queue files.  A receipt that cannot be written now (a full
        disk, an I/O error) stays pending: the witness answers its next submission
        with the same entry, as does one beside whose bundle a receipt is kept that
        the witness gave no consistency proof for now (see :meth:`_kept`).  One this
        process may not write at all (``EACCES``, ``EPERM``, ``EROFS``) is retired
        to ``failed/`` with the reason, once."""
        batch, self._unwritten = self._unwritten, []
        # Each once, and only while still pending (should an earlier round have failed).
        todo = []
        failure: _Transient | None = None
        for name, got in dict(batch).items():
            if name not in self._pending:
                continue
            kept = self._kept(name, got)
            if isinstance(kept, _Transient):
                failure = _longer(failure, kept)  # stays pending: delivered again later
            elif not kept:
                todo.append((name, got))
        errors = write_together([(got.target, got.receipt) for _, got in todo])
        for (name, got), error in zip(todo, errors, strict=True):
            if error is None:
                self._remove(name)
            elif error.errno in _NOT_WRITABLE:
                # Retrying would only ask the witness again, and hold up the other
                # deliveries with its backoff (SPEC §12.11).
                self._retire(self._pending[name], f"cannot write the receipt {got.target}: "
                             f"{error.strerror} (the witness logged the bundle; submit it "
                             f"again once the receipt can be written)")
            else:
                failure = _longer(failure, _Transient(f"cannot write {got.target}: {error}"))
        return failure

    def _kept(self, name: str, got: _Delivered) -> bool | _Transient:
        """Whether a receipt already beside the bundle is kept instead of *got*'s
        (:func:`~spanproof.verifier.receipt.kept_receipt`): the submission is then
        done, and nothing is written over it.  When both verify and the kept one's
        tree is the smaller, the witness is asked for the consistency proof between
        the two (SPEC §12.6), as ``spanproof witness submit`` asks.  A rollback or
        fork they show is logged as an error, and ``kept_receipt`` has kept *got*'s
        receipt beside the bundle as its evidence.  A witness that cannot give the
        proof now (or a submitter closing) makes it a transient failure: the
        submission stays pending, to be delivered and checked again after the
        backoff, as ``witness submit`` exits 3; the round's first such failure
        spares the round's other submissions the wait for another."""
        def prove(size1: int, size2: int) -> list[bytes]:
            if self._unproved:
                raise TransportError(self._unproved[0])
            if self._stopping():
                raise TransportError("the submitter is closing")
            return self._prove(size1, size2)

        try:
            kept = kept_receipt(got.target, Receipt.from_bytes(got.receipt), got.verify,
                                prove)
        except LogInconsistent as e:
            _logger.error("spanproof: witness submission of %s: %s", got.target, e)
            kept = str(e)
        except TransportError as e:
            from spanproof.witness.client import HTTPStatusError

            self._unproved = self._unproved or [str(e)]
            # A 429's or 503's Retry-After is kept, as for a submission's answer.
            asked = (self._unavailable(e.status, e.retry_after).asked
                     if isinstance(e, HTTPStatusError) else 0.0)
            return _Transient(f"the receipt already beside {got.target} is from a smaller "
                              f"tree, and the witness gave no consistency proof now ({e})",
                              asked)
        except SpanproofError:
            return False  # checked when it was delivered: not expected
        if kept is None:
            return False
        _logger.info("spanproof: %s", kept)
        self._remove(name)
        return True

    def _prove(self, size1: int, size2: int) -> list[bytes]:
        """The witness's consistency proof from tree size *size1* to *size2* (SPEC
        §12.7 step 6), for a receipt already beside a bundle and its new one.

        Raises:
            LogInconsistent: the witness does not prove it.
            TransportError: the witness is unavailable.
        """
        from spanproof.witness.client import WitnessClient
        from spanproof.witness.monitor import fetch_consistency_proof

        return fetch_consistency_proof(WitnessClient(self._base_url, timeout=self._timeout),
                                       size1, size2)

    def _deliver_window(self, items: Sequence[tuple[str, str]]) -> _Transient | None:
        """Deliver *items* (queue name, bundle path) in order with ``concurrency``
        deliveries in flight, each of up to ``batch_size`` submissions (one request
        to ``/v1/submit-batch``) while the witness takes batches, else of one: this
        thread and the helper threads each take the next as soon as their previous
        one is answered, so one slow answer does not hold up the others.  After a
        transient failure, or once closing, no new delivery starts; those in flight
        finish.  Each outcome is settled on this thread as it arrives.  Returns the
        first transient failure, if any."""
        position = 0  # the next item to take
        feed_lock = threading.Lock()
        stop = threading.Event()
        Outcomes = list[tuple[str, Exception | _Delivered]]

        def take() -> list[tuple[str, str]]:
            # Up to batch_size items, and no more than _BATCH_BYTES of bundles unless
            # a single one is larger.
            nonlocal position
            with feed_lock:
                if stop.is_set() or self._stopping():
                    return []
                limit = self._batch_size if self._batches else 1
                taken: list[tuple[str, str]] = []
                total = 0
                while position < len(items) and len(taken) < limit:
                    size = _file_size(items[position][1]) if limit > 1 else 0
                    if taken and total + size > _BATCH_BYTES:
                        break
                    taken.append(items[position])
                    position += 1
                    total += size
                return taken

        def deliver(taken: list[tuple[str, str]]) -> Outcomes:
            bundles = [bundle for _, bundle in taken]
            got = self._attempt_batch(bundles) if len(taken) > 1 else [self._attempt(bundles[0])]
            if any(isinstance(outcome, _Transient) for outcome in got):
                stop.set()
            return [(name, outcome) for (name, _), outcome in zip(taken, got, strict=True)]

        results: queue.SimpleQueue[Outcomes | None] = queue.SimpleQueue()

        def help_deliver() -> None:
            try:
                while taken := take():
                    results.put(deliver(taken))
            finally:
                results.put(None)  # this helper is done

        deliveries = -(-len(items) // (self._batch_size if self._batches else 1))
        helpers = min(self._concurrency - 1, deliveries - 1)
        if helpers > 0:
            helpers = min(helpers, self._start_helpers())
            for _ in range(helpers):
                self._jobs.put(help_deliver)
        transient: _Transient | None = None
        done = 0

        def settle(outcomes: Outcomes | None) -> None:
            nonlocal transient, done
            if outcomes is None:
                done += 1
                return
            for name, outcome in outcomes:
                failed = self._settle(name, outcome)
                if failed is not None:
                    stop.set()
                    transient = _longer(transient, failed)

        try:
            while taken := take():
                settle(deliver(taken))
                while True:  # what the helpers finished meanwhile
                    try:
                        settle(results.get_nowait())
                    except queue.Empty:
                        break
            while done < helpers:
                settle(results.get())
        except BaseException:
            # Let the helpers finish before the error leaves; what they delivered is
            # still pending, and delivered again next time (the witness is idempotent).
            stop.set()
            while done < helpers:
                if results.get() is None:
                    done += 1
            raise
        return transient

    def _start_helpers(self) -> int:
        """Start the delivery helpers not yet running; how many run.

        Daemon threads, like the worker, so a witness that stops answering never
        holds up the application's exit; started once, on the first batch.  Where
        no thread may start (at interpreter exit on Python 3.12, or out of threads)
        the worker delivers alone, and the next batch tries again; once gevent
        patched threading after this submitter was made, it delivers alone for good."""
        while len(self._helpers) < self._concurrency - 1 and not self._green.turned:
            helper = own_thread(self._help, "spanproof-witness-delivery")
            try:
                helper.start()
            except RuntimeError:
                break
            self._helpers.append(helper)
        return len(self._helpers)

    def _help(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def _attempt(self, bundle: str) -> Exception | _Delivered:
        try:
            return self._deliver(bundle)
        except (_Transient, _Permanent) as e:
            return e
        except Exception as e:  # a bug must not pass for a delivery: retry later
            _logger.exception("witness submission of %s failed unexpectedly", bundle)
            return _Transient(f"{type(e).__name__}: {e}")

    def _attempt_batch(self, bundles: Sequence[str]) -> list[Exception | _Delivered]:
        """Deliver *bundles* in one ``/v1/submit-batch`` request; each one's outcome.
        A witness without the endpoint (404, 405), or that refuses the request as a
        whole with another 4xx (too large, say), gets them one by one instead; after
        a 404 or 405, always."""
        try:
            return self._deliver_batch(bundles)
        except _Transient as e:
            return [e] * len(bundles)
        except _OneByOne:
            return [self._attempt(bundle) for bundle in bundles]
        except Exception as e:  # a bug must not pass for a delivery: retry later
            _logger.exception("witness batch submission failed unexpectedly")
            return [_Transient(f"{type(e).__name__}: {e}")] * len(bundles)

    def _deliver_batch(self, bundles: Sequence[str]) -> list[Exception | _Delivered]:
        outcomes: list[Exception | _Delivered | None] = []
        sent: list[tuple[int, bytes]] = []  # position in outcomes, the bytes sent
        for bundle in bundles:
            try:
                sent.append((len(outcomes), _read_bundle(bundle)))
            except _Permanent as e:
                outcomes.append(e)
                continue
            outcomes.append(None)
        if sent:
            body = batch_request([data for _, data in sent])
            try:
                status, answer, retry_after = self._post(self._batch_url, body,
                                                         self._batch_headers, self._timeout)
            except (OSError, urllib.error.URLError) as e:
                raise _Transient(str(getattr(e, "reason", e))) from e
            if _retryable(status):
                raise self._unavailable(status, retry_after)
            if status in (404, 405):
                _logger.info("the witness takes no batches (HTTP %d); submitting one by one",
                             status)
                self._batches = False
                raise _OneByOne
            if status != 200:
                raise _OneByOne  # refused as a whole: let each get its own answer
            try:
                results = batch_results(answer, len(sent))
            except ValueError as e:
                _logger.warning("the witness's answer to a batch is malformed (%s); "
                                "submitting its bundles one by one", e)
                raise _OneByOne from e
            verifier = self._receipt_verifier()  # one per batch: its receipts share a checkpoint
            for (position, data), result in zip(sent, results, strict=True):
                try:
                    outcomes[position] = self._batch_outcome(bundles[position], data, result,
                                                             verifier)
                except (_Transient, _Permanent) as e:
                    outcomes[position] = e
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(bundles)
        return done

    def _batch_outcome(self, bundle: str, data: bytes, result: dict[str, Any],
                       verifier: ReceiptVerifier | None) -> _Delivered:
        _check_answer(result["status"], result.get("error", ""))
        try:
            receipt = batch_receipt(result)
        except SpanproofError as e:
            raise _Permanent(f"witness receipt is not a receipt: {e}") from e
        return self._checked_receipt(bundle, data, receipt, verifier)

    def _remove(self, name: str) -> None:
        item = self._pending.pop(name)
        self._forget_tag(name)
        try:
            os.unlink(item.file)
        except FileNotFoundError:
            pass

    def _retire(self, item: _Pending, reason: str) -> None:
        _logger.error("witness submission of %s failed permanently: %s", item.bundle, reason)
        name = os.path.basename(item.file)
        target = os.path.join(self._dir, _FAILED_DIR, name)
        try:
            # Atomic and durable before the queue file goes: a crash leaves the
            # submission queued (and retired again), never half an entry (SPEC §12.11).
            write_atomic(target, _entry({"bundle": item.bundle, "reason": reason}))
            os.unlink(item.file)
        except OSError as e:
            _logger.error("cannot move %s to %s: %s", item.file, target, e)
        self._pending.pop(name, None)
        self._forget_tag(name)

    def _forget_tag(self, name: str) -> None:
        tag = name.split("-", 1)[1].removesuffix(".json")
        if self._tags.get(tag) == name:
            del self._tags[tag]

    def _deliver(self, bundle: str) -> _Delivered:
        data = _read_bundle(bundle)
        status, body = self._submit(data)
        if status == 413:
            # Larger than the witness takes (a segment cut at 64 MiB of values is
            # larger than its default --max-body): its signed statement alone, as
            # a DSSE envelope, which the witness logs without its records.
            try:
                envelope = envelope_submission(data)
            except SpanproofError as e:
                raise _Permanent(f"bundle header cannot be read: {e}") from e
            status, body = self._submit(envelope)
            _logger.warning("witness submission of %s: larger than the witness takes (HTTP "
                            "413), sent as its DSSE envelope alone (its records not checked "
                            "by the witness)", bundle)
        _check_answer(status, body)
        return self._checked_receipt(bundle, data, body, self._receipt_verifier())

    def _submit(self, data: bytes) -> tuple[int, bytes]:
        """POST *data* to ``/v1/submit``: the answer's status and body, a retryable
        one raised as ``_Transient``."""
        try:
            status, body, retry_after = self._post(self._url, data, self._headers,
                                                   self._timeout)
        except (OSError, urllib.error.URLError) as e:
            raise _Transient(str(getattr(e, "reason", e))) from e
        if _retryable(status):
            raise self._unavailable(status, retry_after)
        return status, body

    def _unavailable(self, status: int, retry_after: str | None) -> _Transient:
        """The failure of a retryable answer *status*; a 429's or 503's *retry_after*
        (the ``Retry-After`` header, RFC 9110 §10.2.3) says how long the witness
        asks to be left alone, unless it is malformed."""
        asked = retry_after_asks(status, retry_after, self._wall_clock())
        if asked is None:
            return _Transient(f"HTTP {status}")
        return _Transient(f"HTTP {status}, Retry-After {asked:.0f} s", asked)

    def _receipt_verifier(self) -> ReceiptVerifier | None:
        """A verifier for the receipts of one delivery; None when none are verified."""
        if self._witness_keys and self._trust is not None:
            return ReceiptVerifier(self._witness_keys)
        return None

    def _checked_receipt(self, bundle: str, data: bytes, receipt: bytes,
                         verifier: ReceiptVerifier | None) -> _Delivered:
        """*receipt* for the submitted bundle *data* (read from *bundle*), verified
        with *verifier* (when witness keys are pinned), with where it goes."""
        verify: Callable[[bytes], object] | None = None
        if verifier is not None:
            assert self._trust is not None
            statement = _own_statement(data, self._trust)

            def verify(raw: bytes) -> object:
                return verifier.verify(raw, statement)
            try:
                verified = verifier.verify(receipt, statement)
            except SpanproofError as e:
                if not _is_receipt(receipt):
                    # A 2xx that is no receipt at all (a proxy's page): not delivered,
                    # and tried again, as when no witness key is pinned.
                    raise _Transient(f"witness answer is not a receipt: {e}") from e
                raise _Permanent(f"witness receipt does not verify: {e}") from e
            _logger.debug(  # one a bundle: a stock exporter logs nothing it delivers
                "receipt for %s verified: index %d of %s (tree size %d)",
                bundle, verified.leaf_index, verified.origin, verified.tree_size,
            )
        else:
            try:
                receipt = unverified_receipt_for(data, receipt)
            except SpanproofError as e:
                # A 2xx that is not this bundle's receipt (a proxy's page, say): the
                # submission is not delivered, and is tried again.
                raise _Transient(f"witness answer is not this bundle's receipt: {e}") from e
            _logger.debug("receipt for %s stored (not verified: no witness key pinned)", bundle)
        try:
            return _Delivered(receipt_path(bundle), receipt, verify)
        except ValueError as e:
            raise _Permanent(str(e)) from e

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            failed = False
            try:
                wait = self.process_due()
            except Exception:  # never let the worker die silently
                _logger.exception("witness submitter round failed")
                wait, failed = self._backoff[0], True
            with self._cond:
                if self._closing:
                    return
                # After a failed round, wait even with submissions waiting: the
                # round that failed on them would fail again at once, and again.
                if failed or not self._incoming:
                    self._cond.wait(timeout=60.0 if wait is None else min(wait, 60.0))
                if self._closing:
                    return

    def flush(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for every queued submission to be delivered.

        Returns True when nothing is pending.  Returns early with False when the
        witness is unavailable (a delivery attempt failed, or the worker is backing
        off): what is pending stays queued on disk for a later start.
        """
        deadline = time.monotonic() + timeout
        failures_before = self._transient_events
        while True:
            with self._cond:
                if not self._incoming and not self._pending:
                    return True
                if (self._transient_events != failures_before
                        or self._clock() < self._not_before):
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.notify_all()
                self._cond.wait(min(remaining, 0.05))

    def close(self, timeout: float | None = None) -> bool:
        """Stop the worker (waiting up to *timeout* seconds for a delivery in
        progress) and persist what is still queued in memory.  Idempotent.

        Returns True when the worker stopped within *timeout*.
        """
        with self._cond:
            if self._closed:
                return True
            self._closing = True
            self._cond.notify_all()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
        if stopped:
            for _ in self._helpers:
                self._jobs.put(None)
            if self._transport is not None:
                self._transport.close()
            try:
                self._drain_incoming()
            except Exception:  # an exporter's shutdown() must not raise
                _logger.exception("witness submitter: cannot queue the last submissions")
            with self._cond:
                self._closed = True
            held_locks.release(self._resume_lock)
        with self._cond:
            queued, unqueued = len(self._pending), len(self._incoming)
        # The last word the process says of them: without it, its last line was a
        # retry's, and nothing pointed at the queue.
        if unqueued:  # the worker was still delivering: they were never written
            _logger.warning(
                "%d bundle(s) not yet logged with the witness %s (a delivery was still "
                "under way): %d queued in %s, sent at the next start; the other %d are "
                "not queued, and are found again by the next start's scan or given to "
                "'spanproof witness submit'",
                queued + unqueued, self._base_url, queued, self._dir, unqueued)
        elif queued:
            _logger.warning(
                "%d bundle(s) not yet logged with the witness %s are queued in %s: "
                "they are sent at the next start, or by 'spanproof witness submit'",
                queued, self._base_url, self._dir)
        return stopped


#: The queue directory's lock, held by the one live submitter that resumed the queue.
_RESUME_LOCK = ".resume.lock"
def _take_resume_lock(directory: str) -> tuple[bool, int | None]:
    """Whether this process may resume the queue in *directory*, and the descriptor
    holding its lock (None where none is held: locking is not to be had there, and
    the queue is resumed as before).  Two gunicorn workers started on their own each
    resumed it, and each sent every bundle an earlier run left, and the other's.  A
    forked process closes its copy (:mod:`._held_locks`), or it would keep the lock,
    and the queue, from the next process that starts once its parent has stopped."""
    path = os.path.join(directory, _RESUME_LOCK)
    resume = True

    def open_and_lock() -> int | None:
        nonlocal resume
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            _logger.warning("witness queue: cannot open %s (%s); resuming the queue "
                            "without its lock", path, e.strerror or e)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            resume = e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
            return None
        return fd

    fd = held_locks.holding(open_and_lock)
    return resume, fd


@dataclass(frozen=True)
class _OwnStatement:
    """A bundle's signed statement, verified against the producer's own key: what a
    receipt's leaf is recomputed from (a :class:`~spanproof.verifier.receipt.LeafSource`)."""

    statement: Statement
    statement_digest: str
    signer_keyid: str


def _own_statement(data: bytes, trust: TrustRoot) -> _OwnStatement:
    """Read the header of the bundle bytes that were submitted and verify its
    statement's signature (SPEC §8 steps 1-4).  Its records are not read: the
    witness verified them before logging the statement, whose head binds them, and
    a receipt proves only that this statement was logged.

    Raises:
        _Permanent: the header cannot be read or its signature does not verify.
    """
    try:
        envelope, _ = BundleReader(io.BytesIO(data)).read_header()
        signer = envelope.verify(trust)  # verify first, then parse the verified bytes
        statement = Statement.from_payload(envelope.payload)
    except SpanproofError as e:
        raise _Permanent(f"own bundle's statement does not verify: {e}") from e
    return _OwnStatement(statement, digest_hex(envelope.payload), signer.keyid)


def _is_receipt(answer: bytes) -> bool:
    """Whether *answer* is a well-formed receipt (SPEC §12.5 step 1), whatever it
    proves."""
    try:
        Receipt.from_bytes(answer)
    except SpanproofError:
        return False
    return True


def _read_bundle(bundle: str) -> bytes:
    try:
        with open(bundle, "rb") as f:
            return f.read()
    except OSError as e:
        raise _Permanent(f"cannot read bundle: {e.strerror}") from e


def _entry(doc: Mapping[str, str]) -> bytes:
    """A queue or failed entry's bytes: JSON, every character outside ASCII escaped,
    so that a path that is not UTF-8 (``os.fsdecode``'s lone surrogates, which
    canonical JSON refuses) is kept as it is, and read back by ``json.loads``."""
    return json.dumps(dict(doc), ensure_ascii=True, sort_keys=True,
                      separators=(",", ":")).encode("ascii")


def _retryable(status: int) -> bool:
    """An HTTP status the witness may answer differently later (SPEC §12.11): 408,
    429, 5xx, and a 3xx, a redirect (not followed: a proxy's, or a maintenance
    page's, not the witness's answer), as ``spanproof witness submit`` reads it."""
    return status in (408, 429) or 300 <= status < 400 or status >= 500


def _check_answer(status: int, reason: bytes | str) -> None:
    """Raise for a witness's answer to one submission that is not a receipt:
    ``_Transient`` when worth retrying, ``_Permanent`` for a rejection (*reason*:
    the answer's body, or its ``error`` text)."""
    if _retryable(status) or (200 <= status < 300 and status not in (200, 201)):
        # A 2xx the witness never answers (202, 204, ...) is a proxy's, not a refusal.
        raise _Transient(f"HTTP {status}")
    if status not in (200, 201):
        text = reason if isinstance(reason, str) else _error_text(reason)
        raise _Permanent(f"witness rejected the bundle: HTTP {status}: {text}")


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # reading it reports the error, for this bundle alone


def _log_unqueued(bundle: str, error: OSError) -> None:
    _logger.error("cannot queue %s for the witness (%s); submit it later with "
                  "'spanproof witness submit'", bundle, error)


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return body[:200].decode("utf-8", "replace")
