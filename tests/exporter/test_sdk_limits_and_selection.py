"""The OpenTelemetry SDK's span limits act before selection and certification.

Past the attribute count limit (128 by default) the SDK drops a span's OLDEST
attributes first: the selecting one (``gen_ai.operation.name``, set as the span
starts) went first, and the span was then silently not selected: no record, nothing
declared, the trace's bundle verified complete.  Under a value length limit the SDK
truncates string values, and the bundle certified them as if whole.  Nothing can
say what was dropped, so both are warnings (README, "Faults and hostile input").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from exporter_support import FakeClock, Recorder, make_exporter, signing_key
from opentelemetry.sdk.trace import SpanLimits

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

LOGGER = "spanproof"


def _pushed_over_the_count_limit(rec: Recorder) -> None:
    """An evidence span whose selecting attribute, set at its start, the SDK drops
    when four more are set on a provider allowing four."""
    with rec.tracer.start_as_current_span(
            "classify", attributes={"gen_ai.operation.name": "chat"}) as span:
        for n in range(4):
            span.set_attribute(f"app.step.{n}", n)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[SpanproofSpanExporter]:
    exporter = make_exporter(tmp_path / "out", FakeClock())
    try:
        yield exporter
    finally:
        exporter.shutdown()


def test_exporter_warns_of_a_span_not_selected_that_lost_attributes_to_the_count_limit(
        exporter: SpanproofSpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(span_limits=SpanLimits(max_span_attributes=4))
    _pushed_over_the_count_limit(rec)
    (span,) = rec.take()
    assert "gen_ai.operation.name" not in (span.attributes or {})  # dropped, oldest first
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exporter.export([span])
    (warning,) = _warnings(caplog, "was not selected")
    assert f"{span.context.span_id:016x}" in warning
    assert "1 of its attributes were dropped" in warning
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in warning and "SpanLimits" in warning
    assert "may have been among them" in warning


def test_exporter_warning_of_dropped_attributes_is_throttled(
        exporter: SpanproofSpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(span_limits=SpanLimits(max_span_attributes=4))
    for _ in range(3):
        _pushed_over_the_count_limit(rec)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exporter.export(rec.take())
        exporter.shutdown()
    assert len(_warnings(caplog, "was not selected")) == 1
    assert _warnings(caplog, "2 more warning(s) that name spans not selected that lost "
                             "attributes to a count limit were held back")


def test_exporter_says_nothing_of_spans_that_lost_no_attributes(
        exporter: SpanproofSpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(span_limits=SpanLimits(max_span_attributes=4))
    with rec.tracer.start_as_current_span("plain", attributes={"http.method": "GET"}):
        pass
    _pushed_over_the_count_limit(Recorder())  # the default limit, 128: nothing dropped
    with rec.tracer.start_as_current_span("llm", attributes={"gen_ai.operation.name": "chat"}):
        pass
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exporter.export(rec.take())
    assert _warnings(caplog, "") == []


def test_exporter_warns_once_of_the_value_length_limit(
        exporter: SpanproofSpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(span_limits=SpanLimits(max_attribute_length=15))
    for _ in range(2):
        with rec.tracer.start_as_current_span(
                "llm", attributes={"gen_ai.operation.name": "chat",
                                   "gen_ai.prompt": "a prompt longer than fifteen"}):
            pass
    (first, second) = rec.take()
    assert (first.attributes or {})["gen_ai.prompt"] == "a prompt longer"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exporter.export([first])
        exporter.export([second])
    (warning,) = _warnings(caplog, "value length limit")
    assert "of 15" in warning
    assert "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" in warning and "SpanLimits" in warning
    assert "truncated" in warning


def test_exporter_says_nothing_of_spans_without_a_value_length_limit(
        exporter: SpanproofSpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span(
            "llm", attributes={"gen_ai.operation.name": "chat", "gen_ai.prompt": "p" * 100}):
        pass
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exporter.export(rec.take())
    assert _warnings(caplog, "") == []


def _processor_run(tmp_path: Path, limits: SpanLimits, caplog: pytest.LogCaptureFixture,
                   *long_values: str) -> list[str]:
    """Run one span pushed over the count limit and evidence spans holding
    *long_values* through an EvidenceSpanProcessor under *limits*; the warnings."""
    rec = Recorder(span_limits=limits)
    processor = EvidenceSpanProcessor(tmp_path / "out", signing_key=signing_key())
    rec.provider.add_span_processor(processor)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _pushed_over_the_count_limit(rec)
        for value in long_values:
            with rec.tracer.start_as_current_span(
                    "llm", attributes={"gen_ai.operation.name": "chat", "prompt": value}):
                pass
        assert processor.force_flush(30_000)
        rec.provider.shutdown()
    return _warnings(caplog, "")


def test_processor_warns_of_a_span_not_selected_that_lost_attributes_to_the_count_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warnings = _processor_run(tmp_path, SpanLimits(max_span_attributes=4), caplog)
    (warning,) = [w for w in warnings if "was not selected" in w]
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in warning
    assert not [w for w in warnings if "value length limit" in w]


def test_processor_warns_once_of_the_value_length_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warnings = _processor_run(tmp_path, SpanLimits(max_attribute_length=15), caplog,
                              "longer than fifteen", "longer than fifteen too")
    (warning,) = [w for w in warnings if "value length limit" in w]
    assert "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" in warning
    assert not [w for w in warnings if "was not selected" in w]  # 4 + 1 fit in 128


def test_processor_says_nothing_without_limits_that_act(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert _processor_run(tmp_path, SpanLimits(), caplog, "p" * 100) == []
