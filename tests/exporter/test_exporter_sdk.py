"""SpanproofSpanExporter: from SDK spans to bundle files that verify offline."""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    by_trace,
    declared_rejections,
    evidence,
    make_exporter,
    record_span_ids,
    reports,
    signing_key,
    span_hex,
    trust_root,
    verified,
)
from no_threads import refuse_new_threads
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.span import NonRecordingSpan

from spanproof.exporter import DirectorySink, SealedBundle, SpanproofSpanExporter
from spanproof.verifier import link_segments, verify_bundle


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *predicate* until it holds or *timeout* seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def bundle_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spanproof.json"))


def build_trace(
    rec: Recorder, evidence_steps: int = 3, plain_steps: int = 2
) -> tuple[str, list[str]]:
    """One trace: a plain root with evidence and plain children.  Returns the trace
    id and the evidence span ids in end order."""
    selected = []
    with rec.tracer.start_as_current_span("handle-case") as root:
        for i in range(max(evidence_steps, plain_steps)):
            if i < evidence_steps:
                with evidence(rec, f"llm-{i}") as span:
                    selected.append(f"{span.get_span_context().span_id:016x}")
            if i < plain_steps:
                with rec.tracer.start_as_current_span(f"db-{i}"):
                    pass
    return f"{root.get_span_context().trace_id:032x}", selected


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "bundles"


def test_trace_split_over_many_batches_is_one_bundle(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    trace_id, selected = build_trace(rec, evidence_steps=10, plain_steps=5)
    spans = rec.take()
    assert len(spans) == 16
    exporter = make_exporter(out, clock)
    for i in range(0, len(spans), 3):
        assert exporter.export(spans[i : i + 3]) is SpanExportResult.SUCCESS
        clock.advance(0.1)
    clock.advance(2.0)
    assert exporter.force_flush()
    (path,) = bundle_files(out)
    proven = verify_bundle(path, trust_root(out.parent))
    assert proven.statement.trace_id == trace_id
    assert proven.statement.segment_index == 0
    assert proven.statement.seal_reason == "root_ended"
    assert proven.records is not None
    assert [r["span"]["spanId"] for r in proven.records] == selected
    assert proven.statement.sealed_at == datetime.fromtimestamp(clock.now, timezone.utc)
    exporter.shutdown()
    assert bundle_files(out) == [path]


def test_producer_identity(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    build_trace(rec)
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None
    producer = report.statement.producer
    assert producer == exporter.producer
    assert producer.name == "spanproof-exporter"
    assert producer.version == metadata.version("spanproof")
    assert len(producer.instance) == 16 and int(producer.instance, 16) >= 0
    assert report.statement.seal_reason == "shutdown"


def test_non_selected_spans_never_appear(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    expected: dict[str, list[str]] = {}
    for _ in range(3):
        trace_id, selected = build_trace(rec, evidence_steps=2, plain_steps=3)
        expected[trace_id] = selected
    with rec.tracer.start_as_current_span("no-evidence-root"):
        with rec.tracer.start_as_current_span("plain-child", attributes={"gen_ai.system": "x"}):
            pass
    with rec.tracer.start_as_current_span(
        "excluded", attributes={"gen_ai.operation.name": "chat", "spanproof.evidence": False}
    ) as excluded:
        pass
    spans = rec.take()
    exporter = make_exporter(out, clock)
    exporter.export(spans)
    exporter.shutdown()
    found = by_trace(verified(out, trust_root(out.parent)))
    certified = {t: [sid for r in rs for sid in record_span_ids(r)] for t, rs in found.items()}
    assert certified == expected
    assert span_hex(excluded)[0] not in found  # type: ignore[arg-type]


def test_marker_selects_a_span_without_conventions(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("decision", attributes={"spanproof.evidence": True}):
        pass
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.records is not None and report.records[0]["span"]["name"] == "decision"


def test_configured_selection(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with rec.tracer.start_as_current_span("policy", attributes={"app.policy": "refund"}):
            pass
        with evidence(rec, "llm"):
            pass
    exporter = make_exporter(out, clock, select_attributes=["app.policy"])
    exporter.export(rec.take())
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.records is not None
    assert [r["span"]["name"] for r in report.records] == ["policy"]


def test_remote_parent_counts_as_local_root(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    remote = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True,
                                          trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    with rec.tracer.start_as_current_span("server", context=trace.set_span_in_context(remote)):
        with evidence(rec, "llm"):
            pass
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    clock.advance(2.0)
    assert exporter.force_flush()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "root_ended"
    exporter.shutdown()


def test_spans_exported_at_interpreter_exit_are_sealed_by_shutdown(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A short script's first export comes from the provider's atexit shutdown, where
    # Python 3.12 lets no thread start: neither the sealer nor the writer.
    rec = Recorder()
    trace_id, selected = build_trace(rec)
    exporter = make_exporter(out, clock)
    refuse_new_threads(monkeypatch)
    monkeypatch.setattr(sys, "is_finalizing", lambda: True)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.trace_id == trace_id
    assert report.statement.seal_reason == "shutdown"
    assert record_span_ids(report) == selected
    assert "sealer thread" not in caplog.text  # exiting: nothing to warn about


def test_without_a_sealer_thread_force_flush_seals_and_the_next_export_starts_one(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    exporter = make_exporter(out, clock)
    with monkeypatch.context() as patch:
        refuse_new_threads(patch)
        first, _ = build_trace(rec)
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        second, _ = build_trace(rec)
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        assert exporter.force_flush()
    assert caplog.text.count("cannot start the sealer thread") == 1  # once, not per export
    sealed = {r.statement.trace_id: r.statement.seal_reason
              for r in verified(out, trust_root(out.parent)) if r.statement is not None}
    assert sealed == {first: "force_flush", second: "force_flush"}
    build_trace(rec)
    exporter.export(rec.take())  # threads may start again
    assert exporter._thread is not None and exporter._thread.is_alive()
    exporter.shutdown()
    assert len(bundle_files(out)) == 3


def _flush_interrupted_by_shutdown(
    out: Path, clock: FakeClock, where: str, then: str
) -> tuple[SpanproofSpanExporter, dict[str, str], list[float]]:
    """One finished trace (force_flush seals it) and one open one (only shutdown
    does); force_flush() interrupted, as by a signal handler, by shutdown() at
    *where* (``"seal"``: while it signs; ``"queue"``: while it holds the write
    queue's lock), the handler then returning (*then* ``"return"``) or raising
    SystemExit (``"exit"``, as ``sys.exit`` does).  The exporter, the traces by
    name, and how long the handler's shutdown() took."""
    rec = Recorder()
    with evidence(rec, "finished"):
        pass
    root = rec.tracer.start_span("still-running")
    with rec.tracer.start_as_current_span("step", context=trace.set_span_in_context(root),
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    root.end()  # after the step: its trace is exported as open
    exporter = make_exporter(out, clock)
    spans = [s for s in rec.take() if s.name != "still-running"]
    traces = {s.name: span_hex(s)[0] for s in spans}
    exporter.export(spans)
    took: list[float] = []

    def handler() -> None:
        if took:
            return
        began = time.monotonic()
        exporter.shutdown(timeout_millis=1000)
        took.append(time.monotonic() - began)
        if then == "exit":
            raise SystemExit(0)

    if where == "seal":
        real_seal = exporter._seal

        def interrupted(job: Any) -> SealedBundle:
            handler()
            return real_seal(job)

        exporter._seal = interrupted  # type: ignore[method-assign]
    elif where == "write":  # sealed, not yet handed to the writer
        real_start = exporter._start_writes

        def start_interrupted(deadline: float | None = None) -> None:
            handler()
            real_start(deadline)

        exporter._start_writes = start_interrupted  # type: ignore[method-assign]
    elif where == "lock":  # the seal lock just taken, the pass not yet begun
        class Interrupting:
            def __init__(self, lock: Any) -> None:
                self.lock = lock

            def acquire(self, *args: Any, **kwargs: Any) -> bool:
                got = self.lock.acquire(*args, **kwargs)
                if got:
                    handler()
                return bool(got)

            def release(self) -> None:
                self.lock.release()

        exporter._seal_lock = Interrupting(exporter._seal_lock)  # type: ignore[assignment]
    else:
        class Interrupted(collections.deque):  # type: ignore[type-arg]
            def extend(self, items: Any) -> None:  # under the write queue's lock
                super().extend(items)
                handler()

        exporter._inflight = Interrupted()
    try:
        exporter.force_flush()
    except SystemExit:
        assert then == "exit"
    return exporter, traces, took


@pytest.mark.parametrize("where, then, pending", [
    ("seal", "return", 2), ("seal", "exit", 2), ("write", "exit", 1), ("queue", "return", 1),
    ("queue", "exit", 1),
    # Taken before the pass counted its thread inside: the handler's shutdown waited
    # its whole deadline for the lock its own thread held.
    ("lock", "return", 2)])
def test_shutdown_from_a_signal_handler_during_force_flush_seals_when_the_flush_ends(
    out: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, where: str, then: str,
    pending: int,
) -> None:
    # A SIGTERM handler that shuts the provider down may interrupt force_flush() on
    # its own thread, inside a sealing pass: shutdown waited its whole deadline for
    # the seal lock that pass held, then left every pending trace unsealed; draining
    # from inside the handler instead deadlocked when the pass held another lock.
    with caplog.at_level(logging.WARNING):
        exporter, traces, took = _flush_interrupted_by_shutdown(out, clock, where, then)
    assert took[0] < 1.0  # returned at once: nothing it waits for can move meanwhile
    assert "shutdown() called inside a sealing pass of its own thread (a signal handler " \
        f"that interrupted force_flush()?): it seals the {pending} pending trace(s) once that " \
        "pass ends, when the handler returns or raises; exiting at once (os._exit) " \
        "loses them" in caplog.text
    assert exporter._shutdown and exporter._thread is not None
    assert not exporter._thread.is_alive()
    sealed = {r.statement.trace_id: r.statement.seal_reason
              for r in verified(out, trust_root(out.parent)) if r.statement}
    assert sealed == {traces["step"]: "shutdown", traces["finished"]: "force_flush"}
    assert "shutdown incomplete" not in caplog.text


@pytest.mark.parametrize("then", ["return", "exit"])
def test_shutdown_from_a_signal_handler_during_export_seals_when_the_export_returns(
    out: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    # A SimpleSpanProcessor exports on the thread that ends the span, so a SIGTERM
    # handler that shuts the provider down may interrupt export() on its own thread
    # while it holds the assembler's lock: shutdown() waited for that lock forever.
    rec = Recorder()
    with evidence(rec, "finished"):
        pass
    with evidence(rec, "other"):
        pass
    spans = rec.take()
    traces = {s.name: span_hex(s)[0] for s in spans}
    exporter = make_exporter(out, clock)
    took: list[float] = []
    real_add = exporter._assembler.add

    def add_interrupted(*args: Any, **kwargs: Any) -> bool:
        woke = real_add(*args, **kwargs)
        if not took:  # the handler, once, after the first span is admitted
            began = time.monotonic()
            exporter.shutdown(timeout_millis=1000)
            took.append(time.monotonic() - began)
            if then == "exit":
                raise SystemExit(0)
        return woke

    exporter._assembler.add = add_interrupted  # type: ignore[method-assign]
    outcome: list[object] = []

    def export() -> None:
        try:
            outcome.append(exporter.export(spans))
        except SystemExit:
            outcome.append("exit")

    with caplog.at_level(logging.WARNING):
        exporting = threading.Thread(target=export, daemon=True)
        exporting.start()
        exporting.join(20)
        assert not exporting.is_alive(), "shutdown() inside export() deadlocked"
    assert took[0] < 1.0
    assert "shutdown() called inside an export() of its own thread" in caplog.text
    assert exporter._shutdown
    sealed = {r.statement.trace_id: r.statement.seal_reason
              for r in verified(out, trust_root(out.parent)) if r.statement}
    if then == "return":  # the export went on: both spans sealed at shutdown
        assert outcome == [SpanExportResult.SUCCESS]
        assert sealed == {traces["finished"]: "shutdown", traces["other"]: "shutdown"}
    else:  # unwound after the first span, which the shutdown sealed
        assert outcome == ["exit"]
        assert sealed == {traces["finished"]: "shutdown"}
    assert "shutdown incomplete" not in caplog.text


def _slowly_sealing(
    out: Path, clock: FakeClock, traces: int, seconds: float
) -> tuple[SpanproofSpanExporter, set[str]]:
    """An exporter holding *traces* finished one-span traces, each of whose seals
    takes *seconds* more (a slow signature); and their trace ids."""
    rec = Recorder()
    ids = {build_trace(rec, evidence_steps=1, plain_steps=0)[0] for _ in range(traces)}
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    real_seal = exporter._seal

    def slow_seal(job: Any) -> SealedBundle:
        time.sleep(seconds)
        return real_seal(job)

    exporter._seal = slow_seal  # type: ignore[method-assign]
    return exporter, ids


def test_force_flush_returns_at_its_timeout_and_the_sealer_seals_what_is_left(
    out: Path, clock: FakeClock
) -> None:
    # Every due trace was signed before the timeout was looked at: a thousand due
    # traces made force_flush(100) take a second and a half.
    exporter, traces = _slowly_sealing(out, clock, 12, 0.2)  # twelve seals take 2.4 s
    began = time.monotonic()
    assert exporter.force_flush(timeout_millis=100) is False
    assert time.monotonic() - began < 1.5  # the timeout, one signature, the writes
    assert len(bundle_files(out)) < 12  # the others are left to the sealer
    deadline = time.monotonic() + 30  # the sealer seals the rest on its own
    while len(bundle_files(out)) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r.statement.trace_id for r in verified(out, trust_root(out.parent))
            if r.statement} == traces
    exporter.shutdown()


def test_an_exit_raised_into_a_custom_sink_s_write_writes_each_bundle_once(
    out: Path, clock: FakeClock
) -> None:
    # The bundles of a pass stayed listed as unwritten until the whole pass was
    # handed over: an exit raised into the second write had the shutdown that
    # followed write (and account for, and submit) the first one again.
    written: list[str] = []
    exporter: SpanproofSpanExporter

    class Interrupting(DirectorySink):
        def write(self, bundle: SealedBundle) -> str:
            if len(written) == 1 and not exporter._shutdown:
                exporter.shutdown(timeout_millis=1000)  # a SIGTERM handler's, here
                raise SystemExit(0)
            path = super().write(bundle)
            written.append(os.path.basename(path))
            return path

    rec = Recorder()
    traces = {build_trace(rec, evidence_steps=1, plain_steps=0)[0] for _ in range(3)}
    exporter = make_exporter(out, clock, sink=Interrupting(out))
    exporter.export(rec.take())
    with pytest.raises(SystemExit):
        exporter.force_flush()
    assert sorted(written) == sorted(set(written)) and len(written) == 3
    assert {r.statement.trace_id for r in verified(out, trust_root(out.parent))
            if r.statement} == traces


def test_shutdown_seals_every_pending_trace_it_took_even_past_its_deadline(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A segment a timed pass leaves is sealed by the next pass; after shutdown's
    # drain there is none, so the drain must not leave any.
    from spanproof.exporter import _exporter as exporter_module

    monkeypatch.setattr(exporter_module, "_MIN_SHUTDOWN_SECONDS", 0.2)
    exporter, traces = _slowly_sealing(out, clock, 5, 0.1)
    exporter.shutdown(timeout_millis=0)
    deadline = time.monotonic() + 10  # the writes past the deadline finish behind it
    while len(bundle_files(out) if out.exists() else []) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r.statement.trace_id for r in verified(out, trust_root(out.parent))
            if r.statement} == traces


def test_spans_that_cannot_be_certified_are_warned_about_once_a_minute(
    out: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # One oversized attribute on every request made one warning per request.
    rec = Recorder()
    exporter = make_exporter(out, clock, max_value_bytes=1024)

    def oversized(n: int) -> None:
        for _ in range(n):
            with evidence(rec, "llm", **{"gen_ai.prompt": "x" * 2000}):
                pass
        exporter.export(rec.take())

    with caplog.at_level(logging.WARNING, logger="spanproof.exporter._exporter"):
        oversized(30)
        assert caplog.text.count("cannot certify span") == 1
        exporter._span_warnings._next = float("-inf")  # a minute later
        oversized(1)
        oversized(2)  # held back: said at shutdown, as no later warning will
        exporter.shutdown()
    assert caplog.text.count("cannot certify span") == 2
    assert "(29 more such warnings held back since the last, one per 60 s)" in caplog.text
    assert "spanproof: 2 more warning(s) that name spans that cannot be certified were " \
        "held back" in caplog.text
    rejected = [r.statement.completeness.rejected_spans
                for r in reports(out, trust_root(out.parent)) if r.statement]
    assert sum(rejected) == 33  # every one declared all the same


def test_a_long_open_trace_is_sealed_in_segments_of_bounded_size(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanproof.exporter import assembly

    monkeypatch.setattr(assembly, "MAX_SEGMENT_BYTES", 5000)
    rec = Recorder()
    exporter = make_exporter(out, clock)
    session = rec.tracer.start_span("agent-session")  # open for the whole test
    for _ in range(4):
        with rec.tracer.start_as_current_span(
                "llm", context=trace.set_span_in_context(session),
                attributes={"gen_ai.operation.name": "chat", "gen_ai.prompt": "p" * 2000}):
            pass
    exporter.export(rec.take())
    assert exporter.force_flush()  # no root ended: only the size is due
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None
    assert (report.statement.seal_reason, report.statement.record_count) == ("size_limit", 3)
    session.end()
    exporter.export(rec.take())
    exporter.shutdown()
    reports = verified(out, trust_root(out.parent))
    assert sorted(r.statement.record_count for r in reports if r.statement) == [1, 3]
    (link,) = link_segments(reports)
    assert link.ok and link.segments == (0, 1)


def test_force_flush_does_not_cut_open_traces(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    root = rec.tracer.start_span("still-running")
    with evidence(rec, "finished-root"):  # a whole trace in one span
        pass
    with rec.tracer.start_as_current_span("step", context=trace.set_span_in_context(root),
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())  # one finished trace (its root ended) and one open
    assert exporter.force_flush()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "force_flush"
    root.end()
    exporter.export(rec.take())
    exporter.shutdown()
    assert len(bundle_files(out)) == 2


def test_many_concurrent_traces_from_several_threads(out: Path) -> None:
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.05)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("threads")
    expected: dict[str, list[str]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                with tracer.start_as_current_span(f"root-{n}-{i}") as root:
                    ids = []
                    for j in range(3):
                        with tracer.start_as_current_span(
                            f"llm-{j}", attributes={"gen_ai.operation.name": "chat"}
                        ) as span:
                            ids.append(f"{span.get_span_context().span_id:016x}")
                        with tracer.start_as_current_span("plain"):
                            pass
                with lock:
                    expected[f"{root.get_span_context().trace_id:032x}"] = ids
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    provider.shutdown()  # shuts the exporter down: everything is sealed
    found = by_trace(verified(out, trust_root(out.parent)))
    assert len(expected) == 90
    assert set(found) == set(expected)
    for trace_id, group in found.items():
        assert len(group) == 1, trace_id  # one trace, one bundle
        assert record_span_ids(group[0]) == expected[trace_id]


def seal_late_span(rec: Recorder, root: Any, exporter: SpanproofSpanExporter,
                   clock: FakeClock) -> None:
    """End a late evidence span under *root* (already sealed), export and seal it."""
    late = rec.tracer.start_span("late-tool-call", context=trace.set_span_in_context(root),
                                 attributes={"gen_ai.operation.name": "execute_tool"})
    late.end()
    exporter.export(rec.take())
    clock.advance(3.0)
    assert exporter.force_flush()


def test_late_span_starts_a_linked_continuation(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("root") as root:
        with evidence(rec, "llm"):
            pass
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    clock.advance(3.0)
    assert exporter.force_flush()
    (first,) = bundle_files(out)
    seal_late_span(rec, root, exporter, clock)
    exporter.shutdown()
    rs = verified(out, trust_root(out.parent))
    segments = {r.statement.segment_index: r for r in rs if r.statement}
    assert sorted(segments) == [0, 1]
    assert segments[0].source == str(first)
    second = segments[1].statement
    assert second is not None
    assert second.previous_statement == segments[0].statement_digest
    assert second.first_seq == 1
    assert [r["span"]["name"] for r in segments[1].records or ()] == ["late-tool-call"]
    (link,) = link_segments(rs)
    assert link.ok, link.message
    assert link.segments == (0, 1)


def test_late_span_of_a_forgotten_trace_continues_its_chain_from_disk(
    out: Path, clock: FakeClock
) -> None:
    # With room to remember one sealed trace, sealing a second one forgets the first;
    # a late span of the first must still continue its chain (the segment on disk),
    # not start a second segment 0, which fails the trace.
    rec = Recorder()
    exporter = make_exporter(out, clock, sealed_trace_memory=1)
    roots = []
    for name in ("first", "second"):
        with rec.tracer.start_as_current_span(name) as root:
            with evidence(rec, "llm"):
                pass
        roots.append(root)
        exporter.export(rec.take())
        clock.advance(3.0)
        assert exporter.force_flush()
    seal_late_span(rec, roots[0], exporter, clock)
    exporter.shutdown()
    rs = verified(out, trust_root(out.parent))
    first_trace = f"{roots[0].get_span_context().trace_id:032x}"
    segments = sorted((r.statement.segment_index, [x["span"]["name"] for x in r.records or ()])
                      for r in rs if r.statement and r.statement.trace_id == first_trace)
    assert segments == [(0, ["llm"]), (1, ["late-tool-call"])]
    assert all(link.ok for link in link_segments(rs)), [link.message for link in link_segments(rs)]


def test_new_traces_do_not_look_at_the_disk_until_a_sealed_trace_was_forgotten(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lookup for a forgotten trace's chain costs a stat per new trace: it is
    # only needed once sealed_trace_memory has overflowed.
    from spanproof.exporter import _recovery

    looked_up: list[str] = []
    original = _recovery._written_segments

    def recording(trace_id: str, *args: Any) -> Any:
        looked_up.append(trace_id)
        return original(trace_id, *args)

    monkeypatch.setattr(_recovery, "_written_segments", recording)
    rec = Recorder()
    exporter = make_exporter(out, clock, sealed_trace_memory=2)
    for name in ("first", "second", "third", "fourth"):
        with rec.tracer.start_as_current_span(name):
            with evidence(rec, "llm"):
                pass
        exporter.export(rec.take())
        clock.advance(3.0)
        assert exporter.force_flush()
    exporter.shutdown()
    # Sealing the third trace forgot the first; only the fourth is looked up.
    assert len(looked_up) == 1
    assert len(verified(out, trust_root(out.parent))) == 4


def test_size_limit_seals_linked_segments(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    trace_id, selected = build_trace(rec, evidence_steps=7, plain_steps=0)
    exporter = make_exporter(out, clock, max_records=3)
    exporter.export(rec.take())
    clock.advance(2.0)
    assert exporter.force_flush()
    exporter.shutdown()
    rs = by_trace(verified(out, trust_root(out.parent)))[trace_id]
    assert [r.statement.seal_reason for r in rs if r.statement] == [
        "size_limit", "size_limit", "root_ended",
    ]
    assert [sid for r in rs for sid in record_span_ids(r)] == selected
    (link,) = link_segments(rs)
    assert link.ok and link.segments == (0, 1, 2)


def test_root_end_seals_in_the_background(out: Path) -> None:
    rec = Recorder()
    build_trace(rec)
    calls: list[str] = []

    class ThreadRecordingSink:
        def __init__(self) -> None:
            from spanproof.exporter import DirectorySink

            self.inner = DirectorySink(out)

        def write(self, bundle: SealedBundle) -> str:
            calls.append(threading.current_thread().name)
            return self.inner.write(bundle)

    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=0.05,
                                     sink=ThreadRecordingSink())
    exporter.export(rec.take())
    assert wait_for(lambda: len(bundle_files(out)) == 1)
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "root_ended"
    assert calls == ["spanproof-sealer"]  # written by the sealer, not by export()
    exporter.shutdown()


def test_idle_timeout_seals_in_the_background(out: Path) -> None:
    rec = Recorder()
    root = rec.tracer.start_span("never-ends")
    with rec.tracer.start_as_current_span("step", context=trace.set_span_in_context(root),
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=60.0,
                                     idle_timeout=0.1)
    exporter.export(rec.take())
    assert wait_for(lambda: len(bundle_files(out)) == 1)
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "idle_timeout"
    exporter.shutdown()
    assert len(bundle_files(out)) == 1


def test_idle_timeout_with_injected_clock(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    root = rec.tracer.start_span("never-ends")
    with rec.tracer.start_as_current_span("step", context=trace.set_span_in_context(root),
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    exporter = make_exporter(out, clock, idle_timeout=30.0)
    exporter.export(rec.take())
    clock.advance(29.0)
    assert exporter.force_flush() and bundle_files(out) == []
    clock.advance(1.0)
    assert exporter.force_flush()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "idle_timeout"
    exporter.shutdown()


def test_shutdown_seals_pending_and_is_idempotent(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    root = rec.tracer.start_span("unfinished")
    with rec.tracer.start_as_current_span("step", context=trace.set_span_in_context(root),
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    assert bundle_files(out) == []
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "shutdown"
    exporter.shutdown()
    exporter.shutdown()
    assert len(bundle_files(out)) == 1


def test_after_shutdown_export_fails_without_raising(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    build_trace(rec)
    exporter = make_exporter(out, clock)
    exporter.shutdown()
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    assert exporter.force_flush() is False
    assert bundle_files(out) == []


class _ExplodingSpan(ReadableSpan):
    @property
    def attributes(self) -> Any:
        raise RuntimeError("attributes unavailable")


def test_broken_span_objects_do_not_raise(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    _, selected = build_trace(rec, evidence_steps=1, plain_steps=0)
    good = rec.take()
    broken: list[Any] = [object(), None, _ExplodingSpan("x")]
    exporter = make_exporter(out, clock)
    assert exporter.export(broken + good) is SpanExportResult.FAILURE
    assert exporter.export(None) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert record_span_ids(report) == selected


def test_unnormalizable_selected_span_is_declared_rejected(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    _, selected = build_trace(rec, evidence_steps=2, plain_steps=0)
    spans = rec.take()
    ctx = spans[0].get_span_context()
    assert ctx is not None
    attributes: Any = {"gen_ai.operation.name": "chat", "obj": object()}
    bad = ReadableSpan(
        "bad-value", context=SpanContext(ctx.trace_id, 0x77, False),
        parent=spans[-1].get_span_context(),
        attributes=attributes,
        start_time=1, end_time=2,
    )
    exporter = make_exporter(out, clock)
    assert exporter.export([*spans[:-1], bad, spans[-1]]) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert declared_rejections(out, trust_root(out.parent)) == (1, selected)


def test_lone_surrogate_span_is_rejected_and_the_rest_certified(
    out: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        with evidence(rec, "ok") as ok:
            pass
        with evidence(rec, "bad", prompt="half a pair \ud800"):
            pass
    exporter = make_exporter(out, clock)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert "1 span(s) of trace" in caplog.text and "rejected at sealing" in caplog.text
    (report,) = verified(out, trust_root(out.parent), allow_incomplete=True)
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 1
    assert any("lone surrogate" in n for n in report.statement.completeness.notes)
    assert record_span_ids(report) == [span_hex(ok)[1]]


def test_failing_sink_is_retried(out: Path, clock: FakeClock) -> None:
    from spanproof.exporter import DirectorySink

    class FullDisk:
        def __init__(self) -> None:
            self.inner = DirectorySink(out)
            self.full = True
            self.attempts = 0

        def write(self, bundle: SealedBundle) -> str:
            self.attempts += 1
            if self.full:
                raise OSError(28, "No space left on device")
            return self.inner.write(bundle)

    rec = Recorder()
    build_trace(rec)
    sink = FullDisk()
    exporter = make_exporter(out, clock, sink=sink)
    exporter.export(rec.take())
    clock.advance(2.0)
    assert exporter.force_flush() is False  # sealed, but the write failed: kept
    assert exporter.force_flush() is False  # retried, failed again
    assert sink.attempts >= 2 and bundle_files(out) == []
    sink.full = False
    assert exporter.force_flush() is True
    exporter.shutdown()
    (report,) = verified(out, trust_root(out.parent))
    assert report.statement is not None and report.statement.seal_reason == "root_ended"


def _wait_child(pid: int, timeout: float) -> int:
    """The child's wait status; kills it and fails the test if it outlives *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not exit within {timeout} s")


def test_fork_child_and_parent_each_seal_their_own(out: Path, clock: FakeClock) -> None:
    rec = Recorder()
    parent_root = rec.tracer.start_span("parent-root")
    with rec.tracer.start_as_current_span(
        "parent-step", context=trace.set_span_in_context(parent_root),
        attributes={"gen_ai.operation.name": "chat"},
    ) as parent_step:
        pass
    exporter = make_exporter(out, clock)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # pending in the parent
    parent_instance = exporter.producer.instance
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.alarm(30)  # a child that deadlocks dies instead of hanging the suite
        try:
            child_rec = Recorder()
            with child_rec.tracer.start_as_current_span("child-root"):
                with evidence(child_rec, "child-step"):
                    pass
            ok = exporter.export(child_rec.take()) is SpanExportResult.SUCCESS
            exporter.shutdown()
            code = 0 if ok and exporter.producer.instance != parent_instance else 2
        finally:
            os._exit(code)
    status = _wait_child(pid, timeout=40.0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    assert exporter.producer.instance == parent_instance
    parent_root.end()
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert not [p for p in os.listdir(out) if not p.endswith(".spanproof.json") and p != "keys"]
    rs = verified(out, trust_root(out.parent))
    assert len(rs) == 2
    names = {r.statement.producer.instance: [rec_["span"]["name"] for rec_ in r.records or ()]
             for r in rs if r.statement}
    assert names[parent_instance] == ["parent-step"]
    (child_instance,) = set(names) - {parent_instance}
    assert names[child_instance] == ["child-step"]
    parent_bundle = next(r for r in rs if r.statement and r.statement.producer.instance
                         == parent_instance)
    assert parent_bundle.statement is not None
    assert parent_bundle.statement.trace_id == span_hex(parent_step)[0]  # type: ignore[arg-type]


def test_a_forked_child_leaves_the_parents_witness_queue_to_the_parent(
    out: Path, clock: FakeClock
) -> None:
    # Each forked worker (gunicorn, celery) took over the parent's pending witness
    # submissions and scanned the whole output directory for bundles without a
    # receipt: N workers delivered (and deleted) the same queue files.
    rec = Recorder()
    build_trace(rec)
    exporter = make_exporter(out, clock, witness_url="http://127.0.0.1:9")  # no witness
    exporter.export(rec.take())
    assert exporter.force_flush()
    queue = out / "witness-queue"
    deadline = time.monotonic() + 10
    while not list(queue.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(queue.glob("*.json"))  # the parent's pending submission
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.alarm(30)
        try:
            time.sleep(0.5)  # what a catching-up submitter would have taken by now
            submitter = exporter._submitter
            scanning = [t for t in threading.enumerate() if t.name == "spanproof-witness-scan"]
            code = 0 if submitter is not None and not submitter._pending and not scanning \
                else 2
        finally:
            os._exit(code)
    status = _wait_child(pid, timeout=40.0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    assert exporter._submitter is not None and exporter._submitter._pending
    exporter.shutdown()


def test_entry_point_names_the_exporter() -> None:
    (ep,) = metadata.entry_points(group="opentelemetry_traces_exporter", name="spanproof")
    assert ep.load() is SpanproofSpanExporter


def test_bundles_sealed_together_are_written_as_one_group(
    out: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten traces due at once: one durability barrier for all of their bundles, on the
    # writer thread, instead of two flushes per bundle.
    from spanproof.exporter import sinks as sinks_module

    barriers: list[str] = []

    def fake_syncfs(fd: int) -> None:
        barriers.append(threading.current_thread().name)
        os.fsync(fd)

    monkeypatch.setattr(sinks_module, "_SYNCFS", fake_syncfs)
    rec = Recorder()
    traces = dict(build_trace(rec) for _ in range(10))
    exporter = make_exporter(out, clock)
    exporter.export(rec.take())
    clock.advance(2.0)
    assert exporter.force_flush() is True
    found = by_trace(verified(out, trust_root(out.parent)))
    assert {t: record_span_ids(g[0]) for t, g in found.items()} == traces
    assert len(barriers) == 1 and barriers[0].startswith("spanproof-write")
    exporter.shutdown()


def test_a_deferred_shutdown_is_run_by_the_thread_that_asked_at_its_outermost_call() -> None:
    # It was kept in one flag and a set of threads: another thread's export ending
    # first ran it while the interrupted one was partway, and a span ended inside the
    # handler (an export nested on the same thread) took the thread out of the set,
    # so a shutdown() after it no longer waited for the outer export.
    from spanproof.exporter._exporter import Interruptible

    calls = Interruptible()
    assert calls.defer(1.0) is None  # not inside: shut down now
    outer = calls.enter()
    nested = calls.enter()  # the handler ended a span
    assert calls.leave(nested) is None
    assert calls.defer(2.0) is True  # the handler's shutdown(): left to the call
    assert calls.defer(3.0) is False  # one already waits
    other: list[object] = []

    def another_thread() -> None:
        me = calls.enter()
        other.append(calls.defer(4.0))  # asked there too: the first one waits
        other.append(calls.leave(me))

    thread = threading.Thread(target=another_thread)
    thread.start()
    thread.join(10)
    assert other == [False, None]  # not that thread's shutdown to run
    assert calls.leave(outer) == 2.0
    assert calls.defer(5.0) is None
