"""An OTLP/protobuf span holding a string that is not UTF-8 is rejected alone.

protobuf's decoder refuses a ``string`` field whose bytes are not UTF-8, and one such
span failed its whole request: HTTP 400 / ``INVALID_ARGUMENT``, which an SDK exporter
or a Collector takes as permanent, dropping every span of the batch undeclared.  Such
a string has no canonical JSON form (SPEC §3.1), so its span cannot be certified, but
the request's framing is sound: it is now decoded piece by piece, as a span nested
too deeply is, and only that span (or the spans under a resource or scope holding
such a string) is rejected and declared in its trace's bundle.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from receiver_support import (
    TRACE_A,
    TRACE_B,
    decoded_groups,
    otlp_span,
    serving,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp import UNDECODABLE_SCOPE
from spanproof.exporter.otlp_server import parse_otlp_protobuf
from spanproof.exporter.receiver import Receiver

# A string protobuf encodes as b"\xc3\x89zz", made not UTF-8 on the wire by turning
# its first two bytes into a lead byte followed by another lead byte.
MARK = "\u00c9zz"
NOT_UTF8 = "a string is not UTF-8: no canonical JSON form (SPEC §3.1)"


def _not_utf8(req: trace_service_pb2.ExportTraceServiceRequest, times: int = 1) -> bytes:
    data = req.SerializeToString()
    assert data.count(MARK.encode()) == times
    return data.replace(MARK.encode(), b"\xc3\xc3zz")



def _two_traces() -> trace_service_pb2.ExportTraceServiceRequest:
    """TRACE_A's root and two children, the middle one named MARK; TRACE_B's root."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    ss = rs.scope_spans.add()
    ss.scope.name = "tests.receiver"
    ss.spans.extend([otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1, name=MARK),
                     otlp_span(TRACE_A, 3, parent=1), otlp_span(TRACE_B, 4)])
    return req


@pytest.mark.parametrize("where", ["name", "attribute value", "attribute key",
                                   "event name", "link trace state", "status message"])
def test_a_span_with_a_string_not_utf8_is_set_apart_alone(where: str) -> None:
    req = _two_traces()
    span = req.resource_spans[0].scope_spans[0].spans[1]
    span.name = "step"
    if where == "name":
        span.name = MARK
    elif where == "attribute value":
        span.attributes.add(key="gen_ai.prompt").value.string_value = MARK
    elif where == "attribute key":
        span.attributes.add(key=MARK).value.int_value = 1
    elif where == "event name":
        span.events.add(name=MARK, time_unix_nano=1_500)
    elif where == "link trace state":
        span.links.add(trace_id=bytes.fromhex(TRACE_B), span_id=bytes.fromhex(span_id(4)),
                       trace_state=MARK)
    else:
        span.status.message = MARK
    groups = decoded_groups(_not_utf8(req))
    assert groups == [
        ("tests.receiver", "", [span_id(1), span_id(3), span_id(4)]),
        (UNDECODABLE_SCOPE, f"span cannot be decoded ({NOT_UTF8})", [span_id(2)]),
    ]
    outline = parse_otlp_protobuf(_not_utf8(req)).resource_spans[0].scope_spans[1].spans[0]
    # What selecting it and declaring it in its trace need.
    assert (outline.trace_id.hex(), outline.parent_span_id.hex()) == (TRACE_A, span_id(1))
    assert outline.attributes[0].key == "gen_ai.operation.name"


def test_a_resource_or_scope_not_utf8_sets_apart_the_spans_under_it() -> None:
    req = trace_service_pb2.ExportTraceServiceRequest()
    bad_resource = req.resource_spans.add()
    bad_resource.resource.attributes.add(key="service.name").value.string_value = MARK
    bad_resource.scope_spans.add().spans.append(otlp_span(TRACE_A, 1))
    rs = req.resource_spans.add()
    bad_scope = rs.scope_spans.add()
    bad_scope.scope.name = MARK
    bad_scope.spans.append(otlp_span(TRACE_A, 2, parent=1))
    good = rs.scope_spans.add()
    good.scope.name = "lib"
    good.spans.append(otlp_span(TRACE_B, 3))
    assert decoded_groups(_not_utf8(req, times=2)) == [
        (UNDECODABLE_SCOPE, f"its resource cannot be decoded ({NOT_UTF8})", [span_id(1)]),
        (UNDECODABLE_SCOPE, f"its scope cannot be decoded ({NOT_UTF8})", [span_id(2)]),
        ("lib", "", [span_id(3)]),
    ]


def test_a_schema_url_not_utf8_sets_apart_the_spans_under_it() -> None:
    # It failed the request even where the rest was decoded piece by piece.
    req = trace_service_pb2.ExportTraceServiceRequest()
    bad_resource = req.resource_spans.add()
    bad_resource.schema_url = MARK
    bad_resource.scope_spans.add().spans.append(otlp_span(TRACE_A, 1))
    rs = req.resource_spans.add()
    rs.schema_url = "https://example.com/resource"
    bad_scope = rs.scope_spans.add()
    bad_scope.schema_url = MARK
    bad_scope.spans.append(otlp_span(TRACE_A, 2, parent=1))
    rs.scope_spans.add().spans.append(otlp_span(TRACE_B, 3))
    decoded = parse_otlp_protobuf(_not_utf8(req, times=2))
    assert decoded_groups(_not_utf8(req, times=2)) == [
        (UNDECODABLE_SCOPE, "its resource's schema URL is not UTF-8", [span_id(1)]),
        (UNDECODABLE_SCOPE, "its scope's schema URL is not UTF-8", [span_id(2)]),
        ("", "", [span_id(3)]),
    ]
    assert decoded.resource_spans[1].schema_url == "https://example.com/resource"


def _post_http(port: int, data: bytes) -> trace_service_pb2.ExportTraceServiceResponse:
    post = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/traces", data=data, method="POST",
        headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(post, timeout=10) as answer:
        assert answer.status == 200  # before: 400 for the whole request
        return trace_service_pb2.ExportTraceServiceResponse.FromString(answer.read())


def _post_grpc(port: int, data: bytes) -> trace_service_pb2.ExportTraceServiceResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        # Before: INVALID_ARGUMENT for the whole request.
        answer: trace_service_pb2.ExportTraceServiceResponse = export(data, timeout=10)
        return answer


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_span_not_utf8_is_rejected_and_declared_the_rest_certified(
    tmp_path: Path, transport: str
) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (grpc_server, http_server):
        assert http_server is not None
        data = _not_utf8(_two_traces())
        response = (_post_http(http_server.port, data) if transport == "http"
                    else _post_grpc(grpc_server.port, data))
        assert receiver.flush()
    assert response.partial_success.rejected_spans == 1
    assert NOT_UTF8 in response.partial_success.error_message
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    by_trace = {r.statement.trace_id: r for r in reports}
    assert span_ids(by_trace[TRACE_A]) == [span_id(1), span_id(3)]
    assert by_trace[TRACE_A].statement.completeness.rejected_spans == 1
    assert span_ids(by_trace[TRACE_B]) == [span_id(4)]
    assert by_trace[TRACE_B].statement.completeness.rejected_spans == 0
