"""Typed attribute values (SPEC §2.3): the lossless ``AnyValue`` encoding.

Each value is a JSON object with exactly one member naming its type, after
OTLP/JSON's ``AnyValue``; numbers are never JSON numbers::

    {"stringValue": "5"}   {"intValue": "5"}   {"doubleValue": "5"}
    {"boolValue": true}    {"bytesValue": "AAE="}
    {"arrayValue": [ ... ]}   {"kvlistValue": {"k": { ... }}}   {}  (empty)
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any

from .canonical import format_double
from .errors import InvalidBundle

__all__ = [
    "COMMITTED_VALUE",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "decode_double",
    "decode_value",
    "encode_double",
    "encode_value",
    "is_committed_value",
    "validate_committed_value",
    "validate_value",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_INT_RE = re.compile(r"-?(0|[1-9][0-9]{0,18})\Z")  # at most 19 digits: int64
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
#: The greatest depth of a typed value other than ``{}`` (SPEC §2.3 "Depth"): the
#: producers refuse to certify a value nested deeper, so no bundle fails on one.
MAX_DEPTH = 64

#: The member naming a committed value (SPEC §2.5.1), which stands in a record
#: where a span attribute's typed value would be.
COMMITTED_VALUE = "committedValue"
_COMMITTED_KEYS = frozenset({"digest", "saltDigest"})


def encode_double(value: float) -> str:
    """Return the SPEC §2.3 string form of a double.

    Finite values use the ECMAScript form of RFC 8785 §3.2.2.3; the values JSON
    cannot carry are spelled ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` and ``"-0"``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return "-0"
    return format_double(value)


def decode_double(text: str) -> float:
    """Parse a SPEC §2.3 double string, requiring its one canonical spelling.

    Raises:
        ValueError: *text* is not the canonical spelling of any double.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a double") from None
    if text in ("nan", "inf", "-inf", "+inf") or encode_double(value) != text:
        raise ValueError(f"{text!r} is not the canonical spelling of a double")
    return value


def encode_value(value: Any) -> dict[str, Any]:
    """Encode a Python attribute value (as the OTel SDK holds it) as a typed value.

    ``bool``, ``int`` (int64), ``float``, ``str``, ``bytes``, sequences and string-keyed
    mappings are accepted; ``None`` becomes the empty value.

    Raises:
        ValueError: an integer outside int64 or an unsupported type.
    """
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"integer {value} is outside int64")
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": encode_double(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        # The data (through a memoryview), not what a subclass's __bytes__ says.
        return {"bytesValue": base64.b64encode(bytes(memoryview(value))).decode("ascii")}
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {"kvlistValue": {str(k): encode_value(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": [encode_value(v) for v in value]}
    raise ValueError(f"unsupported attribute value type {type(value).__name__}")


def decode_value(typed: Mapping[str, Any]) -> Any:
    """Decode a validated typed value back to Python (bytes for ``bytesValue``)."""
    if not typed:
        return None
    ((kind, raw),) = typed.items()
    if kind == "stringValue" or kind == "boolValue":
        return raw
    if kind == "intValue":
        return int(raw)
    if kind == "doubleValue":
        return decode_double(raw)
    if kind == "bytesValue":
        return base64.b64decode(raw)
    if kind == "arrayValue":
        return [decode_value(v) for v in raw]
    if kind == "kvlistValue":
        return {k: decode_value(v) for k, v in raw.items()}
    raise ValueError(f"unknown value type {kind!r}")


class _Defect(Exception):
    """A defect of a typed value: its message, and the path from the value checked
    to the defective one, innermost step first (formatted only when raised)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def validate_value(typed: Any, where: str, depth: int = 0) -> None:
    """Check that *typed* is a well-formed SPEC §2.3 typed value.

    Raises:
        InvalidBundle: naming *where* (with the path to the defective element) and
            the defect.
    """
    try:
        _check_value(typed, depth)
    except _Defect as e:
        # The path is built here, on failure only: formatting each element's
        # location while walking took time proportional to the length of *where*
        # (an attribute key, of any length) times the number of elements.
        raise InvalidBundle(f"{where}{''.join(reversed(e.path))}: {e.message}") from None


def _check_value(typed: Any, depth: int) -> None:
    if not isinstance(typed, dict):
        raise _Defect("typed value must be an object")
    if not typed:
        return
    if len(typed) != 1:
        raise _Defect("typed value must have exactly one member")
    if depth > MAX_DEPTH:
        raise _Defect(f"typed value nested deeper than {MAX_DEPTH}")
    ((kind, raw),) = typed.items()
    if kind == "stringValue":
        if not isinstance(raw, str):
            raise _Defect("stringValue must be a string")
    elif kind == "boolValue":
        if not isinstance(raw, bool):
            raise _Defect("boolValue must be true or false")
    elif kind == "intValue":
        if not (isinstance(raw, str) and _INT_RE.match(raw) and raw != "-0"):
            raise _Defect("intValue must be a canonical decimal string")
        if not INT64_MIN <= int(raw) <= INT64_MAX:
            raise _Defect(f"intValue {raw} is outside int64")
    elif kind == "doubleValue":
        if not isinstance(raw, str):
            raise _Defect("doubleValue must be a string (SPEC §2.3)")
        try:
            decode_double(raw)
        except ValueError as e:
            raise _Defect(str(e)) from None
    elif kind == "bytesValue":
        if not isinstance(raw, str):
            raise _Defect("bytesValue must be a base64 string")
        try:
            ok = base64.b64encode(base64.b64decode(raw, validate=True)).decode() == raw
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise _Defect("bytesValue is not canonical padded base64")
    elif kind == "arrayValue":
        if not isinstance(raw, list):
            raise _Defect("arrayValue must be an array")
        for i, item in enumerate(raw):
            try:
                _check_value(item, depth + 1)
            except _Defect as e:
                e.path.append(f"[{i}]")
                raise
    elif kind == "kvlistValue":
        if not isinstance(raw, dict):
            raise _Defect("kvlistValue must be an object")
        for key, item in raw.items():
            try:
                _check_value(item, depth + 1)
            except _Defect as e:
                e.path.append(f".{key}")
                raise
    else:
        raise _Defect(f"unknown value type {kind!r}")


def is_committed_value(typed: Any) -> bool:
    """True when *typed* has the shape of a committed value (SPEC §2.5.1), valid or not."""
    return isinstance(typed, dict) and len(typed) == 1 and COMMITTED_VALUE in typed


def validate_committed_value(typed: Any, where: str) -> None:
    """Check that *typed* is exactly ``{"committedValue": {"digest": H, "saltDigest": H}}``
    with two 64-digit lowercase hex strings (SPEC §2.5.1).

    Raises:
        InvalidBundle: naming *where* and the defect.
    """
    if not is_committed_value(typed):
        raise InvalidBundle(f"{where}: committed value must be an object with one member "
                            f"{COMMITTED_VALUE!r}")
    body = typed[COMMITTED_VALUE]
    if not isinstance(body, dict) or body.keys() != _COMMITTED_KEYS:
        raise InvalidBundle(
            f"{where}.{COMMITTED_VALUE}: must have exactly the members digest and saltDigest"
        )
    for name in sorted(_COMMITTED_KEYS):
        value = body[name]
        if not isinstance(value, str) or _HEX64_RE.match(value) is None:
            raise InvalidBundle(
                f"{where}.{COMMITTED_VALUE}.{name}: must be 64 lowercase hex digits"
            )
