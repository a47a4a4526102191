"""Shared helpers for the receiver tests: servers on free loopback ports, OTLP requests,
bundle reading, and a receiver run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from thread_signals import signal_another_thread

from spanproof.exporter import SigningKey
from spanproof.exporter.otlp_server import GrpcServer, HttpServer, parse_otlp_protobuf
from spanproof.exporter.receiver import Receiver
from spanproof.verifier import BundleReport, TrustRoot, Verdict, check_bundle, find_bundles

SEED = bytes(range(32))
START = 1_800_000_000.0


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


def write_key(directory: str) -> tuple[str, str]:
    """Write the test key pair into *directory*; return (private, public) paths."""
    return signing_key().write(directory, exist_ok=True)


def trust_root(directory: str) -> TrustRoot:
    _, pub = write_key(directory)
    return TrustRoot.from_pem_files([pub])


@contextmanager
def serving(
    receiver: Receiver, *, http: bool = False
) -> Iterator[tuple[GrpcServer, HttpServer | None]]:
    """Start *receiver* behind an OTLP/gRPC (and optionally OTLP/HTTP) server on free
    loopback ports; stop the servers, then shut the receiver down."""
    receiver.start()
    grpc_server = GrpcServer("127.0.0.1:0", receiver)
    http_server = HttpServer("127.0.0.1:0", receiver) if http else None
    grpc_server.start()
    if http_server is not None:
        http_server.start()
    try:
        yield grpc_server, http_server
    finally:
        grpc_server.stop(1.0)
        if http_server is not None:
            http_server.stop()
        receiver.shutdown()


# -- OTLP requests built by hand ---------------------------------------------------

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"


def quiet_receiver(out: Any, clock: FakeClock, **kwargs: Any) -> Receiver:
    """A receiver that seals a trace 2 s after its root and after 30 s of quiet."""
    return Receiver(out, signing_key=signing_key(), clock=clock, seal_grace=2.0,
                    idle_timeout=30.0, **kwargs)


def crash(receiver: Receiver) -> None:
    """Stop *receiver* as a crash would: its journal left as a killed process leaves
    it, nothing more sealed or retired."""
    assert receiver._journal is not None
    receiver._journal.forget_after_fork()
    receiver._journal = None
    receiver.shutdown(0)


def restart(out: Any, clock: FakeClock, **kwargs: Any) -> list[str]:
    """Start a receiver on *out* (recovering what a crashed one left) and stop it;
    the bundles it recovered."""
    second = quiet_receiver(out, clock, **kwargs)
    try:
        return second.start()
    finally:
        second.shutdown(5)


def journal_files(directory: Any) -> list[str]:
    """The journal directory's entries other than the receivers' remembered sealed
    spans (``sealed-spans/``, kept across restarts by design)."""
    return sorted(name for name in os.listdir(directory) if name != "sealed-spans")


def span_id(n: int) -> str:
    return f"{n:016x}"


def otlp_span(
    trace: str, n: int, *, parent: int | None = None, name: str = "step",
    evidence: bool = True, extra: dict[str, str] | None = None,
) -> trace_pb2.Span:
    span = trace_pb2.Span(
        trace_id=bytes.fromhex(trace), span_id=bytes.fromhex(span_id(n)), name=name,
        kind=trace_pb2.Span.SPAN_KIND_INTERNAL, start_time_unix_nano=1_000 + n,
        end_time_unix_nano=2_000 + n,
    )
    if parent is not None:
        span.parent_span_id = bytes.fromhex(span_id(parent))
    attributes = {"gen_ai.operation.name" if evidence else "app.operation": "chat"}
    attributes.update(extra or {})
    for key, value in attributes.items():
        span.attributes.append(
            common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
        )
    return span


def request(*spans: trace_pb2.Span) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="svc"))
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "tests.receiver"
    ss.spans.extend(spans)
    return req


# -- bundles --------------------------------------------------------------------


def nest_in_arrays(value: common_pb2.AnyValue, levels: int) -> None:
    """Nest a string *levels* arrays down in *value*, built in place (copying a
    message this deep is refused)."""
    for _ in range(levels):
        value = value.array_value.values.add()
    value.string_value = "bottom"


def decoded_groups(data: bytes) -> list[tuple[str, str, list[str]]]:
    """The request *data* as the receiver decodes it: each scope's name and version
    (an undecodable part's reason) with its span ids."""
    decoded = parse_otlp_protobuf(data)
    return [(ss.scope.name, ss.scope.version, [s.span_id.hex() for s in ss.spans])
            for rs in decoded.resource_spans for ss in rs.scope_spans]


def bundle_paths(directory: str) -> list[str]:
    return sorted(find_bundles([directory])) if os.path.isdir(directory) else []


def verified(
    directory: str, trust: TrustRoot, *, allow_incomplete: bool = False
) -> list[BundleReport]:
    """Every bundle below *directory*, each asserted to verify OK, by trace and segment."""
    reports = [check_bundle(p, trust, keep_records=True, allow_incomplete=allow_incomplete)
               for p in bundle_paths(directory)]
    for report in reports:
        assert report.verdict is Verdict.OK, (report.source, report.reason)
    return sorted(reports, key=lambda r: (r.statement.trace_id, r.statement.producer.instance,
                                          r.statement.segment_index))


def span_ids(report: BundleReport) -> list[str]:
    assert report.records is not None
    return [r["span"]["spanId"] for r in report.records]


def raw_records(path: str) -> dict[str, bytes]:
    """The record lines of a bundle file, by span id (lines after the header)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")[1:-2]  # SPEC §7.1: header, records, "]}", ""
    records = [line.removesuffix(b",") for line in lines]
    return {json.loads(line)["span"]["spanId"]: line for line in records}


# -- the receiver as a process ------------------------------------------------------


class ReceiverProcess:
    """``spanproof receiver`` in a subprocess on free loopback ports."""

    def __init__(self, out: str, key_file: str, *extra: str, env: dict[str, str] | None = None,
                 grpc: str = "127.0.0.1:0") -> None:
        cmd = [sys.executable, "-m", "spanproof.verifier", "receiver", "--grpc", grpc,
               "--http", "127.0.0.1:0", "--out", out, "--key", key_file, *extra]
        self.log_path = os.path.join(out, f"receiver-{time.monotonic_ns()}.log")
        os.makedirs(out, exist_ok=True)
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.grpc = self._address("otlp-grpc")
        self.http = self._address("otlp-http")

    def _address(self, label: str) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"receiver exited ({self.proc.wait()}): {self.log()}")
            self.lines.append(line)
            if line.startswith(label):
                return line.split()[1]
        raise AssertionError(f"receiver did not report its {label} address")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig: int, timeout: float = 60.0, *, thread: str = "main") -> int:
        """Send *sig* (to the process, or with ``thread="another"`` to one of its
        threads other than the main one) and wait for the exit code."""
        if thread == "main":
            self.proc.send_signal(sig)
        else:
            signal_another_thread(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout.readlines())
        self.proc.stdout.close()
        self._log.close()
        return code


def export(endpoint: str, *spans: trace_pb2.Span, timeout: float = 10.0) -> Any:
    """Send one OTLP/gRPC export request; return the response."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        return stub.Export(request(*spans), timeout=timeout)


def flatten(groups: Sequence[Sequence[Any]]) -> list[Any]:
    return [x for g in groups for x in g]
