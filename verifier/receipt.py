"""Witness receipts (SPEC §12.3, §12.5, §12.6): the leaf a witness logs for a bundle,
the receipt document, and its offline verification.

A receipt says "this bundle's statement is entry *i* of the log whose signed
checkpoint has tree size *n*", with an RFC 9162 inclusion proof.  It verifies
offline with nothing but the bundle, the receipt and a pinned witness key.

The leaf is never taken from the receipt: it is recomputed from the *verified*
bundle (statement digest, trace, segment, producer instance, signer key id), so a
receipt for one bundle cannot vouch for another (the lesson of Sigstore's
CVE-2022-36056, where a log entry was not checked against the artifact).

Receipts live beside their bundle: ``<name>.receipt.json`` for
``<name>.spanproof.json`` (bundle files never change after sealing).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._files import open_regular, write_once
from .bundle import BUNDLE_SUFFIX
from .canonical import canonicalize, parse_strict
from .checkpoint import (
    Checkpoint,
    SignedNote,
    VerifiedCheckpoint,
    WitnessKey,
    check_consistent,
    strict_b64,
    verify_checkpoint,
)
from .errors import (
    InvalidBundle,
    InvalidReceipt,
    LogInconsistent,
    ProofError,
    ReceiptMismatch,
    SpanproofError,
    VerificationError,
)
from .merkle import HASH_SIZE, leaf_hash, verify_inclusion
from .records import is_digest, is_trace_id, is_uint
from .statement import Statement
from .verify import BundleReport, Check, Status, Verdict, cut_message

__all__ = [
    "LEAF_MEDIA_TYPE",
    "RECEIPT_CHECK",
    "RECEIPT_CHECK_STEP",
    "RECEIPT_MEDIA_TYPE",
    "RECEIPT_SUFFIX",
    "REMEMBERED_CHECKPOINTS",
    "REMEMBERED_NOTE_BYTES",
    "LeafSource",
    "Receipt",
    "ReceiptVerifier",
    "VerifiedReceipt",
    "WitnessLeaf",
    "attach_receipt_check",
    "check_receipt",
    "check_receipt_for_bundle",
    "conflict_receipt_path",
    "is_conflict_receipt_name",
    "kept_receipt",
    "receipt_path",
    "unverified_receipt_for",
    "verify_receipt",
]

RECEIPT_MEDIA_TYPE = "application/vnd.spanproof.receipt.v1+json"
LEAF_MEDIA_TYPE = "application/vnd.spanproof.witness-leaf.v1+json"
RECEIPT_SUFFIX = ".receipt.json"
#: Name and SPEC §8 step number of the receipt check in a bundle report.
RECEIPT_CHECK = "receipt"
RECEIPT_CHECK_STEP = 10
#: A :class:`ReceiptVerifier` remembers no signed note longer than this: a witness's
#: checkpoint with a signature line is ~150 bytes, with 16 cosignatures ~2 KB.
REMEMBERED_NOTE_BYTES = 4096
#: How many verified checkpoints a command that checks many receipts
#: (``spanproof verify``, ``spanproof monitor --receipts``) has its
#: :class:`ReceiptVerifier` remember: a batch's receipts share one.
REMEMBERED_CHECKPOINTS = 4096

_KEYID = re.compile(r"[0-9a-f]{64}\Z")
_LEAF_FIELDS = frozenset(
    {"mediaType", "statementDigest", "traceId", "segment", "producerInstance", "signerKeyid"}
)
_RECEIPT_FIELDS = frozenset(
    {"mediaType", "origin", "leafIndex", "treeSize", "inclusionProof", "checkpoint", "leaf"}
)
# A receipt is small: a leaf, ~64 hashes and a note.  Refuse anything far bigger.
MAX_RECEIPT_BYTES = 1 << 20


class LeafSource(Protocol):
    """What a verified bundle offers to recompute its leaf: a :class:`BundleReport`
    or a :class:`VerifiedBundle` both qualify."""

    @property
    def statement(self) -> Statement | None: ...

    @property
    def statement_digest(self) -> str | None: ...

    @property
    def signer_keyid(self) -> str | None: ...


def _uint(value: Any, where: str) -> int:
    if not is_uint(value):
        raise InvalidReceipt(f"{where}: must be a decimal string (no leading zeros) below 2^64")
    return int(value)


def _hash_b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidReceipt(f"{where}: must be a base64 string")
    # Canonical, as a checkpoint's root hash: one receipt, one spelling (SPEC §1.3).
    raw = strict_b64(value, where)
    if len(raw) != HASH_SIZE:
        raise InvalidReceipt(f"{where}: must be a {HASH_SIZE}-byte hash")
    return raw


@dataclass(frozen=True)
class WitnessLeaf:
    """The data a witness logs for one bundle (SPEC §12.3).

    Its bytes are the RFC 8785 form of an explicit allow-list of fields; the Merkle
    leaf hash is ``SHA-256(0x00 || bytes)``.
    """

    statement_digest: str
    trace_id: str
    segment: int
    producer_instance: str
    signer_keyid: str

    def to_json(self) -> dict[str, Any]:
        """Return the leaf object (SPEC §12.3)."""
        return {
            "mediaType": LEAF_MEDIA_TYPE,
            "statementDigest": self.statement_digest,
            "traceId": self.trace_id,
            "segment": str(self.segment),
            "producerInstance": self.producer_instance,
            "signerKeyid": self.signer_keyid,
        }

    def encode(self) -> bytes:
        """Return the leaf's canonical bytes (the Merkle leaf data)."""
        return canonicalize(self.to_json())

    def hash(self) -> bytes:
        """Return the RFC 9162 leaf hash of :meth:`encode`."""
        return leaf_hash(self.encode())

    @classmethod
    def from_statement(
        cls, statement: Statement, statement_digest: str, signer_keyid: str
    ) -> WitnessLeaf:
        """The leaf of a statement whose signature verified under *signer_keyid*."""
        return cls(
            statement_digest=statement_digest,
            trace_id=statement.trace_id,
            segment=statement.segment_index,
            producer_instance=statement.producer.instance,
            signer_keyid=signer_keyid,
        )

    @classmethod
    def from_bundle(cls, bundle: LeafSource) -> WitnessLeaf:
        """Recompute the leaf of a verified bundle (SPEC §12.5 step 4).

        Raises:
            ValueError: the bundle's signature and statement did not verify, so it
                has no leaf.
        """
        stmt, digest, keyid = bundle.statement, bundle.statement_digest, bundle.signer_keyid
        if stmt is None or digest is None or keyid is None:
            raise ValueError("the bundle's signed statement did not verify; it has no leaf")
        return cls.from_statement(stmt, digest, keyid)

    @classmethod
    def from_json(cls, obj: Any, where: str = "leaf") -> WitnessLeaf:
        """Parse a leaf object.

        Raises:
            InvalidReceipt: unknown media type, missing, extra or mistyped fields.
        """
        if not isinstance(obj, dict) or set(obj) != _LEAF_FIELDS:
            raise InvalidReceipt(f"{where}: fields must be exactly {sorted(_LEAF_FIELDS)}")
        if obj["mediaType"] != LEAF_MEDIA_TYPE:
            raise InvalidReceipt(f"{where}: unknown mediaType {obj['mediaType']!r}")
        if not is_digest(obj["statementDigest"]):
            raise InvalidReceipt(f"{where}.statementDigest: must be sha256:<64 hex>")
        if not is_trace_id(obj["traceId"]):
            raise InvalidReceipt(f"{where}.traceId: must be 32 lowercase hex digits")
        if not isinstance(obj["producerInstance"], str):
            raise InvalidReceipt(f"{where}.producerInstance: must be a string")
        if not isinstance(obj["signerKeyid"], str) or not _KEYID.match(obj["signerKeyid"]):
            raise InvalidReceipt(f"{where}.signerKeyid: must be 64 lowercase hex digits")
        return cls(
            statement_digest=obj["statementDigest"],
            trace_id=obj["traceId"],
            segment=_uint(obj["segment"], f"{where}.segment"),
            producer_instance=obj["producerInstance"],
            signer_keyid=obj["signerKeyid"],
        )


@dataclass(frozen=True)
class Receipt:
    """A parsed receipt document (SPEC §12.5).  Nothing in it is trusted until
    :func:`verify_receipt` checked it against a bundle and a pinned witness key."""

    origin: str
    leaf_index: int
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes
    leaf: WitnessLeaf

    def to_json(self) -> dict[str, Any]:
        """Return the receipt object."""
        return {
            "mediaType": RECEIPT_MEDIA_TYPE,
            "origin": self.origin,
            "leafIndex": str(self.leaf_index),
            "treeSize": str(self.tree_size),
            "inclusionProof": [base64.b64encode(h).decode("ascii") for h in self.inclusion_proof],
            "checkpoint": self.checkpoint.decode("utf-8"),
            "leaf": self.leaf.to_json(),
        }

    def to_bytes(self) -> bytes:
        """Return the receipt file bytes: RFC 8785 JSON and a line feed."""
        return canonicalize(self.to_json()) + b"\n"

    @classmethod
    def from_json(cls, obj: Any) -> Receipt:
        """Build from a parsed receipt object (SPEC §12.5 step 1).

        Raises:
            InvalidReceipt: unknown media type, missing, extra or mistyped fields,
                hashes that are not 32 bytes, or a leaf index outside the tree.
        """
        if not isinstance(obj, dict):
            raise InvalidReceipt("receipt: must be a JSON object")
        if obj.get("mediaType") != RECEIPT_MEDIA_TYPE:
            raise InvalidReceipt(
                f"receipt: unknown mediaType {obj.get('mediaType')!r} "
                f"(this verifier knows {RECEIPT_MEDIA_TYPE!r})"
            )
        if set(obj) != _RECEIPT_FIELDS:
            raise InvalidReceipt(f"receipt: fields must be exactly {sorted(_RECEIPT_FIELDS)}")
        origin = obj["origin"]
        if not isinstance(origin, str) or not origin:
            raise InvalidReceipt("receipt.origin: must be a non-empty string")
        index = _uint(obj["leafIndex"], "receipt.leafIndex")
        size = _uint(obj["treeSize"], "receipt.treeSize")
        if index >= size:
            raise InvalidReceipt(f"receipt: leafIndex {index} is not inside treeSize {size}")
        proof = obj["inclusionProof"]
        if not isinstance(proof, list) or len(proof) > 64:
            raise InvalidReceipt("receipt.inclusionProof: must be an array of at most 64 hashes")
        hashes = tuple(
            _hash_b64(h, f"receipt.inclusionProof[{i}]") for i, h in enumerate(proof)
        )
        note = obj["checkpoint"]
        if not isinstance(note, str):
            raise InvalidReceipt("receipt.checkpoint: must be the signed note text")
        try:
            # A receipt object parsed by a plain JSON reader (a batch answer's) may
            # hold a lone surrogate, which no UTF-8 note can.
            checkpoint = note.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidReceipt(
                f"receipt.checkpoint: a lone surrogate at character {e.start}, which a "
                "signed note, UTF-8, cannot hold") from None
        return cls(
            origin=origin,
            leaf_index=index,
            tree_size=size,
            inclusion_proof=hashes,
            checkpoint=checkpoint,
            leaf=WitnessLeaf.from_json(obj["leaf"], "receipt.leaf"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """Parse a receipt file strictly (UTF-8, no duplicate keys).

        Raises:
            InvalidReceipt: not strict JSON, too large, or not a v1 receipt.
        """
        if len(data) > MAX_RECEIPT_BYTES:
            raise InvalidReceipt(f"receipt: larger than {MAX_RECEIPT_BYTES} bytes")
        try:
            obj = parse_strict(data, "receipt")
        except InvalidBundle as e:
            raise InvalidReceipt(str(e)) from None
        return cls.from_json(obj)


def unverified_receipt_for(bundle: bytes, answer: bytes) -> bytes:
    """The receipt file bytes in a witness's *answer* to the submission of *bundle*,
    when no witness key is pinned to verify it: at least a well-formed receipt whose
    leaf names the bundle's statement (its signature and proofs are not checked).

    Without this, a proxy's maintenance page answered with 200 was written as the
    receipt, and the submission taken for delivered.

    Raises:
        InvalidReceipt: *answer* is not a receipt, or is another statement's.
        InvalidBundle: *bundle*'s header cannot be read.
    """
    from .bundle import BundleReader
    from .records import digest_hex

    receipt = Receipt.from_bytes(answer)
    envelope, _ = BundleReader(io.BytesIO(bundle)).read_header()
    digest = digest_hex(envelope.payload)
    if receipt.leaf.statement_digest != digest:
        raise InvalidReceipt(f"receipt: its leaf names statement {receipt.leaf.statement_digest}, "
                             f"not this bundle's {digest}")
    return receipt.to_bytes()


@dataclass(frozen=True)
class VerifiedReceipt:
    """What :func:`verify_receipt` proved: the bundle's leaf is entry ``leaf_index``
    of the log ``origin`` whose checkpoint at ``tree_size`` a pinned key signed."""

    receipt: Receipt
    checkpoint: VerifiedCheckpoint
    leaf: WitnessLeaf
    leaf_hash: bytes

    @property
    def origin(self) -> str:
        """The log's origin (the witness key's name)."""
        return self.checkpoint.origin

    @property
    def leaf_index(self) -> int:
        """The bundle's position in the log."""
        return self.receipt.leaf_index

    @property
    def tree_size(self) -> int:
        """The size of the signed tree that includes the bundle."""
        return self.checkpoint.size


class ReceiptVerifier:
    """Verifies receipts offline (SPEC §12.5 steps 1-5) with pinned witness keys.

    A batch's receipts share one checkpoint, and verifying its signature is most
    of a receipt's cost.  A verifier remembers the last *remember* checkpoints it
    verified: a receipt whose signed note is byte for byte one of them gets the same
    verified checkpoint, as verifying it again with the same keys and *origin* could
    only give the same result.  Any other note is verified in full, and one that
    fails is never remembered; nor is a note longer than
    :data:`REMEMBERED_NOTE_BYTES` (a genuine note can be padded with signature lines
    nobody checks, up to the 1 MiB a note may hold, so remembering such notes
    would let receipts fill memory).  Not to be shared between threads.

    Raises:
        ValueError: no witness key was given, or *remember* is below 1.
    """

    def __init__(self, witness_keys: Sequence[WitnessKey], *, origin: str | None = None,
                 remember: int = 1) -> None:
        if not witness_keys:
            raise ValueError("verifying a receipt needs at least one pinned witness key")
        if remember < 1:
            raise ValueError("a receipt verifier remembers at least one checkpoint")
        self._keys = tuple(witness_keys)
        self._origin = origin
        self._remember = remember
        self._verified: OrderedDict[bytes, VerifiedCheckpoint] = OrderedDict()

    def _checkpoint(self, note: bytes) -> VerifiedCheckpoint:
        checkpoint = self._verified.get(note)
        if checkpoint is not None:
            self._verified.move_to_end(note)
            return checkpoint
        checkpoint = verify_checkpoint(note, self._keys, origin=self._origin)
        if len(note) <= REMEMBERED_NOTE_BYTES:
            self._verified[note] = checkpoint
            if len(self._verified) > self._remember:
                self._verified.popitem(last=False)
        return checkpoint

    def verify(self, receipt: bytes | Receipt, bundle: LeafSource) -> VerifiedReceipt:
        """Verify *receipt* for a verified *bundle*; see :func:`verify_receipt`."""
        parsed = receipt if isinstance(receipt, Receipt) else Receipt.from_bytes(receipt)
        checkpoint = self._describes(parsed)
        # Step 4: the leaf is recomputed from the verified bundle, never read from the
        # receipt (CVE-2022-36056); the receipt's copy must agree with it.
        leaf = WitnessLeaf.from_bundle(bundle)
        if parsed.leaf != leaf:
            mine, theirs = leaf.to_json(), parsed.leaf.to_json()
            field = next(k for k in sorted(mine) if mine[k] != theirs[k])
            raise ReceiptMismatch(
                "receipt leaf does not match this bundle's statement "
                f"({field}: receipt has {theirs[field]!r}, bundle has {mine[field]!r})"
            )
        # Step 5: the recomputed leaf is in the signed tree at leafIndex.
        digest = leaf.hash()
        _included(parsed, checkpoint, digest)
        return VerifiedReceipt(parsed, checkpoint, leaf, digest)

    def verify_own_leaf(self, receipt: bytes | Receipt) -> VerifiedCheckpoint:
        """Steps 2, 3 and 5 with the receipt's own copy of its leaf: the checkpoint
        it holds, verified, when the receipt describes it.  This proves the receipt
        is one of that checkpoint's, not that it is any bundle's (which needs
        :meth:`verify`); a monitor comparing receipts' checkpoints needs no more.

        Raises:
            as :func:`verify_receipt`, but no step 4 ``ReceiptMismatch``.
        """
        parsed = receipt if isinstance(receipt, Receipt) else Receipt.from_bytes(receipt)
        checkpoint = self._describes(parsed)
        _included(parsed, checkpoint, parsed.leaf.hash())
        return checkpoint

    def _describes(self, parsed: Receipt) -> VerifiedCheckpoint:
        # Step 2: the checkpoint is signed by a pinned witness key named as its origin.
        checkpoint = self._checkpoint(parsed.checkpoint)
        # Step 3: the receipt describes that checkpoint.
        if parsed.origin != checkpoint.origin:
            raise ReceiptMismatch(
                f"receipt origin {parsed.origin!r} does not match the checkpoint's origin "
                f"{checkpoint.origin!r}"
            )
        if parsed.tree_size != checkpoint.size:
            raise ReceiptMismatch(
                f"receipt tree size {parsed.tree_size} does not match the checkpoint's tree "
                f"size {checkpoint.size}"
            )
        return checkpoint


def _included(parsed: Receipt, checkpoint: VerifiedCheckpoint, digest: bytes) -> None:
    """Step 5: the leaf *digest* is in the checkpoint's tree at the receipt's index."""
    try:
        verify_inclusion(
            digest, parsed.leaf_index, checkpoint.size, parsed.inclusion_proof,
            checkpoint.root,
        )
    except ProofError as e:
        raise ProofError(f"inclusion proof does not reach the checkpoint root ({e})") from e


def verify_receipt(
    receipt: bytes | Receipt,
    bundle: LeafSource,
    witness_keys: Sequence[WitnessKey],
    *,
    origin: str | None = None,
) -> VerifiedReceipt:
    """Verify a receipt for a verified bundle, offline (SPEC §12.5 steps 1-5).

    Args:
        receipt: the receipt file bytes, or a parsed receipt.
        bundle: the bundle's :class:`BundleReport` or :class:`VerifiedBundle`; its
            signed statement must have verified.
        witness_keys: the only witness keys trusted to sign checkpoints.
        origin: when given, the only log origin accepted.

    Raises:
        InvalidReceipt: the receipt or its checkpoint is malformed.
        NoteSignatureError: the checkpoint is not signed by a pinned witness key.
        ReceiptMismatch: the receipt contradicts its checkpoint (origin, tree size)
            or its leaf is not this bundle's.
        ProofError: the inclusion proof does not reach the checkpoint root.
        ValueError: *bundle* did not verify far enough to have a leaf, or no
            witness key was given.
    """
    return ReceiptVerifier(witness_keys, origin=origin).verify(receipt, bundle)


def receipt_path(bundle_path: str | os.PathLike[str]) -> str:
    """Return where the receipt of a bundle lives (SPEC §12.6):
    ``<name>.receipt.json`` beside ``<name>.spanproof.json``.

    Raises:
        ValueError: *bundle_path* does not end in ``.spanproof.json``.
    """
    path = os.fspath(bundle_path)
    if not path.endswith(BUNDLE_SUFFIX):
        raise ValueError(f"{path}: a bundle file name ends in {BUNDLE_SUFFIX!r}")
    return path[: -len(BUNDLE_SUFFIX)] + RECEIPT_SUFFIX


def kept_receipt(
    target: str,
    new: Receipt,
    verify: Callable[[bytes], object] | None = None,
    prove: Callable[[int, int], Sequence[bytes]] | None = None,
) -> str | None:
    """Whether the receipt file *target*, already beside a bundle, is kept instead of
    *new*, the receipt a witness just gave for that bundle (SPEC §12.6): what to say
    when it is, or None when there is none to keep (no file, or one that is not a
    receipt, which proves nothing and is replaced).

    A receipt is kept: it may be the only proof of what the log held when it was
    written, as a witness that later rolled back or forked answers from its new
    history.  That holds for one from another log, or for another statement or
    signer, too.  A file that cannot be read is kept: it may be a receipt.  One from
    this log for the same leaf is replaced when it does not verify with *verify*
    (the pinned witness keys; it raises :class:`SpanproofError`), which it must to be
    taken as proof of a rollback or fork.  Without *verify* another index is only
    reported.

    When both it and *new* verify, the two cannot both come from an honest log when
    they name other indexes, when they are of one tree size with other roots (a
    fork), or when the kept one's tree is the larger (a rollback).  When the kept
    one's tree is the smaller, *prove* (given a client of the witness) fetches the
    consistency proof between the two sizes, raising :class:`LogInconsistent` when
    the witness does not prove it, and the proof must verify; without *prove* the
    receipt is kept unchecked.  On a rollback or fork *new* is kept too, as the other
    signed checkpoint: beside *target* as ``<name>.receipt.conflict-<16 hex>.json``,
    named for its content (:func:`conflict_receipt_path`), never over a file already
    there.

    Raises:
        LogInconsistent: *target* is from the same log and for the same leaf as
            *new*, both verify, and they cannot both be honest; the message names
            the file *new* was saved to, or says why it could not be.
        TransportError: *prove* could not get the proof (the witness unavailable).
    """
    try:
        with open_regular(target) as f:
            raw = f.read(MAX_RECEIPT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"kept {target}, which cannot be read ({e.strerror}): move it away to store this one"
    try:
        old = Receipt.from_bytes(raw)
    except SpanproofError:
        return None  # not a receipt: it proves nothing
    if old.origin != new.origin or old.leaf != new.leaf:
        other = (f"from another log ({old.origin})" if old.origin != new.origin
                 else "for another statement or signer")
        return (f"kept the receipt already beside it ({target}), {other}: move it away "
                "to store this one")
    kept = f"kept the receipt already beside it ({target}, index {old.leaf_index} of {old.origin})"
    if verify is None:
        if old.leaf_index != new.leaf_index:
            return (f"kept the receipt already beside it ({target}), which names index "
                    f"{old.leaf_index} of {old.origin}; not verified (no witness key pinned), "
                    "it proves no rollback")
        return kept
    try:
        was = verify(raw)
    except SpanproofError:
        return None  # this log's receipt, but not its signature: it proves nothing
    try:
        now = verify(new.to_bytes())
    except SpanproofError:
        return kept  # the new one proves nothing against it
    signed = _checkpoint_of(was), _checkpoint_of(now)
    if signed[0] is not None and signed[1] is not None and not signed[0].shares_a_signer(
            signed[1]):
        # Two pinned keys signing one origin: what one signed is no evidence
        # against the other (SPEC §12.7, "signed by the same key").
        return (f"kept the receipt already beside it ({target}), whose checkpoint another "
                "pinned key signed: it proves no rollback of this witness; move it away to "
                "store this one")
    if old.leaf_index != new.leaf_index:
        raise _kept_conflict(
            target, new,
            f"the witness now has it at index {new.leaf_index}, but the receipt beside it "
            f"({target}) from the same log ({old.origin}) names index {old.leaf_index}: "
            "the log has lost or rewritten that entry (a rollback or a fork); that "
            "receipt is kept as the evidence (see spanproof monitor)")
    older, newer = _receipt_checkpoint(old), _receipt_checkpoint(new)
    try:
        if older.size < newer.size:
            if prove is None:
                return kept
            check_consistent(older, newer, prove(older.size, newer.size))
        else:
            check_consistent(older, newer, ())  # no proof: a fork or a rollback fails
    except LogInconsistent as e:
        raise _kept_conflict(
            target, new,
            f"the witness's receipt for it (tree size {newer.size}) and the receipt beside "
            f"it ({target}, tree size {older.size}), both for index {old.leaf_index} of "
            f"{old.origin}, cannot both be honest: {e}; that receipt is kept as the "
            "evidence (see spanproof monitor)") from e
    return kept


_CONFLICT_NAME = re.compile(r".+\.receipt\.conflict-[0-9a-f]{16}\.json", re.DOTALL)


def is_conflict_receipt_name(name: str) -> bool:
    """Whether the file name *name* is one :func:`conflict_receipt_path` gives: a
    receipt kept as the other half of a fork's evidence (SPEC §12.6)."""
    return _CONFLICT_NAME.fullmatch(name) is not None


def conflict_receipt_path(target: str, receipt: bytes) -> str:
    """Where a receipt that contradicts the receipt file *target* is kept (SPEC
    §12.6): ``<name>.receipt.conflict-<16 hex>.json`` for ``<name>.receipt.json``,
    the hex the start of the SHA-256 of its bytes *receipt*.  The name does not end
    in ``.receipt.json``, so it is never taken for the bundle's receipt."""
    stem = target[: -len(".json")] if target.endswith(RECEIPT_SUFFIX) else target
    return f"{stem}.conflict-{hashlib.sha256(receipt).hexdigest()[:16]}.json"


def _checkpoint_of(verified: object) -> VerifiedCheckpoint | None:
    """The verified checkpoint of what a receipt's *verify* returned (a
    :class:`VerifiedReceipt` or :class:`VerifiedCheckpoint`); None for anything else."""
    if isinstance(verified, VerifiedReceipt):
        return verified.checkpoint
    return verified if isinstance(verified, VerifiedCheckpoint) else None


def _receipt_checkpoint(receipt: Receipt) -> Checkpoint:
    """The checkpoint a receipt holds, read from its note (verified by the caller)."""
    return Checkpoint.from_text(SignedNote.from_bytes(receipt.checkpoint).text)


def _kept_conflict(target: str, new: Receipt, reason: str) -> LogInconsistent:
    """The error for a receipt *new* that contradicts the one kept at *target*, once
    *new* is saved beside it (or could not be)."""
    data = new.to_bytes()
    conflict = conflict_receipt_path(target, data)
    try:
        write_once(conflict, data)
        saved = f"the witness's new receipt is saved as {conflict}"
    except FileExistsError:
        saved = (f"the witness's new receipt could not be saved: {conflict} exists and "
                 "holds something else")
    except OSError as e:
        saved = f"the witness's new receipt could not be saved to {conflict} ({e.strerror or e})"
    return LogInconsistent(f"{reason}; {saved}")


def _check(status: Status, message: str) -> Check:
    # A receipt is anyone's, and a message may quote it: cut as the other checks' are.
    return Check(RECEIPT_CHECK, RECEIPT_CHECK_STEP, status, cut_message(message))


def check_receipt(
    data: bytes,
    bundle: LeafSource,
    witness_keys: Sequence[WitnessKey],
    *,
    origin: str | None = None,
    verifier: ReceiptVerifier | None = None,
) -> tuple[Check, VerifiedReceipt | None]:
    """Run :func:`verify_receipt` and report it as a ``receipt`` check; never raises
    for a bad receipt.  With *verifier* (built with the same keys and *origin*), it
    verifies instead, sparing checkpoints it has verified before.

    Raises:
        ValueError: no witness key was given, or *bundle* has no verified statement.
    """
    try:
        if verifier is not None:
            verified = verifier.verify(data, bundle)
        else:
            verified = verify_receipt(data, bundle, witness_keys, origin=origin)
    except SpanproofError as e:
        return _check(Status.FAIL, str(e)), None
    return (
        _check(
            Status.PASS,
            f"logged at index {verified.leaf_index} of {verified.origin} "
            f"(tree size {verified.tree_size}); checkpoint signed by a pinned witness key",
        ),
        verified,
    )


def check_receipt_for_bundle(
    bundle_path: str | os.PathLike[str],
    report: LeafSource,
    witness_keys: Sequence[WitnessKey],
    *,
    required: bool = False,
    origin: str | None = None,
    verifier: ReceiptVerifier | None = None,
) -> Check:
    """Check the receipt beside a bundle (for ``spanproof verify --witness-key``),
    with *verifier* when given (see :func:`check_receipt`).

    PASS: the receipt verified.  FAIL: it did not, or it is missing while
    *required*.  SKIPPED: no receipt and not required, no witness key pinned, or
    the bundle's statement did not verify (so there is no leaf to look for).
    Never raises for bad input.
    """
    if report.statement is None or report.statement_digest is None or report.signer_keyid is None:
        return _check(Status.SKIPPED, "not run: the bundle's signed statement did not verify")
    try:
        path = receipt_path(bundle_path)
    except ValueError as e:
        return _check(Status.FAIL if required else Status.SKIPPED, f"no receipt: {e}")
    try:
        with open_regular(path) as f:
            data = f.read(MAX_RECEIPT_BYTES + 1)
    except FileNotFoundError:
        return _check(
            Status.FAIL if required else Status.SKIPPED, f"no receipt (expected {path})"
        )
    except OSError as e:
        if not witness_keys and not required:
            # Not checked either way: what cannot be read changes no verdict, as a
            # malformed receipt does not (``report`` failed a bundle ``verify`` passed).
            return _check(Status.SKIPPED, "receipt not checked: no witness key is pinned "
                                          f"(--witness-key); {path} cannot be read: {e.strerror}")
        return _check(Status.FAIL, f"cannot read receipt {path}: {e.strerror}")
    if not witness_keys:
        return _check(
            Status.FAIL if required else Status.SKIPPED,
            "receipt not checked: no witness key is pinned (--witness-key)",
        )
    check, _verified = check_receipt(data, report, witness_keys, origin=origin,
                                     verifier=verifier)
    return check


def attach_receipt_check(report: BundleReport, check: Check) -> BundleReport:
    """Return *report* with the ``receipt`` check added in step order; a FAIL makes
    the verdict FAIL (an unverifiable receipt, or a missing one that was required,
    fails the bundle), PASS and SKIPPED leave the verdict as it was."""
    if check.status is Status.FAIL and not check.message.startswith("receipt"):
        # The failure line names the check: "witness receipt: checkpoint not signed ...".
        check = dataclasses.replace(check, message=f"witness receipt: {check.message}")
    checks = tuple(sorted((*report.checks, check), key=lambda c: c.step))
    if check.status is not Status.FAIL or report.verdict is Verdict.FAIL:
        return dataclasses.replace(report, checks=checks)
    return dataclasses.replace(
        report, checks=checks, verdict=Verdict.FAIL, error=VerificationError(check.message)
    )
