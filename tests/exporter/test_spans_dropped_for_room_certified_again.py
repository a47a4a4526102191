"""A span the processor's assembler had no room for (max_pending_traces, the sealer
behind) is declared dropped in its trace's bundle; its journal entry used to stay
after a clean shutdown, so the next start certified it again as "recovered" (7,142
of 14,585 spans of a 3,000-trace overload, declared lost and certified both)."""

from __future__ import annotations

from typing import Any

from exporter_support import Recorder, evidence, reports, signing_key, span_hex, trust_root

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.exporter.assembly import TraceAssembler
from spanproof.verifier import Verdict


def _after_a_restart(tmp_path: Any, monkeypatch: Any, entry: Any,
                     trace_id: str | None = None) -> tuple[list[str], int]:
    """Start the processor again on the same output (the assembler's room back as
    it was), shut it down, and return the span ids certified in all the bundles and
    the spans they declare dropped (for *trace_id* only, when given)."""
    monkeypatch.setattr(TraceAssembler, "_entry", entry)
    out = tmp_path / "out"
    EvidenceSpanProcessor(out, signing_key=signing_key(), select_all=True).shutdown()
    certified: list[str] = []
    declared = 0
    for report in reports(out, trust_root(tmp_path), allow_incomplete=True):
        assert report.verdict is Verdict.OK, (report.source, report.reason)
        assert report.statement is not None
        certified += [r["span"]["spanId"] for r in report.records or ()]
        if trace_id is None or report.statement.trace_id == trace_id:
            declared += report.statement.completeness.dropped_spans
    return certified, declared


def test_span_dropped_for_room_is_not_certified_again_at_the_next_start(
        tmp_path: Any, monkeypatch: Any) -> None:
    out = tmp_path / "out"
    rec = Recorder()
    with evidence(rec, "kept"):
        pass
    with evidence(rec, "no room"):
        pass
    kept, no_room = rec.take()
    full_trace = span_hex(no_room)[0]
    entry = TraceAssembler._entry
    refused: list[str] = []

    def no_room_once(self: TraceAssembler, trace_id: str, now: float) -> Any:
        if trace_id == full_trace and not refused:
            refused.append(trace_id)  # as when max_pending_traces traces wait to be sealed
            return None
        return entry(self, trace_id, now)

    monkeypatch.setattr(TraceAssembler, "_entry", no_room_once)
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), select_all=True)
    processor.on_end(kept)
    processor.on_end(no_room)
    assert processor.force_flush()
    processor.shutdown()
    assert refused
    # The next start finds nothing of this clean shutdown's to recover.
    certified, declared = _after_a_restart(tmp_path, monkeypatch, entry, full_trace)
    assert certified == [span_hex(kept)[1]]
    assert declared == 1


def test_span_dropped_for_room_of_a_trace_not_remembered_is_not_certified_again(
        tmp_path: Any, monkeypatch: Any) -> None:
    # More traces lose spans than max_pending_traces: the first one's count is
    # declared in the next bundle of any trace, which must retire its entry too.
    out = tmp_path / "out"
    rec = Recorder()
    for name in ("no room", "no room either", "kept"):
        with evidence(rec, name):
            pass
    first, second, kept = rec.take()
    full = {span_hex(first)[0], span_hex(second)[0]}
    entry = TraceAssembler._entry
    refused: set[str] = set()

    def no_room_once(self: TraceAssembler, trace_id: str, now: float) -> Any:
        if trace_id in full - refused:
            refused.add(trace_id)
            return None
        return entry(self, trace_id, now)

    monkeypatch.setattr(TraceAssembler, "_entry", no_room_once)
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), select_all=True,
                                      max_pending_traces=1)
    for span in (first, second, kept):
        processor.on_end(span)
    assert processor.force_flush()
    processor.shutdown()
    assert refused == full
    certified, declared = _after_a_restart(tmp_path, monkeypatch, entry)
    assert certified == [span_hex(kept)[1]]
    assert declared == 2
