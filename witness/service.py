"""The witness itself, without HTTP: re-verify, append, sign, answer (SPEC §12.8).

:class:`Witness` owns the log's store, its in-memory Merkle tree and its signing
key.  Every append is serialized by one lock; the entry and the checkpoint that
covers it are committed together, and the checkpoint kept outside the database
too (``signed_file``), before a receipt is returned.  On start the
tree is rebuilt from the stored leaves and checked against every stored signed
checkpoint; the witness refuses to run on a log that does not match them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from spanproof.verifier._files import read_named_file, write_atomic
from spanproof.verifier.bundle import BUNDLE_MEDIA_TYPE, LARGE_RECORD_BYTES, BundleReader
from spanproof.verifier.canonical import canonicalize, parse_strict
from spanproof.verifier.checkpoint import Checkpoint, verify_checkpoint
from spanproof.verifier.dsse import PAYLOAD_TYPE, Envelope
from spanproof.verifier.errors import (
    InvalidBundle,
    InvalidKey,
    SpanproofError,
    TransportError,
    TrustError,
    VerificationError,
)
from spanproof.verifier.keys import TrustedKey, TrustRoot, format_time, refuse_small_order
from spanproof.verifier.merkle import leaf_hash
from spanproof.verifier.receipt import Receipt, ReceiptVerifier, WitnessLeaf
from spanproof.verifier.records import digest_hex
from spanproof.verifier.statement import Statement
from spanproof.verifier.verify import CHECKS, BundleReport, Check, Status, Verdict, check_bundle

from .signing import CheckpointSigner
from .store import Entry, Store, StoredCheckpoint
from .tree import MerkleTree

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_HEADER_BYTES",
    "PRODUCER_PINNED",
    "PRODUCER_UNVERIFIED",
    "VERIFY_WAIT",
    "LogCorrupted",
    "SubmissionRejected",
    "SubmissionTooLarge",
    "SubmitResult",
    "VerifierBusy",
    "Witness",
    "parse_public_key_header",
]

_logger = logging.getLogger(__name__)

PRODUCER_PINNED = "pinned"
PRODUCER_UNVERIFIED = "unverified-producer"
#: The largest submission taken as a bare DSSE envelope (parsed whole; a statement
#: is a few KB, ~250 KB for 10,000 conflicts).  A bundle is read a line at a time.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
#: The largest bundle header (SPEC §8 step 1 item 4's H) taken.  A larger one is
#: checked token by token before any signature can be (its ``receipts`` member is
#: signed by no one): one of 64 MiB of ``1e+21`` took 33 s to refuse, with every
#: other submission waiting.  One of this size is parsed in ~0.4 s at most; a
#: producer's is a few KB (~330 KB with 10,000 conflicts).  A bundle over it is
#: answered 413, as one over ``--max-body`` is, and its submitter sends its envelope
#: alone.
MAX_HEADER_BYTES = LARGE_RECORD_BYTES
#: How long a submission (or check) waits for its turn to be verified before it is
#: refused as busy: waited for without end, each waited for however long the ones
#: before it took (three 64 MiB headers, before they were refused, held one 107 s).
VERIFY_WAIT = 10.0
# How a bundle file begins (SPEC §7.1: its header line, canonical).
#: The most entries one look-up answers (``GET /v1/lookup``'s page); ``next`` in the
#: answer says where the following page starts.  An entry is ~3 KB of JSON with its
#: receipt, so a page is ~3 MB: in a log open to any producer key, anyone can give
#: a trace id or a statement digest as many entries as they like.
LOOKUP_PAGE_ENTRIES = 1000
_BUNDLE_START = b'{"envelope":'


class LogCorrupted(SpanproofError):
    """The stored log does not match its own signed checkpoints (or another key or
    origin signed them); the witness refuses to start."""


class SubmissionRejected(VerificationError):
    """A submitted bundle failed re-verification; ``report`` says which check."""

    def __init__(self, message: str, report: BundleReport) -> None:
        super().__init__(message)
        self.report = report


class SubmissionTooLarge(InvalidBundle):
    """A bundle whose header is larger than the witness takes (``MAX_HEADER_BYTES``);
    its envelope alone is taken."""


class VerifierBusy(SpanproofError):
    """No turn to be verified within the wait (``VERIFY_WAIT``): try again later."""


@dataclass(frozen=True)
class SubmitResult:
    """The answer to one submission: the receipt, the entry, whether it was new and
    whether the entry is in conflict with another statement for its segment."""

    receipt: Receipt
    entry: Entry
    created: bool
    conflict: bool


@dataclass(frozen=True)
class _Verified:
    statement: Statement
    statement_digest: str
    signer_keyid: str
    envelope: Envelope
    report: BundleReport
    producer_key: str
    checked: str


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _refuse_large_header(body: bytes, what: str = "bundle") -> None:
    """Refuse the bundle *body* when its header is over ``MAX_HEADER_BYTES``: found by
    its first line feed alone, nothing parsed.

    Raises:
        SubmissionTooLarge: it is.
    """
    if not body.startswith(_BUNDLE_START):
        return
    line = body.find(b"\n") + 1 or len(body)
    # H is line 1 less the 13 bytes ',"records":[' LF, plus '}' (SPEC §8 step 1).
    if line - 12 > MAX_HEADER_BYTES:
        raise SubmissionTooLarge(
            f"{what}: its header line is {line} bytes, and this witness takes a bundle "
            f"header of at most {MAX_HEADER_BYTES} bytes (it is checked before its "
            "signature is); send the bundle's DSSE envelope alone")


def _envelope_report(source: str, statement: Statement, digest: str, keyid: str) -> BundleReport:
    # What the witness checked for an envelope-only submission (no records).
    done = {
        "format": "DSSE envelope submitted without records",
        "envelope": f"DSSE envelope, payloadType {PAYLOAD_TYPE}",
        "signature": f"Ed25519 signature by key {keyid[:16]}",
        "statement": (
            f"trace {statement.trace_id} segment {statement.segment_index}, "
            f"{statement.record_count} records"
        ),
        "key-validity": "sealing time within the signer's validity window",
    }
    checks = tuple(
        Check(name, i + 1, Status.PASS, done[name])
        if name in done
        else Check(name, i + 1, Status.SKIPPED, "records not submitted (envelope only)")
        for i, name in enumerate(CHECKS)
    )
    return BundleReport(source, checks, Verdict.OK, statement, digest, keyid)


def parse_public_key_header(value: str) -> TrustRoot:
    """Trust root of the one key in a ``Spanproof-Public-Key`` header: standard
    base64 of the key's DER SubjectPublicKeyInfo.

    Raises:
        InvalidKey: not base64 DER of an Ed25519 public key, or a key of small order
            (SPEC §6.1), for which anyone can make signatures that verify.
    """
    try:
        der = base64.b64decode(value.strip(), validate=True)
        key = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError, TypeError) as e:
        raise InvalidKey("Spanproof-Public-Key: not base64 DER SubjectPublicKeyInfo") from e
    except UnsupportedAlgorithm as e:  # a key type or curve OpenSSL does not know
        raise InvalidKey(f"Spanproof-Public-Key: key is not Ed25519 ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidKey("Spanproof-Public-Key: key is not Ed25519")
    # Logged as its producer's, an entry would then name a key anyone signs for.
    refuse_small_order(key, "Spanproof-Public-Key")
    return TrustRoot((TrustedKey.from_public_key(key, "Spanproof-Public-Key header"),))


class Witness:
    """One witness log.

    Args:
        store: the database.
        signer: the checkpoint key; its name is the log's origin.
        producer_trust: producer keys whose signatures the witness accepts; None
            accepts any valid signature by a key the submitter supplies (recorded
            as ``unverified-producer``).
        clock: the time source for submission and signing times.
        signed_file: where the latest checkpoint the key signed is kept, outside the
            database (``witness serve``: ``<key>.checkpoint``), or None.  A log that
            does not extend it is refused (SPEC §12.8 step 5).  It is rewritten on
            start, by :meth:`keep_latest`, and after every append before the new
            checkpoint is handed out (in a receipt, a look-up or as the latest):
            appends that commit while it is being written are covered by the next
            write, one for them all.
        earlier_files: where earlier runs may have kept it instead (``witness
            serve``: beside the key's name as given, or beside the key file before
            a state directory was used); read on start only, and the log must
            extend each that exists too.
        verify_wait: how long a submission or check waits for its turn to be
            verified (one at a time) before :class:`VerifierBusy` refuses it; None:
            ``VERIFY_WAIT`` when the witness is made.

    Raises:
        LogCorrupted: the stored log does not match its signed checkpoints, was
            signed by another key or origin, or does not extend the checkpoint in
            *signed_file*.
        TransportError: the database cannot be read or written.
    """

    def __init__(
        self,
        store: Store,
        signer: CheckpointSigner,
        *,
        producer_trust: TrustRoot | None = None,
        clock: Callable[[], datetime] = _utcnow,
        signed_file: str | None = None,
        earlier_files: Sequence[str] = (),
        verify_wait: float | None = None,
    ) -> None:
        self._store = store
        self._signed_file = signed_file
        self._earlier_files = tuple(earlier_files)
        self._signer = signer
        self._producer_trust = producer_trust
        self._clock = clock
        self._lock = threading.Lock()
        # Submissions (and checks) are verified one at a time.  Parsing a hostile
        # line of tiny JSON values takes ~30 times its size before it can fail (a
        # 60 MB line ~2 GB, SPEC 7.1 allows 64 MiB): verified side by side, the
        # app's 8 requests at once took ~8 times that.  Verifying is bound to the
        # GIL anyway; the appends (their fsync) still overlap it.  The wait for it is
        # bounded: a turn waited for without end let one slow verification hold every
        # other submitter for as long as it took.
        self._verifying = threading.Lock()
        self._verify_wait = VERIFY_WAIT if verify_wait is None else verify_wait
        self._tree = MerkleTree()
        # The latest checkpoint committed (what the next append extends), and the
        # latest handed out: the same, but for the moment after an append commits
        # while signed_file is being written to cover it.
        self._latest: StoredCheckpoint
        self._published: StoredCheckpoint
        # One write of signed_file at a time, and whether the last one failed (warned
        # once until one works).
        self._signed_lock = threading.Lock()
        self._signed_failing = False
        self._open()

    @property
    def origin(self) -> str:
        """The log's origin (the checkpoint key's name)."""
        return self._signer.origin

    @property
    def signer(self) -> CheckpointSigner:
        """The checkpoint key."""
        return self._signer

    @property
    def pins_producers(self) -> bool:
        """True when producer keys are configured."""
        return self._producer_trust is not None

    def _open(self) -> None:
        stored_origin = self._store.get_meta("origin")
        if stored_origin is None:
            self._store.set_meta("origin", self.origin)
        elif stored_origin != self.origin:
            raise LogCorrupted(
                f"{self._store.path} is the log of origin {stored_origin!r}, not {self.origin!r}"
            )
        for index, h, data in self._store.leaves():
            if index != self._tree.size:
                raise LogCorrupted(f"log entry {self._tree.size} is missing (found {index})")
            if leaf_hash(data) != h:
                raise LogCorrupted(f"log entry {index}: stored leaf does not hash to its leaf hash")
            self._tree.append(h)
        checkpoints = self._store.checkpoints()
        key = [self._signer.key]
        for cp in checkpoints:
            try:
                verified = verify_checkpoint(cp.note, key, origin=self.origin)
            except (InvalidBundle, VerificationError) as e:
                raise LogCorrupted(f"stored checkpoint of size {cp.size}: {e}") from e
            if verified.size != cp.size or verified.root != cp.root:
                raise LogCorrupted(f"stored checkpoint of size {cp.size} disagrees with its note")
            if cp.size > self._tree.size:
                raise LogCorrupted(
                    f"a checkpoint of size {cp.size} was signed but only {self._tree.size} "
                    "entries are stored (entries lost)"
                )
            if self._tree.root(cp.size) != cp.root:
                raise LogCorrupted(
                    f"the stored entries do not reproduce the signed root of size {cp.size} "
                    "(log altered)"
                )
        if not checkpoints:
            if self._tree.size:
                raise LogCorrupted("entries are stored but no checkpoint was signed")
            self._latest = self._sign_and_store(())
        else:
            self._latest = checkpoints[-1]
            if self._latest.size != self._tree.size:
                raise LogCorrupted(
                    f"{self._tree.size} entries are stored but the latest checkpoint covers "
                    f"{self._latest.size} (entry written without its checkpoint)"
                )
        self._check_signed_file()
        _logger.info(
            "witness log %s opened: %d entries, root %s",
            self.origin, self._tree.size, self._tree.root().hex(),
        )
        self._published = self._latest
        self.keep_latest()

    def _check_signed_file(self) -> None:
        # A new database (a --db naming another file, a relative name read from
        # another directory), an older copy of it or another log of this origin was
        # served as the log: the key then signed a second root for tree sizes it had
        # signed before, a fork no check on the database alone can see.
        if self._signed_file is None:
            return
        self._check_extends(self._signed_file, earlier=False)
        for path in self._earlier_files:
            self._check_extends(path, earlier=True)

    def _check_extends(self, path: str, *, earlier: bool) -> None:
        try:
            data, _ = read_named_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            if earlier:  # only where an earlier run may have kept it: not in the way
                _logger.warning("cannot read %s, where an earlier run may have kept the "
                                "latest checkpoint this key signed (%s): not checked",
                                path, e.strerror or e)
                return
            raise LogCorrupted(f"{path}: cannot read the latest checkpoint "
                               f"this key signed ({e.strerror})") from e
        remove = f"(remove {path} only to start a new log under this key)"
        try:
            signed = verify_checkpoint(data, [self._signer.key], origin=self.origin)
        except (InvalidBundle, VerificationError) as e:
            if earlier:  # another key's, kept where this one now is: proves nothing here
                _logger.warning("%s is not a checkpoint this key signed for %r (%s): not "
                                "checked", path, self.origin, e)
                return
            raise LogCorrupted(f"{path}: not a checkpoint this key signed "
                               f"for {self.origin!r} ({e}) {remove}") from e
        if signed.size > self._tree.size or self._tree.root(signed.size) != signed.root:
            held = (f"is a log of tree size {self._tree.size}" if signed.size > self._tree.size
                    else "gives another root at that size")
            raise LogCorrupted(
                f"this key signed tree size {signed.size} of {self.origin!r} "
                f"({path}), but {self._store.path} {held}: an older copy of "
                "the log, or another log, whose checkpoints would contradict those already "
                f"signed {remove}")

    def keep_latest(self) -> None:
        """Write the latest signed checkpoint to *signed_file* (atomically), if one
        was given; a failure is logged, not raised (the log is served all the same)."""
        if self._signed_file is None:
            return
        with self._signed_lock:
            self._write_signed_locked()

    def _write_signed_locked(self) -> None:
        # Under _signed_lock: write the latest committed checkpoint, which covers every
        # append committed so far, and hand it out.
        assert self._signed_file is not None
        with self._lock:
            latest = self._latest
        try:
            write_atomic(self._signed_file, latest.note)
        except OSError as e:
            if not self._signed_failing:
                _logger.warning("cannot write %s (%s): a new or older database served with "
                                "this key would not be refused (not repeated until a write "
                                "succeeds)", self._signed_file, e.strerror or e)
            self._signed_failing = True
        else:
            if self._signed_failing:
                _logger.warning("%s written again (tree size %d)", self._signed_file,
                                latest.size)
            self._signed_failing = False
        # Handed out even when the write failed: the entries are logged, and refusing
        # to answer for them would only have their submitters ask again.
        self._publish(latest)

    def _publish(self, latest: StoredCheckpoint) -> None:
        with self._lock:
            if latest.size > self._published.size:
                self._published = latest

    def _cover(self, latest: StoredCheckpoint) -> None:
        """Hand out *latest* (just committed) once *signed_file* holds it or a later
        checkpoint: a write under way when it committed is followed by one more,
        which covers every append committed meanwhile."""
        if self._signed_file is None:
            self._publish(latest)
            return
        with self._signed_lock:
            # Only a write (under this lock) hands out a checkpoint here.
            if self._published.size < latest.size:
                self._write_signed_locked()

    def _sign_and_store(self, entries: Sequence[Entry]) -> StoredCheckpoint:
        size = self._tree.size
        root = self._tree.root()
        note = self._signer.sign(Checkpoint(self.origin, size, root))
        stored = StoredCheckpoint(size, root, note, format_time(self._clock()))
        self._store.add(entries, stored)
        return stored

    def _committed_anyway(self, size: int) -> StoredCheckpoint | None:
        # After a failed write, find out whether the transaction reached the disk
        # anyway (a COMMIT can report an error late); the tree must follow the file.
        try:
            stored = self._store.checkpoint(size)
        except TransportError:
            return None
        if stored is not None and stored.root == self._tree.root(size):
            return stored
        return None

    # --- submissions -------------------------------------------------------------

    @contextlib.contextmanager
    def _verifying_turn(self) -> Iterator[None]:
        """Hold the turn to verify, waited for at most ``verify_wait`` seconds.

        Raises:
            VerifierBusy: not had in time.
        """
        if not self._verifying.acquire(timeout=self._verify_wait):
            raise VerifierBusy(
                f"busy: other submissions are being verified, and this one had no turn "
                f"within {self._verify_wait:g} s; retry later")
        try:
            yield
        finally:
            self._verifying.release()

    def _verify_submission(self, body: bytes, public_key: str | None) -> _Verified:
        _refuse_large_header(body)
        with self._verifying_turn():
            return self._verify_one(body, public_key)

    def _verify_one(self, body: bytes, public_key: str | None) -> _Verified:
        if self._producer_trust is not None:
            trust, mode = self._producer_trust, PRODUCER_PINNED
        elif public_key:
            trust, mode = parse_public_key_header(public_key), PRODUCER_UNVERIFIED
        else:
            raise InvalidBundle(
                "this witness pins no producer keys: send the producer's public key "
                "(base64 DER) in the Spanproof-Public-Key header"
            )
        if body.startswith(_BUNDLE_START):
            # A bundle is read as the verifier reads it, a line at a time: parsed
            # whole, a body of tiny JSON values took ~50 times its size.
            report = check_bundle(io.BytesIO(body), trust, allow_incomplete=True)
            if report.verdict is Verdict.FAIL or report.statement is None:
                raise SubmissionRejected(f"bundle rejected: {report.reason}", report)
            assert report.statement_digest is not None and report.signer_keyid is not None
            envelope, _ = BundleReader(io.BytesIO(body)).read_header()
            return _Verified(
                report.statement, report.statement_digest, report.signer_keyid,
                envelope, report, mode, "bundle",
            )
        if len(body) > MAX_ENVELOPE_BYTES:
            raise InvalidBundle(
                f"submission: {len(body)} bytes is too large for a DSSE envelope (at most "
                f"{MAX_ENVELOPE_BYTES}), and a bundle begins with {_BUNDLE_START.decode()}")
        doc = parse_strict(body, "submission")
        if isinstance(doc, dict) and doc.get("mediaType") == BUNDLE_MEDIA_TYPE:
            raise InvalidBundle("submission: a bundle must be in its canonical form (SPEC §7)")
        if isinstance(doc, dict) and "payloadType" in doc:
            envelope = Envelope.from_json(doc)
            try:
                signer = envelope.verify(trust)
            except VerificationError as e:
                failed = BundleReport(
                    "<envelope>",
                    (Check("signature", 3, Status.FAIL, str(e)),),
                    Verdict.FAIL,
                    error=e,
                )
                raise SubmissionRejected(f"envelope rejected: {e}", failed) from e
            statement = Statement.from_payload(envelope.payload)
            digest = digest_hex(envelope.payload)
            if not signer.valid_at(statement.sealed_at):
                err = TrustError(
                    f"key {signer.keyid[:16]} is not valid at sealedAt "
                    f"{format_time(statement.sealed_at)}"
                )
                failed = BundleReport(
                    "<envelope>", (Check("key-validity", 5, Status.FAIL, str(err)),),
                    Verdict.FAIL, error=err,
                )
                raise SubmissionRejected(f"envelope rejected: {err}", failed)
            report = _envelope_report("<envelope>", statement, digest, signer.keyid)
            return _Verified(statement, digest, signer.keyid, envelope, report, mode, "envelope")
        raise InvalidBundle(
            "submission: neither a spanproof bundle nor a DSSE envelope "
            f"(mediaType {BUNDLE_MEDIA_TYPE!r} or payloadType expected)"
        )

    def submit(self, body: bytes, public_key: str | None = None) -> SubmitResult:
        """Re-verify a bundle (or bare DSSE envelope), log it, and return its receipt.

        The same leaf submitted again returns the existing entry with a receipt
        against the latest checkpoint.  A different statement for a trace segment
        already logged by the same producer instance is logged and flagged as a
        conflict.

        Args:
            body: the bundle file's bytes, or a DSSE envelope's JSON.
            public_key: the ``Spanproof-Public-Key`` header (used only when no
                producer keys are configured).

        Raises:
            InvalidBundle: not a bundle or envelope, malformed, or no usable key.
            InvalidKey: the supplied public key is unusable.
            SubmissionTooLarge: a bundle whose header is over ``MAX_HEADER_BYTES``
                (an ``InvalidBundle``).
            SubmissionRejected: the bundle or envelope failed verification.
            VerifierBusy: no turn to be verified within ``verify_wait``.
            TransportError: the log could not be written (nothing was logged).
        """
        (result,) = self._log([self._verify_submission(body, public_key)])
        return result

    def submit_batch(
        self, bodies: Sequence[bytes], public_key: str | None = None
    ) -> list[SubmitResult | SpanproofError]:
        """:meth:`submit` for several submissions at once: each is re-verified on its
        own, and those that pass are logged under one signed checkpoint, in one
        transaction.  Returns, in order, each one's result or the error that
        rejected it (``InvalidBundle``, ``InvalidKey``, ``SubmissionRejected``).

        Raises:
            SubmissionTooLarge: one of them is a bundle whose header is over
                ``MAX_HEADER_BYTES``: nothing of the batch is verified, so that each
                can be sent alone (that one as its envelope).
            VerifierBusy: no turn to verify one of them within ``verify_wait``
                (nothing of the batch was logged).
            TransportError: the log could not be written (nothing of the batch was
                logged).
        """
        for i, body in enumerate(bodies):
            _refuse_large_header(body, f"batch submission {i}")
        checked: list[_Verified | SpanproofError] = []
        for body in bodies:
            try:
                checked.append(self._verify_submission(body, public_key))
            except (InvalidBundle, InvalidKey, SubmissionRejected) as e:
                # Kept, every refused submission of a batch stayed parsed otherwise.
                checked.append(e.detached())
        logged = iter(self._log([v for v in checked if isinstance(v, _Verified)]))
        return [next(logged) if isinstance(v, _Verified) else v for v in checked]

    def _log(self, verified: Sequence[_Verified]) -> list[SubmitResult]:
        """Append the leaves of *verified* submissions that are not in the log yet,
        sign one checkpoint covering them, and commit both in one transaction; then
        a receipt for each submission (new or already logged) against it."""
        leaves = []
        for v in verified:
            leaf = WitnessLeaf.from_statement(v.statement, v.statement_digest, v.signer_keyid)
            data = leaf.encode()
            # Everything an entry stores is encoded before the tree is touched: a
            # leaf appended and then not stored would be signed over but never kept.
            stored = (canonicalize(v.envelope.to_json()),
                      json.dumps(v.report.to_json(), sort_keys=True))
            leaves.append((v, leaf, data, leaf_hash(data), stored))
        found: list[tuple[Entry, bool, Receipt, bool]] = []
        try:
            self._log_locked(leaves, found)
        finally:
            # Whatever failed after the commit, what was committed is handed out once
            # signed_file covers it (not left for the next append).
            with self._lock:
                committed = self._latest
            self._cover(committed)
        results = []
        # Self-check: what we hand out must verify offline like any auditor's check
        # (the receipts share one checkpoint, whose signature is checked once).
        self_check = ReceiptVerifier([self._signer.key], origin=self.origin)
        for (v, leaf, _, _, _), (entry, created, receipt, conflict) in zip(
            leaves, found, strict=True
        ):
            self_check.verify(receipt, v.report)
            if created:
                _logger.info(
                    "logged %s (trace %s segment %d) at index %d%s",
                    v.statement_digest, leaf.trace_id, leaf.segment, entry.index,
                    " [CONFLICT: another statement for this segment]" if conflict else "",
                )
            results.append(SubmitResult(receipt, entry, created, conflict))
        return results

    def _log_locked(self, leaves: list[Any], found: list[tuple[Entry, bool, Receipt, bool]]
                    ) -> None:
        """Under the lock: append the new leaves of *leaves*, sign and commit one
        checkpoint over them, and add to *found* each submission's entry and receipt
        against the latest committed checkpoint (handed out by the caller once
        ``signed_file`` covers it)."""
        with self._lock:
            start = self._tree.size
            submitted_at = format_time(self._clock())
            entries: list[tuple[Entry, bool]] = []
            new: dict[bytes, Entry] = {}
            try:
                for v, leaf, data, h, (envelope, report) in leaves:
                    existing = new.get(h) or self._store.by_leaf_hash(h)
                    if existing is not None:
                        if existing.index >= self._tree.size:
                            # Only another process appending to the database does this
                            # (the store's lock keeps it out): no receipt can be made.
                            raise TransportError(
                                f"entry {existing.index} is beyond the tree of "
                                f"{self._tree.size} leaves this witness holds")
                        entries.append((existing, False))
                        continue
                    entry = Entry(
                        index=self._tree.append(h),
                        leaf_hash=h,
                        leaf=leaf,
                        leaf_bytes=data,
                        producer_key=v.producer_key,
                        checked=v.checked,
                        submitted_at=submitted_at,
                        envelope=envelope,
                        report=report,
                    )
                    new[h] = entry
                    entries.append((entry, True))
                if new:
                    self._latest = self._sign_and_store(list(new.values()))
            except BaseException:
                committed = self._committed_anyway(start + len(new)) if new else None
                if committed is None:
                    self._tree.truncate(start)
                    raise
                self._latest = committed
            latest = self._latest
            for entry, created in entries:
                found.append((entry, created, self._receipt_locked(entry, latest),
                              self._store.in_conflict(entry)))

    def _receipt_locked(self, entry: Entry, latest: StoredCheckpoint) -> Receipt:
        size = latest.size
        return Receipt(
            origin=self.origin,
            leaf_index=entry.index,
            tree_size=size,
            inclusion_proof=tuple(self._tree.inclusion_proof(entry.index, size)),
            checkpoint=latest.note,
            leaf=entry.leaf,
        )

    def check(self, body: bytes, public_key: str | None = None) -> dict[str, Any]:
        """Verify a bundle without logging it, for the web page: the per-check report
        and the log entries (with fresh receipts) of its statement.

        Raises:
            InvalidBundle: no producer key is configured or supplied.
            InvalidKey: the supplied public key is unusable.
            SubmissionTooLarge: a bundle whose header is over ``MAX_HEADER_BYTES``.
            VerifierBusy: no turn to be verified within ``verify_wait``.
        """
        if self._producer_trust is not None:
            trust, mode = self._producer_trust, PRODUCER_PINNED
        elif public_key:
            trust, mode = parse_public_key_header(public_key), PRODUCER_UNVERIFIED
        else:
            raise InvalidBundle(
                "this witness pins no producer keys: give the producer's public key"
            )
        _refuse_large_header(body)
        with self._verifying_turn():
            report = check_bundle(io.BytesIO(body), trust, allow_incomplete=True)
        digest = report.statement_digest
        return {
            "report": report.to_json(),
            "producerKey": mode,
            **(self.lookup_json(digest=digest) if digest
               else self._lookup_json(self._published_now(), [], None)),
        }

    # --- reads --------------------------------------------------------------------

    def checkpoint(self, size: int | None = None) -> bytes | None:
        """The signed checkpoint of tree *size* (default: the latest), or None.

        Raises:
            TransportError: the database cannot be read.
        """
        with self._lock:
            published = self._published
        if size is None:
            return published.note
        if size > published.size:
            return None
        stored = self._store.checkpoint(size)
        return stored.note if stored else None

    @property
    def size(self) -> int:
        """The latest signed tree size."""
        with self._lock:
            return self._published.size

    def inclusion_proof(
        self, index: int, size: int | None = None
    ) -> tuple[int, bytes, list[bytes]]:
        """``(size, leaf hash, proof)`` for entry *index* in the tree of *size*
        (default: the latest signed size).

        Raises:
            ValueError: *index* or *size* outside the signed log.
        """
        with self._lock:
            latest = self._published.size
            size = latest if size is None else size
            if not 0 <= index < size <= latest:
                raise ValueError(f"need 0 <= index < size <= {latest}")
            return size, self._tree.leaf(index), self._tree.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> tuple[int, list[bytes]]:
        """``(size2, proof)`` from tree *size1* to *size2* (default: the latest).

        Raises:
            ValueError: sizes outside ``0 < size1 <= size2 <= latest``.
        """
        with self._lock:
            latest = self._published.size
            size2 = latest if size2 is None else size2
            if not 0 < size1 <= size2 <= latest:
                raise ValueError(f"need 0 < from <= to <= {latest}")
            return size2, self._tree.consistency_proof(size1, size2)

    def lookup(
        self,
        *,
        trace: str | None = None,
        digest: str | None = None,
        index: int | None = None,
        after: int = -1,
        limit: int = LOOKUP_PAGE_ENTRIES,
    ) -> list[tuple[Entry, bool, Receipt]]:
        """Entries by trace id, statement digest or index, each with its conflict
        flag and a receipt against the latest checkpoint: of a trace's or digest's,
        the first *limit* with an index above *after*, by index.

        Raises:
            TransportError: the database cannot be read.
        """
        return self._lookup(trace=trace, digest=digest, index=index, after=after,
                            limit=limit)[1]

    def _lookup(
        self,
        *,
        trace: str | None,
        digest: str | None,
        index: int | None,
        after: int,
        limit: int,
    ) -> tuple[StoredCheckpoint, list[tuple[Entry, bool, Receipt]]]:
        """:meth:`lookup`'s entries, with the checkpoint their receipts are against."""
        if trace is not None:
            entries = self._store.by_trace(trace, after=after, limit=limit)
        elif digest is not None:
            entries = self._store.by_digest(digest, after=after, limit=limit)
        elif index is not None:
            found = self._store.entry(index)
            entries = [found] if found else []
        else:
            entries = []
        out = []
        with self._lock:
            published = self._published
            for entry in entries:
                if entry.index >= published.size:
                    continue  # committed by a concurrent append not yet published
                out.append((entry, self._store.in_conflict(entry),
                            self._receipt_locked(entry, published)))
        return published, out

    def _published_now(self) -> StoredCheckpoint:
        """The latest checkpoint handed out."""
        with self._lock:
            return self._published

    def _lookup_json(
        self, latest: StoredCheckpoint, found: list[tuple[Entry, bool, Receipt]],
        next_after: int | None,
    ) -> dict[str, Any]:
        # The checkpoint the receipts are against: one published since would give
        # the answer a treeSize that is not its receipts'.
        doc = {
            "origin": self.origin,
            "treeSize": str(latest.size),
            "checkpoint": latest.note.decode("utf-8"),
            "entries": [
                {
                    **entry.to_json(conflict),
                    "receipt": receipt.to_json(),
                    "submissionChecks": json.loads(entry.report).get("checks", []),
                }
                for entry, conflict, receipt in found
            ],
        }
        if next_after is not None:
            doc["next"] = str(next_after)
        return doc

    def lookup_json(
        self,
        *,
        trace: str | None = None,
        digest: str | None = None,
        index: int | None = None,
        after: int = -1,
        limit: int = LOOKUP_PAGE_ENTRIES,
    ) -> dict[str, Any]:
        """:meth:`lookup` as the ``GET /v1/lookup`` document: with ``next``, the
        *after* of the following page, when more entries follow this one."""
        latest, found = self._lookup(trace=trace, digest=digest, index=index, after=after,
                                     limit=limit + 1)
        if len(found) <= limit:
            return self._lookup_json(latest, found, None)
        return self._lookup_json(latest, found[:limit], found[limit - 1][0].index)

    def info(self) -> dict[str, Any]:
        """The witness's identity, for ``GET /v1/info``."""
        with self._lock:
            size = self._published.size
        return {
            "origin": self.origin,
            "vkey": self._signer.vkey,
            "publicKey": self._signer.key.public_pem().decode("ascii"),
            "treeSize": str(size),
            "producerKeys": PRODUCER_PINNED if self.pins_producers else PRODUCER_UNVERIFIED,
        }
