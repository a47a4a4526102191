"""SDK spans to CER record bodies (SPEC §2): one pure function, field by field.

:func:`span_to_body` returns ``{"span": ..., "resource": ..., "scope": ...}``, the part
of a Certified Execution Record that describes the span; sealing adds ``mediaType``,
``seq`` and ``prev``.  :mod:`spanproof.exporter.otlp` builds the same bodies from
OTLP protobuf, so a span reaching spanproof through the SDK exporter or through a
Collector gives byte-identical records.  The mapping, with the OTLP field each member
corresponds to:

* ``span.traceId`` / ``spanId``: ``context.trace_id`` / ``span_id`` as 32 / 16
  lowercase hex digits (OTLP ``trace_id`` / ``span_id``).
* ``span.parentSpanId``: ``parent.span_id`` in hex, ``""`` for a root
  (``parent_span_id``).
* ``span.traceState``: ``context.trace_state.to_header()``, the W3C header form,
  ``""`` when empty (``trace_state``).
* ``span.name``: ``name``.  ``span.kind``: the ``SpanKind`` as ``SPAN_KIND_*``.
* ``span.startTimeUnixNano`` / ``endTimeUnixNano``: ``start_time`` / ``end_time`` as
  decimal strings (``*_time_unix_nano``).
* ``span.status``: ``code`` is the ``StatusCode`` as ``STATUS_CODE_*``, ``message`` the
  ``description`` or ``""``.
* ``span.attributes``: key to typed value (SPEC §2.3); ``droppedAttributesCount``
  from the SDK's bounded container.
* ``span.events[]``: ``timeUnixNano``, ``name``, ``attributes``,
  ``droppedAttributesCount``; ``span.droppedEventsCount`` from the bounded list.
* ``span.links[]``: ``traceId``, ``spanId``, ``traceState`` (header form),
  ``attributes``, ``droppedAttributesCount``; ``span.droppedLinksCount`` from the
  bounded list, plus links that have no valid ids (see :func:`span_to_body`).
* ``resource``: ``attributes``, ``schemaUrl`` (``""`` when unset) and
  ``droppedAttributesCount`` ``"0"`` (the SDK's Resource keeps no count; its OTLP
  encoding sends 0).
* ``scope``: ``name``, ``version``, ``schemaUrl`` (``""`` when absent), and
  ``attributes`` with their dropped count (the scope's attributes exist only in
  newer SDKs; ``{}`` otherwise).

OTLP ``flags`` (span and link) are not recorded (SPEC §2.4).  Strings are taken as
they are: a string holding a lone surrogate cannot be canonicalized, and the sealer
rejects that span (declared in the bundle's completeness) rather than alter it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, StatusCode

from spanproof.verifier.values import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    encode_double,
    encode_value,
)

__all__ = ["resource_to_body", "scope_to_body", "span_to_body", "typed_attributes"]

_KINDS = {
    SpanKind.INTERNAL: "SPAN_KIND_INTERNAL",
    SpanKind.SERVER: "SPAN_KIND_SERVER",
    SpanKind.CLIENT: "SPAN_KIND_CLIENT",
    SpanKind.PRODUCER: "SPAN_KIND_PRODUCER",
    SpanKind.CONSUMER: "SPAN_KIND_CONSUMER",
}
_STATUS = {
    StatusCode.UNSET: "STATUS_CODE_UNSET",
    StatusCode.OK: "STATUS_CODE_OK",
    StatusCode.ERROR: "STATUS_CODE_ERROR",
}
_TRACE_ID_LIMIT = 1 << 128
_SPAN_ID_LIMIT = 1 << 64
_UINT64_LIMIT = 1 << 64

# Resource and scope bodies are the same for every span of a tracer, so they are
# built once per object.  Both SDK types are immutable; the cache holds the object
# itself so its id() cannot be reused while cached.  Bodies are never mutated.
_CACHE_LIMIT = 256
_resource_cache: dict[int, tuple[Resource, dict[str, Any]]] = {}
_scope_cache: dict[int, tuple[InstrumentationScope | None, dict[str, Any]]] = {}


class _NestedTooDeep(ValueError):
    """A value nested deeper than a typed value may be (SPEC §2.3 "Depth")."""


def _nested(values: Any, depth: int) -> None:
    # The items of a container at *depth* have depth + 1; past MAX_DEPTH only the
    # empty value ({}, from None) is valid, so the verifier would fail the bundle.
    if any(item is not None for item in values):
        raise _NestedTooDeep(f"nested deeper than {MAX_DEPTH} levels (SPEC §2.3)")


def _typed(value: Any, depth: int = 0) -> dict[str, Any]:
    """One SDK attribute value as a SPEC §2.3 typed value (exact types first: fast).

    *depth* is the value's depth (0 for an attribute's value)."""
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return {"intValue": str(value)}
        # The SDK accepts Python ints of any size, but a typed intValue is int64
        # (SPEC §2.3).  Keep the exact digits as a string instead of failing the
        # span.  OTLP cannot carry such a value, so the Collector path never sees it.
        return {"stringValue": str(value)}
    if kind is float:
        return {"doubleValue": encode_double(value)}
    if kind is tuple or kind is list:
        if depth >= MAX_DEPTH:
            _nested(value, depth)
        return {"arrayValue": [_typed(item, depth + 1) for item in value]}
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            _nested(value.values(), depth)
        kvlist = {k if type(k) is str else _key(k): _typed(v, depth + 1)
                  for k, v in value.items()}
        if len(kvlist) != len(value):
            # Two keys with one string (a str subclass with its own equality, or 1
            # and "1"): one value would be certified as if it were the only one.
            raise ValueError("two keys of a mapping value name the same string "
                             "(SPEC §2.4.2: duplicate keys reject the span)")
        return {"kvlistValue": kvlist}
    if isinstance(value, bool):
        return {"boolValue": bool(value)}
    if isinstance(value, str):
        return {"stringValue": str.__str__(value)}  # the str data, not a subclass's __str__
    # The value its builtin base holds (SPEC §2.4.2), not what a subclass's
    # __int__ or __float__ says: protobuf, on the Collector's path, reads that.
    if isinstance(value, int):
        return _typed(int.__int__(value))
    if isinstance(value, float):
        return _typed(float.__float__(value))
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            _nested(value, depth)
        return {"arrayValue": [_typed(item, depth + 1) for item in value]}
    # bytes -> bytesValue, None -> empty value; anything else raises ValueError.
    return encode_value(value)


def _key(key: Any) -> str:
    """A kvlist key: a ``str`` subclass (a ``str`` Enum) is its string data, as the
    attribute names and string values are; any other key its ``str()``."""
    return str.__str__(key) if isinstance(key, str) else str(key)


def typed_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """An attribute mapping as the SPEC §2.3 ``attributes`` object (key -> typed value).

    Raises:
        ValueError: a value of a type OpenTelemetry does not allow, or one nested
            deeper than a typed value may be (SPEC §2.3).
    """
    if not attributes:
        return {}
    try:
        return {key: _typed(value) for key, value in attributes.items()}
    except _NestedTooDeep:
        for key, value in attributes.items():  # name the attribute
            try:
                _typed(value)
            except _NestedTooDeep as e:
                raise ValueError(f"attribute {key!r} is {e}") from None
        raise


def _span_attributes(span: ReadableSpan) -> Mapping[str, Any] | None:
    # ``span.attributes`` wraps the SDK's BoundedAttributes in a MappingProxyType
    # whose iteration runs in Python; the dict underneath reads at C speed.  An
    # ended span's attributes no longer change.
    bounded = getattr(span, "_attributes", None)
    raw = getattr(bounded, "_dict", bounded)
    if type(raw) is dict:
        return raw
    return span.attributes


def _text(value: Any, what: str) -> str:
    """A string member of a record: a ``str`` as it is, a ``str`` subclass (a ``str``
    Enum) as its string data, as attribute values are.  The SDK takes a name of any
    type (``start_span(None)``, ``add_event(7)``, ``get_tracer(123)``), and a record's
    names are strings (SPEC §2.1): anything else is refused."""
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise ValueError(f"{what} is a {type(value).__name__}, not a string")


def _optional_text(value: Any, what: str) -> str:
    """:func:`_text`, with ``""`` for a missing (``None``) one."""
    return "" if value is None else _text(value, what)


def _nanos(value: int | None, what: str) -> str:
    # An ended span has both times; a missing one is 0, as an unset OTLP field.
    if value is None:
        return "0"
    if type(value) is not int:
        # The SDK keeps any value; its OTLP exporter takes an int (an IntEnum as
        # its value), never a bool, float or str: int() certified 1500.75 as 1500,
        # "17" as 17 and True as 1, times the span never held.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{what} {value!r} is not an integer number of nanoseconds")
        value = int.__int__(value)
    nanos = value
    if not 0 <= nanos < _UINT64_LIMIT:
        # The SDK takes any int (start_span(start_time=...), end(end_time=...),
        # add_event(timestamp=...)); a record's times are uint64 (SPEC §2.2), as OTLP's.
        raise ValueError(f"{what} {value!r} is outside uint64 nanoseconds (SPEC §2.2)")
    return str(nanos)


def _dropped(container: Any) -> int:
    # BoundedAttributes and BoundedList count what their limits dropped.
    dropped = getattr(container, "dropped", 0)
    return dropped if isinstance(dropped, int) else 0


def resource_to_body(resource: Resource) -> dict[str, Any]:
    """The record's ``resource`` member (cached per Resource object; do not mutate)."""
    cached = _resource_cache.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    body = {
        "attributes": typed_attributes(resource.attributes),
        # The SDK's Resource keeps no dropped count; its OTLP encoding sends 0.
        "droppedAttributesCount": "0",
        "schemaUrl": _optional_text(resource.schema_url, "resource schema URL"),
    }
    if len(_resource_cache) >= _CACHE_LIMIT:
        _resource_cache.clear()
    _resource_cache[id(resource)] = (resource, body)
    return body


def scope_to_body(scope: InstrumentationScope | None) -> dict[str, Any]:
    """The record's ``scope`` member (cached per scope object; do not mutate).

    A span without a scope gets empty strings and no attributes, as OTLP's empty
    ``InstrumentationScope`` message does.
    """
    cached = _scope_cache.get(id(scope))
    if cached is not None and cached[0] is scope:
        return cached[1]
    if scope is None:
        body: dict[str, Any] = {
            "name": "", "version": "", "attributes": {},
            "droppedAttributesCount": "0", "schemaUrl": "",
        }
    else:
        # InstrumentationScope.attributes appeared in SDK 1.23; older scopes have none.
        attributes = getattr(scope, "attributes", None)
        body = {
            "name": _optional_text(scope.name, "scope name"),
            "version": _optional_text(scope.version, "scope version"),
            "attributes": typed_attributes(attributes),
            "droppedAttributesCount": str(_dropped(attributes)),
            "schemaUrl": _optional_text(scope.schema_url, "scope schema URL"),
        }
    if len(_scope_cache) >= _CACHE_LIMIT:
        _scope_cache.clear()
    _scope_cache[id(scope)] = (scope, body)
    return body


def _link(link: Link) -> dict[str, Any] | None:
    ctx = link.context
    if not (0 < ctx.trace_id < _TRACE_ID_LIMIT and 0 < ctx.span_id < _SPAN_ID_LIMIT):
        return None
    return {
        "traceId": f"{ctx.trace_id:032x}",
        "spanId": f"{ctx.span_id:016x}",
        "traceState": ctx.trace_state.to_header() if ctx.trace_state else "",
        "attributes": typed_attributes(link.attributes),
        "droppedAttributesCount": str(link.dropped_attributes),
    }


def span_to_body(span: ReadableSpan) -> dict[str, Any]:
    """Return the record body (``span``, ``resource``, ``scope``) of one ended SDK span.

    The ``resource`` and ``scope`` members are shared between bodies of the same
    tracer; treat the result as immutable.

    Raises:
        ValueError: the span has no valid context (ids zero or too wide), a start,
            end or event time outside uint64, a name (span, event, scope), version,
            schema URL or status description that is not a string, an unknown kind or
            status code, or an attribute value of a type OpenTelemetry does not allow.
    """
    ctx = span.get_span_context()
    if ctx is None or not (0 < ctx.trace_id < _TRACE_ID_LIMIT and 0 < ctx.span_id < _SPAN_ID_LIMIT):
        raise ValueError("span has no valid span context")
    parent = span.parent
    if parent is not None and 0 < parent.span_id < _SPAN_ID_LIMIT:
        parent_id = f"{parent.span_id:016x}"
    else:
        parent_id = ""
    kind = _KINDS.get(span.kind)
    if kind is None:
        raise ValueError(f"unknown span kind {span.kind!r}")
    status = span.status
    code = _STATUS.get(status.status_code)
    if code is None:
        raise ValueError(f"unknown status code {status.status_code!r}")
    events = [
        {
            "timeUnixNano": _nanos(event.timestamp, "event time"),
            "name": _text(event.name, "event name"),
            "attributes": typed_attributes(event.attributes),
            "droppedAttributesCount": str(_dropped(event.attributes)),
        }
        for event in span.events
    ]
    links = []
    unrepresentable = 0
    for link in span.links:
        body = _link(link)
        if body is None:
            # The SDK keeps a link with an invalid context when it has attributes or
            # a trace state; a CER link needs real ids (SPEC §2.1), so it counts as
            # dropped rather than invalidating the record.
            unrepresentable += 1
        else:
            links.append(body)
    return {
        "span": {
            "traceId": f"{ctx.trace_id:032x}",
            "spanId": f"{ctx.span_id:016x}",
            "parentSpanId": parent_id,
            "traceState": ctx.trace_state.to_header() if ctx.trace_state else "",
            "name": _text(span.name, "span name"),
            "kind": kind,
            "startTimeUnixNano": _nanos(span.start_time, "start time"),
            "endTimeUnixNano": _nanos(span.end_time, "end time"),
            "status": {"code": code,
                       "message": _optional_text(status.description, "status description")},
            "attributes": typed_attributes(_span_attributes(span)),
            "droppedAttributesCount": str(span.dropped_attributes),
            "events": events,
            "droppedEventsCount": str(span.dropped_events),
            "links": links,
            "droppedLinksCount": str(span.dropped_links + unrepresentable),
        },
        "resource": resource_to_body(span.resource),
        "scope": scope_to_body(span.instrumentation_scope),
    }
