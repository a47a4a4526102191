"""The witness's in-memory Merkle tree: append, roots and proofs at any size (RFC 9162).

Every *complete* subtree hash is kept: level ``k`` holds the hash of each aligned
run of ``2**k`` leaves once its last leaf arrived.  The root of any prefix of the
log, inclusion proofs and consistency proofs are then built from O(log n) stored
nodes plus O(log n) right-border nodes computed on the fly (each O(log n)), so a
proof costs O(log² n) hashes instead of the O(n) of hashing every leaf again.
Memory is about two hashes per leaf, each a Python bytes object: ~147 bytes a leaf
measured, ~150 MB per million entries.

The tree is rebuilt from the stored leaf hashes when the witness starts (O(n));
see ``witness/store.py``.  Not thread-safe: the witness serializes access.
"""

from __future__ import annotations

from collections.abc import Iterable

from spanproof.verifier.merkle import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = ["MerkleTree"]


def _split(n: int) -> int:
    # The largest power of two strictly smaller than n (n >= 2), RFC 9162 §2.1.1.
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 Merkle tree over leaf hashes."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        """The leaf hash at *index*.

        Raises:
            IndexError: no such leaf.
        """
        if not 0 <= index < self.size:
            raise IndexError(f"no leaf {index} in a tree of size {self.size}")
        return self._levels[0][index]

    def append(self, leaf_hash: bytes) -> int:
        """Append a leaf hash; return its index.

        Raises:
            ValueError: *leaf_hash* is not 32 bytes.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        index = self.size
        self._levels[0].append(leaf_hash)
        level, i = 0, index
        while i % 2 == 1:  # a right child completes its parent
            parent = node_hash(self._levels[level][i - 1], self._levels[level][i])
            level += 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(parent)
            i //= 2
        return index

    def truncate(self, size: int) -> None:
        """Forget every leaf from *size* on (to undo an append that was not persisted).

        Raises:
            ValueError: *size* is larger than the tree.
        """
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot truncate a tree of size {self.size} to {size}")
        for k, nodes in enumerate(self._levels):
            del nodes[size >> k :]

    def _hash(self, start: int, end: int) -> bytes:
        # MTH(D[start:end]); callers keep 0 <= start < end <= size.
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            k = n.bit_length() - 1
            return self._levels[k][start >> k]
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first *size* leaves (default: all).

        Raises:
            ValueError: *size* is larger than the tree.
        """
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The RFC 9162 §2.1.3.1 inclusion proof of leaf *index* in the tree of *size*.

        Raises:
            ValueError: *size* is larger than the tree, or *index* is not below it.
        """
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:  # PATH(m, D[start:end]), iteratively, bottom hash last
            k = _split(end - start)
            if m < k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start, m = start + k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The RFC 9162 §2.1.4.1 consistency proof from tree size *size1* to *size2*.

        Raises:
            ValueError: sizes outside ``0 < size1 <= size2 <= size``.
        """
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise ValueError(f"no consistency proof from size {size1} to {size2}")
        proof: list[bytes] = []
        start, end, m, complete = 0, size2, size1, True
        while True:  # SUBPROOF(m, D[start:end], complete), iteratively
            n = end - start
            if m == n:
                if not complete:
                    proof.append(self._hash(start, end))
                break
            k = _split(n)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start, m, complete = start + k, m - k, False
        proof.reverse()
        return proof
