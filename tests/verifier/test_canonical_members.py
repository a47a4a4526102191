"""``canonical_members``: the canonical-form check of a document too large to parse
whole (a bundle header over ``LARGE_RECORD_BYTES``, whose ``receipts`` member may
hold any JSON value), against ``loads_canonical`` on the same bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_canonical_fast import json_values, keys
from test_tamper import RECORDS_OPEN, split

from spanproof.verifier import (
    CanonicalizationError,
    InvalidBundle,
    Status,
    Verdict,
    canonicalize,
)
from spanproof.verifier.bundle import LARGE_RECORD_BYTES
from spanproof.verifier.canonical import MAX_NESTING, canonical_members, loads_canonical

if TYPE_CHECKING:
    from conftest import Kit

objects = st.dictionaries(keys, json_values, max_size=6)


def _values(value: Any) -> int:
    """How many JSON values *value* holds, itself included."""
    if isinstance(value, dict):
        return 1 + sum(_values(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(_values(v) for v in value)
    return 1


def _accepted_whole(data: bytes) -> bool:
    try:
        return isinstance(loads_canonical(data), dict)
    except InvalidBundle:  # CanonicalizationError among them
        return False


def _accepted_streamed(data: bytes) -> bool:
    try:
        canonical_members(data)
    except InvalidBundle:
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects)
def test_members_of_a_canonical_object_are_found_where_they_are(obj: dict[str, Any]) -> None:
    try:
        data = canonicalize(obj)
    except CanonicalizationError:
        assume(False)
        return
    # A double of 2^53 or more is written as an integer, which reads back out of range.
    assume(_accepted_whole(data))
    members = canonical_members(data)
    assert [name for name, *_ in members] == list(loads_canonical(data))
    for name, start, end, values in members:
        assert data[start:end] == canonicalize(obj[name])
        assert values == _values(obj[name])


# Bytes that turn a canonical document into another that may or may not be.
_INSERTED = [b" ", b"\n", b",", b":", b"0", b"-", b".5", b"e1", b"\\", b'"', b"\\u0041",
             b"\\/", b"\\u000a", b"\\u001F", b"\x7f", b"\x00", b"\xc3\xa9", b"\xff", b"[", b"]",
             b"{", b"}", b"null", b"1.0", b"1E5", b"-0", b"9007199254740992", b'"a":1,']


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects, st.data())
def test_what_it_accepts_is_what_loads_canonical_accepts(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    try:
        document = canonicalize(obj)
    except CanonicalizationError:
        assume(False)
        return
    at = data.draw(st.integers(0, len(document)))
    how = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    piece = data.draw(st.sampled_from(_INSERTED))
    if how == "insert":
        mutated = document[:at] + piece + document[at:]
    elif how == "delete":
        mutated = document[:at] + document[at + len(piece):]
    else:
        mutated = document[:at] + piece + document[at + len(piece):]
    assert _accepted_streamed(mutated) == _accepted_whole(mutated), mutated


@pytest.mark.parametrize(("document", "accepted"), [
    (b"{}", True),
    (b'{"a":-0}', False), (b'{"a":0}', True), (b'{"a":1.0}', False), (b'{"a":1.5}', True),
    (b'{"a":1E5}', False), (b'{"a":100000}', True), (b'{"a":1e+21}', True),
    (b'{"a":1e400}', False), (b'{"a":01}', False), (b'{"a":9007199254740991}', True),
    (b'{"a":9007199254740992}', False), (b'{"a":-9007199254740991}', True),
    (b'{"a":0.000001}', True), (b'{"a":1e-7}', True), (b'{"a":0.0000001}', False),
    (b'{"a":"\\/"}', False), (b'{"a":"\\u0041"}', False), (b'{"a":"\\n"}', True),
    (b'{"a":"\\u000a"}', False), (b'{"a":"\\u001f"}', True), (b'{"a":"\\u001F"}', False),
    (b'{"a":"\x7f"}', True), (b'{"a":"\x1f"}', False), (b'{"a":"\\ud800"}', False),
    (b'{"a":true,"b":false,"c":null}', True), (b'{"a":tru}', False),
    (b'{"b":1,"a":1}', False), (b'{"a":1,"a":1}', False),
    # UTF-16 order, not code point order: U+10000 is D800 DC00, before U+E000.
    ('{"\U00010000":1,"\ue000":1}'.encode(), True),
    ('{"\ue000":1,"\U00010000":1}'.encode(), False),
    (b'{"a":1} ', False), (b' {"a":1}', False), (b'{"a": 1}', False), (b"[]", False),
    (b'{"a":[1,]}', False), (b'{"a":[,1]}', False), (b'{"a":{"b":1,}}', False),
    (b'{"a":"\xff"}', False), (b'{"a"}', False), (b"{", False), (b"", False),
])
def test_edges_are_judged_as_loads_canonical_judges_them(document: bytes, accepted: bool) -> None:
    assert _accepted_whole(document) is accepted
    assert _accepted_streamed(document) is accepted


@pytest.mark.parametrize("depth", [MAX_NESTING, MAX_NESTING + 1])
def test_nesting_is_limited_as_loads_canonical_limits_it(depth: int) -> None:
    document = b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    assert _accepted_streamed(document) is _accepted_whole(document) is (depth <= MAX_NESTING)


def test_a_refusal_names_the_byte() -> None:
    with pytest.raises(CanonicalizationError, match=r"header: .* \(byte 5\)"):
        canonical_members(b'{"a": 1}', "header")
    with pytest.raises(InvalidBundle, match=r"header: not valid UTF-8 \(byte 6\)"):
        canonical_members(b'{"a":"\xff"}', "header")


# --- a bundle header too large to parse whole -----------------------------------------

EMPTY_ARRAYS = b"[" + b",".join([b"[]"] * (LARGE_RECORD_BYTES // 2)) + b"]"


def _with_receipts(kit: Kit, receipts: bytes) -> bytes:
    header, records = split(kit.seal().data)
    framing = header[: -len(RECORDS_OPEN)]
    assert b'"receipts"' not in framing
    header = framing + b',"receipts":' + receipts + RECORDS_OPEN
    return header + b",\n".join(records) + b"\n]}\n"


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every piece of a bundle header parsed into values."""
    from spanproof.verifier import bundle as bundle_module

    sizes: list[int] = []
    loads, whole = bundle_module.orjson.loads, bundle_module.loads_canonical

    def parse(data: bytes, *args: Any) -> Any:
        sizes.append(len(data))
        return (whole if args else loads)(data, *args)

    monkeypatch.setattr(bundle_module, "loads_canonical", parse)
    monkeypatch.setattr(bundle_module, "orjson", type("orjson", (), {"loads": parse}))
    return sizes


def test_a_large_receipts_member_is_checked_without_being_parsed(
    kit: Kit, parsed: list[int]
) -> None:
    # Parsed, its ~520,000 empty arrays took ~33 MB; SPEC §7.2 lets it influence
    # nothing.  Only the envelope and the media type are parsed.
    data = _with_receipts(kit, EMPTY_ARRAYS)
    report = kit.check(data)
    assert report.verdict is Verdict.OK, report.reason
    assert len(parsed) == 2 and max(parsed) < 4096, parsed


def test_a_large_receipts_member_not_canonical_fails_format(kit: Kit, parsed: list[int]) -> None:
    data = _with_receipts(kit, EMPTY_ARRAYS[:-1] + b",[ ]]")
    report = kit.check(data)
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["format"]
    assert failed[0].message.startswith(
        "bundle header: bytes are not the RFC 8785 canonical form of a JSON object (byte ")
    assert parsed == []


def test_a_large_envelope_is_not_parsed_fail(kit: Kit, parsed: list[int]) -> None:
    header, records = split(kit.seal().data)
    envelope = header[len(b'{"envelope":'): header.index(b',"mediaType":')]
    forged = envelope[:-1] + b',"x":' + EMPTY_ARRAYS + b"}"
    data = (b'{"envelope":' + forged + header[header.index(b',"mediaType":'):]
            + b",\n".join(records) + b"\n]}\n")
    report = kit.check(data)
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["envelope"]
    assert failed[0].message.startswith(
        # The array and its arrays, and the envelope's own seven values.
        f"envelope: {LARGE_RECORD_BYTES // 2 + 1 + 7} JSON values, more than a DSSE "
        "envelope of at most 16 signatures holds (52)")
    assert max(parsed) < 4096, parsed  # the media type


def test_a_large_header_of_another_media_type_is_refused_as_a_small_one(kit: Kit) -> None:
    data = _with_receipts(kit, EMPTY_ARRAYS).replace(
        b'"mediaType":"application/vnd.spanproof.bundle.v1+json"',
        b'"mediaType":"application/vnd.spanproof.bundle.v2+json"', 1)
    report = kit.check(data)
    assert report.verdict is Verdict.FAIL
    assert report.reason == ("bundle header: unknown mediaType "
                             "'application/vnd.spanproof.bundle.v2+json' (this verifier knows "
                             "'application/vnd.spanproof.bundle.v1+json')")


def test_a_header_just_under_the_bound_is_parsed_whole(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanproof.verifier import bundle as bundle_module

    calls: list[int] = []
    monkeypatch.setattr(bundle_module, "canonical_members",
                        lambda data, what: calls.append(len(data)) or canonical_members(data, what))
    small = _with_receipts(kit, b"[[]]")
    assert kit.check(small).verdict is Verdict.OK and calls == []
    assert kit.check(_with_receipts(kit, EMPTY_ARRAYS)).verdict is Verdict.OK
    assert len(calls) == 1 and calls[0] > LARGE_RECORD_BYTES


# --- strings, one escape at a time or possessively -------------------------------------

_STRINGS = [b'""', b'"a"', b'"\\n"', b'"\\u001f"', b'"\\u0041"', b'"\\/"', b'"a\\"b"',
            b'"\\\\"', b'"\\\\u0041"', b'"open', b'"\\', b'"\\u00', b'"\x01"', b'"\x7f"',
            '"\u00e9\U0001f600"'.encode(), b'"a"b"', b'"\\n\\t\\r\\b\\f"', b'"\\u000a"']


@pytest.mark.parametrize("text", _STRINGS)
def test_a_string_ends_where_it_does_one_escape_at_a_time_too(text: bytes) -> None:
    # Python before 3.11 has no possessive repeats: it takes the stepwise match.
    from spanproof.verifier.canonical import _string_end, _string_end_stepwise

    assert _string_end_stepwise(text, 0) == _string_end(text, 0)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40).map(lambda b: b'"' + b))
def test_the_stepwise_string_match_agrees_on_any_bytes(text: bytes) -> None:
    from spanproof.verifier.canonical import _string_end, _string_end_stepwise

    assert _string_end_stepwise(text, 0) == _string_end(text, 0)


def test_a_long_string_of_escapes_costs_no_more_than_its_bytes() -> None:
    # Matched as a repeated group, each escape kept ~180 bytes of the regular
    # expression engine's state: 16 MiB of them took 1.5 GB.
    import tracemalloc

    document = b'{"r":"' + b"\\n" * (1 << 20) + b'"}'
    tracemalloc.start()
    try:
        members = canonical_members(document)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert members == [("r", 5, len(document) - 1, 1)]
    assert peak < 2 * len(document), peak  # the decoded chunk of the UTF-8 check


def test_a_large_header_names_the_step_a_small_one_names(kit: Kit) -> None:
    # Over the envelope's bound and of another media type: step 1 fails first, as it
    # does for a header parsed whole, not step 2.
    header, records = split(kit.seal().data)
    envelope = header[len(b'{"envelope":'): header.index(b',"mediaType":')]
    forged = envelope[:-1] + b',"x":' + EMPTY_ARRAYS + b"}"
    data = (b'{"envelope":' + forged + b',"mediaType":"x"' + RECORDS_OPEN
            + b",\n".join(records) + b"\n]}\n")
    report = kit.check(data)
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["format"]
    assert failed[0].message == ("bundle header: unknown mediaType 'x' (this verifier knows "
                                 "'application/vnd.spanproof.bundle.v1+json')")


def test_invalid_utf8_is_placed_where_it_is_across_a_chunk_boundary() -> None:
    from spanproof.verifier.canonical import _UTF8_CHUNK

    at = _UTF8_CHUNK - 1  # a two-byte sequence cut by the chunk's end, its second bad
    document = b'{"a":"' + b"x" * (at - 6) + b"\xc3(" + b'"}'
    with pytest.raises(InvalidBundle, match=rf"not valid UTF-8 \(byte {at}\)"):
        canonical_members(document)
