"""The exporter's ``sealing_process`` mode: selected spans' fields go to a child
process, which seals them with the in-process exporter's code."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    ATTRIBUTES_SAMPLE,
    FakeClock,
    Recorder,
    declared_rejections,
    evidence,
    record_span_ids,
    reports,
    sent_frames,
    signing_key,
    trust_root,
    verified,
)
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import NonRecordingSpan, TraceState
from processes import returns_within, running, wait_for
from thread_signals import signal_another_thread, skip_unless_available

from spanproof.exporter import SpanproofSpanExporter, _sealing_process
from spanproof.exporter import _exporter as _exporter_module
from spanproof.exporter._sealing_process import (
    FieldSpan,
    SealingProcess,
    _Resource,
    _Scope,
    resource_fields,
    scope_fields,
    span_fields,
)
from spanproof.exporter.config import ExporterConfig
from spanproof.exporter.normalize import span_to_body
from spanproof.verifier import Verdict


def _through_the_pipe(span: ReadableSpan) -> FieldSpan:
    """What the sealing process rebuilds from *span* (pickled as on the pipe)."""
    fields = pickle.loads(pickle.dumps(span_fields(span, 1, 2)))
    resource = _Resource(*pickle.loads(pickle.dumps(resource_fields(span.resource))))
    scope_data = pickle.loads(pickle.dumps(scope_fields(span.instrumentation_scope)))
    scope = None if scope_data is None else _Scope(*scope_data)
    return FieldSpan(fields, resource, scope)


def _varied_spans() -> list[ReadableSpan]:
    """Spans holding every field normalizing reads, with limits, links and scopes."""
    rec = Recorder(
        resource=Resource({"service.name": "svc", "n": 3}, schema_url="https://s/1"),
        span_limits=SpanLimits(max_span_attributes=40, max_events=2, max_links=3,
                               max_event_attributes=2, max_link_attributes=1),
    )
    tracer = rec.provider.get_tracer("lib", "2.0", schema_url="https://scope",
                                     attributes={"scope.attr": "v", "scope.n": 7})
    remote = NonRecordingSpan(SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "abc"), ("other", "1")]),
    ))
    links = [  # the limit keeps the last three
        Link(SpanContext(0x5, 0x6, False)),
        Link(trace.INVALID_SPAN_CONTEXT, {"why": "kept by the sdk"}),
        Link(SpanContext(0x1, 0x2, False)),
        Link(SpanContext(0xABCDEF, 0x1234, True, trace_state=TraceState([("v", "1")])),
             {"rel": "caused-by", "extra": 1}),
    ]
    for kind in SpanKind:
        span = tracer.start_span(f"k-{kind.name}", context=trace.set_span_in_context(remote),
                                 kind=kind, links=links, start_time=1_000,
                                 attributes=ATTRIBUTES_SAMPLE)
        span.add_event("e1", {"x": 1, "y": "\U0001f600", "z": 2.5}, timestamp=1_100)
        span.add_event("e2", timestamp=1_200)
        span.add_event("e3", {"big": 2**70}, timestamp=1_300)
        span.set_status(Status(StatusCode.ERROR, "model timed out"))
        span.end(end_time=2_000)
    with rec.provider.get_tracer("bare").start_as_current_span("root") as root:
        with rec.tracer.start_as_current_span("child", attributes={"a": (1, 2)}):
            pass
        root.set_status(Status(StatusCode.OK))
    spans = rec.take()
    no_scope = ReadableSpan("no-scope", context=spans[-1].get_span_context(),
                            resource=Resource({}), start_time=1, end_time=2,
                            instrumentation_scope=None)
    return [*spans, no_scope]


class _OtherSpan(ReadableSpan):
    """A ReadableSpan subclass: its fields are read through the public properties."""


def test_field_spans_normalize_exactly_like_the_sdk_spans() -> None:
    spans = _varied_spans()
    assert len(spans) == len(SpanKind) + 3
    for span in spans:
        assert type(span) is ReadableSpan  # the fast path reads the SDK's fields
        expected = span_to_body(span)
        assert span_to_body(_through_the_pipe(span)) == expected, span.name
        other = copy.copy(span)
        other.__class__ = _OtherSpan  # the generic path reads the properties
        assert span_fields(other, 1, 2) == span_fields(span, 1, 2), span.name
        assert span_to_body(_through_the_pipe(other)) == expected, span.name
    # The sample really carries what it is meant to test.
    body = span_to_body(spans[0])["span"]
    assert body["droppedEventsCount"] == "1" and body["droppedLinksCount"] == "2"
    assert body["events"][-1]["droppedAttributesCount"] == "0"
    assert body["links"][1]["traceState"] == "v=1"
    assert body["traceState"] == "vendor=abc,other=1"
    assert span_to_body(spans[0])["scope"]["attributes"]


def test_field_span_of_an_invalid_context_is_refused_like_the_sdk_span() -> None:
    span = ReadableSpan("invalid", context=trace.INVALID_SPAN_CONTEXT, resource=Resource({}))
    with pytest.raises(ValueError, match="span context"):
        span_to_body(_through_the_pipe(span))


@pytest.mark.parametrize(("raw", "count"), [
    (None, 0), ("false", 0), ("FALSE", 0), ("0", 0), ("true", 1), ("True", 1), ("1", 1),
    ("3", 3), ("64", 64),
])
def test_sealing_process_setting_from_the_environment(raw: str | None, count: int) -> None:
    env = {} if raw is None else {"OTEL_EXPORTER_SPANPROOF_SEALING_PROCESS": raw}
    assert ExporterConfig.from_env(environ=env).sealing_process == count


@pytest.mark.parametrize("raw", ["maybe", "-1", "65", "1.5", "2x"])
def test_malformed_sealing_process_setting_is_named_and_seals_here(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        config = ExporterConfig.from_env(
            environ={"OTEL_EXPORTER_SPANPROOF_SEALING_PROCESS": raw})
    assert config.sealing_process == 0
    assert f"OTEL_EXPORTER_SPANPROOF_SEALING_PROCESS={raw!r} is not valid" in caplog.text


@pytest.mark.parametrize(("given", "count"), [(False, 0), (True, 1), (0, 0), (2, 2)])
def test_sealing_process_argument_is_a_bool_or_a_count(given: bool | int, count: int) -> None:
    config = ExporterConfig.from_env(environ={}, sealing_process=given)
    assert config.sealing_process == count and type(config.sealing_process) is int


@pytest.mark.parametrize("given", [-1, 65, 1.0, "2"])
def test_sealing_process_argument_out_of_range_is_refused(given: Any) -> None:
    with pytest.raises(ValueError, match="sealing_process"):
        ExporterConfig.from_env(environ={}, sealing_process=given)


def test_sealing_process_refuses_a_custom_clock_or_sink(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="default clock and sink"):
        SpanproofSpanExporter(tmp_path, signing_key=signing_key(), sealing_process=True,
                              clock=FakeClock())


def _exporter(out: Path, **kwargs: Any) -> SpanproofSpanExporter:
    kwargs.setdefault("seal_grace", 30.0)
    kwargs.setdefault("sealing_process", True)
    return SpanproofSpanExporter(out, signing_key=signing_key(), **kwargs)


def _group(exporter: SpanproofSpanExporter) -> _sealing_process.SealingProcesses:
    """The exporter's sealing processes (there must be some)."""
    assert exporter._remote is not None
    return exporter._remote


def _only_process(exporter: SpanproofSpanExporter) -> SealingProcess:
    """The exporter's one sealing process."""
    (process,) = _group(exporter).processes
    return process


def _trace(rec: Recorder, steps: int = 3) -> list[str]:
    """A plain root with *steps* evidence children; their span ids."""
    ids = []
    with rec.tracer.start_as_current_span("handle-case"):
        for i in range(steps):
            with evidence(rec, f"llm-{i}", **{"app.prompt": "caf\u00e9 \U0001f600"}) as span:
                ids.append(f"{span.get_span_context().span_id:016x}")
    return ids


def test_bundles_match_the_in_process_exporter_record_for_record(tmp_path: Path) -> None:
    rec = Recorder()
    ids = _trace(rec)
    spans = rec.take()
    local = SpanproofSpanExporter(tmp_path / "local", signing_key=signing_key())
    remote = _exporter(tmp_path / "remote")
    assert remote._remote is not None
    for exporter in (local, remote):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.force_flush()
    (local_report,) = verified(tmp_path / "local", trust_root(tmp_path))
    (remote_report,) = verified(tmp_path / "remote", trust_root(tmp_path))
    assert record_span_ids(remote_report) == ids
    assert remote_report.records == local_report.records
    assert remote_report.statement is not None
    assert remote_report.statement.seal_reason == "force_flush"
    assert remote_report.statement.producer.instance == remote.producer.instance
    remote.shutdown()
    local.shutdown()


def test_shutdown_seals_pending_traces_and_stops_the_process(tmp_path: Path) -> None:
    rec = Recorder()
    ids = _trace(rec)
    exporter = _exporter(tmp_path / "out")
    process = _only_process(exporter)
    assert process is not None
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert process._proc.poll() == 0
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert record_span_ids(report) == ids
    assert report.statement is not None and report.statement.seal_reason == "shutdown"
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE


def test_unpicklable_value_is_normalized_here_and_declared_rejected(tmp_path: Path) -> None:
    rec = Recorder()
    ids = _trace(rec, steps=2)
    spans = rec.take()
    ctx = spans[0].get_span_context()
    attributes: Any = {"gen_ai.operation.name": "chat", "obj": lambda: None}
    bad = ReadableSpan("bad-value", context=SpanContext(ctx.trace_id, 0x77, False),
                       parent=spans[-1].get_span_context(), attributes=attributes,
                       resource=spans[0].resource, start_time=1, end_time=2)
    exporter = _exporter(tmp_path / "out")
    assert exporter.export([*spans[:-1], bad, spans[-1]]) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert declared_rejections(tmp_path / "out", trust_root(tmp_path)) == (1, ids)


def test_killed_sealing_process_falls_back_to_sealing_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    process = _only_process(exporter)
    assert process is not None
    child_instance = exporter.producer.instance
    os.kill(process.pid, signal.SIGKILL)
    process._proc.wait(10)
    ids = _trace(rec)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is None
    assert "this process seals until sealing processes start again in 60 s" in caplog.text
    # The chains the dead child reached are unknown here: a new producer instance
    # starts its own, so no segment of the child's instance is written twice.
    assert exporter.producer.instance != child_instance
    assert exporter.force_flush()
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert record_span_ids(report) == ids
    assert report.statement is not None
    assert report.statement.producer.instance == exporter.producer.instance


def _shut_down_to_one_bundle(exporter: SpanproofSpanExporter, tmp_path: Path) -> list[str]:
    """Shut *exporter* down; the span ids of the one bundle it wrote (which verifies)."""
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    return record_span_ids(report)


def _kill(process: SealingProcess) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process._proc.wait(10)


def _after_a_loss(monkeypatch: pytest.MonkeyPatch, out: Path, restart: float = 0.0,
                  **kwargs: Any) -> SpanproofSpanExporter:
    """An exporter whose sealing process was killed (found gone at its next send or
    flush); the start again is due *restart* seconds after that."""
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", restart)
    exporter = _exporter(out, **kwargs)
    _kill(_only_process(exporter))
    return exporter


def _evidence_child(rec: Recorder, root: Any, name: str) -> str:
    """An evidence span under *root* (left open); its span id."""
    with trace.use_span(root, end_on_exit=False), evidence(rec, name) as span:
        return f"{span.get_span_context().span_id:016x}"


def _by_instance(reports_: list[Any]) -> dict[str, set[str]]:
    """The span ids certified under each producer instance."""
    out: dict[str, set[str]] = {}
    for report in reports_:
        assert report.statement is not None
        out.setdefault(report.statement.producer.instance, set()).update(
            record_span_ids(report))
    return out


def test_sealing_processes_start_again_and_the_traces_held_here_stay_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A dead sealing process left the application sealing in its own process for
    # good (about 0.56x the no-op exporter at 100% selected, against 0.9x).  Now new
    # processes start after a wait, under an instance of their own; a trace this
    # process holds by then stays here, so no trace's chain moves mid-flight.
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.2)
    starts: list[dict[str, Any]] = []
    real = _exporter_module.SealingProcesses

    def spy(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_exporter_module, "SealingProcesses", spy)
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")  # a 30 s grace: force_flush() seals
    first = exporter.producer.instance
    _kill(_only_process(exporter))
    held_root = rec.tracer.start_span("handle-held")
    held = [_evidence_child(rec, held_root, "llm-held-1")]
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter._exporter"):
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        assert "this process seals until sealing processes start again in 0.2 s" in caplog.text
        here = exporter.producer.instance
        time.sleep(0.3)
        sealed_here = _trace(rec, steps=1)  # the export that starts them is sealed here
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        wait_for(lambda: "sealing process(es) started again (pids " in caplog.text,
                 what="the sealing process to start again")
    remote = _group(exporter)
    assert [start["recover"] for start in starts] == [True, False]  # the first run's alone
    assert remote.instance not in (first, here)
    held.append(_evidence_child(rec, held_root, "llm-held-2"))
    held_root.end()
    sealed_there = _trace(rec, steps=2)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush()  # both sides: every trace's root has ended
    reports_ = verified(tmp_path / "out", trust_root(tmp_path))
    exporter.shutdown()
    assert exporter.producer.instance == here
    assert all(process._proc.poll() == 0 for process in remote.processes)
    assert _by_instance(reports_) == {here: {*held, *sealed_here},
                                      remote.instance: set(sealed_there)}
    # The held trace is one segment: its second span did not start a chain elsewhere.
    assert sorted(len(r.records or ()) for r in reports_) == [1, 2, 2]


class _Submitter:
    """Stands in for a witness submitter: records what it is given."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.closed = False

    def submit(self, path: str) -> None:
        self.submitted.append(path)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float) -> None:
        self.closed = True


def test_a_second_loss_keeps_this_process_chains_and_waits_twice_as_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.2)
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")
    submitters: list[_Submitter] = []

    def start_submitter(*, catch_up: bool = True) -> _Submitter:
        submitters.append(_Submitter())
        return submitters[-1]

    monkeypatch.setattr(exporter, "_start_submitter", start_submitter)
    _kill(_only_process(exporter))
    held_root = rec.tracer.start_span("handle-held")
    held = [_evidence_child(rec, held_root, "llm-held-1")]
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    here = exporter.producer.instance
    time.sleep(0.3)
    assert exporter.export([]) is SpanExportResult.SUCCESS
    remote = wait_for(lambda: exporter._remote, what="the sealing process to start again")
    (process,) = remote.processes
    _kill(process)
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        held.append(_evidence_child(rec, held_root, "llm-held-2"))
        held_root.end()
        lost_there = _trace(rec, steps=1)
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is None
    assert "start again in 0.4 s" in caplog.text
    # This process's pending trace goes on in its own chain, under its own instance.
    assert exporter.producer.instance == here
    # One witness submitter here, from the first loss on, which gets every bundle.
    (submitter,) = submitters
    assert exporter.force_flush()
    exporter.shutdown()
    assert submitter.closed
    reports_ = verified(tmp_path / "out", trust_root(tmp_path))
    assert sorted(submitter.submitted) == sorted(str(r.source) for r in reports_)
    assert _by_instance(reports_) == {here: {*held, *lost_there}}


def test_a_process_started_again_that_shutdown_finds_gone_has_its_loss_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    # A 30 s grace: the child holds its trace.
    exporter = _after_a_loss(monkeypatch, tmp_path / "out")
    sealed_here = _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    here = exporter.producer.instance
    assert exporter.export([]) is SpanExportResult.SUCCESS
    remote = wait_for(lambda: exporter._remote, what="the sealing process to start again")
    _trace(rec, steps=2)
    lost = rec.take()
    assert exporter.export(lost) is SpanExportResult.SUCCESS
    (process,) = remote.processes
    assert process.unsettled() == 2
    _kill(process)
    exporter.shutdown()
    reports_ = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    assert _by_instance(reports_) == {here: set(sealed_here)}
    (declaration,) = [r.statement for r in reports_
                      if r.statement is not None and r.statement.record_count == 0]
    assert declaration.trace_id == f"{lost[0].get_span_context().trace_id:032x}"
    assert declaration.completeness.dropped_spans == 2
    assert declaration.producer.instance == here


def test_sealing_processes_that_cannot_start_are_tried_again_with_a_growing_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.2)
    python = sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    rec = Recorder()
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter = _exporter(tmp_path / "out", seal_grace=0.0)
        assert "sealing in this process instead, and trying again in 0.2 s" in caplog.text
        time.sleep(0.3)
        assert exporter.export([]) is SpanExportResult.SUCCESS
        wait_for(lambda: "trying again in 0.4 s" in caplog.text, what="the second failed start")
    assert exporter._remote is None
    monkeypatch.setattr(sys, "executable", python)
    time.sleep(0.5)
    assert exporter.export([]) is SpanExportResult.SUCCESS
    remote = wait_for(lambda: exporter._remote, what="the sealing process to start")
    ids = _trace(rec)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert _by_instance(verified(tmp_path / "out", trust_root(tmp_path))) == {
        remote.instance: set(ids)}


def test_sealing_processes_started_again_during_shutdown_are_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.0)
    real = _exporter_module.SealingProcesses
    started: list[Any] = []
    proceed = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        group = real(*args, **kwargs)
        started.append(group)
        proceed.wait(30)
        return group

    exporter = _exporter(tmp_path / "out")
    _kill(_only_process(exporter))
    monkeypatch.setattr(_exporter_module, "SealingProcesses", slow)
    rec = Recorder()
    ids = _trace(rec)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # the loss
    assert exporter.export([]) is SpanExportResult.SUCCESS  # starts them again
    wait_for(lambda: started, what="the new sealing process")
    exporter.shutdown()
    proceed.set()
    (group,) = started
    wait_for(lambda: all(process._proc.poll() == 0 for process in group.processes),
             timeout=15, what="the late sealing process to exit")
    assert exporter._remote is None
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert record_span_ids(report) == ids


def test_the_wait_is_back_to_its_start_after_processes_that_ran_the_longest_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.2)
    monkeypatch.setattr(_exporter_module, "_MAX_RESTART_SECONDS", 1.5)
    exporter = _exporter(tmp_path / "out")
    waits = []
    for lives in (0.0, 1.6, 0.0):  # how long each group runs before it is killed
        time.sleep(lives)
        remote = _group(exporter)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
            _kill(remote.processes[0])
            assert not exporter.force_flush()  # finds it gone
        waits.append(caplog.text.split("start again in ")[1].split(" s")[0])
        time.sleep(float(waits[-1]) + 0.05)
        assert exporter.export([]) is SpanExportResult.SUCCESS
        wait_for(lambda: exporter._remote is not None, what="the sealing process to start")
    exporter.shutdown()
    # 0.2, doubled to 0.4 next; the group that ran 1.6 s brings it back to 0.2; the
    # next, killed at once, doubles it again (its own start counts, not the first's).
    assert waits == ["0.2", "0.2", "0.4"]


def test_exports_that_find_a_start_due_together_start_one_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    exporter = _after_a_loss(monkeypatch, tmp_path / "out")
    assert not exporter.force_flush()  # the loss
    real = _exporter_module.SealingProcesses
    groups: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        groups.append(None)  # counted as it begins
        return real(*args, **kwargs)

    monkeypatch.setattr(_exporter_module, "SealingProcesses", spy)
    # Both threads passed export()'s unlocked look at the due time.
    both = threading.Barrier(2)
    restart = exporter._restart_sealing

    def together() -> None:
        both.wait(5)
        restart()

    monkeypatch.setattr(exporter, "_restart_sealing", together)
    ids = [_trace(rec, steps=1) for _ in range(2)]
    spans = rec.take()
    results: list[SpanExportResult] = []
    threads = [threading.Thread(target=lambda part=part: results.append(exporter.export(part)))
               for part in (spans[:2], spans[2:])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [SpanExportResult.SUCCESS] * 2
    wait_for(lambda: exporter._remote is not None, what="the sealing process to start")
    time.sleep(0.5)  # a second start would have finished by now
    assert len(groups) == 1
    exporter.shutdown()
    assert {span_id for r in verified(tmp_path / "out", trust_root(tmp_path))
            for span_id in record_span_ids(r)} == {i for part in ids for i in part}


def test_an_export_that_reads_the_due_time_as_another_takes_it_seals_its_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # export() read the due time twice without the lock: when another thread's
    # start took it in between, comparing with None raised, and the batch was lost.
    rec = Recorder()
    exporter = _after_a_loss(monkeypatch, tmp_path / "out", seal_grace=0.0)
    assert not exporter.force_flush()  # the loss
    clock = _exporter_module.time

    class Taken:
        @staticmethod
        def monotonic() -> float:
            exporter._restarts.due = None  # what another thread's start does now
            return clock.monotonic()

    ids = _trace(rec)
    monkeypatch.setattr(_exporter_module, "time", Taken)
    try:
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    finally:
        monkeypatch.setattr(_exporter_module, "time", clock)
    assert _shut_down_to_one_bundle(exporter, tmp_path) == ids


def test_an_export_whose_processes_another_thread_lost_meanwhile_seals_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # export() asserted that the processes it had seen were still there; when a
    # force_flush() on another thread lost them in between, the batch was lost.
    rec = Recorder()
    exporter = _after_a_loss(monkeypatch, tmp_path / "out")
    held = _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # the loss
    assert exporter.export([]) is SpanExportResult.SUCCESS
    _kill(wait_for(lambda: exporter._remote, what="the restart").processes[0])
    split = exporter._held_here

    def flushed_meanwhile(spans: Any, roots: Any) -> Any:
        parts = split(spans, roots)
        flushing = threading.Thread(target=exporter.force_flush, args=(5000,))
        flushing.start()
        flushing.join(15)
        assert exporter._remote is None
        return parts

    monkeypatch.setattr(exporter, "_held_here", flushed_meanwhile)
    ids = _trace(rec)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    certified = {i for r in verified(tmp_path / "out", trust_root(tmp_path))
                 for i in record_span_ids(r)}
    assert certified == {*held, *ids}


def test_a_failure_of_processes_already_replaced_leaves_the_new_ones_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread still holding the lost group (a long force_flush(), a blocked write)
    # that fails after new processes started must not take the new ones down.
    monkeypatch.setattr(_exporter_module, "_RESTART_SECONDS", 0.0)
    exporter = _exporter(tmp_path / "out")
    lost = _group(exporter)
    _kill(lost.processes[0])
    assert not exporter.force_flush()  # the loss
    assert exporter.export([]) is SpanExportResult.SUCCESS
    new = wait_for(lambda: exporter._remote, what="the sealing process to start again")
    exporter._lose_remote(lost, _sealing_process.SealingProcessError("late"))
    assert exporter._remote is new
    assert exporter._restarts.due is None
    exporter.shutdown()
    assert new.processes[0]._proc.returncode == 0


def _request(rec: Recorder, trace_id: int, parent: int, name: str) -> list[ReadableSpan]:
    """A local root under a remote parent (another request of a distributed trace)
    with one evidence child."""
    remote = NonRecordingSpan(SpanContext(trace_id, parent, is_remote=True,
                                          trace_flags=TraceFlags(1)))
    with rec.tracer.start_as_current_span("request", context=trace.set_span_in_context(remote)):
        with evidence(rec, name):
            pass
    return rec.take()


def _segments(out: Path, trace_id: int, instance: str) -> list[str]:
    """The segment numbers of the trace's bundles under *instance*, as their file
    names give them (two writers of one chain write one number twice)."""
    return sorted(name.split("-")[1] for name in os.listdir(out)
                  if name.startswith(f"{trace_id:032x}-") and f"-{instance}" in name
                  and name.endswith(".spanproof.json"))


def _stretched(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str,
               release: threading.Event, entered: threading.Event | None = None) -> list[Any]:
    """Make *obj*.*name* wait for *release* after it ran (a slow call, stretched);
    the list it returns gets each call's result (before the wait)."""
    real = getattr(obj, name)
    results: list[Any] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        results.append(real(*args, **kwargs))
        if entered is not None:
            entered.set()
        release.wait(30)
        return results[-1]

    monkeypatch.setattr(obj, name, slow)
    return results


@contextlib.contextmanager
def _forked_worker(stream: Any) -> Iterator[bytes]:
    """Fork a worker that lives until the block ends; yields whether it holds a copy
    of the pipe *stream* (b"open"; b"closed" or b"other" when the fork closed it)."""
    fd, inode = stream.fileno(), os.fstat(stream.fileno()).st_ino
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked worker
        try:
            state = b"open" if os.fstat(fd).st_ino == inode else b"other"
        except OSError:
            state = b"closed"
        os.write(write_end, state)
        time.sleep(60)
        os._exit(0)
    try:
        os.close(write_end)
        yield os.read(read_end, 10)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)


def _as_forked(exporter: SpanproofSpanExporter) -> SpanproofSpanExporter:
    """*exporter* as a forked worker's: what the at-fork handlers do to it and its
    sealing processes, run here.  The group it leaves behind (abandoned: its input
    closed) is let exit, and its watch thread told to stop."""
    inherited = _group(exporter)
    for process in inherited.processes:
        process.abandon()
    exporter._after_fork_in_child()
    inherited._watch_stop.set()
    for process in inherited.processes:
        process._proc.wait(15)
    return exporter


def test_a_span_admitted_while_a_loss_is_handled_is_never_sealed_under_the_lost_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process went on sealing under the instance it shared with the lost
    # processes while it gave them up (up to a second per live process): a trace
    # they had sealed then got a second segment 0 under that instance.
    out = tmp_path / "out"
    rec = Recorder()
    exporter = _exporter(out, seal_grace=0.0)
    shared = exporter.producer.instance
    trace_id = 0x1234567890ABCDEF1234567890ABCDEF
    assert exporter.export(_request(rec, trace_id, 1, "llm-0")) is SpanExportResult.SUCCESS
    assert exporter.force_flush()
    assert _segments(out, trace_id, shared) == ["0000"]
    remote = _group(exporter)
    _kill(remote.processes[0])
    release = threading.Event()
    _stretched(monkeypatch, remote, "give_up", release)
    _trace(rec, steps=1)
    losing = threading.Thread(target=exporter.export, args=(rec.take(),))
    losing.start()
    try:
        wait_for(lambda: exporter._remote is None, what="the loss")
        assert exporter.export(_request(rec, trace_id, 2, "llm-1")) is SpanExportResult.SUCCESS
        assert exporter.force_flush()
    finally:
        release.set()
        losing.join(15)
    exporter.shutdown()
    assert _segments(out, trace_id, shared) == ["0000"]
    assert _segments(out, trace_id, exporter.producer.instance) == ["0000"]
    verified(out, trust_root(tmp_path), allow_incomplete=True)


def test_a_loss_under_way_when_shutdown_begins_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shutdown() drained an empty assembler while another thread was still giving
    # the processes up; the declaration of what they held came after, never sealed.
    out = tmp_path / "out"
    rec = Recorder()
    exporter = _exporter(out)  # a 30 s grace: the child holds its trace
    _trace(rec, steps=1)
    held = rec.take()
    assert exporter.export(held) is SpanExportResult.SUCCESS
    remote = _group(exporter)
    _kill(remote.processes[0])
    release = threading.Event()
    _stretched(monkeypatch, remote, "give_up", release)
    _trace(rec, steps=1)
    losing = threading.Thread(target=exporter.export, args=(rec.take(),))
    losing.start()
    wait_for(lambda: exporter._remote is None, what="the loss")
    stopping = threading.Thread(target=exporter.shutdown)
    stopping.start()
    wait_for(lambda: exporter._shutdown, what="shutdown to begin")
    time.sleep(0.3)
    assert stopping.is_alive()  # waiting for the loss to be declared
    release.set()
    losing.join(15)
    stopping.join(30)
    assert not stopping.is_alive()
    sealed = verified(out, trust_root(tmp_path), allow_incomplete=True)
    (declaration,) = [r.statement for r in sealed
                      if r.statement is not None and r.statement.record_count == 0]
    assert declaration.trace_id == f"{held[0].get_span_context().trace_id:032x}"
    assert declaration.completeness.dropped_spans == 1


def test_exports_during_the_start_after_a_fork_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the first export after a fork started the sealing processes, other
    # threads sealed here under the instance the processes were about to share:
    # two writers of one chain.
    out = tmp_path / "out"
    rec = Recorder()
    exporter = _as_forked(_exporter(out, seal_grace=0.0))
    instance = exporter.producer.instance
    release, entered = threading.Event(), threading.Event()
    _stretched(monkeypatch, _exporter_module, "SealingProcesses", release, entered)
    trace_id = 0x1234567890ABCDEF1234567890ABCDEF
    results: list[SpanExportResult] = []
    exports = [threading.Thread(target=lambda spans=spans: results.append(exporter.export(spans)))
               for spans in (_request(rec, trace_id, 1, "llm-a"),
                             _request(rec, trace_id, 2, "llm-b"))]
    exports[0].start()
    entered.wait(30)
    exports[1].start()
    time.sleep(0.3)
    assert exports[1].is_alive()  # waiting for the start
    release.set()
    for thread in exports:
        thread.join(15)
    assert results == [SpanExportResult.SUCCESS] * 2
    exporter.shutdown()
    segments = _segments(out, trace_id, instance)  # one chain, whichever way it was cut
    assert segments == [f"{n:04d}" for n in range(len(segments))]
    assert sum(len(r.records or ()) for r in verified(out, trust_root(tmp_path))) == 2


def test_a_forked_workers_sealing_process_leaves_recovery_to_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forked worker's sealing process started as the first of a run: it sealed
    # orphaned journals and took the witness queue over, in every worker.
    exporter = _as_forked(_exporter(tmp_path / "out", seal_grace=0.0))
    recovers: list[bool] = []
    real = _exporter_module.SealingProcesses

    def recorded(*args: Any, recover: bool = True, **kwargs: Any) -> Any:
        recovers.append(recover)
        return real(*args, recover=recover, **kwargs)

    monkeypatch.setattr(_exporter_module, "SealingProcesses", recorded)
    rec = Recorder()
    _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert recovers == [False]
    assert len(verified(tmp_path / "out", trust_root(tmp_path))) == 1


def test_a_start_after_a_fork_that_finds_no_thread_leaves_sealing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A start that raised something else than an OSError (no thread for the watch,
    # once the children were up) was tried again on every export, each losing its
    # spans, and left its children running.
    exporter = _as_forked(_exporter(tmp_path / "out", seal_grace=0.0))
    spawned: list[subprocess.Popen[bytes]] = []
    spawn = _sealing_process.spawn_child

    def recorded(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        spawned.append(spawn(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(_sealing_process, "spawn_child", recorded)

    def no_thread(check: Any, name: str) -> threading.Event:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_sealing_process, "start_watch", no_thread)
    rec = Recorder()
    ids = []
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        for _ in range(3):
            ids += _trace(rec, steps=1)
            assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert "cannot start the sealing process (the sealing process did not start: " \
           "can't start new thread)" in caplog.text
    assert len(spawned) == 1  # tried once, and again only when the wait is over
    assert spawned[0].wait(15) == -signal.SIGKILL  # not left running
    exporter.shutdown()
    certified = {i for r in verified(tmp_path / "out", trust_root(tmp_path))
                 for i in record_span_ids(r)}
    assert certified == set(ids)


def test_a_start_after_a_fork_that_raises_is_not_tried_on_every_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = _as_forked(_exporter(tmp_path / "out", seal_grace=0.0))
    starts: list[None] = []
    start = exporter._start_sealing

    def once_broken(*, recover: bool = True) -> None:
        starts.append(None)
        if len(starts) == 1:
            raise RuntimeError("can't start new thread")
        start(recover=recover)

    monkeypatch.setattr(exporter, "_start_sealing", once_broken)
    rec = Recorder()
    _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE  # logged
    ids = _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert len(starts) == 1 and exporter._remote is None  # sealed here
    assert _shut_down_to_one_bundle(exporter, tmp_path) == ids


def test_a_shutdown_begun_while_the_start_after_a_fork_runs_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shutdown() found no processes and returned; the start then installed them,
    # and nothing ever stopped them or waited for what was sent to them.
    rec = Recorder()
    exporter = _as_forked(_exporter(tmp_path / "out"))
    release, entered = threading.Event(), threading.Event()
    groups = _stretched(monkeypatch, _exporter_module, "SealingProcesses", release, entered)
    _trace(rec, steps=1)
    results: list[SpanExportResult] = []
    export = threading.Thread(target=lambda: results.append(exporter.export(rec.take())))
    export.start()
    entered.wait(30)
    exporter.shutdown()
    release.set()
    export.join(30)
    assert results == [SpanExportResult.FAILURE]  # after shutdown: not certified
    assert exporter._remote is None
    (process,) = groups[0].processes
    assert process._proc.wait(15) == 0


def test_shutdown_from_a_signal_handler_during_a_loss_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler that shuts the provider down may run on the thread that is giving
    # the processes up: waiting for that thread's own loss would never end.
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")
    remote = _group(exporter)
    _kill(remote.processes[0])
    give_up = remote.give_up

    def interrupted() -> Any:
        gone = give_up()
        exporter.shutdown(timeout_millis=1000)  # as a SIGTERM handler would, here
        return gone

    monkeypatch.setattr(remote, "give_up", interrupted)
    _trace(rec, steps=1)
    # Sooner than shutdown()'s least deadline (5 s), which a wait would run out.
    returns_within(lambda: exporter.export(rec.take()), 4, "export() with shutdown inside")
    assert exporter._shutdown


def test_a_batch_sent_after_the_shutdown_request_is_reported_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child that answered the shutdown request reads nothing more: a batch an
    # export thread wrote to it then (it had read the processes before shutdown()
    # took them) was acknowledged and never sealed.
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")
    remote = _group(exporter)
    _trace(rec, steps=1)
    late = [span for span in rec.take() if span.name.startswith("llm")]
    close = remote.close
    sent: list[int] = []

    def exported_meanwhile(timeout: float) -> Any:
        sent.append(exporter._send(remote, late, []))
        return close(timeout)

    monkeypatch.setattr(remote, "close", exported_meanwhile)
    exporter.shutdown()
    assert sent == [1]  # one batch not certified: export() says FAILURE
    assert not list(tmp_path.glob("out/*.spanproof.json"))


def test_a_fork_on_the_thread_that_is_spawning_does_not_wait_for_itself() -> None:
    # A signal handler that forks may interrupt a spawn on its own thread.
    code = textwrap.dedent("""
        import os
        from spanproof.exporter import _sealing_process
        with _sealing_process._SPAWNING:
            pid = os.fork()
            if pid == 0:
                os._exit(7)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "7"


@pytest.mark.timeout(120)
def test_a_fork_while_a_sealing_process_is_spawned_waits_for_its_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[Any] = []
    spawning = threading.Event()
    real = _sealing_process.spawn_child

    def slow(*args: Any, **kwargs: Any) -> Any:
        spawned.append(real(*args, **kwargs))
        spawning.set()
        time.sleep(0.5)  # the pipes exist; the process is not registered yet
        return spawned[-1]

    monkeypatch.setattr(_sealing_process, "spawn_child", slow)
    starting = threading.Thread(target=lambda: spawned.append(_exporter(tmp_path / "out")))
    starting.start()
    spawning.wait(30)
    child = spawned[0]
    with _forked_worker(child.stdin) as state:
        starting.join(30)
        exporter = spawned[1]
        exporter.shutdown()
        assert child.wait(15) == 0  # its input closed though the forked worker lives
    assert state in (b"closed", b"other")


@pytest.mark.timeout(120)
def test_a_fork_while_sealing_processes_start_again_leaves_no_copy_of_their_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group still starting belongs to no exporter yet, so a forked worker kept a
    # copy of its input pipe: the processes never saw their input close.
    rec = Recorder()
    exporter = _after_a_loss(monkeypatch, tmp_path / "out")
    _trace(rec, steps=1)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS  # the loss
    release, entered = threading.Event(), threading.Event()
    groups = _stretched(monkeypatch, _exporter_module, "SealingProcesses", release, entered)
    assert exporter.export([]) is SpanExportResult.SUCCESS  # starts them again
    entered.wait(30)
    (process,) = groups[0].processes
    try:
        with _forked_worker(process._stdin) as state:
            exporter.shutdown()
            release.set()
            # shutdown() came first: the late group's input is closed, and it exits.
            wait_for(lambda: process._proc.poll() is not None, timeout=15,
                     what="the late sealing process to exit")
    finally:
        release.set()
    assert state in (b"closed", b"other")
    assert process._proc.returncode == 0


@pytest.mark.parametrize(("lived", "waits"), [
    (None, [60, 120, 240, 480, 960, 1920, 3600, 3600]),  # failed starts
    (3599.0, [60, 120, 240, 480, 960, 1920, 3600, 3600]),
    (3600.0, [60, 60, 60]),  # processes that ran an hour: a loss now and then
])
def test_the_wait_before_starting_again_doubles_up_to_an_hour(
    monkeypatch: pytest.MonkeyPatch, lived: float | None, waits: list[int]
) -> None:
    now = [1000.0]
    monkeypatch.setattr(_sealing_process, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    schedule = _sealing_process.RestartSchedule(60.0, 3600.0)
    got = []
    for _ in waits:
        if lived is not None:
            schedule.started()
            assert schedule.due is None
            now[0] += lived
        got.append(schedule.failed())
        assert schedule.due == now[0] + got[-1]
    assert got == waits


def test_input_closed_while_a_request_holds_the_process_is_closed_when_it_ends(
    tmp_path: Path,
) -> None:
    # close_input() that could not take the process left the closing to a write
    # under way; a request waiting for its answer ended without closing, and the
    # child never saw its input close while this process held on to it.
    exporter = _exporter(tmp_path / "out")
    group = _group(exporter)
    (process,) = group.processes
    os.kill(process.pid, signal.SIGSTOP)
    try:
        asking = threading.Thread(target=group.request, args=("flush", 2.0))
        asking.start()
        wait_for(lambda: process._lock.locked(), what="the request to hold the process")
        process.close_input(0.2)  # the request holds it: left to the request
        assert process.input_blocked
        asking.join(10)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert process._proc.wait(15) == 0  # it saw its input close, sealed and exited
    exporter.shutdown()


def test_input_closed_while_a_send_that_then_fails_holds_the_process_is_closed(
    tmp_path: Path,
) -> None:
    # The holder closes the input whatever it did: a send whose frame could not be
    # built (nothing written) released the process with the input left open.
    exporter = _exporter(tmp_path / "out")
    (process,) = _group(exporter).processes
    reading, fail = threading.Event(), threading.Event()

    class Unreadable:
        @property
        def resource(self) -> Any:
            reading.set()
            fail.wait(10)
            raise RuntimeError("cannot read the span")

    failed: list[BaseException] = []

    def send() -> None:
        try:
            process.send_spans([Unreadable()], [])
        except RuntimeError as e:
            failed.append(e)

    sending = threading.Thread(target=send)
    sending.start()
    assert reading.wait(10)
    process.close_input(0.2)  # the send holds it: left to the send
    assert process.input_blocked
    fail.set()
    sending.join(10)
    assert [str(e) for e in failed] == ["cannot read the span"]
    assert process._proc.wait(15) == 0  # it saw its input close and exited
    exporter.shutdown()


def _large_batches(rec: Recorder, count: int = 4) -> list[list[ReadableSpan]]:
    """*count* batches of 60 traces, each a plain root and an evidence child with
    a 2,000-character attribute: ~130 KB of fields a batch, twice the pipe's 64 KiB."""
    batches = []
    for _ in range(count):
        for _ in range(60):
            with rec.tracer.start_as_current_span("handle-case"):
                with evidence(rec, "llm", **{"app.prompt": os.urandom(1000).hex()}):
                    pass
        batches.append(rec.take())
    return batches


def _evidence_ids(batches: list[list[ReadableSpan]]) -> set[str]:
    return {f"{span.get_span_context().span_id:016x}"
            for batch in batches for span in batch if span.name == "llm"}


def _exporting(exporter: SpanproofSpanExporter, batches: list[list[ReadableSpan]],
               results: list[SpanExportResult]) -> threading.Thread:
    """A thread exporting *batches* one after the other, as a span processor's does."""
    def export_all() -> None:
        for batch in batches:
            results.append(exporter.export(batch))

    thread = threading.Thread(target=export_all, daemon=True)
    thread.start()
    return thread


def test_a_write_a_stopped_process_does_not_take_kills_it_and_declares_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A child that stops reading (SIGSTOP, a debugger, a deadlock) fills its pipe and
    # blocked export() in the span processor's thread until it read again, while the
    # span processor dropped what it could not queue, in no bundle.  Now a write not
    # taken within its allowance kills the child: the export seals here, and what
    # the child held is declared lost.
    monkeypatch.setattr(_sealing_process, "_STALL_SECONDS", 0.5)
    monkeypatch.setattr(_sealing_process, "_WATCH_INTERVAL", 0.1)
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")  # a 30 s grace: the child holds its traces
    process = _only_process(exporter)
    child_instance = exporter.producer.instance
    _trace(rec)
    held = rec.take()
    assert exporter.export(held) is SpanExportResult.SUCCESS
    held_trace = f"{held[0].get_span_context().trace_id:032x}"
    batches = _large_batches(rec)
    results: list[SpanExportResult] = []
    os.kill(process.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
            exporting = _exporting(exporter, batches, results)
            exporting.join(15)
            assert not exporting.is_alive(), "export() still blocked on the stopped child"
        assert results == [SpanExportResult.SUCCESS] * len(batches)
        assert f"the sealing process {process.pid} did not take a write in " in caplog.text
        assert "(stopped, or stuck) and was killed" in caplog.text
        assert "this process seals until sealing processes start again in 60 s" in caplog.text
        assert process._proc.wait(10) == -signal.SIGKILL
    finally:
        if running(process.pid):
            os.kill(process.pid, signal.SIGCONT)
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    declarations = [r.statement for r in sealed
                    if r.statement is not None and r.statement.trace_id == held_trace]
    (declaration,) = declarations
    assert declaration.record_count == 0
    assert declaration.completeness.dropped_spans == 3  # the held trace's evidence spans
    assert declaration.producer.instance not in (child_instance, None)
    certified = {span_id for report in sealed for span_id in record_span_ids(report)}
    assert certified == _evidence_ids(batches)  # the blocked write's spans too


def test_a_write_within_its_allowance_per_byte_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The allowance grows with the frame: a child that takes a large one slowly is
    # not stuck.  Here a child stopped for a second, under an allowance of 0.3 s
    # plus 0.1 ms a byte (~13 s for ~130 KB), is waited for and keeps sealing.
    monkeypatch.setattr(_sealing_process, "_STALL_SECONDS", 0.3)
    monkeypatch.setattr(_sealing_process, "_STALL_SECONDS_PER_BYTE", 1e-4)
    monkeypatch.setattr(_sealing_process, "_WATCH_INTERVAL", 0.1)
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")
    process = _only_process(exporter)
    child_instance = exporter.producer.instance
    batches = _large_batches(rec, 2)
    results: list[SpanExportResult] = []
    os.kill(process.pid, signal.SIGSTOP)
    resume = threading.Timer(1.0, os.kill, (process.pid, signal.SIGCONT))
    resume.start()
    try:
        _exporting(exporter, batches, results).join(15)
    finally:
        resume.join()
    assert results == [SpanExportResult.SUCCESS] * len(batches)
    assert exporter._remote is not None and running(process.pid)
    exporter.shutdown()
    sealed = verified(tmp_path / "out", trust_root(tmp_path))
    assert {r.statement.producer.instance for r in sealed if r.statement} == {child_instance}
    assert {i for r in sealed for i in record_span_ids(r)} == _evidence_ids(batches)


def test_shutdown_returns_while_an_export_is_blocked_on_a_stopped_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A child that stops reading (SIGSTOP, a debugger, a deadlock) fills its pipe and
    # blocks export() in the span processor's thread.  shutdown() must still return
    # by its deadline, or the application's exit hangs with it.  Nothing is lost:
    # once the child reads again it gets the rest of the blocked write, finds its
    # input closed, seals everything and exits.  A write not taken within its
    # allowance kills the child, but not after shutdown() gave up on it: the
    # application may exit before it reads again, but if it does not, nothing the
    # child holds is lost.
    monkeypatch.setattr(_exporter_module, "_MIN_SHUTDOWN_SECONDS", 0.5)
    monkeypatch.setattr(_sealing_process, "_STALL_SECONDS", 3.0)
    monkeypatch.setattr(_sealing_process, "_WATCH_INTERVAL", 0.1)
    rec = Recorder()
    exporter = _exporter(tmp_path / "out")
    process = _only_process(exporter)
    batches = _large_batches(rec)
    results: list[SpanExportResult] = []
    os.kill(process.pid, signal.SIGSTOP)
    try:
        exporting = _exporting(exporter, batches, results)
        exporting.join(1.0)
        assert exporting.is_alive()  # blocked on the stopped child's full pipe
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
            returns_within(lambda: exporter.shutdown(timeout_millis=500), 10,
                           "shutdown() with an export blocked on the stopped child")
        assert f"sealing process {process.pid} did not read its input" in caplog.text
        time.sleep(3.0)  # past the write's allowance
        assert running(process.pid)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    exporting.join(30)
    assert not exporting.is_alive()
    assert process._proc.wait(30) == 0
    assert results[0] is SpanExportResult.SUCCESS  # the blocked write completed
    delivered = _evidence_ids([batch for batch, result in zip(batches, results, strict=False)
                               if result is SpanExportResult.SUCCESS])
    certified = {span_id for report in verified(tmp_path / "out", trust_root(tmp_path))
                 for span_id in record_span_ids(report)}
    assert certified == delivered


def test_process_that_cannot_start_leaves_sealing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.ERROR, logger="spanproof.exporter._exporter"):
        exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    assert exporter._remote is None
    assert "cannot start the sealing process" in caplog.text
    rec = Recorder()
    ids = _trace(rec)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert _shut_down_to_one_bundle(exporter, tmp_path) == ids


_APP_EXITS_WITHOUT_SHUTDOWN = textwrap.dedent("""
    import os, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from spanproof.exporter import SigningKey, SpanproofSpanExporter

    exporter = SpanproofSpanExporter(sys.argv[1], signing_key=SigningKey.from_seed(
        bytes(range(32))), sealing_process=True, seal_grace=3600)
    print(exporter._remote.processes[0].pid, flush=True)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("step", attributes={"gen_ai.operation.name": "x"}):
            pass
    os._exit(0)  # no shutdown, no atexit: as if the application were killed
""")


@pytest.mark.timeout(120)
def test_application_exit_without_shutdown_still_seals(tmp_path: Path) -> None:
    out = tmp_path / "out"
    app = subprocess.run([sys.executable, "-c", _APP_EXITS_WITHOUT_SHUTDOWN, str(out)],
                         capture_output=True, text=True, timeout=60, check=True)
    child = int(app.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(out.glob("*.spanproof.json")):
        time.sleep(0.05)
    (report,) = reports(out, trust_root(tmp_path))
    assert report.verdict is Verdict.OK, report.reason
    assert report.statement is not None and report.statement.seal_reason == "shutdown"
    assert [r["span"]["name"] for r in report.records or ()] == ["step"]
    while time.monotonic() < deadline and running(child):
        time.sleep(0.05)
    if running(child):
        pytest.fail("the sealing process outlived its application")


def test_attribute_sample_covers_every_value_kind() -> None:
    kinds = {type(v).__name__ for v in ATTRIBUTES_SAMPLE.values()}
    assert {"str", "bool", "int", "float", "tuple"} <= kinds
    assert any(isinstance(v, float) and math.isnan(v) for v in ATTRIBUTES_SAMPLE.values())


@pytest.mark.timeout(120)
def test_forked_worker_starts_its_own_sealing_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exporter = _exporter(out)
    parent_process = _group(exporter)
    # Forked while the watch thread holds its event's lock (as it does for a moment
    # each second): the worker must not need that lock, which no thread of its own
    # will ever release.
    watch_lock = parent_process._watch_stop._cond  # type: ignore[attr-defined]
    with watch_lock:
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked worker
        code = 1
        signal.alarm(60)  # a worker that deadlocks dies instead of hanging the suite
        try:
            rec = Recorder()
            _trace(rec, steps=1)
            ok = exporter.export(rec.take()) is SpanExportResult.SUCCESS
            own = exporter._remote
            exporter.shutdown()
            code = 2
            if ok and own is not None and own.processes[0].pid != parent_process.processes[0].pid:
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked worker did not exit")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"worker status {status}"
    rec = Recorder()
    _trace(rec, steps=2)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter._remote is parent_process  # the worker's exit did not disturb it
    exporter.shutdown()
    rs = verified(out, trust_root(tmp_path))
    assert sorted(len(r.records or ()) for r in rs) == [1, 2]
    assert len({r.statement.producer.instance for r in rs if r.statement}) == 2


def test_sealing_process_yields_the_cpu_to_the_application(tmp_path: Path) -> None:
    exporter = _exporter(tmp_path / "out")
    assert exporter._remote is not None
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, _only_process(exporter).pid) == min(own + 10, 19)
    exporter.shutdown()


@pytest.mark.parametrize("thread", ["main", "another"])
def test_sigterm_makes_the_sealing_process_seal_what_it_holds(tmp_path: Path,
                                                              thread: str) -> None:
    # The kernel gives a process's signal to any thread that does not block it,
    # usually the main one, which reads the parent's frames; delivered to another
    # (the sealer's), it must still wake the reader at once.
    if thread == "another":
        skip_unless_available()
    rec = Recorder()
    root = rec.tracer.start_span("still-open")  # the trace stays open: nothing is due
    with rec.tracer.start_as_current_span(
        "step", context=trace.set_span_in_context(root),
        attributes={"gen_ai.operation.name": "chat"},
    ) as step:
        ids = [f"{step.get_span_context().span_id:016x}"]
    exporter = _exporter(tmp_path / "out")
    process = _only_process(exporter)
    assert process is not None
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush()  # the child has admitted the span
    assert not list((tmp_path / "out").glob("*.spanproof.json"))
    if thread == "main":
        os.kill(process.pid, signal.SIGTERM)
    else:
        signal_another_thread(process.pid, signal.SIGTERM)  # the sealer's, at least
    assert process._proc.wait(30) == 0
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert record_span_ids(report) == ids
    assert report.statement is not None and report.statement.seal_reason == "shutdown"
    exporter.shutdown()  # the child is gone: logged, nothing raised


def test_span_that_cannot_be_read_does_not_leave_its_resource_unsent(tmp_path: Path) -> None:
    # A span whose fields cannot be read makes its batch go as normalized bodies;
    # a resource first seen in that batch must still be sent with a later batch.
    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    process = _only_process(exporter)
    assert process is not None
    resource = Resource({"service.name": "new-service"})
    broken = ReadableSpan("broken", context=None, resource=resource,
                          attributes={"gen_ai.operation.name": "chat"})
    assert exporter.export([broken]) is SpanExportResult.FAILURE  # declared, not sent
    rec = Recorder(resource=resource)
    ids = _trace(rec)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush()
    assert _only_process(exporter) is process and process._proc.poll() is None
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    assert record_span_ids(report) == ids
    # The broken span, of no trace it can name, is declared in the next bundle.
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == 1
    assert report.records is not None
    assert report.records[0]["resource"]["attributes"]["service.name"] == {
        "stringValue": "new-service"}


def test_an_export_with_no_evidence_and_no_local_root_sends_the_child_nothing(
    tmp_path: Path,
) -> None:
    exporter = _exporter(tmp_path / "out")
    frames = sent_frames(_only_process(exporter))
    rec = Recorder()
    with rec.tracer.start_as_current_span("plain-root"):
        with rec.tracer.start_as_current_span("plain-child"):
            pass
    spans = rec.take()
    children = [s for s in spans if s.parent is not None]
    roots = [s for s in spans if s.parent is None]
    assert exporter.export(children) is SpanExportResult.SUCCESS
    assert frames == []
    assert exporter.export(roots) is SpanExportResult.SUCCESS
    assert len(frames) == 1  # an ended local root still reaches the child
    exporter.shutdown()


def test_equal_scopes_and_resources_are_sent_once_and_the_cache_stays_bounded(
    tmp_path: Path,
) -> None:
    # An SDK that makes a new scope object per get_tracer call must not grow the
    # exporter's memory, or resend the scope, with every call.
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    process = _only_process(exporter)
    assert process is not None
    rec = Recorder()
    ids = _trace(rec, steps=1)
    (template,) = [s for s in rec.take() if s.attributes.get("gen_ai.operation.name")]
    copies = []
    for _ in range(300):
        span = copy.copy(template)
        span._instrumentation_scope = InstrumentationScope("lib", "1.0")
        span._resource = Resource({"service.name": "svc"})
        copies.append(span)
    assert exporter.export(copies) is SpanExportResult.SUCCESS
    assert len(process._scopes._by_value) == 1
    assert len(process._resources._by_value) == 1
    assert len(process._scopes._by_id) <= 256
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert record_span_ids(report) == ids  # 300 deliveries of one span: one record
    assert report.records is not None
    assert report.records[0]["scope"]["name"] == "lib"


def test_interleaved_resources_and_scopes_in_one_batch_keep_their_own(tmp_path: Path) -> None:
    # The parent numbers a span's resource and scope only when they differ from the
    # previous span's; spans of two services and two libraries, alternating in one
    # batch, must each reach the child with their own.
    recorders = [Recorder(resource=Resource({"service.name": f"svc-{n}"})) for n in "ab"]
    spans: list[ReadableSpan] = []
    expected: dict[str, tuple[str, str]] = {}
    for round_ in range(2):
        for n, rec in zip("ab", recorders, strict=True):
            library = f"lib-{n}{round_}"
            tracer = rec.provider.get_tracer(library, "1.0")
            with tracer.start_as_current_span("root") as root:
                with tracer.start_as_current_span("llm", attributes={
                        "gen_ai.operation.name": "chat"}):
                    pass
            expected[f"{root.get_span_context().trace_id:032x}"] = (f"svc-{n}", library)
    taken = [rec.take() for rec in recorders]
    for pair in zip(*taken, strict=True):  # a0 b0 a0 b0 ... a1 b1 ...: alternating
        spans.extend(pair)
    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    assert exporter._remote is not None
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    found = {}
    for report in verified(tmp_path / "out", trust_root(tmp_path)):
        assert report.statement is not None and report.records is not None
        (record,) = report.records
        found[report.statement.trace_id] = (
            record["resource"]["attributes"]["service.name"]["stringValue"],
            record["scope"]["name"],
        )
    assert found == expected


def test_resources_and_scopes_equal_only_in_python_keep_their_own_typed_values(
    tmp_path: Path,
) -> None:
    # 1, True and 1.0 (and 0.0 and -0.0) are equal in Python but are different
    # typed values (SPEC §2.3): resources and scopes that differ only so must not
    # share one definition in the sealing process, or the spans of one are
    # certified with the other's values.
    values: list[Any] = [1, True, 1.0, 0.0, -0.0]
    spans: list[ReadableSpan] = []
    expected: dict[str, str] = {}
    for value in values:
        rec = Recorder(resource=Resource({"r": value}))
        tracer = rec.provider.get_tracer("lib", attributes={"s": value})
        with tracer.start_as_current_span(
                "llm", attributes={"gen_ai.operation.name": "chat"}) as span:
            pass
        expected[f"{span.get_span_context().trace_id:032x}"] = repr(value)
        spans.extend(rec.take())
    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    assert exporter._remote is not None
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    found = {}
    for report in verified(tmp_path / "out", trust_root(tmp_path)):
        assert report.statement is not None and report.records is not None
        (record,) = report.records
        found[report.statement.trace_id] = (record["resource"]["attributes"]["r"],
                                            record["scope"]["attributes"]["s"])
    typed = {"1": {"intValue": "1"}, "True": {"boolValue": True},
             "1.0": {"doubleValue": "1"}, "0.0": {"doubleValue": "0"},
             "-0.0": {"doubleValue": "-0"}}
    assert found == {trace_id: (typed[shown], typed[shown])
                     for trace_id, shown in expected.items()}


def test_resources_and_scopes_numbered_stay_bounded_when_each_request_has_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every distinct resource or scope was numbered for good, here and in the
    # child: an app making a scope per request (get_tracer(f"agent-{id}")) grew
    # both processes with every request.  Numbering now starts again past a
    # bound, and each span still reaches the child with its own.
    monkeypatch.setattr(_sealing_process._Numbering, "_VALUE_LIMIT", 4, raising=False)
    exporter = _exporter(tmp_path / "out", seal_grace=0.0)
    process = _only_process(exporter)
    assert process is not None
    rec = Recorder()
    expected = {}
    for n in range(12):
        tracer = rec.provider.get_tracer(f"agent-{n}", "1.0")
        with tracer.start_as_current_span("root") as root:
            with tracer.start_as_current_span("llm", attributes={
                    "gen_ai.operation.name": "chat"}):
                pass
        expected[f"{root.get_span_context().trace_id:032x}"] = f"agent-{n}"
        assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
        assert len(process._scopes._by_value) <= 4
    exporter.shutdown()
    found = {}
    for report in verified(tmp_path / "out", trust_root(tmp_path)):
        assert report.statement is not None and report.records is not None
        (record,) = report.records
        found[report.statement.trace_id] = record["scope"]["name"]
    assert found == expected


def test_a_written_bundle_is_settled_by_the_write_that_made_it_durable(tmp_path: Path) -> None:
    # It was settled when the sealer took the write's outcome, later: a sealing
    # process killed in between had spans already in written bundles declared lost
    # as well (signed counts over the truth, by up to 207 spans in a run).
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=signing_key(),
                                     seal_grace=0.0)
    settled: list[tuple[int, str]] = []
    exporter._serve_parent("00000000000000aa", lambda spans: settled.append(
        (spans, threading.current_thread().name)))
    rec = Recorder()
    for _ in range(5):
        with rec.tracer.start_as_current_span("root"), evidence(rec, "step"):
            pass
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    assert exporter.force_flush(10_000)
    exporter.shutdown()
    assert sum(spans for spans, _ in settled) == 5
    assert {name.rsplit("_", 1)[0] for _, name in settled} == {"spanproof-write"}
