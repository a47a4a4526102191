"""RFC 8785 (JSON Canonicalization Scheme) encoding and strict JSON parsing.

Pure functions over values and bytes (SPEC §3).  :func:`canonicalize` produces the
canonical bytes of a JSON value; :func:`parse_strict` parses JSON while rejecting
what RFC 8785 and I-JSON (RFC 7493) forbid; :func:`loads_canonical` does both and
insists the input bytes were already canonical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import CanonicalizationError, InvalidBundle

__all__ = [
    "canonicalize",
    "format_double",
    "loads_canonical",
    "parse_strict",
]

# RFC 8785 §3.2.2.3: numbers are IEEE 754 doubles; integers outside +-(2^53 - 1)
# cannot be represented exactly and are rejected (I-JSON, RFC 7493 §2.2).
_MAX_SAFE_INTEGER = 2**53 - 1

_encode_string = json.encoder.encode_basestring


def format_double(value: float) -> str:
    """Return the ECMAScript ``Number.prototype.toString`` form of a finite double.

    This is the number serialization RFC 8785 §3.2.2.3 prescribes.  Negative zero
    serializes as ``"0"``.

    Raises:
        CanonicalizationError: for NaN or an infinity, which JSON cannot express.
    """
    if math.isnan(value) or math.isinf(value):
        raise CanonicalizationError(f"{value!r} has no JSON representation (RFC 8785 §3.2.2.2)")
    if value == 0.0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() yields the shortest digit string that round-trips (the same digits
    # ECMAScript's algorithm selects); only the layout differs.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    if frac_part == "0":
        frac_part = ""
    digits = (int_part + frac_part).lstrip("0")
    # n: position of the decimal point relative to the first significant digit.
    leading_zeros = len(int_part + frac_part) - len((int_part + frac_part).lstrip("0"))
    n = len(int_part) - leading_zeros + (int(exp_text) if exp_text else 0)
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        exp_sign = "+" if exponent >= 0 else "-"
        head = digits[0] + ("." + digits[1:] if k > 1 else "")
        body = f"{head}e{exp_sign}{abs(exponent)}"
    return sign + body


def _utf16_key(key: str) -> bytes:
    # RFC 8785 §3.2.3: property names sort by their UTF-16 code units.
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError as e:
        raise CanonicalizationError(f"property name {key!r} contains a lone surrogate") from e


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            raise CanonicalizationError(
                f"integer {value} is outside the I-JSON range +-(2^53-1); "
                "encode it as a decimal string (SPEC §2.3)"
            )
        out.append(str(value))
    elif isinstance(value, float):
        out.append(format_double(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalizationError(f"property name {key!r} is not a string")
        out.append("{")
        first = True
        for key in sorted(value, key=_utf16_key):
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON value")


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Accepts ``dict`` (string keys), ``list``/``tuple``, ``str``, ``int``, ``float``,
    ``bool`` and ``None``.  No Unicode normalization is applied (RFC 8785 §3.2.5).

    Raises:
        CanonicalizationError: for NaN/Infinity, integers beyond +-(2^53-1),
            lone surrogates, non-string keys or non-JSON types.
    """
    out: list[str] = []
    _encode(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalizationError(
            "string contains a lone surrogate, which UTF-8 cannot encode (RFC 8785 §3.2.2.2)"
        ) from e


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidBundle(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidBundle(f"{name} literal is not JSON (RFC 8259 §6)")


def parse_strict(data: bytes | str, what: str = "document") -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity literals.

    Raises:
        InvalidBundle: naming *what* and the defect.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as e:
        raise InvalidBundle(f"{what}: not valid UTF-8 (byte {e.start})") from e
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except InvalidBundle as e:
        raise InvalidBundle(f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise InvalidBundle(
            f"{what}: invalid JSON: {e.msg} (line {e.lineno} column {e.colno})"
        ) from e
    except ValueError as e:
        # e.g. an integer literal beyond Python's int-parsing digit limit
        raise InvalidBundle(f"{what}: invalid JSON: {e}") from e
    except RecursionError as e:
        raise InvalidBundle(f"{what}: JSON nested too deeply") from e


def loads_canonical(data: bytes, what: str = "document") -> Any:
    """Parse *data* strictly and require it to be exactly its RFC 8785 canonical form.

    Raises:
        InvalidBundle: the bytes are not strict JSON.
        CanonicalizationError: the bytes parse but are not canonical.
    """
    value = parse_strict(data, what)
    try:
        canonical = canonicalize(value)
    except CanonicalizationError as e:
        raise CanonicalizationError(f"{what}: {e}") from None
    if canonical != data:
        raise CanonicalizationError(f"{what}: bytes are not RFC 8785 canonical JSON")
    return value
