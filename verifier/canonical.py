"""RFC 8785 (JSON Canonicalization Scheme) encoding and strict JSON parsing.

Pure functions over values and bytes (SPEC §3).  :func:`canonicalize` produces the
canonical bytes of a JSON value; :func:`parse_strict` parses JSON while rejecting
what RFC 8785 and I-JSON (RFC 7493) forbid; :func:`loads_canonical` does both and
insists the input bytes were already canonical.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from .errors import CanonicalizationError, InvalidBundle

__all__ = [
    "canonical_members",
    "canonicalize",
    "format_double",
    "loads_canonical",
    "parse_strict",
]

# RFC 8785 §3.2.2.3: numbers are IEEE 754 doubles; integers outside +-(2^53 - 1)
# cannot be represented exactly and are rejected (I-JSON, RFC 7493 §2.2).  SPEC §3.1
# item 5 makes "integer" a matter of the text: a number written without fraction or
# exponent, which is exactly what the standard library's parser returns as an int
# (anything else becomes a float), so ``1e+21`` passes where ``10**20`` written out
# does not.
_MAX_SAFE_INTEGER = 2**53 - 1

_encode_string = json.encoder.encode_basestring
_T = TypeVar("_T")


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
        # str.encode, not key.encode: a str subclass's own encode must not order it.
        return str.encode(key, "utf-16-be")
    except UnicodeEncodeError as e:
        raise CanonicalizationError(f"property name {key!r} contains a lone surrogate") from e


def _encode(value: Any, write: Callable[[str], object]) -> None:
    if isinstance(value, str):
        write(_encode_string(value))
    elif value is True:
        write("true")
    elif value is False:
        write("false")
    elif value is None:
        write("null")
    elif isinstance(value, int):
        if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            raise CanonicalizationError(
                f"integer {value} is outside the I-JSON range +-(2^53-1) "
                "(SPEC §3.1 item 5; v1 writes such integers as decimal strings, §2.2)"
            )
        write(str(value))
    elif isinstance(value, float):
        write(format_double(value))
    elif type(value) is not list and isinstance(value, Mapping):  # (an ABC's slow check)
        exact = True
        for key in value:
            if type(key) is not str:
                if not isinstance(key, str):
                    raise CanonicalizationError(f"property name {key!r} is not a string")
                exact = False
        if not exact and len({str.__str__(key) for key in value}) != len(value):
            # Distinct str subclass keys (their own __eq__ or __hash__) with the same
            # string data: the JSON would hold two members of one name, which no
            # strict parser accepts (SPEC §3.2).
            raise CanonicalizationError("two property names hold the same string")
        write("{")
        first = True
        for key in sorted(value, key=_utf16_key):
            if not first:
                write(",")
            first = False
            write(_encode_string(key))
            write(":")
            _encode(value[key], write)
        write("}")
    elif type(value) is list or (isinstance(value, Sequence)
                                 and not isinstance(value, (bytes, bytearray))):
        write("[")
        for i, item in enumerate(value):
            if i:
                write(",")
            _encode(item, write)
        write("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON value")


def _on_a_new_stack(function: Callable[[], _T]) -> _T:
    """*function*'s result, computed in a new thread, which starts with an empty
    stack: what recursion ran out of in a deep caller's stack (the standard
    library's parser, the exact encoder) gets the same answer as from a shallow one
    (SPEC §3.3).  Its exception is raised here."""
    results: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(function())
        except BaseException as e:  # raised in the caller's thread below
            errors.append(e)

    thread = threading.Thread(target=run, name="spanproof-new-stack", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


# --- fast path -------------------------------------------------------------------
#
# v1 documents hold no numbers (SPEC §2.2), and for a tree of dicts, lists, tuples,
# strings, booleans and None, orjson with sorted keys writes exactly the RFC 8785
# text: no whitespace (§3.2.1), literals spelled ``true``/``false``/``null``, and
# strings escaped as §3.2.2.2 prescribes (``\b \t \n \f \r \" \\``, other controls
# as lowercase ``\u00xx``, everything else, DEL and U+2028/2029 included, as UTF-8;
# tests/verifier/test_canonical_fast.py compares every code point with the exact
# encoder).  orjson refuses keys that are not strings, lone surrogates, nesting
# deeper than 255 levels, and (through ``default``) every type it does not encode
# natively; subclasses of str, int, dict and list, dataclasses and datetimes are
# passed to ``default`` too.  Where its output can still differ, a guard sends the
# value to the exact encoder:
#
# * numbers: orjson spells doubles as Python does, not as ECMAScript (§3.2.2.3),
#   writes NaN and the infinities as ``null``, and accepts 64-bit integers.  A
#   number token is a document's first character or follows ``":`` (an object
#   member), ``[`` (a first element), or ``,`` after a string, object, array,
#   ``true``/``false`` or ``null`` (a later element); _NUMBER_* find every such
#   place, and any ``null`` at all takes the exact encoder, which raises for NaN;
# * member order: orjson sorts by code point, RFC 8785 §3.2.3 by UTF-16 code unit.
#   The orders agree unless a key holds a character above U+FFFF (its surrogates
#   sort below U+E000-U+FFFF); _NON_BMP_STRING looks for one only when the UTF-8 bytes
#   hold a four-byte sequence at all;
# * enum members and ``uuid.UUID`` values, which orjson encodes natively as their
#   values where the exact encoder refuses them, are not JSON types; canonicalize's
#   callers never pass them (parsed JSON and the normalizers' typed values hold
#   none).
#
# The patterns may also match text inside a string ("see [1]", "a null value");
# that only costs the exact encoder.  tests/verifier/test_canonical_fast.py checks
# the fast path against the exact encoder and the ``rfc8785`` package with
# generated span-shaped values.


class _NotFast(Exception):
    """A value the fast path leaves to the exact encoder."""


def _refuse(value: object) -> Any:
    raise _NotFast


_FAST_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
_NUMBER_AFTER_COLON = re.compile(rb'":[-0-9]')
_NUMBER_AFTER_COMMA = re.compile(rb',[-0-9](?<=[]"}el],.)')
_NUMBER_FIRST_IN_ARRAY = re.compile(rb"\[[-0-9]")
# From the lead byte of a four-byte sequence (never part of an escape) to the closing
# quote of its string (an escape is a backslash and one character), and the ``:``
# after it when the string is a key.  A match always ends at its string's closing
# quote, and the next search starts after it, so each byte is scanned once: a search
# for the key alone restarted at every such lead byte of a value and scanned on to
# the string's end each time, quadratic in the string's length.
_NON_BMP_STRING = re.compile(rb'[\xf0-\xf4][^"\\]*(?:\\.[^"\\]*)*"(:?)')


def _canonicalize_fast(value: Any) -> bytes | None:
    """The canonical bytes of *value*, or None when a guard above does not hold."""
    try:
        data = orjson.dumps(value, default=_refuse, option=_FAST_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError, also for what _refuse refused
        return None
    if (
        data[0] not in b'{["'
        or b"null" in data
        or _NUMBER_AFTER_COLON.search(data)
        or _NUMBER_AFTER_COMMA.search(data)
        or _NUMBER_FIRST_IN_ARRAY.search(data)
    ):
        return None
    if (
        not data.isascii()
        and (b"\xf0" in data or b"\xf1" in data or b"\xf2" in data or b"\xf3" in data
             or b"\xf4" in data)  # the lead bytes of four-byte UTF-8 sequences
        and any(string[1] for string in _NON_BMP_STRING.finditer(data))
    ):
        return None
    return data


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Accepts ``dict`` (string keys), ``list``/``tuple``, ``str``, ``int``, ``float``,
    ``bool`` and ``None``.  No Unicode normalization is applied (RFC 8785 §3.2.5).

    Raises:
        CanonicalizationError: for NaN/Infinity, integers beyond +-(2^53-1),
            lone surrogates, non-string keys or non-JSON types (except enum
            members and ``uuid.UUID`` values, which the fast path encodes as their
            values; see the comment above ``_canonicalize_fast``).
    """
    data = _canonicalize_fast(value)
    if data is not None:
        return data
    return _canonicalize_exact(value)


_LONE_SURROGATE = (
    "string contains a lone surrogate, which UTF-8 cannot encode (RFC 8785 §3.2.2.2)"
)


def _canonicalize_exact(value: Any) -> bytes:
    """The exact encoder: a direct transcription of RFC 8785 §3.2."""
    # Written to a buffer, not joined from a list of pieces: a document of millions
    # of numbers would hold a string object for each.
    out = io.StringIO()
    try:
        _encode(value, out.write)
    except RecursionError:  # the caller's stack may be what ran out
        out = io.StringIO()
        _on_a_new_stack(lambda: _encode(value, out.write))
    try:
        return out.getvalue().encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalizationError(_LONE_SURROGATE) from e


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidBundle(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidBundle(f"{name} literal is not JSON (RFC 8259 §6)")


def _parse_int(literal: str) -> int:
    """An integer literal's value; refused, past the number of digits Python converts
    (``sys.get_int_max_str_digits()``, 4300 by default), as too long.  Such an integer
    is far beyond the 2^53-1 of SPEC §3.1 item 5 wherever a number may occur."""
    try:
        return int(literal)
    except ValueError:
        raise InvalidBundle(
            f"integer literal too long (over {sys.get_int_max_str_digits()} digits)"
        ) from None


# A ``\uXXXX`` escape of a surrogate code point (U+D800-U+DFFF): the only way a JSON
# text in valid UTF-8 can spell a lone surrogate.  Paired ones match too; the parsed
# value is then checked string by string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


_TOO_DEEP = "JSON nested too deeply"

#: parse_strict refuses JSON nested deeper than this, the outermost array or object
#: counting as level 1 (SPEC §3.3): the same verdict whatever the caller's stack
#: depth, and within what the recursive exact encoder and the standard library's
#: parser handle from any caller.  For the bundle header, whose ``receipts`` member
#: may hold any JSON value, SPEC §3.3 fixes this limit for every verifier.
MAX_NESTING = 512


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than *limit* levels in *value*.

    Level by level, without recursion, holding one reference per array or object of
    a level: a line of millions of tiny arrays costs no more than a list of them.
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1  # of the arrays and objects in level
    while level:
        if depth > limit:
            return True
        deeper: list[Any] = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, (dict, list)):
                    deeper.append(child)
        level = deeper
        depth += 1
    return False


def _lone_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a string (or key) with a lone surrogate.

    Iterative: a value nested as deep as the parser allows must not exhaust the
    stack here.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_strict(data: bytes | str, what: str = "document") -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity literals,
    no ``\\u`` escape that leaves a lone surrogate (SPEC §3.2), nested at most
    :data:`MAX_NESTING` levels (SPEC §3.3).

    Raises:
        InvalidBundle: naming *what* and the defect; a lone surrogate is the
            :class:`CanonicalizationError` subclass, as such a string has no
            canonical form.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as e:
        raise InvalidBundle(f"{what}: not valid UTF-8 (byte {e.start})") from e

    def load() -> Any:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant,
            parse_int=_parse_int,
        )

    try:
        try:
            value = load()
        except RecursionError:  # the caller's stack may be what ran out
            value = _on_a_new_stack(load)
    except InvalidBundle as e:
        raise InvalidBundle(f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise InvalidBundle(
            f"{what}: invalid JSON: {e.msg} (line {e.lineno} column {e.colno})"
        ) from e
    except ValueError as e:  # defensive: the digit limit is _parse_int's InvalidBundle
        raise InvalidBundle(f"{what}: invalid JSON: {e}") from e
    except RecursionError as e:
        raise InvalidBundle(f"{what}: {_TOO_DEEP}") from e
    if _nested_deeper_than(value, MAX_NESTING):
        raise InvalidBundle(f"{what}: {_TOO_DEEP}")
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
        raise CanonicalizationError(f"{what}: {_LONE_SURROGATE}")
    return value


def loads_canonical(data: bytes, what: str = "document") -> Any:
    """Parse *data* strictly and require it to be exactly its RFC 8785 canonical form.

    Raises:
        InvalidBundle: the bytes are not strict JSON.
        CanonicalizationError: the bytes parse but are not canonical.
    """
    # Fast path (the verifier runs this for every record): canonical bytes have
    # strictly sorted, hence unique, keys and no NaN or Infinity, so a plain parse
    # that re-encodes to exactly *data* has found the value the strict parse would.
    # Anything else takes the strict path below, which names the defect.
    try:
        value = orjson.loads(data)
        if _canonicalize_fast(value) == data:
            return value
    except (ValueError, RecursionError):
        pass
    value = None  # freed before the strict parse builds its own copy
    value = parse_strict(data, what)
    try:
        canonical = canonicalize(value)
    except CanonicalizationError as e:
        raise CanonicalizationError(f"{what}: {e}") from None
    if canonical != data:
        raise CanonicalizationError(f"{what}: bytes are not RFC 8785 canonical JSON")
    return value


# The canonical form of a string (RFC 8785 §3.2.2.2, as ``_encode_string`` writes it):
# any character but a quote, a backslash or a control character as itself; those
# three as the two-character escapes, or ``\u00xx`` in lower case for the control
# characters that have none.  A string spelled any other way is not canonical.
# A repeated group (one escape and the plain run after it) makes the regular
# expression engine keep ~180 bytes of state per repeat in case it must backtrack:
# a string of escapes took ~90 times its size.  Possessive repeats (Python 3.11)
# keep none; before 3.11 the string is matched one escape at a time.
_PLAIN_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_ESCAPE = re.compile(rb'\\(?:["\\bfnrt]|u00(?:0[0-7]|0b|0e|0f|1[0-9a-f]))')
_POSSESSIVE_STRING = re.compile(
    rb'"[^"\\\x00-\x1f]*+'
    rb'(?:\\(?:["\\bfnrt]|u00(?:0[0-7]|0b|0e|0f|1[0-9a-f]))[^"\\\x00-\x1f]*+)*+"'
) if sys.version_info >= (3, 11) else None


def _string_end_stepwise(data: bytes, pos: int) -> int:
    """Where the canonical string starting at *pos* (its quote) ends, or -1 when it
    is not one: its plain runs and escapes matched one at a time."""
    end = _PLAIN_RUN.match(data, pos + 1).end()  # type: ignore[union-attr]  # matches ""
    while data[end:end + 1] == b"\\":
        escape = _ESCAPE.match(data, end)
        if escape is None:
            return -1
        end = _PLAIN_RUN.match(data, escape.end()).end()  # type: ignore[union-attr]
    return end + 1 if data[end:end + 1] == b'"' else -1


def _string_end(data: bytes, pos: int) -> int:
    """Where the canonical string starting at *pos* (its quote) ends, or -1."""
    if _POSSESSIVE_STRING is None:
        return _string_end_stepwise(data, pos)
    match = _POSSESSIVE_STRING.match(data, pos)
    return -1 if match is None else match.end()


_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
# An integer as canonicalize writes one of at most 15 digits, always within
# +-(2^53-1): no "-0", no leading zero, nothing of a longer number after it.
_SHORT_INTEGER = re.compile(rb"(?:0|-?[1-9][0-9]{0,14})(?![-+.eE0-9])")
_UTF8_CHUNK = 1 << 20
# What is expected next, in canonical_members.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _AFTER_VALUE = range(5)
# An array and an object just opened, as canonical_members stacks them (made once).
_OPEN_ARRAY: tuple[bool, bytes | None] = (False, None)
_OPEN_OBJECT: tuple[bool, bytes | None] = (True, None)


def _canonical_number(token: bytes) -> bool:
    """Whether a JSON number *token* is in the form `canonicalize` writes its value."""
    if b"." in token or b"e" in token or b"E" in token:
        value = float(token)
        if b"e" not in token and token[-2:] != b".0" and repr(value).encode() == token:
            # Shortest digits, in fixed notation (1e-4 <= |value| < 1e16, where
            # ECMAScript writes it the same way), not an integral value's ".0": the
            # common case, without format_double's work.
            return True
        return math.isfinite(value) and format_double(value).encode() == token
    # Written as an integer: the value as written, within +-(2^53-1) (SPEC §3.1).
    return len(token) <= 17 and abs(int(token)) <= _MAX_SAFE_INTEGER and (
        str(int(token)).encode() == token)


def canonical_members(data: bytes, what: str = "document") -> list[tuple[str, int, int, int]]:
    """Check that *data* is the RFC 8785 canonical form of a JSON object, as
    :func:`loads_canonical` would accept it, without building its values; return
    each member's name, where its value's bytes start and end in *data*, and how
    many JSON values that value holds (itself included).

    For a document too large to parse whole: a parsed line of tiny JSON values takes
    ~30 times its size, this a few times its members' names at most.  It accepts
    exactly what :func:`loads_canonical` accepts (its messages are less specific).

    Raises:
        InvalidBundle: not UTF-8, or nested deeper than :data:`MAX_NESTING` levels.
        CanonicalizationError: anything else that keeps *data* from being the
            canonical form of a JSON object (not JSON, not an object, or not
            canonical), naming the byte where it was found.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, len(data), _UTF8_CHUNK):
        held = len(decoder.getstate()[0])  # a sequence the last chunk cut, held back
        try:
            decoder.decode(view[start:start + _UTF8_CHUNK],
                           final=start + _UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as e:
            raise InvalidBundle(
                f"{what}: not valid UTF-8 (byte {start - held + e.start})") from None

    def refused(at: int) -> CanonicalizationError:
        return CanonicalizationError(
            f"{what}: bytes are not the RFC 8785 canonical form of a JSON object "
            f"(byte {at})")

    if not data.startswith(b"{"):
        raise refused(0)
    # Per open array or object: whether it is an object, and its last member name's
    # UTF-16 code units (RFC 8785 §3.2.3 orders names by them; none yet: None).
    stack: list[tuple[bool, bytes | None]] = [_OPEN_OBJECT]
    members: list[tuple[str, int, int, int]] = []
    name, start, values = "", 0, 0  # the top-level member being read
    state, pos, end = _KEY_OR_CLOSE, 1, len(data)
    while stack:
        if pos >= end:
            raise refused(pos)
        byte = data[pos]
        if state == _AFTER_VALUE:
            is_object = stack[-1][0]
            if len(stack) == 1:
                members.append((name, start, pos, values))
            if byte == 0x2C:  # ,
                state = _KEY if is_object else _VALUE
            elif byte == (0x7D if is_object else 0x5D):  # } or ]
                stack.pop()
            else:
                raise refused(pos)
            pos += 1
        elif state in (_KEY, _KEY_OR_CLOSE):
            if byte == 0x7D and state == _KEY_OR_CLOSE:  # {}
                stack.pop()
                pos += 1
                state = _AFTER_VALUE
                continue
            after = _string_end(data, pos)
            if after < 0 or data[after:after + 1] != b":":
                raise refused(pos)
            token = data[pos:after]
            # Valid UTF-8 (checked above); without escapes, its bytes are the name's.
            key = json.loads(token) if b"\\" in token else token[1:-1].decode()
            order = str.encode(key, "utf-16-be")
            previous = stack[-1][1]
            if previous is not None and order <= previous:  # out of order, or repeated
                raise refused(pos)
            stack[-1] = (True, order)
            pos = after + 1
            if len(stack) == 1:
                name, start, values = key, pos, 0
            state = _VALUE
        else:
            if byte == 0x5D and state == _VALUE_OR_CLOSE:  # []
                stack.pop()
                pos += 1
                state = _AFTER_VALUE
                continue
            values += 1
            if byte == 0x7B or byte == 0x5B:  # { or [
                if len(stack) >= MAX_NESTING:
                    raise InvalidBundle(f"{what}: {_TOO_DEEP}")
                stack.append(_OPEN_OBJECT if byte == 0x7B else _OPEN_ARRAY)
                pos += 1
                state = _KEY_OR_CLOSE if byte == 0x7B else _VALUE_OR_CLOSE
                continue
            if byte == 0x22:  # "
                after = _string_end(data, pos)
                if after < 0:
                    raise refused(pos)
                pos = after
            elif byte == 0x2D or 0x30 <= byte <= 0x39:  # - or a digit
                match = _SHORT_INTEGER.match(data, pos)
                if match is None:
                    match = _NUMBER.match(data, pos)
                    if match is None or not _canonical_number(match[0]):
                        raise refused(pos)
                pos = match.end()
            elif data.startswith((b"true", b"null"), pos):
                pos += 4
            elif data.startswith(b"false", pos):
                pos += 5
            else:
                raise refused(pos)
            state = _AFTER_VALUE
    if pos != end:
        raise refused(pos)
    return members
