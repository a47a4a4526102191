"""span_to_body: every field of an SDK span, as the exact typed CER body (SPEC §2)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from exporter_support import Recorder, span_hex
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import NonRecordingSpan, TraceState

from spanproof.exporter.normalize import span_to_body
from spanproof.exporter.otlp import iter_request_spans, otlp_span_to_body
from spanproof.exporter.sealing import build_record
from spanproof.verifier import canonicalize, genesis_hash, loads_canonical, validate_record
from spanproof.verifier.values import decode_value

REMOTE_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
REMOTE_SPAN = 0xB7AD6B7169203331


def _only_span(recorder: Recorder) -> ReadableSpan:
    (span,) = recorder.take()
    return span


def _valid(body: dict[str, Any]) -> None:
    """The body makes a valid, canonical record."""
    record = build_record(body, 0, genesis_hash(body["span"]["traceId"]))
    validate_record(record)
    assert loads_canonical(canonicalize(record)) == record


ATTRIBUTES: dict[str, tuple[Any, dict[str, Any]]] = {
    "str": ("hello", {"stringValue": "hello"}),
    "str.empty": ("", {"stringValue": ""}),
    "str.non_bmp": ("\U0001f600 \U0001d11e", {"stringValue": "\U0001f600 \U0001d11e"}),
    "str.nul": ("a\x00b", {"stringValue": "a\x00b"}),
    "bool.true": (True, {"boolValue": True}),
    "bool.false": (False, {"boolValue": False}),
    "int.zero": (0, {"intValue": "0"}),
    "int.negative": (-42, {"intValue": "-42"}),
    "int.beyond_2_53": (2**53 + 1, {"intValue": "9007199254740993"}),
    "int.min64": (-(2**63), {"intValue": "-9223372036854775808"}),
    "int.max64": (2**63 - 1, {"intValue": "9223372036854775807"}),
    # Outside int64: kept exactly, as a string (OTLP could not carry it at all).
    "int.over64": (2**63, {"stringValue": "9223372036854775808"}),
    "int.under64": (-(2**63) - 1, {"stringValue": "-9223372036854775809"}),
    "float": (1.5, {"doubleValue": "1.5"}),
    "float.tenth": (0.1, {"doubleValue": "0.1"}),
    "float.integral": (5.0, {"doubleValue": "5"}),
    "float.big": (1e21, {"doubleValue": "1e+21"}),
    "float.nan": (math.nan, {"doubleValue": "NaN"}),
    "float.inf": (math.inf, {"doubleValue": "Infinity"}),
    "float.ninf": (-math.inf, {"doubleValue": "-Infinity"}),
    "float.negzero": (-0.0, {"doubleValue": "-0"}),
    "five.str": ("5", {"stringValue": "5"}),
    "five.int": (5, {"intValue": "5"}),
    "arr.empty": ([], {"arrayValue": []}),
    "arr.bool": ([True, False], {"arrayValue": [{"boolValue": True}, {"boolValue": False}]}),
    "arr.int": (
        [1, -2, 2**64],
        {"arrayValue": [{"intValue": "1"}, {"intValue": "-2"},
                        {"stringValue": "18446744073709551616"}]},
    ),
    "arr.float": (
        [0.5, math.nan, -0.0],
        {"arrayValue": [{"doubleValue": "0.5"}, {"doubleValue": "NaN"}, {"doubleValue": "-0"}]},
    ),
    "arr.str": (["a", "\U0001f600"], {"arrayValue": [{"stringValue": "a"},
                                                    {"stringValue": "\U0001f600"}]}),
    "bytes": (b"\x00\xff", {"bytesValue": "AP8="}),
    "map": ({"k": 1, "s": "v"}, {"kvlistValue": {"k": {"intValue": "1"},
                                                 "s": {"stringValue": "v"}}}),
}


# Attribute values the SDK itself drops before 1.45 (its span never holds them).
_NEWER_SDK_VALUES = {"bytes", "map"}


def test_every_attribute_type_becomes_its_exact_typed_value() -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span(
        "typed", attributes={key: value for key, (value, _) in ATTRIBUTES.items()}
    ):
        pass
    span = _only_span(rec)
    held = set(span.attributes or {})
    assert set(ATTRIBUTES) - held <= _NEWER_SDK_VALUES  # what the SDK holds, all certified
    body = span_to_body(span)
    assert body["span"]["attributes"] == {
        key: typed for key, (_, typed) in ATTRIBUTES.items() if key in held}
    _valid(body)


def test_typed_values_keep_string_int_and_double_apart() -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("five", attributes={"a": "5", "b": 5, "c": 5.0}):
        pass
    attrs = span_to_body(_only_span(rec))["span"]["attributes"]
    decoded = {k: decode_value(v) for k, v in attrs.items()}
    assert decoded == {"a": "5", "b": 5, "c": 5.0}
    assert [type(decoded[k]) for k in "abc"] == [str, int, float]


def test_span_fields_ids_times_kind_status_events_links() -> None:
    rec = Recorder()
    remote = NonRecordingSpan(
        SpanContext(REMOTE_TRACE, REMOTE_SPAN, is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    trace_state=TraceState([("vendor", "abc"), ("other", "1")]))
    )
    linked = SpanContext(0xABCDEF, 0x1234, is_remote=True,
                         trace_state=TraceState([("v", "1"), ("w", "2")]))
    span = rec.tracer.start_span(
        "call-model",
        context=trace.set_span_in_context(remote),
        kind=SpanKind.CLIENT,
        links=[Link(linked, {"rel": "caused-by"})],
        start_time=1_000,
    )
    span.add_event("retrieved", {"doc": "kb-7", "n": 3}, timestamp=1_500)
    span.set_status(Status(StatusCode.ERROR, "model timed out"))
    span.end(end_time=2_000)
    body = span_to_body(_only_span(rec))
    s = body["span"]
    assert s["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert s["parentSpanId"] == "b7ad6b7169203331"
    assert len(s["spanId"]) == 16 and s["spanId"] == s["spanId"].lower()
    assert s["traceState"] == "vendor=abc,other=1"
    assert s["name"] == "call-model"
    assert s["kind"] == "SPAN_KIND_CLIENT"
    assert (s["startTimeUnixNano"], s["endTimeUnixNano"]) == ("1000", "2000")
    assert s["status"] == {"code": "STATUS_CODE_ERROR", "message": "model timed out"}
    assert s["events"] == [
        {
            "timeUnixNano": "1500",
            "name": "retrieved",
            "attributes": {"doc": {"stringValue": "kb-7"}, "n": {"intValue": "3"}},
            "droppedAttributesCount": "0",
        }
    ]
    assert s["links"] == [
        {
            "traceId": "00000000000000000000000000abcdef",
            "spanId": "0000000000001234",
            "traceState": "v=1,w=2",
            "attributes": {"rel": {"stringValue": "caused-by"}},
            "droppedAttributesCount": "0",
        }
    ]
    assert (s["droppedAttributesCount"], s["droppedEventsCount"], s["droppedLinksCount"]) == (
        "0", "0", "0",
    )
    _valid(body)


def test_root_span_has_empty_parent_and_trace_state() -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("root") as span:
        span.set_status(StatusCode.OK)
    body = span_to_body(_only_span(rec))
    assert body["span"]["parentSpanId"] == ""
    assert body["span"]["traceState"] == ""
    assert body["span"]["kind"] == "SPAN_KIND_INTERNAL"
    assert body["span"]["status"] == {"code": "STATUS_CODE_OK", "message": ""}
    _valid(body)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (SpanKind.INTERNAL, "SPAN_KIND_INTERNAL"),
        (SpanKind.SERVER, "SPAN_KIND_SERVER"),
        (SpanKind.CLIENT, "SPAN_KIND_CLIENT"),
        (SpanKind.PRODUCER, "SPAN_KIND_PRODUCER"),
        (SpanKind.CONSUMER, "SPAN_KIND_CONSUMER"),
    ],
)
def test_every_span_kind(kind: SpanKind, expected: str) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("k", kind=kind):
        pass
    assert span_to_body(_only_span(rec))["span"]["kind"] == expected


def test_dropped_counts_come_from_the_sdk_limits() -> None:
    rec = Recorder(span_limits=SpanLimits(
        max_span_attributes=2, max_events=1, max_links=1,
        max_event_attributes=1, max_link_attributes=1,
    ))
    links = [Link(SpanContext(0x1, 0x2, False), {"a": 1, "b": 2, "c": 3}),
             Link(SpanContext(0x3, 0x4, False))]
    with rec.tracer.start_as_current_span(
        "limited", attributes={"a": 1, "b": 2, "c": 3, "d": 4}, links=links
    ) as span:
        span.add_event("e1", {"x": 1, "y": 2, "z": 3})
        span.add_event("e2")
        span.add_event("e3")
    s = span_to_body(_only_span(rec))["span"]
    assert s["droppedAttributesCount"] == "2"
    assert len(s["attributes"]) == 2
    assert s["droppedEventsCount"] == "2"
    assert s["droppedLinksCount"] == "1"
    # The bounded lists keep the newest entries.
    assert [e["name"] for e in s["events"]] == ["e3"]
    assert [ln["spanId"] for ln in s["links"]] == ["0000000000000004"]


def test_link_attribute_limit_is_counted() -> None:
    rec = Recorder(span_limits=SpanLimits(max_link_attributes=1))
    link = Link(SpanContext(0x1, 0x2, False), {"a": 1, "b": 2, "c": 3})
    with rec.tracer.start_as_current_span("l", links=[link]):
        pass
    (body,) = span_to_body(_only_span(rec))["span"]["links"]
    assert body["attributes"] == {"c": {"intValue": "3"}}
    assert body["droppedAttributesCount"] == "2"


def test_event_attribute_limit_is_counted() -> None:
    rec = Recorder(span_limits=SpanLimits(max_event_attributes=1))
    with rec.tracer.start_as_current_span("e") as span:
        span.add_event("many", {"x": 1, "y": 2, "z": 3})
    (event,) = span_to_body(_only_span(rec))["span"]["events"]
    assert event["droppedAttributesCount"] == "2"
    assert len(event["attributes"]) == 1


def test_link_without_valid_ids_counts_as_dropped() -> None:
    rec = Recorder()
    invalid = trace.INVALID_SPAN_CONTEXT
    with rec.tracer.start_as_current_span("l", links=[Link(invalid, {"why": "kept by sdk"})]):
        pass
    body = span_to_body(_only_span(rec))
    assert body["span"]["links"] == []
    assert body["span"]["droppedLinksCount"] == "1"
    _valid(body)


def test_resource_and_scope() -> None:
    resource = Resource(
        {"service.name": "support-agent", "deployment.environment": "test"},
        schema_url="https://opentelemetry.io/schemas/1.21.0",
    )
    rec = Recorder(resource=resource)
    tracer = rec.provider.get_tracer(
        "agent.lib", "2.0", schema_url="https://example.com/scope-schema",
        attributes={"scope.attr": "v", "scope.n": 7},
    )
    with tracer.start_as_current_span("s"):
        pass
    body = span_to_body(_only_span(rec))
    assert body["resource"] == {
        "attributes": {
            "service.name": {"stringValue": "support-agent"},
            "deployment.environment": {"stringValue": "test"},
        },
        "droppedAttributesCount": "0",
        "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
    }
    assert body["scope"] == {
        "name": "agent.lib",
        "version": "2.0",
        "attributes": {"scope.attr": {"stringValue": "v"}, "scope.n": {"intValue": "7"}},
        "droppedAttributesCount": "0",
        "schemaUrl": "https://example.com/scope-schema",
    }
    _valid(body)


def test_scope_without_version_or_schema_and_missing_scope() -> None:
    rec = Recorder(resource=Resource({}))
    with rec.provider.get_tracer("bare").start_as_current_span("s"):
        pass
    span = _only_span(rec)
    body = span_to_body(span)
    assert body["scope"] == {"name": "bare", "version": "", "attributes": {},
                             "droppedAttributesCount": "0", "schemaUrl": ""}
    assert body["resource"] == {"attributes": {}, "droppedAttributesCount": "0", "schemaUrl": ""}
    no_scope = ReadableSpan(
        "s", context=span.get_span_context(), resource=Resource({}),
        start_time=1, end_time=2, instrumentation_scope=None,
    )
    assert span_to_body(no_scope)["scope"] == body["scope"] | {"name": ""}
    _valid(span_to_body(no_scope))


def test_span_without_valid_context_is_refused() -> None:
    with pytest.raises(ValueError, match="span context"):
        span_to_body(ReadableSpan("no-context", context=None))
    with pytest.raises(ValueError, match="span context"):
        span_to_body(ReadableSpan("invalid", context=trace.INVALID_SPAN_CONTEXT))


def test_unsupported_attribute_value_type_is_refused() -> None:
    ctx = SpanContext(0x1, 0x2, False)
    attributes: Any = {"obj": object()}  # what the SDK's own containers would refuse
    span = ReadableSpan("bad", context=ctx, attributes=attributes, start_time=1, end_time=2)
    with pytest.raises(ValueError, match="unsupported"):
        span_to_body(span)


# OTLP has no way to carry these (see normalize._typed).
BEYOND_INT64 = {"int.over64", "int.under64", "arr.int"}


def test_same_body_as_the_collector_path() -> None:
    """The SDK path and the OTLP path (spanproof.exporter.otlp) give identical bodies.

    Link trace states are left out: the Python OTLP encoder does not send them.
    """
    resource = Resource({"service.name": "svc", "n": 3}, schema_url="https://s/1")
    rec = Recorder(resource=resource)
    tracer = rec.provider.get_tracer("lib", "1.0", schema_url="https://s/2", attributes={"a": 1})
    remote = NonRecordingSpan(SpanContext(REMOTE_TRACE, REMOTE_SPAN, is_remote=True,
                                          trace_flags=TraceFlags(TraceFlags.SAMPLED),
                                          trace_state=TraceState([("k", "v")])))
    with tracer.start_as_current_span(
        "root", context=trace.set_span_in_context(remote), kind=SpanKind.SERVER
    ):
        with tracer.start_as_current_span(
            "child",
            attributes={key: value for key, (value, _) in ATTRIBUTES.items()
                        if key not in BEYOND_INT64},
            links=[Link(SpanContext(0x5, 0x6, True), {"l": True})],
        ) as child:
            child.add_event("ev", {"f": 0.25, "arr": [1, 2]}, timestamp=7)
            child.set_status(Status(StatusCode.ERROR, "bad"))
    spans = rec.take()
    request = encode_spans(spans)
    via_otlp = {}
    for pb_span, res, scope in iter_request_spans(request.resource_spans):
        assert isinstance(res, dict) and isinstance(scope, dict)
        body = otlp_span_to_body(pb_span, res, scope)
        via_otlp[body["span"]["spanId"]] = body
    assert len(via_otlp) == 2
    for span in spans:
        body = span_to_body(span)
        assert canonicalize(body) == canonicalize(via_otlp[span_hex(span)[1]])


@pytest.mark.parametrize("bottom", ["string", "int", "bool"])
def test_otlp_value_nested_deeper_than_the_limit_is_refused_whatever_its_type(
    bottom: str,
) -> None:
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    from spanproof.exporter.otlp import MalformedSpan

    def span(levels: int) -> trace_pb2.Span:
        pb = trace_pb2.Span(trace_id=bytes.fromhex("1" * 32), span_id=bytes.fromhex("2" * 16),
                            name="deep", start_time_unix_nano=1, end_time_unix_nano=2)
        value: common_pb2.AnyValue = pb.attributes.add(key="deep").value
        for _ in range(levels):  # built in place: copying a message this deep is refused
            value = value.kvlist_value.values.add(key="k").value
        if bottom == "string":
            value.string_value = "x"
        elif bottom == "int":
            value.int_value = 7
        else:
            value.bool_value = True
        return pb

    body = otlp_span_to_body(span(64), {}, {})  # a kvlist 64 deep holds its value
    inner = body["span"]["attributes"]["deep"]
    for _ in range(64):
        inner = inner["kvlistValue"]["k"]
    assert inner == {"string": {"stringValue": "x"}, "int": {"intValue": "7"},
                     "bool": {"boolValue": True}}[bottom]
    with pytest.raises(MalformedSpan, match=r"span 2222222222222222\['deep'\].*deeper than 64"):
        otlp_span_to_body(span(65), {}, {})
