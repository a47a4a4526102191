"""EvidenceSpanProcessor.force_flush() seals a trace whose local root span was
evidence but never reached the queue: unsampled (a record-only sampler), or dropped
because the queue was full.  The root's end was noted only for roots that were not
evidence, so such a trace waited for its idle timeout, or shutdown, to be sealed,
although README says force_flush() "then seals the traces whose root span ended"."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from exporter_support import reports, signing_key, span_hex, trust_root
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.verifier import Verdict

EVIDENCE = {"gen_ai.operation.name": "chat"}
# Bounds a wait for the worker, so that a broken hand-over fails instead of hanging.
_WAIT = 30.0


class _RecordOnly(Sampler):
    """Records every span but samples none (spans reach on_end unsampled)."""

    def should_sample(self, parent_context: object, trace_id: int, name: str,
                      kind: object = None, attributes: Any = None,
                      links: object = None, trace_state: object = None) -> SamplingResult:
        # The SDK keeps only the attributes the sampler returns.
        return SamplingResult(Decision.RECORD_ONLY, attributes)

    def get_description(self) -> str:
        return "RecordOnly"


def _provider(processor: EvidenceSpanProcessor, **kwargs: Any) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False, **kwargs)
    provider.add_span_processor(processor)
    return provider


def _processor(out: Path, **kwargs: Any) -> EvidenceSpanProcessor:
    # Grace and idle timeout an hour: only the root's end can make force_flush() seal.
    return EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=3600.0,
                                 idle_timeout=3600.0, **kwargs)


def test_force_flush_seals_a_trace_whose_unsampled_root_is_evidence(tmp_path: Path) -> None:
    processor = _processor(tmp_path / "out")
    try:
        tracer = _provider(processor, sampler=_RecordOnly()).get_tracer("t")
        with tracer.start_as_current_span("root", attributes=EVIDENCE) as root:
            pass
        assert processor.force_flush(10_000) is True
        (report,) = reports(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    finally:
        processor.shutdown()
    assert report.verdict is Verdict.OK, (report.source, report.reason)
    assert report.statement is not None
    assert report.statement.trace_id == span_hex(root)[0]
    assert report.statement.seal_reason == "force_flush"
    assert report.statement.completeness.unsampled_spans == 1
    assert report.statement.record_count == 0


def test_force_flush_seals_a_trace_whose_evidence_root_the_full_queue_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = _processor(tmp_path / "out", queue_size=1, queue_block=0)
    taken, release = threading.Event(), threading.Event()
    real = processor._process_or_log

    def held(batch: list[Any]) -> bool:
        if batch:
            taken.set()
            if not release.wait(_WAIT):
                raise AssertionError("the test never released the worker")
        return real(batch)

    monkeypatch.setattr(processor, "_process_or_log", held)
    try:
        tracer = _provider(processor).get_tracer("t")
        with tracer.start_as_current_span("root", attributes=EVIDENCE) as root:
            with tracer.start_as_current_span("first", attributes=EVIDENCE) as first:
                pass
            assert taken.wait(_WAIT)  # the worker holds the first span
            with tracer.start_as_current_span("second", attributes=EVIDENCE) as second:
                pass  # queued: the queue is full now
        release.set()  # the root was dropped
        assert processor.force_flush(10_000) is True
        (report,) = reports(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    finally:
        release.set()
        processor.shutdown()
    assert report.verdict is Verdict.OK, (report.source, report.reason)
    assert report.statement is not None
    assert report.statement.trace_id == span_hex(root)[0]
    assert report.statement.seal_reason == "force_flush"
    assert report.statement.completeness.dropped_spans == 1
    assert report.records is not None
    assert sorted(r["span"]["spanId"] for r in report.records) == sorted(
        span_hex(s)[1] for s in (first, second))
