"""Checking disclosures against commitments (SPEC §2.5.5): each defect fails with its
own message, and only a disclosure that opens its commitment passes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from disclosure_support import (
    SPAN_A,
    SPAN_B,
    SPAN_C,
    TRACE,
    default_bodies,
    report_of,
    seal_bodies,
    trust_root,
    write_bundle,
)

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import TrustRoot, Verdict, check_bundle
from spanproof.verifier import disclosure as disclosure_module
from spanproof.verifier.disclosure import (
    Disclosure,
    DisclosureFile,
    DisclosureNeeds,
    check_disclosures,
    check_disclosures_in_records,
    committed_attributes,
    disclosures_path,
    format_disclosure_result,
    load_disclosures,
    verify_disclosures,
)
from spanproof.verifier.errors import DisclosureError, InvalidDisclosure, VerificationError
from spanproof.verifier.receipt import attach_receipt_check
from spanproof.verifier.verify import BundleReport, Check, Status


@pytest.fixture
def setup(tmp_path: Path) -> tuple[BundleReport, DisclosureFile]:
    written = write_bundle(tmp_path / "out")
    trust, _pem = trust_root(tmp_path / "keys")
    report = report_of(written.bundle, trust)
    assert report.verdict is Verdict.OK, report.reason
    return report, load_disclosures(written.disclosures)


def _one(file: DisclosureFile, span: str, key: str) -> Disclosure:
    (found,) = [d for d in file.disclosures if d.span_id == span and d.key == key]
    return found


def _fails(report: BundleReport, disclosure: Disclosure, message: str) -> None:
    (result,) = check_disclosures([disclosure], [report])
    assert result.status is Status.FAIL
    assert message in result.message, result.message
    assert not result.ok
    with pytest.raises(DisclosureError, match="FAIL disclosure"):
        verify_disclosures([disclosure], [report])


def test_each_disclosed_value_verifies(setup: tuple[BundleReport, DisclosureFile]) -> None:
    report, file = setup
    assert len(file.disclosures) == 8  # 4 committed on A, 2 on B, 2 on C
    results = verify_disclosures(file.disclosures, [report])
    assert all(r.status is Status.PASS for r in results)
    by_key = {(r.span_id, r.key): r for r in results}
    assert by_key[(SPAN_A, "customer.tier")].value == {"intValue": "5"}
    assert by_key[(SPAN_A, "customer.tier")].seq == 0
    assert by_key[(SPAN_B, "customer.flags")].seq == 1
    assert by_key[(SPAN_C, "customer.note")].value == {}
    line = format_disclosure_result(by_key[(SPAN_A, "case.priority")])
    assert line.startswith("DISCLOSED ")
    assert 'case.priority = "5" (string)' in line


def test_changed_value_fails(setup: tuple[BundleReport, DisclosureFile]) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "customer.email")
    forged = dataclasses.replace(original, value={"stringValue": "bob@example.com"})
    _fails(report, forged, "value does not match the commitment of attribute "
                           "'customer.email' of span 1000000000000001")


def test_changed_type_string_for_int_fails(setup: tuple[BundleReport, DisclosureFile]) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "customer.tier")  # committed as intValue 5
    forged = dataclasses.replace(original, value={"stringValue": "5"})
    _fails(report, forged, "type mismatch for attribute 'customer.tier' of span "
                           '1000000000000001: disclosed as string "5" (string), '
                           "committed as int")


def test_changed_type_int_for_string_fails(setup: tuple[BundleReport, DisclosureFile]) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "case.priority")  # committed as stringValue "5"
    forged = dataclasses.replace(original, value={"intValue": "5"})
    _fails(report, forged, "type mismatch for attribute 'case.priority'")
    _fails(report, dataclasses.replace(original, value={"doubleValue": "5"}),
           "committed as string")


def test_an_int_no_double_holds_is_another_value_not_another_type() -> None:
    # Committed as the double 2^53, disclosed as the int (or string) 2^53 + 1: the
    # int was rounded to a double to look for a type mismatch, so a different number
    # was reported as "type mismatch ... committed as double" (SPEC §2.5.5: only the
    # same scalar spelled as another type is one).
    salt = bytes(16)
    body = default_bodies()[0]
    body["span"]["attributes"] = {"amount": {"doubleValue": "9007199254740992"}}
    sealed = seal_bodies([body], ("amount",), salt=lambda: salt)
    records = [json.loads(line.rstrip(b",")) for line in sealed.data.splitlines()[1:-1]]

    def diagnosis(value: dict[str, str]) -> str:
        (result,) = check_disclosures_in_records(
            [Disclosure(TRACE, SPAN_A, "amount", salt, value)], records)
        assert not result.ok
        return result.message

    for other in ({"intValue": "9007199254740993"}, {"stringValue": "9007199254740993"}):
        assert diagnosis(other) == ("value does not match the commitment of attribute "
                                    "'amount' of span 1000000000000001")
    assert diagnosis({"intValue": "9007199254740992"}).startswith("type mismatch ")


def test_wrong_salt_fails(setup: tuple[BundleReport, DisclosureFile]) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "customer.email")
    forged = dataclasses.replace(original, salt=bytes(16))
    _fails(report, forged, "salt does not match the commitment of attribute "
                           "'customer.email' of span 1000000000000001")


def test_disclosure_moved_to_another_span_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    # Span B also committed customer.email, to the same value: the disclosure of A's
    # commitment must still not open B's.
    original = _one(file, SPAN_A, "customer.email")
    moved = dataclasses.replace(original, span_id=SPAN_B)
    _fails(report, moved, "carries the salt of attribute 'customer.email' of span "
                          "1000000000000001 (moved from another span or attribute)")


def test_disclosure_moved_to_another_attribute_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "case.priority")
    moved = dataclasses.replace(original, key="customer.tier", value={"intValue": "5"})
    _fails(report, moved, "carries the salt of attribute 'case.priority'")


def test_disclosure_for_uncommitted_attribute_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "customer.email")
    clear = dataclasses.replace(original, key="gen_ai.operation.name",
                                value={"stringValue": "chat"})
    _fails(report, clear, "attribute 'gen_ai.operation.name' of span 1000000000000001 is "
                          "not committed: its value is in the record in clear")


def test_disclosure_for_absent_attribute_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    absent = dataclasses.replace(_one(file, SPAN_A, "customer.email"), key="customer.phone")
    _fails(report, absent, "span 1000000000000001 has no attribute 'customer.phone'")


def test_disclosure_for_span_not_in_bundle_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    elsewhere = dataclasses.replace(_one(file, SPAN_A, "customer.email"),
                                    span_id="20000000000000ff")
    _fails(report, elsewhere, "span 20000000000000ff is not in the verified bundle(s)")


def test_disclosure_for_span_not_in_bundle_is_not_reported_as_trace_not_given(
    tmp_path: Path, setup: tuple[BundleReport, DisclosureFile],
) -> None:
    # SPEC §2.5.5: a verified bundle of the trace was given, so a disclosure naming a
    # span it does not hold fails step 2 ("no such span"), not step 1, also when the
    # bundle kept only the records the disclosures need (``spanproof verify
    # --disclosures``), none of which is of that trace.
    report, file = setup
    elsewhere = dataclasses.replace(_one(file, SPAN_A, "customer.email"),
                                    span_id="20000000000000ff", salt=b"\xff" * 16)
    trust, _ = trust_root(tmp_path / "keys")
    written = write_bundle(tmp_path / "selected")
    selected = check_bundle(written.bundle, trust,
                            select_records=DisclosureNeeds.of([elsewhere]))
    assert selected.verdict is Verdict.OK and selected.records == ()
    for verified in (report, selected):
        (result,) = check_disclosures([elsewhere], [verified])
        assert result.status is Status.FAIL
        assert "span 20000000000000ff is not in the verified bundle(s)" in result.message, (
            result.message)


def test_disclosure_for_trace_not_given_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    other = dataclasses.replace(_one(file, SPAN_A, "customer.email"),
                                trace_id="5bf92f3577b34da6a3ce929d0e0e4737")
    _fails(report, other, "cannot be checked: no bundle of this trace was given")


def test_disclosure_against_failed_bundle_fails(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "out")
    trust, _ = trust_root(tmp_path / "keys")
    data = bytearray(written.bundle.read_bytes())
    index = data.index(b'"step 1"')
    data[index + 6] = ord("9")  # edit a record after sealing
    tampered = tmp_path / "tampered.spanproof.json"
    tampered.write_bytes(bytes(data))
    report = report_of(tampered, trust)
    assert report.verdict is Verdict.FAIL
    file = load_disclosures(written.disclosures)
    results = check_disclosures(file.disclosures, [report])
    assert results and all(r.status is Status.FAIL for r in results)
    assert all("its bundle did not verify" in r.message for r in results)


def test_disclosure_against_a_bundle_whose_receipt_failed_fails(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    # SPEC §2.5.5: only bundles that verified (verdict OK or INCOMPLETE) hold
    # commitments a disclosure may open; a failed witness receipt (§8 step 10) fails
    # the bundle, although its steps 1-8 passed.
    report, file = setup
    failed = attach_receipt_check(
        report, Check("receipt", 10, Status.FAIL, "receipt: checkpoint not signed")
    )
    assert failed.verdict is Verdict.FAIL
    assert check_disclosures(file.disclosures, [report])[0].ok
    results = check_disclosures(file.disclosures, [failed])
    assert results and all(r.status is Status.FAIL for r in results)
    assert all("its bundle did not verify" in r.message for r in results)


class _CountedRecord(dict[str, Any]):
    """A record that notes each time its span is read."""

    def __init__(self, record: dict[str, Any], reads: list[str]) -> None:
        super().__init__(record)
        self._reads = reads

    def __getitem__(self, key: str) -> Any:
        if key == "span":
            self._reads.append(super().__getitem__("span")["spanId"])
        return super().__getitem__(key)


def test_checking_disclosures_reads_each_record_once(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    # Every disclosure scanned every record, and a failing one scanned them all again
    # to diagnose it: 8,000 disclosures against 8,000 records took 52 s.
    report, file = setup
    assert report.records is not None
    padding = []
    for i in range(200):
        copy = json.loads(json.dumps(report.records[0]))
        copy["span"]["spanId"] = f"{0x2000000000000000 + i:016x}"
        padding.append(copy)
    reads: list[str] = []
    records = tuple(_CountedRecord(r, reads) for r in (*report.records, *padding))
    padded = dataclasses.replace(report, records=records)
    opening = file.disclosures
    failing = [
        *(dataclasses.replace(d, salt=b"\xee" * 16) for d in opening),
        *(dataclasses.replace(d, value={"stringValue": "another"}) for d in opening),
        *(dataclasses.replace(d, span_id=SPAN_B if d.span_id == SPAN_A else SPAN_A)
          for d in opening),
        *(dataclasses.replace(opening[0], span_id=f"{0x3000000000000000 + i:016x}")
          for i in range(200)),
    ]
    results = check_disclosures([*opening, *failing], [padded])
    assert [r.ok for r in results] == [True] * len(opening) + [False] * len(failing)
    assert len(reads) == len(records)
    reads.clear()
    results = check_disclosures_in_records([*opening, *failing], records, "bundle")
    assert [r.ok for r in results] == [True] * len(opening) + [False] * len(failing)
    assert len(reads) == len(records)


def test_committed_attributes_lists_every_commitment(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    assert report.records is not None
    found = committed_attributes(report.records, report.source)
    assert [(c.span_id, c.key) for c in found] == [(d.span_id, d.key) for d in file.disclosures]
    assert all(c.digest == d.digest for c, d in zip(found, file.disclosures, strict=True))
    assert all(c.trace_id == TRACE for c in found)


def test_report_without_records_is_a_caller_mistake(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "out")
    trust, _ = trust_root(tmp_path / "keys")
    from spanproof.verifier import check_bundle

    report = check_bundle(written.bundle, trust)
    with pytest.raises(ValueError, match="keep_records=True"):
        check_disclosures(load_disclosures(written.disclosures).disclosures, [report])


def test_disclosure_error_is_a_verification_error() -> None:
    assert issubclass(DisclosureError, VerificationError)
    assert not issubclass(InvalidDisclosure, VerificationError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(mediaType="application/vnd.spanproof.disclosures.v2+json"),
         "unknown mediaType"),
        (lambda d: d.update(extra=1), "exactly the members"),
        (lambda d: d["disclosures"][0].update(salt="00" * 15), "salt: must be 32 lowercase hex"),
        (lambda d: d["disclosures"][0].update(salt="AA" * 16), "salt: must be 32 lowercase hex"),
        (lambda d: d["disclosures"][0].update(value={"intValue": 5}), "intValue must be"),
        (lambda d: d["disclosures"][0].update(value={"committedValue": {}}),
         "unknown value type"),
        (lambda d: d["disclosures"][0].update(spanId="00" * 8), "spanId"),
        (lambda d: d["disclosures"][0].pop("key"), "missing key"),
        (lambda d: d["disclosures"][0].update(note="x"), "unknown note"),
        (lambda d: d["disclosures"][0].update(traceId="0" * 32),
         r"disclosure 0\.traceId: must be 32 lowercase hex"),
        (lambda d: d["disclosures"][0].update(key=["customer.email"]),
         r"disclosure 0\.key: must be a string"),
        (lambda d: d["disclosures"].insert(0, []), "json: disclosure 0: must be an object"),
        (lambda d: d.update(disclosures={}), r"reviewer\.json\.disclosures: must be an array"),
    ],
    ids=["media_type", "top_member", "salt_short", "salt_upper", "value_number",
         "value_committed", "span_zero", "key_missing", "entry_member", "trace_zero",
         "key_not_a_string", "entry_not_an_object", "disclosures_not_an_array"],
)
def test_malformed_disclosure_file_rejected(tmp_path: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    written = write_bundle(tmp_path / "out")
    doc = json.loads(written.disclosures.read_bytes())
    change(doc)
    with pytest.raises(InvalidDisclosure, match=message):
        DisclosureFile.from_bytes(json.dumps(doc).encode(), "reviewer.json")


def test_disclosure_file_over_the_size_limit_is_refused_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was read whole and parsed with no limit (64 MiB of JSON took 1.7 GB to parse),
    # before its mediaType was even looked at.
    parsed: list[str] = []
    real_parse = disclosure_module.parse_strict

    def counting(data: bytes, source: str) -> object:
        parsed.append(source)
        return real_parse(data, source)

    monkeypatch.setattr(disclosure_module, "parse_strict", counting)
    big = tmp_path / "big.disclosures.json"
    with big.open("wb") as f:  # sparse: no data is written
        f.truncate(64 * 1024 * 1024 + 1)
    with pytest.raises(InvalidDisclosure, match=re.escape(
        f"{big}: longer than 67108864 bytes; a disclosure file is at most 64 MiB"
    )):
        load_disclosures(big)
    assert parsed == []


def test_disclosure_file_at_the_size_limit_loads(tmp_path: Path) -> None:
    doc = DisclosureFile(()).to_bytes()
    path = tmp_path / "padded.disclosures.json"
    limit = disclosure_module.MAX_DISCLOSURE_FILE_BYTES
    path.write_bytes(doc + b" " * (limit - len(doc)))
    assert path.stat().st_size == limit == 64 * 1024 * 1024
    assert load_disclosures(path).disclosures == ()


def test_disclosure_file_with_duplicate_keys_rejected() -> None:
    data = b'{"mediaType":"application/vnd.spanproof.disclosures.v1+json","disclosures":[],' \
           b'"disclosures":[]}'
    with pytest.raises(InvalidDisclosure, match="duplicate JSON key"):
        DisclosureFile.from_bytes(data)


def test_disclosure_file_with_an_integer_literal_too_long_rejected() -> None:
    data = b'{"mediaType":"application/vnd.spanproof.disclosures.v1+json","disclosures":[' \
           + b"1" * 5000 + b"]}"
    with pytest.raises(InvalidDisclosure, match=re.escape(
        "values.json: integer literal too long (over 4300 digits)"
    )):
        DisclosureFile.from_bytes(data, "values.json")


def test_disclosed_value_is_sanitized_for_terminals(
    setup: tuple[BundleReport, DisclosureFile],
) -> None:
    report, file = setup
    original = _one(file, SPAN_A, "customer.email")
    evil = dataclasses.replace(original, value={"stringValue": "\x1b[2Jgone"})
    (result,) = check_disclosures([evil], [report])
    assert "\x1b" not in format_disclosure_result(result)



def test_disclosure_of_a_bundle_failed_before_its_trace_was_read_does_not_say_none_given(
    tmp_path: Path, setup: tuple[BundleReport, DisclosureFile]
) -> None:
    report, file = setup
    stranger = tmp_path / "stranger.pub"  # a key that did not sign the bundle
    stranger.write_bytes(SigningKey.from_seed(bytes(32)).public_pem())
    failed = check_bundle(report.source, TrustRoot.from_pem_files([str(stranger)]),
                          keep_records=True)
    assert failed.statement is None and failed.verdict is Verdict.FAIL
    (result,) = check_disclosures(file.disclosures[:1], [failed])
    assert result.message == ("cannot be checked: no bundle of this trace verified; 1 "
                              "bundle(s) failed before their trace could be read")


_GENUINE_ENTRY = {"key": "k", "salt": "00" * 16, "spanId": SPAN_A, "traceId": TRACE,
                  "value": {}}
_HUGE = 1_000_000


@pytest.mark.parametrize(
    ("doc", "echoed"),
    [
        ({"mediaType": "A" * _HUGE, "disclosures": []}, "'" + "A" * 199),
        ({"mediaType": "application/vnd.spanproof.disclosures.v1+json",
          "disclosures": [{**_GENUINE_ENTRY, "X" * _HUGE: 1}]}, "unknown " + "X" * 200),
        ({"mediaType": "application/vnd.spanproof.disclosures.v1+json",
          "disclosures": [{**_GENUINE_ENTRY, **{f"x{i}": 1 for i in range(50_000)}}]},
         "and 49990 more"),
        ({"mediaType": "application/vnd.spanproof.disclosures.v1+json",
          "disclosures": [{**_GENUINE_ENTRY, "value": {"V" * _HUGE: 1}}]}, "VVVV"),
    ],
    ids=["media-type", "member-name", "many-members", "value-type"],
)
def test_disclosure_file_text_is_not_echoed_whole_in_errors(
    doc: dict[str, Any], echoed: str
) -> None:
    with pytest.raises(InvalidDisclosure) as caught:
        DisclosureFile.from_bytes(json.dumps(doc).encode(), "given.json")
    message = str(caught.value)
    assert len(message) < 1500, len(message)
    assert echoed in message
    assert re.search(r"\.\.\. \(\d+ more characters\)|and \d+ more", message)


def test_disclosure_file_not_an_object_rejected() -> None:
    # SPEC §2.5.4: the file is an object with exactly mediaType and disclosures.
    with pytest.raises(InvalidDisclosure, match=r"reviewer\.json: must be a JSON object"):
        DisclosureFile.from_bytes(b"[]", "reviewer.json")


def test_missing_media_type_is_said_missing_not_unknown_none() -> None:
    doc = {"disclosures": []}
    with pytest.raises(InvalidDisclosure) as caught:
        DisclosureFile.from_bytes(json.dumps(doc).encode(), "given.json")
    assert str(caught.value).startswith("given.json: missing mediaType (this verifier knows")
    assert "None" not in str(caught.value)


def test_wrong_value_with_a_reused_salt_is_a_value_mismatch_not_a_move(
    tmp_path: Path,
) -> None:
    # Every commitment shares one salt: the salt is this attribute's and also another's.
    # SPEC §2.5.5: a salt in the attribute's own commitments says the disclosure was made
    # for it, so the value is what is wrong.
    bundle = Path(DirectorySink(tmp_path / "out").write(
        seal_bodies(default_bodies(), salt=lambda: b"\x07" * 16)))
    trust, _pem = trust_root(tmp_path / "keys")
    report = report_of(bundle, trust)
    file = load_disclosures(disclosures_path(bundle))
    wrong = dataclasses.replace(_one(file, SPAN_A, "customer.email"),
                                value={"stringValue": "someone@else.example"})
    _fails(report, wrong, "value does not match the commitment of attribute "
                          "'customer.email' of span 1000000000000001")
