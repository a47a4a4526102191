"""EvidenceSpanProcessor.force_flush() seals a trace whose local root span was
evidence but never reached the queue: unsampled (a record-only sampler), or dropped
because the queue was full.  The root's end was noted only for roots that were not
evidence, so such a trace waited for its idle timeout, or shutdown, to be sealed,
although README says force_flush() "then seals the traces whose root span ended"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from exporter_support import hold_the_worker, reports, signing_key, span_hex, trust_root
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from record_only import RecordOnly

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.verifier import BundleReport, Verdict

EVIDENCE = {"gen_ai.operation.name": "chat"}
# Bounds a wait for the worker, so that a broken hand-over fails instead of hanging.
_WAIT = 30.0



def _provider(processor: EvidenceSpanProcessor, **kwargs: Any) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False, **kwargs)
    provider.add_span_processor(processor)
    return provider


def _processor(out: Path, **kwargs: Any) -> EvidenceSpanProcessor:
    # Grace and idle timeout an hour: only the root's end can make force_flush() seal.
    return EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=3600.0,
                                 idle_timeout=3600.0, **kwargs)


def _assert_sealed_by_the_flush(report: BundleReport, root: Any) -> None:
    """*report* verified, of *root*'s trace, sealed by force_flush()."""
    assert report.verdict is Verdict.OK, (report.source, report.reason)
    assert report.statement is not None
    assert report.statement.trace_id == span_hex(root)[0]
    assert report.statement.seal_reason == "force_flush"


def test_force_flush_seals_a_trace_whose_unsampled_root_is_evidence(tmp_path: Path) -> None:
    processor = _processor(tmp_path / "out")
    try:
        tracer = _provider(processor, sampler=RecordOnly()).get_tracer("t")
        with tracer.start_as_current_span("root", attributes=EVIDENCE) as root:
            pass
        assert processor.force_flush(10_000) is True
        (report,) = reports(tmp_path / "out", trust_root(tmp_path), allow_incomplete=True)
    finally:
        processor.shutdown()
    _assert_sealed_by_the_flush(report, root)
    assert report.statement.completeness.unsampled_spans == 1
    assert report.statement.record_count == 0


def test_force_flush_seals_a_trace_whose_evidence_root_the_full_queue_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = _processor(tmp_path / "out", queue_size=1, queue_block=0)
    taken, release = hold_the_worker(processor, monkeypatch, _WAIT)
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
    _assert_sealed_by_the_flush(report, root)
    assert report.statement.completeness.dropped_spans == 1
    assert report.records is not None
    assert sorted(r["span"]["spanId"] for r in report.records) == sorted(
        span_hex(s)[1] for s in (first, second))
