"""RFC 8785 canonical JSON and strict parsing (SPEC §3).

Known answers from the RFC 8785 reference vectors (cyberphone/json-canonicalization,
read from ``../shared/vectors/jcs``), negative cases named for the defect, and a
differential test against the independent ``rfc8785`` package.
"""

from __future__ import annotations

import re
import sys
import tracemalloc
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from spanproof.verifier import CanonicalizationError, InvalidBundle
from spanproof.verifier.canonical import (
    MAX_NESTING,
    _canonicalize_exact,
    _canonicalize_fast,
    _nested_deeper_than,
    canonicalize,
    format_double,
    loads_canonical,
    parse_strict,
)

# The vector files, by name; a test below asserts the folder holds exactly these.
JCS_VECTORS = ("arrays", "french", "structures", "unicode", "values", "weird")
MAX_SAFE = 2**53 - 1


# --- RFC 8785 known answers ------------------------------------------------------


def test_jcs_vector_folder_holds_exactly_the_listed_files(vectors_dir: Path) -> None:
    names = {p.stem for p in (vectors_dir / "jcs" / "input").glob("*.json")}
    assert names == set(JCS_VECTORS)


@pytest.mark.parametrize("name", JCS_VECTORS)
def test_jcs_vector(vectors_dir: Path, name: str) -> None:
    source = (vectors_dir / "jcs" / "input" / f"{name}.json").read_bytes()
    expected = (vectors_dir / "jcs" / "output" / f"{name}.json").read_bytes()
    assert expected.hex() == (vectors_dir / "jcs" / "outhex" / f"{name}.txt").read_text().replace(
        " ", ""
    ).replace("\n", "")
    assert canonicalize(parse_strict(source)) == expected
    # The expected output is itself canonical, and parses back to the same value.
    assert loads_canonical(expected) == parse_strict(source)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740994.0, "9007199254740994"),
        (9.999999999999997e-7, "9.999999999999997e-7"),
        (333333333.3333333, "333333333.3333333"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_number_serialization_is_ecmascript(value: float, text: str) -> None:
    # RFC 8785 §3.2.2.3 and the es6 sample lines of the reference test data.
    assert format_double(value) == text
    assert canonicalize(value) == text.encode()


# --- strict parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate JSON key 'a'"),
        (b'{"a":{"b":1,"b":1}}', "duplicate JSON key 'b'"),
        (b'[{"k":1,"j":2,"k":1}]', "duplicate JSON key 'k'"),
        (b"NaN", "NaN literal is not JSON"),
        (b"[1,Infinity]", "Infinity literal is not JSON"),
        (b'{"x":-Infinity}', "-Infinity literal is not JSON"),
        (b'"\xff"', "not valid UTF-8"),
        (b'"\xc3"', "not valid UTF-8"),
        (b'"\xed\xa0\x80"', "not valid UTF-8"),  # a surrogate encoded in UTF-8 (CESU)
        (b"\xef\xbb\xbf{}", "invalid JSON"),  # UTF-8 byte order mark
        (b"", "invalid JSON"),
        (b"{} {}", "invalid JSON"),
        (b"{'a':1}", "invalid JSON"),
        (b"[1,]", "invalid JSON"),
        # Beyond Python's int-parsing digit limit, named without Python's own advice.
        (b"1" * 5000, "integer literal too long (over 4300 digits)"),
        (b'{"a":[-' + b"9" * 4301 + b"]}", "integer literal too long (over 4300 digits)"),
        (b'"\\ud800"', "lone surrogate"),
        (b'{"k":["a","x\\uDFFFy"]}', "lone surrogate"),
        (b'{"\\udc00":1}', "lone surrogate"),  # in a key
        (b'"\\ude00\\ud83d"', "lone surrogate"),  # a pair in the wrong order
    ],
    ids=[
        "duplicate_key_fail",
        "nested_duplicate_key_fail",
        "duplicate_key_in_array_fail",
        "nan_literal_fail",
        "infinity_literal_fail",
        "negative_infinity_literal_fail",
        "invalid_utf8_byte_fail",
        "truncated_utf8_sequence_fail",
        "utf8_encoded_surrogate_fail",
        "byte_order_mark_fail",
        "empty_input_fail",
        "two_documents_fail",
        "single_quotes_fail",
        "trailing_comma_fail",
        "too_many_digits_fail",
        "too_many_digits_negative_nested_fail",
        "escaped_lone_high_surrogate_fail",
        "escaped_lone_low_surrogate_in_array_fail",
        "escaped_lone_surrogate_in_key_fail",
        "escaped_surrogates_reversed_fail",
    ],
)
def test_parse_strict_rejects(data: bytes, message: str) -> None:
    with pytest.raises(InvalidBundle, match="^record 3: .*" + re.escape(message)):
        parse_strict(data, "record 3")


def test_parse_strict_rejects_deep_nesting_as_invalid_bundle() -> None:
    with pytest.raises(InvalidBundle, match="nested too deeply"):
        parse_strict(b"[" * 100_000 + b"]" * 100_000)


def _nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _from_deep_stack(frames: int, call: Callable[[], Any]) -> Any:
    """Run *call* under *frames* more Python frames, as a deeply nested caller would."""
    return call() if frames == 0 else _from_deep_stack(frames - 1, call)


def _nearly_all_frames() -> int:
    """The frames a caller can add here and still leave *call* about 30 of its own."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return sys.getrecursionlimit() - depth - 30


def test_parse_strict_refuses_nesting_beyond_max_nesting() -> None:
    assert parse_strict(_nested(MAX_NESTING)) is not None
    with pytest.raises(InvalidBundle, match=r"^doc: JSON nested too deeply"):
        parse_strict(_nested(MAX_NESTING + 1), "doc")


@pytest.mark.parametrize("wrap", [
    lambda deep: b"[" + b"[]," * 1000 + deep + b',{"a":{}}]',
    lambda deep: b'{"a":[[{}]],"b":' + deep + b',"c":"x"}',
])
def test_the_deepest_member_anywhere_decides_the_nesting_verdict(
        wrap: Callable[[bytes], bytes]) -> None:
    assert parse_strict(wrap(_nested(MAX_NESTING - 1)))
    with pytest.raises(InvalidBundle, match="nested too deeply"):
        parse_strict(wrap(_nested(MAX_NESTING - 1, b"{}")))


def test_the_nesting_check_holds_a_reference_per_array_not_a_tuple() -> None:
    # A 64 MiB line of empty arrays made the check hold a (value, depth) pair and a
    # generator for each, about 1.2 GB beside the parsed value.
    wide = [[] for _ in range(200_000)]
    tracemalloc.start()
    try:
        assert not _nested_deeper_than(wide, MAX_NESTING)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000 * 16


def test_the_exact_encoder_holds_no_string_object_per_number() -> None:
    # Numbers take the exact encoder; a line of 32 million of them took 3 GB in a
    # list of pieces, one new string for each.
    numbers = [0] * 1_000_000
    assert _canonicalize_fast(numbers) is None
    tracemalloc.start()
    try:
        data = _canonicalize_exact(numbers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == b"[" + b"0," * 999_999 + b"0]"
    assert peak < 4 * len(data)


def test_deep_nesting_with_a_surrogate_pair_escape_is_refused_not_raised() -> None:
    # The escape makes parse_strict look for lone surrogates in the parsed value;
    # that walk must not exhaust the stack where the parser did not.
    pair = b'"\\ud83d\\ude00"'
    assert parse_strict(_nested(MAX_NESTING, pair)) is not None
    for depth in (MAX_NESTING + 1, 900):
        with pytest.raises(InvalidBundle, match="nested too deeply"):
            parse_strict(_nested(depth, pair))


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 700, 982, 2000])
def test_the_nesting_verdict_does_not_depend_on_the_callers_stack(depth: int) -> None:
    # orjson encodes no more than 255 levels, so these take the strict path and
    # the recursive exact encoder; from a deep enough caller it raised RecursionError,
    # or refused 512 levels as too deep, where a shallow caller got OK.
    for frames in (0, 300, _nearly_all_frames()):
        with pytest.raises(InvalidBundle, match="nested too deeply"):
            _from_deep_stack(frames, lambda: loads_canonical(_nested(depth)))
        assert _from_deep_stack(frames, lambda: loads_canonical(_nested(MAX_NESTING)))
        assert _from_deep_stack(frames, lambda: canonicalize(parse_strict(
            _nested(MAX_NESTING)))) == _nested(MAX_NESTING)


@pytest.mark.parametrize(("inner", "defect"), [
    (b'{"a":"1","a":"2"}', "duplicate JSON key 'a'"),
    (b'"\\ud800"', "lone surrogate"),
    (b"NaN", "NaN"),
])
def test_a_strict_parse_retried_on_a_new_stack_still_names_the_defect(
        inner: bytes, defect: str) -> None:
    document = b"[" * 500 + inner + b"]" * 500
    with pytest.raises(InvalidBundle, match=defect):
        _from_deep_stack(_nearly_all_frames(), lambda: parse_strict(document))


def test_parse_strict_keeps_values_exact() -> None:
    assert parse_strict(b'{"a":[1,2.5,"x",true,false,null],"b":{}}') == {
        "a": [1, 2.5, "x", True, False, None],
        "b": {},
    }
    assert parse_strict('"\\u00e9"') == "\u00e9"
    # A surrogate pair spelled as two escapes is one character; an escaped
    # backslash followed by "ud800" is not an escape at all.
    assert parse_strict(b'["\\ud83d\\ude00","\\\\ud800"]') == ["\U0001f600", "\\ud800"]


# --- canonicalize rejects what JSON cannot carry -----------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",
        "a\udfffb",
        ["ok", "\udbff"],
        {"k": "\ud83d"},
        {"\ud800": "value"},
        {"nested": {"\udc00x": 1}},
        float("nan"),
        float("inf"),
        float("-inf"),
        [1.0, float("nan")],
        MAX_SAFE + 1,
        -MAX_SAFE - 1,
        2**63,
        {"n": 2**64},
        b"bytes",
        {"k": object()},
        {1: "non-string key"},
    ],
    ids=[
        "lone_high_surrogate_fail",
        "lone_low_surrogate_fail",
        "lone_surrogate_in_array_fail",
        "lone_surrogate_in_object_value_fail",
        "lone_surrogate_key_fail",
        "lone_surrogate_nested_key_fail",
        "nan_float_fail",
        "infinity_float_fail",
        "negative_infinity_float_fail",
        "nan_in_array_fail",
        "int_above_2_53_fail",
        "int_below_minus_2_53_fail",
        "int64_range_int_fail",
        "uint64_range_int_fail",
        "bytes_value_fail",
        "arbitrary_object_fail",
        "non_string_key_fail",
    ],
)
def test_canonicalize_rejects(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


def test_canonicalize_accepts_the_safe_integer_bounds() -> None:
    assert canonicalize([MAX_SAFE, -MAX_SAFE]) == b"[9007199254740991,-9007199254740991]"


def test_canonicalization_error_is_invalid_bundle_and_value_error() -> None:
    with pytest.raises(InvalidBundle):
        canonicalize(float("nan"))
    with pytest.raises(ValueError):
        canonicalize(float("nan"))


# --- loads_canonical insists on canonical bytes -----------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',
        b'{ "a":1}',
        b'{"a":1}\n',
        b' {"a":1}',
        b'{"b":1,"a":2}',
        b'"\\u0041"',
        b'"\\/"',
        b'"\\u00e9"',
        b"1.0",
        b"1E2",
        b"1e2",
        b"-0",
        b"0.10",
        b"[1 ,2]",
        b'"\\u001F"',
    ],
    ids=[
        "space_after_colon_fail",
        "space_after_brace_fail",
        "trailing_newline_fail",
        "leading_space_fail",
        "keys_out_of_order_fail",
        "escaped_ascii_letter_fail",
        "escaped_solidus_fail",
        "escaped_non_ascii_fail",
        "float_with_trailing_zero_fail",
        "exponent_uppercase_fail",
        "exponent_not_ecmascript_fail",
        "negative_zero_fail",
        "trailing_fraction_zero_fail",
        "space_before_comma_fail",
        "uppercase_hex_escape_fail",
    ],
)
def test_loads_canonical_rejects_non_canonical_bytes(data: bytes) -> None:
    with pytest.raises(CanonicalizationError, match=r"^record 0: bytes are not RFC 8785"):
        loads_canonical(data, "record 0")


def test_loads_canonical_rejects_a_lone_surrogate_escape() -> None:
    # The parser accepts the escape; the canonical re-encoding cannot.
    with pytest.raises(CanonicalizationError, match="lone surrogate"):
        loads_canonical(b'"\\ud800"')


def test_loads_canonical_reports_strict_parse_errors_as_invalid_bundle() -> None:
    with pytest.raises(InvalidBundle, match="duplicate JSON key") as info:
        loads_canonical(b'{"a":1,"a":1}')
    assert not isinstance(info.value, CanonicalizationError)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":[true,false,null],"c":"\\u001f\\n\xc3\xa9"}',
        b'"\\u0000"',
        b'{"":""}',
        b"[]",
        b"-1.5e-7",
    ],
)
def test_loads_canonical_accepts_canonical_bytes(data: bytes) -> None:
    assert canonicalize(loads_canonical(data)) == data


# --- ordering and Unicode --------------------------------------------------------


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is U+D83D U+DE00 in UTF-16, which sorts before U+E000..U+FFFF
    # although its code point is larger (RFC 8785 §3.2.3).
    smiley, private_use, replacement = "\U0001f600", "\ue000", "\ufffd"
    value = {replacement: 3, private_use: 2, smiley: 1, "z": 0}
    expected = '{"z":0,"\U0001f600":1,"\ue000":2,"\ufffd":3}'.encode()
    assert canonicalize(value) == expected
    # Sorting by code point (what a naive implementation does) would differ.
    assert sorted(value) != [k for k in sorted(value, key=lambda k: k.encode("utf-16-be"))]


def test_no_unicode_normalization() -> None:
    composed, decomposed = "\u00e9", "e\u0301"
    assert unicodedata.normalize("NFC", decomposed) == composed
    value = {composed: composed, decomposed: decomposed}
    out = canonicalize(value)
    assert out == '{"e\u0301":"e\u0301","\u00e9":"\u00e9"}'.encode()
    assert loads_canonical(out) == value
    assert canonicalize(composed) != canonicalize(decomposed)


def test_control_characters_use_rfc8785_escapes() -> None:
    expected = b'"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f\\"\\\\/"'
    assert canonicalize("\b\t\n\f\r\x00\x1f\x7f\"\\/") == expected


# --- differential test against the independent rfc8785 package --------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF))
    | st.text(st.characters(max_codepoint=0x1F))
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_canonicalize_matches_rfc8785_package(value: object) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


# Integral doubles of magnitude 2^53 and above serialize as integer literals, which
# strict parsing reads back as out-of-range integers; v1 documents carry no JSON
# numbers at all (SPEC §2.3), so the round trip is only claimed below 2^53.
_roundtrip_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE)
    | st.floats(min_value=-MAX_SAFE, max_value=MAX_SAFE)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(_roundtrip_values)
def test_canonical_bytes_parse_back_to_the_same_canonical_bytes(value: object) -> None:
    data = canonicalize(value)
    assert canonicalize(loads_canonical(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_serialization_matches_rfc8785_package(value: float) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)
    assert float(format_double(value)) == value


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b'{"a":"x","a":"x"}', InvalidBundle, "duplicate JSON key 'a'"),
        (b'{"a":{"b":"1","b":"1"}}', InvalidBundle, "duplicate JSON key 'b'"),
        (b'["\\ud800"]', CanonicalizationError, "lone surrogate"),
        (b'{"a":NaN}', InvalidBundle, "NaN literal is not JSON"),
        (b'{"a":"x"} ', CanonicalizationError, "not RFC 8785 canonical"),
    ],
    ids=["duplicate_identical_key_fail", "nested_duplicate_identical_key_fail",
         "escaped_lone_surrogate_fail", "nan_literal_fail", "trailing_space_fail"],
)
def test_loads_canonical_rejects_what_its_lenient_first_parse_accepts(
    data: bytes, error: type[Exception], message: str
) -> None:
    # loads_canonical first parses without the strict checks and keeps the result
    # only when it re-encodes to exactly the input; everything else is diagnosed.
    with pytest.raises(error, match=f"^record 3: .*{re.escape(message)}"):
        loads_canonical(data, "record 3")


def test_a_str_subclass_key_sorts_by_its_string_data_not_its_own_encode() -> None:
    # Its own encode() ordered it: {"b":2,"a":1}, which no verifier reads as canonical.
    class Shouting(str):
        __slots__ = ()

        def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
            return b"\xff\xff"

    assert canonicalize({Shouting("a"): 1, "b": 2}) == b'{"a":1,"b":2}'
