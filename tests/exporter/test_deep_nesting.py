"""Attribute values nested deeper than a typed value may be (SPEC §2.3 "Depth").

The verifier fails a record holding a value other than ``{}`` deeper than
``MAX_DEPTH``; the OpenTelemetry SDK accepts such values.  A span carrying one is not
certified but declared rejected in its trace's bundle (INCOMPLETE), as an oversized
value is, so the bundle, with the trace's other spans, still verifies: in process,
through the sealing process and through the EvidenceSpanProcessor alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    assert_declared_rejected,
    export_through_a_sealing_process,
    make_exporter,
    needs_any_value_sdk,
    processor_recorder,
    span_hex,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import Link

from spanproof.exporter.normalize import span_to_body
from spanproof.exporter.otlp import MAX_DEPTH as OTLP_MAX_DEPTH
from spanproof.verifier.values import MAX_DEPTH, validate_value


def _nested(depth: int, leaf: Any = "x") -> Any:
    """*leaf* at depth *depth* of an attribute value (lists around it)."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _deep_mapping(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_the_producers_share_the_verifiers_depth_limit() -> None:
    assert MAX_DEPTH == 64
    assert OTLP_MAX_DEPTH is MAX_DEPTH


@needs_any_value_sdk
@pytest.mark.parametrize("value", [_nested(MAX_DEPTH), _deep_mapping(MAX_DEPTH),
                                   _nested(MAX_DEPTH, None), _nested(MAX_DEPTH + 1, None)])
def test_a_value_as_deep_as_the_verifier_allows_is_certified(value: Any) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("deep", attributes={"payload": value}):
        pass
    (span,) = rec.take()
    typed = span_to_body(span)["span"]["attributes"]["payload"]
    validate_value(typed, "payload")  # does not raise


def _deep_trace(rec: Recorder, where: str, value: Any) -> tuple[str, str, str]:
    """A root span and two children, one carrying *value* at *where*; the root's,
    the good child's and the deep child's span ids."""
    with rec.tracer.start_as_current_span("root") as root:
        with rec.tracer.start_as_current_span("good", attributes={"n": 1}) as good:
            pass
        attributes = {"payload": value} if where == "span" else {}
        links = [Link(good.get_span_context(), {"payload": value})] if where == "link" else []
        with rec.tracer.start_as_current_span("deep", attributes=attributes,
                                              links=links) as deep:
            if where == "event":
                deep.add_event("e", {"payload": value})
    return span_hex(root)[1], span_hex(good)[1], span_hex(deep)[1]


@needs_any_value_sdk
@pytest.mark.parametrize("where", ["span", "event", "link"])
@pytest.mark.parametrize("value", [_nested(MAX_DEPTH + 1), _deep_mapping(MAX_DEPTH + 1),
                                   _nested(MAX_DEPTH + 1, [])])
def test_attribute_nested_too_deep_is_declared_rejected_not_signed(
    tmp_path: Path, where: str, value: Any
) -> None:
    rec = Recorder()
    root, good, _ = _deep_trace(rec, where, value)
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, [root, good])


@needs_any_value_sdk
def test_attribute_nested_too_deep_is_declared_rejected_by_the_sealing_process(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    root, good, _ = _deep_trace(rec, "span", _nested(MAX_DEPTH + 1))
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    assert_declared_rejected(tmp_path / "out", tmp_path, [root, good])


@needs_any_value_sdk
def test_attribute_nested_too_deep_is_declared_rejected_by_the_evidence_processor(
    tmp_path: Path,
) -> None:
    with processor_recorder(tmp_path / "out") as rec:
        root, good, _ = _deep_trace(rec, "event", _nested(MAX_DEPTH + 1))
    assert_declared_rejected(tmp_path / "out", tmp_path, [root, good])


@needs_any_value_sdk
@pytest.mark.parametrize("where", ["resource", "scope"])
def test_resource_or_scope_nested_too_deep_rejects_its_spans(tmp_path: Path,
                                                             where: str) -> None:
    # Every span under such a resource or scope carries the value: each is declared
    # rejected, and the bundle of a trace with others still verifies.
    deep = {"payload": _nested(MAX_DEPTH + 1)}
    provider = TracerProvider(resource=Resource(deep if where == "resource" else {}))
    rec = Recorder()
    tracer = provider.get_tracer("deep", attributes=deep if where == "scope" else None)
    provider.add_span_processor(SimpleSpanProcessor(rec.memory))
    with rec.tracer.start_as_current_span("root") as root:
        with tracer.start_as_current_span("deep-1"):
            pass
        with tracer.start_as_current_span("deep-2"):
            pass
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, [span_hex(root)[1]], rejected=2)
