"""Typed attribute values (SPEC §2.3): lossless round trips and strict validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanproof.verifier import InvalidBundle, canonicalize, loads_canonical
from spanproof.verifier.values import (
    INT64_MAX,
    INT64_MIN,
    decode_double,
    decode_value,
    encode_double,
    encode_value,
    validate_value,
)


def _roundtrip(value: Any) -> Any:
    typed = encode_value(value)
    validate_value(typed, "attr")
    # The typed value survives canonical JSON unchanged (no JSON numbers inside).
    assert loads_canonical(canonicalize(typed)) == typed
    return decode_value(typed)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "nul\x00inside",
        "\U0001f600 non-BMP",
        "e\u0301 decomposed",
        "\x1f\x7f controls",
        True,
        False,
        0,
        -1,
        42,
        2**53 + 1,
        -(2**53) - 1,
        INT64_MIN,
        INT64_MAX,
        b"",
        b"\x00\xff\x8f\x01\xc2",
        [],
        [True, False],
        [1, -2, 2**53 + 1],
        ["a", "", "\U0001f600"],
        {},
        {"k": "v", "n": {"deep": [1, "x", None]}},
        None,
    ],
    ids=repr,
)
def test_roundtrip(value: Any) -> None:
    result = _roundtrip(value)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    "value",
    [0.0, 0.1, 1.0, -2.5, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, 2.0**53 + 2],
    ids=repr,
)
def test_double_roundtrip(value: float) -> None:
    result = _roundtrip(value)
    assert isinstance(result, float)
    assert result == value


def test_float_array_roundtrip() -> None:
    assert _roundtrip([0.5, -0.0, 1e300]) == [0.5, -0.0, 1e300]


def test_negative_zero_keeps_its_sign() -> None:
    typed = encode_value(-0.0)
    assert typed == {"doubleValue": "-0"}
    assert encode_value(0.0) == {"doubleValue": "0"}
    result = _roundtrip(-0.0)
    assert result == 0.0 and math.copysign(1.0, result) == -1.0


@pytest.mark.parametrize(
    ("value", "text"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
)
def test_non_finite_doubles_have_an_explicit_spelling(value: float, text: str) -> None:
    assert encode_value(value) == {"doubleValue": text}
    result = _roundtrip(value)
    assert isinstance(result, float)
    if math.isnan(value):
        assert math.isnan(result)
    else:
        assert result == value


def test_five_as_string_int_and_double_are_three_distinct_values() -> None:
    typed = [encode_value("5"), encode_value(5), encode_value(5.0)]
    assert typed == [{"stringValue": "5"}, {"intValue": "5"}, {"doubleValue": "5"}]
    assert len({canonicalize(t) for t in typed}) == 3
    assert [type(decode_value(t)) for t in typed] == [str, int, float]


def test_bool_is_not_an_int() -> None:
    assert encode_value(True) == {"boolValue": True}
    assert encode_value(1) == {"intValue": "1"}


def test_int_outside_int64_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="outside int64"):
        encode_value(INT64_MAX + 1)
    with pytest.raises(ValueError, match="outside int64"):
        encode_value(INT64_MIN - 1)


def test_unsupported_type_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="unsupported attribute value type"):
        encode_value(object())


# --- validation rejects malformed typed values ---------------------------------


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ({"intValue": 5}, "intValue must be a canonical decimal string"),
        ({"intValue": "05"}, "intValue must be a canonical decimal string"),
        ({"intValue": "-0"}, "intValue must be a canonical decimal string"),
        ({"intValue": "+5"}, "intValue must be a canonical decimal string"),
        ({"intValue": " 5"}, "intValue must be a canonical decimal string"),
        ({"intValue": "5\n"}, "intValue must be a canonical decimal string"),
        ({"intValue": "\u0665"}, "intValue must be a canonical decimal string"),  # Arabic 5
        ({"intValue": "1.0"}, "intValue must be a canonical decimal string"),
        ({"intValue": str(INT64_MAX + 1)}, "outside int64"),
        ({"intValue": str(INT64_MIN - 1)}, "outside int64"),
        ({"intValue": "9" * 5000}, "intValue must be a canonical decimal string"),
        ({"doubleValue": 1.0}, "doubleValue must be a string"),
        ({"doubleValue": "1.0"}, "not the canonical spelling"),
        ({"doubleValue": "1e21"}, "not the canonical spelling"),
        ({"doubleValue": "0.10"}, "not the canonical spelling"),
        ({"doubleValue": "-0.0"}, "not the canonical spelling"),
        ({"doubleValue": "nan"}, "not the canonical spelling"),
        ({"doubleValue": "inf"}, "not the canonical spelling"),
        ({"doubleValue": "infinity"}, "not the canonical spelling"),
        ({"doubleValue": "+Infinity"}, "not the canonical spelling"),
        ({"doubleValue": "1_0"}, "not the canonical spelling"),
        ({"doubleValue": "five"}, "is not a double"),
        ({"stringValue": 5}, "stringValue must be a string"),
        ({"boolValue": "true"}, "boolValue must be true or false"),
        ({"boolValue": 1}, "boolValue must be true or false"),
        ({"stringValue": "a", "intValue": "1"}, "exactly one member"),
        ({"floatValue": "1"}, "unknown value type 'floatValue'"),
        ({"bytesValue": "not base64!"}, "not canonical padded base64"),
        ({"bytesValue": "AAE"}, "not canonical padded base64"),
        ({"bytesValue": "AAF="}, "not canonical padded base64"),
        ({"bytesValue": "AA-_"}, "not canonical padded base64"),
        ({"bytesValue": "AAE=\n"}, "not canonical padded base64"),
        ({"bytesValue": b"\x00"}, "bytesValue must be a base64 string"),
        ({"arrayValue": {}}, "arrayValue must be an array"),
        ({"arrayValue": [{"intValue": 1}]}, r"attr\[0\]: intValue"),
        ({"arrayValue": ["raw"]}, r"attr\[0\]: typed value must be an object"),
        ({"kvlistValue": []}, "kvlistValue must be an object"),
        ({"kvlistValue": {"k": {"doubleValue": "NAN"}}}, r"attr\.k: .*canonical spelling"),
        ("5", "typed value must be an object"),
        (None, "typed value must be an object"),
    ],
    ids=[
        "int_as_json_number_fail",
        "int_leading_zero_fail",
        "int_negative_zero_fail",
        "int_plus_sign_fail",
        "int_leading_space_fail",
        "int_trailing_newline_fail",
        "int_non_ascii_digit_fail",
        "int_with_fraction_fail",
        "int_above_int64_fail",
        "int_below_int64_fail",
        "int_too_many_digits_fail",
        "double_as_json_number_fail",
        "double_non_canonical_spelling_fail",
        "double_exponent_not_ecmascript_fail",
        "double_trailing_zero_fail",
        "double_negative_zero_spelled_wrong_fail",
        "double_lowercase_nan_fail",
        "double_inf_fail",
        "double_lowercase_infinity_fail",
        "double_plus_infinity_fail",
        "double_underscore_fail",
        "double_not_a_number_fail",
        "string_not_a_string_fail",
        "bool_as_string_fail",
        "bool_as_number_fail",
        "two_members_fail",
        "unknown_type_fail",
        "bytes_bad_alphabet_fail",
        "bytes_missing_padding_fail",
        "bytes_non_canonical_padding_bits_fail",
        "bytes_urlsafe_alphabet_fail",
        "bytes_trailing_newline_fail",
        "bytes_not_a_string_fail",
        "array_not_a_list_fail",
        "array_bad_item_fail",
        "array_untyped_item_fail",
        "kvlist_not_an_object_fail",
        "kvlist_bad_member_fail",
        "bare_string_fail",
        "null_fail",
    ],
)
def test_validate_value_rejects(typed: Any, message: str) -> None:
    with pytest.raises(InvalidBundle, match=message) as info:
        validate_value(typed, "attr")
    assert str(info.value).startswith("attr")


def test_validate_value_rejects_runaway_nesting() -> None:
    typed: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(100):
        typed = {"arrayValue": [typed]}
    with pytest.raises(InvalidBundle, match="nested deeper than"):
        validate_value(typed, "attr")


def test_validate_value_names_the_path_to_a_nested_defect() -> None:
    typed = {"arrayValue": [{}, {"kvlistValue": {"a": {}, "b": {"arrayValue": [
        {"stringValue": "x"}, {"intValue": "01"}]}}}]}
    with pytest.raises(InvalidBundle) as info:
        validate_value(typed, "attr")
    assert str(info.value) == "attr[1].b[1]: intValue must be a canonical decimal string"


class _CountedLocation(str):
    """A location that counts how often it is formatted into a longer one."""

    formatted = 0

    def __format__(self, spec: str) -> str:
        type(self).formatted += 1
        return str.__format__(self, spec)


def test_validate_value_formats_its_location_only_for_a_defect() -> None:
    # The location embeds the attribute key, which a bundle's author chooses and
    # can make megabytes long: formatting it for each of an array's elements made
    # checking one record line take time proportional to their product (a 4 MB
    # line took 30 s of CPU).
    where = _CountedLocation("record 0.span.attributes['" + "k" * 1000 + "']")
    items: list[Any] = [{"kvlistValue": {"a": {"stringValue": "x"}}}] * 10_000
    validate_value({"arrayValue": items}, where)
    assert _CountedLocation.formatted == 0
    with pytest.raises(InvalidBundle) as info:
        validate_value({"arrayValue": [*items, {"boolValue": 1}]}, where)
    assert str(info.value) == f"{where}[10000]: boolValue must be true or false"
    assert _CountedLocation.formatted <= 2


def test_empty_value_is_valid_and_decodes_to_none() -> None:
    validate_value({}, "attr")
    assert decode_value({}) is None


@pytest.mark.parametrize("text", ["1.0", "nan", "inf", "+1", "01", "1e21", "", "0x10"])
def test_decode_double_requires_the_canonical_spelling(text: str) -> None:
    with pytest.raises(ValueError):
        decode_double(text)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False))
def test_every_double_roundtrips_bit_for_bit(value: float) -> None:
    text = encode_double(value)
    result = decode_double(text)
    assert math.copysign(1.0, result) == math.copysign(1.0, value)
    assert result == value


_attribute_values = st.recursive(
    st.text()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(_attribute_values)
def test_any_attribute_value_roundtrips(value: Any) -> None:
    assert _roundtrip(value) == value
