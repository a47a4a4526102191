"""SIGTERM to a sealing process seals the frames already written to its pipe.

The child treated SIGTERM as the end of its input but stopped reading at once: the
span frames the parent had written that it had not read yet were lost with it, and
the parent declared their spans as ``droppedSpans``.  Now it reads what its pipe
holds when the signal is handled, seals that too, and exits; a parent that goes on
writing does not keep it alive.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter_support import Recorder, evidence, record_span_ids, signing_key, trust_root, verified
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from processes import running

from spanproof.exporter import SpanproofSpanExporter
from spanproof.exporter._sealing_process import SealingProcess
from spanproof.verifier import BundleReport


def _exporter(out: Path) -> SpanproofSpanExporter:
    # A 30 s grace: the child holds its traces until it seals them for the signal.
    return SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=30.0,
                                 sealing_process=True)


def _only_process(exporter: SpanproofSpanExporter) -> SealingProcess:
    assert exporter._remote is not None
    (process,) = exporter._remote.processes
    return process


def _traces(rec: Recorder, count: int, size: int = 100) -> tuple[list[ReadableSpan], set[str]]:
    """*count* traces of a root and an evidence child with a *size*-byte attribute;
    their spans and the evidence spans' ids."""
    ids = set()
    for _ in range(count):
        with rec.tracer.start_as_current_span("handle-case"):
            with evidence(rec, "llm", **{"app.prompt": os.urandom(size // 2).hex()}) as span:
                ids.add(f"{span.get_span_context().span_id:016x}")
    return rec.take(), ids


@contextmanager
def _stopped(process: SealingProcess) -> Iterator[None]:
    """*process* stopped (its pipe fills), resumed at the end whatever happens."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if running(process.pid):
            os.kill(process.pid, signal.SIGCONT)


def _certified_and_declared(out: Path, tmp_path: Path) -> tuple[list[str], int]:
    """Every certified span id (once per record) and the spans declared lost, of
    the bundles below *out*, each of which must verify."""
    sealed: list[BundleReport] = verified(out, trust_root(tmp_path), allow_incomplete=True)
    certified = [span_id for report in sealed for span_id in record_span_ids(report)]
    declared = sum(report.statement.completeness.dropped_spans for report in sealed
                   if report.statement is not None)
    return certified, declared


def test_sigterm_seals_the_frames_the_child_had_not_read(tmp_path: Path) -> None:
    rec = Recorder()
    out = tmp_path / "out"
    exporter = _exporter(out)
    process = _only_process(exporter)
    exported: set[str] = set()
    with _stopped(process):
        for _ in range(8):  # eight frames, ~12 KB in all: the pipe holds them
            spans, ids = _traces(rec, 5, size=200)
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            exported |= ids
        os.kill(process.pid, signal.SIGTERM)
    assert process._proc.wait(30) == 0
    exporter.shutdown()  # finds the child gone: declares what it left unsettled
    certified, declared = _certified_and_declared(out, tmp_path)
    assert sorted(certified) == sorted(exported)  # each exactly once
    assert declared == 0


def test_sigterm_exits_promptly_while_the_parent_keeps_writing(tmp_path: Path) -> None:
    # Frames written before the signal are sealed; what the parent writes after it
    # does not keep the child reading: it exits, and those spans are sealed here
    # (a write the exit broke) or declared lost (a write it did not read).
    rec = Recorder()
    out = tmp_path / "out"
    exporter = _exporter(out)
    process = _only_process(exporter)
    before, before_ids = _traces(rec, 40, size=200)
    stop = threading.Event()
    exported: set[str] = set(before_ids)

    def keep_writing() -> None:
        give_up = time.monotonic() + 40  # longer than the child is waited for
        while not stop.is_set() and time.monotonic() < give_up:
            spans, ids = _traces(rec, 20, size=2000)
            exported.update(ids)
            exporter.export(spans)

    writer = threading.Thread(target=keep_writing, daemon=True)
    with _stopped(process):
        assert exporter.export(before) is SpanExportResult.SUCCESS
        os.kill(process.pid, signal.SIGTERM)
        writer.start()
        time.sleep(0.2)  # the writer fills the pipe and blocks on it
    try:
        assert process._proc.wait(20) == 0, "the writer kept the child alive"
    finally:
        stop.set()
        writer.join(60)
    assert not writer.is_alive()
    exporter.shutdown()
    certified, declared = _certified_and_declared(out, tmp_path)
    assert len(certified) == len(set(certified))  # none twice
    assert before_ids <= set(certified)
    assert set(certified) <= exported
    assert len(certified) + declared == len(exported)
