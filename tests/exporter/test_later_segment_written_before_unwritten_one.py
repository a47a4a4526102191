"""A trace's segment is written only once the segment it continues is (SPEC §4.4).

The SDK exporter kept a segment its sink could not write for a retry, and went on
writing the trace's next segment meanwhile.  An ``EvidenceSpanProcessor`` then also
journaled that next segment as sealed: after a crash, the unwritten segment's spans
were recovered after it, so that segment was never stored and the chain never linked
from genesis, with nothing declared.  The same chain was left when the processor
discarded the unwritten segment (too many waited for a failing sink) and the trace
went on: its spans, left in the journal, were sealed after the trace's last segment.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    evidence,
    make_exporter,
    signing_key,
    span_hex,
    trust_root,
    verified,
)
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.exporter import _exporter as exporter_module
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import BundleReport
from spanproof.verifier.verify import link_segments

_NO_ROOM = OSError(errno.ENOSPC, "No space left on device")


class _NoRoomForSegment0:
    """Refuses segment 0 of every trace while ``full`` (the first bundle of a trace
    is the one with no room, the next one fits)."""

    def __init__(self) -> None:
        self.full = True

    def refuses(self, bundle: Any) -> bool:
        return self.full and bundle.statement.segment_index == 0


def _sink(out: Path, disk: _NoRoomForSegment0, kind: str) -> DirectorySink:
    """A DirectorySink whose bundles the writer thread writes in groups (``group``), or
    a subclass of it, written one by one on the sealing thread (``one_by_one``)."""
    if kind == "group":
        sink = DirectorySink(out)
        stage = sink._stage

        def refusing_stage(bundle: Any, *, fsync: bool) -> Any:
            if disk.refuses(bundle):
                raise _NO_ROOM
            return stage(bundle, fsync=fsync)

        sink._stage = refusing_stage  # type: ignore[method-assign]
        return sink

    class OneByOne(DirectorySink):
        def write(self, bundle: Any) -> str:
            if disk.refuses(bundle):
                raise _NO_ROOM
            return super().write(bundle)

    return OneByOne(out)


def _processor(out: Path, **kwargs: Any) -> EvidenceSpanProcessor:
    """A processor with the test key, seal grace and idle timeout long."""
    return EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=3600.0,
                                 idle_timeout=3600.0, max_records=2, **kwargs)


def _tracer(processor: EvidenceSpanProcessor) -> Any:
    provider = TracerProvider(resource=Resource.create({"service.name": "test-svc"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider.get_tracer("tests.exporter")


def _step(tracer: Any, name: str) -> str:
    """End an evidence span named *name*; its span id."""
    with tracer.start_as_current_span(
            name, attributes={"gen_ai.operation.name": "chat"}) as step:
        pass
    return span_hex(step)[1]


def _chain(reports: list[BundleReport]) -> list[tuple[bool, tuple[int, ...], tuple[str, ...]]]:
    return [(link.ok, link.segments, link.remarks) for link in link_segments(reports)]


@pytest.mark.parametrize("kind", ["group", "one_by_one"])
@pytest.mark.parametrize("same_pass", [False, True], ids=["next_pass", "same_pass"])
@pytest.mark.parametrize("memory", [65_536, 0], ids=["remembered", "forgotten"])
def test_a_segment_is_not_written_while_the_one_it_continues_is_not(
    tmp_path: Path, kind: str, same_pass: bool, memory: int
) -> None:
    # "forgotten": the assembler forgets a trace once sealed (sealed_trace_memory 0,
    # or full); its next segment was sealed as a second segment 0, since the first
    # was not in the output directory yet, and the trace had no chain.
    out = tmp_path / "out"
    disk = _NoRoomForSegment0()
    exporter = make_exporter(out, FakeClock(), max_records=2, sink=_sink(out, disk, kind),
                             sealed_trace_memory=memory)
    rec = Recorder()
    with rec.tracer.start_as_current_span("request"):
        for n in range(4 if same_pass else 2):
            with evidence(rec, f"step-{n}"):
                pass
        exporter.export(rec.take())
        if not same_pass:
            assert exporter.force_flush() is False  # segment 0 (size limit): no room
            with evidence(rec, "step-2"):
                pass
    exporter.export(rec.take())
    assert exporter.force_flush() is False  # segment 1 fits, but waits for segment 0
    assert list(out.glob("*.spanproof.json")) == []
    with exporter._seal_lock:  # (the sealer retries them meanwhile)
        assert [b.statement.segment_index for b in exporter._unwritten] == [0, 1]

    disk.full = False
    assert exporter.force_flush() is True
    exporter.shutdown()
    reports = verified(out, trust_root(tmp_path))
    assert sorted(r.statement.segment_index for r in reports if r.statement) == [0, 1]
    [(ok, segments, _)] = _chain(reports)
    assert (ok, segments) == (True, (0, 1))


def test_a_journaled_segment_that_cannot_be_written_is_not_overtaken_by_the_next(
    tmp_path: Path,
) -> None:
    # Segment 0 could not be written; segment 1 was, and was journaled as sealed.
    # After a crash, segment 0's spans were recovered as segment 2: segments 1 and 2
    # formed a chain without segment 0, and no bundle said why.
    out = tmp_path / "out"
    processor = _processor(out, sink=_sink(out, _NoRoomForSegment0(), "one_by_one"))
    tracer = _tracer(processor)
    steps = []
    with tracer.start_as_current_span("request"):
        for n in range(3):
            steps.append(_step(tracer, f"step-{n}"))
            assert processor.force_flush(10_000) is True  # journaled
    assert processor.force_flush(10_000) is True  # the root ended: segment 1 sealed
    processor.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]  # a crash

    recovering = EvidenceSpanProcessor(out, signing_key=signing_key(), max_records=2)
    recovering.shutdown()
    reports = verified(out, trust_root(tmp_path))
    assert sorted(r.statement.segment_index for r in reports if r.statement) == [0, 1]
    assert sorted(record["span"]["spanId"] for r in reports
                  for record in r.records or ()) == sorted(steps)
    assert _chain(reports) == [(True, (0, 1), ())]


@pytest.mark.parametrize("then", ["stop", "crash"])
@pytest.mark.parametrize("kind", ["group", "one_by_one"])
@pytest.mark.parametrize("segment_1", ["waiting", "sealed_later"])
def test_a_trace_going_on_past_a_discarded_segment_declares_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, segment_1: str, then: str
) -> None:
    # Segment 0 waited for a failing sink (with segment 1 behind it, or alone) until
    # other bundles had it discarded: its spans stay journaled, for the next start.
    # Once segment 1 was written, that start sealed them after it, and segment 0 was
    # missing from the chain with nothing declaring it.  Its spans are now declared
    # dropped in the trace's next bundle (journaled first, for a crash before it).
    monkeypatch.setattr(exporter_module, "_MAX_UNWRITTEN", 2)
    out = tmp_path / "out"
    disk = _NoRoomForSegment0()
    processor = _processor(out, sink=_sink(out, disk, kind))
    tracer = _tracer(processor)
    waiting = segment_1 == "waiting"
    with tracer.start_as_current_span("request") as root:
        trace_id = span_hex(root)[0]
        steps = [_step(tracer, f"step-{n}") for n in range(4 if waiting else 2)]
        assert processor.force_flush(10_000) is True  # segment 0 (and 1) kept unwritten
        for n in range(1 if waiting else 2):
            with tracer.start_as_current_span("other", context=Context()):  # another trace
                _step(tracer, f"other-step-{n}")
            assert processor.force_flush(10_000) is True  # one more kept unwritten
        with processor.exporter._seal_lock:  # (the sealer retries them meanwhile)
            kept = [(b.statement.trace_id, b.statement.segment_index)
                    for b in processor.exporter._unwritten]
        assert (trace_id, 0) not in kept  # discarded (segment 1 may be written by now)
        disk.full = False
        assert processor.force_flush(10_000) is True
        if not waiting:
            steps += [_step(tracer, f"step-{n}") for n in (2, 3)]
        assert processor.force_flush(10_000) is True  # segment 1 is written
    if then == "crash":
        processor.exporter._journal.forget_after_fork()  # type: ignore[attr-defined]
    else:
        assert processor.force_flush(10_000) is True  # the root ended: the declaration
        processor.shutdown()
    recovering = _processor(out)
    recovering.shutdown()
    reports = [r for r in verified(out, trust_root(tmp_path), allow_incomplete=True)
               if r.statement is not None and r.statement.trace_id == trace_id]
    found = {r.statement.segment_index: r.statement for r in reports if r.statement}
    # Segment 2 declares segment 0's spans: the trace's next bundle, or after a crash
    # before it, the recovered one (from the journaled count); the recovered one holds
    # them too.
    assert sorted(found) == ([1, 2] if then == "crash" else [1, 2, 3])
    assert found[2].completeness.dropped_spans == 2
    if then == "stop":
        assert any("discarded unwritten" in note for note in found[2].completeness.notes)
        assert found[3].completeness.dropped_spans == 0
    [recovered] = [r for r in reports if r.statement and r.statement.seal_reason == "recovered"]
    assert recovered.statement is found[max(found)]
    assert [r["span"]["spanId"] for r in recovered.records or ()] == steps[:2]
    assert _chain(reports) == [(True, tuple(sorted(found)), ("segment 0 not present",))]


def test_a_forgotten_trace_continues_after_its_segment_being_written(tmp_path: Path) -> None:
    # The writer thread is still writing segment 0 when the trace, already forgotten
    # (sealed_trace_memory 0), sends another span: it is sealed as segment 1.
    out = tmp_path / "out"
    sink = DirectorySink(out)
    stage, writing = sink._stage, threading.Event()

    def slow_stage(bundle: Any, *, fsync: bool) -> Any:
        if bundle.statement.segment_index == 0:
            assert writing.wait(10.0)
        return stage(bundle, fsync=fsync)

    sink._stage = slow_stage  # type: ignore[method-assign]
    exporter = make_exporter(out, FakeClock(), max_records=2, sink=sink,
                             sealed_trace_memory=0)
    rec = Recorder()
    with rec.tracer.start_as_current_span("request"):
        for n in range(2):
            with evidence(rec, f"step-{n}"):
                pass
        exporter.export(rec.take())
        assert exporter.force_flush(100) is False  # segment 0 sealed, being written
        with evidence(rec, "step-2"):
            pass
    exporter.export(rec.take())
    assert exporter.force_flush(100) is False
    with exporter._seal_lock:
        assert [b.statement.segment_index for b, _ in exporter._inflight] == [0, 1]
    writing.set()
    assert exporter.force_flush() is True
    exporter.shutdown()
    reports = verified(out, trust_root(tmp_path))
    assert _chain(reports) == [(True, (0, 1), ())]
