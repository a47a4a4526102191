"""RFC 9162 Merkle proofs: the transparency-dev/merkle vectors, and the witness's tree.

Source of the vectors: transparency-dev/merkle ``testdata/`` (see
``../shared/vectors/README.md``).  Every ``happy-path`` case must verify and every
case with ``wantErr: true`` must be rejected; the other ``wantErr: false`` cases
verify too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from witness_helpers import VECTORS, vectors_dir

from spanproof.verifier import errors
from spanproof.verifier.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from spanproof.witness.tree import MerkleTree

# The leaves of the vector trees (transparency-dev/merkle proof/verify_test.go).
RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]


def _cases(kind: str) -> list[Any]:
    base = VECTORS / "merkle" / kind
    files = sorted(base.rglob("*.json")) if base.is_dir() else []
    if not files:
        # Collected even without the vectors, so the test runs (and skips or fails
        # under CI=true) instead of silently disappearing.
        return [pytest.param(None, id="vectors-missing")]
    return [pytest.param(f, id=str(f.relative_to(base))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _load(path: Path | None, kind: str) -> dict[str, Any]:
    vectors_dir("merkle/" + kind)
    assert path is not None
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", _cases("inclusion"))
def test_inclusion_vector(path: Path | None) -> None:
    case = _load(path, "inclusion")
    proof = [_b64(h) for h in case["proof"] or []]
    args = (_b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(errors.ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"))
def test_consistency_vector(path: Path | None) -> None:
    case = _load(path, "consistency")
    proof = [_b64(h) for h in case["proof"] or []]
    args = (case["size1"], case["size2"], proof, _b64(case["root1"]), _b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(errors.ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_vectors_include_every_kind_of_case() -> None:
    base = vectors_dir("merkle")
    names = {p.name for p in base.rglob("*.json")}
    assert "happy-path.json" in names
    wrong = [p for p in base.rglob("*.json") if json.loads(p.read_text())["wantErr"]]
    assert len(wrong) > 100


@pytest.mark.parametrize("path", [p for p in _cases("inclusion") if "happy-path" in str(p.id)])
def test_witness_tree_generates_the_vector_inclusion_proofs(path: Path | None) -> None:
    case = _load(path, "inclusion")
    tree = MerkleTree(leaf_hash(d) for d in RFC6962_LEAVES)
    assert tree.root(case["treeSize"]) == _b64(case["root"])
    assert tree.leaf(case["leafIdx"]) == _b64(case["leafHash"])
    proof = [_b64(h) for h in case["proof"] or []]
    assert tree.inclusion_proof(case["leafIdx"], case["treeSize"]) == proof


@pytest.mark.parametrize("path", [p for p in _cases("consistency") if "happy-path" in str(p.id)])
def test_witness_tree_generates_the_vector_consistency_proofs(path: Path | None) -> None:
    case = _load(path, "consistency")
    tree = MerkleTree(leaf_hash(d) for d in RFC6962_LEAVES)
    proof = [_b64(h) for h in case["proof"] or []]
    assert tree.consistency_proof(case["size1"], case["size2"]) == proof


def test_hashing_uses_rfc9162_domain_separation() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_generated_proofs_verify_for_every_position_and_size() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(37)]
    tree = MerkleTree()
    for n, h in enumerate(leaves, 1):
        tree.append(h)
        assert tree.root() == root_of(leaves[:n])
    for size in range(1, 38):
        root = tree.root(size)
        for index in range(size):
            verify_inclusion(leaves[index], index, size, tree.inclusion_proof(index, size), root)
        for size1 in range(1, size + 1):
            proof = tree.consistency_proof(size1, size)
            verify_consistency(size1, size, proof, tree.root(size1), root)


def test_truncate_undoes_appends() -> None:
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(10))
    root7 = tree.root(7)
    tree.truncate(7)
    assert tree.size == 7 and tree.root() == root7
    tree.append(leaf_hash(b"other"))
    assert tree.root() != MerkleTree(leaf_hash(bytes([i])) for i in range(8)).root()


def test_proof_error_is_a_verification_error() -> None:
    assert issubclass(errors.ProofError, errors.VerificationError)
    with pytest.raises(errors.ProofError, match="not inside"):
        verify_inclusion(EMPTY_ROOT, 3, 3, [], EMPTY_ROOT)


def test_inclusion_proof_with_an_extra_hash_fail() -> None:
    # A proof longer than the position needs is refused for its shape, before any
    # hashing: root_from_inclusion_proof never returns a root for it.
    leaves = [leaf_hash(bytes([i])) for i in range(5)]
    tree = MerkleTree(leaves)
    proof = list(tree.inclusion_proof(2, 5))
    with pytest.raises(errors.ProofError, match=f"has {len(proof) + 1} hashes; leaf 2 of a "
                       f"tree of size 5 needs {len(proof)}"):
        root_from_inclusion_proof(leaves[2], 2, 5, [*proof, leaves[0]])


@pytest.mark.parametrize("length", [31, 33])
def test_proof_hash_of_the_wrong_length_fail(length: int) -> None:
    # Every hash of a proof is 32 bytes (RFC 9162 §2.1): one of another length is
    # refused as such, in inclusion and in consistency proofs alike.
    leaves = [leaf_hash(bytes([i])) for i in range(5)]
    tree = MerkleTree(leaves)
    proof = list(tree.inclusion_proof(2, 5))
    proof[0] = proof[0][:length] + b"\x00" * (length - 32)
    with pytest.raises(errors.ProofError, match=f"inclusion proof hash 0 is {length} bytes"):
        verify_inclusion(leaves[2], 2, 5, proof, tree.root(5))
    consistency = list(tree.consistency_proof(3, 5))
    consistency[-1] = consistency[-1][:length] + b"\x00" * (length - 32)
    with pytest.raises(errors.ProofError, match=f"consistency proof hash {len(consistency) - 1} "
                       f"is {length} bytes"):
        verify_consistency(3, 5, consistency, tree.root(3), tree.root(5))
