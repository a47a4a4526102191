"""Watching a witness for forks and rollbacks (SPEC §12.7), for ``spanproof monitor``.

Each run fetches the witness's latest checkpoint, verifies its signature with the
pinned witness key, and checks that it extends the checkpoint remembered from the
previous run (same size: same root; larger: a valid consistency proof; smaller:
a rollback).  Only then is the new checkpoint remembered, atomically; runs that
share a state file take turns (``<state>.lock``), so that none takes it back to a
checkpoint older than the one another run remembered meanwhile.  On a fork
or rollback the two signed checkpoints (and the proof served) are written to an
evidence file of their own, named for its content, never over an earlier alert's:
two signed checkpoints that cannot both be honest are proof of the witness's
misbehaviour that anyone can check.  Receipts held by producers are checked the
same way against that checkpoint (:func:`check_receipts`), so a receipt from a
history the monitor is not shown is caught as a fork.

Each checkpoint the monitor sees for the first time is also appended, with the time
it saw it, to ``<state>.history`` (:func:`record_seen`): checkpoints carry no time,
so this is the record independent of the producer's clock that dates log entries
(SPEC §6.2, §12.7).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from spanproof.verifier._files import (
    fsync_directory,
    open_regular,
    read_named_file,
    walk_files,
    write_all,
    write_atomic,
    write_once,
)
from spanproof.verifier.canonical import canonicalize, parse_strict
from spanproof.verifier.checkpoint import (
    MAX_NOTE_BYTES,
    VerifiedCheckpoint,
    WitnessKey,
    check_consistent,
    verify_checkpoint,
)
from spanproof.verifier.errors import (
    InvalidBundle,
    InvalidReceipt,
    LogInconsistent,
    SpanproofError,
)
from spanproof.verifier.keys import format_time, raw_public_bytes
from spanproof.verifier.receipt import (
    MAX_RECEIPT_BYTES,
    RECEIPT_SUFFIX,
    REMEMBERED_CHECKPOINTS,
    ReceiptVerifier,
    is_conflict_receipt_name,
)

from .client import HTTPStatusError, MalformedAnswer, WitnessClient

__all__ = [
    "HISTORY_SUFFIX",
    "MONITOR_EVIDENCE_MEDIA_TYPE",
    "MONITOR_STATE_MEDIA_TYPE",
    "MonitorResult",
    "ReceiptsResult",
    "check_receipts",
    "fetch_consistency_proof",
    "find_receipts",
    "load_state",
    "monitor_once",
    "read_receipt_checkpoints",
    "record_seen",
    "save_state",
]

MONITOR_STATE_MEDIA_TYPE = "application/vnd.spanproof.monitor-state.v1+json"
MONITOR_EVIDENCE_MEDIA_TYPE = "application/vnd.spanproof.monitor-evidence.v1+json"
#: Beside the state file: one line per checkpoint first seen (:func:`record_seen`).
HISTORY_SUFFIX = ".history"


@dataclass(frozen=True)
class MonitorResult:
    """One successful monitor run: the remembered checkpoint (None on the first run)
    and the new one, which now replaces it."""

    previous: VerifiedCheckpoint | None
    current: VerifiedCheckpoint

    @property
    def message(self) -> str:
        """One line for the operator."""
        cur = self.current
        root = base64.b64encode(cur.root).decode("ascii")
        if self.previous is None:
            return f"OK {cur.origin}: first checkpoint recorded (tree size {cur.size}, root {root})"
        if self.previous.size == cur.size:
            return f"OK {cur.origin}: unchanged at tree size {cur.size}"
        return (
            f"OK {cur.origin}: tree size {self.previous.size} -> {cur.size} is consistent "
            f"(root {root})"
        )


#: The most a state file can hold: a note of MAX_NOTE_BYTES, each byte escaped in
#: two (a quote, a backslash, a line feed), in its small JSON document.
_STATE_LIMIT = 2 * MAX_NOTE_BYTES + 4096


def load_state(
    path: str, keys: Sequence[WitnessKey], *, origin: str | None = None
) -> VerifiedCheckpoint | None:
    """The checkpoint remembered in the state file, re-verified; None if no file.

    Raises:
        InvalidReceipt: the state file is malformed.
        NoteSignatureError: its checkpoint is not signed by a pinned key.
        OSError: the file exists but cannot be read.
    """
    try:
        data, mode = read_named_file(path, limit=_STATE_LIMIT)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(mode):
        # A named pipe read as empty, then failed as malformed JSON (exit 1, an
        # alert's status); it could not be replaced with the next checkpoint either.
        raise OSError(errno.EINVAL, "not a regular file, which the state must be", path)
    try:
        doc = parse_strict(data, f"monitor state {path}")
    except InvalidBundle as e:
        raise InvalidReceipt(str(e)) from None
    if (
        not isinstance(doc, dict)
        or doc.get("mediaType") != MONITOR_STATE_MEDIA_TYPE
        or not isinstance(doc.get("checkpoint"), str)
    ):
        raise InvalidReceipt(
            f"monitor state {path}: not a {MONITOR_STATE_MEDIA_TYPE} document"
        )
    return verify_checkpoint(doc["checkpoint"], keys, origin=origin)


def save_state(path: str, checkpoint: VerifiedCheckpoint) -> None:
    """Remember *checkpoint* in the state file (temp file, fsync, rename), with the
    signature lines of the pinned keys alone: a note padded with other keys' lines
    (which anyone on the way can add) would make a state file too large to read
    back, and every later run a usage error instead of a check.

    Raises:
        OSError: the file cannot be written.
    """
    note = checkpoint.pinned_note().decode("utf-8")
    doc = {"mediaType": MONITOR_STATE_MEDIA_TYPE, "checkpoint": note}
    write_atomic(path, canonicalize(doc) + b"\n")


def record_seen(path: str, checkpoint: VerifiedCheckpoint, asked_at: datetime,
                seen_at: datetime) -> None:
    """Append *checkpoint*, when it was asked for (*asked_at*) and when it arrived
    (*seen_at*) to ``<path>.history`` (*path* the state file) as one canonical JSON
    line, ``{"askedAt", "checkpoint", "rootHash", "seenAt", "treeSize"}``, and make it
    durable (fsync; the directory too when the file is new).  An entry at leaf index
    *i* was logged by the ``seenAt`` of a line whose ``treeSize`` is above *i*, and,
    when the witness answered with its latest checkpoint, after the ``askedAt`` of a
    line whose ``treeSize`` is at most *i* (SPEC §12.7 step 7).  A write that fails
    part-way is cut back, so the next line starts whole.

    Raises:
        OSError: the history file cannot be written.
    """
    line = canonicalize({
        "askedAt": format_time(asked_at),
        "checkpoint": checkpoint.pinned_note().decode("utf-8"),
        "rootHash": base64.b64encode(checkpoint.root).decode("ascii"),
        "seenAt": format_time(seen_at),
        "treeSize": checkpoint.size,
    }) + b"\n"
    history = path + HISTORY_SUFFIX
    created = not os.path.lexists(history)
    # Non-blocking: a named pipe there would hold the run until a reader came.
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                 | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        _only_regular_fd(fd, history)
        size = os.fstat(fd).st_size
        try:
            write_all(fd, line)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    if created:
        fsync_directory(os.path.dirname(os.path.abspath(history)))


def _only_regular_fd(fd: int, path: str) -> None:
    """Refuse to append to anything but a regular file (a FIFO would block a run)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)


def _save_evidence(
    path: str,
    reason: str,
    previous: VerifiedCheckpoint,
    current: VerifiedCheckpoint,
    proof: Sequence[bytes],
) -> str:
    """Save the two signed checkpoints, the proof served and *reason* beside the state
    file *path*, as ``<path>.evidence-<16 hex>.json``, named for its content (the
    start of its SHA-256), and return what to say of it: where it is, or why it could
    not be saved.  Never raises for the file: the alert matters more than its copy.

    A file already there is never replaced, so the evidence of an earlier alert
    stays; the same alert raised again (the monitor keeps its checkpoint, so a forked
    witness is alerted on at each run) finds its file already written.
    """
    doc: dict[str, Any] = {
        "mediaType": MONITOR_EVIDENCE_MEDIA_TYPE,
        "reason": reason,
        "previous": previous.note.decode("utf-8"),
        "current": current.note.decode("utf-8"),
        "consistencyProof": [base64.b64encode(h).decode("ascii") for h in proof],
    }
    data = json.dumps(doc, indent=2).encode("utf-8") + b"\n"
    evidence = f"{path}.evidence-{hashlib.sha256(data).hexdigest()[:16]}.json"
    try:
        write_once(evidence, data)
    except FileExistsError:
        return f"evidence could not be saved: {evidence} exists and holds something else"
    except OSError as e:
        return f"evidence could not be saved to {evidence} ({e.strerror or e})"
    return f"evidence saved to {evidence}"


def fetch_consistency_proof(client: WitnessClient, size1: int, size2: int) -> list[bytes]:
    """The consistency proof the witness serves from tree size *size1* to *size2*,
    both of checkpoints it signed (SPEC §12.7 step 6), to check with
    :func:`~spanproof.verifier.checkpoint.check_consistent`.

    A witness that signed the tree of *size2* can prove it extends any tree it
    signed before.  One that answers the request with a refusal (a 4xx other than
    408 and 429) or JSON that is not a proof is treated as one that cannot: a fork
    it will not show.  No answer, one cut short or that is not JSON (a proxy's
    page), a 3xx, a 5xx, 408 or 429 is its being unavailable.

    Raises:
        LogInconsistent: the witness does not prove it.
        TransportError: the witness is unavailable.
    """
    try:
        return client.consistency_proof(size1, size2)
    except (HTTPStatusError, MalformedAnswer) as e:
        if isinstance(e, HTTPStatusError) and (
            not 400 <= e.status < 500 or e.status in (408, 429)
        ):
            raise
        raise LogInconsistent(
            f"the witness signed tree size {size2} but does not prove that it extends "
            f"tree size {size1}: {e}"
        ) from e


def _check_extends(
    client: WitnessClient,
    old: VerifiedCheckpoint,
    new: VerifiedCheckpoint,
    state_path: str,
    about: str = "",
) -> None:
    """Check that *new* extends *old* (SPEC §12.7 steps 4-6), with the consistency
    proof the witness serves (:func:`fetch_consistency_proof`); on a fork or
    rollback, save both checkpoints and the proof as evidence beside *state_path*
    (:func:`_save_evidence`).

    Raises:
        LogInconsistent: *about* and the defect, naming the evidence file (or saying
            why it could not be saved).
        TransportError: the witness could not be reached for the proof.
    """
    proof: list[bytes] = []
    try:
        if 0 < old.size < new.size:
            proof = fetch_consistency_proof(client, old.size, new.size)
        check_consistent(old.checkpoint, new.checkpoint, proof)
    except LogInconsistent as e:
        reason = f"{about}{e}"
        saved = _save_evidence(state_path, reason, old, new, proof)
        raise LogInconsistent(f"{reason}; {saved}") from e


def monitor_once(
    client: WitnessClient,
    state_path: str,
    keys: Sequence[WitnessKey],
    *,
    origin: str | None = None,
) -> MonitorResult:
    """Run one monitor check (SPEC §12.7) and remember the new checkpoint.

    Raises:
        LogInconsistent: a fork or rollback; the message names the evidence file
            (or says why it could not be saved).  The state file is left unchanged.
        NoteSignatureError: the served (or remembered) checkpoint is not signed by
            a pinned witness key.
        InvalidReceipt: a malformed checkpoint or state file.
        TransportError: the witness could not be reached.
        OSError: the state file (or its lock, ``<state>.lock``, or its history,
            ``<state>.history``) cannot be read or written.
    """
    with _state_turn(state_path):
        previous = load_state(state_path, keys, origin=origin)
        pinned_origin = origin if origin is not None else (previous.origin if previous else None)
        asked_at = datetime.now(timezone.utc)
        current = verify_checkpoint(client.checkpoint(), keys, origin=pinned_origin)
        seen_at = datetime.now(timezone.utc)
        if previous is not None:
            _check_extends(client, previous, current, state_path)
        if previous is None or (previous.size, previous.root) != (current.size, current.root):
            # Before the state: a run stopped between the two records it again.
            record_seen(state_path, current, asked_at, seen_at)
        save_state(state_path, current)
    return MonitorResult(previous, current)


@contextlib.contextmanager
def _state_turn(state_path: str) -> Iterator[None]:
    """Hold ``<state>.lock`` locked (``flock``, waiting for another run to finish)
    from reading the state file to writing it (SPEC §12.7 step 7).

    Two runs on one state file side by side (a cron job slower than its period)
    both read the same checkpoint, and the one that fetched the older checkpoint,
    finishing last, wrote it over the newer one the other had verified: the state
    went back, and a rollback to a tree between the two passed the next run.

    Raises:
        OSError: the lock file cannot be opened or locked.
    """
    fd = os.open(f"{state_path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReceiptsResult:
    """What :func:`check_receipts` found: how many receipts' checkpoints (and how many
    distinct checkpoints) are consistent with the monitored one, and the receipts
    that could not be checked, each with why."""

    consistent: int
    checkpoints: int
    unchecked: tuple[tuple[str, str], ...]


def _is_receipt_name(name: str) -> bool:
    # A conflict receipt is checked too: kept beside a receipt of another history,
    # it alerts when it is the one the monitored log does not extend.
    return name.endswith(RECEIPT_SUFFIX) or is_conflict_receipt_name(name)


def find_receipts(path: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The receipt files *path* names (the file itself, or every ``*.receipt.json``
    under the directory and every ``*.receipt.conflict-<16 hex>.json``, the other
    half of a fork's evidence that ``witness submit`` kept, in sorted order, through
    symbolic links to directories too, each directory searched once), and the
    directories that could not be listed, each with why.

    Raises:
        FileNotFoundError: *path* does not exist.
    """
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return [path], []
    problems: list[tuple[str, str]] = []

    def cannot_list(error: OSError) -> None:
        where = os.fspath(error.filename) if error.filename is not None else path
        problems.append((where, f"cannot list the directory ({error.strerror or error})"))

    found = list(walk_files(path, _is_receipt_name, cannot_list))
    return found, problems


def read_receipt_checkpoints(
    paths: Sequence[str], keys: Sequence[WitnessKey], *, origin: str | None = None
) -> tuple[list[tuple[str, VerifiedCheckpoint]], list[tuple[str, str]]]:
    """Each receipt's checkpoint, verified with the pinned *keys*, and the receipts
    that could not be read or checked, each with why: those prove nothing about the
    log.  A receipt counts only when it describes its checkpoint (origin, tree size,
    and an inclusion proof of its own leaf that reaches the root), as
    ``spanproof verify`` requires.

    Receipts of one checkpoint (origin, size and root, signed by the same keys) share
    one held object, and a
    note shared by several (a batch's) is verified once (:class:`ReceiptVerifier`,
    which remembers no padded note); a padded note is not held twice.  Read them
    before fetching the checkpoint they are compared with: a receipt written
    meanwhile then cannot hold a checkpoint newer than it.
    """
    verifier = ReceiptVerifier(keys, origin=origin, remember=REMEMBERED_CHECKPOINTS)
    shared: dict[tuple[str, int, bytes, frozenset[bytes]], VerifiedCheckpoint] = {}
    held: list[tuple[str, VerifiedCheckpoint]] = []
    unchecked: list[tuple[str, str]] = []
    for path in paths:
        try:
            with open_regular(path) as f:
                checkpoint = verifier.verify_own_leaf(f.read(MAX_RECEIPT_BYTES + 1))
        except OSError as e:
            unchecked.append((path, f"cannot read it: {e.strerror or e}"))
            continue
        except SpanproofError as e:
            unchecked.append((path, str(e)))
            continue
        # One object per checkpoint and the keys that signed it: receipts of one
        # checkpoint signed by other keys are other evidence (check_receipts).
        key = (checkpoint.origin, checkpoint.size, checkpoint.root,
               frozenset(raw_public_bytes(k.public_key) for k in checkpoint.signers))
        held.append((path, shared.setdefault(key, checkpoint)))
    return held, unchecked


def check_receipts(
    client: WitnessClient,
    current: VerifiedCheckpoint,
    held: Sequence[tuple[str, VerifiedCheckpoint]],
    state_path: str,
) -> ReceiptsResult:
    """Check that each held receipt's checkpoint (from
    :func:`read_receipt_checkpoints`) and the monitored checkpoint *current* are one
    history (SPEC §12.7 step 8): the same root at the same size, or a consistency
    proof the witness serves from the receipt's tree to *current*'s.  A receipt's
    tree larger than *current*'s is a rollback.

    A witness showing its monitors one tree and producers another signs two
    checkpoints that fail this check; they are saved as evidence, as for a fork.
    Receipts sharing a checkpoint are checked once.  A receipt of another log, or
    whose checkpoint another pinned key signed (two witnesses under one origin),
    is listed as unchecked: it is no evidence against this witness.

    Raises:
        LogInconsistent: a receipt's checkpoint and *current* cannot both be honest;
            the message names the receipt and the evidence file (or says why it
            could not be saved).
        TransportError: the witness could not be reached for a proof.
    """
    shown: set[tuple[int, bytes]] = set()
    consistent = 0
    unchecked: list[tuple[str, str]] = []
    for path, checkpoint in held:
        if checkpoint.origin != current.origin:
            unchecked.append((path, f"a receipt of the log {checkpoint.origin!r}, "
                                    f"not of {current.origin!r}"))
            continue
        if not checkpoint.shares_a_signer(current):
            # Two pinned keys signing one origin: what one signed is no evidence
            # against the other, and a fork alert would name the wrong witness.
            signer, log_signer = (cp.key.key_hash(cp.origin).hex()
                                  for cp in (checkpoint, current))
            unchecked.append((path, f"its checkpoint is signed by another pinned key "
                                    f"({signer}) than the log's ({log_signer})"))
            continue
        if (checkpoint.size, checkpoint.root) not in shown:
            _check_extends(client, checkpoint, current, state_path, f"receipt {path}: ")
            shown.add((checkpoint.size, checkpoint.root))
        consistent += 1
    return ReceiptsResult(consistent, len(shown), tuple(unchecked))
