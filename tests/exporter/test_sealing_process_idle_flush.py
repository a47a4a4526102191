"""``SpanproofSpanExporter.force_flush()`` with sealing processes and nothing to flush:
True, whatever the timeout, as the in-process exporter and the SDK's own processors
answer (``SpanExporter.force_flush``: False only when the timeout is exceeded).  With a
zero timeout it answered False even when every span sent had long been sealed: it
asked each process and waited no time for the answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporter_support import Recorder, evidence, signing_key
from opentelemetry.sdk.trace.export import SpanExportResult

from spanproof.exporter import SpanproofSpanExporter


def _exporter(out: Path, processes: int) -> SpanproofSpanExporter:
    return SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=3600.0,
                                 sealing_process=processes)


@pytest.mark.parametrize("processes", [1, 2])
def test_force_flush_with_zero_timeout_and_nothing_pending_is_not_a_failure(
    tmp_path: Path, processes: int
) -> None:
    exporter = _exporter(tmp_path / "out", processes)
    try:
        assert exporter._remote is not None
        assert exporter.force_flush(0) is True  # nothing ever exported
        rec = Recorder()
        with rec.tracer.start_as_current_span("handle"), evidence(rec, "llm"):
            pass
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        assert exporter.force_flush(10_000) is True
        assert exporter.force_flush(0) is True  # everything sent is sealed already
    finally:
        exporter.shutdown()
    assert exporter.force_flush(0) is False  # after shutdown, as before


def test_force_flush_with_zero_timeout_is_false_while_a_sent_trace_is_pending(
    tmp_path: Path,
) -> None:
    exporter = _exporter(tmp_path / "out", 1)
    try:
        rec = Recorder()
        with rec.tracer.start_as_current_span("handle"), evidence(rec, "llm"):
            pass
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        # The trace waits for its grace in the process: not sealed yet.
        assert exporter.force_flush(0) is False
        assert exporter.force_flush(10_000) is True
        assert exporter.force_flush(0) is True
    finally:
        exporter.shutdown()
