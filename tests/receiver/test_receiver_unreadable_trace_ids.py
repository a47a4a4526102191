"""A span whose trace id cannot be read is declared in the receiver's next bundle.

A span with a trace id of the wrong length, or of zero, has no canonical form
(SPEC §2.4) and no trace to be declared in.  The sender learned of it (partial
success), but no bundle said so, though SPEC §5.3 says a producer that learns of a
loss it cannot attribute reports it in the next bundle it seals.  Now that bundle
counts it in ``rejectedSpans``, with a note that it may be another trace's, once
however often a Collector re-sends it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from receiver_support import (
    TRACE_A,
    FakeClock,
    otlp_span,
    quiet_receiver,
    request,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.otlp_server import InvalidRequest


@pytest.mark.parametrize("seal_workers", [0, 2])
def test_spans_of_unreadable_trace_ids_are_declared_once_in_the_next_bundle(
    tmp_path: Path, seal_workers: int
) -> None:
    clock = FakeClock()
    receiver = quiet_receiver(tmp_path / "out", clock, sealing_processes=seal_workers)
    short = otlp_span(TRACE_A, 3, parent=1)
    short.trace_id = b"\x01\x02"
    zero = otlp_span("0" * 32, 4)
    receiver.start()
    try:
        batch = request(otlp_span(TRACE_A, 1), short, otlp_span(TRACE_A, 2, parent=1),
                        zero).resource_spans
        for _ in range(2):  # the Collector re-sends a batch after a lost answer
            assert receiver(batch).rejected == 2  # each answer reports them
        clock.advance(2.5)
        assert receiver.flush()
    finally:
        receiver.shutdown(5)
    (report,) = verified(str(tmp_path / "out"), trust_root(str(tmp_path)),
                         allow_incomplete=True)
    assert span_ids(report) == [span_id(1), span_id(2)]
    completeness = report.statement.completeness
    assert completeness.rejected_spans == 2
    assert ("2 span(s) were rejected whose trace id could not be read (zero or malformed); "
            "they may be other traces'") in completeness.notes


def test_a_rejection_no_bundle_followed_is_logged_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = quiet_receiver(tmp_path / "out", FakeClock())
    zero = otlp_span("0" * 32, 1)
    receiver.start()
    try:
        with pytest.raises(InvalidRequest):  # its only evidence span
            receiver(request(zero).resource_spans)
    finally:
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter.receiver"):
            receiver.shutdown(5)
    assert "1 span(s) of no known trace were lost or rejected" in caplog.text
