"""install() with OTEL_SDK_DISABLED=true returns the disabled processor.

``opentelemetry-instrument`` installs the SDK's TracerProvider even when the SDK is
disabled: a disabled one, whose tracers make no span.  install() first took it for a
configured SDK and built the processor on it (a signing key generated and written, a
journal directory, a thread looking for orphaned journals); then it raised
``TypeError``, which crashed every application following README's
``evidence = install()`` when the operator switched its telemetry off.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter.processor import EvidenceSpanProcessor, install

APP = textwrap.dedent(
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from spanproof.exporter.processor import install

    trace.set_tracer_provider(TracerProvider())  # disabled, as opentelemetry-instrument's
    evidence = install()
    tracer = trace.get_tracer("tests.app", "0.1")
    with tracer.start_as_current_span("classify",
                                      attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert evidence.force_flush(30_000)
    print("served")
    """
)


def test_install_with_the_sdk_disabled_returns_a_processor_that_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    provider = TracerProvider()  # what opentelemetry-instrument installs then
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    out = tmp_path / "evidence"
    with caplog.at_level(logging.INFO, logger="spanproof"):
        evidence = install(output_dir=str(out))
    assert isinstance(evidence, EvidenceSpanProcessor)
    assert evidence.force_flush(1000)
    evidence.shutdown()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert not provider._active_span_processor._span_processors
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("install()" in m and "OTEL_SDK_DISABLED=true" in m for m in infos), infos


def test_install_on_a_provider_that_is_not_the_sdks_still_raises_type_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    with pytest.raises(TypeError, match="not an OpenTelemetry SDK TracerProvider"):
        install(output_dir=str(tmp_path / "evidence"))
    assert not (tmp_path / "evidence").exists()


def test_app_calling_install_with_the_sdk_disabled_exits_0(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_SDK_DISABLED="true",
               OTEL_EXPORTER_SPANPROOF_OUTPUT_DIR=str(tmp_path / "evidence"))
    result = subprocess.run([sys.executable, str(app)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "served\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]


def test_install_on_an_enabled_sdk_provider_adds_the_processor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    processor = install(output_dir=str(tmp_path / "evidence"))
    try:
        assert provider._active_span_processor._span_processors == (processor,)
    finally:
        provider.shutdown()


@pytest.mark.parametrize("disabled", [True, False], ids=["sdk-disabled", "sdk-enabled"])
def test_install_names_a_misspelled_argument_before_the_provider(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disabled: bool) -> None:
    # A typo is not hidden by the SDK being disabled: install() would return then.
    if disabled:
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    else:
        monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with pytest.raises(TypeError, match=r"^install\(\): .*'outptu_dir'"):
        install(outptu_dir=str(tmp_path / "evidence"))
    assert not (tmp_path / "evidence").exists()
    assert not provider._active_span_processor._span_processors
