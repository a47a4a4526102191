"""Records carrying committed values (SPEC §2.5.1, §2.5.3): they verify without any
disclosure file, the committed values are not in the bundle's bytes, and the verifier
checks the committed value's shape and media type strictly (SPEC §8 step 6)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from disclosure_support import (
    ATTRIBUTES,
    PRODUCER,
    SEALED_AT,
    TRACE,
    default_bodies,
    report_of,
    seal_bodies,
    signer,
    trust_root,
    write_bundle,
)

from spanproof.exporter.sealing import ChainPosition
from spanproof.verifier import TrustRoot, Verdict, check_bundle, verify_bundle
from spanproof.verifier.bundle import encode_bundle
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.records import (
    CER_COMMITTED_MEDIA_TYPE,
    CER_MEDIA_TYPE,
    digest_hex,
    record_hash,
)
from spanproof.verifier.statement import Completeness, Statement
from spanproof.verifier.verify import Status

GOOD = {"committedValue": {"digest": "ab" * 32, "saltDigest": "cd" * 32}}


def _bundle(records: list[dict[str, Any]]) -> bytes:
    """Chain, sign and frame *records* exactly as given (media types included)."""
    position = ChainPosition.genesis(TRACE)
    head, lines = position.start, []
    for seq, record in enumerate(records):
        record = {**record, "seq": str(seq), "prev": head}
        raw = canonicalize(record)
        head = record_hash(raw)
        lines.append(raw)
    statement = Statement(
        trace_id=TRACE, segment_index=0, first_seq=0, start=position.start,
        previous_statement="", record_count=len(lines), head=head, seal_reason="root_ended",
        sealed_at=SEALED_AT, producer=PRODUCER, completeness=Completeness(),
    )
    payload = statement.to_payload()
    assert digest_hex(payload)
    return encode_bundle(signer().sign_envelope(payload), lines)


def _record(media_type: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = default_bodies()[0]
    change(body)
    return {"mediaType": media_type, **body}


@pytest.fixture
def trust(tmp_path: Path) -> TrustRoot:
    return trust_root(tmp_path / "keys")[0]


def test_bundle_with_commitments_verifies_without_disclosure_file(
    tmp_path: Path, trust: TrustRoot
) -> None:
    written = write_bundle(tmp_path / "out")
    written.disclosures.unlink()
    report = check_bundle(written.bundle, trust)
    assert report.verdict is Verdict.OK, report.reason
    assert [c.status for c in report.checks] == [Status.PASS] * 9
    proven = verify_bundle(written.bundle, trust)
    assert proven.records is not None
    media = [r["mediaType"] for r in proven.records]
    assert media == [CER_COMMITTED_MEDIA_TYPE] * 3


def test_committed_value_absent_from_bundle_bytes(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "out")
    data = written.bundle.read_bytes()
    for secret in (b"ana@example.com", b"4242", b"charged twice", base64_of(b"\x8f\x01\xc2")):
        assert secret not in data, secret
    # ...while attributes not configured stay in clear, and every committed key is named.
    assert b'"gen_ai.operation.name":{"stringValue":"chat"}' in data
    assert b'"fraud.score":{"doubleValue":"0.87"}' in data
    assert data.count(b'"customer.email":{"committedValue":{') == 2
    # The disclosure file holds the values.
    assert b"ana@example.com" in written.disclosures.read_bytes()


def base64_of(raw: bytes) -> bytes:
    import base64

    return base64.b64encode(raw)


def test_record_without_commitments_keeps_v1_media_type_and_bytes() -> None:
    bodies = default_bodies()
    plain = seal_bodies(bodies, redact=())
    unmatched = seal_bodies(bodies, redact=("nothing.matches.*",))
    assert plain.data == unmatched.data
    assert plain.disclosures == unmatched.disclosures == ()
    assert CER_COMMITTED_MEDIA_TYPE.encode() not in plain.data
    assert plain.data.count(CER_MEDIA_TYPE.encode()) == len(bodies)


def test_mixed_bundle_has_v1_and_v1_1_records(trust: TrustRoot) -> None:
    sealed = seal_bodies(default_bodies(), redact=("gen_ai.input.messages",))
    report = check_bundle(io.BytesIO(sealed.data), trust, keep_records=True)
    assert report.verdict is Verdict.OK, report.reason
    assert report.records is not None
    assert [r["mediaType"] for r in report.records] == [
        CER_COMMITTED_MEDIA_TYPE, CER_MEDIA_TYPE, CER_MEDIA_TYPE
    ]
    assert len(sealed.disclosures) == 1


def _span_attr(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["span"]["attributes"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("media_type", "change", "message"),
    [
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": {"digest": "AB" * 32, "saltDigest": "cd" * 32}}),
         "committedValue.digest: must be 64 lowercase hex digits"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": {"digest": "ab" * 31, "saltDigest": "cd" * 32}}),
         "committedValue.digest: must be 64 lowercase hex digits"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": {"digest": "sha256:" + "ab" * 32,
                                             "saltDigest": "cd" * 32}}),
         "committedValue.digest: must be 64 lowercase hex digits"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": {"digest": "ab" * 32}}),
         "must have exactly the members digest and saltDigest"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": {**GOOD["committedValue"], "salt": "00"}}),
         "must have exactly the members digest and saltDigest"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": GOOD["committedValue"], "stringValue": "x"}),
         "typed value must have exactly one member"),
        (CER_COMMITTED_MEDIA_TYPE,
         _span_attr("x", {"committedValue": ["ab" * 32, "cd" * 32]}),
         "must have exactly the members digest and saltDigest"),
        (CER_MEDIA_TYPE, _span_attr("x", GOOD),
         "a record with committed values must have mediaType "
         "'application/vnd.spanproof.cer.v1.1+json'"),
        (CER_COMMITTED_MEDIA_TYPE, lambda body: None,
         "requires at least one committed value"),
        (CER_MEDIA_TYPE, _span_attr("x", {"arrayValue": [GOOD]}),
         "unknown value type 'committedValue'"),
        (CER_MEDIA_TYPE, lambda body: body["resource"]["attributes"].__setitem__("x", GOOD),
         "unknown value type 'committedValue'"),
        (CER_MEDIA_TYPE,
         lambda body: body["span"]["events"].append(
             {"timeUnixNano": "1", "name": "e", "attributes": {"x": GOOD},
              "droppedAttributesCount": "0"}),
         "unknown value type 'committedValue'"),
    ],
    ids=["digest_uppercase", "digest_short", "digest_prefixed", "salt_digest_missing",
         "unknown_member", "second_member", "array_body", "v1_media_type_with_commitment",
         "v1_1_media_type_without_commitment", "nested_in_array", "in_resource_attributes",
         "in_event_attributes"],
)
def test_malformed_commitment_fails_records_check(
    trust: TrustRoot, media_type: str, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = _bundle([_record(media_type, change)])
    report = check_bundle(io.BytesIO(data), trust)
    assert report.verdict is Verdict.FAIL
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["records"]
    assert message in failed[0].message, failed[0].message


def test_well_formed_commitment_built_by_hand_verifies(trust: TrustRoot) -> None:
    # The verifier checks the shape only; whether it opens is a disclosure's job.
    data = _bundle([_record(CER_COMMITTED_MEDIA_TYPE, _span_attr("x", GOOD))])
    assert check_bundle(io.BytesIO(data), trust).verdict is Verdict.OK


def test_commitment_is_in_the_signed_chain(tmp_path: Path, trust: TrustRoot) -> None:
    # Swapping one commitment digest for another breaks the chain like any edit.
    written = write_bundle(tmp_path / "out")
    lines = written.bundle.read_bytes().split(b"\n")
    record = json.loads(lines[1].rstrip(b","))
    record["span"]["attributes"]["customer.email"]["committedValue"]["digest"] = "00" * 32
    lines[1] = canonicalize(record) + b","
    tampered = tmp_path / "t.spanproof.json"
    tampered.write_bytes(b"\n".join(lines))
    report = report_of(tampered, trust)
    assert report.verdict is Verdict.FAIL
    assert "previous-hash mismatch" in report.reason


def test_test_spans_cover_every_scalar_kind() -> None:
    kinds = {type(v).__name__ for attrs in ATTRIBUTES.values() for v in attrs.values()}
    assert {"str", "int", "float", "bytes", "list", "NoneType"} <= kinds
