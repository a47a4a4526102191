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

TRACES = [f"{n:032x}" for n in (0xA1, 0xA2, 0xA3, 0xA4)]
SPANS_PER_TRACE = 512  # two traces fill the first chunk of 1,024 spans


def _request() -> object:
    spans = [otlp_span(trace, n, parent=None if n == 1 else 1)
             for trace in TRACES for n in range(1, SPANS_PER_TRACE + 1)]
    return request(*spans).resource_spans


@pytest.mark.parametrize("stop", ["shutdown", "crash after sealing"])
def test_a_retry_of_a_request_refused_in_part_certifies_nothing_twice_after_a_restart(
    tmp_path: Path, stop: str
) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    first = quiet_receiver(out, clock, max_backlog_spans=1500)
    first.start()
    with pytest.raises(Unavailable, match="overloaded"):
        first(_request())  # the first chunk accepted, the second refused
    assert (out / "journal" / UNANSWERED_FILE).is_file()
    if stop == "shutdown":
        assert first.shutdown(5)
    else:
        clock.advance(5.0)  # their grace passed: sealed, written, retired
        assert first.flush(10)
        crash(first)
    second = quiet_receiver(out, clock, max_backlog_spans=1500)
    second.start()
    try:
        second(_request())  # the Collector's retry: accepted whole now
    finally:
        assert second.shutdown(5)
    certified = collections.Counter(
        (report.statement.trace_id, span)
        for report in verified(str(out), trust_root(str(tmp_path)))
        if report.statement is not None for span in span_ids(report))
    assert len(certified) == len(TRACES) * SPANS_PER_TRACE
    assert set(certified.values()) == {1}  # each span certified once


def test_the_kept_spans_are_bounded_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    from spanproof.exporter.receiver import Receiver

    path = tmp_path / UNANSWERED_FILE
    lines = [f'{{"t":"{TRACES[0]}","s":"{n:016x}","f":"{n:064x}"}}' for n in range(10)]
    path.write_text("\n".join(lines) + '\n{"t":"torn')
    kept = Receiver._keep_unanswered(str(path), 5)
    assert [span for _, span, _ in kept] == [f"{n:016x}" for n in range(6, 10)]
    assert path.read_text().splitlines() == lines[6:]  # rewritten with them alone
