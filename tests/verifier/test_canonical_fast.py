"""The fast path of :func:`canonicalize` against the exact encoder and ``rfc8785``.

``canonicalize`` first encodes with orjson (sorted keys) and keeps the result only
when guards show it equals RFC 8785 (see the comment above ``_canonicalize_fast`` in
``verifier/canonical.py``).  These tests generate
span-shaped values holding every edge SPEC §2-§3 names (non-BMP characters, NUL and
other controls, DEL, U+2028/U+2029, quotes and backslashes, keys whose UTF-16 order
differs from their code-point order, lone surrogates, integers beyond 2^53, doubles
where numbers occur, deep arrays and maps) and check that the output is
byte-identical to the exact encoder's and to the independent ``rfc8785`` package's,
and that both raise on the same inputs.  The RFC 8785 vectors run through the fast
path in ``test_jcs_vectors_through_the_fast_path``.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spanproof.verifier import CanonicalizationError
from spanproof.verifier.canonical import (
    _canonicalize_exact,
    _canonicalize_fast,
    canonicalize,
    loads_canonical,
    parse_strict,
)

# Characters where encoders are known to disagree, weighted in beside general text.
EDGE_CHARS = [
    "\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f", '"', "\\", "/",
    "\x7f", "\x80", "\u00e9", "\u2028", "\u2029", "\ud7ff", "\ue000", "\uffff",
    "\U00010000", "\U0001f600", "\U0010ffff", "0", "1", "-", ":", ",", "[", "]", "{",
    "}", "e", "l",
]
LONE_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
scalar_values = st.characters(exclude_categories=("Cs",))  # no lone surrogates
edge_text = st.text(st.one_of(st.sampled_from(EDGE_CHARS), scalar_values), max_size=12)
# Keys also take the spellings json gives converted non-string keys.
keys = st.one_of(
    edge_text,
    st.sampled_from(["", "a", "b", "true", "false", "null", "1", "-1", "1.5", "ipv4"]),
)
MAX_SAFE = 2**53 - 1


def typed_values(strings: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """SPEC §2.3 typed values (number-free by design) built from *strings*."""
    leaves = st.one_of(
        st.just({}),
        st.builds(lambda s: {"stringValue": s}, strings),
        st.builds(lambda b: {"boolValue": b}, st.booleans()),
        st.builds(lambda i: {"intValue": str(i)}, st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda d: {"doubleValue": repr(d)}, st.floats()),
        st.builds(lambda s: {"bytesValue": s}, st.sampled_from(["", "jwHC", "AA=="])),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda xs: {"arrayValue": xs}, st.lists(inner, max_size=4)),
            st.builds(lambda m: {"kvlistValue": m}, st.dictionaries(keys, inner, max_size=4)),
        ),
        max_leaves=12,
    )


def records(strings: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Record-shaped objects (SPEC §2.1) with generated attributes and names."""
    attributes = st.dictionaries(keys, typed_values(strings), max_size=5)
    hexid = st.integers(1, 2**64 - 1).map(lambda i: f"{i:016x}")
    event = st.fixed_dictionaries({
        "timeUnixNano": st.integers(0, 2**64 - 1).map(str), "name": strings,
        "attributes": attributes, "droppedAttributesCount": st.just("0"),
    })
    span = st.fixed_dictionaries({
        "traceId": hexid.map(lambda h: h * 2), "spanId": hexid, "parentSpanId": st.just(""),
        "traceState": strings, "name": strings, "kind": st.just("SPAN_KIND_CLIENT"),
        "startTimeUnixNano": st.integers(0, 2**64 - 1).map(str),
        "endTimeUnixNano": st.integers(0, 2**64 - 1).map(str),
        "status": st.fixed_dictionaries({"code": st.just("STATUS_CODE_ERROR"),
                                         "message": strings}),
        "attributes": attributes, "droppedAttributesCount": st.just("0"),
        "events": st.lists(event, max_size=2), "droppedEventsCount": st.just("0"),
        "links": st.just([]), "droppedLinksCount": st.just("7"),
    })
    return st.fixed_dictionaries({
        "mediaType": st.just("application/vnd.spanproof.cer.v1+json"),
        "seq": st.integers(0, 2**64 - 1).map(str),
        "prev": st.just("sha256:" + "0a" * 32),
        "span": span,
        "resource": st.fixed_dictionaries({"attributes": attributes,
                                           "droppedAttributesCount": st.just("0"),
                                           "schemaUrl": strings}),
        "scope": st.fixed_dictionaries({"name": strings, "version": strings,
                                        "attributes": attributes,
                                        "droppedAttributesCount": st.just("0"),
                                        "schemaUrl": strings}),
    })


# Any JSON value, numbers included: the fast path must notice them and step aside.
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), edge_text,
        st.integers(-(2**64), 2**64),
        st.integers(-MAX_SAFE, MAX_SAFE),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=16,
)


def assert_same_as_exact_and_rfc8785(value: Any) -> None:
    try:
        expected = _canonicalize_exact(value)
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonicalize(value)
        return
    assert canonicalize(value) == expected
    assert rfc8785.dumps(value) == expected
    # The guards may send a value to the exact encoder, never let a wrong one through.
    fast = _canonicalize_fast(value)
    assert fast is None or fast == expected


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(records(edge_text))
def test_span_shaped_records_match_exact_and_rfc8785(record: dict[str, Any]) -> None:
    assert_same_as_exact_and_rfc8785(record)
    # The verifier's parse of canonical bytes (also fast-pathed) gives the value back.
    assert loads_canonical(canonicalize(record)) == record


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
@example({"\ue000": 1, "\U0001f600": 2})  # UTF-16 order differs from code points
@example({"a\U0001f600\\\"b": "", "a\uffff": ""})  # non-BMP key with an escape
@example([True, 5])
@example({"k": [None, -0.0, 1e21, 1e-7]})
@example(2**53)
def test_any_json_value_matches_exact_and_rfc8785(value: Any) -> None:
    assert_same_as_exact_and_rfc8785(value)


@settings(max_examples=200)
@given(records(st.text(st.one_of(st.sampled_from(EDGE_CHARS), LONE_SURROGATES), min_size=1)))
def test_lone_surrogates_are_rejected_on_both_paths(record: dict[str, Any]) -> None:
    assert_same_as_exact_and_rfc8785(record)


class _Text(str):
    def __str__(self) -> str:
        return "other"


class _Dict(dict[str, Any]):
    pass


@dataclasses.dataclass
class _Point:
    x: int
    y: int


@pytest.mark.parametrize(
    "value",
    [
        {1: "a"},
        {True: "a"},
        {False: "a", True: "b"},
        {None: "a"},
        {1.5: "a"},
        {"k": {2: "x", 10: "y"}},
        {"\ud800": "a"},
        ["\udfff"],
        {"a": float("nan")},
        [2**63],
        {"a": [float("inf")]},
        [float("-inf")],
        2**53,
        {"a": ["x", -(2**60)]},
        {"a": _Point(1, 2)},
        {"a": datetime(2026, 1, 1)},
        {"a": b"bytes"},
    ],
    ids=["int_key_fail", "true_key_fail", "bool_keys_fail", "none_key_fail",
         "float_key_fail", "nested_int_keys_fail", "lone_surrogate_key_fail",
         "lone_surrogate_value_fail", "nan_fail", "big_int_fail", "infinity_fail",
         "negative_infinity_fail", "unsafe_int_fail", "unsafe_negative_int_in_array_fail",
         "dataclass_fail", "datetime_fail", "bytes_fail"],
)
def test_fast_path_never_accepts_what_the_exact_encoder_rejects(value: Any) -> None:
    assert _canonicalize_fast(value) is None
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


def test_every_code_point_is_escaped_as_the_exact_encoder_escapes_it() -> None:
    # RFC 8785 §3.2.2.2 escaping, in keys and values, for all of the BMP's scalar
    # values (where escaping rules live) and samples above it.
    points = [*range(0xD800), *range(0xE000, 0x10000), 0x10000, 0x1F600, 0x10FFFF]
    for start in range(0, len(points), 4096):
        chunk = "".join(chr(cp) for cp in points[start:start + 4096])
        key = "".join(ch for ch in chunk if ch <= "\uffff")  # non-BMP keys: see below
        value = {key: [chunk, {"k": chunk}]}
        assert _canonicalize_fast(value) == _canonicalize_exact(value)


def test_subclasses_take_the_exact_encoder_which_encodes_their_data() -> None:
    value = {"a": _Text("x"), "b": _Dict(c="d")}
    assert _canonicalize_fast(value) is None
    assert canonicalize(value) == b'{"a":"x","b":{"c":"d"}}' == rfc8785.dumps(value)


def test_json_null_takes_the_exact_encoder() -> None:
    # orjson writes NaN as null, so any null goes to the exact encoder, which
    # distinguishes None (null) from NaN (an error).
    assert _canonicalize_fast({"a": None}) is None
    assert canonicalize({"a": None}) == b'{"a":null}'
    assert canonicalize({"a": "a null value"}) == b'{"a":"a null value"}'


def test_utf16_key_order_differs_from_code_point_order() -> None:
    # RFC 8785 §3.2.3: U+1F600 is D83D DE00 in UTF-16, which sorts before U+E000.
    value = {"\ue000": "", "\U0001f600": ""}
    assert _canonicalize_fast(value) is None
    assert canonicalize(value) == '{"\U0001f600":"","\ue000":""}'.encode()
    assert canonicalize(value) == rfc8785.dumps(value)
    # Non-BMP characters in values (not keys) keep the fast path.
    assert _canonicalize_fast({"a": "\U0001f600", "b\ue000": ""}) is not None


@pytest.mark.timeout(60)  # the defect took hours: a search restarted at every emoji
def test_a_megabyte_string_of_non_bmp_characters_is_checked_in_one_pass() -> None:
    # An unsigned member of a bundle header (SPEC §7.2) held this: every document the
    # verifier, the witness or a producer canonicalizes goes through the key check.
    text = "\U0001f600" * 1_000_000
    value = {"receipts": text, "\U0001f600key": [text, "\ue000"]}
    data = b'{"receipts":"' + text.encode() + b'","\xf0\x9f\x98\x80key":["' + \
        text.encode() + b'","\xee\x80\x80"]}'
    assert canonicalize(value) == data  # one key above U+FFFF: the exact encoder
    assert loads_canonical(data) == value
    del value["\U0001f600key"]
    assert _canonicalize_fast(value) == data[:len(text.encode()) + 14] + b"}"


@pytest.mark.parametrize(("value", "fast"), [
    ({"a": '\U0001f600":', "b": ""}, True),    # an escaped quote and a colon in a value
    ({"a": "\U0001f600\\", "b": ""}, True),   # a value ending in a backslash
    ({"a": "\U0001f600\\", "\U0001f600": ""}, False),
    ({"a": ["\U0001f600", "\U0001f600"], "k\\\U0001f600\"": ""}, False),
])
def test_a_key_above_u_ffff_is_found_after_any_value_string(
        value: dict[str, Any], fast: bool) -> None:
    assert (_canonicalize_fast(value) is not None) is fast
    assert canonicalize(value) == rfc8785.dumps(value) == _canonicalize_exact(value)


class _Pairs(Sequence[Any]):
    def __init__(self, *items: Any) -> None:
        self._items = items

    def __getitem__(self, i: Any) -> Any:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)


def test_other_mapping_and_sequence_types_take_the_exact_encoder() -> None:
    value = {"m": types.MappingProxyType({"b": "1", "a": "2"}), "s": _Pairs("x", True)}
    assert _canonicalize_fast(value) is None
    assert canonicalize(value) == b'{"m":{"a":"2","b":"1"},"s":["x",true]}'


def test_typical_record_takes_the_fast_path() -> None:
    text = "The customer reports a duplicate charge; caf\u00e9 \u2028 \U0001f600 " * 4
    record = {
        "mediaType": "application/vnd.spanproof.cer.v1+json", "seq": "7",
        "prev": "sha256:" + "0a" * 32,
        "span": {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00f067aa0ba902b7",
                 "name": "chat classify", "events": [], "links": [],
                 "status": {"code": "STATUS_CODE_UNSET", "message": ""},
                 "attributes": {"gen_ai.usage.input_tokens": {"intValue": "412"},
                                "app.prompt": {"stringValue": text},
                                "app.flag": {"boolValue": True}, "app.none": {}}},
        "resource": {"attributes": {"service.name": {"stringValue": "bench"}}},
    }
    assert _canonicalize_fast(record) == rfc8785.dumps(record)


def test_jcs_vectors_through_the_fast_path(vectors_dir: Path) -> None:
    for source in sorted((vectors_dir / "jcs" / "input").glob("*.json")):
        expected = (vectors_dir / "jcs" / "output" / source.name).read_bytes()
        value = parse_strict(source.read_bytes())
        assert canonicalize(value) == expected, source.name
        fast = _canonicalize_fast(value)
        assert fast is None or fast == expected, source.name
        # A plain parse, as loads_canonical's fast path does it, agrees too.
        assert canonicalize(json.loads(expected)) == expected, source.name
