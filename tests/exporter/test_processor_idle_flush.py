"""EvidenceSpanProcessor.force_flush() with nothing to flush: True, whatever the timeout,
as the SDK's own processors answer (``SpanProcessor.force_flush``: False only when the
timeout is exceeded).  With a zero timeout it answered False, having handed an empty
flush to its worker and waited no time for the answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporter_support import hold_the_worker, signing_key
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor

EVIDENCE = {"gen_ai.operation.name": "chat"}
# Bounds a wait for the worker, so that a broken hand-over fails instead of hanging.
_WAIT = 30.0


def _processor(out: Path) -> EvidenceSpanProcessor:
    return EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=3600.0,
                                 idle_timeout=3600.0)


def _end_evidence_span(processor: EvidenceSpanProcessor) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("step", attributes=EVIDENCE):
        pass


def test_force_flush_with_zero_timeout_and_nothing_to_flush_is_not_a_failure(
    tmp_path: Path,
) -> None:
    processor = _processor(tmp_path / "out")
    try:
        assert processor.force_flush(0) is True  # nothing ever ended
        _end_evidence_span(processor)
        assert processor.force_flush(10_000) is True
        assert processor.force_flush(0) is True  # everything is journaled already
    finally:
        processor.shutdown()
    assert processor.force_flush(0) is False  # after shutdown, as before


def test_force_flush_with_zero_timeout_is_false_while_a_span_is_not_yet_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = _processor(tmp_path / "out")
    taken, release = hold_the_worker(processor, monkeypatch, _WAIT)
    try:
        _end_evidence_span(processor)
        assert taken.wait(_WAIT)  # the worker holds the span, not yet journaled
        assert processor.force_flush(0) is False
        release.set()
        assert processor.force_flush(10_000) is True
        assert processor.force_flush(0) is True
    finally:
        release.set()
        processor.shutdown()


def test_force_flush_does_not_need_the_queues_mutex(tmp_path: Path) -> None:
    # Under gevent's monkey-patching (patched first, as gevent asks), queue.Queue is
    # gevent's, which has no `mutex`: every force_flush() failed with an
    # AttributeError, logged with its traceback, and answered False.
    processor = _processor(tmp_path / "out")
    del processor._queue.mutex  # put() and get() use their conditions, not the name
    try:
        _end_evidence_span(processor)
        assert processor.force_flush(10_000) is True
        assert processor.force_flush(0) is True
    finally:
        processor.shutdown()
