"""SPEC §2.5.6 cannot rot: every value of the worked example is recomputed here."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from spanproof.verifier.canonical import canonicalize
from spanproof.verifier.disclosure import (
    COMMITMENT_PREFIX,
    SALT_PREFIX,
    Disclosure,
    DisclosureFile,
    check_disclosure,
    commit_value,
    commitment_digest,
    commitment_input,
    salt_digest,
)
from spanproof.verifier.records import CER_COMMITTED_MEDIA_TYPE, validate_record

ROOT = Path(__file__).resolve().parents[2]
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "00f067aa0ba902b7"
KEY = "support.case.category"
VALUE = {"stringValue": "billing_dispute"}
SALT = bytes(range(16))


def _section() -> str:
    text = (ROOT / "docs" / "SPEC.md").read_text(encoding="utf-8")
    start = text.index("#### 2.5.6 Worked example")
    return text[start: text.index("\n## 3 ", start)]


def _committed_record() -> bytes:
    lines = (ROOT / "docs" / "example" / "example.spanproof.json").read_bytes().split(b"\n")
    record = json.loads(lines[1].rstrip(b","))
    attrs = record["span"]["attributes"]
    assert attrs[KEY] == VALUE
    attrs[KEY] = commit_value(TRACE, SPAN, KEY, attrs[KEY], SALT)
    record["mediaType"] = CER_COMMITTED_MEDIA_TYPE
    validate_record(record)
    return canonicalize(record)


def test_prefixes_are_as_specified() -> None:
    assert COMMITMENT_PREFIX == b"spanproof.commitment.v1" + b"\x00"
    assert len(COMMITMENT_PREFIX) == 24
    assert SALT_PREFIX == b"spanproof.commitment-salt.v1\x00"


def test_worked_example_values_are_quoted() -> None:
    text = _section()
    data = commitment_input(TRACE, SPAN, KEY, VALUE, SALT)
    binding = data[40:]
    assert binding == canonicalize(
        {"key": KEY, "spanId": SPAN, "traceId": TRACE, "value": VALUE})
    assert data == COMMITMENT_PREFIX + SALT + binding
    digest = hashlib.sha256(data).hexdigest()
    assert digest == commitment_digest(TRACE, SPAN, KEY, VALUE, SALT)
    record = _committed_record()
    disclosure_file = DisclosureFile((Disclosure(TRACE, SPAN, KEY, SALT, VALUE),)).to_bytes()
    must_appear = {
        "binding": binding.decode(),
        "binding length": f"The binding ({len(binding)} bytes)",
        "input length": f"The input is {len(data)} bytes",
        "binding bytes": f"{len(binding)} binding bytes",
        "input head": f"{COMMITMENT_PREFIX[:-1].hex()} 00 {SALT.hex()}",
        "digest": f"digest     = {digest}",
        "salt digest": f"saltDigest = {salt_digest(SALT)}",
        "salt digest input": f"the {len(SALT_PREFIX + SALT)} bytes",
        "record": record.decode(),
        "record length": f"{len(record)} bytes",
        "disclosure file": disclosure_file.decode().rstrip("\n"),
    }
    missing = [name for name, value in must_appear.items() if value not in text]
    assert not missing, f"SPEC §2.5.6 does not show the current {missing}"


def test_worked_example_type_digests() -> None:
    text = _section()
    quoted = re.findall(r"`([0-9a-f]{64})`", text)
    expected = [
        commitment_digest(TRACE, SPAN, "x", value, SALT)
        for value in ({"stringValue": "5"}, {"intValue": "5"}, {"doubleValue": "5"})
    ]
    assert quoted == expected
    assert len(set(expected)) == 3


def test_worked_example_disclosure_opens_the_record() -> None:
    record = json.loads(_committed_record())
    result = check_disclosure(Disclosure(TRACE, SPAN, KEY, SALT, VALUE), [record], "example")
    assert result.ok, result.message
    assert result.seq == 0
    wrong = check_disclosure(
        Disclosure(TRACE, SPAN, KEY, SALT, {"stringValue": "refund"}), [record])
    assert not wrong.ok
