"""docs/THREAT_MODEL.md cannot rot: each attack its table says a step catches is
carried out on the worked example, and must fail at exactly that step."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier import (
    BundleReport,
    Completeness,
    Status,
    TrustedKey,
    TrustRoot,
    Verdict,
    canonicalize,
    check_bundle,
    link_segments,
)

THREAT_MODEL = Path(__file__).resolve().parents[2] / "docs" / "THREAT_MODEL.md"
_RECORDS_OPEN = b',"records":['


def _rows() -> dict[str, str]:
    """attack -> 'caught by' cell of the THREAT_MODEL table."""
    rows = {}
    for line in THREAT_MODEL.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("attack", "---"):
            rows[cells[0]] = cells[2]
    return rows


def _frame(header_line: bytes, records: Sequence[bytes]) -> bytes:
    body = b",\n".join(records) + b"\n" if records else b""
    return header_line + b"\n" + body + b"]}\n"


def _header(example: Any, envelope: dict[str, Any] | None = None) -> bytes:
    env = envelope if envelope is not None else example.envelope
    head = canonicalize({"envelope": env, "mediaType": "application/vnd.spanproof.bundle.v1+json"})
    return head[:-1] + _RECORDS_OPEN


def _edit(raw: bytes) -> bytes:
    record = json.loads(raw)
    record["span"]["name"] += " (edited)"
    return canonicalize(record)


def _seal(make_example: Any, bodies: Sequence[Any], **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "signer": SigningKey.from_seed(make_example.SEED),
        "producer": make_example.PRODUCER,
        "sealed_at": make_example.SEALED_AT,
        "reason": make_example.SEAL_REASON,
    }
    args.update(overrides)
    trace_id = bodies[0]["span"]["traceId"] if bodies else make_example.TRACE_ID
    position = args.pop("position", ChainPosition.genesis(trace_id))
    return seal(trace_id, bodies, position, **args)


def _check(data: bytes, trust: TrustRoot) -> BundleReport:
    return check_bundle(io.BytesIO(data), trust)


def _first_failure(report: BundleReport) -> str:
    failed = [c.name for c in report.checks if c.status is Status.FAIL]
    return failed[0] if failed else "none"


@pytest.fixture(scope="module")
def trust(example: Any) -> TrustRoot:
    return TrustRoot.from_keys([TrustedKey.from_public_key(example.key.private_key.public_key())])


# attack (as named in THREAT_MODEL.md) -> builds the tampered bundle bytes
_BundleAttack = Callable[[Any, Any], bytes]


def _delete_record(ex: Any, mk: Any) -> bytes:
    return _frame(_header(ex), ex.records[1:])


def _insert_record(ex: Any, mk: Any) -> bytes:
    fake = json.loads(ex.records[0])
    fake.update(seq="1", prev=ex.record_hashes[0])
    fake["span"]["spanId"] = "1111111111111111"
    return _frame(_header(ex), [ex.records[0], canonicalize(fake), ex.records[1]])


def _from_other_trace(ex: Any, mk: Any) -> bytes:
    other = [json.loads(json.dumps(b)) for b in mk.bodies()]
    for body in other:
        body["span"]["traceId"] = "4bf92f3577b34da6a3ce929d0e0e4736"
    foreign = _seal(mk, other).data.split(b"\n")[2]
    return _frame(_header(ex), [ex.records[0], foreign])


def _alter_statement(ex: Any, mk: Any) -> bytes:
    statement = json.loads(ex.payload)
    statement["predicate"]["completeness"]["notes"] = ["nothing to see"]
    envelope = dict(ex.envelope, payload=base64.b64encode(canonicalize(statement)).decode())
    return _frame(_header(ex, envelope), ex.records)


def _swap_statement(ex: Any, mk: Any) -> bytes:
    shorter = _seal(mk, mk.bodies()[:1])
    header = shorter.data.split(b"\n")[0]
    return _frame(header, ex.records)


def _resign(ex: Any, mk: Any) -> bytes:
    return _seal(mk, mk.bodies(), signer=SigningKey.from_seed(bytes(32))).data


def _truncate(ex: Any, mk: Any) -> bytes:
    return ex.bundle[: ex.bundle.index(ex.records[1]) + 100]


BUNDLE_ATTACKS: dict[str, tuple[_BundleAttack, str]] = {
    "edit a record (any but the last)": (
        lambda ex, mk: _frame(_header(ex), [_edit(ex.records[0]), ex.records[1]]),
        "chain",
    ),
    "edit the last record": (
        lambda ex, mk: _frame(_header(ex), [ex.records[0], _edit(ex.records[1])]),
        "head",
    ),
    "delete a record": (_delete_record, "chain"),
    "delete the last record": (lambda ex, mk: _frame(_header(ex), ex.records[:1]), "head"),
    "insert a record": (_insert_record, "chain"),
    "duplicate a record": (
        lambda ex, mk: _frame(_header(ex), [ex.records[0], *ex.records]),
        "chain",
    ),
    "reorder records": (lambda ex, mk: _frame(_header(ex), ex.records[::-1]), "chain"),
    "move a record in from another trace": (_from_other_trace, "chain"),
    "truncate the file": (_truncate, "records"),
    "alter the signed statement (e.g. erase declared losses)": (_alter_statement, "signature"),
    "swap in another bundle's statement for the same trace": (_swap_statement, "head"),
    "re-sign with the attacker's own key": (_resign, "signature"),
}


@pytest.mark.parametrize("attack", sorted(BUNDLE_ATTACKS))
def test_attack_fails_at_the_documented_step(
    attack: str, example: Any, make_example: Any, trust: TrustRoot
) -> None:
    build, check = BUNDLE_ATTACKS[attack]
    rows = _rows()
    assert attack in rows, f"THREAT_MODEL.md has no row {attack!r}"
    assert f"`{check}`" in rows[attack], f"THREAT_MODEL.md row {attack!r} should name `{check}`"
    report = _check(build(example, make_example), trust)
    assert report.verdict is Verdict.FAIL
    assert _first_failure(report) == check, report.reason


def test_key_id_hint_changes_nothing(example: Any, make_example: Any, trust: TrustRoot) -> None:
    assert "nothing to catch" in _rows()["point the key id hint at a trusted key"]
    # The genuine bundle with a bogus hint still verifies ...
    sig = dict(example.envelope["signatures"][0], keyid="0" * 64)
    envelope = dict(example.envelope, signatures=[sig])
    assert _check(_frame(_header(example, envelope), example.records), trust).ok
    # ... and an attacker's signature with the trusted key's id as hint still fails.
    forged_line = _resign(example, make_example).split(b"\n")[0]
    forged = json.loads(forged_line[: -len(_RECORDS_OPEN)] + b"}")
    forged["envelope"]["signatures"][0]["keyid"] = example.keyid
    report = _check(_frame(_header(example, forged["envelope"]), example.records), trust)
    assert _first_failure(report) == "signature"


def test_retired_key_fails_key_validity(example: Any) -> None:
    row = _rows()["sign with a retired key, honest `sealedAt`"]
    assert "`key-validity`" in row
    retired = TrustedKey(
        example.key.private_key.public_key(),
        example.keyid,
        "retired",
        valid_until=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    report = _check(example.bundle, TrustRoot((retired,)))
    assert _first_failure(report) == "key-validity"


def test_backdated_bundle_from_a_retired_key_still_verifies(
    example: Any, make_example: Any
) -> None:
    # THREAT_MODEL residual risk: sealedAt is the producer's claim.
    retired = TrustedKey(
        example.key.private_key.public_key(),
        example.keyid,
        "retired",
        valid_until=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    backdated = _seal(
        make_example,
        make_example.bodies(),
        sealed_at=datetime(2025, 12, 31, 23, 0, tzinfo=timezone.utc),
    )
    assert _check(backdated.data, TrustRoot((retired,))).ok


def _segments(make_example: Any, count: int) -> list[Any]:
    body = make_example.bodies()[0]
    sealed, position = [], ChainPosition.genesis(make_example.TRACE_ID)
    for i in range(count):
        b = json.loads(json.dumps(body))
        b["span"]["spanId"] = f"{i + 1:016x}"
        bundle = _seal(
            make_example,
            [b],
            position=position,
            reason="size_limit",
            sealed_at=make_example.SEALED_AT + timedelta(seconds=i),
        )
        sealed.append(bundle)
        position = bundle.next_position()
    return sealed


def test_deleting_a_middle_segment_fails_linking(
    example: Any, make_example: Any, trust: TrustRoot
) -> None:
    assert "step 11" in _rows()["delete a middle segment of a trace"]
    segments = _segments(make_example, 3)
    reports = [_check(s.data, trust) for s in segments]
    assert all(r.ok for r in reports)
    (whole,) = link_segments(reports)
    assert whole.ok and whole.segments == (0, 1, 2)
    (gap,) = link_segments([reports[0], reports[2]])
    assert not gap.ok and "missing" in gap.message
    # Residual risk: dropping the *last* segment goes unnoticed without a witness.
    (tail_cut,) = link_segments(reports[:2])
    assert tail_cut.ok


def test_a_retired_key_continuing_a_later_segment_fails_linking(
    example: Any, make_example: Any
) -> None:
    row = _rows()["continue a chain with a retired key, `sealedAt` backdated into its window"]
    assert "step 11" in row
    current = SigningKey.from_seed(b"\x09" * 32)
    first = _seal(make_example, make_example.bodies(), signer=current)
    stolen = TrustedKey(example.key.private_key.public_key(), example.keyid, "retired",
                        valid_until=first.statement.sealed_at)
    trust = TrustRoot((TrustedKey(current.private_key.public_key(), current.keyid,
                                  "current"), stolen))
    body = json.loads(json.dumps(make_example.bodies()[0]))
    body["span"]["spanId"] = "00000000000000ff"
    backdated = _seal(make_example, [body], position=first.next_position(),
                      sealed_at=first.statement.sealed_at - timedelta(hours=1))
    reports = [_check(first.data, trust), _check(backdated.data, trust)]
    assert all(r.ok for r in reports)
    (link,) = link_segments(reports)
    assert not link.ok and "continues segment 0" in link.message


def test_declared_losses_are_incomplete(example: Any, make_example: Any, trust: TrustRoot) -> None:
    assert "`completeness`" in _rows()["declare losses"]
    lossy = _seal(make_example, make_example.bodies(), completeness=Completeness(dropped_spans=3))
    report = _check(lossy.data, trust)
    assert report.verdict is Verdict.INCOMPLETE
    assert _first_failure(report) == "completeness"


def test_every_row_naming_a_step_is_exercised() -> None:
    exercised = set(BUNDLE_ATTACKS) | {
        "point the key id hint at a trusted key",
        "sign with a retired key, honest `sealedAt`",
        "delete a middle segment of a trace",
        "continue a chain with a retired key, `sealedAt` backdated into its window",
        "declare losses",
    }
    with_step = {attack for attack, caught in _rows().items() if re.search(r"step \d+", caught)}
    assert with_step <= exercised, f"untested THREAT_MODEL rows: {with_step - exercised}"


def test_example_fixture_is_unchanged(example: Any) -> None:
    # The session-wide example must not be mutated by any test (the attacks copy).
    header = example.bundle.split(b"\n")[0][: -len(_RECORDS_OPEN)] + b"}"
    assert json.loads(header)["envelope"] == example.envelope
    assert dataclasses.is_dataclass(example)
