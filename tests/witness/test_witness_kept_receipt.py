"""``kept_receipt`` (SPEC §12.6): a receipt already beside a bundle is kept, and a
witness's new receipt for the same entry that cannot come from the same honest log
is a fork or rollback whose new receipt is kept too, as evidence."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, OTHER_WITNESS_SEED, WITNESS_SEED

from spanproof.verifier.checkpoint import Checkpoint, SignedNote, verify_checkpoint
from spanproof.verifier.errors import LogInconsistent, TransportError
from spanproof.verifier.merkle import leaf_hash
from spanproof.verifier.receipt import (
    Receipt,
    ReceiptVerifier,
    WitnessLeaf,
    conflict_receipt_path,
    kept_receipt,
    receipt_path,
)
from spanproof.witness.monitor import check_receipts, find_receipts, read_receipt_checkpoints
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.tree import MerkleTree

SIGNER = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
LEAF = WitnessLeaf("sha256:" + "a" * 64, "1" * 32, 0, "instance", "b" * 64)
OTHERS = [leaf_hash(bytes([i])) for i in range(40)]


def receipt_in(tree: MerkleTree) -> Receipt:
    """The receipt of entry 0 (:data:`LEAF`) against *tree*'s checkpoint, signed."""
    checkpoint = SIGNER.sign(Checkpoint(ORIGIN, tree.size, tree.root()))
    return Receipt(ORIGIN, 0, tree.size, tuple(tree.inclusion_proof(0)), checkpoint, LEAF)


OTHER = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED), ORIGIN)
BOTH = [SIGNER.key, OTHER.key]


def _signed_by(signers: Sequence[CheckpointSigner], tree: MerkleTree) -> bytes:
    """*tree*'s checkpoint as one note signed by each of *signers*, in that order."""
    notes = [SignedNote.from_bytes(s.sign(Checkpoint(ORIGIN, tree.size, tree.root())))
             for s in signers]
    return SignedNote(notes[0].text, tuple(sig for n in notes for sig in n.signatures)).to_bytes()


def _receipt(signers: Sequence[CheckpointSigner], tree: MerkleTree) -> Receipt:
    return Receipt(ORIGIN, 0, tree.size, tuple(tree.inclusion_proof(0)),
                   _signed_by(signers, tree), LEAF)


def history(*others: int) -> MerkleTree:
    """A log whose entry 0 is :data:`LEAF`, then the entries *others*."""
    return MerkleTree([LEAF.hash(), *(OTHERS[i] for i in others)])


def verify(raw: bytes) -> object:
    return ReceiptVerifier([SIGNER.key]).verify_own_leaf(raw)


def kept_beside(tmp_path: Path, receipt: Receipt) -> Path:
    target = tmp_path / "x.receipt.json"
    target.write_bytes(receipt.to_bytes())
    return target


def saved(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("x.receipt.conflict-*.json"))


@pytest.mark.parametrize(("kept", "new", "defect"), [
    (history(*range(9)), history(*range(10, 19)),
     "fork: two checkpoints of tree size 10 with different roots"),
    (history(*range(9)), history(15, 16),
     "rollback: the log now shows tree size 3, smaller than the size 10"),
], ids=["same-size-other-root", "kept-tree-larger"])
def test_a_new_receipt_for_the_same_index_from_another_history_is_a_fork_kept_as_evidence(
    tmp_path: Path, kept: MerkleTree, new: MerkleTree, defect: str,
) -> None:
    # Only the index was compared: both name index 0, so the new receipt was
    # dropped with "OK ... kept", and with it the only copy of the other checkpoint.
    old, fresh = receipt_in(kept), receipt_in(new)
    target = kept_beside(tmp_path, old)
    with pytest.raises(LogInconsistent, match=defect) as alert:
        kept_receipt(str(target), fresh, verify)
    (conflict,) = saved(tmp_path)
    assert str(conflict) == conflict_receipt_path(str(target), fresh.to_bytes())
    assert str(alert.value).endswith(f"the witness's new receipt is saved as {conflict}")
    assert conflict.read_bytes() == fresh.to_bytes()
    assert target.read_bytes() == old.to_bytes()
    # Found again (the next submission): the same file, nothing more.
    with pytest.raises(LogInconsistent, match=defect):
        kept_receipt(str(target), fresh, verify)
    assert saved(tmp_path) == [conflict]
    # `verify` never takes it for the bundle's receipt; a monitor checks it too.
    assert receipt_path(str(tmp_path / "x.spanproof.json")) == str(target)
    assert find_receipts(str(tmp_path)) == (sorted([str(conflict), str(target)]), [])


def test_a_conflicting_receipt_never_replaces_a_file(tmp_path: Path) -> None:
    fresh = receipt_in(history(*range(10, 19)))
    target = kept_beside(tmp_path, receipt_in(history(*range(9))))
    taken = Path(conflict_receipt_path(str(target), fresh.to_bytes()))
    taken.write_bytes(b"someone else's\n")
    with pytest.raises(LogInconsistent, match=(
        f"fork: .*; the witness's new receipt could not be saved: {taken} exists and "
        "holds something else"
    )):
        kept_receipt(str(target), fresh, verify)
    assert taken.read_bytes() == b"someone else's\n"


def test_a_kept_receipt_of_a_smaller_tree_is_kept_once_the_witness_proves_it_grew(
    tmp_path: Path,
) -> None:
    grown = history(*range(9))
    old = receipt_in(history(*range(3)))
    target = kept_beside(tmp_path, old)
    asked: list[tuple[int, int]] = []

    def prove(size1: int, size2: int) -> Sequence[bytes]:
        asked.append((size1, size2))
        return grown.consistency_proof(size1, size2)

    said = kept_receipt(str(target), receipt_in(grown), verify, prove)
    assert said == f"kept the receipt already beside it ({target}, index 0 of {ORIGIN})"
    assert asked == [(4, 10)] and not saved(tmp_path)
    # Without a way to ask (the producer's background submitter): kept unchecked.
    assert kept_receipt(str(target), receipt_in(grown), verify) == said


def test_a_kept_receipt_of_a_smaller_tree_the_new_one_does_not_extend_is_a_fork(
    tmp_path: Path,
) -> None:
    rewritten = history(20, 21, 22, *range(3, 9))  # entries 1-3 differ
    target = kept_beside(tmp_path, receipt_in(history(*range(3))))
    fresh = receipt_in(rewritten)
    with pytest.raises(LogInconsistent,
                       match="fork: the tree of size 10 does not extend the tree of size 4"):
        kept_receipt(str(target), fresh, verify, rewritten.consistency_proof)
    (conflict,) = saved(tmp_path)
    assert conflict.read_bytes() == fresh.to_bytes()


def test_a_witness_that_will_not_prove_its_tree_grew_is_a_fork_and_one_unavailable_is_not(
    tmp_path: Path,
) -> None:
    target = kept_beside(tmp_path, receipt_in(history(*range(3))))
    fresh = receipt_in(history(*range(9)))

    def refused(size1: int, size2: int) -> Sequence[bytes]:
        raise LogInconsistent(f"the witness signed tree size {size2} but does not prove "
                              f"that it extends tree size {size1}: HTTP 404: no")

    def unavailable(size1: int, size2: int) -> Sequence[bytes]:
        raise TransportError("HTTP 503: busy")

    with pytest.raises(TransportError, match="503"):
        kept_receipt(str(target), fresh, verify, unavailable)
    assert not saved(tmp_path)
    with pytest.raises(LogInconsistent, match="does not prove that it extends tree size 4"):
        kept_receipt(str(target), fresh, verify, refused)
    assert len(saved(tmp_path)) == 1


def test_a_new_receipt_that_does_not_verify_proves_nothing_against_the_kept_one(
    tmp_path: Path,
) -> None:
    target = kept_beside(tmp_path, receipt_in(history(*range(9))))
    unsigned = _receipt([OTHER], history(*range(10, 19)))  # by a key not pinned here
    said = kept_receipt(str(target), unsigned, verify)
    assert said is not None and said.startswith("kept the receipt already beside it")
    assert not saved(tmp_path)


def test_a_receipt_another_pinned_key_signed_under_the_origin_proves_no_fork(
    tmp_path: Path,
) -> None:
    # With both witnesses' keys pinned, the other one's receipt of another root at
    # the same size was a "fork" of this witness, its receipt saved as evidence
    # against it: the two checkpoints are two keys' word, proof against neither.
    target = kept_beside(tmp_path, receipt_in(history(*range(9))))
    tree = history(*range(10, 19))
    theirs = _receipt([OTHER], tree)

    def verify_both(raw: bytes) -> object:
        return ReceiptVerifier(BOTH).verify_own_leaf(raw)

    said = kept_receipt(str(target), theirs, verify_both)
    assert said is not None and "whose checkpoint another pinned key signed" in said
    assert not saved(tmp_path)
    # One key, the same two roots: the fork it is.
    with pytest.raises(LogInconsistent, match="two checkpoints of tree size 10"):
        kept_receipt(str(target), receipt_in(tree), verify_both)


def test_a_fork_one_key_signed_alerts_though_a_note_names_another_pinned_key_first(
    tmp_path: Path,
) -> None:
    # Only the first pinned signature of a note was compared: a witness rotating its
    # key (signing with the new one, then the old) escaped the fork check of a
    # receipt the old key alone had signed, and kept_receipt let its answer by.
    kept_tree, shown_tree = history(*range(9)), history(*range(10, 19))
    current = verify_checkpoint(_signed_by([OTHER, SIGNER], shown_tree), BOTH)
    assert current.key.public_key == OTHER.key.public_key  # the first line's key
    held = verify_checkpoint(_signed_by([SIGNER], kept_tree), BOTH)
    with pytest.raises(LogInconsistent, match="two checkpoints of tree size 10"):
        check_receipts(None, current, [("x.receipt.json", held)],  # type: ignore[arg-type]
                       str(tmp_path / "m.json"))

    target = kept_beside(tmp_path, _receipt([SIGNER], kept_tree))
    with pytest.raises(LogInconsistent, match="two checkpoints of tree size 10"):
        kept_receipt(str(target), _receipt([OTHER, SIGNER], shown_tree),
                     lambda raw: ReceiptVerifier(BOTH).verify_own_leaf(raw))


@pytest.mark.parametrize("order", ["other-key-first", "same-key-first"])
def test_receipts_of_one_checkpoint_signed_by_two_keys_are_held_apart(
    tmp_path: Path, order: str,
) -> None:
    # Receipts of one checkpoint were held as one object, the first one's: with the
    # other key's receipt read first, this key's fork went unalerted.
    kept_tree, shown_tree = history(*range(9)), history(*range(10, 19))
    theirs, ours = tmp_path / "a.receipt.json", tmp_path / "b.receipt.json"
    theirs.write_bytes(_receipt([OTHER], kept_tree).to_bytes())
    ours.write_bytes(_receipt([SIGNER], kept_tree).to_bytes())
    paths = [str(theirs), str(ours)] if order == "other-key-first" else [str(ours), str(theirs)]
    held, unreadable = read_receipt_checkpoints(paths, BOTH)
    assert unreadable == [] and held[0][1] is not held[1][1]
    current = verify_checkpoint(_signed_by([SIGNER], shown_tree), BOTH)
    with pytest.raises(LogInconsistent, match=f"receipt {ours}: fork"):
        check_receipts(None, current, held, str(tmp_path / "m.json"))  # type: ignore[arg-type]


def test_a_monitor_does_not_follow_a_link_to_a_directory_above_the_one_given(
    tmp_path: Path,
) -> None:
    # As `verify` (walk_files): a link to / made `monitor --receipts DIR` read every
    # receipt on the disk as DIR's; it is named as a directory not searched instead.
    top, other = tmp_path / "receipts", tmp_path / "elsewhere"
    top.mkdir()
    other.mkdir()
    target = kept_beside(top, receipt_in(history(*range(3))))
    elsewhere = kept_beside(other, receipt_in(history(*range(4))))
    os.symlink(tmp_path, top / "up")
    found, problems = find_receipts(str(top))
    assert found == [str(target)] and str(elsewhere) not in found
    assert problems == [(str(top / "up"), "cannot list the directory (a symbolic link to "
                         f"{tmp_path.resolve()}, which holds {top}: not followed)")]
