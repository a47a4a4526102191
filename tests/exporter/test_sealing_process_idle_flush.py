"""``SpanproofSpanExporter.force_flush()`` with sealing processes and nothing to flush:
True, whatever the timeout, as the in-process exporter and the SDK's own processors
answer (``SpanExporter.force_flush``: False only when the timeout is exceeded).  With a
zero timeout it answered False even when every span sent had long been sealed: it
asked each process and waited no time for the answer."""

from __future__ import annotations

import os
import signal
import threading
import time
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


def test_force_flush_is_not_true_while_an_export_is_still_writing_to_the_process(
    tmp_path: Path,
) -> None:
    # A span is counted as sent once its write returned: while an export was still
    # writing (the child stopped, its pipe full) nothing was unsettled, and
    # force_flush() answered True at once for spans it had not flushed.
    exporter = _exporter(tmp_path / "out", 1)
    child = exporter._remote.processes[0].pid if exporter._remote else 0
    rec = Recorder()
    for n in range(200):  # ~600 KB of frame that does not compress: more than a pipe holds
        with rec.tracer.start_as_current_span(f"handle-{n}"), \
                evidence(rec, "llm", **{"app.prompt": os.urandom(1500).hex()}):
            pass
    spans = rec.take()
    os.kill(child, signal.SIGSTOP)
    writer = threading.Thread(target=exporter.export, args=(spans,))
    try:
        writer.start()
        deadline = time.monotonic() + 30
        while not exporter._remote.processes[0]._lock.locked():  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the write is blocked on the full pipe
        assert writer.is_alive()
        assert exporter.force_flush(0) is False
    finally:
        os.kill(child, signal.SIGCONT)
        writer.join(30)
    try:
        assert exporter.force_flush(30_000) is True
        assert exporter.force_flush(0) is True
    finally:
        exporter.shutdown()


def test_force_flush_inside_an_export_of_its_own_thread_answers_false_at_once(
    tmp_path: Path,
) -> None:
    # A signal handler that interrupted an export() writing to the process, calling
    # force_flush(): it waited its whole timeout (a year for None) on the process
    # its own thread held.
    exporter = _exporter(tmp_path / "out", 1)
    try:
        assert exporter._remote is not None
        (process,) = exporter._remote.processes
        me = exporter._in_export.enter()
        try:
            with process._held():  # as the interrupted export's write holds it
                start = time.monotonic()
                assert exporter.force_flush(3000) is False
                assert time.monotonic() - start < 1.0
        finally:
            exporter._in_export.leave(me)
        assert exporter.force_flush(0) is True
    finally:
        exporter.shutdown()
