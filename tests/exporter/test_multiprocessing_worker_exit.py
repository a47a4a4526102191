"""A forked multiprocessing worker seals what it holds as it exits.

Such a worker (a fork-context ``multiprocessing.Process``, a ``Pool`` worker) runs
its target and then leaves through ``os._exit()``, running multiprocessing's
finalizers but not ``atexit``: the SDK's ``provider.shutdown()`` never ran there,
and the traces the worker's exporter held awaiting their seal were gone, without a
bundle declaring them.  A worker span whose parent was current at the fork has a
parent that is not remote, so no local root ends in the worker either.  A child of
a plain ``os.fork()`` (gunicorn) leaves through ``atexit`` as before.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from exporter_support import signing_key, trust_root, verified
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from processes import returns_within, wait_for

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

EVIDENCE = {"gen_ai.operation.name": "chat"}
# Bounds the wait for a worker to end, and for its bundle.
_WAIT = 30.0
# Grace and idle timeout an hour: only the worker's exit can seal its trace.
_LONG: dict[str, Any] = {"signing_key": signing_key(), "seal_grace": 3600.0,
                         "idle_timeout": 3600.0}

# The tracer the pool's task uses (a worker forked from this process has it).
_pool_tracer: Tracer | None = None


def _tracer(processor: Any) -> Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider.get_tracer("t")


def _end_evidence_span(tracer: Tracer, name: str = "worker-step") -> None:
    with tracer.start_as_current_span(name, attributes=EVIDENCE):
        pass


def _pool_task() -> int:
    assert _pool_tracer is not None
    _end_evidence_span(_pool_tracer, "pool-step")
    return os.getpid()


def _run_worker(target: Any, *args: Any) -> None:
    """Run *target* in a fork-context multiprocessing worker until it exits (killed,
    and the test failed, should it outlive the bound)."""
    worker = multiprocessing.get_context("fork").Process(target=target, args=args)
    worker.start()
    worker.join(_WAIT)
    if worker.exitcode is None:
        worker.kill()
        worker.join(_WAIT)
        pytest.fail(f"the worker did not exit within {_WAIT} s")
    assert worker.exitcode == 0


def _one_bundle(out: Path, trust_dir: Path) -> Any:
    (report,) = verified(out, trust_root(trust_dir))
    assert report.statement is not None
    return report


@pytest.mark.parametrize("sealing_process", [False, True])
def test_a_multiprocessing_worker_seals_the_exporters_pending_trace_as_it_exits(
    tmp_path: Path, sealing_process: bool,
) -> None:
    # With a sealing process, the worker's own child sealed what it held once the
    # worker's end closed its input, after the worker had exited; the worker's
    # shutdown now waits for it, so the bundle is written when the worker has exited.
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, sealing_process=sealing_process, **_LONG)
    try:
        _run_worker(_end_evidence_span, _tracer(SimpleSpanProcessor(exporter)))
        report = _one_bundle(out, tmp_path)
        assert [r["span"]["name"] for r in report.records] == ["worker-step"]
        assert report.statement.seal_reason == "shutdown"
        assert report.statement.producer.instance != exporter.producer.instance
        assert exporter._assembler.pending_traces == 0  # the parent held nothing
    finally:
        exporter.shutdown()
    assert len(verified(out, trust_root(tmp_path))) == 1  # nothing sealed twice


def test_a_pool_worker_seals_a_span_whose_parent_was_current_at_the_fork(
    tmp_path: Path,
) -> None:
    global _pool_tracer
    out = tmp_path / "out"
    exporter = SpanproofSpanExporter(out, **_LONG)
    _pool_tracer = tracer = _tracer(SimpleSpanProcessor(exporter))
    pool = None
    try:
        with tracer.start_as_current_span("request"):  # not evidence, never ends there
            # One task for each worker, which then exits (as a recycled worker does).
            pool = multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1)
        worker_pid = pool.apply_async(_pool_task).get(_WAIT)
        wait_for(lambda: list(out.glob("*.spanproof.json")), _WAIT, "the worker's bundle")
        report = _one_bundle(out, tmp_path)
        assert [r["span"]["name"] for r in report.records] == ["pool-step"]
        assert report.statement.seal_reason == "shutdown"
        assert worker_pid != os.getpid()
        pool.close()
        returns_within(pool.join, _WAIT, "Pool.join()")
    finally:
        _pool_tracer = None
        if pool is not None:
            pool.terminate()
        exporter.shutdown()


def test_a_multiprocessing_worker_shuts_the_processor_down_as_it_exits(
    tmp_path: Path,
) -> None:
    # Its journal made the spans recoverable by this process (seal reason
    # "recovered", at its next look or its shutdown); the worker now seals them itself.
    out = tmp_path / "out"
    processor = EvidenceSpanProcessor(out, **_LONG)
    try:
        _run_worker(_end_evidence_span, _tracer(processor))
        report = _one_bundle(out, tmp_path)
        assert [r["span"]["name"] for r in report.records] == ["worker-step"]
        assert report.statement.seal_reason == "shutdown"
        assert report.statement.producer.instance != processor.exporter.producer.instance
    finally:
        processor.shutdown()
    assert len(verified(out, trust_root(tmp_path))) == 1  # not recovered a second time


def test_a_plain_forked_child_exports_its_batch_before_the_exporter_shuts_down(
    tmp_path: Path,
) -> None:
    # A gunicorn-like child leaves through sys.exit: the provider's exit hook hands
    # the batch processor's queue to the exporter, then shuts it down.  multiprocessing
    # imported after the provider was built runs its own exit hook first: an exporter
    # shut down there would have refused that last batch.
    script = textwrap.dedent("""
        import os, sys
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from spanproof.exporter import SigningKey, SpanproofSpanExporter

        exporter = SpanproofSpanExporter(
            sys.argv[1], signing_key=SigningKey.from_seed(bytes(range(32))),
            seal_grace=3600.0, idle_timeout=3600.0)
        provider = TracerProvider()
        provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
        import multiprocessing.util
        pid = os.fork()
        if pid == 0:
            with provider.get_tracer("t").start_as_current_span(
                    "plain-fork-step", attributes={"gen_ai.operation.name": "chat"}):
                pass
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    """)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = _one_bundle(out, tmp_path)
    assert [r["span"]["name"] for r in report.records] == ["plain-fork-step"]
    assert report.statement.seal_reason == "shutdown"
