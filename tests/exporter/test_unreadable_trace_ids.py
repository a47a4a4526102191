"""Evidence spans whose trace id cannot be read are declared, not only logged.

The OpenTelemetry SDK ends and exports a span whose trace id is zero (a custom
``IdGenerator`` returning 0, or a hand-built span), and a span's context may fail to
be read at all.  Such a span has no canonical form (SPEC §2.4), and no trace to be
declared in.  It was logged and then lost: no bundle said so, though SPEC §5.3 says a
producer that learns of a loss it cannot attribute reports it in the next bundle it
seals.  Now the next bundle of any trace counts it in ``rejectedSpans``, with a note
that it may be another trace's, on every path: the exporter sealing in process, a
sealing process, and the ``EvidenceSpanProcessor``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    assert_declared_rejected,
    export_through_a_sealing_process,
    make_exporter,
    signing_key,
    span_hex,
)
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

NOTE = ("1 span(s) were rejected whose trace id could not be read (zero or malformed); "
        "they may be other traces'")


class ZeroTraceIds(RandomIdGenerator):
    """Span ids as usual, and trace id zero, which no record can carry."""

    def generate_trace_id(self) -> int:
        return 0


class UnreadableContext(ReadableSpan):
    """A span whose context raises when read."""

    def get_span_context(self) -> Any:
        raise RuntimeError("context went away")


def _batch() -> tuple[list[ReadableSpan], list[str]]:
    """A trace's root and child with a span of trace id zero between them, and the
    span ids of the two certifiable ones."""
    rec, zero = Recorder(), Recorder(id_generator=ZeroTraceIds())
    with rec.tracer.start_as_current_span("root") as root:
        with rec.tracer.start_as_current_span("child") as child:
            pass
    with zero.tracer.start_as_current_span("zero"):
        pass
    (zero_span,) = zero.take()
    child_span, root_span = rec.take()
    return [child_span, zero_span, root_span], [span_hex(child)[1], span_hex(root)[1]]


def test_a_span_of_trace_id_zero_is_declared_in_the_next_bundle(tmp_path: Path) -> None:
    spans, kept = _batch()
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=NOTE)


def test_a_span_whose_context_cannot_be_read_is_declared_in_the_next_bundle(
    tmp_path: Path
) -> None:
    spans, kept = _batch()
    unreadable = UnreadableContext(name="unreadable", attributes={"a": 1})
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    # Before: reading its trace id for the log message raised inside export(), and
    # the rest of the batch was lost with it.
    assert exporter.export([spans[0], unreadable, spans[2]]) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=NOTE)


def test_a_span_of_trace_id_zero_is_declared_by_the_sealing_process(tmp_path: Path) -> None:
    spans, kept = _batch()
    export_through_a_sealing_process(tmp_path / "out", spans)
    assert_declared_rejected(tmp_path / "out", tmp_path, kept, note=NOTE)


def test_a_span_of_trace_id_zero_is_declared_by_the_evidence_processor(
    tmp_path: Path
) -> None:
    processor = EvidenceSpanProcessor(tmp_path / "out", signing_key=signing_key(),
                                      select_all=True)
    rec, zero = Recorder(), Recorder(id_generator=ZeroTraceIds())
    rec.provider.add_span_processor(processor)
    zero.provider.add_span_processor(processor)
    try:
        with rec.tracer.start_as_current_span("root") as root:
            with rec.tracer.start_as_current_span("child") as child:
                pass
            # A root of its own (a child would take the current span's trace id).
            with zero.tracer.start_as_current_span("zero", context=Context()):
                pass
    finally:
        processor.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path,
                             [span_hex(child)[1], span_hex(root)[1]], note=NOTE)


def test_a_rejection_no_bundle_followed_is_logged_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spans, _ = _batch()
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    with caplog.at_level(logging.ERROR, logger="spanproof"):
        assert exporter.export([spans[1]]) is SpanExportResult.FAILURE
        exporter.shutdown()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert "1 span(s) of no known trace were lost or rejected" in caplog.text


def test_a_sealing_process_loss_is_never_declared_under_trace_id_zero(tmp_path: Path) -> None:
    # What a sealing process that dies held is declared in a bundle of the last trace
    # sent to it; a bundle of trace id zero would fail verification.
    spans, _ = _batch()
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     select_all=True, sealing_process=True)
    try:
        assert exporter.export([spans[0], spans[2]]) is SpanExportResult.SUCCESS
        assert exporter.export([spans[1]]) is SpanExportResult.SUCCESS
        assert exporter._remote is not None
        (process,) = exporter._remote.processes
        assert process.last_trace == span_hex(spans[0])[0]
    finally:
        exporter.shutdown()
