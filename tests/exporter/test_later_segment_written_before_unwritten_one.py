"""A trace's segment is written only once the segment it continues is (SPEC §4.4).

The SDK exporter kept a segment its sink could not write for a retry, and went on
writing the trace's next segment meanwhile.  An ``EvidenceSpanProcessor`` then also
journaled that next segment as sealed: after a crash, the unwritten segment's spans
were recovered after it, so that segment was never stored and the chain never linked
from genesis, with nothing declared.
"""

from __future__ import annotations

import errno
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
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor
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


def _chain(reports: list[BundleReport]) -> list[tuple[bool, tuple[int, ...], tuple[str, ...]]]:
    return [(link.ok, link.segments, link.remarks) for link in link_segments(reports)]


@pytest.mark.parametrize("kind", ["group", "one_by_one"])
@pytest.mark.parametrize("same_pass", [False, True], ids=["next_pass", "same_pass"])
def test_a_segment_is_not_written_while_the_one_it_continues_is_not(
    tmp_path: Path, kind: str, same_pass: bool
) -> None:
    out = tmp_path / "out"
    disk = _NoRoomForSegment0()
    exporter = make_exporter(out, FakeClock(), max_records=2, sink=_sink(out, disk, kind))
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
    disk = _NoRoomForSegment0()
    processor = EvidenceSpanProcessor(
        out, signing_key=signing_key(), seal_grace=3600.0, idle_timeout=3600.0,
        max_records=2, sink=_sink(out, disk, "one_by_one"))
    provider = TracerProvider(resource=Resource.create({"service.name": "test-svc"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests.exporter")
    steps = []
    with tracer.start_as_current_span("request"):
        for n in range(3):
            with tracer.start_as_current_span(
                    f"step-{n}", attributes={"gen_ai.operation.name": "chat"}) as step:
                pass
            steps.append(span_hex(step)[1])
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
