"""Zero-code use: a plain traced app run under ``opentelemetry-instrument`` with
``OTEL_TRACES_EXPORTER=spanproof`` (alone, and beside ``otlp``) writes bundles
that verify."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from exporter_support import verified

from spanproof.verifier import TrustRoot

# A plain application: OpenTelemetry API only, no spanproof import.
APP = textwrap.dedent(
    """
    from opentelemetry import trace

    tracer = trace.get_tracer("support.agent", "0.1")
    with tracer.start_as_current_span("handle-case"):
        with tracer.start_as_current_span(
            "classify", attributes={"gen_ai.operation.name": "chat",
                                    "gen_ai.request.model": "small-model"}):
            pass
        with tracer.start_as_current_span("crm-lookup", attributes={"db.system": "postgresql"}):
            pass
        with tracer.start_as_current_span(
            "draft-reply", attributes={"gen_ai.operation.name": "text_completion",
                                       "gen_ai.usage.output_tokens": 42}):
            pass
    print("app done")
    """
)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _instrumented(tmp_path: Path, exporters: str,
                  **variables: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the app under ``opentelemetry-instrument``; its result and output directory."""
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    assert instrument.exists(), "opentelemetry-instrument is installed with the test extras"
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / "evidence"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER=exporters,
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="support-agent",
        OTEL_EXPORTER_SPANPROOF_OUTPUT_DIR=str(out),
        # The OTLP exporter fails fast against a closed local port.
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="1",
        **variables,
    )
    result = subprocess.run(
        [str(instrument), sys.executable, str(app)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    return result, out


@pytest.mark.parametrize("exporters", ["spanproof", "otlp,spanproof"])
def test_opentelemetry_instrument_writes_verifiable_bundles(
    tmp_path: Path, exporters: str
) -> None:
    result, out = _instrumented(tmp_path, exporters)
    assert result.returncode == 0, result.stderr
    assert "app done" in result.stdout
    trust = TrustRoot.from_pem_files([str(out / "keys" / "signing.pub")])
    (report,) = verified(out, trust)
    assert report.records is not None
    assert [r["span"]["name"] for r in report.records] == ["classify", "draft-reply"]
    resource = report.records[0]["resource"]["attributes"]
    assert resource["service.name"] == {"stringValue": "support-agent"}
    usage = report.records[1]["span"]["attributes"]["gen_ai.usage.output_tokens"]
    assert usage == {"intValue": "42"}


def test_otel_sdk_disabled_under_opentelemetry_instrument_writes_nothing(tmp_path: Path) -> None:
    # The configurator builds the exporter for a disabled provider: it wrote a key and
    # started two sealing processes for an application whose telemetry was off.
    result, out = _instrumented(tmp_path, "otlp,spanproof", OTEL_SDK_DISABLED="true",
                                OTEL_EXPORTER_SPANPROOF_SEALING_PROCESS="2")
    assert result.returncode == 0, result.stderr
    assert "app done" in result.stdout
    assert not out.exists()
    assert "Traceback" not in result.stderr


def test_malformed_tuning_variable_does_not_stop_opentelemetry_instrument(
    tmp_path: Path,
) -> None:
    # Raising from the exporter's constructor aborted OpenTelemetry's whole
    # configuration: no spans anywhere.  The variable is warned about instead.
    result, out = _instrumented(tmp_path, "spanproof",
                                OTEL_EXPORTER_SPANPROOF_SEAL_GRACE_MS="2s",
                                OTEL_EXPORTER_SPANPROOF_MAX_VALUE_BYTES="1MiB")
    assert result.returncode == 0, result.stderr
    assert "OTEL_EXPORTER_SPANPROOF_SEAL_GRACE_MS='2s' is not valid" in result.stderr
    assert "OTEL_EXPORTER_SPANPROOF_MAX_VALUE_BYTES='1MiB' is not valid" in result.stderr
    trust = TrustRoot.from_pem_files([str(out / "keys" / "signing.pub")])
    (report,) = verified(out, trust)
    assert report.records is not None
    assert [r["span"]["name"] for r in report.records] == ["classify", "draft-reply"]


def test_malformed_select_all_variable_is_still_an_error(tmp_path: Path) -> None:
    # Its default would certify fewer spans than asked for, without a word in any
    # bundle: the configuration fails, naming the variable.
    result, out = _instrumented(tmp_path, "spanproof",
                                OTEL_EXPORTER_SPANPROOF_SELECT_ALL="yes")
    assert "OTEL_EXPORTER_SPANPROOF_SELECT_ALL must be 'true' or 'false'" in result.stderr
    assert not out.exists()
