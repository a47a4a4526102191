"""Property tests: mutated witness receipts, disclosure files and every passing
conformance bundle never crash the verifier, and never make it vouch for anything
that was not signed or committed.

* Bundles: every ``*_pass`` conformance case (``test_fuzz_verifier`` mutates
  ``workflow_pass`` at length).  A bundle that does not FAIL has exactly the original
  signed statement and records, and differs at most in the unsigned key-id hint.
* Receipts: the conformance receipt (a log of one entry, no inclusion proof) and one
  for the second of six entries (a proof of three hashes).  A receipt that passes
  states what the original states (origin, leaf index, tree size, proof, leaf), and
  its checkpoint's signed text is the original's.  Its signature lines may repeat: a
  pinned key's line is verified each time it appears (SPEC §12.4, as C2SP
  signed-note asks), so a repeated line changes nothing that is signed.
* Disclosure files: a disclosure that opens its commitment is one of the originals.

The default run is quick; the ``slow`` campaign replays 20,000 cases of each kind
from a fixed seed, split over the cores (``fuzz_mutations.run_campaign``).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_mutations import (
    BundleMutator,
    mutate_bytes,
    mutate_document,
    run_campaign,
    without_unsigned,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanproof.verifier import TrustRoot, Verdict, check_bundle
from spanproof.verifier.checkpoint import WitnessKey, load_witness_keys
from spanproof.verifier.disclosure import Disclosure, DisclosureFile, check_disclosures
from spanproof.verifier.errors import InvalidDisclosure
from spanproof.verifier.receipt import Receipt, check_receipt
from spanproof.verifier.verify import BundleReport
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

CASES = Path(__file__).resolve().parents[1] / "conformance" / "cases"
KEYS = CASES.parent / "keys"
TRUST = TrustRoot.from_pem_files([str(KEYS / "producer.pub")])
PASSING = sorted(p.name for p in CASES.glob("*_pass.spanproof.json"))

_QUICK = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow,
                                         HealthCheck.function_scoped_fixture])


def _verified(data: bytes) -> BundleReport:
    report = check_bundle(io.BytesIO(data), TRUST, keep_records=True)
    assert report.verdict is Verdict.OK
    return report


# -- bundles --------------------------------------------------------------------------

_MUTATORS = {name: BundleMutator((CASES / name).read_bytes()) for name in PASSING}
_BASELINES = {name: _verified(m.original) for name, m in _MUTATORS.items()}


def _check_bundle_mutation(name: str, data: bytes, hint_only: bool) -> None:
    original, baseline = _MUTATORS[name].original, _BASELINES[name]
    report = check_bundle(io.BytesIO(data), TRUST, keep_records=True)
    assert report.verdict in (Verdict.OK, Verdict.FAIL, Verdict.INCOMPLETE)
    if report.verdict is Verdict.FAIL or data == original:
        return
    assert report.statement_digest == baseline.statement_digest, "another statement accepted"
    assert report.records == baseline.records, "other records accepted"
    assert hint_only or without_unsigned(data) == without_unsigned(original), "a change accepted"


@pytest.mark.parametrize("name", PASSING)
@_QUICK
@given(rng=st.randoms(use_true_random=False))
def test_mutated_passing_case_is_never_accepted(name: str, rng: random.Random) -> None:
    original = _MUTATORS[name].original
    _check_bundle_mutation(name, mutate_bytes(original, rng), hint_only=False)
    _check_bundle_mutation(name, *_MUTATORS[name].mutate(rng))


def test_every_passing_case_is_mutated() -> None:
    # The selection above is not empty: the conformance suite's passing cases.
    assert {"workflow_pass.spanproof.json", "disclosure_pass.spanproof.json",
            "continuation_segment_pass.spanproof.json"} <= set(PASSING)


# -- receipts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ReceiptCase:
    """A receipt, the verified bundle it is for, and the pinned witness keys."""

    data: bytes
    bundle: BundleReport
    keys: tuple[WitnessKey, ...]

    @property
    def original(self) -> Receipt:
        """The receipt as parsed."""
        return Receipt.from_json(json.loads(self.data))


def _conformance_receipt() -> ReceiptCase:
    bundle = _verified((CASES / "workflow_pass.spanproof.json").read_bytes())
    return ReceiptCase((CASES / "workflow_pass.receipt.json").read_bytes(), bundle,
                       load_witness_keys([str(KEYS / "witness.pub")]))


CONFORMANCE_RECEIPT = _conformance_receipt()


@pytest.fixture(scope="module")
def deep_receipt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiptCase]:
    """The receipt of the second of the passing cases, logged in that order by a
    witness of its own: leaf 1 of 6, a proof of three hashes."""
    witness_key = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    store = Store(str(tmp_path_factory.mktemp("witness") / "witness.db"))
    signer = CheckpointSigner(witness_key, "fuzz.test/spanproof")
    witness = Witness(store, signer, producer_trust=TRUST,
                      clock=lambda: datetime(2026, 3, 2, tzinfo=timezone.utc))
    try:
        for name in PASSING:
            witness.submit(_MUTATORS[name].original)
        # Submitted again, a logged bundle gets a receipt against the latest checkpoint.
        receipt = witness.submit(_MUTATORS[PASSING[1]].original).receipt
        assert (receipt.leaf_index, receipt.tree_size, len(receipt.inclusion_proof)) == (1, 6, 3)
        yield ReceiptCase(receipt.to_bytes(), _BASELINES[PASSING[1]], (signer.key,))
    finally:
        store.close()


def _signed_text(checkpoint: bytes) -> bytes:
    return checkpoint.split(b"\n\n", 1)[0]


def _check_receipt_mutation(case: ReceiptCase, data: bytes) -> bool:
    """Check one mutated receipt; True when it passed."""
    check, verified = check_receipt(data, case.bundle, case.keys)
    if check.status.value != "PASS":
        assert verified is None
        return False
    got, want = Receipt.from_json(json.loads(data)), case.original
    assert (got.origin, got.leaf_index, got.tree_size, got.inclusion_proof, got.leaf) == (
        want.origin, want.leaf_index, want.tree_size, want.inclusion_proof, want.leaf
    ), "a receipt stating something else passed"
    assert _signed_text(got.checkpoint) == _signed_text(want.checkpoint)
    return True


def _receipt_rounds(case: ReceiptCase, rng: random.Random) -> None:
    _check_receipt_mutation(case, mutate_bytes(case.data, rng))
    _check_receipt_mutation(case, mutate_document(case.data, rng))


@_QUICK
@given(rng=st.randoms(use_true_random=False))
def test_mutated_conformance_receipt_never_passes_for_other_content(rng: random.Random) -> None:
    _receipt_rounds(CONFORMANCE_RECEIPT, rng)


@_QUICK
@given(rng=st.randoms(use_true_random=False))
def test_mutated_receipt_with_proof_never_passes_for_other_content(
    deep_receipt: ReceiptCase, rng: random.Random
) -> None:
    _receipt_rounds(deep_receipt, rng)


def test_repeated_signature_line_passes_and_changes_nothing_signed(
    deep_receipt: ReceiptCase,
) -> None:
    doc = json.loads(deep_receipt.data)
    signature_line = doc["checkpoint"].split("\n\n", 1)[1]
    doc["checkpoint"] += signature_line
    assert _check_receipt_mutation(deep_receipt, json.dumps(doc).encode())


@pytest.mark.parametrize(("member", "value"), [
    ("inclusionProof", "swap"),  # the proof's hashes in the wrong order
    ("treeSize", "5"),  # a larger log than the checkpoint signs
    ("leafIndex", "2"),  # another position in the same tree
])
def test_receipt_checks_are_not_vacuous(deep_receipt: ReceiptCase, member: str,
                                        value: str) -> None:
    # The unmutated receipts pass; each of these changes does not.
    assert _check_receipt_mutation(deep_receipt, deep_receipt.data)
    assert _check_receipt_mutation(CONFORMANCE_RECEIPT, CONFORMANCE_RECEIPT.data)
    doc = json.loads(deep_receipt.data)
    if value == "swap":
        doc[member].reverse()
    else:
        doc[member] = value
    assert not _check_receipt_mutation(deep_receipt, json.dumps(doc).encode())


# -- disclosure files ----------------------------------------------------------------------

DISCLOSURES = (CASES / "disclosure_pass.disclosures.json").read_bytes()
_DISCLOSED: tuple[Disclosure, ...] = DisclosureFile.from_bytes(DISCLOSURES).disclosures
_DISCLOSURE_BUNDLE = _BASELINES["disclosure_pass.spanproof.json"]


def _check_disclosure_mutation(data: bytes) -> int:
    """Check one mutated disclosure file; return how many of its disclosures opened."""
    try:
        parsed = DisclosureFile.from_bytes(data)
    except InvalidDisclosure:
        return 0
    opened = 0
    for result in check_disclosures(parsed.disclosures, [_DISCLOSURE_BUNDLE]):
        if result.ok:
            assert result.disclosure in _DISCLOSED, "another value opened a commitment"
            opened += 1
    return opened


@_QUICK
@given(rng=st.randoms(use_true_random=False))
def test_mutated_disclosures_never_open_another_value(rng: random.Random) -> None:
    _check_disclosure_mutation(mutate_bytes(DISCLOSURES, rng))
    _check_disclosure_mutation(mutate_document(DISCLOSURES, rng))


def test_disclosure_checks_are_not_vacuous() -> None:
    # Every original disclosure opens; one with a changed value opens nothing.
    assert _check_disclosure_mutation(DISCLOSURES) == len(_DISCLOSED) > 0
    doc = json.loads(DISCLOSURES)
    doc["disclosures"][0]["value"] = {"stringValue": "not what was committed"}
    assert _check_disclosure_mutation(json.dumps(doc).encode()) == len(_DISCLOSED) - 1


# -- the long campaign -------------------------------------------------------------------

@pytest.mark.slow
def test_long_run_of_receipt_disclosure_and_case_mutations(deep_receipt: ReceiptCase) -> None:
    """20,000 cases of each kind, each seeded from a fixed seed and its number (a
    failure names the case and the passing bundle it mutated)."""
    receipts = (CONFORMANCE_RECEIPT, deep_receipt)

    def case(n: int, rng: random.Random) -> None:
        name = PASSING[n % len(PASSING)]
        try:
            _check_bundle_mutation(name, mutate_bytes(_MUTATORS[name].original, rng), False)
            _check_bundle_mutation(name, *_MUTATORS[name].mutate(rng))
            _receipt_rounds(receipts[n % 2], rng)
            _check_disclosure_mutation(mutate_bytes(DISCLOSURES, rng))
            _check_disclosure_mutation(mutate_document(DISCLOSURES, rng))
        except AssertionError as e:
            raise AssertionError(f"case {n} ({name})") from e

    run_campaign(20261203, 20_000, case)
