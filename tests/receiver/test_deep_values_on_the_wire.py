"""A span nested deeper than protobuf decodes is rejected alone, not with its request.

protobuf's decoder stops at 100 nested messages: ~47 levels of arrays in a request
(two messages a level; ~31 levels of key-value lists, three messages a level), though
SPEC §2.3 allows 64.  One such span made the
whole request fail to decode: HTTP 400 / ``INVALID_ARGUMENT``, which a Collector
takes as permanent and so drops the batch, every other span in it (from any of its
senders) with it.  The request is now decoded piece by piece when it fails whole:
only the span that cannot be decoded (or the spans under a resource or scope that
cannot) is rejected and declared in its trace's bundle, and the rest is certified.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from receiver_support import (
    TRACE_A,
    TRACE_B,
    nest_in_arrays,
    otlp_span,
    serving,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp import UNDECODABLE_SCOPE
from spanproof.exporter.otlp_server import InvalidRequest, parse_otlp_protobuf
from spanproof.exporter.receiver import Receiver

DEEP = 60  # allowed by SPEC §2.3, beyond what protobuf decodes
WHY = "span cannot be decoded (nested deeper than protobuf decodes"



def _deep_span(spans: object, trace: str, n: int, parent: int | None = None,
               *, evidence: bool = True) -> None:
    span = spans.add()  # type: ignore[attr-defined]
    span.CopyFrom(otlp_span(trace, n, parent=parent, evidence=evidence))
    nest_in_arrays(span.attributes.add(key="deep").value, DEEP)


def _request() -> trace_service_pb2.ExportTraceServiceRequest:
    """TRACE_A's root, a deep evidence span, a child; a deep span that is not
    evidence; and TRACE_B's root under a resource nested too deeply."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    ss = rs.scope_spans.add()
    ss.scope.name = "tests.receiver"
    ss.spans.append(otlp_span(TRACE_A, 1))
    _deep_span(ss.spans, TRACE_A, 2, parent=1)
    ss.spans.append(otlp_span(TRACE_A, 3, parent=1))
    _deep_span(ss.spans, TRACE_A, 4, parent=1, evidence=False)
    other = req.resource_spans.add()
    nest_in_arrays(other.resource.attributes.add(key="deep").value, DEEP)
    other.scope_spans.add().spans.append(otlp_span(TRACE_B, 5))
    return req


def test_only_the_parts_that_cannot_be_decoded_are_set_apart() -> None:
    decoded = parse_otlp_protobuf(_request().SerializeToString())
    groups = [(ss.scope.name, ss.scope.version, [s.span_id.hex() for s in ss.spans])
              for rs in decoded.resource_spans for ss in rs.scope_spans]
    assert [(name, spans) for name, _, spans in groups] == [
        ("tests.receiver", [span_id(1), span_id(3)]),
        (UNDECODABLE_SCOPE, [span_id(2)]),  # each deep span under a scope of its own
        (UNDECODABLE_SCOPE, [span_id(4)]),
        (UNDECODABLE_SCOPE, [span_id(5)]),  # a good span under a deep resource
    ]
    depth = ": 100 messages, ~49 levels of arrays or ~32 of key-value lists in a span)"
    assert [why for _, why, _ in groups[1:]] == [WHY + depth] * 2 + [
        "its resource cannot be decoded (nested deeper than protobuf decodes" + depth]
    outline = decoded.resource_spans[0].scope_spans[1].spans[0]
    # What selecting and declaring it needs: ids, parent and the attribute keys.
    assert (outline.trace_id.hex(), outline.parent_span_id.hex()) == (TRACE_A, span_id(1))
    assert [kv.key for kv in outline.attributes] == ["gen_ai.operation.name", "deep"]
    assert outline.attributes[0].value.string_value == "chat"


def test_a_span_nested_too_deeply_is_rejected_alone_and_declared(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        post = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces",
            data=_request().SerializeToString(), method="POST",
            headers={"Content-Type": "application/x-protobuf"})
        # Before: 400 for the whole request, which a Collector drops.
        with urllib.request.urlopen(post, timeout=10) as answer:
            assert answer.status == 200
            response = trace_service_pb2.ExportTraceServiceResponse.FromString(answer.read())
        assert receiver.flush()
    # The deep evidence span and TRACE_B's root (its resource) are rejected; the deep
    # span that is not evidence is not certified either way.
    assert response.partial_success.rejected_spans == 2
    assert WHY in response.partial_success.error_message
    assert "its resource cannot be decoded" in response.partial_success.error_message
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    by_trace = {r.statement.trace_id: r for r in reports}
    assert span_ids(by_trace[TRACE_A]) == [span_id(1), span_id(3)]
    assert by_trace[TRACE_A].statement.completeness.rejected_spans == 1
    assert span_ids(by_trace[TRACE_B]) == []
    assert by_trace[TRACE_B].statement.completeness.rejected_spans == 1


def test_a_request_whose_framing_is_broken_is_still_refused_whole() -> None:
    data = _request().SerializeToString()
    with pytest.raises(InvalidRequest, match="not an OTLP protobuf request"):
        parse_otlp_protobuf(data[:-7])  # cut inside the last resource's length


def test_a_span_outline_keeps_a_local_root(tmp_path: Path) -> None:
    # A root that cannot be decoded still ends its trace: the trace is sealed after
    # the grace, not held to the idle timeout.
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    _deep_span(ss.spans, TRACE_A, 1)
    ss.spans.append(otlp_span(TRACE_A, 2, parent=1))
    decoded = parse_otlp_protobuf(req.SerializeToString())
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0,
                        idle_timeout=3600.0)
    receiver.start()
    try:
        assert receiver(decoded.resource_spans).rejected == 1
        assert receiver.flush()
        (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)),
                             allow_incomplete=True)
    finally:
        receiver.shutdown()
    assert report.statement is not None
    # Only a trace whose root ended is due: an open one would wait for the idle timeout.
    assert (span_ids(report), report.statement.seal_reason) == ([span_id(2)], "root_ended")


def _json_value(levels: int) -> str:
    """A string nested *levels* arrays down, as OTLP/JSON text."""
    return '{"arrayValue":{"values":[' * levels + '{"stringValue":"bottom"}' + "]}}" * levels


def _json_span(n: int, parent: int | None, deep: int | None) -> str:
    parent_id = f',"parentSpanId":"{span_id(parent)}"' if parent is not None else ""
    extra = f',{{"key":"deep","value":{_json_value(deep)}}}' if deep is not None else ""
    return (f'{{"traceId":"{TRACE_A}","spanId":"{span_id(n)}"{parent_id},"name":"step",'
            f'"kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":'
            f'[{{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}}{extra}]}}')


def test_over_otlp_json_every_depth_spec_allows_is_certified(tmp_path: Path) -> None:
    # protobuf's JSON parser stopped at 100 nested messages (~47 levels in a
    # request): the whole request got 400.  Now 64 levels are certified, and a value
    # deeper than SPEC §2.3 allows rejects its span alone.
    spans = ",".join([_json_span(1, None, None), _json_span(2, 1, 64), _json_span(3, 1, 65)])
    body = f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}'.encode()
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    with serving(receiver, http=True) as (_, http_server):
        assert http_server is not None
        post = urllib.request.Request(
            f"http://127.0.0.1:{http_server.port}/v1/traces", data=body, method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=10) as answer:
            assert answer.status == 200
            response = json.loads(answer.read())
        assert receiver.flush()
    assert response["partialSuccess"]["rejectedSpans"] == "1"
    assert "value nested deeper than 64" in response["partialSuccess"]["errorMessage"]
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)),
                         allow_incomplete=True)
    assert span_ids(report) == [span_id(1), span_id(2)]
    assert report.statement.completeness.rejected_spans == 1
    assert report.records is not None
    value = report.records[1]["span"]["attributes"]["deep"]
    for _ in range(64):
        (value,) = value["arrayValue"]
    assert value == {"stringValue": "bottom"}


def test_a_part_that_fails_for_another_reason_still_fails_the_request() -> None:
    # Only depth and strings that are not UTF-8 are forgiven span by span: a span
    # protobuf refuses for anything else (here an attribute whose bytes are not a
    # message: a tag of wire type 7) fails the request as before, whichever comes
    # first.
    for bad_first in (True, False):
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        bad = otlp_span(TRACE_A, 1)
        bad.attributes.add(key="zz")
        if bad_first:
            ss.spans.append(bad)
        _deep_span(ss.spans, TRACE_A, 2, parent=1)
        if not bad_first:
            ss.spans.append(bad)
        data = req.SerializeToString()
        attribute = common_pb2.KeyValue(key="zz").SerializeToString()
        assert data.count(b"\x4a\x04" + attribute) == 1
        corrupt = data.replace(b"\x4a\x04" + attribute, b"\x4a\x04\x0f\x7a\x7a\x7a")
        with pytest.raises(InvalidRequest, match="not an OTLP protobuf request"):
            parse_otlp_protobuf(corrupt)


def test_a_sender_naming_its_scope_as_the_marker_only_loses_its_own_spans(
    tmp_path: Path
) -> None:
    # The marker is an ordinary scope name on the wire: a sender that uses it has the
    # spans under it rejected, others are untouched, and its version is not echoed
    # back whole.
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    forged = rs.scope_spans.add()
    forged.scope.name, forged.scope.version = UNDECODABLE_SCOPE, "X" * 100_000
    forged.spans.append(otlp_span(TRACE_A, 1))
    rs.scope_spans.add().spans.append(otlp_span(TRACE_B, 2))
    receiver = Receiver(tmp_path / "out", signing_key=signing_key(), seal_grace=0.0)
    receiver.start()
    try:
        result = receiver(parse_otlp_protobuf(req.SerializeToString()).resource_spans)
        assert receiver.flush()
    finally:
        receiver.shutdown()
    assert result.rejected == 1 and len(result.message) < 1_000
    reports = verified(str(tmp_path / "out"), trust_root(str(tmp_path)), allow_incomplete=True)
    assert {r.statement.trace_id: span_ids(r) for r in reports} == {
        TRACE_A: [], TRACE_B: [span_id(2)]}


def test_piecewise_decoding_keeps_schema_urls_and_sets_apart_a_deep_scope() -> None:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.schema_url = "https://example.com/resource"
    good = rs.scope_spans.add()
    good.scope.name, good.schema_url = "lib", "https://example.com/scope"
    good.spans.append(otlp_span(TRACE_A, 1))
    _deep_span(good.spans, TRACE_A, 2, parent=1)  # makes the request fail whole
    deep_scope = rs.scope_spans.add()
    nest_in_arrays(deep_scope.scope.attributes.add(key="deep").value, DEEP)
    deep_scope.spans.append(otlp_span(TRACE_B, 3))
    decoded = parse_otlp_protobuf(req.SerializeToString())
    (drs,) = decoded.resource_spans
    assert drs.schema_url == "https://example.com/resource"
    kept = drs.scope_spans[0]
    assert (kept.scope.name, kept.schema_url) == ("lib", "https://example.com/scope")
    assert [s.span_id.hex() for s in kept.spans] == [span_id(1)]
    apart = {ss.spans[0].span_id.hex(): ss.scope.version for ss in drs.scope_spans[1:]}
    assert apart[span_id(2)].startswith("span cannot be decoded")
    assert apart[span_id(3)].startswith("its scope cannot be decoded")
