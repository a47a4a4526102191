"""OTLP protobuf spans to CER record bodies (SPEC §2.4), for the Collector path.

Produces exactly the bodies :mod:`spanproof.exporter.normalize` produces from SDK
spans, so a span certified through a Collector and through the SDK exporter gives
byte-identical records.  Pure: protobuf messages in, dicts out.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from spanproof.verifier.values import MAX_DEPTH, encode_double

__all__ = [
    "NO_SPAN_ID",
    "UNDECODABLE_SCOPE",
    "MalformedSpan",
    "iter_request_spans",
    "otlp_span_to_body",
    "resource_body",
    "scope_body",
]

_KINDS = {
    0: "SPAN_KIND_UNSPECIFIED",
    1: "SPAN_KIND_INTERNAL",
    2: "SPAN_KIND_SERVER",
    3: "SPAN_KIND_CLIENT",
    4: "SPAN_KIND_PRODUCER",
    5: "SPAN_KIND_CONSUMER",
}
_STATUS = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}


#: The invalid span id: as a parent span id, no parent (SPEC §2.4.1).
NO_SPAN_ID = bytes(8)


class MalformedSpan(ValueError):
    """An OTLP span cannot be certified (bad ids, duplicate keys, unknown enum)."""


#: The name of the scope under which a request decoded piece by piece holds the spans
#: it could not decode (its ``version``: why), so that exactly those are rejected; see
#: :func:`spanproof.exporter.otlp_server.parse_otlp_protobuf`, and
#: :func:`~spanproof.exporter.otlp_server.parse_otlp_json` for spans holding a lone
#: surrogate.  A sender may name a scope so (a NUL is a valid character): only its own
#: spans under it are rejected, with at most :data:`_MAX_REASON` characters of its
#: version as the reason.
UNDECODABLE_SCOPE = "\x00spanproof: not decodable"
_MAX_REASON = 300


class _Defect(Exception):
    """A defect of an attribute value: its message, and the keys from the attributes
    converted to the defective value, innermost first (formatted only when raised)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.keys: list[str] = []


def _value(v: common_pb2.AnyValue, depth: int) -> dict[str, Any]:
    kind = v.WhichOneof("value")
    if kind is None:
        return {}  # valid at any depth (SPEC §2.3), as None on the SDK path
    if depth > MAX_DEPTH:
        raise _Defect(f"value nested deeper than {MAX_DEPTH}")
    if kind == "string_value":
        return {"stringValue": v.string_value}
    if kind == "bool_value":
        return {"boolValue": v.bool_value}
    if kind == "int_value":
        return {"intValue": str(v.int_value)}
    if kind == "double_value":
        return {"doubleValue": encode_double(v.double_value)}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(v.bytes_value).decode("ascii")}
    if kind == "array_value":
        return {"arrayValue": [_value(x, depth + 1) for x in v.array_value.values]}
    if kind == "kvlist_value":
        return {"kvlistValue": _values(v.kvlist_value.values, depth + 1)}
    raise _Defect(f"unsupported value type {kind}")


def _values(kvs: Any, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        key = kv.key
        if key in out:
            raise _Defect(f"duplicate attribute key {_shown_key(key)}")
        value = kv.value
        kind = value.WhichOneof("value")
        # Strings and integers first, the most attributes of most spans.
        if kind == "string_value" and depth <= MAX_DEPTH:
            out[key] = {"stringValue": value.string_value}
        elif kind == "int_value" and depth <= MAX_DEPTH:
            out[key] = {"intValue": str(value.int_value)}
        else:
            try:
                out[key] = _value(value, depth)
            except _Defect as e:
                e.keys.append(key)
                raise
    return out


def _attributes(kvs: Any, where: str) -> dict[str, Any]:
    """The typed values of the attributes *kvs* (SPEC §2.3).

    Raises:
        MalformedSpan: naming *where*, the keys down to the defective value, and the
            defect.
    """
    try:
        return _values(kvs, 0)
    except _Defect as e:
        # The location is built here, on failure only: built at every nested value,
        # it took time proportional to the length of a key (of any length) times the
        # number of values under it, with every other request waiting.
        keys = "".join(f"[{_shown_key(key)}]" for key in reversed(e.keys))
        raise MalformedSpan(f"{where}{keys}: {e.message}") from None


def _shown_key(key: str) -> str:
    """*key* as an error message shows it: quoted, and cut when long."""
    if len(key) <= _SHOWN_KEY:
        return repr(key)
    return f"{key[:_SHOWN_KEY]!r}... ({len(key)} characters)"


_SHOWN_KEY = 100


def _trace_id(raw: bytes, where: str) -> str:
    if len(raw) != 16 or raw == bytes(16):
        raise MalformedSpan(f"{where}: trace id must be 16 bytes, not all zero")
    return raw.hex()


def _span_id(raw: bytes, where: str) -> str:
    if len(raw) != 8 or raw == bytes(8):
        raise MalformedSpan(f"{where}: span id must be 8 bytes, not all zero")
    return raw.hex()


def resource_body(resource: resource_pb2.Resource, schema_url: str) -> dict[str, Any]:
    """The record's ``resource`` member from an OTLP Resource and its schema URL."""
    return {
        "attributes": _attributes(resource.attributes, "resource.attributes"),
        "droppedAttributesCount": str(resource.dropped_attributes_count),
        "schemaUrl": schema_url,
    }


def scope_body(scope: common_pb2.InstrumentationScope, schema_url: str) -> dict[str, Any]:
    """The record's ``scope`` member from an OTLP InstrumentationScope and schema URL."""
    return {
        "name": scope.name,
        "version": scope.version,
        "attributes": _attributes(scope.attributes, "scope.attributes"),
        "droppedAttributesCount": str(scope.dropped_attributes_count),
        "schemaUrl": schema_url,
    }


def otlp_span_to_body(
    span: trace_pb2.Span, resource: dict[str, Any], scope: dict[str, Any]
) -> dict[str, Any]:
    """Return the record body (``span``, ``resource``, ``scope``) of one OTLP span.

    The OTLP ``flags`` fields are not recorded (SPEC §2.4).

    Raises:
        MalformedSpan: invalid ids, duplicate attribute keys, unknown kind or status.
    """
    where = "span"
    trace_id = _trace_id(span.trace_id, where)
    span_id = _span_id(span.span_id, where)
    raw_parent = span.parent_span_id
    # Empty, or the invalid span id 0 (OpenTelemetry's encoders write a parent
    # context whose span id is 0 as eight zero bytes, which the Collector reads as no
    # parent): no parent, as on the SDK path (SPEC §2.4.1, §2.4.2).
    parent = ("" if not raw_parent or raw_parent == NO_SPAN_ID
              else _span_id(raw_parent, f"{where}.parent"))
    kind = _KINDS.get(span.kind)
    if kind is None:
        raise MalformedSpan(f"{where}.kind: unknown span kind {span.kind}")
    code = _STATUS.get(span.status.code)
    if code is None:
        raise MalformedSpan(f"{where}.status.code: unknown status code {span.status.code}")
    events = [
        {
            "timeUnixNano": str(e.time_unix_nano),
            "name": e.name,
            "attributes": _attributes(e.attributes, f"span {span_id} event"),
            "droppedAttributesCount": str(e.dropped_attributes_count),
        }
        for e in span.events
    ]
    links = []
    invalid_links = 0
    for ln in span.links:
        # A link to an invalid context is left out and counted, as on the SDK path.
        if len(ln.trace_id) != 16 or ln.trace_id == bytes(16) or len(ln.span_id) != 8 or (
            ln.span_id == bytes(8)
        ):
            invalid_links += 1
            continue
        links.append(
            {
                "traceId": ln.trace_id.hex(),
                "spanId": ln.span_id.hex(),
                "traceState": ln.trace_state,
                "attributes": _attributes(ln.attributes, f"span {span_id} link"),
                "droppedAttributesCount": str(ln.dropped_attributes_count),
            }
        )
    return {
        "span": {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "traceState": span.trace_state,
            "name": span.name,
            "kind": kind,
            "startTimeUnixNano": str(span.start_time_unix_nano),
            "endTimeUnixNano": str(span.end_time_unix_nano),
            "status": {"code": code, "message": span.status.message},
            "attributes": _attributes(span.attributes, f"span {span_id}"),
            "droppedAttributesCount": str(span.dropped_attributes_count),
            "events": events,
            "droppedEventsCount": str(span.dropped_events_count),
            "links": links,
            "droppedLinksCount": str(span.dropped_links_count + invalid_links),
        },
        "resource": resource,
        "scope": scope,
    }


def iter_request_spans(
    resource_spans: Any,
) -> Iterator[
    tuple[trace_pb2.Span, dict[str, Any] | MalformedSpan, dict[str, Any] | MalformedSpan]
]:
    """Yield ``(span, resource body, scope body)`` for every span of an export request.

    A malformed resource or scope is yielded as the :class:`MalformedSpan` instead
    of a body, so the caller can reject exactly the spans under it; so is the scope
    of spans a request could not decode (:data:`UNDECODABLE_SCOPE`).  It is yielded
    without its traceback, which holds this generator's frame, which holds it: a
    cycle that kept the whole request alive until a garbage collection.
    """
    for rs in resource_spans:
        try:
            res: dict[str, Any] | MalformedSpan = resource_body(rs.resource, rs.schema_url)
        except MalformedSpan as e:
            res = e.with_traceback(None)
        for ss in rs.scope_spans:
            try:
                if ss.scope.name == UNDECODABLE_SCOPE:
                    raise MalformedSpan(ss.scope.version[:_MAX_REASON])
                sc: dict[str, Any] | MalformedSpan = scope_body(ss.scope, ss.schema_url)
            except MalformedSpan as e:
                sc = e.with_traceback(None)
            for span in ss.spans:
                yield span, res, sc
