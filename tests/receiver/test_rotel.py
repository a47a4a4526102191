"""End to end through a real collector: stock OTLP exporter → rotel → spanproof receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from processes import free_port, rotel_agent, wait_for
from receiver_support import ReceiverProcess, bundle_paths, trust_root, write_key

from benchmarks.run import rotel_env
from spanproof.verifier import check_bundle

pytestmark = pytest.mark.slow


class Rotel:
    """rotel-agent with OTLP in on loopback and its OTLP/gRPC exporter to *target*."""

    def __init__(self, target: str, log_dir: str) -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        self._log_path = os.path.join(log_dir, "rotel.log")
        self._log = open(self._log_path, "w")
        self.proc = subprocess.Popen(
            [rotel_agent(), "start",
             "--otlp-grpc-endpoint", self.grpc,
             "--otlp-http-endpoint", f"127.0.0.1:{free_port()}",
             "--exporter", "otlp",
             "--otlp-exporter-endpoint", f"http://{target}",
             "--otlp-exporter-protocol", "grpc",
             "--traces-batch-timeout", "100ms",
             "--otlp-exporter-retry-initial-backoff", "100ms",
             "--otlp-exporter-retry-max-backoff", "1s",
             "--otlp-exporter-retry-max-elapsed-time", "300s"],
            stdout=self._log, stderr=subprocess.STDOUT, env=rotel_env(),
        )
        host, port = self.grpc.split(":")
        wait_for(lambda: _listening(host, int(port)) or self.proc.poll() is not None,
                 what="rotel to listen")
        if self.proc.poll() is not None:
            self._log.close()
            with open(self._log_path) as f:
                said = f.read()[-600:].strip()
            pytest.fail(f"rotel-agent exited at start with code {self.proc.returncode}: {said}")

    @classmethod
    def beside(cls, receiver: ReceiverProcess, target: str, log_dir: str) -> Rotel:
        """Rotel exporting to *target*; if it cannot start, *receiver* is stopped
        before the test fails, so no server outlives it."""
        try:
            return cls(target, log_dir)
        except BaseException:
            receiver.stop(signal.SIGTERM)
            raise

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class App:
    """An application that never heard of spanproof: stock OTLP/gRPC exporter."""

    def __init__(self, endpoint: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "app"}))
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=50))
        self.tracer = self.provider.get_tracer("app")
        self.evidence: set[tuple[str, str]] = set()

    def run_traces(self, n: int, pause: float = 0.0) -> None:
        for i in range(n):
            with self.tracer.start_as_current_span("request") as root:
                for step in ("classify", "draft"):
                    with self.tracer.start_as_current_span(
                        f"chat {step}", attributes={"gen_ai.operation.name": "chat", "i": i},
                    ) as span:
                        ctx = span.get_span_context()
                        self.evidence.add((f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"))
                with self.tracer.start_as_current_span("db query", attributes={"db.system": "x"}):
                    pass
                assert root.get_span_context().is_valid
            if pause:
                time.sleep(pause)

    def close(self) -> None:
        self.provider.shutdown()


def certified(out: str, trust) -> list[tuple[str, str]]:
    spans = []
    for path in bundle_paths(out):
        report = check_bundle(path, trust, keep_records=True)
        assert report.ok, (path, report.reason)
        spans.extend((r["span"]["traceId"], r["span"]["spanId"]) for r in report.records)
    return spans


def test_stock_exporter_through_rotel_gives_verified_bundles(tmp_path):
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    receiver = ReceiverProcess(out, key, "--seal-grace-ms", "300", "--idle-timeout-ms", "5000")
    rotel = Rotel.beside(receiver, receiver.grpc, str(tmp_path))
    try:
        app = App(rotel.grpc)
        app.run_traces(20)
        app.close()
        trust = trust_root(str(tmp_path))
        wait_for(lambda: len(certified(out, trust)) >= len(app.evidence), timeout=60,
                 what="every evidence span in a bundle")
    finally:
        rotel.stop()
        code = receiver.stop(signal.SIGTERM)
    assert code == 0, receiver.log()
    spans = certified(out, trust)
    assert sorted(spans) == sorted(app.evidence)  # exactly the evidence spans, once each
    reasons = {check_bundle(p, trust).statement.seal_reason for p in bundle_paths(out)}
    assert reasons == {"root_ended"}


def test_receiver_kill_9_and_restart_under_load_loses_and_duplicates_nothing(tmp_path):
    key, _ = write_key(str(tmp_path))
    out = str(tmp_path / "out")
    address = f"127.0.0.1:{free_port()}"
    hold = ("--seal-grace-ms", "300", "--idle-timeout-ms", "5000")
    receiver = ReceiverProcess(out, key, *hold, grpc=address)
    rotel = Rotel.beside(receiver, address, str(tmp_path))
    trust = trust_root(str(tmp_path))
    app = App(rotel.grpc)
    traffic = threading.Thread(target=app.run_traces, args=(300, 0.01), daemon=True)
    try:
        traffic.start()
        wait_for(lambda: os.path.isdir(os.path.join(out, "journal")) and certified(out, trust),
                 what="the first bundles")
        assert receiver.stop(signal.SIGKILL) == -signal.SIGKILL
        receiver = ReceiverProcess(out, key, *hold, grpc=address)
        traffic.join(120)
        assert not traffic.is_alive()
        app.close()
        wait_for(lambda: len(set(certified(out, trust))) >= len(app.evidence), timeout=120,
                 what="every evidence span in a bundle")
    finally:
        rotel.stop()
        code = receiver.stop(signal.SIGTERM)
    assert code == 0, receiver.log()
    spans = certified(out, trust)
    assert set(spans) == app.evidence
    assert len(spans) == len(app.evidence), "a span was certified twice"
