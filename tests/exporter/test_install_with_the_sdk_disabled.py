"""install() with OTEL_SDK_DISABLED=true raises TypeError, as README says.

``opentelemetry-instrument`` installs the SDK's TracerProvider even when the SDK is
disabled: a disabled one, whose tracers make no span.  install() took it for a
configured SDK and built the processor on it: a signing key generated and written,
a journal directory, a thread looking for orphaned journals, for a provider that
never ends a span.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from spanproof.exporter.processor import install


def test_install_on_the_provider_of_a_disabled_sdk_raises_type_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    provider = TracerProvider()  # what opentelemetry-instrument installs then
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    out = tmp_path / "evidence"
    with pytest.raises(TypeError, match="OTEL_SDK_DISABLED"):
        install(output_dir=str(out))
    assert not out.exists()
    assert not provider._active_span_processor._span_processors


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
    # With the SDK disabled, install(outptu_dir=...) raised the "provider is disabled"
    # TypeError: code catching that one caught the typo with it, silently.
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
