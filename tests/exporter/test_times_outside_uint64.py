"""Span and event times outside uint64 (SPEC §2.2).

The OpenTelemetry SDK takes any int as a start, end or event time
(``start_span(start_time=...)``, ``end(end_time=...)``, ``add_event(timestamp=...)``);
a record's times are uint64 nanoseconds, and the verifier fails a record holding a
negative one or one above 2^64 - 1.  Such a span is not certified but declared
rejected in its trace's bundle (INCOMPLETE), so the trace's other spans still
verify: in process, through the sealing process and through the
EvidenceSpanProcessor alike.
"""

from __future__ import annotations

import decimal
import enum
from pathlib import Path
from typing import Any

import pytest
from exporter_support import (
    FakeClock,
    Recorder,
    assert_declared_rejected,
    export_through_a_sealing_process,
    make_exporter,
    processor_recorder,
    record_span_ids,
    span_hex,
    trust_root,
    verified,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from spanproof.exporter.normalize import span_to_body

UINT64_MAX = 2**64 - 1
NOW = 1_800_000_000_000_000_000


def _trace(rec: Recorder, where: str, time: Any) -> tuple[str, str]:
    """A root span and a child whose *where* time is *time*; their span ids."""
    with rec.tracer.start_as_current_span("root") as root:
        start = time if where == "start" else NOW
        child = rec.tracer.start_span("odd", start_time=start)
        if where == "event":
            child.add_event("e", timestamp=time)
        child.end(end_time=time if where == "end" else NOW + 1)
    return span_hex(root)[1], span_hex(child)[1]


def _assert_rejected(tmp_path: Path, where: str, time: Any) -> None:
    """A trace whose child's *where* time is *time*, exported: the child is declared
    rejected, the root certified."""
    rec = Recorder()
    root, _ = _trace(rec, where, time)
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert_declared_rejected(tmp_path / "out", tmp_path, [root])


@pytest.mark.parametrize("where", ["start", "end", "event"])
@pytest.mark.parametrize("time", [-1, 2**64, 2**70, 1e30])
def test_a_time_outside_uint64_is_declared_rejected_not_signed(
    tmp_path: Path, where: str, time: Any
) -> None:
    _assert_rejected(tmp_path, where, time)


def test_the_largest_uint64_time_is_certified(tmp_path: Path) -> None:
    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        span = rec.tracer.start_span("late", start_time=UINT64_MAX)
        span.add_event("e", timestamp=UINT64_MAX)
        span.end(end_time=UINT64_MAX)
    body = span_to_body(rec.spans()[0])["span"]
    assert body["startTimeUnixNano"] == body["endTimeUnixNano"] == str(UINT64_MAX)
    assert body["events"][0]["timeUnixNano"] == str(UINT64_MAX)
    exporter = make_exporter(tmp_path / "out", FakeClock(), select_all=True)
    assert exporter.export(rec.take()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    (report,) = verified(tmp_path / "out", trust_root(tmp_path))
    assert len(record_span_ids(report)) == 2


def test_a_time_outside_uint64_is_declared_rejected_by_the_sealing_process(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    root, _ = _trace(rec, "start", -1)
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    assert_declared_rejected(tmp_path / "out", tmp_path, [root])


def test_a_time_outside_uint64_is_declared_rejected_by_the_evidence_processor(
    tmp_path: Path,
) -> None:
    with processor_recorder(tmp_path / "out") as rec:
        root, _ = _trace(rec, "event", 2**64)
    assert_declared_rejected(tmp_path / "out", tmp_path, [root])


@pytest.mark.parametrize("where", ["start", "end", "event"])
@pytest.mark.parametrize("time", [NOW + 0.75, str(NOW), True, decimal.Decimal(NOW) + 1],
                         ids=["float", "str", "bool", "Decimal"])
def test_a_time_that_is_not_an_int_is_declared_rejected_not_converted(
    tmp_path: Path, where: str, time: Any
) -> None:
    # The SDK keeps any value; its OTLP exporter refuses these.  int() certified
    # 1500.75 as 1500, "17" as 17 and True as 1: times the span never held.
    _assert_rejected(tmp_path, where, time)


def test_a_time_that_is_not_an_int_is_declared_rejected_by_the_sealing_process(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    root, _ = _trace(rec, "end", NOW + 0.5)
    export_through_a_sealing_process(tmp_path / "out", rec.take())
    assert_declared_rejected(tmp_path / "out", tmp_path, [root])


def test_an_int_subclass_time_is_certified_as_its_int_value() -> None:
    class Nanos(enum.IntEnum):
        START = NOW
        END = NOW + 5

    rec = Recorder()
    with rec.tracer.start_as_current_span("root"):
        rec.tracer.start_span("e", start_time=Nanos.START).end(end_time=Nanos.END)
    body = span_to_body(rec.spans()[0])["span"]
    assert (body["startTimeUnixNano"], body["endTimeUnixNano"]) == (str(NOW), str(NOW + 5))
