"""select_spans: the per-span work of every export reads SDK spans and any other
ReadableSpan alike (selection, local roots, spans that cannot be read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from spanproof.exporter import EVIDENCE_ATTRIBUTE, AttributeSelector
from spanproof.exporter._exporter import select_spans

REMOTE = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def sdk_spans() -> list[ReadableSpan]:
    """Spans as the SDK hands them to its processors: a local root with an evidence
    child, a plain child, a marked child and an excluded one, and a span whose parent
    is remote (a local root too)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", attributes={"app.step": "x"}):
        with tracer.start_as_current_span("llm", attributes={"gen_ai.operation.name": "chat"}):
            pass
        with tracer.start_as_current_span("plain", attributes={"http.method": "GET"}):
            pass
        with tracer.start_as_current_span("marked", attributes={EVIDENCE_ATTRIBUTE: True}):
            pass
        with tracer.start_as_current_span(
            "excluded", attributes={EVIDENCE_ATTRIBUTE: False, "gen_ai.operation.name": "chat"}
        ):
            pass
    with tracer.start_as_current_span(
        "served", context=set_span_in_context(NonRecordingSpan(REMOTE)),
        attributes={"openinference.span.kind": "LLM"},
    ):
        pass
    spans = list(memory.get_finished_spans())
    assert {type(s) for s in spans} == {ReadableSpan}
    return spans


class Wrapped:
    """A span that is not the SDK's ReadableSpan: only the public interface."""

    def __init__(self, span: ReadableSpan) -> None:
        self._span = span

    @property
    def attributes(self) -> Mapping[str, Any] | None:
        return self._span.attributes

    @property
    def parent(self) -> SpanContext | None:
        return self._span.parent

    def get_span_context(self) -> SpanContext | None:
        return self._span.get_span_context()


class Unreadable(Wrapped):
    @property
    def parent(self) -> SpanContext | None:
        raise RuntimeError("broken span")


def names(spans: Sequence[Any]) -> list[str]:
    return [s._span.name if isinstance(s, Wrapped) else s.name for s in spans]


def trace_hex(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}"


def test_sdk_spans_are_selected_by_the_rules_and_local_roots_found() -> None:
    spans = sdk_spans()
    selected, roots, failed = select_spans(AttributeSelector(), spans)
    assert names(selected) == ["llm", "marked", "served"]
    by_name = {s.name: s for s in spans}
    assert roots == [trace_hex(by_name["root"]), f"{REMOTE.trace_id:032x}"]
    assert failed == 0


@pytest.mark.parametrize("selector", [AttributeSelector(), AttributeSelector(select_all=True),
                                      AttributeSelector(("http.method",))],
                         ids=["default", "select-all", "configured-key"])
def test_other_span_types_are_read_as_sdk_spans_are(selector: AttributeSelector) -> None:
    spans = sdk_spans()
    wrapped = [Wrapped(s) for s in spans]
    selected, roots, failed = select_spans(selector, spans)
    selected_w, roots_w, failed_w = select_spans(selector, wrapped)
    assert names(selected_w) == names(selected)
    assert (roots_w, failed_w) == (roots, failed) and roots


def test_a_readable_span_holding_a_plain_dict_is_selected() -> None:
    span = ReadableSpan(name="made-by-hand", attributes={"gen_ai.operation.name": "chat"},
                        context=SpanContext(0x1, 0x2, is_remote=False))
    assert select_spans(AttributeSelector(), [span])[0] == [span]


def test_a_span_that_cannot_be_read_is_counted_and_the_rest_still_selected() -> None:
    spans = sdk_spans()
    broken = Unreadable(spans[0])
    selected, roots, failed = select_spans(AttributeSelector(), [broken, *spans])
    assert failed == 1
    assert names(selected) == ["llm", "marked", "served"]
    assert len(roots) == 2
