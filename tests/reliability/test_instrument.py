"""The documented way to get durable export under ``opentelemetry-instrument``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from reliability_support import bundles

from spanproof.verifier import TrustRoot, Verdict, check_bundle

APP = textwrap.dedent(
    """
    from opentelemetry import trace
    from spanproof.exporter.processor import install

    evidence = install()  # once, at start-up (README, "Durable export")
    tracer = trace.get_tracer("support.agent", "0.1")
    with tracer.start_as_current_span("handle-case"):
        with tracer.start_as_current_span("classify",
                                          attributes={"gen_ai.operation.name": "chat"}):
            pass
        assert evidence.force_flush(30_000)
        print("flushed")
    """
)


def test_install_under_opentelemetry_instrument_writes_verified_bundles(tmp_path: Path) -> None:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    assert instrument.exists(), "opentelemetry-instrument is installed with the test extras"
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / "evidence"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="support-agent",
        OTEL_EXPORTER_SPANPROOF_OUTPUT_DIR=str(out),
    )
    result = subprocess.run([str(instrument), sys.executable, str(app)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "flushed" in result.stdout
    trust = TrustRoot.from_pem_files([str(out / "keys" / "signing.pub")])
    [path] = bundles(out)
    report = check_bundle(str(path), trust, keep_records=True)
    assert report.verdict is Verdict.OK, report.reason
    assert [r["span"]["name"] for r in report.records or ()] == ["classify"]
    assert list((out / "journal").glob("journal-*.log")) == []  # sealed at exit
