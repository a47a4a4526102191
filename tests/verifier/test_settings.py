"""How settings are read everywhere: numbers in ASCII digits, lists that are lists."""

from __future__ import annotations

import pytest

from spanproof.verifier import TrustRoot
from spanproof.verifier._settings import parse_decimal, parse_seconds, refuse_string
from spanproof.verifier.checkpoint import load_witness_keys


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("7", 7), ("0010", 10),
                                             ("99999999999999999999", 10**20 - 1)])
def test_parse_decimal_takes_ascii_digits(text: str, value: int) -> None:
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", ["", " 1", "1 ", "+1", "-1", "1_000", "1.0", "1e3", "0x10",
                                  "\u0663", "\uff15", "\u00b2", "1\n", "\u0661\u0662"])
def test_parse_decimal_refuses_what_int_would_take_or_not(text: str) -> None:
    with pytest.raises(ValueError, match="digits 0-9"):
        parse_decimal(text)


def test_parse_decimal_refuses_more_digits_than_int_converts() -> None:
    with pytest.raises(ValueError):
        parse_decimal("9" * 10_000)


@pytest.mark.parametrize(("text", "value"), [("2", 2.0), ("0.5", 0.5), (".5", 0.5),
                                             ("3.", 3.0)])
def test_parse_seconds_takes_plain_decimals(text: str, value: float) -> None:
    assert parse_seconds(text) == value


@pytest.mark.parametrize("text", ["", "1e3", "inf", "nan", "1_0", "+1", "-1", "\u0663", ".",
                                  " 1"])
def test_parse_seconds_refuses_the_rest_float_takes(text: str) -> None:
    with pytest.raises(ValueError, match="digits 0-9"):
        parse_seconds(text)


@pytest.mark.parametrize("value", [["a"], ("a",), iter(["a"]), frozenset({"a"})])
def test_refuse_string_lets_lists_through(value: object) -> None:
    refuse_string(value, "setting x", "x", "keys")


@pytest.mark.parametrize(("value", "shown"), [("a.b", "['a.b']"), ("a, b,", "['a', 'b']"),
                                              (b"a.b", "['a.b']"), ("", "[]")])
def test_refuse_string_shows_the_list_meant(value: object, shown: str) -> None:
    with pytest.raises(TypeError) as error:
        refuse_string(value, "setting x", "x", "keys")
    assert str(error.value) == (f"setting x must be a list of keys, not a "
                                f"{type(value).__name__} (which would be read one character "
                                f"at a time): write x={shown}")


def test_key_lists_given_as_a_string_are_a_type_error() -> None:
    # Read one character at a time, "w.pub" was the key files "w", ".", ...
    with pytest.raises(TypeError, match=r"write paths=\['signing\.pub'\]"):
        TrustRoot.from_pem_files("signing.pub")
    with pytest.raises(TypeError, match=r"write specs=\['w\.pub'\]"):
        load_witness_keys("w.pub")
