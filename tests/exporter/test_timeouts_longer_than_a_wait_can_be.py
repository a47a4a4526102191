"""force_flush() and shutdown() with a timeout of no limit: None, sys.maxsize, infinity.

Such a timeout went straight into the waits, which raised OverflowError
(threading.TIMEOUT_MAX is about 292 years): shutdown() had marked the exporter shut
down before it raised, so every pending trace was lost, and a later shutdown() did
nothing; force_flush() raised (with a sealing process) or logged a traceback and
answered False; force_flush(None), as the SDK's BatchSpanProcessor takes it, was a
TypeError.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from exporter_support import Recorder, evidence, signing_key, trust_root, verified

from spanproof.exporter import SpanproofSpanExporter

NO_LIMIT = [None, sys.maxsize, math.inf]


def _exporter_holding_a_trace(out: Path, *, sealing_process: bool = False
                              ) -> SpanproofSpanExporter:
    """An exporter holding one ended trace, not due for an hour."""
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"), evidence(rec, "llm"):
        pass
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=3600,
                                     sealing_process=sealing_process or None)
    exporter.export(rec.take())
    return exporter


@pytest.mark.parametrize("timeout", NO_LIMIT)
def test_shutdown_with_no_time_limit_seals_the_pending_traces(
        tmp_path: Path, timeout: float | None) -> None:
    out = tmp_path / "bundles"
    exporter = _exporter_holding_a_trace(out)
    exporter.shutdown(timeout)
    (report,) = verified(out, trust_root(tmp_path))
    assert report.statement is not None and report.statement.seal_reason == "shutdown"


@pytest.mark.parametrize("timeout", NO_LIMIT)
def test_force_flush_with_no_time_limit_seals_and_answers_true(
        tmp_path: Path, timeout: float | None) -> None:
    out = tmp_path / "bundles"
    exporter = _exporter_holding_a_trace(out)
    try:
        assert exporter.force_flush(timeout) is True
        (report,) = verified(out, trust_root(tmp_path))
        assert report.statement is not None
        assert report.statement.seal_reason == "force_flush"
    finally:
        exporter.shutdown()


def test_a_sealing_process_flushes_and_shuts_down_with_no_time_limit(tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    exporter = _exporter_holding_a_trace(out, sealing_process=True)
    try:
        assert exporter.force_flush(sys.maxsize) is True
        assert len(verified(out, trust_root(tmp_path))) == 1
    finally:
        exporter.shutdown(sys.maxsize)
    assert exporter._remote is None
