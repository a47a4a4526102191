"""Golden bundles: regenerated from a fixed key and clock, compared byte for byte.

``data/make_golden.py`` seals one trace in two segments (segment 0 and a
continuation) with the producer's own ``seal()``.  If the encoding, the chain, the
statement or the framing changes by a single byte, these tests say so; the
committed files must then be regenerated on purpose (and the format's version
considered), never silently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier import (
    BundleReport,
    TrustRoot,
    Verdict,
    check_bundle,
    key_id,
    link_segments,
    load_public_key,
    verify_bundle,
)
from spanproof.verifier.values import decode_value

DATA = Path(__file__).resolve().parent / "data"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spanproof_make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def trust() -> TrustRoot:
    return TrustRoot.from_pem_files([str(DATA / gen.PUBLIC_KEY)])


@pytest.fixture(scope="module")
def reports(trust: TrustRoot) -> list[BundleReport]:
    return [
        check_bundle(DATA / name, trust, keep_records=True)
        for name in (gen.SEGMENT_0, gen.SEGMENT_1)
    ]


def test_regenerated_files_match_the_committed_bytes() -> None:
    built = gen.build()
    assert sorted(built) == sorted([gen.SEGMENT_0, gen.SEGMENT_1, gen.PUBLIC_KEY])
    for name, data in built.items():
        assert (DATA / name).read_bytes() == data, (
            f"{name} differs from what make_golden.py produces; if the format change is "
            "intended, regenerate with: python tests/verifier/data/make_golden.py"
        )


def test_golden_bundles_verify(reports: list[BundleReport]) -> None:
    for report in reports:
        assert report.verdict is Verdict.OK, report.reason
    first, second = (r.statement for r in reports)
    assert first is not None and second is not None
    assert (first.segment_index, first.first_seq, first.record_count) == (0, 0, 3)
    assert (second.segment_index, second.first_seq, second.record_count) == (1, 3, 1)
    assert first.seal_reason == "size_limit" and second.seal_reason == "root_ended"
    assert second.start == first.head
    assert second.previous_statement == reports[0].statement_digest
    assert second.completeness.notes == ("golden test vector: fixed key, not evidence",)


def test_golden_signer_is_the_published_key(reports: list[BundleReport]) -> None:
    key = load_public_key((DATA / gen.PUBLIC_KEY).read_bytes())
    for report, name in zip(reports, (gen.SEGMENT_0, gen.SEGMENT_1), strict=True):
        assert report.signer_keyid == key_id(key)
        header = (DATA / name).read_bytes().split(b"\n", 1)[0]
        envelope = json.loads(header.removesuffix(b',"records":[') + b"}")["envelope"]
        assert envelope["signatures"][0]["keyid"] == key_id(key)


def test_golden_segments_link_into_one_chain(reports: list[BundleReport]) -> None:
    (link,) = link_segments(reports)
    assert link.ok, link.message
    assert link.trace_id == gen.TRACE_ID
    assert link.producer_instance == gen.PRODUCER.instance
    assert link.segments == (0, 1)
    # Order of the input does not matter.
    assert link_segments(list(reversed(reports))) == [link]


def test_each_golden_segment_verifies_alone(trust: TrustRoot) -> None:
    proven = verify_bundle(DATA / gen.SEGMENT_1, trust)
    assert proven.statement.segment_index == 1
    assert proven.records is not None and [r["seq"] for r in proven.records] == ["3"]


def _same(decoded: Any, original: Any) -> bool:
    if isinstance(original, float):
        if math.isnan(original):
            return isinstance(decoded, float) and math.isnan(decoded)
        return (
            isinstance(decoded, float)
            and decoded == original
            and math.copysign(1, decoded) == math.copysign(1, original)
        )
    if isinstance(original, (list, tuple)):
        return isinstance(decoded, list) and len(decoded) == len(original) and all(
            _same(d, o) for d, o in zip(decoded, original, strict=True)
        )
    if isinstance(original, dict):
        return isinstance(decoded, dict) and decoded.keys() == original.keys() and all(
            _same(decoded[k], original[k]) for k in original
        )
    return type(decoded) is type(original) and decoded == original


def test_golden_typed_values_decode_to_the_originals(reports: list[BundleReport]) -> None:
    # The committed bytes carry every value kind losslessly (type, sign of zero, NaN).
    records = reports[0].records
    assert records is not None
    for record, body in zip(records, gen.bodies()[:3], strict=True):
        assert record["span"] == body["span"]
        assert record["resource"] == body["resource"] and record["scope"] == body["scope"]
    attrs = records[0]["span"]["attributes"]
    kinds = {next(iter(v), "empty") for v in attrs.values()}
    assert kinds == {
        "stringValue", "boolValue", "intValue", "doubleValue", "bytesValue", "arrayValue",
        "kvlistValue", "empty",
    }
    assert attrs["str.digits"] != attrs["int.five"] != attrs["double.five"]
    originals = _golden_attribute_values()
    assert attrs.keys() == originals.keys()
    for key, typed in attrs.items():
        assert _same(decode_value(typed), originals[key]), key


def _golden_attribute_values() -> dict[str, Any]:
    # The Python values make_golden.py encoded for the first span, re-derived here
    # independently of the encoder (bytes stay bytes, None is the empty value).
    return {
        "str.plain": "billing_dispute",
        "str.empty": "",
        "str.unicode": "r\u00e9sum\u00e9 e\u0301 \U0001f600 \u4e2d",
        "str.controls": "tab\tnul\x00del\x7f",
        "str.digits": "5",
        "bool.true": True,
        "bool.false": False,
        "int.five": 5,
        "int.negative": -42,
        "int.beyond_2_53": 2**53 + 1,
        "int.min": -(2**63),
        "int.max": 2**63 - 1,
        "double.five": 5.0,
        "double.tenth": 0.1,
        "double.big": 1e21,
        "double.tiny": 5e-324,
        "double.negative_zero": -0.0,
        "double.nan": float("nan"),
        "double.infinity": float("inf"),
        "double.negative_infinity": float("-inf"),
        "bytes.some": b"\x00\x8f\x01\xc2\xff",
        "bytes.empty": b"",
        "array.empty": [],
        "array.bool": [True, False],
        "array.int": [1, -2, 2**53 + 1],
        "array.double": [0.5, -0.0, 1e300],
        "array.str": ["velocity", "", "amount"],
        "kvlist.nested": {"a": 1, "b": {"c": ["x", 2.5]}, "empty": None},
        "empty.value": None,
    }


def test_golden_covers_events_links_error_status_resource_and_scope(
    reports: list[BundleReport],
) -> None:
    records = [*(reports[0].records or ()), *(reports[1].records or ())]
    spans = [r["span"] for r in records]
    assert spans[1]["status"] == {"code": "STATUS_CODE_ERROR", "message": "threshold exceeded"}
    assert [e["name"] for e in spans[1]["events"]] == ["threshold_exceeded", "exception"]
    assert spans[2]["links"][0]["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert spans[0]["traceState"] == "vendor=abc,other=1"
    assert spans[3]["parentSpanId"] == ""
    assert records[0]["resource"]["schemaUrl"].startswith("https://")
    assert records[0]["scope"]["attributes"] == {"scope.tier": {"stringValue": "evidence"}}
    assert {s["kind"] for s in spans} == {
        "SPAN_KIND_CLIENT", "SPAN_KIND_INTERNAL", "SPAN_KIND_PRODUCER", "SPAN_KIND_SERVER"
    }


# --- segment linking: negative cases ---------------------------------------------


def _seal(bodies: list[dict[str, Any]], position: ChainPosition, **kwargs: Any) -> SealedBundle:
    from spanproof.exporter.keys import SigningKey

    options: dict[str, Any] = {
        "signer": SigningKey.from_seed(gen.SEED),
        "producer": gen.PRODUCER,
        "sealed_at": gen.SEALED_AT_1,
        "reason": "root_ended",
    }
    options.update(kwargs)
    return seal(gen.TRACE_ID, bodies, position, **options)


def _report(sealed: SealedBundle, trust: TrustRoot) -> BundleReport:
    report = check_bundle(io.BytesIO(sealed.data), trust)
    assert report.verdict is Verdict.OK, report.reason
    return report


def test_segment_appearing_twice_fail(reports: list[BundleReport], trust: TrustRoot) -> None:
    # Two versions of segment 0: the producer sealed the segment twice (a fork of
    # the chain), whichever one a reviewer is shown.
    other = _report(_seal(gen.bodies()[:1], ChainPosition.genesis(gen.TRACE_ID)), trust)
    assert other.statement_digest != reports[0].statement_digest
    (link,) = link_segments([reports[0], other, reports[1]])
    assert not link.ok and "segment 0 appears twice" in link.message


def test_the_same_segment_given_twice_is_one_segment_with_a_remark(
    reports: list[BundleReport],
) -> None:
    # A copy or a hard link of a bundle (an archive verified beside the original):
    # the same signed statement, not a second version of the segment.
    copy = dataclasses.replace(reports[0], source="archive/copy.spanproof.json")
    (link,) = link_segments([reports[0], copy, reports[1]])
    assert link.ok, link.message
    assert link.segments == (0, 1)
    assert link.remarks[0] == ("segment 0 given twice, the same signed statement "
                               f"({reports[0].source}, archive/copy.spanproof.json)")


def test_segment_missing_fail(reports: list[BundleReport], trust: TrustRoot) -> None:
    # Segment 2 continues segment 1 correctly, but segment 1 is not among the inputs.
    third = _seal(gen.bodies()[:1], _position_after(reports[1]))
    assert link_segments([*reports, _report(third, trust)])[0].ok
    (link,) = link_segments([reports[0], _report(third, trust)])
    assert not link.ok and "segment 1 is missing" in link.message


def test_continuation_of_another_history_fail(
    reports: list[BundleReport], trust: TrustRoot
) -> None:
    # A validly signed segment 1 that continues a *different* segment 0 of the trace.
    bodies = gen.bodies()
    other_first = _seal(bodies[1:3], ChainPosition.genesis(gen.TRACE_ID))
    forged_second = _seal(bodies[3:], other_first.next_position())
    (link,) = link_segments([reports[0], _report(forged_second, trust)])
    assert not link.ok
    assert "segment 1 does not continue segment 0" in link.message


@pytest.mark.parametrize(
    "member",
    ["start", "first_seq", "previous_statement"],
    ids=["start_not_the_previous_head", "first_seq_not_after_the_previous",
         "previous_statement_not_the_previous_digest"],
)
def test_continuation_breaking_one_link_rule_fail(
    reports: list[BundleReport], trust: TrustRoot, member: str
) -> None:
    # SPEC §8 step 11 item 3.3: each of start, firstSeq and previousStatement must
    # continue the segment before; one of them wrong alone fails the group.
    position = _position_after(reports[0])
    wrong: dict[str, Any] = {
        "start": "sha256:" + "0" * 64,
        "first_seq": position.first_seq + 1,
        "previous_statement": "sha256:" + "0" * 64,
    }
    second = _seal(gen.bodies()[:1], dataclasses.replace(position, **{member: wrong[member]}))
    (link,) = link_segments([reports[0], _report(second, trust)])
    assert not link.ok
    assert "segment 1 does not continue segment 0" in link.message


def test_failed_segments_are_not_linked(reports: list[BundleReport], trust: TrustRoot) -> None:
    data = (DATA / gen.SEGMENT_1).read_bytes().replace(b"send_reply", b"send_rEply")
    broken = check_bundle(io.BytesIO(data), trust)
    assert broken.verdict is Verdict.FAIL
    (link,) = link_segments([reports[0], broken])
    assert link.segments == (0,) and link.ok


def test_other_producers_are_linked_separately(
    reports: list[BundleReport], trust: TrustRoot
) -> None:
    from spanproof.verifier import Producer

    other = Producer(gen.PRODUCER.name, gen.PRODUCER.version, "0000000000000bbb")
    alone = _seal(gen.bodies()[:1], ChainPosition.genesis(gen.TRACE_ID), producer=other)
    links = link_segments([*reports, _report(alone, trust)])
    assert [(link.producer_instance, link.segments, link.ok) for link in links] == [
        ("0000000000000bbb", (0,), True),
        (gen.PRODUCER.instance, (0, 1), True),
    ]


def test_segments_signed_by_two_keys_sharing_a_64_bit_prefix_are_two_keys(
    reports: list[BundleReport],
) -> None:
    # The remark that a trace's segments were signed by more than one key compared
    # key ids cut to 16 hex digits, so two trusted keys sharing those were one key.
    first = "ab" * 8 + "0" * 48
    second = "ab" * 8 + "0" * 47 + "1"
    signed = [dataclasses.replace(reports[0], signer_keyid=first),
              dataclasses.replace(reports[1], signer_keyid=second)]
    (link,) = link_segments(signed)
    assert link.ok
    assert link.remarks[-1] == f"signed by 2 keys: {first}, {second}"
    third = "ab" * 8 + "cd" + "0" * 46
    signed[1] = dataclasses.replace(reports[1], signer_keyid=third)
    (link,) = link_segments(signed)
    assert link.remarks[-1] == f"signed by 2 keys: {first[:24]}, {third[:24]}"
    signed[1] = dataclasses.replace(reports[1], signer_keyid=first)
    (link,) = link_segments(signed)
    assert not any("keys" in remark for remark in link.remarks)


def _position_after(report: BundleReport) -> ChainPosition:
    stmt = report.statement
    assert stmt is not None and report.statement_digest is not None
    return ChainPosition(
        stmt.segment_index + 1,
        stmt.first_seq + stmt.record_count,
        stmt.head,
        report.statement_digest,
    )
