"""A Collector's retry of a request the receiver accepted in part, then refused, is
not certified twice after the receiver restarted.

A request is admitted chunk by chunk; when a later chunk is refused (overload, a
failing disk) the whole request is answered UNAVAILABLE and the sender retries it
all.  Only the receiver's memory knew the earlier chunks were accepted: stopped
(gracefully, or killed once they were sealed) and started again, it certified them a
second time, under its new producer instance, each chain verifying and nothing
declared.  Those spans are now kept in the journal directory until the retry comes.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from receiver_support import (
    FakeClock,
    crash,
    otlp_span,
    quiet_receiver,
    request,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp_server import Unavailable
from spanproof.exporter.receiver import UNANSWERED_FILE
from spanproof.verifier import BundleReport

TRACES = [f"{n:032x}" for n in (0xA1, 0xA2, 0xA3, 0xA4)]
SPANS_PER_TRACE = 512  # two traces fill the first chunk of 1,024 spans


def _spans(traces: list[str] = TRACES, extra: Any = None) -> list[Any]:
    """Each of *traces*' spans (a root and its children); *extra*, given a trace and a
    span number, the extra attributes of that span."""
    return [otlp_span(trace, n, parent=None if n == 1 else 1,
                      extra=extra(trace, n) if extra is not None else None)
            for trace in traces for n in range(1, SPANS_PER_TRACE + 1)]


def _request() -> Any:
    return request(*_spans()).resource_spans


def _refused_in_part_then_retried(
    tmp_path: Path, spans: list[Any], stop: str, **kwargs: Any
) -> list[BundleReport]:
    """Send *spans* to a receiver that accepts their first chunk and refuses the rest
    (overloaded), stop it (*stop*: ``"shutdown"``, ``"crash"``, or ``"crash after
    sealing"``), start another on the same directory and send them again, as a
    Collector retries; every bundle, verified (INCOMPLETE allowed)."""
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock, max_backlog_spans=1500, **kwargs)
    first.start()
    with pytest.raises(Unavailable, match="overloaded"):
        first(request(*spans).resource_spans)  # the first chunk accepted, the rest refused
    assert (out / "journal" / UNANSWERED_FILE).is_file()
    if stop == "shutdown":
        assert first.shutdown(5)
    else:
        if stop == "crash after sealing":
            clock.advance(5.0)  # their grace passed: sealed, written, retired
            assert first.flush(10)
        crash(first)
    second = quiet_receiver(out, clock, max_backlog_spans=1500, **kwargs)
    second.start()
    try:
        second(request(*spans).resource_spans)  # the retry: accepted whole now
    finally:
        assert second.shutdown(5)
    return verified(str(out), trust_root(str(tmp_path)), allow_incomplete=True)


@pytest.mark.parametrize("stop", ["shutdown", "crash after sealing"])
def test_a_retry_of_a_request_refused_in_part_certifies_nothing_twice_after_a_restart(
    tmp_path: Path, stop: str
) -> None:
    reports = _refused_in_part_then_retried(tmp_path, _spans(), stop)
    certified = collections.Counter(
        (report.statement.trace_id, span)
        for report in reports if report.statement is not None for span in span_ids(report))
    assert len(certified) == len(TRACES) * SPANS_PER_TRACE
    assert set(certified.values()) == {1}  # each span certified once


def test_the_kept_spans_are_bounded_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    from spanproof.exporter.receiver import Receiver

    path = tmp_path / UNANSWERED_FILE
    lines = [f'{{"t":"{TRACES[0]}","s":"{n:016x}","f":"{n:064x}"}}' for n in range(10)]
    path.write_text("\n".join(lines) + '\n{"t":"torn')
    kept, rejected = Receiver._keep_unanswered(str(path), 5)
    assert [span for _, span, _ in kept] == [f"{n:016x}" for n in range(6, 10)]
    assert rejected == []
    assert path.read_text().splitlines() == lines[6:]  # rewritten with them alone


def test_a_retry_after_a_restart_declares_a_rejected_span_once(tmp_path: Path) -> None:
    # The accepted spans were kept across the restart, the rejected ones' having been
    # declared was not: the retry declared them again, in a bundle of its own.
    def big(trace: str, n: int) -> dict[str, str] | None:
        return {"app.blob": "x" * 5_000} if (trace, n) == (TRACES[0], 7) else None

    reports = _refused_in_part_then_retried(tmp_path, _spans(extra=big), "shutdown",
                                            max_value_bytes=1024)  # the blob: rejected
    assert sum(r.statement.completeness.rejected_spans for r in reports
               if r.statement is not None and r.statement.trace_id == TRACES[0]) == 1


def test_a_rejection_of_no_trace_is_declared_after_a_crash_and_the_retry(tmp_path: Path) -> None:
    # A span whose trace id is zero is declared from memory only (in any trace's next
    # bundle), never journaled: kept as declared across the restart, after a crash
    # nothing declared it at all.
    spans = [*_spans(TRACES[:1]), otlp_span("0" * 32, 1), *_spans(TRACES[1:])]
    reports = _refused_in_part_then_retried(tmp_path, spans, "crash")
    assert sum(r.statement.completeness.rejected_spans for r in reports
               if r.statement is not None) == 1


@pytest.mark.parametrize("kind", ["named pipe", "device"])
def test_an_unanswered_file_that_is_not_a_regular_file_is_refused_not_read(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    clock = FakeClock()
    out = tmp_path / "out"
    (out / "journal").mkdir(parents=True)
    odd = out / "journal" / UNANSWERED_FILE
    if kind == "named pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    receiver = quiet_receiver(out, clock, max_backlog_spans=1500)
    receiver.start()  # returned: it neither blocked on the pipe nor read the device
    try:
        assert "not a regular file" in caplog.text
        with pytest.raises(Unavailable, match="overloaded"):
            receiver(_request())  # its note cannot be kept either: logged, answered
    finally:
        receiver.shutdown(5)
