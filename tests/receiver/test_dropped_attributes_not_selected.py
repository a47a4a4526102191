"""A span received with dropped_attributes_count > 0 that is not selected is warned
about: its sender's SDK drops the oldest attributes first past its count limit, and
the selecting one (set as the span starts) may have been among them.  The span was
skipped without a word, its trace's bundle complete."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from receiver_support import TRACE_A, FakeClock, otlp_span, quiet_receiver, request


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "spanproof.exporter.receiver"]


def test_receiver_warns_of_a_span_not_selected_whose_sender_dropped_attributes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = quiet_receiver(str(tmp_path / "out"), FakeClock())
    receiver.start()
    unselected = [otlp_span(TRACE_A, n, parent=1, evidence=False) for n in (2, 3)]
    for span in unselected:
        span.dropped_attributes_count = 3
    selected = otlp_span(TRACE_A, 4, parent=1)
    selected.dropped_attributes_count = 3
    plain = otlp_span(TRACE_A, 1, evidence=False)  # nothing dropped
    try:
        with caplog.at_level(logging.WARNING, logger="spanproof.exporter.receiver"):
            receiver(request(plain, *unselected, selected).resource_spans)
    finally:
        with caplog.at_level(logging.WARNING, logger="spanproof.exporter.receiver"):
            receiver.shutdown(5)
    warnings = _warnings(caplog)
    (warning,) = [w for w in warnings if "was not selected" in w]
    assert f"span 0000000000000002 of trace {TRACE_A}" in warning
    assert "3 of its attributes were dropped" in warning
    assert "dropped_attributes_count" in warning and "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in warning
    # The second is held back, and counted at shutdown.
    assert any("1 more warning(s) that name spans not selected" in w for w in warnings)


def test_receiver_says_nothing_of_spans_with_no_attribute_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = quiet_receiver(str(tmp_path / "out"), FakeClock())
    receiver.start()
    try:
        with caplog.at_level(logging.WARNING, logger="spanproof.exporter.receiver"):
            receiver(request(otlp_span(TRACE_A, 1, evidence=False),
                             otlp_span(TRACE_A, 2, parent=1)).resource_spans)
            receiver.shutdown(5)
    finally:
        receiver.shutdown(5)
    assert _warnings(caplog) == []
