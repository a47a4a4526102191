"""Regenerate the conformance cases from fixed keys and a fixed clock.

Usage: ``python tests/conformance/make_cases.py [OUT_DIR]`` (default: the ``cases``
folder beside this script).  Writes ``<what>_pass.spanproof.json`` and
``<what>_fail.spanproof.json`` bundles, and for receipt cases a
``<what>.receipt.json`` beside the bundle (SPEC §12.6).  Keys are read from
``keys/`` beside this script; nothing depends on the clock or on randomness, so
running it twice writes the same bytes (``test_conformance.py`` checks this).

Each case is listed in ``CASES`` with the SPEC §8 step it exercises; README.md's
table is the same list.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier.bundle import encode_bundle
from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.records import record_hash
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.values import encode_value

HERE = Path(__file__).resolve().parent
KEYS = HERE / "keys"
TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "1bf7651916cd43dd8448eb211c80319d"
SEALED_AT = datetime(2026, 3, 2, 9, 30, 0, 250000, tzinfo=timezone.utc)
PRODUCER = Producer("spanproof-conformance", "1.0.0", "00000000000000c0")
T0 = 1772443798000000000
WITNESS_ORIGIN = "conformance.test/spanproof"


@dataclass(frozen=True)
class Case:
    """One conformance case: file stem, SPEC §8 step, what it checks, how it is made."""

    name: str
    step: str
    what: str
    make: Callable[[], bytes]
    receipt: bool = False
    #: Makes the disclosure file checked with ``--disclosures`` (disclosure cases).
    disclosures: Callable[[], bytes] | None = None


def _key(name: str) -> SigningKey:
    pem = (KEYS / name).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return SigningKey(key)


def body(trace_id: str, n: int, *, name: str | None = None, parent: str = "",
         attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record body of span number *n* (ids and times derived from *n*)."""
    start = T0 + n * 1_000_000
    return {
        "span": {
            "traceId": trace_id,
            "spanId": f"{0x1000000000000000 + n:016x}",
            "parentSpanId": parent,
            "traceState": "",
            "name": name or f"step-{n}",
            "kind": "SPAN_KIND_INTERNAL",
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + 500_000),
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {k: encode_value(v) for k, v in (attributes or {
                "gen_ai.operation.name": "chat", "step": n, "score": 0.5}).items()},
            "droppedAttributesCount": "0",
            "events": [],
            "droppedEventsCount": "0",
            "links": [],
            "droppedLinksCount": "0",
        },
        "resource": {"attributes": {"service.name": encode_value("conformance")},
                     "droppedAttributesCount": "0", "schemaUrl": ""},
        "scope": {"name": "conformance", "version": "1.0.0", "attributes": {},
                  "droppedAttributesCount": "0", "schemaUrl": ""},
    }


def bodies(trace_id: str = TRACE, count: int = 4) -> list[dict[str, Any]]:
    return [body(trace_id, n, parent="" if n == 0 else f"{0x1000000000000000:016x}")
            for n in range(count)]


def sealed(bodies_: list[dict[str, Any]] | None = None, *, trace_id: str = TRACE,
           signer: str = "producer.key", position: ChainPosition | None = None,
           completeness: Completeness | None = None) -> SealedBundle:
    return seal(trace_id, bodies(trace_id) if bodies_ is None else bodies_,
                position or ChainPosition.genesis(trace_id), signer=_key(signer),
                producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                completeness=completeness)


def base() -> bytes:
    return sealed().data


# -- committed attributes and their disclosures (SPEC §2.5) --------------------------

REDACTED = ("customer.*",)


def _committed() -> SealedBundle:
    """Four records whose ``customer.*`` values are committed, with fixed salts."""
    from spanproof.exporter.disclosure import redaction_matcher

    salts = iter(bytes([n]) * 16 for n in range(1, 100))
    with_customer = [
        body(TRACE, n, parent="" if n == 0 else f"{0x1000000000000000:016x}", attributes={
            "gen_ai.operation.name": "chat", "customer.email": f"user{n}@example.com",
            "customer.tier": n})
        for n in range(4)
    ]
    return seal(TRACE, with_customer, ChainPosition.genesis(TRACE), signer=_key("producer.key"),
                producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                redact=redaction_matcher(REDACTED), salt=lambda: next(salts))


def _disclosures(change: Callable[[Any], Any] | None = None,
                 key: str = "customer.email") -> Callable[[], bytes]:
    """The committed bundle's disclosure file, with the first entry for *key* changed."""
    from spanproof.verifier.disclosure import DisclosureFile

    def make() -> bytes:
        entries = list(_committed().disclosures)
        if change is not None:
            at = next(i for i, e in enumerate(entries) if e.key == key)
            entries[at] = change(entries[at])
        return DisclosureFile(tuple(entries)).to_bytes()

    return make


def _value_changed(d: Any) -> Any:
    import dataclasses
    return dataclasses.replace(d, value=encode_value("attacker@example.com"))


def _type_changed(d: Any) -> Any:
    import dataclasses

    from spanproof.verifier.values import decode_value
    return dataclasses.replace(d, value=encode_value(str(decode_value(d.value))))


def _salt_changed(d: Any) -> Any:
    import dataclasses
    return dataclasses.replace(d, salt=bytes(16))


def _moved_to_other_span(d: Any) -> Any:
    import dataclasses
    return dataclasses.replace(d, span_id=f"{0x1000000000000000 + 1:016x}")


# -- byte-level edits ---------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _header(data: bytes) -> dict[str, Any]:
    line = _lines(data)[0]
    parsed: dict[str, Any] = json.loads(line[: -len(b',"records":[')] + b"}")
    return parsed


def _with_header(data: bytes, header: dict[str, Any]) -> bytes:
    rest = data.split(b"\n", 1)[1]
    return canonicalize(header)[:-1] + b',"records":[\n' + rest


def _records(data: bytes) -> list[bytes]:
    return [line.removesuffix(b",") for line in _lines(data)[1:-2]]


def _with_records(data: bytes, records: list[bytes]) -> bytes:
    head = data.split(b"\n", 1)[0]
    body_ = b"".join(r + (b",\n" if i < len(records) - 1 else b"\n")
                     for i, r in enumerate(records))
    return head + b"\n" + body_ + b"]}\n"


def _resigned_statement(change: Callable[[dict[str, Any]], None]) -> bytes:
    """The base bundle with its statement changed and signed again by the trusted key."""
    data = base()
    header = _header(data)
    statement = json.loads(base64.b64decode(header["envelope"]["payload"]))
    change(statement)
    envelope = _key("producer.key").sign_envelope(canonicalize(statement))
    return encode_bundle(envelope, _records(data))


def _edit_record(data: bytes, index: int, change: Callable[[dict[str, Any]], None]) -> bytes:
    records = _records(data)
    record = json.loads(records[index])
    change(record)
    records[index] = canonicalize(record)
    return _with_records(data, records)


# -- the cases ------------------------------------------------------------------------

def _continuation() -> bytes:
    first = sealed(bodies()[:2])
    return sealed(bodies()[2:], position=first.next_position()).data


def _conflict_declared() -> bytes:
    again = body(TRACE, 1, name="step-1-retried")
    return sealed([*bodies(), again],
                  completeness=Completeness(conflicts=(again["span"]["spanId"],))).data


def _conflict_undeclared() -> bytes:
    return sealed([*bodies(), body(TRACE, 1, name="step-1-retried")]).data


def _header_not_canonical() -> bytes:
    data = base()
    return data.replace(b'{"envelope":', b'{ "envelope":', 1)


def _with_receipts(value: bytes) -> Callable[[], bytes]:
    """The base bundle with the reserved ``receipts`` header member (SPEC §7.2) holding
    *value*, written as given: its verdict rests on SPEC §3.1 item 5 and §3.3 alone."""
    def make() -> bytes:
        head, rest = base().split(b"\n", 1)
        return head.removesuffix(b',"records":[') + b',"receipts":' + value \
            + b',"records":[\n' + rest
    return make


def _unknown_media_type() -> bytes:
    data = base()
    header = _header(data)
    header["mediaType"] = "application/vnd.spanproof.bundle.v2+json"
    return _with_header(data, header)


def _unknown_payload_type() -> bytes:
    data = base()
    header = _header(data)
    header["envelope"]["payloadType"] = "application/json"
    return _with_header(data, header)


def _no_signatures() -> bytes:
    data = base()
    header = _header(data)
    header["envelope"]["signatures"] = []
    return _with_header(data, header)


def _too_many_signatures() -> bytes:
    # The genuine signature first, then 16 copies of one that verifies under no key.
    data = base()
    header = _header(data)
    bad = {"keyid": "", "sig": base64.b64encode(b"\x01" * 64).decode()}
    header["envelope"]["signatures"] += [bad] * 16
    return _with_header(data, header)


def _signature_altered() -> bytes:
    data = base()
    header = _header(data)
    sig = bytearray(base64.b64decode(header["envelope"]["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    header["envelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return _with_header(data, header)


def _statement_altered() -> bytes:
    data = base()
    header = _header(data)
    statement = json.loads(base64.b64decode(header["envelope"]["payload"]))
    statement["predicate"]["recordCount"] = "3"
    header["envelope"]["payload"] = base64.b64encode(canonicalize(statement)).decode()
    return _with_header(data, header)


def _subject_mismatch(statement: dict[str, Any]) -> None:
    statement["subject"][0]["digest"]["sha256"] = "00" * 32


def _unknown_predicate_type(statement: dict[str, Any]) -> None:
    statement["predicateType"] = "https://spanproof.dev/bundle/v2"


def _bad_seal_reason(statement: dict[str, Any]) -> None:
    statement["predicate"]["sealReason"] = "because"


def _record_not_canonical() -> bytes:
    data = base()
    records = _records(data)
    records[1] = records[1].replace(b'{"mediaType"', b'{ "mediaType"', 1)
    return _with_records(data, records)


def _record_duplicate_key() -> bytes:
    data = base()
    records = _records(data)
    records[1] = records[1].replace(b'{"mediaType"', b'{"mediaType":"x","mediaType"', 1)
    return _with_records(data, records)


def _truncated() -> bytes:
    data = base()
    return data[: len(data) // 2 + 7]


def _data_after_end() -> bytes:
    return base() + b"\n"


def _missing_comma() -> bytes:
    data = base()
    at = data.index(b",\n", data.index(b"\n") + 1)
    return data[:at] + data[at + 1:]


def _record_deleted() -> bytes:
    data = base()
    records = _records(data)
    del records[1]
    return _with_records(data, records)


def _records_reordered() -> bytes:
    data = base()
    records = _records(data)
    records[1], records[2] = records[2], records[1]
    return _with_records(data, records)


def _record_altered() -> bytes:
    return _edit_record(base(), 1, lambda r: r["span"].update(name="step-1-edited"))


def _record_moved_from_other_trace() -> bytes:
    data = base()
    records = _records(data)
    other = _records(sealed(trace_id=OTHER_TRACE).data)
    records[1] = other[1]
    return _with_records(data, records)


def _last_record_altered() -> bytes:
    return _edit_record(base(), -1, lambda r: r["span"].update(name="last-edited"))


def _last_record_removed() -> bytes:
    data = base()
    return _with_records(data, _records(data)[:-1])


def _record_appended() -> bytes:
    data = base()
    records = _records(data)
    extra = json.loads(records[-1])
    extra["seq"] = str(len(records))
    extra["prev"] = record_hash(records[-1])
    extra["span"]["spanId"] = "1000000000000063"
    return _with_records(data, [*records, canonicalize(extra)])


def _declared_losses() -> bytes:
    return sealed(completeness=Completeness(dropped_spans=2, notes=("queue full",))).data


def _other_trace_bundle() -> bytes:
    return sealed(trace_id=OTHER_TRACE).data


CASES: tuple[Case, ...] = (
    Case("workflow", "1-9", "four chained records, valid signature", base, receipt=True),
    Case("single_record", "1-9", "one record", lambda: sealed(bodies()[:1]).data),
    Case("no_records", "1-9", "a segment with zero records (head = start)",
         lambda: sealed([]).data),
    Case("continuation_segment", "4, 7", "segment 1 verified alone (§4.4)", _continuation),
    Case("conflict_declared", "7", "a repeated span id listed in conflicts",
         _conflict_declared),
    Case("format_empty_file", "1", "zero bytes", lambda: b""),
    Case("format_header_not_canonical", "1", "whitespace in the header",
         _header_not_canonical),
    Case("format_unknown_media_type", "1", "bundle media type v2", _unknown_media_type),
    Case("format_receipts_number_with_exponent", "1", "`receipts` is `1e+21` (§3.1 item 5)",
         _with_receipts(b"1e+21")),
    Case("format_receipts_largest_safe_integer", "1",
         "`receipts` is `9007199254740991`, 2^53-1 (§3.1 item 5)",
         _with_receipts(b"9007199254740991")),
    Case("format_receipts_integer_2_53", "1",
         "`receipts` is `9007199254740992`, an integer beyond 2^53-1 (§3.1 item 5)",
         _with_receipts(b"9007199254740992")),
    Case("format_receipts_integer_10_20_written_out", "1",
         "`receipts` is `100000000000000000000` (§3.1 item 5)",
         _with_receipts(b"100000000000000000000")),
    Case("format_receipts_nested_511_levels", "1",
         "`receipts` nests 511 arrays: the header 512 levels (§3.3)",
         _with_receipts(b"[" * 511 + b"]" * 511)),
    Case("format_receipts_nested_512_levels", "1",
         "`receipts` nests 512 arrays: the header 513 levels (§3.3)",
         _with_receipts(b"[" * 512 + b"]" * 512)),
    Case("envelope_unknown_payload_type", "2", "payloadType not in-toto",
         _unknown_payload_type),
    Case("envelope_no_signatures", "2", "empty signatures array", _no_signatures),
    Case("envelope_too_many_signatures", "2",
         "17 signatures, the genuine one first (at most 16)", _too_many_signatures),
    Case("signature_altered", "3", "one bit of the signature flipped", _signature_altered),
    Case("signature_statement_altered", "3", "payload changed after signing",
         _statement_altered),
    Case("signature_untrusted_signer", "3", "signed by a key not in the trust root",
         lambda: sealed(signer="other.key").data),
    Case("statement_subject_mismatch", "4", "subject digest is not the head (re-signed)",
         lambda: _resigned_statement(_subject_mismatch)),
    Case("statement_unknown_predicate_type", "4", "predicateType v2 (re-signed)",
         lambda: _resigned_statement(_unknown_predicate_type)),
    Case("statement_unknown_seal_reason", "4", "sealReason outside §5.3 (re-signed)",
         lambda: _resigned_statement(_bad_seal_reason)),
    Case("records_not_canonical", "6", "whitespace in a record", _record_not_canonical),
    Case("records_duplicate_key", "6", "a record with a duplicate key",
         _record_duplicate_key),
    Case("records_truncated", "6", "file cut in the middle", _truncated),
    Case("records_data_after_end", "6", "a byte after the closing line", _data_after_end),
    Case("records_missing_comma", "6", "a record line without its comma", _missing_comma),
    Case("chain_record_deleted", "7", "record 1 removed", _record_deleted),
    Case("chain_records_reordered", "7", "records 1 and 2 swapped", _records_reordered),
    Case("chain_record_altered", "7", "record 1's span name changed", _record_altered),
    Case("chain_record_from_other_trace", "7", "record 1 taken from another trace",
         _record_moved_from_other_trace),
    Case("chain_conflict_undeclared", "7", "a repeated span id not in conflicts",
         _conflict_undeclared),
    Case("head_last_record_altered", "8", "the last record changed", _last_record_altered),
    Case("head_last_record_removed", "8", "the last record removed", _last_record_removed),
    Case("head_record_appended", "8", "a correctly chained record appended",
         _record_appended),
    Case("completeness_declared_losses", "9",
         "droppedSpans 2: INCOMPLETE (exit 1); passes with --allow-incomplete",
         _declared_losses),
    Case("receipt_for_other_bundle", "10", "the receipt of another trace's bundle",
         base, receipt=True),
    Case("receipt_checkpoint_altered", "10", "the checkpoint's tree size changed",
         base, receipt=True),
    Case("disclosure", "6, §2.5.5", "committed customer.* values; every disclosure opens",
         lambda: _committed().data, disclosures=_disclosures()),
    Case("disclosure_value_changed", "§2.5.5", "a disclosed value differs from the committed",
         lambda: _committed().data, disclosures=_disclosures(_value_changed)),
    Case("disclosure_type_changed", "§2.5.5", 'string "0" disclosed for a committed int 0',
         lambda: _committed().data, disclosures=_disclosures(_type_changed, "customer.tier")),
    Case("disclosure_salt_changed", "§2.5.5", "a disclosure with another salt",
         lambda: _committed().data, disclosures=_disclosures(_salt_changed)),
    Case("disclosure_moved_to_other_span", "§2.5.5", "a disclosure moved to another span",
         lambda: _committed().data, disclosures=_disclosures(_moved_to_other_span)),
)

#: Cases that verify (the rest must not).
PASSING = {"workflow", "single_record", "no_records", "continuation_segment",
           "conflict_declared", "disclosure", "format_receipts_number_with_exponent",
           "format_receipts_largest_safe_integer", "format_receipts_nested_511_levels"}


def file_name(case: Case) -> str:
    return f"{case.name}_{'pass' if case.name in PASSING else 'fail'}.spanproof.json"


def disclosures_name(case: Case) -> str:
    """The disclosure file checked with a disclosure case (``--disclosures``)."""
    return file_name(case).removesuffix(".spanproof.json") + ".disclosures.json"


def _receipts(out: Path) -> dict[str, bytes]:
    """Receipts for the receipt cases, from a witness with the fixed witness key."""
    from spanproof.verifier.keys import TrustRoot
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner
    from spanproof.witness.store import Store

    pem = (KEYS / "witness.key").read_bytes()
    witness_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(witness_key, Ed25519PrivateKey)
    trust = TrustRoot.from_pem_files([str(KEYS / "producer.pub")])
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "witness.db"))
        try:
            witness = Witness(store, CheckpointSigner(witness_key, WITNESS_ORIGIN),
                              producer_trust=trust, clock=lambda: SEALED_AT)
            mine = witness.submit(base()).receipt.to_bytes()
            other = witness.submit(_other_trace_bundle()).receipt.to_bytes()
        finally:
            store.close()
    altered = json.loads(mine)
    note = altered["checkpoint"]
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) + 1)
    altered["checkpoint"] = "\n".join(lines)
    return {
        "workflow": mine,
        "receipt_for_other_bundle": other,
        "receipt_checkpoint_altered": canonicalize(altered),
    }


def generate(out: Path) -> list[Path]:
    """Write every case into *out*; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    receipts = _receipts(out)
    written = []
    for case in CASES:
        path = out / file_name(case)
        path.write_bytes(case.make())
        written.append(path)
        if case.receipt:
            receipt = out / (path.name.removesuffix(".spanproof.json") + ".receipt.json")
            receipt.write_bytes(receipts[case.name])
            written.append(receipt)
        if case.disclosures is not None:
            disclosed = out / disclosures_name(case)
            disclosed.write_bytes(case.disclosures())
            written.append(disclosed)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "cases"
    for p in generate(target):
        print(p.name)
