"""SIGKILL after force_flush(): every flushed evidence span ends up in a verified bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_support import bundles, make_processor, signing_key, write_public_key

from spanproof.exporter import SpanproofSpanExporter
from spanproof.verifier import TrustRoot, Verdict, check_bundle

APP = Path(__file__).with_name("killed_app.py")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _run_and_kill(output: Path) -> dict[str, list[str]]:
    """Start the app, wait for its flush report, kill it with SIGKILL."""
    proc = subprocess.Popen([sys.executable, str(APP), str(output)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the app prints once flushed (bounded by its sleep)
        assert line, proc.stderr.read() if proc.stderr else "no output"
        flushed: dict[str, list[str]] = json.loads(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    return flushed


def _certified(output: Path, trust: TrustRoot) -> dict[str, set[str]]:
    """Span ids per trace in the bundles of *output*, each asserted to verify OK."""
    found: dict[str, set[str]] = {}
    for path in bundles(output):
        report = check_bundle(str(path), trust, keep_records=True)
        assert report.verdict is Verdict.OK, (path, report.reason)
        assert report.statement is not None
        ids = found.setdefault(report.statement.trace_id, set())
        ids.update(r["span"]["spanId"] for r in report.records or ())
    return found


def _check_recovery(output: Path, flushed: dict[str, list[str]], recovered: list[str],
                    trust: TrustRoot) -> None:
    assert len(recovered) == 1  # the open trace; the other was sealed by the flush
    report = check_bundle(recovered[0], trust, keep_records=True)
    assert report.verdict is Verdict.OK, report.reason
    assert report.statement is not None
    assert report.statement.seal_reason == "recovered"
    notes = report.statement.completeness.notes
    assert any(n.startswith("recovered: these spans were journaled") for n in notes)
    certified = _certified(output, trust)
    for trace_id, span_ids in flushed.items():
        assert set(span_ids) <= certified.get(trace_id, set()), trace_id
    assert list((output / "journal").glob("journal-*.log")) == []


def test_sigkill_after_force_flush_next_processor_recovers_every_flushed_span(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    flushed = _run_and_kill(output)
    assert sum(len(v) for v in flushed.values()) == 44
    trust = TrustRoot.from_pem_files([str(write_public_key(tmp_path / "trust"))])
    processor = make_processor(output)
    try:
        _check_recovery(output, flushed, processor.recovered, trust)
    finally:
        processor.shutdown()


def test_sigkill_after_force_flush_next_exporter_start_recovers_the_journal(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    flushed = _run_and_kill(output)
    trust = TrustRoot.from_pem_files([str(write_public_key(tmp_path / "trust"))])
    before = set(bundles(output))
    exporter = SpanproofSpanExporter(output, signing_key=signing_key())
    try:
        recovered = [str(p) for p in set(bundles(output)) - before]
        _check_recovery(output, flushed, recovered, trust)
    finally:
        exporter.shutdown()
