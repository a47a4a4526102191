"""Helpers for the reliability tests: a processor on a tracer, the CLI, journal contents."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from spanproof.exporter import EvidenceSpanProcessor, SigningKey
from spanproof.exporter.journal import replay_instances

SEED = bytes(range(32))  # a published test key: never for real evidence


def signing_key() -> SigningKey:
    return SigningKey.from_seed(SEED)


def write_public_key(directory: Path) -> Path:
    """The test key's public half as a PEM file in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "signing.pub"
    path.write_bytes(signing_key().public_pem())
    return path


def make_processor(output_dir: Path, **kwargs: Any) -> EvidenceSpanProcessor:
    """A processor with the test key; grace and idle long unless given, so nothing
    is sealed behind a test's back."""
    kwargs.setdefault("signing_key", signing_key())
    kwargs.setdefault("seal_grace", 3600.0)
    kwargs.setdefault("idle_timeout", 3600.0)
    return EvidenceSpanProcessor(output_dir, **kwargs)


class Traced:
    """A tracer provider with one :class:`EvidenceSpanProcessor`."""

    def __init__(self, processor: EvidenceSpanProcessor, **provider_kwargs: Any) -> None:
        provider_kwargs.setdefault("resource", Resource.create({"service.name": "rel-svc"}))
        # Tests shut processors down themselves (or simulate a crash by not doing so).
        provider_kwargs.setdefault("shutdown_on_exit", False)
        self.processor = processor
        self.provider = TracerProvider(**provider_kwargs)
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("tests.reliability", "1.0.0")


@contextmanager
def evidence_span(tracer: Tracer, name: str) -> Iterator[Any]:
    """A span selected as evidence by the default rules (GenAI operation name)."""
    with tracer.start_as_current_span(name, attributes={"gen_ai.operation.name": "chat"}) as s:
        yield s


def ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def journaled_span_ids(journal_dir: Path) -> set[str]:
    """Span ids of every unsealed span entry in the journal files (read-only replay)."""
    traces = replay_instances(sorted(glob.glob(os.path.join(journal_dir, "journal-*.log"))))
    return {b["span"]["spanId"] for t in traces for b in t.bodies}


def spanproof_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``spanproof`` command line (``python -m spanproof.verifier``)."""
    return subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def bundles(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spanproof.json"))
