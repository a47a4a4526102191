"""What a receiver declared about a trace survives a crash before the trace is sealed.

Rejected spans and conflicting versions of a span are declared in the trace's next
bundle (SPEC §5.3).  They are journaled with the spans of their request, so the
bundle the next start recovers declares them too; they were kept in memory only,
and a recovered bundle claimed a trace without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from receiver_support import (
    TRACE_A,
    TRACE_B,
    FakeClock,
    crash,
    otlp_span,
    quiet_receiver,
    request,
    restart,
    signing_key,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter import journal
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.sinks import DirectorySink


def crash_after(out: Path, clock: FakeClock, *requests: Any, sealed: Any = None,
                **kwargs: Any) -> None:
    """Ingest *sealed* and seal it, then ingest *requests* and crash (*kwargs* go to
    the receiver)."""
    first = quiet_receiver(out, clock, **kwargs)
    first.start()
    if sealed is not None:
        first(sealed.resource_spans)
        clock.advance(5)
        assert first.flush()
    for req in requests:
        first(req.resource_spans)
    crash(first)


def rejecting_during_first_write(out: Path, clock: FakeClock) -> Receiver:
    """A started receiver that, while it writes a bundle of segment 0, is sent a late
    span of TRACE_A and a malformed one (rejected)."""
    receiver: Receiver | None = None

    class DuringWrite(DirectorySink):
        def write(self, bundle: Any) -> str:
            path = super().write(bundle)
            if receiver is not None and bundle.statement.segment_index == 0:
                bad = otlp_span(TRACE_A, 4, parent=1)
                bad.span_id = b"\x01\x02\x03"
                late = request(otlp_span(TRACE_A, 3, parent=1, name="late"), bad)
                assert receiver(late.resource_spans).rejected == 1
            return path

    receiver = Receiver(out, signing_key=signing_key(), clock=clock, seal_grace=2.0,
                        idle_timeout=30.0, sink=DuringWrite(str(out)))
    receiver.start()
    return receiver


def test_a_rejected_span_is_declared_after_a_crash(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    bad = otlp_span(TRACE_A, 2, parent=1)
    bad.span_id = b"\x01\x02\x03"  # not 8 bytes: rejected, reported in partial_success
    crash_after(out, clock, request(otlp_span(TRACE_A, 1, name="open"), bad))
    assert len(restart(out, clock)) == 1
    (report,) = verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
    assert report.statement is not None and report.statement.seal_reason == "recovered"
    assert span_ids(report) == [span_id(1)]
    assert report.statement.completeness.rejected_spans == 1
    assert any("recorded in the journal as rejected" in note
               for note in report.statement.completeness.notes)


def test_a_conflicting_version_is_declared_after_a_crash(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    crash_after(out, clock, request(otlp_span(TRACE_A, 2, parent=1, name="deny refund")),
                sealed=request(otlp_span(TRACE_A, 1, name="root"),
                               otlp_span(TRACE_A, 2, parent=1, name="approve refund")))
    assert len(restart(out, clock)) == 1
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert [r.statement.segment_index for r in reports if r.statement] == [0, 1]
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)], [span_id(2)]]
    recovered = reports[1].statement
    assert recovered is not None and recovered.seal_reason == "recovered"
    assert recovered.completeness.conflicts == (span_id(2),)


def test_a_span_id_of_a_sealed_segment_the_span_memory_forgot_is_declared_after_a_crash(
    tmp_path: Path,
) -> None:
    # The receiver's span memory (dedup_memory) had forgotten the first version, so
    # only the assembler's memory of the chain's span ids knew of the repeat: the
    # live bundle listed it, the journal did not, and the bundle recovered after a
    # crash certified the span id a second time in the chain, undeclared.
    clock = FakeClock()
    out = tmp_path / "out"
    crash_after(out, clock, request(otlp_span(TRACE_A, 2, parent=1, name="deny refund")),
                sealed=request(otlp_span(TRACE_A, 1, name="root"),
                               otlp_span(TRACE_A, 2, parent=1, name="approve refund")),
                dedup_memory=0)
    assert len(restart(out, clock)) == 1
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)], [span_id(2)]]
    recovered = reports[1].statement
    assert recovered is not None and recovered.seal_reason == "recovered"
    assert recovered.completeness.conflicts == (span_id(2),)


def test_a_rejection_declared_in_a_sealed_segment_is_not_declared_again(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    bad = otlp_span(TRACE_A, 3, parent=1)
    bad.span_id = b"\x01\x02\x03"
    crash_after(out, clock, request(otlp_span(TRACE_A, 4, parent=1, name="late")),
                sealed=request(otlp_span(TRACE_A, 1, name="root"), bad))
    assert len(restart(out, clock)) == 1
    reports = verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [r.statement.completeness.rejected_spans for r in reports if r.statement] == [1, 0]


def test_a_rejection_arriving_while_its_trace_is_written_is_declared_after_a_crash(
    tmp_path: Path,
) -> None:
    # Its journal entry comes before the written segment's sealed entry, yet the
    # trace's next segment declares it.
    clock = FakeClock()
    out = tmp_path / "out"
    first = rejecting_during_first_write(out, clock)
    first(request(otlp_span(TRACE_A, 1, name="root"), otlp_span(TRACE_A, 2, parent=1))
          .resource_spans)
    clock.advance(5)
    assert first.flush()
    assert first._journal is not None
    crash(first)
    assert len(restart(out, clock)) == 1
    reports = verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)], [span_id(3)]]
    assert [r.statement.completeness.rejected_spans for r in reports if r.statement] == [0, 1]


def test_a_loss_of_no_trace_declared_in_a_bundle_retires_none_of_its_trace_s_own(
    tmp_path: Path,
) -> None:
    # A span of no trace, rejected, is declared in the next bundle of any trace; its
    # count, never journaled under that trace, was taken off the trace's journaled
    # ones: a rejection journaled while the bundle was written went undeclared.
    clock = FakeClock()
    out = tmp_path / "out"
    first = rejecting_during_first_write(out, clock)
    nameless = otlp_span("0" * 32, 9)  # a zero trace id: no trace to declare it in
    assert first(request(nameless, otlp_span(TRACE_A, 1, name="root"))
                 .resource_spans).rejected == 1
    clock.advance(5)
    assert first.flush()
    crash(first)
    assert len(restart(out, clock)) == 1
    reports = verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [span_ids(r) for r in reports] == [[span_id(1)], [span_id(3)]]
    assert [r.statement.completeness.rejected_spans for r in reports if r.statement] == [1, 1]


@pytest.mark.parametrize("positions", [journal.POSITION_MEMORY, 0])
def test_a_late_rejection_is_declared_after_a_crash_once_the_sealed_entry_is_deleted(
    tmp_path: Path, monkeypatch: Any, positions: int,
) -> None:
    # After 64 MiB of other traffic the journal file holding the trace's sealed entry
    # is deleted.  Its chain position is written again with the late spans; beyond
    # the journal's memory of positions (0 here), recovery walks the chain from
    # segment 0 on disk: it took segment 0's declared rejection off the journaled
    # one of the late span.
    monkeypatch.setattr(journal, "ROTATE_BYTES", 1)  # every entry ends its file
    monkeypatch.setattr(journal, "POSITION_MEMORY", positions)
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock)
    first.start()
    bad = otlp_span(TRACE_A, 2, parent=1)
    bad.span_id = b"\x01\x02\x03"
    assert first(request(otlp_span(TRACE_A, 1), bad).resource_spans).rejected == 1
    clock.advance(5)
    assert first.flush()
    _move_journal_on(first, clock)
    late_bad = otlp_span(TRACE_A, 5, parent=1)
    late_bad.span_id = b"\x05"
    assert first(request(otlp_span(TRACE_A, 4, parent=1), late_bad).resource_spans).rejected == 1
    crash(first)
    assert len(restart(out, clock)) == 1
    reports = [r for r in verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
               if r.statement is not None and r.statement.trace_id == TRACE_A]
    assert [span_ids(r) for r in reports] == [[span_id(1)], [span_id(4)]]
    assert [r.statement.completeness.rejected_spans for r in reports if r.statement] == [1, 1]


def _move_journal_on(receiver: Receiver, clock: FakeClock, parent: int | None = None) -> None:
    """Seal three spans of TRACE_B, one at a time: with ``ROTATE_BYTES`` 1, the
    journal files before are deleted."""
    for n in range(3):
        receiver(request(otlp_span(TRACE_B, 30 + n, parent=parent)).resource_spans)
        clock.advance(5)
        assert receiver.flush()


def _conflict_after_rotation(tmp_path: Path, monkeypatch: Any, late: Any,
                             *, keep_disclosures: bool = True) -> list[Any]:
    """Seal TRACE_A's root with a committed value, move the journal past its sealed
    entry (its position beyond the journal's memory), send *late* (a version of the
    root) and crash; restart; TRACE_A's reports."""
    monkeypatch.setattr(journal, "ROTATE_BYTES", 1)  # every entry ends its file
    monkeypatch.setattr(journal, "POSITION_MEMORY", 0)  # recovery walks the disk
    clock = FakeClock()
    out = tmp_path / "out"
    redact = {"redact_attributes": ["customer.*"]}
    first = quiet_receiver(out, clock, **redact)
    first.start()
    first(request(otlp_span(TRACE_A, 1, extra={"customer.email": "a@example.com"}))
          .resource_spans)
    clock.advance(5)
    assert first.flush()
    _move_journal_on(first, clock)
    first(request(late).resource_spans)
    crash(first)
    if not keep_disclosures:
        for path in out.glob("*.disclosures.json"):
            path.unlink()
    restart(out, clock, **redact)
    return [r for r in verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
            if r.statement is not None and r.statement.trace_id == TRACE_A]


def test_a_conflicting_version_in_a_committed_value_survives_a_crash_after_rotation(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    # Recovery walked the trace's chain from segment 0 on disk and matched a
    # committed record by span id alone: the second version, differing only in the
    # committed value, was taken as certified and lost, its conflict undeclared.
    # The disclosure file beside the bundle opens the commitment.
    late = otlp_span(TRACE_A, 1, extra={"customer.email": "mallory@example.com"})
    reports = _conflict_after_rotation(tmp_path, monkeypatch, late)
    assert [span_ids(r) for r in reports] == [[span_id(1)], [span_id(1)]]
    assert [r.statement.completeness.conflicts for r in reports if r.statement] == [
        (), (span_id(1),)]


def test_without_its_disclosures_a_version_differing_in_plain_fields_survives(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    # The committed value cannot be compared, the rest of the span still is.
    late = otlp_span(TRACE_A, 1, name="renamed", extra={"customer.email": "a@example.com"})
    reports = _conflict_after_rotation(tmp_path, monkeypatch, late, keep_disclosures=False)
    assert [span_ids(r) for r in reports] == [[span_id(1)], [span_id(1)]]
    assert reports[1].statement is not None
    assert reports[1].statement.completeness.conflicts == (span_id(1),)


def test_a_segment_that_cannot_be_written_is_not_overtaken_by_the_next(
    tmp_path: Path,
) -> None:
    # Segment 0 could not be written; the next pass retried it (failing again) and
    # sealed, wrote and retired segment 1.  After a crash, segment 0's spans were
    # recovered as segment 2: segment 0 was never stored, and the chain never linked
    # from genesis, with nothing declared.  Nothing more is sealed while a bundle
    # waits to be written.
    import errno

    from spanproof.verifier.verify import link_segments

    class NoRoomForSegment0(DirectorySink):
        def write(self, bundle: Any) -> str:
            s = bundle.statement
            if s.trace_id == TRACE_A and s.segment_index == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(bundle)

    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock, max_records=2, sink=NoRoomForSegment0(str(out)))
    first.start()
    first(request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1),
                  otlp_span(TRACE_A, 3, parent=1)).resource_spans)
    assert not first.flush(1)  # segment 0 (size limit) sealed, not written
    clock.advance(5)
    assert not first.flush(1)  # retried; the root ended, but segment 1 waits
    crash(first)
    restart(out, clock, max_records=2)
    reports = verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
    assert [r.statement.segment_index for r in reports if r.statement] == [0, 1]
    assert sorted(s for r in reports for s in span_ids(r)) == [span_id(n) for n in (1, 2, 3)]
    assert [(link.ok, link.segments) for link in link_segments(reports)] == [(True, (0, 1))]


def test_a_late_rejection_after_a_segment_of_losses_only_is_declared_after_rotation(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    # Segment 1 declared a rejection and held no records; once the file holding its
    # sealed entry was deleted, recovery could not tell it from a segment written
    # but not recorded, and took its rejection off the late one's.
    monkeypatch.setattr(journal, "ROTATE_BYTES", 1)  # every entry ends its file
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock)
    first.start()
    first(request(otlp_span(TRACE_A, 1)).resource_spans)
    clock.advance(5)
    assert first.flush()
    bad = otlp_span(TRACE_A, 2, parent=1)
    bad.span_id = b"\x02"
    assert first(request(bad, otlp_span(TRACE_B, 20)).resource_spans).rejected == 1
    clock.advance(5)
    assert first.flush()  # TRACE_A's segment 1: no records, one rejection
    _move_journal_on(first, clock, parent=20)
    late_bad = otlp_span(TRACE_A, 5, parent=1)
    late_bad.span_id = b"\x05"
    assert first(request(otlp_span(TRACE_A, 4, parent=1), late_bad).resource_spans).rejected == 1
    crash(first)
    restart(out, clock)
    reports = [r for r in verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)
               if r.statement is not None and r.statement.trace_id == TRACE_A]
    assert [(r.statement.segment_index, span_ids(r), r.statement.completeness.rejected_spans)
            for r in reports if r.statement] == [
        (0, [span_id(1)], 0), (1, [], 1), (2, [span_id(4)], 1)]
