"""EvidenceSpanProcessor takes the exporter's settings and ignores ``sealing_process``
(README, "Sealing process": it always seals in your process).  Given as an argument,
the setting was a TypeError from a private class ("got multiple values for keyword
argument 'sealing_process'"), though the variable was ignored as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporter_support import signing_key
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor
from spanproof.verifier import find_bundles


@pytest.mark.parametrize("sealing_process", [True, 2, False])
def test_sealing_process_argument_is_ignored_as_readme_says(
    tmp_path: Path, sealing_process: int
) -> None:
    processor = EvidenceSpanProcessor(tmp_path / "out", signing_key=signing_key(),
                                      sealing_process=sealing_process)
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                                  shutdown_on_exit=False)
        provider.add_span_processor(processor)
        with provider.get_tracer("t").start_as_current_span(
                "step", attributes={"gen_ai.operation.name": "chat"}):
            pass
        assert processor.force_flush(30_000) is True
    finally:
        processor.shutdown()
    assert len(list(find_bundles([str(tmp_path / "out")]))) == 1
