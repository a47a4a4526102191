"""A bundle that declares losses (INCOMPLETE) and whose witness receipt does not verify
is FAIL, and its reason names the receipt, not only the declared losses: the losses
alone would make it INCOMPLETE, so a reason that named them hid why it failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import INSTANCE, ORIGIN, PRODUCER_SEED, SEALED_AT, body, trace_id

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier._cli import main
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.verify import Verdict
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

MISMATCH = "receipt leaf does not match this bundle's statement"


@pytest.fixture
def incomplete_with_foreign_receipt(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_key: SigningKey,
    producer_trust: TrustRoot,
) -> tuple[Path, Path, str]:
    """(bundle declaring 2 dropped spans, producer public key file, witness vkey); the
    receipt beside the bundle is a genuine one, of another bundle."""
    trace = trace_id(1)
    sealed = seal(trace, [body(trace, 0)], ChainPosition.genesis(trace),
                  signer=SigningKey.from_seed(PRODUCER_SEED),
                  producer=Producer("spanproof", "0.1.0", INSTANCE), sealed_at=SEALED_AT,
                  reason="root_ended", completeness=Completeness(dropped_spans=2))
    other = seal(trace_id(2), [body(trace_id(2), 0)], ChainPosition.genesis(trace_id(2)),
                 signer=SigningKey.from_seed(PRODUCER_SEED),
                 producer=Producer("spanproof", "0.1.0", INSTANCE), sealed_at=SEALED_AT,
                 reason="root_ended")
    store = Store(str(tmp_path / "witness.db"))
    try:
        signer = CheckpointSigner(witness_private, ORIGIN)
        receipt = Witness(store, signer, producer_trust=producer_trust).submit(other.data).receipt
    finally:
        store.close()
    path = tmp_path / "incomplete.spanproof.json"
    path.write_bytes(sealed.data)
    assert receipt is not None
    (tmp_path / "incomplete.receipt.json").write_bytes(receipt.to_bytes())
    pub = tmp_path / "producer.pub"
    pub.write_bytes(producer_key.public_pem())
    return path, pub, signer.vkey


def test_incomplete_bundle_failing_its_receipt_names_the_receipt(
    capsys: pytest.CaptureFixture[str], incomplete_with_foreign_receipt: tuple[Path, Path, str]
) -> None:
    path, pub, vkey = incomplete_with_foreign_receipt
    assert main(["verify", "--key", str(pub), "--witness-key", vkey, str(path)]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"FAIL {path}: {MISMATCH}")

    assert main(["verify", "--json", "--key", str(pub), "--witness-key", vkey,
                 str(path)]) == 1
    (bundle,) = json.loads(capsys.readouterr().out)["bundles"]
    assert bundle["verdict"] == Verdict.FAIL.value
    assert bundle["reason"].startswith(MISMATCH)
    # The declared losses are still reported, as the completeness check.
    checks = {c["name"]: c for c in bundle["checks"]}
    assert checks["completeness"]["status"] == "FAIL"
    assert checks["completeness"]["message"].startswith("incomplete: 2 evidence spans dropped")


def test_incomplete_bundle_without_a_receipt_stays_incomplete(
    capsys: pytest.CaptureFixture[str], incomplete_with_foreign_receipt: tuple[Path, Path, str]
) -> None:
    path, pub, vkey = incomplete_with_foreign_receipt
    path.with_name("incomplete.receipt.json").unlink()
    assert main(["verify", "--key", str(pub), "--witness-key", vkey, str(path)]) == 1
    assert capsys.readouterr().out.startswith(
        f"INCOMPLETE {path}: 2 evidence spans dropped before certification")
