"""docs/SPEC.md §12: the worked example (§12.12) is recomputed, and the documented
API, error messages and flags are the ones the code has."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ROOT

from spanproof.verifier.checkpoint import Checkpoint, WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.merkle import leaf_hash
from spanproof.verifier.receipt import Receipt, WitnessLeaf, verify_receipt
from spanproof.verifier.verify import check_bundle
from spanproof.witness._cli import add_commands
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.tree import MerkleTree

DOC = ROOT / "docs" / "SPEC.md"
EXAMPLE = ROOT / "docs" / "example"
EXAMPLE_WITNESS_SEED = bytes(range(32, 64))
EXAMPLE_ORIGIN = "witness.example/spanproof"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_worked_example_values_are_current(doc: str) -> None:
    bundle = EXAMPLE / "example.spanproof.json"
    if not bundle.exists():
        pytest.skip("docs/example is not present")
    report = check_bundle(bundle, TrustRoot.from_pem_files([str(EXAMPLE / "example.pub")]))
    leaf = WitnessLeaf.from_bundle(report)
    h0, h2 = leaf_hash(b"example entry 0"), leaf_hash(b"example entry 2")
    tree = MerkleTree([h0, leaf.hash(), h2])
    signer = CheckpointSigner(
        Ed25519PrivateKey.from_private_bytes(EXAMPLE_WITNESS_SEED), EXAMPLE_ORIGIN
    )
    note = signer.sign(Checkpoint(EXAMPLE_ORIGIN, 3, tree.root()))
    receipt = Receipt(EXAMPLE_ORIGIN, 1, 3, tuple(tree.inclusion_proof(1)), note, leaf)
    verify_receipt(receipt.to_bytes(), report, [WitnessKey.from_vkey(signer.vkey)])
    quoted = [
        str(report.statement_digest),
        str(report.signer_keyid),
        leaf.encode().decode(),
        leaf.hash().hex(),
        h0.hex(),
        h2.hex(),
        tree.root().hex(),
        signer.key.public_pem().decode().strip(),
        signer.vkey,
        note.decode().rstrip("\n"),
        base64.b64encode(tree.root()).decode(),
        receipt.to_bytes().decode().rstrip("\n"),
    ]
    for value in quoted:
        assert value in doc, f"SPEC.md §12.12 is out of date: {value[:60]}..."


def test_documented_routes_exist(doc: str) -> None:
    from spanproof.witness.app import create_app

    class _Stub:
        pass

    app = create_app(_Stub())  # type: ignore[arg-type]
    paths = {getattr(r, "path", "") for r in app.routes}
    assert paths == {
        "/",
        "/v1/submit",
        "/v1/submit-batch",
        "/v1/checkpoint",
        "/v1/proof/inclusion",
        "/v1/proof/consistency",
        "/v1/lookup",
        "/v1/receipt",
        "/v1/check",
        "/v1/info",
    }
    for path in paths - {"/"}:
        assert f"{path}" in doc


def test_documented_messages_are_the_verifiers(doc: str) -> None:
    import inspect

    from spanproof.verifier import checkpoint, receipt

    source = inspect.getsource(receipt) + inspect.getsource(checkpoint)
    for message in (
        "checkpoint not signed by a pinned witness key",
        "receipt leaf does not match this bundle's statement",
        "inclusion proof does not reach the checkpoint root",
    ):
        assert message in " ".join(doc.split()) and message in source


def test_documented_flags_exist(doc: str) -> None:
    parser = argparse.ArgumentParser(prog="spanproof")
    add_commands(parser.add_subparsers(dest="command"))
    text = doc.replace("\n  ", " ")
    for flag in (
        "--listen",
        "--db",
        "--key",
        "--origin",
        "--producer-key",
        "--producer-trust-root",
        "--max-body",
        "--url",
        "--witness-key",
        "--state",
        "--timeout",
    ):
        assert flag in text
    help_text = parser.format_help()
    assert "witness" in help_text and "monitor" in help_text


def test_doc_has_numbered_sections(doc: str) -> None:
    for n in range(1, 14):
        assert f"### 12.{n} " in doc
    assert Path(DOC).read_bytes().decode("utf-8")
