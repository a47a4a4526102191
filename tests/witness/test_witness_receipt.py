"""Receipts: offline verification, and the defects it must catch (SPEC §12.5)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import (
    ORIGIN,
    OTHER_WITNESS_SEED,
    FakeClock,
    make_bundle,
    trace_id,
    write_bundle,
)

from spanproof.verifier import errors
from spanproof.verifier.checkpoint import Checkpoint, WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import (
    LEAF_MEDIA_TYPE,
    MAX_RECEIPT_BYTES,
    REMEMBERED_NOTE_BYTES,
    Receipt,
    ReceiptVerifier,
    WitnessLeaf,
    check_receipt_for_bundle,
    receipt_path,
    unverified_receipt_for,
    verify_receipt,
)
from spanproof.verifier.verify import (
    MAX_MESSAGE_CHARS,
    BundleReport,
    Status,
    check_bundle,
    verify_bundle,
)
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


@pytest.fixture
def witness(
    tmp_path: Path, witness_private: Ed25519PrivateKey, producer_trust: TrustRoot
) -> Iterator[Witness]:
    store = Store(str(tmp_path / "witness.db"))
    yield Witness(
        store,
        CheckpointSigner(witness_private, ORIGIN),
        producer_trust=producer_trust,
        clock=FakeClock(),
    )
    store.close()


@pytest.fixture
def keys(witness: Witness) -> list[WitnessKey]:
    return [WitnessKey.from_pem(witness.signer.key.public_pem())]


@pytest.fixture
def logged(
    tmp_path: Path, witness: Witness, producer_trust: TrustRoot
) -> tuple[Path, BundleReport, bytes, BundleReport]:
    """Two logged bundles: (path A, report A, receipt A bytes, report B)."""
    a = write_bundle(tmp_path, make_bundle(trace_id(1)))
    b = write_bundle(tmp_path, make_bundle(trace_id(2)))
    receipt_a = witness.submit(a.read_bytes()).receipt.to_bytes()
    witness.submit(b.read_bytes())
    return a, check_bundle(a, producer_trust), receipt_a, check_bundle(b, producer_trust)


def _edit(receipt: bytes, change: Any) -> bytes:
    doc = json.loads(receipt)
    change(doc)
    return json.dumps(doc).encode()


def test_receipt_verifies_for_its_bundle(
    logged: Any, keys: list[WitnessKey], producer_trust: TrustRoot
) -> None:
    path, report, receipt, _ = logged
    verified = verify_receipt(receipt, report, keys)
    assert (verified.origin, verified.leaf_index, verified.tree_size) == (ORIGIN, 0, 1)
    # A VerifiedBundle works as well as a report.
    verify_receipt(receipt, verify_bundle(path, producer_trust), keys)
    # A receipt against an older checkpoint stays valid after the log grew.
    assert json.loads(receipt)["treeSize"] == "1"


def test_leaf_is_the_canonical_allow_list(logged: Any) -> None:
    _path, report, _receipt, _ = logged
    leaf = WitnessLeaf.from_bundle(report)
    stmt = report.statement
    want = (
        '{"mediaType":"'
        + LEAF_MEDIA_TYPE
        + '","producerInstance":"'
        + stmt.producer.instance
        + '","segment":"0","signerKeyid":"'
        + report.signer_keyid
        + '","statementDigest":"'
        + report.statement_digest
        + '","traceId":"'
        + stmt.trace_id
        + '"}'
    )
    assert leaf.encode() == want.encode()


def test_receipt_for_another_bundle_is_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, _report_a, receipt_a, report_b = logged
    with pytest.raises(
        errors.ReceiptMismatch, match="receipt leaf does not match this bundle's statement"
    ):
        verify_receipt(receipt_a, report_b, keys)


def test_receipt_for_another_bundle_with_its_leaf_rewritten_is_rejected(
    logged: Any, keys: list[WitnessKey]
) -> None:
    # The attacker copies bundle B's leaf into A's receipt: the displayed leaf now
    # matches, but the proof still proves A's leaf (CVE-2022-36056).
    _path, _report_a, receipt_a, report_b = logged
    forged = _edit(receipt_a, lambda d: d.update(leaf=WitnessLeaf.from_bundle(report_b).to_json()))
    with pytest.raises(
        errors.ProofError, match="inclusion proof does not reach the checkpoint root"
    ):
        verify_receipt(forged, report_b, keys)


def test_altered_inclusion_proof_is_rejected(
    witness: Witness, tmp_path: Path, keys: list[WitnessKey], producer_trust: TrustRoot
) -> None:
    paths = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(5)]
    receipts = [witness.submit(p.read_bytes()).receipt for p in paths]
    receipt = witness.lookup(index=2)[0][2].to_bytes()
    report = check_bundle(paths[2], producer_trust)
    verify_receipt(receipt, report, keys)
    assert receipts[4].tree_size == 5

    def flip(d: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(d["inclusionProof"][0]))
        raw[0] ^= 1
        d["inclusionProof"][0] = base64.b64encode(bytes(raw)).decode()

    with pytest.raises(errors.ProofError, match="does not reach the checkpoint root"):
        verify_receipt(_edit(receipt, flip), report, keys)
    with pytest.raises(errors.ProofError):
        verify_receipt(_edit(receipt, lambda d: d["inclusionProof"].pop()), report, keys)


def test_an_inclusion_proof_hash_in_non_canonical_base64_is_refused(
    witness: Witness, tmp_path: Path, keys: list[WitnessKey], producer_trust: TrustRoot
) -> None:
    # A pad bit set decodes to the same hash: a second spelling of one receipt, which
    # a checkpoint's root hash is refused for.
    paths = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(3)]
    for p in paths:
        witness.submit(p.read_bytes())
    receipt = witness.lookup(index=1)[0][2].to_bytes()
    report = check_bundle(paths[1], producer_trust)
    verify_receipt(receipt, report, keys)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def pad_bit(d: dict[str, Any]) -> None:
        text = d["inclusionProof"][0]
        last = alphabet.index(text[-2])  # 32 bytes: 43 digits, the last with 2 pad bits
        d["inclusionProof"][0] = text[:-2] + alphabet[last | 1] + "="

    altered = _edit(receipt, pad_bit)
    assert altered != receipt
    with pytest.raises(errors.InvalidReceipt,
                       match=r"inclusionProof\[0\]: base64 is not in canonical"):
        verify_receipt(altered, report, keys)


def test_altered_leaf_index_is_rejected(
    witness: Witness, tmp_path: Path, keys: list[WitnessKey], producer_trust: TrustRoot
) -> None:
    paths = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(4)]
    for p in paths:
        witness.submit(p.read_bytes())
    receipt = witness.lookup(index=1)[0][2].to_bytes()
    report = check_bundle(paths[1], producer_trust)
    with pytest.raises(errors.ProofError, match="does not reach the checkpoint root"):
        verify_receipt(_edit(receipt, lambda d: d.update(leafIndex="0")), report, keys)
    with pytest.raises(errors.InvalidReceipt, match="not inside treeSize"):
        verify_receipt(_edit(receipt, lambda d: d.update(leafIndex="4")), report, keys)


def test_checkpoint_by_another_key_is_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, receipt, _ = logged
    impostor = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED), ORIGIN)
    doc = json.loads(receipt)
    cp = Checkpoint.from_text(doc["checkpoint"].split("\n\n")[0] + "\n")
    forged = _edit(receipt, lambda d: d.update(checkpoint=impostor.sign(cp).decode()))
    with pytest.raises(
        errors.NoteSignatureError, match="checkpoint not signed by a pinned witness key"
    ):
        verify_receipt(forged, report, keys)


def test_tree_size_mismatch_is_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, receipt, _ = logged
    with pytest.raises(
        errors.ReceiptMismatch,
        match="receipt tree size 2 does not match the checkpoint's tree size 1",
    ):
        verify_receipt(_edit(receipt, lambda d: d.update(treeSize="2")), report, keys)


def test_origin_mismatch_is_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, receipt, _ = logged
    with pytest.raises(errors.ReceiptMismatch, match="origin"):
        verify_receipt(_edit(receipt, lambda d: d.update(origin="other.example")), report, keys)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d.update(mediaType="application/vnd.spanproof.receipt.v2+json"),
            "unknown mediaType",
        ),
        (lambda d: d.update(extra=1), "fields must be exactly"),
        (lambda d: d.update(leafIndex=0), "decimal string"),
        (lambda d: d.update(inclusionProof=["AAAA"]), "32-byte hash"),
        (lambda d: d["leaf"].update(segment="01"), "decimal string"),
        (lambda d: d.update(leafIndex="1" * 5000), "decimal string"),  # int() refuses it
        (lambda d: d.update(treeSize=str(2**64)), "below 2\\^64"),
        (lambda d: d["leaf"].update(segment="9" * 21), "decimal string"),
        (lambda d: d.update(checkpoint="\ud800"), "lone surrogate"),
        (lambda d: d["leaf"].update(mediaType="x"), "unknown mediaType"),
        # SPEC §12.5 step 1: every member of the receipt and of its leaf has its form.
        (lambda d: d.update(inclusionProof=["A" * 43 + "="] * 65), "at most 64 hashes"),
        (lambda d: d.update(origin=""), "receipt.origin: must be a non-empty string"),
        (lambda d: d.update(checkpoint=5), "receipt.checkpoint: must be the signed note text"),
        (lambda d: d["leaf"].update(extra=""), "receipt.leaf: fields must be exactly"),
        (lambda d: d["leaf"].update(statementDigest=d["leaf"]["statementDigest"].upper()),
         "receipt.leaf.statementDigest: must be sha256:<64 hex>"),
        (lambda d: d["leaf"].update(traceId="0" * 32), "receipt.leaf.traceId: must be 32"),
        (lambda d: d["leaf"].update(producerInstance=5),
         "receipt.leaf.producerInstance: must be a string"),
        (lambda d: d["leaf"].update(signerKeyid=d["leaf"]["signerKeyid"][:63]),
         "receipt.leaf.signerKeyid: must be 64 lowercase hex digits"),
        (lambda d: d["leaf"].update(signerKeyid=d["leaf"]["signerKeyid"].upper()),
         "signerKeyid: must be 64 lowercase hex digits"),
    ],
)
def test_malformed_receipts_are_invalid(
    logged: Any, keys: list[WitnessKey], change: Any, message: str
) -> None:
    _path, report, receipt, _ = logged
    with pytest.raises(errors.InvalidReceipt, match=message):
        verify_receipt(_edit(receipt, change), report, keys)


def test_receipt_not_an_object_is_invalid(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, _receipt, _ = logged
    with pytest.raises(errors.InvalidReceipt, match="receipt: must be a JSON object"):
        verify_receipt(b"[]", report, keys)


def test_receipt_over_1_mib_is_refused_unparsed(logged: Any, keys: list[WitnessKey]) -> None:
    # SPEC §12.5 step 1: a receipt is at most 1 MiB; a longer one is not parsed.
    _path, report, receipt, _ = logged
    padded = receipt.rstrip(b"\n") + b" " * (MAX_RECEIPT_BYTES - len(receipt) + 2)
    assert len(padded) == MAX_RECEIPT_BYTES + 1
    with pytest.raises(errors.InvalidReceipt, match=f"receipt: larger than {MAX_RECEIPT_BYTES}"):
        verify_receipt(padded, report, keys)
    verify_receipt(padded[:-1], report, keys)


def test_own_leaf_not_in_the_checkpoint_tree_is_rejected(
    logged: Any, keys: list[WitnessKey]
) -> None:
    # verify_own_leaf checks the receipt's own copy of its leaf: an altered copy is
    # not the leaf the signed tree holds at leafIndex (SPEC §12.5 step 5).
    _path, _report, receipt, _ = logged
    assert ReceiptVerifier(keys).verify_own_leaf(receipt).size == 1
    altered = _edit(receipt, lambda d: d["leaf"].update(producerInstance="ff"))
    with pytest.raises(errors.ProofError, match="inclusion proof does not reach"):
        ReceiptVerifier(keys).verify_own_leaf(altered)


def test_unverified_receipt_for_another_statement_is_refused(logged: Any) -> None:
    # With no witness key pinned, a submitter still keeps only a receipt whose leaf
    # names the statement of the bundle it submitted.
    path, _report, receipt, other = logged
    assert unverified_receipt_for(path.read_bytes(), receipt) == Receipt.from_bytes(
        receipt).to_bytes()
    with pytest.raises(errors.InvalidReceipt, match="its leaf names statement"):
        unverified_receipt_for(Path(other.source).read_bytes(), receipt)


def test_duplicate_keys_are_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, receipt, _ = logged
    dup = receipt.replace(b'"origin":', b'"origin":"x","origin":', 1)
    with pytest.raises(errors.InvalidReceipt, match="duplicate"):
        verify_receipt(dup, report, keys)


def test_an_integer_literal_too_long_is_rejected(logged: Any, keys: list[WitnessKey]) -> None:
    _path, report, receipt, _ = logged
    long = receipt.replace(b'"origin":', b'"origin":' + b"1" * 5000 + b',"x":', 1)
    with pytest.raises(errors.InvalidReceipt,
                       match=r"^receipt: integer literal too long \(over 4300 digits\)$"):
        verify_receipt(long, report, keys)


def test_receipt_round_trips(logged: Any) -> None:
    _path, _report, receipt, _ = logged
    assert Receipt.from_bytes(receipt).to_bytes() == receipt


def test_receipt_path_is_beside_the_bundle(tmp_path: Path) -> None:
    assert receipt_path("/x/abc-0000-ff.spanproof.json") == "/x/abc-0000-ff.receipt.json"
    with pytest.raises(ValueError, match=r"spanproof\.json"):
        receipt_path("/x/abc.json")


def test_check_receipt_for_bundle(
    logged: Any, keys: list[WitnessKey], producer_trust: TrustRoot
) -> None:
    path, report, receipt, report_b = logged
    # No receipt yet.
    check = check_receipt_for_bundle(path, report, keys)
    assert (check.name, check.status) == ("receipt", Status.SKIPPED)
    assert check.message.startswith("no receipt")
    assert check_receipt_for_bundle(path, report, keys, required=True).status is Status.FAIL
    Path(receipt_path(path)).write_bytes(receipt)
    check = check_receipt_for_bundle(path, report, keys)
    assert check.status is Status.PASS, check.message
    assert "logged at index 0 of witness.test/spanproof" in check.message
    # The receipt of bundle A checked as if it belonged to bundle B.
    check = check_receipt_for_bundle(path, report_b, keys)
    assert check.status is Status.FAIL
    assert check.message.startswith("receipt leaf does not match this bundle's statement")
    # Without a pinned witness key nothing is claimed.
    assert check_receipt_for_bundle(path, report, []).status is Status.SKIPPED
    assert check_receipt_for_bundle(path, report, [], required=True).status is Status.FAIL
    # A bundle whose signature failed has no leaf to look for.
    other = TrustRoot.from_keys([keys_to_trusted()])
    assert check_receipt_for_bundle(path, check_bundle(path, other), keys).status is Status.SKIPPED
    # Nor has one whose signature verified but whose statement failed (SPEC §8 step 10:
    # SKIPPED when step 4 did not verify a statement), even when a receipt is required.
    unparsed = dataclasses.replace(report, statement=None)
    assert report.statement_digest is not None and report.signer_keyid is not None
    check = check_receipt_for_bundle(path, unparsed, keys, required=True)
    assert check.status is Status.SKIPPED, check.message


def test_receipt_failure_message_quoting_a_huge_value_is_cut(
    logged: Any, keys: list[WitnessKey]
) -> None:
    # A receipt file is anyone's: one of 1 MiB quoting itself made a FAIL line of
    # millions of characters.  The message keeps where and what, and the cut.
    path, report, receipt, _ = logged
    Path(receipt_path(path)).write_bytes(
        _edit(receipt, lambda doc: doc.update(mediaType="\U0010ffff" * 50_000)))
    check = check_receipt_for_bundle(path, report, keys)
    assert check.status is Status.FAIL
    assert len(check.message) <= MAX_MESSAGE_CHARS
    assert check.message.startswith("receipt: unknown mediaType '\\U0010ffff")
    assert check.message.endswith("(this verifier knows "
                                  "'application/vnd.spanproof.receipt.v1+json')")
    assert " characters left out) ... " in check.message


def keys_to_trusted() -> Any:
    from spanproof.exporter.keys import SigningKey
    from spanproof.verifier.keys import TrustedKey

    return TrustedKey.from_public_key(SigningKey.from_seed(b"\x09" * 32).private_key.public_key())


def test_attach_receipt_check_sets_the_verdict(logged: Any, keys: list[WitnessKey]) -> None:
    from spanproof.verifier.receipt import attach_receipt_check
    from spanproof.verifier.verify import Verdict

    path, report, receipt, report_b = logged
    Path(receipt_path(path)).write_bytes(receipt)
    good = attach_receipt_check(report, check_receipt_for_bundle(path, report, keys))
    assert good.verdict is Verdict.OK and good.checks[-1].name == "receipt"
    assert [c.step for c in good.checks] == sorted(c.step for c in good.checks)
    assert good.to_json()["checks"][-1]["status"] == "PASS"
    bad = attach_receipt_check(report_b, check_receipt_for_bundle(path, report_b, keys))
    assert bad.verdict is Verdict.FAIL
    assert bad.reason.startswith("receipt leaf does not match this bundle's statement")
    missing = tmp_missing = path.with_name("other.spanproof.json")
    assert not tmp_missing.exists()
    skipped = attach_receipt_check(report, check_receipt_for_bundle(missing, report, keys))
    assert skipped.verdict is Verdict.OK
    required = check_receipt_for_bundle(missing, report, keys, required=True)
    assert attach_receipt_check(report, required).verdict is Verdict.FAIL


# --- a batch's receipts: one checkpoint, its signature checked once ------------------


@pytest.fixture
def batch(
    tmp_path: Path, witness: Witness, producer_trust: TrustRoot
) -> list[tuple[bytes, BundleReport]]:
    """Four bundles logged in one batch: each one's receipt bytes and report."""
    paths = [write_bundle(tmp_path, make_bundle(trace_id(10 + n))) for n in range(4)]
    results = witness.submit_batch([p.read_bytes() for p in paths])
    return [(r.receipt.to_bytes(), check_bundle(p, producer_trust))  # type: ignore[union-attr]
            for r, p in zip(results, paths, strict=True)]


@pytest.fixture
def checkpoint_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every checkpoint whose signature a receipt verification checked."""
    import spanproof.verifier.receipt as receipt_module

    calls: list[bytes] = []
    real = receipt_module.verify_checkpoint

    def counted(note: bytes | str, *args: Any, **kwargs: Any) -> Any:
        calls.append(note if isinstance(note, bytes) else note.encode())
        return real(note, *args, **kwargs)

    monkeypatch.setattr(receipt_module, "verify_checkpoint", counted)
    return calls


def test_receipts_of_one_batch_check_their_checkpoint_once(
    batch: list[tuple[bytes, BundleReport]], keys: list[WitnessKey],
    checkpoint_checks: list[bytes],
) -> None:
    verifier = ReceiptVerifier(keys, origin=ORIGIN)
    verified = [verifier.verify(receipt, report) for receipt, report in batch]
    assert len(checkpoint_checks) == 1
    assert [v.leaf_index for v in verified] == [0, 1, 2, 3]
    assert {v.tree_size for v in verified} == {4}
    # The same as verifying each on its own, which checks the checkpoint each time.
    alone = [verify_receipt(receipt, report, keys, origin=ORIGIN) for receipt, report in batch]
    assert alone == verified
    assert len(checkpoint_checks) == 5


def test_a_forged_checkpoint_after_a_verified_one_is_still_checked(
    batch: list[tuple[bytes, BundleReport]], keys: list[WitnessKey],
    checkpoint_checks: list[bytes],
) -> None:
    verifier = ReceiptVerifier(keys)
    (first, first_report), (second, second_report) = batch[:2]
    verifier.verify(first, first_report)

    def flip_signature(doc: dict[str, Any]) -> None:
        text, _, signature = doc["checkpoint"].rpartition(" ")
        raw = bytearray(base64.b64decode(signature))
        raw[-1] ^= 1
        doc["checkpoint"] = f"{text} {base64.b64encode(bytes(raw)).decode()}\n"

    with pytest.raises(errors.NoteSignatureError, match="does not verify"):
        verifier.verify(_edit(second, flip_signature), second_report)
    assert len(checkpoint_checks) == 2
    # A rejected checkpoint is not remembered: the genuine one still is.
    assert verifier.verify(second, second_report).leaf_index == 1
    assert len(checkpoint_checks) == 2


def test_a_remembered_checkpoint_still_answers_to_the_pinned_origin(
    batch: list[tuple[bytes, BundleReport]], keys: list[WitnessKey],
    checkpoint_checks: list[bytes],
) -> None:
    verifier = ReceiptVerifier(keys, origin="another.example/log")
    for receipt, report in batch[:2]:
        with pytest.raises(errors.NoteSignatureError):
            verifier.verify(receipt, report)
    assert len(checkpoint_checks) == 2  # a failure is never remembered


def test_a_receipt_verifier_needs_a_key() -> None:
    with pytest.raises(ValueError, match="at least one pinned witness key"):
        ReceiptVerifier([])


def test_the_witness_self_checks_a_batch_against_one_checkpoint_check(
    tmp_path: Path, witness: Witness, checkpoint_checks: list[bytes]
) -> None:
    paths = [write_bundle(tmp_path, make_bundle(trace_id(20 + n))) for n in range(5)]
    results = witness.submit_batch([p.read_bytes() for p in paths])
    assert len(results) == 5 and len(checkpoint_checks) == 1


def test_a_verifier_remembers_the_last_checkpoints_it_verified(
    tmp_path: Path, witness: Witness, keys: list[WitnessKey], producer_trust: TrustRoot,
    checkpoint_checks: list[bytes],
) -> None:
    receipts = []
    for b in range(3):  # three batches, three checkpoints
        paths = [write_bundle(tmp_path, make_bundle(trace_id(30 + 2 * b + n))) for n in range(2)]
        for result, path in zip(witness.submit_batch([p.read_bytes() for p in paths]), paths,
                                strict=True):
            receipts.append((result.receipt.to_bytes(),  # type: ignore[union-attr]
                             check_bundle(path, producer_trust)))
    checkpoint_checks.clear()  # the witness's own self-checks
    verifier = ReceiptVerifier(keys, remember=2)
    for receipt, report in receipts:
        verifier.verify(receipt, report)
    assert len(checkpoint_checks) == 3
    verifier.verify(*receipts[3])  # the second batch's: still remembered
    assert len(checkpoint_checks) == 3
    verifier.verify(*receipts[0])  # the first batch's: forgotten for the third's
    assert len(checkpoint_checks) == 4
    with pytest.raises(ValueError, match="at least one checkpoint"):
        ReceiptVerifier(keys, remember=0)


def test_a_padded_checkpoint_is_verified_but_not_remembered(
    batch: list[tuple[bytes, BundleReport]], keys: list[WitnessKey],
    checkpoint_checks: list[bytes],
) -> None:
    # Signature lines by keys nobody pinned are ignored, so anyone can pad a genuine
    # note towards the 1 MiB a note may hold; remembering every such variant would let
    # a directory of receipts fill the verifier's memory.
    junk = "".join(
        f"\u2014 cosigner{i} {base64.b64encode(bytes(4 + 64)).decode()}\n" for i in range(60)
    )

    def pad(doc: dict[str, Any]) -> None:
        doc["checkpoint"] += junk

    receipt, report = batch[0]
    padded = _edit(receipt, pad)
    assert len(json.loads(padded)["checkpoint"].encode()) > REMEMBERED_NOTE_BYTES
    verifier = ReceiptVerifier(keys, remember=8)
    assert verifier.verify(padded, report).leaf_index == 0
    assert verifier.verify(padded, report).leaf_index == 0
    assert len(checkpoint_checks) == 2  # checked each time
    verifier.verify(receipt, report)
    verifier.verify(receipt, report)
    assert len(checkpoint_checks) == 3  # the genuine note is remembered
