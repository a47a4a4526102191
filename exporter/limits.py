"""The producer's per-value size limit (``OTEL_EXPORTER_SPANPROOF_MAX_VALUE_BYTES``).

A span carrying an attribute value larger than the limit is not certified: it is
declared in its trace's bundle as rejected (SPEC §2.4, §5.3), so the verifier reports
the bundle INCOMPLETE instead of the producer holding, hashing and signing an
unbounded value.  Commit such values instead (``REDACT_ATTRIBUTES``) only if they fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["OversizedValue", "check_value_sizes", "fits_by_json_length", "value_size"]


class OversizedValue(ValueError):
    """An attribute value of a span is larger than the configured limit."""


def value_size(typed: Mapping[str, Any]) -> int:
    """The size of a typed value (SPEC §2.3) in bytes: the UTF-8 length of its
    strings, the decoded length of its bytes, summed over arrays and kvlists
    (their keys included); 8 for any other scalar."""
    if "stringValue" in typed:
        text: str = typed["stringValue"]
        return len(text.encode("utf-8", "surrogatepass"))
    if "bytesValue" in typed:
        encoded: str = typed["bytesValue"]  # canonical padded base64 (SPEC §2.3)
        return len(encoded) * 3 // 4 - encoded.count("=", -2)
    if "arrayValue" in typed:
        return sum(value_size(v) for v in typed["arrayValue"])
    if "kvlistValue" in typed:
        return sum(len(k.encode("utf-8", "surrogatepass")) + value_size(v)
                   for k, v in typed["kvlistValue"].items())
    return 8


def fits_by_json_length(json_length: int, limit: int) -> bool:
    """Whether a record body whose JSON is *json_length* bytes long (UTF-8, as
    orjson or ``json.dumps(ensure_ascii=False)`` write it) holds no value above
    *limit* bytes, known without measuring its values: when False, measure them
    (:func:`check_value_sizes`).

    No typed value's :func:`value_size` exceeds four times the length of its own
    JSON: a string's UTF-8 length and a bytes value's decoded length are at most
    their JSON's; any other scalar counts 8, and its JSON is at least ``{}``, 2
    bytes; an array's or kvlist's size is the sum over its elements (with their
    keys), each within the bound, and its JSON holds all of theirs.  Each value's
    JSON is part of the body's, so a body of at most ``limit / 4`` bytes of JSON
    holds none above the limit.
    """
    return 4 * json_length <= limit


# Resource and scope bodies are shared by the spans of a tracer (normalize caches
# them per object): each is measured once per limit, not once per span.  Keyed by
# id and holding the body, so an id is not reused while it is remembered.
_measured_shared: dict[tuple[int, int], Mapping[str, Any]] = {}
_SHARED_LIMIT = 256


def check_value_sizes(body: Mapping[str, Any], limit: int) -> None:
    """Raise :class:`OversizedValue` naming the first attribute of the record body
    whose value is larger than *limit* bytes.  Values that cannot be that large
    (fewer characters than ``limit / 4``) are not measured."""
    span = body["span"]
    _check(span["attributes"], limit, "span", None)
    for i, event in enumerate(span["events"]):
        _check(event["attributes"], limit, "event", i)
    for i, link in enumerate(span["links"]):
        _check(link["attributes"], limit, "link", i)
    for where in ("resource", "scope"):
        shared = body[where]
        key = (id(shared), limit)
        if _measured_shared.get(key) is shared:
            continue
        _check(shared["attributes"], limit, where, None)
        if len(_measured_shared) >= _SHARED_LIMIT:
            _measured_shared.clear()
        _measured_shared[key] = shared


def _check(attributes: Mapping[str, Any], limit: int, where: str, index: int | None) -> None:
    quick = limit // 4
    for key, typed in attributes.items():
        text = typed.get("stringValue")
        if isinstance(text, str) and len(text) <= quick:
            continue
        size = value_size(typed)
        if size > limit:
            place = where if index is None else f"{where} {index}"
            raise OversizedValue(
                f"{place} attribute {key!r} is {size} bytes, above the limit of {limit} "
                "(OTEL_EXPORTER_SPANPROOF_MAX_VALUE_BYTES)"
            )
