"""``python -m spanproof.examples.support_agent``: run the sample cases and print outcomes.

``--spans`` also prints every span (OpenTelemetry's console exporter).  To have the
spans certified and verified, run ``spanproof demo`` instead.

A reader that stops early (``| head``) ends the run quietly with status 1, as
``spanproof`` does, instead of a traceback for every span and line still to come.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from . import SAMPLE_CASES, run_case


class _Stdout:
    """Standard output, until its reader goes away; written to nowhere after that."""

    def __init__(self) -> None:
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                sys.stdout.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        # What is still buffered would fail again when the interpreter exits.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every sample case; print one line per outcome (and the spans with --spans)."""
    parser = argparse.ArgumentParser(
        prog="python -m spanproof.examples.support_agent",
        description="Run the example support-case agent on its sample cases.",
    )
    parser.add_argument("--spans", action="store_true", help="print every span as JSON")
    args = parser.parse_args(argv)
    out = _Stdout()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "support-agent"}), shutdown_on_exit=False
    )
    if args.spans:
        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=out))  # type: ignore[arg-type]
        )
    tracer = provider.get_tracer("spanproof.examples.support_agent")
    try:
        for case in SAMPLE_CASES:
            outcome = run_case(tracer, case)
            where = f" to {outcome.decision.queue}" if outcome.escalated else ""
            print(f"{case.case_id} trace={outcome.trace_id} intent={outcome.intent} "
                  f"fraud_score={outcome.fraud_score:.2f} "
                  f"decision={outcome.decision.action}{where} ({outcome.decision.rule})",
                  file=out)
            if out.reader_gone:
                break
    finally:
        provider.shutdown()
    print("Run 'spanproof demo' to certify these traces and verify them offline.", file=out)
    out.flush()
    return 1 if out.reader_gone else 0


if __name__ == "__main__":
    sys.exit(main())
