"""``python -m spanproof.examples.support_agent``: run the sample cases and print outcomes.

``--spans`` also prints every span (OpenTelemetry's console exporter).  To have the
spans certified and verified, run ``spanproof demo`` instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from . import SAMPLE_CASES, run_case


def main(argv: Sequence[str] | None = None) -> int:
    """Run every sample case; print one line per outcome (and the spans with --spans)."""
    parser = argparse.ArgumentParser(
        prog="python -m spanproof.examples.support_agent",
        description="Run the example support-case agent on its sample cases.",
    )
    parser.add_argument("--spans", action="store_true", help="print every span as JSON")
    args = parser.parse_args(argv)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "support-agent"}), shutdown_on_exit=False
    )
    if args.spans:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    tracer = provider.get_tracer("spanproof.examples.support_agent")
    try:
        for case in SAMPLE_CASES:
            outcome = run_case(tracer, case)
            where = f" to {outcome.decision.queue}" if outcome.escalated else ""
            print(f"{case.case_id} trace={outcome.trace_id} intent={outcome.intent} "
                  f"fraud_score={outcome.fraud_score:.2f} "
                  f"decision={outcome.decision.action}{where} ({outcome.decision.rule})")
    finally:
        provider.shutdown()
    print("Run 'spanproof demo' to certify these traces and verify them offline.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
