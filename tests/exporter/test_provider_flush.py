"""What ``TracerProvider.force_flush()`` does for evidence, as README states it.

The SDK's ``BatchSpanProcessor.force_flush()`` exports every queued span but never
calls its exporter's ``force_flush()`` (nor does ``SimpleSpanProcessor``'s), so behind
either the exporter still seals a trace only after the grace; its own
``force_flush()`` seals at once.  An ``EvidenceSpanProcessor`` is a span processor, so
the provider's flush reaches it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exporter_support import record_span_ids, signing_key, trust_root, verified
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

# Far beyond the test's run: only a flush can seal the trace.
_HOUR = 3600.0


def _one_finished_trace(provider: TracerProvider) -> list[str]:
    """A trace whose root ended, with two evidence steps; their span ids."""
    tracer = provider.get_tracer("flush")
    steps = []
    with tracer.start_as_current_span("handle-request"):
        for name in ("plan", "answer"):
            with tracer.start_as_current_span(
                    name, attributes={"gen_ai.operation.name": "chat"}) as span:
                steps.append(f"{span.get_span_context().span_id:016x}")
    return steps


def _sealed(out: Path) -> list[tuple[str, list[str]]]:
    """(seal reason, record span ids) of every bundle in *out*, each verified."""
    if not out.exists():
        return []
    found = []
    for report in verified(out, trust_root(out.parent)):
        assert report.statement is not None
        found.append((report.statement.seal_reason, record_span_ids(report)))
    return found


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "simple"])
def test_provider_flush_does_not_reach_an_exporter_behind_an_sdk_span_processor(
    tmp_path: Path, batched: bool
) -> None:
    out = tmp_path / "bundles"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), seal_grace=_HOUR)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=_HOUR * 1000) if batched
        else SimpleSpanProcessor(exporter))
    try:
        steps = _one_finished_trace(provider)
        assert provider.force_flush(10_000) is True
        # Every span was handed over, none sealed: README tells users to call the
        # exporter's force_flush() too (or use EvidenceSpanProcessor).
        assert _sealed(out) == []
        assert exporter.force_flush(10_000) is True
        assert _sealed(out) == [("force_flush", steps)]
    finally:
        provider.shutdown()


def test_provider_flush_seals_through_an_evidence_span_processor(tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    processor = EvidenceSpanProcessor(out, signing_key=signing_key(), seal_grace=_HOUR)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        steps = _one_finished_trace(provider)
        assert provider.force_flush(10_000) is True
        assert _sealed(out) == [("force_flush", steps)]
    finally:
        provider.shutdown()
