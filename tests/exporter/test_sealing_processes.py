"""``sealing_process=N``: several sealing processes that share the traces by trace id."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from exporter_support import (
    Recorder,
    evidence,
    record_span_ids,
    reports,
    sent_frames,
    signing_key,
    trust_root,
    verified,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanContext
from processes import returns_within

from spanproof.exporter import SpanproofSpanExporter, _sealing_process
from spanproof.exporter import _exporter as exporter_module
from spanproof.exporter.submit import WitnessSubmitter
from spanproof.verifier import BundleReport

# Trace ids 1, 2, 3, ...: with two processes, odd ones go to the second, even
# ones to the first.
_FIRST_TRACE = 0x1000


class _CountingIds(IdGenerator):
    def __init__(self) -> None:
        self._next = itertools.count(_FIRST_TRACE)
        self._spans = RandomIdGenerator()

    def generate_trace_id(self) -> int:
        return next(self._next)

    def generate_span_id(self) -> int:
        return self._spans.generate_span_id()


def _exporter(out: Path, processes: int, **kwargs: Any) -> SpanproofSpanExporter:
    kwargs.setdefault("seal_grace", 30.0)
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(),
                                     sealing_process=processes, **kwargs)
    assert exporter._remote is not None
    assert len(exporter._remote.processes) == processes
    return exporter


def _traces(rec: Recorder, count: int) -> dict[str, list[str]]:
    """*count* traces of a root and two evidence children: span ids by trace id."""
    traces: dict[str, list[str]] = {}
    for _ in range(count):
        with rec.tracer.start_as_current_span("handle") as root:
            ids = []
            for i in range(2):
                with evidence(rec, f"llm-{i}") as span:
                    ids.append(f"{span.get_span_context().span_id:016x}")
        traces[f"{root.get_span_context().trace_id:032x}"] = ids
    return traces


def _second_process_killed(
    tmp_path: Path,
) -> tuple[Recorder, dict[str, list[str]], SpanproofSpanExporter, str, Any]:
    """Two processes holding one trace each (0x1000 the first, 0x1001 the second),
    the second then killed: the recorder, the held traces, the exporter, its
    processes' producer instance, and the first process."""
    rec = Recorder(id_generator=_CountingIds())
    held = _traces(rec, 2)
    exporter = _exporter(tmp_path / "out", 2)
    first, second = exporter._remote.processes  # type: ignore[union-attr]
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # held: the grace is long
    os.kill(second.pid, signal.SIGKILL)
    second._proc.wait(10)
    return rec, held, exporter, exporter.producer.instance, first


def _by_trace(reports: list[BundleReport]) -> dict[str, tuple[list[str], str, str]]:
    found = {}
    for report in reports:
        assert report.statement is not None
        statement = report.statement
        assert statement.trace_id not in found, "a trace was sealed in two bundles"
        found[statement.trace_id] = (record_span_ids(report), statement.producer.instance,
                                     statement.seal_reason)
    return found


def _declaration(reports: list[BundleReport], trace_id: str) -> tuple[int, tuple[str, ...]]:
    """The dropped spans and notes of *trace_id*'s one bundle, asserted empty."""
    (statement,) = [r.statement for r in reports
                    if r.statement is not None and r.statement.trace_id == trace_id]
    assert statement.record_count == 0
    return statement.completeness.dropped_spans, statement.completeness.notes


def test_two_processes_seal_every_trace_once_as_the_in_process_exporter_does(
    tmp_path: Path,
) -> None:
    rec = Recorder(id_generator=_CountingIds())
    expected = _traces(rec, 8)
    spans = rec.take()
    local = SpanproofSpanExporter(tmp_path / "local", signing_key=signing_key())
    shared = _exporter(tmp_path / "shared", 2)
    for exporter in (local, shared):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.force_flush()
    local_reports = verified(tmp_path / "local", trust_root(tmp_path))
    shared_reports = verified(tmp_path / "shared", trust_root(tmp_path))
    found = _by_trace(shared_reports)
    assert {t: ids for t, (ids, _, _) in found.items()} == expected
    assert {instance for _, instance, _ in found.values()} == {shared.producer.instance}
    assert {reason for _, _, reason in found.values()} == {"force_flush"}
    records = {r.statement.trace_id: r.records for r in local_reports if r.statement}
    assert {r.statement.trace_id: r.records for r in shared_reports if r.statement} == records
    shared.shutdown()
    local.shutdown()


def test_a_trace_exported_over_several_batches_reaches_one_process(tmp_path: Path) -> None:
    # The children first, their roots later, one batch per span: a router by span
    # (or by batch) would split a trace over two processes, two bundles.
    rec = Recorder(id_generator=_CountingIds())
    expected = _traces(rec, 6)
    spans = rec.take()
    roots = [s for s in spans if s.parent is None]
    children = [s for s in spans if s.parent is not None]
    exporter = _exporter(tmp_path / "out", 2)
    for span in [*children, *roots]:
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    found = _by_trace(verified(tmp_path / "out", trust_root(tmp_path)))
    assert {t: ids for t, (ids, _, _) in found.items()} == expected


def test_a_process_that_gets_neither_span_nor_root_of_an_export_gets_no_frame(
    tmp_path: Path,
) -> None:
    rec = Recorder(id_generator=_CountingIds())
    (trace_id,) = _traces(rec, 1)  # 0x1000: the first process's
    spans = rec.take()
    exporter = _exporter(tmp_path / "out", 2)
    first, second = exporter._remote.processes  # type: ignore[union-attr]
    to_first, to_second = sent_frames(first), sent_frames(second)
    plain = Recorder()
    with plain.tracer.start_as_current_span("plain-root"):
        with plain.tracer.start_as_current_span("plain-child"):
            pass
    plain_child = [s for s in plain.take() if s.parent is not None]
    assert exporter.export(plain_child) is SpanExportResult.SUCCESS
    assert (to_first, to_second) == ([], [])  # nothing selected, no root ended
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert (len(to_first), to_second) == (1, [])
    exporter.shutdown()
    found = _by_trace(verified(tmp_path / "out", trust_root(tmp_path)))
    assert list(found) == [trace_id]


def test_shutdown_has_every_process_seal_what_it_holds_and_exit(tmp_path: Path) -> None:
    rec = Recorder(id_generator=_CountingIds())
    expected = _traces(rec, 4)
    exporter = _exporter(tmp_path / "out", 3)
    processes = exporter._remote.processes  # type: ignore[union-attr]
    assert len({p.pid for p in processes}) == 3
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert [p._proc.poll() for p in processes] == [0, 0, 0]
    found = _by_trace(verified(tmp_path / "out", trust_root(tmp_path)))
    assert {t: ids for t, (ids, _, _) in found.items()} == expected
    assert {reason for _, _, reason in found.values()} == {"shutdown"}


def test_one_process_gone_the_others_seal_what_they_hold_and_this_process_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec, held, exporter, child_instance, first = _second_process_killed(tmp_path)
    killed = exporter._remote.processes[1].pid  # type: ignore[union-attr]
    later = _traces(rec, 4)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is None
    assert "the other 1 seal what they hold and exit" in caplog.text
    assert first._proc.wait(30) == 0
    assert exporter.producer.instance != child_instance
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    found = _by_trace(sealed)
    lost, kept = sorted(held)[1], sorted(held)[0]
    # The killed process's trace is lost, and declared in an empty bundle sealed
    # here; the first's was sealed by it, with the later batch's even traces, when
    # its input closed; the later batch's odd traces (the killed process's share)
    # were sealed here, as a new instance.
    assert found[lost] == ([], exporter.producer.instance, "shutdown")
    dropped, notes = _declaration(sealed, lost)
    assert dropped == len(held[lost]) == 2
    assert notes == (f"2 evidence span(s) sent to sealing process {killed} "
                     "were lost unsealed when it exited (code -9); they belong to this "
                     "trace or to others it held (this is the last trace sent to it)",)
    assert sum(r.statement.completeness.dropped_spans for r in sealed  # type: ignore[union-attr]
               ) == 2
    assert found[kept] == (held[kept], child_instance, "shutdown")
    for trace_id, ids in later.items():
        first_share = int(trace_id, 16) % 2 == 0
        assert found[trace_id][0] == ids
        assert (found[trace_id][1] == child_instance) == first_share


def test_force_flush_waits_for_the_processes_given_up_and_writes_the_loss(
    tmp_path: Path,
) -> None:
    # Once one process was lost, force_flush() returned True at once: the others,
    # given up, still sealed what they held, and the bundle declaring the lost
    # spans waited in memory for the idle timeout.  A crash after that True lost
    # both without a word.
    rec, held, exporter, child_instance, first = _second_process_killed(tmp_path)
    _traces(rec, 2)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is None  # given up
    assert exporter.force_flush(30_000) is True
    assert first._proc.poll() == 0  # waited for
    found = _by_trace(verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True))
    lost, kept = sorted(held)[1], sorted(held)[0]
    assert found[kept][:2] == (held[kept], child_instance)  # sealed by the survivor
    assert found[lost][0] == []  # the declaration, written before the flush returned
    exporter.shutdown()


def test_a_process_given_up_that_dies_too_has_its_spans_declared(tmp_path: Path) -> None:
    # Nothing watched the processes given up: one killed while it still held spans
    # (an OOM kill, a container stopping) lost them without a word.
    rec, held, exporter, _, first = _second_process_killed(tmp_path)
    os.kill(first.pid, signal.SIGSTOP)  # it seals nothing more
    try:
        later = _traces(rec, 2)
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        assert exporter._remote is None  # given up: its input closed
    finally:
        os.kill(first.pid, signal.SIGKILL)
    first._proc.wait(10)
    assert exporter.force_flush(30_000) is True
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    certified = {span for report in sealed for span in record_span_ids(report)}
    dropped = sum(r.statement.completeness.dropped_spans for r in sealed  # type: ignore[union-attr]
                  )
    spans = [span for ids in (*held.values(), *later.values()) for span in ids]
    # Every span is certified, or declared lost: the killed processes' spans are.
    assert len(certified) + dropped == len(spans) == 8
    assert dropped >= 4  # both held traces at least, each by the process it went to
    assert certified <= set(spans)


def test_processes_given_up_are_waited_for_once_they_exit(tmp_path: Path) -> None:
    # Their input was closed and nothing waited for them: each stayed a zombie until
    # the next child started (a minute later at least, never at all without one).
    rec, _, exporter, _, first = _second_process_killed(tmp_path)
    _traces(rec, 2)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is None  # given up
    deadline = time.monotonic() + 30
    while first._proc.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)  # returncode is set by whoever waits: not this test
    assert first._proc.returncode == 0
    exporter.shutdown()


def test_a_process_given_up_is_waited_for_while_another_still_runs() -> None:
    # One thread waited for them in turn: one still sealing (or stopped) kept each
    # later one that had exited a zombie.
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _sealing_process._reap([SimpleNamespace(_proc=slow, pid=slow.pid),  # type: ignore[list-item]
                                SimpleNamespace(_proc=quick, pid=quick.pid)])
        deadline = time.monotonic() + 30
        while quick.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)  # returncode is set by whoever waits: not this test
        assert quick.returncode == 0
        assert slow.returncode is None
    finally:
        slow.kill()
        slow.wait(10)
        quick.wait(10)


def test_a_killed_process_declares_only_what_it_had_not_written(tmp_path: Path) -> None:
    # The child counts what each bundle it writes settles; what it was sent beyond
    # that when it dies is what it lost, declared in a bundle of the last trace sent.
    rec = Recorder(id_generator=_CountingIds())
    exporter = _exporter(tmp_path / "out", 1)
    (process,) = exporter._remote.processes  # type: ignore[union-attr]
    written = _traces(rec, 1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush()  # sealed and written by the child
    held = _traces(rec, 2)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # held: long grace
    os.kill(process.pid, signal.SIGKILL)
    process._proc.wait(10)
    assert process.unsettled() == 4
    later = _traces(rec, 1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # finds it gone
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    found = _by_trace(sealed)
    last_held = max(held)
    assert set(found) == {*written, last_held, *later}
    assert _declaration(sealed, last_held)[0] == 4  # both held traces' spans
    assert sum(r.statement.completeness.dropped_spans for r in sealed  # type: ignore[union-attr]
               ) == 4


def test_a_killed_process_counted_the_rejections_it_declared_as_settled(
    tmp_path: Path,
) -> None:
    # A span the child refuses (a value over the size limit) is settled by the
    # bundle that declares it rejected: only the held trace's spans are declared lost.
    rec = Recorder(id_generator=_CountingIds())
    exporter = _exporter(tmp_path / "out", 1, max_value_bytes=1024)
    (process,) = exporter._remote.processes  # type: ignore[union-attr]
    with rec.tracer.start_as_current_span("handle"):
        with evidence(rec, "llm-ok"):
            pass
        with evidence(rec, "llm-oversized", prompt="x" * 2048):
            pass
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush()  # one record, one rejection: both settled
    held = _traces(rec, 1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # held: long grace
    os.kill(process.pid, signal.SIGKILL)
    process._proc.wait(10)
    assert process.unsettled() == 2
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    assert _declaration(sealed, max(held))[0] == 2


def test_giving_up_does_not_wait_on_a_write_blocked_on_another_process(
    tmp_path: Path
) -> None:
    # One process is gone while a write to another is blocked on its full pipe (it
    # stopped reading): export() must not wait on that write to close its input.
    # The write holds the process's lock; it closes the input once it completes.
    _, _, exporter, _, first = _second_process_killed(tmp_path)
    writing, done = threading.Event(), threading.Event()

    def blocked_write() -> None:
        with first._lock:
            writing.set()
            done.wait(30)

    holder = threading.Thread(target=blocked_write, daemon=True)
    holder.start()
    writing.wait(10)
    try:
        returns_within(exporter._remote.give_up, 10,  # type: ignore[union-attr]
                       "give_up() with a write under way to another process")
        assert first.input_blocked
    finally:
        done.set()
        holder.join(10)
    first.kill()
    exporter._remote = None  # both processes are gone; nothing is left to stop
    exporter.shutdown()


def test_one_process_gone_at_shutdown_the_other_still_seals_what_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, held, exporter, child_instance, first = _second_process_killed(tmp_path)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter.shutdown()
    assert "before shutdown; the spans it held are lost" in caplog.text
    assert first._proc.poll() == 0
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    found = _by_trace(sealed)
    kept, lost = sorted(held)
    # What the killed process held is declared lost in an empty bundle of its
    # trace, sealed here at shutdown as a new instance.
    assert exporter.producer.instance != child_instance
    assert found == {kept: (held[kept], child_instance, "shutdown"),
                     lost: ([], exporter.producer.instance, "shutdown")}
    assert _declaration(sealed, lost)[0] == 2


def test_only_the_first_process_resumes_what_an_earlier_run_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[dict[str, Any], bool]] = []

    class FakeProcess:
        def __init__(self, settings: Any, key_seed: bytes, instance: str, *,
                     recover: bool) -> None:
            started.append((dict(settings), recover))

        def wait_ready(self, deadline: float) -> None:
            pass

        def check_stall(self, now: float) -> None:
            pass

    monkeypatch.setattr(_sealing_process, "SealingProcess", FakeProcess)
    settings = {"max_pending_traces": 2048, "sealed_trace_memory": 65536, "seal_grace": 2.0}
    group = _sealing_process.SealingProcesses(settings, bytes(32), "ab", 3)
    group._watch_stop.set()  # its watch thread stops
    assert len(group.processes) == 3
    assert [recover for _, recover in started] == [True, False, False]
    # Each holds about a third of the traces: the memory bounds are shared out.
    for shard, _ in started:
        assert shard == {"max_pending_traces": 683, "sealed_trace_memory": 21846,
                         "seal_grace": 2.0}
    started.clear()
    _sealing_process.SealingProcesses({"max_pending_traces": 1, "sealed_trace_memory": 0},
                                      bytes(32), "ab", 2)._watch_stop.set()
    assert [shard for shard, _ in started] == [
        {"max_pending_traces": 1, "sealed_trace_memory": 0}] * 2  # 0 remembers none


def test_a_process_that_cannot_start_stops_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []

    class FakeProcess:
        count = 0

        def __init__(self, *args: Any, recover: bool) -> None:
            FakeProcess.count += 1
            self.number = FakeProcess.count

        def wait_ready(self, deadline: float) -> None:
            if self.number == 2:
                raise _sealing_process.SealingProcessError("did not start")

        def kill(self) -> None:
            events.append(f"kill {self.number}")

    monkeypatch.setattr(_sealing_process, "SealingProcess", FakeProcess)
    with pytest.raises(_sealing_process.SealingProcessError, match="did not start"):
        _sealing_process.SealingProcesses({}, bytes(32), "ab", 3)
    assert sorted(events) == ["kill 1", "kill 2", "kill 3"]


def test_a_later_process_neither_recovers_nor_scans_nor_resumes_the_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(SpanproofSpanExporter, "_recover_at_start",
                        lambda self: calls.append("recover"))
    monkeypatch.setattr(exporter_module, "_scan_quietly",
                        lambda submitter, directory: calls.append("scan"))
    resumed: list[bool] = []
    real_init = WitnessSubmitter.__init__

    def init(self: WitnessSubmitter, *args: Any, resume: bool = True, **kwargs: Any) -> None:
        resumed.append(resume)
        real_init(self, *args, resume=resume, start=False, **kwargs)

    monkeypatch.setattr(WitnessSubmitter, "__init__", init)
    settings = {"witness_url": "http://127.0.0.1:9", "signing_key": signing_key()}
    later = exporter_module._NonRecoveringExporter(tmp_path / "later", **settings)
    assert calls == [] and resumed == [False]
    first = SpanproofSpanExporter(tmp_path / "first", **settings)
    assert sorted(calls) == ["recover", "scan"] and resumed == [False, True]
    later.shutdown()
    first.shutdown()


def test_a_submitter_that_does_not_resume_leaves_the_queue_to_the_one_that_does(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "queue"
    first = WitnessSubmitter("http://127.0.0.1:9", queue, start=False)
    assert first.submit(tmp_path / "a.spanproof.json")
    first._drain_incoming()  # persisted as a queue file
    first.close()  # and its hold on the queue released
    assert len(list(queue.glob("*.json"))) == 1
    resuming = WitnessSubmitter("http://127.0.0.1:9", queue, start=False)
    assert resuming.pending == 1
    resuming.close()
    assert WitnessSubmitter("http://127.0.0.1:9", queue, start=False, resume=False).pending == 0


def test_a_batch_sent_as_bodies_is_shared_out_by_trace_too(tmp_path: Path) -> None:
    # A value pickle cannot carry sends the whole batch normalized; its bodies and
    # rejected spans must still reach the process holding their trace, the one the
    # trace's next batch (sent as fields) goes to: otherwise a trace is split in two.
    rec = Recorder(id_generator=_CountingIds())
    expected = _traces(rec, 4)
    spans = rec.take()
    first_children = {}
    for span in spans:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        if span.parent is not None:
            first_children.setdefault(trace_id, span)
    bad_trace = min(expected)
    template = first_children[bad_trace]
    bad = ReadableSpan("bad-value", context=SpanContext(int(bad_trace, 16), 0x77, False),
                       parent=template.parent, resource=template.resource,
                       attributes={"gen_ai.operation.name": "chat", "obj": lambda: None},
                       start_time=1, end_time=2)
    first = list(first_children.values())
    exporter = _exporter(tmp_path / "out", 2)
    assert exporter.export([bad, *first]) is SpanExportResult.FAILURE  # one span rejected
    assert exporter.export([s for s in spans if s not in first]) is SpanExportResult.SUCCESS
    assert exporter._remote is not None  # both processes still run
    exporter.shutdown()
    found = _by_trace(reports(tmp_path / "out", trust_root(tmp_path)))
    assert {t: ids for t, (ids, _, _) in found.items()} == expected
    rejected = {r.statement.trace_id: r.statement.completeness.rejected_spans
                for r in reports(tmp_path / "out", trust_root(tmp_path)) if r.statement}
    assert rejected == {t: int(t == bad_trace) for t in expected}


@pytest.mark.parametrize(("code", "said"), [
    (None, "did not finish sealing before the shutdown deadline; it keeps running"),
    (0, "exited (code 0) without finishing its shutdown: what it did not write is lost"),
    (1, "exited (code 1) without finishing its shutdown"),
])
def test_a_shutdown_left_unfinished_says_whether_the_process_still_runs(
    caplog: pytest.LogCaptureFixture, code: int | None, said: str
) -> None:
    # A process that had exited, its bundles unwritten, was said to keep running.
    remote = SimpleNamespace(request=lambda kind, timeout: False,
                             close=lambda timeout: code, processes=[])
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        assert SpanproofSpanExporter._stop_remote(remote, time.monotonic() + 1) == []
    assert said in caplog.text
    assert (code is None) == ("keeps running" in caplog.text)
