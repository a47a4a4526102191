"""With ``OTEL_SDK_DISABLED=true`` the exporter and the processor are built disabled.

OpenTelemetry's configurator still builds every exporter ``OTEL_TRACES_EXPORTER``
names when the SDK is disabled, for a provider whose tracers make no span.  The
exporter then generated and wrote a key, recovered an earlier run's journals, started
its sealing processes and submitted old bundles to the witness, for an application
whose telemetry was switched off.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from exporter_support import Recorder, signing_key
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from spanproof.exporter import SpanproofSpanExporter, _sealing_process
from spanproof.exporter.processor import EvidenceSpanProcessor

PREFIX = "OTEL_EXPORTER_SPANPROOF_"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(top: Path) -> dict[str, bytes | None]:
    """Every path below *top*, with a file's bytes (None for a directory)."""
    if not top.exists():
        return {}
    return {str(p.relative_to(top)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(top.rglob("*"))}


def _a_span() -> Any:
    rec = Recorder()  # built before the SDK is disabled
    with rec.tracer.start_as_current_span("classify",
                                          attributes={"gen_ai.operation.name": "chat"}):
        pass
    return rec.take()


@pytest.fixture
def no_children(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Sealing processes started (each recorded, then refused)."""
    started: list[Any] = []

    def refused(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(args)
        raise OSError("no sealing process in this test")

    monkeypatch.setattr(_sealing_process, "spawn_child", refused)
    return started


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Variables asking for everything that has a side effect; the output directory."""
    out = tmp_path / "evidence"
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(PREFIX + "OUTPUT_DIR", str(out))
    monkeypatch.setenv(PREFIX + "SEALING_PROCESS", "2")
    monkeypatch.setenv(PREFIX + "WITNESS_URL", f"http://127.0.0.1:{_closed_port()}")
    return out


@pytest.mark.parametrize("value", ["true", "TRUE", " True\n"])
def test_exporter_built_with_the_sdk_disabled_creates_nothing_and_starts_nothing(
        configured: Path, no_children: list[Any], monkeypatch: pytest.MonkeyPatch,
        value: str) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    exporter = SpanproofSpanExporter()  # what OTEL_TRACES_EXPORTER=spanproof builds
    assert isinstance(exporter, SpanproofSpanExporter)
    assert exporter.force_flush() is True
    exporter.shutdown()
    assert not configured.exists()  # no directory, no key, no witness queue
    assert no_children == []


def test_exporter_with_the_sdk_disabled_leaves_an_earlier_runs_directory_as_it_was(
        configured: Path, no_children: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFIX + "WITNESS_URL")
    monkeypatch.setenv(PREFIX + "SEALING_PROCESS", "false")
    monkeypatch.setenv(PREFIX + "SEAL_GRACE_MS", "0")
    earlier = SpanproofSpanExporter()  # an enabled run: a key and a bundle, never witnessed
    assert earlier.export(_a_span()) is SpanExportResult.SUCCESS
    earlier.shutdown()
    before = _files(configured)
    assert any(name.endswith(".spanproof.json") for name in before)
    # Enabled, the witness URL makes the next start queue that bundle for submission.
    monkeypatch.setenv(PREFIX + "WITNESS_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    SpanproofSpanExporter().shutdown()
    assert _files(configured) == before


def test_exporter_with_the_sdk_disabled_ignores_its_arguments_too(
        tmp_path: Path, no_children: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    out = tmp_path / "given"
    exporter = SpanproofSpanExporter(out, signing_key=signing_key(), sealing_process=True)
    exporter.shutdown()
    assert not out.exists()
    assert no_children == []


def test_disabled_exporter_refuses_spans_once_logged_and_has_no_key(
        configured: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    spans = _a_span()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = SpanproofSpanExporter()
    with caplog.at_level(logging.WARNING, logger="spanproof"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(()) is SpanExportResult.SUCCESS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["spanproof: 1 span(s) not certified: the exporter is disabled "
                        "(OTEL_SDK_DISABLED=true); later ones are not logged"]
    for name in ("keyid", "config", "producer"):
        with pytest.raises(RuntimeError, match="disabled"):
            getattr(exporter, name)
    assert not configured.exists()


@pytest.mark.parametrize(("value", "disabled"), [
    ("true", True), (" TRUE ", True), ("tRuE\t", True),
    ("", False), ("false", False), ("1", False), ("yes", False), ("true-ish", False),
])
def test_exporter_is_disabled_exactly_when_the_sdks_provider_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, disabled: bool) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    assert isinstance(TracerProvider().get_tracer("t"), trace.NoOpTracer) is disabled
    out = tmp_path / "evidence"
    SpanproofSpanExporter(out, signing_key=signing_key()).shutdown()
    assert out.exists() is not disabled


def test_processor_built_with_the_sdk_disabled_creates_nothing(
        configured: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    spans = _a_span()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    processor = EvidenceSpanProcessor()
    assert isinstance(processor, EvidenceSpanProcessor)
    assert processor.recovered == []
    with caplog.at_level(logging.WARNING, logger="spanproof"):
        processor.on_end(spans[0])
        processor.on_end(spans[0])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert processor.force_flush() is True
    processor.shutdown()
    for name in ("exporter", "journal_dir"):
        with pytest.raises(RuntimeError, match="disabled"):
            getattr(processor, name)
    assert not configured.exists()  # no key, no journal


def test_processor_with_the_sdk_disabled_leaves_an_orphaned_journal_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "evidence"
    journal = out / "journal"
    journal.mkdir(parents=True)
    (journal / "journal-1234-abcd.log").write_bytes(b"an earlier run's journal\n")
    before = _files(out)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    EvidenceSpanProcessor(out, signing_key=signing_key()).shutdown()
    assert _files(out) == before


@pytest.mark.parametrize(("build", "named"), [
    (lambda out: SpanproofSpanExporter(out, sealing_proces=True), "'sealing_proces'"),
    (lambda out: SpanproofSpanExporter(out, None, None), "positional"),
    (lambda out: EvidenceSpanProcessor(output_dri=out), "'output_dri'"),
    # A setting the processor hands to its exporter, misspelled.
    (lambda out: EvidenceSpanProcessor(out, max_record=5), "'max_record'"),
], ids=["exporter-misspelled", "exporter-too-many", "processor-misspelled",
        "processor-setting-misspelled"])
def test_a_misspelled_argument_fails_with_the_sdk_disabled_as_it_does_enabled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Any, named: str) -> None:
    out = tmp_path / "evidence"
    with pytest.raises(TypeError, match=named):
        build(out)
    assert not out.exists()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with pytest.raises(TypeError, match=named) as disabled:
        build(out)
    assert str(disabled.value).startswith(("SpanproofSpanExporter(): ",
                                           "EvidenceSpanProcessor(): "))
    assert not out.exists()


def test_arguments_spelled_right_are_still_not_used_with_the_sdk_disabled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    # A value the enabled exporter refuses is not looked at: only names are checked.
    out = tmp_path / "evidence"
    SpanproofSpanExporter(out, max_records=-1, sealing_process="sometimes").shutdown()
    EvidenceSpanProcessor(output_dir=out, max_records=-1).shutdown()
    assert not out.exists()
