"""RFC 9162 Merkle tree hashing and proof verification (SPEC §12.2).

The witness log is an RFC 9162 (Certificate Transparency v2) Merkle tree over
SHA-256, the same tree RFC 6962 defines: a leaf hashes as
``SHA-256(0x00 || data)``, an interior node as ``SHA-256(0x01 || left || right)``,
and the empty tree as ``SHA-256("")``.  The distinct prefixes keep a leaf from
ever being read as a node (second-preimage resistance, RFC 9162 §2.1.1).

Pure functions over bytes.  Proof *generation* belongs to the log (the witness);
here is only what a verifier needs: hashing, the root of a list of leaf hashes,
and checking inclusion (RFC 9162 §2.1.3.2) and consistency (§2.1.4.2) proofs.
The checks follow the algorithm of transparency-dev/merkle's ``proof`` package and
pass its published test vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "leaf_hash",
    "node_hash",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
#: The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    # The largest power of two strictly smaller than n (n >= 2), RFC 9162 §2.1.1.
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash MTH of a list of leaf hashes (RFC 9162 §2.1.1).

    Linear in the number of leaves; a log keeps interior nodes instead of calling
    this for every checkpoint.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    # Pairwise reduction gives the same tree as RFC 9162's recursive split: an odd
    # last node is carried up unchanged until it meets a left sibling.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what} proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def _inner_proof_size(index: int, size: int) -> int:
    # Levels below the point where the paths to `index` and to `size - 1` diverge.
    return (index ^ (size - 1)).bit_length()


def _decompose(index: int, size: int) -> tuple[int, int]:
    inner = _inner_proof_size(index, size)
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    # Like _chain_inner, but only left siblings: the hash of the older subtree.
    for i, h in enumerate(proof):
        if (index >> i) & 1 == 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that an inclusion proof for *leaf* at *index* implies for a
    tree of *size* leaves (RFC 9162 §2.1.3.2).

    Raises:
        ProofError: ``index >= size``, a hash of the wrong length, or a proof of the
            wrong length for this position.
    """
    if index < 0 or size < 0:
        raise ProofError(f"leaf index {index} and tree size {size} must not be negative")
    if index >= size:
        raise ProofError(f"leaf index {index} is not inside a tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    _check_hashes(proof, "inclusion")
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes; leaf {index} of a tree of size "
            f"{size} needs {inner + border}"
        )
    result = _chain_inner(leaf, proof[:inner], index)
    return _chain_border_right(result, proof[inner:])


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that *leaf* (a leaf hash) is entry *index* of the tree of *size* leaves
    whose root is *root* (RFC 9162 §2.1.3.2).

    Raises:
        ProofError: the proof is malformed for this position or does not lead to
            *root*.
    """
    calculated = root_from_inclusion_proof(leaf, index, size, proof)
    if calculated != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not reach the root of tree size {size}"
        )


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """Check the old-root half of a consistency proof and return the new root it
    implies (RFC 9162 §2.1.4.2).

    Raises:
        ProofError: ``size1`` is 0 (nothing to be consistent with), ``size2 < size1``,
            the proof has the wrong shape, or it does not reproduce *root1*.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes {size1} and {size2} must not be negative")
    if size2 < size1:
        raise ProofError(f"tree size {size2} is smaller than the earlier size {size1}")
    if size1 == 0:
        # Every tree extends the empty tree; a proof "from size 0" proves nothing and
        # is rejected so that a caller cannot mistake it for a check.
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("equal tree sizes need an empty consistency proof")
        return root1
    if not proof:
        raise ProofError(f"empty consistency proof from size {size1} to {size2}")
    _check_hashes(proof, "consistency")
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zero bits of size1
    inner -= shift
    # The proof starts with the hash of the 2^shift subtree ending at size1, unless
    # size1 is that very power of two, whose hash is root1 itself.
    if size1 == 1 << shift:
        seed, start = root1, 0
    else:
        seed, start = proof[0], 1
    if len(proof) != start + inner + border:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes; sizes {size1} to {size2} need "
            f"{start + inner + border}"
        )
    rest = proof[start:]
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if hash1 != root1:
        raise ProofError(
            f"consistency proof does not reproduce the root of tree size {size1}"
        )
    return _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of *size2* leaves with root *root2* extends the tree of
    *size1* leaves with root *root1* (RFC 9162 §2.1.4.2): every leaf of the older
    tree is unchanged, in the same place.

    Raises:
        ProofError: the sizes cannot be consistent, the proof is malformed, or it
            does not connect *root1* to *root2*.
    """
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    if calculated != root2:
        raise ProofError(
            f"consistency proof from size {size1} does not reach the root of tree size {size2}"
        )
