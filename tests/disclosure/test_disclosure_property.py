"""Property: for every kind of typed value (SPEC §2.3), committing it and disclosing it
round-trips, and a disclosure of any other value of the attribute fails; and attribute
patterns select the same keys as their regular-expression reading."""

from __future__ import annotations

import json
import re
from typing import Any

from disclosure_support import SPAN_A, TRACE, span_body
from hypothesis import given, settings
from hypothesis import strategies as st

from spanproof.exporter.disclosure import AttributeMatcher, commit_body
from spanproof.exporter.sealing import build_record
from spanproof.verifier.canonical import canonicalize, loads_canonical
from spanproof.verifier.disclosure import Disclosure, DisclosureFile, check_disclosure
from spanproof.verifier.records import validate_record
from spanproof.verifier.values import encode_value

# Strings JSON can carry (no lone surrogates: those spans are rejected, SPEC §2.4).
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.binary(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(_text, inner, max_size=4),
    ),
    max_leaves=12,
)


def _exact_key(key: str) -> bool:
    """A key that, used as a pattern, selects only itself (and is not the other key)."""
    return key not in ("", "kept") and "*" not in key and "?" not in key


def _typed(value: Any) -> dict[str, Any]:
    return encode_value(value)


@settings(max_examples=300, deadline=None)
@given(value=_values, key=_text.filter(_exact_key), salt=st.binary(min_size=16, max_size=16))
def test_commit_then_disclose_round_trips(value: Any, key: str, salt: bytes) -> None:
    typed = _typed(value)
    body = span_body(SPAN_A, {})
    body["span"]["attributes"] = {key: typed, "kept": {"stringValue": "clear"}}
    committed, (disclosure,) = commit_body(body, AttributeMatcher((key,)), salt=lambda: salt)
    record = build_record(committed, 0, "sha256:" + "0" * 64)
    raw = canonicalize(record)
    validate_record(loads_canonical(raw))
    assert committed["span"]["attributes"]["kept"] == {"stringValue": "clear"}
    # The disclosure survives its file format unchanged and opens the commitment.
    (parsed,) = DisclosureFile.from_bytes(DisclosureFile((disclosure,)).to_bytes()).disclosures
    assert parsed == disclosure
    result = check_disclosure(parsed, [record])
    assert result.ok, result.message
    assert json.dumps(result.value, sort_keys=True) == json.dumps(typed, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(value=_values, other=_values, salt=st.binary(min_size=16, max_size=16))
def test_any_other_value_fails(value: Any, other: Any, salt: bytes) -> None:
    typed, typed_other = _typed(value), _typed(other)
    if canonicalize(typed) == canonicalize(typed_other):
        return
    body = span_body(SPAN_A, {})
    body["span"]["attributes"] = {"k": typed}
    committed, _ = commit_body(body, AttributeMatcher(("k",)), salt=lambda: salt)
    record = build_record(committed, 0, "sha256:" + "0" * 64)
    forged = Disclosure(TRACE, SPAN_A, "k", salt, typed_other)
    result = check_disclosure(forged, [record])
    assert not result.ok
    assert ("value does not match" in result.message) or ("type mismatch" in result.message)


# ----------------------------------------------------------------------- matching

# Few characters, mostly "a" and "b", so that segments repeat and overlap in keys;
# "*", "?" and "[" appear in keys too, where a pattern's "*" and "?" are not literal
# and its "[" is.
_key_chars = st.one_of(st.sampled_from("ab"), st.sampled_from(".[\n*?é"))
_patterns = st.text(st.one_of(_key_chars, st.just("*")), min_size=1, max_size=10)


def _glob_fullmatch(pattern: str, key: str) -> bool:
    """The glob reading the matcher keeps: "*" is ".*", "?" is ".", all else literal."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch)
                    for ch in pattern)
    return re.fullmatch(regex, key, re.DOTALL) is not None


@st.composite
def _keys_for(draw: st.DrawFn, patterns: list[str]) -> str:
    """A random key, or one of the patterns with its wildcards filled in, or that with
    one character left out (a near miss)."""
    if draw(st.booleans()):
        return draw(st.text(_key_chars, max_size=14))
    pattern = draw(st.sampled_from(patterns))
    key = "".join(draw(st.text(_key_chars, max_size=3)) if ch == "*"
                  else draw(_key_chars) if ch == "?" else ch for ch in pattern)
    if key and draw(st.booleans()):
        gap = draw(st.integers(0, len(key) - 1))
        key = key[:gap] + key[gap + 1:]
    return key


@settings(max_examples=2000, deadline=None)
@given(data=st.data(), patterns=st.lists(_patterns, min_size=1, max_size=3))
def test_matcher_agrees_with_glob_regex(data: st.DataObject, patterns: list[str]) -> None:
    key = data.draw(_keys_for(patterns))
    expected = any(_glob_fullmatch(p, key) for p in patterns)
    assert AttributeMatcher(tuple(patterns)).matches(key) is expected
