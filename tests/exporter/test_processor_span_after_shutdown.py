"""An evidence span ended after ``EvidenceSpanProcessor.shutdown()`` is not certified,
and says so once, as the SDK's own processors log a span handed to them after their
shutdown.  It vanished without a word: a trace whose root ended after the provider's
shutdown verified OK with the spans ended before it alone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from exporter_support import signing_key
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor


def test_evidence_ended_after_shutdown_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    processor = EvidenceSpanProcessor(tmp_path / "out", signing_key=signing_key())
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    processor.shutdown()
    caplog.set_level(logging.WARNING, "spanproof")
    with tracer.start_as_current_span("plain"):
        pass
    assert not caplog.records  # not evidence: nothing to say
    ended = []
    for _ in range(2):
        with tracer.start_as_current_span(
                "step", attributes={"gen_ai.operation.name": "chat"}) as span:
            ended.append(f"{span.get_span_context().span_id:016x}")
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"spanproof: evidence span {ended[0]} ended after the evidence span "
                    "processor was shut down: not certified; later ones are not logged"]
    assert not list((tmp_path / "out").glob("*.spanproof.json"))
