"""An empty ``AnyValue`` (no value set) as the element of a container at depth 64 is
certified as ``{}`` (SPEC §2.3: only a non-empty value may not be deeper than 64), as
the SDK path certifies ``None`` there; the OTLP mapping rejected the span.

Over OTLP/gRPC and OTLP/HTTP protobuf refuses a message nested that deep before the
mapping sees it; a receiver called with decoded messages (its ingest callable) got
the span rejected and its bundle INCOMPLETE."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from receiver_support import TRACE_A, request, signing_key, trust_root, verified

from spanproof.exporter.normalize import typed_attributes
from spanproof.exporter.otlp import MalformedSpan, otlp_span_to_body
from spanproof.exporter.receiver import Receiver


def _span(kind: str, bottom: common_pb2.AnyValue) -> trace_pb2.Span:
    """A span whose attribute ``deep`` nests *bottom* at depth 65."""
    span = trace_pb2.Span(trace_id=bytes.fromhex(TRACE_A), span_id=b"\x02" * 8, name="deep",
                          kind=trace_pb2.Span.SPAN_KIND_INTERNAL)
    value = span.attributes.add(key="deep").value
    for _ in range(65):  # built in place: copying a message this deep is refused
        value = (value.array_value.values.add() if kind == "array"
                 else value.kvlist_value.values.add(key="k").value)
    value.CopyFrom(bottom)
    return span


def _sdk_value(kind: str) -> object:
    value: object = [None] if kind == "array" else {"k": None}
    for _ in range(64):
        value = [value] if kind == "array" else {"k": value}
    return value


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_empty_value_at_depth_65_is_certified_as_on_the_sdk_path(kind: str) -> None:
    body = otlp_span_to_body(_span(kind, common_pb2.AnyValue()), {}, {})
    assert body["span"]["attributes"]["deep"] == typed_attributes(
        {"deep": _sdk_value(kind)})["deep"]


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_non_empty_value_at_depth_65_is_still_rejected(kind: str) -> None:
    with pytest.raises(MalformedSpan, match="deeper than 64"):
        otlp_span_to_body(_span(kind, common_pb2.AnyValue(bool_value=True)), {}, {})


def test_receiver_certifies_an_empty_value_at_depth_65(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key())
    receiver.start()
    try:
        req = request()
        req.resource_spans[0].scope_spans[0].spans.add()
        deep = req.resource_spans[0].scope_spans[0].spans[0]
        # Built in place (CopyFrom of the finished span is refused as too deep).
        deep.trace_id, deep.span_id, deep.name = bytes.fromhex(TRACE_A), b"\x02" * 8, "deep"
        deep.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        value = deep.attributes.add(key="deep").value
        for _ in range(64):
            value = value.array_value.values.add()
        value.array_value.values.add()
        assert receiver(req.resource_spans).rejected == 0
    finally:
        receiver.shutdown()
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)))
    assert report.records is not None and len(report.records) == 1
