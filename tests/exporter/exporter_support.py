"""Shared helpers for the SDK exporter tests: a fake clock, span factories, verification."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from spanproof.exporter import SigningKey, SpanproofSpanExporter
from spanproof.verifier import BundleReport, TrustRoot, Verdict, check_bundle, find_bundles

SEED = bytes(range(32))
# SDK attribute values of every kind OpenTelemetry allows, with their edges.
ATTRIBUTES_SAMPLE: dict[str, Any] = {
    "s": "caf\u00e9 \U0001f600 \u2028 a\x00b", "s.empty": "", "b": True, "i": -42,
    "i.big": 2**63 - 1, "i.over": 2**70, "f": 0.1, "f.nan": float("nan"),
    "f.inf": float("-inf"), "f.negzero": -0.0, "a.s": ("x", "\U0001f600"),
    "a.i": (1, 2**64), "a.f": (0.5, 1e21), "a.b": (True, False), "a.empty": (),
}
START = 1_800_000_000.0  # a fixed "now" for the fake clock (2027-01-15)


class FakeClock:
    """A callable clock (seconds since the epoch) that moves only when told."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def signing_key() -> SigningKey:
    return SigningKey.from_seed(SEED)


def trust_root(tmp_dir: str | os.PathLike[str], key: SigningKey | None = None) -> TrustRoot:
    """A trust root holding *key*'s public half (written to a PEM file)."""
    key = key or signing_key()
    path = os.path.join(tmp_dir, f"trusted-{key.keyid[:8]}.pub")
    with open(path, "wb") as f:
        f.write(key.public_pem())
    return TrustRoot.from_pem_files([path])


def sent_frames(process: Any) -> list[bytes]:
    """Every frame the parent writes to *process* (a ``SealingProcess``) from now on,
    in order; the frames still reach the child."""
    frames: list[bytes] = []
    write = process._write_locked

    def recording(frame: bytes) -> None:
        frames.append(frame)
        write(frame)

    process._write_locked = recording
    return frames


def make_exporter(
    output_dir: str | os.PathLike[str], clock: FakeClock, **kwargs: Any
) -> SpanproofSpanExporter:
    """An exporter with the test key and *clock*; grace 2 s and idle 30 s unless given."""
    kwargs.setdefault("signing_key", signing_key())
    kwargs.setdefault("seal_grace", 2.0)
    kwargs.setdefault("idle_timeout", 30.0)
    return SpanproofSpanExporter(output_dir, clock=clock, **kwargs)


class Recorder:
    """A tracer provider whose ended spans are collected, not exported anywhere."""

    def __init__(self, **provider_kwargs: Any) -> None:
        provider_kwargs.setdefault("resource", Resource.create({"service.name": "test-svc"}))
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(**provider_kwargs)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("tests.exporter", "1.2.3")

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def take(self) -> list[ReadableSpan]:
        spans = self.spans()
        self.memory.clear()
        return spans


def _sdk_holds_any_value() -> bool:
    rec = Recorder()
    with rec.tracer.start_as_current_span(
            "probe", attributes={"map": {"k": "v"}, "nested": [["x"]], "bytes": b"\x00"}):
        pass
    (span,) = rec.take()
    held = dict(span.attributes or {})
    return set(held) == {"map", "nested", "bytes"} and held["bytes"] == b"\x00"


#: Whether this OpenTelemetry SDK keeps bytes, mapping and nested attribute values, as
#: it does from 1.45; earlier ones drop them (or decode bytes into a string) before an
#: exporter sees them, so there is nothing of them to certify.
SDK_HOLDS_ANY_VALUE = _sdk_holds_any_value()
needs_any_value_sdk = pytest.mark.skipif(
    not SDK_HOLDS_ANY_VALUE,
    reason="this OpenTelemetry SDK drops bytes, mapping and nested values (before 1.45)")


@contextmanager
def processor_recorder(output_dir: str | os.PathLike[str]) -> Iterator[Recorder]:
    """A :class:`Recorder` whose provider also runs an ``EvidenceSpanProcessor`` (the
    test key, every span selected) writing to *output_dir*; the provider, and so the
    processor, is shut down on leaving."""
    from spanproof.exporter import EvidenceSpanProcessor

    rec = Recorder()
    rec.provider.add_span_processor(
        EvidenceSpanProcessor(output_dir, signing_key=signing_key(), select_all=True))
    try:
        yield rec
    finally:
        rec.provider.shutdown()


def export_through_a_sealing_process(output_dir: str | os.PathLike[str],
                                     spans: Sequence[ReadableSpan]) -> None:
    """Export *spans* (asserted accepted) through an exporter with one sealing
    process, the test key and every span selected, writing to *output_dir*, and shut
    it down."""
    exporter = SpanproofSpanExporter(output_dir, signing_key=signing_key(), select_all=True,
                                     sealing_process=True)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


@contextmanager
def evidence(recorder: Recorder, name: str, **attributes: Any) -> Iterator[Any]:
    """Start a span selected as evidence (GenAI operation name)."""
    attributes.setdefault("gen_ai.operation.name", "chat")
    with recorder.tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def span_hex(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def reports(
    directory: str | os.PathLike[str], trust: TrustRoot, *, allow_incomplete: bool = False
) -> list[BundleReport]:
    """Check every bundle below *directory*; keep the records."""
    paths = list(find_bundles([os.fspath(directory)]))
    return [
        check_bundle(p, trust, keep_records=True, allow_incomplete=allow_incomplete) for p in paths
    ]


def verified(
    directory: str | os.PathLike[str], trust: TrustRoot, *, allow_incomplete: bool = False
) -> list[BundleReport]:
    """Every bundle below *directory*, each asserted to verify OK."""
    out = reports(directory, trust, allow_incomplete=allow_incomplete)
    for report in out:
        assert report.verdict is Verdict.OK, (report.source, report.reason)
    return out


def declared_rejections(
    directory: str | os.PathLike[str], trust: TrustRoot
) -> tuple[int, list[str]]:
    """The one bundle below *directory*, asserted INCOMPLETE and otherwise sound:
    the spans it declares rejected, and the span ids of its records."""
    (report,) = reports(directory, trust)
    assert report.verdict is Verdict.INCOMPLETE, (report.source, report.reason)
    (report,) = verified(directory, trust, allow_incomplete=True)
    assert report.statement is not None
    return report.statement.completeness.rejected_spans, record_span_ids(report)


def assert_declared_rejected(
    directory: str | os.PathLike[str], trust_dir: str | os.PathLike[str],
    kept: Sequence[str], rejected: int = 1, *, note: str | None = None,
) -> None:
    """The one bundle below *directory* is INCOMPLETE and otherwise verifies (with
    the test key, written to *trust_dir*): it declares *rejected* spans rejected
    (*note* among its notes, when given) and holds the records of *kept* (span ids,
    in any order)."""
    (report,) = reports(directory, trust_root(trust_dir))
    assert report.verdict is Verdict.INCOMPLETE, (report.source, report.reason)
    (report,) = verified(directory, trust_root(trust_dir), allow_incomplete=True)
    assert report.statement is not None
    assert report.statement.completeness.rejected_spans == rejected
    assert note is None or note in report.statement.completeness.notes
    assert sorted(record_span_ids(report)) == sorted(kept)


def record_span_ids(report: BundleReport) -> list[str]:
    assert report.records is not None
    return [r["span"]["spanId"] for r in report.records]


def by_trace(rs: Sequence[BundleReport]) -> dict[str, list[BundleReport]]:
    out: dict[str, list[BundleReport]] = {}
    for r in rs:
        assert r.statement is not None
        out.setdefault(r.statement.trace_id, []).append(r)
    for group in out.values():
        group.sort(key=lambda r: r.statement.segment_index if r.statement else 0)
    return out


def hold_the_worker(
    processor: Any, monkeypatch: pytest.MonkeyPatch, wait: float = 30.0
) -> tuple[threading.Event, threading.Event]:
    """Make *processor*'s (an ``EvidenceSpanProcessor``'s) worker hold each batch it
    takes until released: ``(taken, release)``, set when it holds one and to be set
    to let it go (each wait bounded by *wait* seconds, so that a broken hand-over
    fails instead of hanging)."""
    taken, release = threading.Event(), threading.Event()
    real = processor._process_or_log

    def held(batch: list[Any]) -> bool:
        if batch:
            taken.set()
            if not release.wait(wait):
                raise AssertionError("the test never released the worker")
        return bool(real(batch))

    monkeypatch.setattr(processor, "_process_or_log", held)
    return taken, release
