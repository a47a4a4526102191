"""force_flush() after the journal failed a batch and became writable again.

The spans of a batch the journal could not take (a full disk) were held in memory
only, waiting for their trace's bundle; once the disk was writable again the next
force_flush() answered True, and a crash right after lost them with nothing
declared.  They are now journaled again as soon as the journal can be written,
unless a written bundle holds them already (journaled again, they would be
certified twice after a crash).
"""

from __future__ import annotations

import collections
import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    Traced,
    bundles,
    evidence_span,
    ids,
    make_processor,
    spanproof_cli,
    write_public_key,
)

from spanproof.exporter import DirectorySink
from spanproof.exporter import journal as journal_module
from spanproof.verifier import TrustRoot, Verdict, check_bundle

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# The application: its journal fails (disk full) while a batch of evidence spans is
# written, then becomes writable; it reports both flushes' answers and the spans,
# then is killed (SIGKILL, by itself: no shutdown, no exit handler).
_APP = """
import errno, json, os, signal, sys, time
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from spanproof.exporter import EvidenceSpanProcessor, SigningKey
from spanproof.exporter import journal as journal_module

output, seal_first = sys.argv[1], sys.argv[2] == "seal-first"
failing = [False]
real_write = journal_module.Journal._write

def write(self, data):
    if failing[0]:
        raise OSError(errno.ENOSPC, "No space left on device")
    real_write(self, data)

journal_module.Journal._write = write
processor = EvidenceSpanProcessor(output, signing_key=SigningKey.from_seed(bytes(range(32))),
                                  seal_grace=0.0, idle_timeout=3600.0)
provider = TracerProvider(resource=Resource.create({"service.name": "disk-full"}),
                          shutdown_on_exit=False)
provider.add_span_processor(processor)
tracer = provider.get_tracer("disk-full")
spans = {}

def evidence(name, **kwargs):
    span = tracer.start_span(name, attributes={"gen_ai.operation.name": "chat"}, **kwargs)
    span.end()
    ctx = span.get_span_context()
    spans.setdefault(f"{ctx.trace_id:032x}", []).append(f"{ctx.span_id:016x}")
    return span

failing[0] = True
if seal_first:  # a trace whose root ends: sealed and written while the journal fails
    evidence("done-root")
with tracer.start_as_current_span("open-request"):  # still open when killed
    for i in range(3):
        evidence(f"open-step-{i}")
    first = processor.force_flush(10_000)
    if seal_first:
        deadline = time.monotonic() + 20
        while not any(n.endswith(".spanproof.json") for n in os.listdir(output)):
            if time.monotonic() > deadline:
                sys.exit("the bundle of the ended trace was not written")
            time.sleep(0.02)
    failing[0] = False  # the disk has room again
    second = processor.force_flush(10_000)
    print(json.dumps({"first": first, "second": second, "spans": spans}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _run_and_kill(output: Path, scenario: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _APP, str(output), scenario],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _trust(tmp_path: Path) -> TrustRoot:
    return TrustRoot.from_pem_files([str(write_public_key(tmp_path / "trust"))])


def _certified(output: Path, trust: TrustRoot) -> collections.Counter[str]:
    """How many times each span id is certified in the bundles of *output*."""
    found: collections.Counter[str] = collections.Counter()
    for path in bundles(output):
        report = check_bundle(str(path), trust, keep_records=True)
        assert report.verdict is Verdict.OK, (path, report.reason)
        found.update(r["span"]["spanId"] for r in report.records or ())
    return found


def _verified_with_the_cli(output: Path, tmp_path: Path) -> None:
    result = spanproof_cli("verify", "--key", str(tmp_path / "trust" / "signing.pub"),
                           str(output))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scenario", ["open-trace", "seal-first"])
def test_a_flush_after_the_journal_recovered_makes_the_spans_of_its_failed_batch_durable(
    tmp_path: Path, scenario: str
) -> None:
    # "seal-first": a trace whose spans were in the failed batch is sealed and its
    # bundle written before the journal recovers; journaled again, its spans were
    # certified a second time at the next start.
    output = tmp_path / "out"
    report = _run_and_kill(output, scenario)
    assert report["first"] is False  # the journal did not take the batch
    assert report["second"] is True  # the journal takes what was held first
    trust = _trust(tmp_path)
    recovering = make_processor(output)
    try:
        assert len(recovering.recovered) == 1  # the open trace's spans
    finally:
        recovering.shutdown()
    certified = _certified(output, trust)
    flushed = [span_id for span_ids in report["spans"].values() for span_id in span_ids]
    assert len(flushed) == (4 if scenario == "seal-first" else 3)
    assert {span_id: certified[span_id] for span_id in flushed} == dict.fromkeys(flushed, 1)
    _verified_with_the_cli(output, tmp_path)
    assert list((output / "journal").glob("journal-*.log")) == []


class _FailingSink(DirectorySink):
    """Writes bundles only once ``failing`` is cleared (written on the sealing thread:
    a subclass is not handed to the writer thread)."""

    failing = True
    tried = 0

    def write(self, bundle: Any) -> str:
        self.tried += 1
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(bundle)


@pytest.mark.parametrize("then", ["crash", "bundle-written"])
def test_the_held_spans_of_a_sealed_bundle_not_yet_written_are_journaled_and_retired_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    # The journal and the bundle writes fail together (one full disk); the trace is
    # sealed meanwhile, its bundle kept for a retry.  Once the journal recovers, a
    # flush must not answer True while the bundle's spans are in memory only, and
    # the journal entries it writes for them are retired when the bundle is written.
    failing = [True]
    real_write = journal_module.Journal._write

    def write(self: Any, data: bytes) -> None:
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(journal_module.Journal, "_write", write)
    output = tmp_path / "out"
    sink = _FailingSink(str(output))
    processor = make_processor(output, sink=sink, seal_grace=0.0)
    traced = Traced(processor)
    with evidence_span(traced.tracer, "root") as root:
        with evidence_span(traced.tracer, "step") as step:
            pass
    assert not processor.force_flush(10_000)  # the journal failed
    assert sink.tried  # the flush sealed the trace; its bundle could not be written
    failing[0] = False
    assert processor.force_flush(10_000)
    span_ids = [ids(root)[1], ids(step)[1]]
    if then == "crash":
        journal = processor.exporter._journal  # type: ignore[attr-defined]
        journal.forget_after_fork()  # the journal as a killed process leaves it
        recovering = make_processor(output)
        assert len(recovering.recovered) == 1
        recovering.shutdown()
    else:
        sink.failing = False
        deadline = time.monotonic() + 30  # the retry comes every few seconds
        while not bundles(output) and time.monotonic() < deadline:
            assert processor.force_flush(10_000)
            time.sleep(0.05)
        processor.shutdown()
        assert not list((output / "journal").glob("journal-*.log"))  # retired
        recovering = make_processor(output)
        assert recovering.recovered == []
        recovering.shutdown()
    certified = _certified(output, _trust(tmp_path))
    assert {span_id: certified[span_id] for span_id in span_ids} == dict.fromkeys(span_ids, 1)
    _verified_with_the_cli(output, tmp_path)
