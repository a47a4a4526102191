"""One normalizer: the same spans through the SDK exporter and through OTLP → receiver
give byte-identical records."""

from __future__ import annotations

import math

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from receiver_support import (
    FakeClock,
    raw_records,
    serving,
    signing_key,
    trust_root,
    verified,
)

from spanproof.exporter import SpanproofSpanExporter
from spanproof.exporter.receiver import Receiver

EVERY_TYPE = {
    "str": "text with ünïcode and \"quotes\"",
    "empty.str": "",
    "bool.true": True,
    "bool.false": False,
    "int": 42,
    "int.negative": -(2**63),
    "int.max": 2**63 - 1,
    "float": 0.1,
    "float.integral": 5.0,
    "float.nan": math.nan,
    "float.inf": math.inf,
    "float.ninf": -math.inf,
    "float.negzero": -0.0,
    "strs": ("a", "b", ""),
    "bools": (True, False),
    "ints": (1, -2, 2**62),
    "floats": (1.5, math.inf, -0.0),
}


def _emit(tracer: trace.Tracer) -> None:
    remote = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7,
        is_remote=True, trace_flags=TraceFlags(1),
    )
    linked = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0x1111111111111111,
        is_remote=False, trace_flags=TraceFlags(1),
    )
    # A local root under a remote parent (as in a service called by another).
    with tracer.start_as_current_span(
        "handle", context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
        kind=SpanKind.SERVER, attributes={"gen_ai.operation.name": "workflow", **EVERY_TYPE},
    ) as root:
        root.add_event("received", {"case.id": "C-1", "n": 3, "ok": True, "x": 1.25})
        root.add_event("empty event")
        with tracer.start_as_current_span(
            "chat", kind=SpanKind.CLIENT, links=[Link(linked, {"link.kind": "follows", "w": 2})],
            attributes={"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 412},
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "model timed out"))
            child.record_exception(ValueError("boom"))
        for kind in (SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(f"step {kind.name}", kind=kind) as step:
                step.set_status(Status(StatusCode.OK))


def test_sdk_and_collector_paths_give_byte_identical_records(tmp_path):
    trust = trust_root(str(tmp_path))
    receiver = Receiver(tmp_path / "via-otlp", signing_key=signing_key(), select_all=True)
    with serving(receiver) as (grpc_server, _):
        sdk = SpanproofSpanExporter(tmp_path / "via-sdk", signing_key=signing_key(),
                                    select_all=True)
        otlp = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_server.port}", insecure=True)
        provider = TracerProvider(resource=Resource(
            {"service.name": "support-agent", "deployment.environment": "test", "pid": 7,
             "ratio": 0.5, "tags": ("a", "b")},
            schema_url="https://opentelemetry.io/schemas/1.21.0",
        ))
        provider.add_span_processor(SimpleSpanProcessor(sdk))
        provider.add_span_processor(SimpleSpanProcessor(otlp))
        tracer = provider.get_tracer(
            "tests.receiver.paths", "2.0.1",
            schema_url="https://opentelemetry.io/schemas/1.24.0",
            attributes={"scope.attr": "v", "scope.n": 1},
        )
        _emit(tracer)
        provider.shutdown()

    via_sdk = verified(str(tmp_path / "via-sdk"), trust)
    via_otlp = verified(str(tmp_path / "via-otlp"), trust)
    assert len(via_sdk) == len(via_otlp) == 1
    sdk_lines = raw_records(via_sdk[0].source)
    otlp_lines = raw_records(via_otlp[0].source)
    assert len(sdk_lines) == 5
    assert sdk_lines == otlp_lines
    # The two paths are different producers; only the records must agree.
    assert via_sdk[0].statement.producer.name != via_otlp[0].statement.producer.name



def test_an_all_zero_parent_span_id_is_no_parent_on_both_paths(tmp_path):
    """OpenTelemetry's OTLP encoder writes a parent context whose span id is 0 (the
    invalid id) as eight zero bytes, and the Collector reads such a parent as none;
    the SDK path maps it to ``""``.  The receiver rejected the span instead, and
    did not take it for its trace's local root."""
    trust = trust_root(str(tmp_path))
    clock = FakeClock()
    receiver = Receiver(tmp_path / "via-otlp", signing_key=signing_key(), select_all=True,
                        clock=clock, seal_grace=2.0, idle_timeout=30.0)
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    span = ReadableSpan(
        "root", context=SpanContext(trace_id, 0x00F067AA0BA902B7, is_remote=False),
        parent=SpanContext(trace_id, 0, is_remote=False), kind=SpanKind.SERVER,
        resource=Resource({"service.name": "svc"}), attributes={"gen_ai.operation.name": "chat"},
        instrumentation_scope=InstrumentationScope("tests.receiver.paths"),
        start_time=1_000, end_time=2_000,
    )
    with serving(receiver) as (grpc_server, _):
        sdk = SpanproofSpanExporter(tmp_path / "via-sdk", signing_key=signing_key(),
                                    select_all=True)
        otlp = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_server.port}", insecure=True)
        assert sdk.export([span]) is SpanExportResult.SUCCESS
        assert otlp.export([span]) is SpanExportResult.SUCCESS
        sdk.shutdown()
        otlp.shutdown()
        # A span without a parent is its trace's local root, whatever its flags say
        # of the parent's remoteness: sealed once the seal grace has passed.
        clock.advance(2.5)
        assert receiver.flush()
        via_otlp = verified(str(tmp_path / "via-otlp"), trust)
    via_sdk = verified(str(tmp_path / "via-sdk"), trust)
    assert len(via_sdk) == len(via_otlp) == 1
    assert via_otlp[0].statement.seal_reason == "root_ended"
    assert via_otlp[0].statement.completeness.rejected_spans == 0
    assert raw_records(via_sdk[0].source) == raw_records(via_otlp[0].source)
    assert via_otlp[0].records[0]["span"]["parentSpanId"] == ""
