"""An application that flushes evidence, reports what it flushed, then waits to be killed.

Run as ``python killed_app.py OUTPUT_DIR``.  It prints one JSON line: the trace ids
and span ids of every evidence span ended before its last ``force_flush()``.  Trace
"sealed" ended its root (sealed by the flush); trace "open" is still running when
the process is killed, so its spans exist only in the journal.
"""

from __future__ import annotations

import json
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter import EvidenceSpanProcessor, SigningKey

SEED = bytes(range(32))  # the published test key of tests/reliability


def main(output_dir: str) -> None:
    processor = EvidenceSpanProcessor(
        output_dir, signing_key=SigningKey.from_seed(SEED), seal_grace=3600.0,
        idle_timeout=3600.0,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "killed-app"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("killed_app", "1.0.0")
    flushed: dict[str, list[str]] = {}

    def evidence(name: str) -> None:
        with tracer.start_as_current_span(name, attributes={"gen_ai.operation.name": "chat"}) as s:
            ctx = s.get_span_context()
        flushed.setdefault(f"{ctx.trace_id:032x}", []).append(f"{ctx.span_id:016x}")

    with tracer.start_as_current_span("sealed-request",
                                      attributes={"spanproof.evidence": True}) as root:
        for i in range(3):
            evidence(f"sealed-step-{i}")
    ctx = root.get_span_context()
    flushed[f"{ctx.trace_id:032x}"].append(f"{ctx.span_id:016x}")
    with tracer.start_as_current_span("open-request"):
        for i in range(40):
            evidence(f"open-step-{i}")
        if not processor.force_flush(30_000):
            sys.exit("force_flush failed")
        print(json.dumps(flushed), flush=True)
        time.sleep(120)  # killed here, inside the open trace


if __name__ == "__main__":
    main(sys.argv[1])
