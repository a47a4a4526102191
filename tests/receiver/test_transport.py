"""The Collector contract at the transport level: codes, partial success, RetryInfo."""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from processes import wait_for

from spanproof.exporter.otlp import UNDECODABLE_SCOPE
from spanproof.exporter.otlp_server import (
    MAX_MESSAGE_BYTES,
    GrpcServer,
    HttpServer,
    IngestResult,
    InvalidRequest,
    Unavailable,
    parse_otlp_json,
    parse_otlp_protobuf,
)

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


class FakeIngest:
    def __init__(self) -> None:
        self.mode = "ok"
        self.seen: list[trace_pb2.ResourceSpans] = []

    def __call__(self, resource_spans):
        if self.mode == "invalid":
            raise InvalidRequest("span 1: trace id must be 16 bytes")
        if self.mode == "unavailable":
            raise Unavailable("journal write failed: disk full", retry_after=2.5)
        if self.mode == "bug":
            raise RuntimeError("boom")
        self.seen.extend(resource_spans)
        if self.mode == "partial":
            return IngestResult(rejected=1, message="span 02: duplicate attribute key 'a'")
        return IngestResult()


def _request(n_spans: int = 1) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(n_spans):
        span = ss.spans.add()
        span.trace_id = TRACE
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"s{i}"
    return req


@pytest.fixture
def ingest():
    return FakeIngest()


@pytest.fixture
def grpc_stub(ingest):
    server = GrpcServer("127.0.0.1:0", ingest)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield trace_service_pb2_grpc.TraceServiceStub(channel)
    channel.close()
    server.stop(0)


@pytest.fixture
def http_url(ingest):
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    yield f"http://127.0.0.1:{server.port}/v1/traces"
    server.stop()


def test_http_connections_opened_in_a_burst_all_connect_before_they_are_accepted(
    ingest, monkeypatch
):
    # The listening backlog was socketserver's 5: the rest of a burst had its SYNs
    # dropped and waited a second or more for TCP to try again.
    from spanproof.exporter import otlp_server

    accepting = threading.Event()
    accept_one = otlp_server._BoundedServer._accept_one

    def held(self):
        accepting.wait(30)
        accept_one(self)

    monkeypatch.setattr(otlp_server._BoundedServer, "_accept_one", held)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    sockets = []
    try:
        for _ in range(64):  # none accepted yet: each waits in the backlog
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=3))
    finally:
        accepting.set()
        for s in sockets:
            s.close()
        server.stop()
    assert len(sockets) == 64


def _post(url, body, content_type, encoding=None):
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_grpc_ok_passes_spans_to_ingest(grpc_stub, ingest):
    resp = grpc_stub.Export(_request(3), timeout=10)
    assert not resp.HasField("partial_success")
    assert len(ingest.seen[0].scope_spans[0].spans) == 3


def test_grpc_partial_success_reports_rejected_spans(grpc_stub, ingest):
    ingest.mode = "partial"
    resp = grpc_stub.Export(_request(2), timeout=10)
    assert resp.partial_success.rejected_spans == 1
    assert "duplicate attribute key" in resp.partial_success.error_message


def test_grpc_malformed_is_invalid_argument(grpc_stub, ingest):
    ingest.mode = "invalid"
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Export(_request(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trace id" in err.value.details()


@pytest.mark.parametrize("mode", ["unavailable", "bug"])
def test_grpc_overload_and_bugs_are_unavailable_with_retry_info(grpc_stub, ingest, mode):
    ingest.mode = mode
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Export(_request(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # never INTERNAL/UNKNOWN
    trailers = dict(err.value.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds >= 2


def test_grpc_accepts_messages_above_the_4mib_default(grpc_stub, ingest):
    req = _request(1)
    req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="big").value.string_value = (
        "x" * (6 * 1024 * 1024)
    )
    grpc_stub.Export(req, timeout=30)
    assert ingest.seen


def test_grpc_gzip_compressed_request(grpc_stub, ingest):
    grpc_stub.Export(_request(2), timeout=10, compression=grpc.Compression.Gzip)
    assert len(ingest.seen[0].scope_spans[0].spans) == 2


class _HeldIngest:
    """Holds every call until released, counting the calls that reached it; its
    ``reason`` is what the health checks are told."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self.reason: str | None = None
        self._lock = threading.Lock()

    def __call__(self, resource_spans):
        with self._lock:
            self.entered += 1
        assert self.release.wait(30), "never released"
        return IngestResult()


@pytest.fixture
def held_server():
    """A server of 2 workers and 4 calls at once, and a way to open connections to it."""
    held = _HeldIngest()
    server = GrpcServer("127.0.0.1:0", held, workers=2, calls_at_once=4,
                        health=lambda: held.reason)
    server.start()
    channels: list[grpc.Channel] = []

    def connect() -> grpc.Channel:
        # A subchannel pool of its own: a connection of its own, not a shared one.
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        return channel

    yield server, held, connect
    held.release.set()
    for channel in channels:
        channel.close()
    server.stop(0)


def _exports(channel: grpc.Channel) -> trace_service_pb2_grpc.TraceServiceStub:
    return trace_service_pb2_grpc.TraceServiceStub(channel)


def _hold(stub: trace_service_pb2_grpc.TraceServiceStub, n: int, server: GrpcServer,
          held: _HeldIngest) -> list[grpc.Future]:
    """Send *n* calls that stay held: two served by the workers, the rest waiting."""
    calls = [stub.Export.future(_request(), timeout=30) for _ in range(n)]
    wait_for(lambda: held.entered == min(n, 2) and server.calls == n, 10, f"{n} calls held")
    return calls


def _finish(held: _HeldIngest, calls: list[grpc.Future]) -> None:
    held.release.set()
    for call in calls:
        assert not call.result(timeout=10).HasField("partial_success")


def _retry_delay(error: grpc.RpcError) -> float:
    status = status_pb2.Status.FromString(
        dict(error.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9


def test_grpc_calls_beyond_the_bound_get_unavailable_with_retry_info_at_once(held_server):
    server, held, connect = held_server
    first, second = _exports(connect()), _exports(connect())
    admitted = _hold(first, 4, server, held)
    for _ in range(3):
        # Answered while both workers are still held: the answer does not wait for one.
        with pytest.raises(grpc.RpcError) as err:
            second.Export(_request(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # not RESOURCE_EXHAUSTED
        assert "busy: 4 calls" in err.value.details()
        assert _retry_delay(err.value) == 1.0
    assert held.entered == 2 and server.calls == 4
    _finish(held, admitted)
    assert held.entered == 4  # the rejected calls never reached ingest
    wait_for(lambda: server.calls == 0, 10, "every call done")
    second.Export(_request(), timeout=10)
    assert held.entered == 5


def test_grpc_one_connection_cannot_open_more_calls_than_the_bound(held_server):
    # HTTP/2's stream limit: a fifth call on the connection waits in the client, so the
    # server holds none of its bytes and does not answer it busy.
    server, held, connect = held_server
    stub = _exports(connect())
    held_calls = _hold(stub, 4, server, held)
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(_request(), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _finish(held, held_calls)
    assert held.entered == 4


def test_grpc_a_waiting_call_given_up_by_its_client_frees_its_place(held_server):
    server, held, connect = held_server
    stub = _exports(connect())
    served = _hold(stub, 2, server, held)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            stub.Export(_request(), timeout=0.3)  # waits for a worker, then gives up
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.calls == 4
    _finish(held, served)
    wait_for(lambda: server.calls == 0, 10, "the given-up calls counted out")
    assert held.entered == 2  # given up before a worker took them: never ingested
    stub.Export(_request(), timeout=10)


def _health_status(channel: grpc.Channel, service: str = "") -> int:
    """The status gRPC's own health client (grpcio-health-checking) reads."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


def test_grpc_health_check_answers_for_the_server_and_the_trace_service(held_server):
    _, held, connect = held_server
    channel = connect()
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health_status(channel) == serving
    assert _health_status(channel, "opentelemetry.proto.collector.trace.v1.TraceService") \
        == serving
    held.reason = "storage is failing: journal write failed"
    assert _health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _health_status(channel, "opentelemetry.proto.collector.trace.v1.TraceService") \
        == health_pb2.HealthCheckResponse.NOT_SERVING
    held.reason = None
    assert _health_status(channel) == serving
    with pytest.raises(grpc.RpcError) as err:
        _health_status(channel, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # as grpc.health.v1 says
    with pytest.raises(grpc.RpcError) as err:
        next(iter(health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=5)))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x05ab", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # truncated


def test_grpc_health_check_is_answered_while_every_call_is_held(held_server):
    # A probe must not wait behind the workers, or a busy receiver would be restarted.
    server, held, connect = held_server
    first, second = _exports(connect()), _exports(connect())
    admitted = _hold(first, 4, server, held)
    assert _health_status(connect()) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError):
        second.Export(_request(), timeout=5)  # busy, on the same thread as the check
    assert _health_status(connect()) == health_pb2.HealthCheckResponse.SERVING
    _finish(held, admitted)


@contextlib.contextmanager
def _stalled(channel: grpc.Channel, method: str) -> Iterator[grpc.Future]:
    """A call of *method* whose request never arrives: its stream stays open, empty."""
    done = threading.Event()

    def nothing() -> Iterator[bytes]:
        done.wait(30)
        yield from ()

    call = channel.stream_unary(method).future(nothing(), timeout=30)
    try:
        yield call
    finally:
        done.set()


def test_grpc_busy_answer_does_not_wait_for_a_request_to_arrive(held_server):
    server, held, connect = held_server
    admitted = _hold(_exports(connect()), 4, server, held)
    export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    with _stalled(connect(), export) as stalled:
        assert stalled.exception(timeout=5).code() == grpc.StatusCode.UNAVAILABLE
    with _stalled(connect(), export), pytest.raises(grpc.RpcError) as err:
        _exports(connect()).Export(_request(), timeout=5)  # not behind the stalled one
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    _finish(held, admitted)


def test_grpc_health_check_does_not_wait_behind_a_request_that_never_arrives(
    held_server, monkeypatch
):
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "GRPC_HEALTH_BODY_SECONDS", 0.5)
    _, _, connect = held_server
    with _stalled(connect(), "/grpc.health.v1.Health/Check") as stalled:
        assert _health_status(connect()) == health_pb2.HealthCheckResponse.SERVING
        # Given up on after GRPC_HEALTH_BODY_SECONDS, not held for the client's 30 s.
        assert stalled.exception(timeout=5).code() == grpc.StatusCode.CANCELLED


def test_grpc_health_check_does_not_wait_behind_many_checks_that_never_arrive(held_server):
    # Two threads answer checks, each stalled check holding one for 2 s: behind
    # 64 of them (4 connections of 16) a probe timed out three times in a row.
    server, held, connect = held_server
    health = "/grpc.health.v1.Health/Check"
    with contextlib.ExitStack() as stack:
        stalled = [stack.enter_context(_stalled(connect(), health)) for _ in range(6)]
        threads = server._handlers._health_threads
        wait_for(lambda: threads.calls >= threads.workers, 10, "the health threads taken")
        stub = health_pb2_grpc.HealthStub(connect())
        for reason, status in ((None, health_pb2.HealthCheckResponse.SERVING),
                               ("disk", health_pb2.HealthCheckResponse.NOT_SERVING)):
            held.reason = reason
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            assert answer.status == status
        for call in stalled:  # each still cancelled, or answered without being read
            assert call.exception(timeout=10) is None or \
                call.exception().code() == grpc.StatusCode.CANCELLED


def test_grpc_export_whose_request_does_not_arrive_in_time_is_cancelled(
    held_server, monkeypatch
):
    # As an OTLP/HTTP body must arrive within 120 s of its turn: a client that opens
    # calls and sends nothing does not hold the workers and the bound for good.
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "GRPC_BODY_SECONDS", 0.5)
    server, held, connect = held_server
    held.release.set()
    export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    with _stalled(connect(), export) as first, _stalled(connect(), export) as second:
        wait_for(lambda: server.calls == 2, 10, "both calls with a worker")
        assert first.exception(timeout=5).code() == grpc.StatusCode.CANCELLED
        assert second.exception(timeout=5).code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: server.calls == 0, 10, "their places freed")
    _exports(connect()).Export(_request(), timeout=10)
    assert held.entered == 1


def test_grpc_cancelled_calls_do_not_use_up_their_connections_streams(monkeypatch):
    # A cancelled call's error, kept by gRPC, held the call and its HTTP/2 stream in a
    # reference cycle until the garbage collector ran (rarely, in spanproof receiver):
    # after as many cancellations as the stream limit, the connection refused calls.
    import gc

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "GRPC_BODY_SECONDS", 0.3)
    server = GrpcServer("127.0.0.1:0", FakeIngest(), workers=4, calls_at_once=4)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    gc.disable()
    try:
        for _ in range(2):  # twice the connection's 4 streams
            with contextlib.ExitStack() as stack:
                stalled = [stack.enter_context(_stalled(channel, export)) for _ in range(4)]
                for call in stalled:
                    assert call.exception(timeout=5).code() == grpc.StatusCode.CANCELLED
            # The server's own count of them (calls_at_once) falls a moment later: a
            # round started before then is refused as busy, which is not the point.
            wait_for(lambda: server.calls == 0, 10, "the cancelled calls done")
        _exports(channel).Export(_request(), timeout=5)  # a stream is free for it
    finally:
        gc.enable()
        channel.close()
        server.stop(0)


def test_grpc_export_without_a_request_message_is_invalid_argument(held_server):
    _, held, connect = held_server
    export = connect().stream_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with pytest.raises(grpc.RpcError) as err:
        export(iter(()), timeout=10)  # the stream closed with no message in it
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no ExportTraceServiceRequest message" in err.value.details()
    assert held.entered == 0


class _FreezingProxy:
    """A TCP relay to *port* that, once frozen, passes nothing on and closes nothing:
    what a client whose host vanished (no FIN, no RST) looks like to the server."""

    def __init__(self, port: int) -> None:
        self.frozen = threading.Event()
        self._port = port
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self._port))
                self._sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen.is_set():
                    sink.sendall(data)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def test_grpc_calls_of_a_client_that_vanished_are_cancelled_by_keepalive(monkeypatch):
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "GRPC_KEEPALIVE_SECONDS", 0.5)
    monkeypatch.setattr(otlp_server, "GRPC_PING_TIMEOUT_SECONDS", 0.5)
    held = _HeldIngest()
    server = GrpcServer("127.0.0.1:0", held, workers=1, calls_at_once=2)
    server.start()
    proxy = _FreezingProxy(server.port)
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    try:
        export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        with _stalled(channel, export):  # its request never arrives
            wait_for(lambda: server.calls == 1, 10, "the stalled call held")
            proxy.frozen.set()  # the client's host is gone
            # Pinged, no answer within the timeout: the connection is closed and its
            # call cancelled, not held for TCP's hours.
            wait_for(lambda: server.calls == 0, 10, "the vanished client's call cancelled")
    finally:
        channel.close()
        proxy.close()
        held.release.set()
        server.stop(0)


def test_http_healthz_answers_serving_or_503_with_the_reason():
    reason: list[str | None] = [None]
    server = HttpServer("127.0.0.1:0", FakeIngest(), health=lambda: reason[0])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
            assert (resp.status, resp.read()) == (200, b"SERVING\n")
        reason[0] = "receiver is not running"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/healthz", timeout=10)
        assert err.value.code == 503
        assert err.value.read() == b"NOT_SERVING: receiver is not running\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/v1/traces", timeout=10)
        assert err.value.code == 404
    finally:
        server.stop()


_NOT_FOUND = "not found: this receiver serves POST /v1/traces (and GET /healthz)"


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
def test_http_post_to_a_path_not_served_is_404_naming_the_paths_served(
    http_url, ingest, content_type
):
    # An SDK exporter given OTEL_EXPORTER_OTLP_TRACES_ENDPOINT without /v1/traces
    # posts to the bare address (the endpoint is used as it is), and got a 404
    # saying only "not found".
    base = http_url.removesuffix("/v1/traces")
    body = _VALID if content_type == "application/x-protobuf" else b"{}"
    status, _, answer = _post(f"{base}/", body, content_type)
    assert status == 404
    if content_type == "application/json":
        message = json.loads(answer)["message"]
    else:
        message = status_pb2.Status.FromString(answer).message
    assert message == _NOT_FOUND
    assert not ingest.seen


def test_http_get_of_a_path_not_served_is_404_naming_the_paths_served(http_url):
    base = http_url.removesuffix("/v1/traces")
    for path in ("/", "/v1/traces"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}{path}", timeout=10)
        assert err.value.code == 404
        assert err.value.read() == f"{_NOT_FOUND}\n".encode()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_http_server_listens_on_an_ipv6_address_as_the_grpc_server_does(ingest):
    # The OTLP/HTTP server bound only IPv4 sockets: "[::1]:0" raised
    # "Address family for hostname not supported", where the gRPC one listened.
    grpc_server = GrpcServer("[::1]:0", ingest)
    server = HttpServer("[::1]:0", ingest)
    server.start()
    try:
        assert server.host == "[::1]"
        status, _, _ = _post(f"http://[::1]:{server.port}/v1/traces",
                             _request().SerializeToString(), "application/x-protobuf")
        assert status == 200
        assert len(ingest.seen) == 1
    finally:
        server.stop()
        grpc_server.stop(0)


def test_http_server_on_a_port_in_use_raises_the_bind_error(ingest, monkeypatch):
    # socketserver calls server_close when the bind fails, and server_close used
    # what was set only after the bind: the error was an AttributeError
    # ('_changes'), and `spanproof receiver` with its --http port in use ended in
    # "unexpected AttributeError" instead of "cannot listen".
    from spanproof.exporter import otlp_server

    real_pipe, pipes = os.pipe, []  # each end's descriptor and inode

    def pipe() -> tuple[int, int]:
        ends = real_pipe()
        pipes.extend((fd, os.fstat(fd).st_ino) for fd in ends)
        return ends

    monkeypatch.setattr(otlp_server.os, "pipe", pipe)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as refused:
            HttpServer(f"127.0.0.1:{taken.getsockname()[1]}", ingest)
    assert refused.value.errno == errno.EADDRINUSE
    assert len(pipes) == 2

    def still_open(fd: int, inode: int) -> bool:
        try:
            return os.fstat(fd).st_ino == inode
        except OSError:
            return False

    assert not any(still_open(fd, inode) for fd, inode in pipes)  # its wake-up pipe closed


@pytest.mark.parametrize("first", ["spanproof", "grpc defaults"])
def test_grpc_server_on_a_port_another_grpc_server_listens_on_raises_oserror(ingest, first):
    # gRPC sets SO_REUSEPORT unless told not to: a second receiver on the port of a
    # running one listened too, and the kernel split the connections between them.
    # The first may be a receiver, or any gRPC server (which sets it by default).
    from concurrent import futures

    if first == "spanproof":
        running = GrpcServer("127.0.0.1:0", ingest)
        port, stop = running.port, running.stop
    else:
        other = grpc.server(futures.ThreadPoolExecutor(1))
        port, stop = other.add_insecure_port("127.0.0.1:0"), other.stop
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            second = GrpcServer(f"127.0.0.1:{port}", FakeIngest())
            second.stop(0)  # reached only when it listens (a failure, then)
    finally:
        stop(0)


class _Admission:
    """What `Receiver.check_accepting` does, switched by hand."""

    def __init__(self) -> None:
        self.refusal: Unavailable | None = Unavailable("receiver is starting", 1.0)

    def __call__(self) -> None:
        if self.refusal is not None:
            raise self.refusal


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The requests the transports decode, by kind."""
    from spanproof.exporter import otlp_server

    seen: list[str] = []
    for name in ("parse_otlp_protobuf", "parse_otlp_json", "_gunzip"):
        real = getattr(otlp_server, name)
        monkeypatch.setattr(otlp_server, name,
                            lambda *args, _real=real, _name=name: seen.append(_name)
                            or _real(*args))
    return seen


def test_grpc_request_refused_by_admission_is_unavailable_and_never_decoded(
    ingest, parses
):
    # A receiver recovering a journal refused requests only after decoding them,
    # spending its CPU on parses it would throw away.
    admission = _Admission()
    server = GrpcServer("127.0.0.1:0", ingest, admission=admission)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Export(_request(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == "receiver is starting"
            trailers = dict(err.value.trailing_metadata())
            status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
            info = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(info)
            assert info.retry_delay.seconds == 1
            assert parses == [] and ingest.seen == []
            admission.refusal = None
            stub.Export(_request(2), timeout=10)
    finally:
        server.stop(0)
    assert parses == ["parse_otlp_protobuf"]
    assert len(ingest.seen) == 1


@pytest.mark.parametrize("content_type, body, encoding", [
    ("application/x-protobuf", _request(2).SerializeToString(), "identity"),
    ("application/x-protobuf", gzip.compress(_request(2).SerializeToString()), "gzip"),
    ("application/json", b'{"resourceSpans": []}', "identity"),
], ids=["protobuf", "gzip", "json"])
def test_http_request_refused_by_admission_is_503_read_but_not_decoded(
    ingest, parses, content_type, body, encoding
):
    admission = _Admission()
    admission.refusal = Unavailable("storage is failing: disk full", 5.0)
    server = HttpServer("127.0.0.1:0", ingest, admission=admission)
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Content-Type": content_type, "Content-Encoding": encoding}
    try:
        connection.request("POST", "/v1/traces", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        assert response.status == 503
        assert response.getheader("Retry-After") == "5"
        assert not response.will_close  # the body was read: the connection lives on
        if content_type == "application/x-protobuf":
            assert status_pb2.Status.FromString(answer).message == \
                "storage is failing: disk full"
        assert parses == [] and ingest.seen == []
        admission.refusal = None
        connection.request("POST", "/v1/traces", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    finally:
        connection.close()
        server.stop()
    assert parses  # decoded once admitted


def test_grpc_server_refuses_fewer_calls_at_once_than_workers():
    with pytest.raises(ValueError, match="calls_at_once"):
        GrpcServer("127.0.0.1:0", FakeIngest(), workers=8, calls_at_once=4)


def test_http_protobuf_ok(http_url, ingest):
    code, headers, body = _post(http_url, _request(2).SerializeToString(), "application/x-protobuf")
    assert code == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert len(ingest.seen[0].scope_spans[0].spans) == 2


def test_http_gzip_protobuf(http_url, ingest):
    data = gzip.compress(_request(2).SerializeToString())
    code, _, _ = _post(http_url, data, "application/x-protobuf", "gzip")
    assert code == 200
    assert len(ingest.seen[0].scope_spans[0].spans) == 2


def test_http_gzip_body_of_several_members_passes_every_member(http_url, ingest):
    # RFC 1952 §2.2: a gzip file is a series of members; everything after the first
    # was dropped while the request was answered 200.
    first, second = _request(2), _request(3)
    second.resource_spans[0].scope_spans[0].spans[0].name = "second member"
    data = gzip.compress(first.SerializeToString()) + gzip.compress(second.SerializeToString())
    code, _, _ = _post(http_url, data, "application/x-protobuf", "gzip")
    assert code == 200
    assert [len(rs.scope_spans[0].spans) for rs in ingest.seen] == [2, 3]
    assert ingest.seen[1].scope_spans[0].spans[0].name == "second member"


@pytest.mark.parametrize("encoding", ["deflate", "Deflate", " deflate "])
def test_http_deflate_protobuf_as_the_sdk_exporter_sends_it(http_url, ingest, encoding):
    # OpenTelemetry's OTLP/HTTP exporters offer compression "deflate" (the zlib format,
    # RFC 9110 §8.4.1.2); it was refused with 400, which they treat as permanent, so
    # every span they sent was dropped.
    data = zlib.compress(_request(2).SerializeToString())
    code, _, _ = _post(http_url, data, "application/x-protobuf", encoding)
    assert code == 200
    assert len(ingest.seen[0].scope_spans[0].spans) == 2


def test_http_deflate_from_the_sdk_exporter_reaches_ingest(http_url, ingest):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=http_url, compression=Compression.Deflate)))
    with provider.get_tracer("t").start_as_current_span("deflated"):
        pass
    provider.shutdown()
    assert [span.name for rs in ingest.seen for ss in rs.scope_spans
            for span in ss.spans] == ["deflated"]


_DEFLATED = zlib.compress(_request(2).SerializeToString())


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_DEFLATED + b"garbage!", "8 bytes after the stream"),
        (_DEFLATED[:-4], "cut short"),  # no Adler-32 trailer
        (b"", "cut short"),
        (b"not deflate", "bad deflate body"),
        (zlib.compress(_request(2).SerializeToString(), wbits=-15), "bad deflate body"),
    ],
    ids=["trailing-garbage", "no-trailer", "empty", "not-deflate", "raw-deflate"],
)
def test_http_deflate_damaged_cut_short_or_followed_by_data_is_400(http_url, ingest, data,
                                                                  why):
    code, _, body = _post(http_url, data, "application/x-protobuf", "deflate")
    assert code == 400
    assert why in status_pb2.Status.FromString(body).message
    assert not ingest.seen


def test_http_deflate_size_limit(ingest):
    server = HttpServer("127.0.0.1:0", ingest, max_message_bytes=1000)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/traces"
        code, _, body = _post(url, zlib.compress(bytes(1001)), "application/x-protobuf",
                              "deflate")
        assert code == 413
        assert "exceeds the 1000-byte limit" in status_pb2.Status.FromString(body).message
    finally:
        server.stop()
    assert not ingest.seen


def test_http_unsupported_content_encoding_is_400_naming_it(http_url, ingest):
    code, _, body = _post(http_url, _request(2).SerializeToString(), "application/x-protobuf",
                          "br")
    assert code == 400
    assert "unsupported Content-Encoding 'br'" in status_pb2.Status.FromString(body).message
    assert not ingest.seen


@pytest.mark.parametrize("server", [GrpcServer, HttpServer])
@pytest.mark.parametrize("limit", [0, -1, MAX_MESSAGE_BYTES + 1, 2**63, 1.5, True])
def test_a_message_size_limit_the_servers_cannot_apply_is_refused_by_name(
        ingest, server, limit):
    # gRPC raised OverflowError deep in its options beyond a C int; 0 took no request.
    with pytest.raises(ValueError, match=r"max_message_bytes must be an integer from 1 "
                                         r"to 2147483647 \(2 GiB - 1\), got "):
        server("127.0.0.1:0", ingest, max_message_bytes=limit)


def test_the_largest_message_size_limit_is_taken(ingest):
    grpc_server = GrpcServer("127.0.0.1:0", ingest, max_message_bytes=MAX_MESSAGE_BYTES)
    grpc_server.start()
    grpc_server.stop(0)
    http_server = HttpServer("127.0.0.1:0", ingest, max_message_bytes=MAX_MESSAGE_BYTES)
    http_server.start()
    http_server.stop()
    assert grpc_server.port > 0 and http_server.port > 0


def test_http_gzip_size_limit_counts_every_member(ingest):
    server = HttpServer("127.0.0.1:0", ingest, max_message_bytes=1000)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/traces"
        member = gzip.compress(bytes(600))  # within the limit alone, not twice
        code, _, body = _post(url, member + member, "application/x-protobuf", "gzip")
        assert code == 413
        assert "exceeds the 1000-byte limit" in status_pb2.Status.FromString(body).message
        code, _, _ = _post(url, gzip.compress(bytes(600)), "application/x-protobuf", "gzip")
        assert code == 400  # within the limit: decoded (and not a valid request)
    finally:
        server.stop()
    assert not ingest.seen


_GZIPPED = gzip.compress(_request(2).SerializeToString())


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_GZIPPED + b"garbage!", "data after the last gzip member"),
        (_GZIPPED + b"\0" * 8, "data after the last gzip member"),
        (_GZIPPED[:-8], "cut short"),  # no CRC and size trailer
        (_GZIPPED[: len(_GZIPPED) // 2], "cut short"),
        (_GZIPPED + _GZIPPED[:-4], "cut short"),  # the second member cut short
        (b"", "cut short"),
    ],
    ids=["trailing-garbage", "trailing-zeros", "no-trailer", "half", "second-member-cut",
         "empty"],
)
def test_http_gzip_with_trailing_data_or_cut_short_is_400(http_url, ingest, data, why):
    # These were answered 200 with whatever the first member gave.
    code, _, body = _post(http_url, data, "application/x-protobuf", "gzip")
    assert code == 400
    assert why in status_pb2.Status.FromString(body).message
    assert not ingest.seen


def test_http_json_with_hex_ids_int64_strings_and_integer_enums(http_url, ingest):
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": "00000000000000a1",
                                "parentSpanId": "",
                                "name": "j",
                                "kind": 3,
                                "startTimeUnixNano": "1764331200000000000",
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "9007199254740993"}}
                                ],
                                "someFutureField": 1,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    code, headers, body = _post(http_url, json.dumps(doc).encode(), "application/json")
    assert code == 200, body
    assert headers["Content-Type"] == "application/json"
    span = ingest.seen[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE
    assert span.span_id.hex() == "00000000000000a1"
    assert span.kind == 3
    assert span.attributes[0].value.int_value == 9007199254740993


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"\x0a\xff\xff\xff", "application/x-protobuf"),
        (b"{not json", "application/json"),
        (b'{"resourceSpans": "nope"}', "application/json"),
        # A field name protobuf cannot take (it raised SystemError inside protobuf,
        # answered 503 as a receiver bug, and the Collector retried it).
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"\\ud800": 1}]}]}]}',
         "application/json"),
    ],
    ids=["bad-protobuf", "bad-json", "wrong-shape", "surrogate-field-name"],
)
def test_http_malformed_is_400(http_url, body, ctype):
    code, _, _ = _post(http_url, body, ctype)
    assert code == 400


def test_http_bad_gzip_is_400(http_url):
    code, _, _ = _post(http_url, b"not gzip", "application/x-protobuf", "gzip")
    assert code == 400


def test_http_ingest_rejection_is_400_with_message(http_url, ingest):
    ingest.mode = "invalid"
    code, _, body = _post(http_url, _request().SerializeToString(), "application/x-protobuf")
    assert code == 400
    assert "trace id" in status_pb2.Status.FromString(body).message


def test_http_unavailable_is_503_with_retry_after(http_url, ingest):
    ingest.mode = "unavailable"
    code, headers, body = _post(http_url, _request().SerializeToString(), "application/x-protobuf")
    assert code == 503
    assert int(headers["Retry-After"]) >= 2
    assert "disk full" in status_pb2.Status.FromString(body).message


def test_http_partial_success_json(http_url, ingest):
    ingest.mode = "partial"
    doc = {
        "resourceSpans": [
            {"scopeSpans": [{"spans": [{"traceId": TRACE.hex(), "spanId": "00000000000000a1"}]}]}
        ]
    }
    code, _, body = _post(http_url, json.dumps(doc).encode(), "application/json")
    assert code == 200
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"


def _empty_spans(n: int) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for _ in range(n):
        ss.spans.add()  # two bytes on the wire
    return req


def test_a_request_of_more_spans_than_its_size_can_hold_is_refused(
    grpc_stub, http_url, ingest
):
    # Decoding costs ~350 bytes of memory per span whatever its size, so 64 MiB of
    # 2-byte empty spans (a 65 KB gzip) would have taken ~25 GB.  A span with ids
    # takes at least 30 bytes: more spans than that allows are refused undecoded.
    req = _empty_spans(5000)
    data = req.SerializeToString()
    message = (f"request holds 1025 or more spans in {len(data)} bytes: a span with its "
               "trace and span ids takes at least 30 bytes")
    with pytest.raises(InvalidRequest) as refused:
        parse_otlp_protobuf(data)
    assert str(refused.value) == message
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Export(req, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message
    code, _, body = _post(http_url, gzip.compress(data), "application/x-protobuf", "gzip")
    assert (code, status_pb2.Status.FromString(body).message) == (400, message)
    for doc_value in (
        {"resourceSpans": [{"scopeSpans": [{"spans": [{}] * 5000}]}]},
        # protobuf reads the other spelling where one is null: both are counted.
        {"resourceSpans": None, "resource_spans": [{"scopeSpans": [{"spans": [{}] * 5000}]}]},
        {"resourceSpans": [{"scopeSpans": None, "scope_spans": [{"spans": [{}] * 5000}]}]},
    ):
        doc = json.dumps(doc_value).encode()
        code, _, body = _post(http_url, doc, "application/json")
        assert code == 400
        assert json.loads(body)["message"] == (
            f"request holds 5000 or more spans in {len(doc)} bytes: a span with its trace "
            "and span ids takes at least 74 bytes")
    assert not ingest.seen


@pytest.mark.parametrize("level", ["resource", "scope"])
def test_a_request_of_empty_resource_or_scope_span_lists_is_refused(level):
    # Each costs about as much to decode as an empty span, on 2 bytes of the wire.
    req = trace_service_pb2.ExportTraceServiceRequest()
    if level == "resource":
        for _ in range(2000):
            req.resource_spans.add()
    else:
        resource = req.resource_spans.add()
        for _ in range(2000):
            resource.scope_spans.add()
    with pytest.raises(InvalidRequest, match=r"holds 20\d\d or more resource and scope "
                                             r"span lists for 0 spans"):
        parse_otlp_protobuf(req.SerializeToString())
    # Lists that hold spans are what senders write, however many.
    req = trace_service_pb2.ExportTraceServiceRequest()
    for n in range(2000):
        span = req.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id = TRACE, (n + 1).to_bytes(8, "big")
    assert len(parse_otlp_protobuf(req.SerializeToString()).resource_spans) == 2000


def test_empty_span_lists_before_the_spans_count_against_all_of_them():
    # 1,100 empty scopes, then one of 5,000 spans: within the bound (twice the
    # request's spans, plus 1,024), though refused when only the spans counted so
    # far were compared, with a 400 the Collector drops.
    req = trace_service_pb2.ExportTraceServiceRequest()
    resource = req.resource_spans.add()
    for _ in range(1100):
        resource.scope_spans.add()
    scope = resource.scope_spans.add()
    for n in range(5000):
        span = scope.spans.add()
        span.trace_id, span.span_id = TRACE, (n + 1).to_bytes(8, "big")
    assert len(parse_otlp_protobuf(req.SerializeToString())
               .resource_spans[0].scope_spans) == 1101


def test_spans_with_ids_and_a_few_without_are_decoded():
    assert len(parse_otlp_protobuf(_request(5000).SerializeToString())
               .resource_spans[0].scope_spans[0].spans) == 5000
    # Each is then rejected with its reason, not the whole request.
    assert len(parse_otlp_protobuf(_empty_spans(1024).SerializeToString())
               .resource_spans[0].scope_spans[0].spans) == 1024


def _field(number: int, wire: int, payload: bytes) -> bytes:
    from google.protobuf.internal.encoder import _VarintBytes

    if wire == 2:
        payload = _VarintBytes(len(payload)) + payload
    return _VarintBytes(number << 3 | wire) + payload


# An unknown field of each wire type: varint, fixed64, length-delimited, fixed32.
_UNKNOWN = (_field(9, 0, b"\x96\x01") + _field(10, 1, b"\x12" * 8)
            + _field(11, 2, b"\x12\x00\x12\x00") + _field(12, 5, b"\x12" * 4))


def test_the_span_count_skips_unknown_fields_of_every_wire_type():
    # Fields added to OTLP later are ignored by the decoder; the count before it
    # must skip them too, not take them for spans or stop at them.
    spans = [span.SerializeToString() for span in _request(3).resource_spans[0]
             .scope_spans[0].spans]
    scope = _field(1, 2, b"") + _UNKNOWN + b"".join(_field(2, 2, s) for s in spans) + _UNKNOWN
    resource = _UNKNOWN + _field(2, 2, scope) + _UNKNOWN
    data = _UNKNOWN + _field(1, 2, resource) + _UNKNOWN
    (decoded,) = parse_otlp_protobuf(data).resource_spans[0].scope_spans
    assert [span.span_id for span in decoded.spans] == [
        (i + 1).to_bytes(8, "big") for i in range(3)]
    with pytest.raises(InvalidRequest, match="field 13 has wire type 3"):
        parse_otlp_protobuf(data + _field(13, 3, b""))
    with pytest.raises(InvalidRequest, match="truncated message"):
        parse_otlp_protobuf(data + _field(1, 2, b"\x12")[:-1])
    # Refused as it is counted: the decoder never sees the truncated field after.
    flood = _empty_spans(1100).SerializeToString() + _field(1, 2, b"\x12")[:-1]
    with pytest.raises(InvalidRequest, match="1025 or more spans"):
        parse_otlp_protobuf(flood)


def test_parse_otlp_json_sets_apart_a_span_with_a_lone_surrogate():
    # Every string a request holds is valid UTF-8 past this point (the journal's text
    # encoder relies on it), but the span alone is set apart to be rejected: the
    # whole request was refused (400), every other span of the batch lost with it.
    doc = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"00000000000000a1",'
           b'"name":"\\ud800"},{"spanId":"00000000000000a2","name":"ok"}]}]}]}')
    kept, apart = parse_otlp_json(doc).resource_spans[0].scope_spans
    assert [(s.span_id.hex(), s.name) for s in kept.spans] == [("00000000000000a2", "ok")]
    assert (apart.scope.name, apart.scope.version) == (
        UNDECODABLE_SCOPE, "a string holds a lone surrogate: no canonical JSON form "
        "(SPEC §3.1)")
    assert [(s.span_id.hex(), s.name) for s in apart.spans] == [("00000000000000a1", "")]


@pytest.mark.parametrize("name", ["\\ud800", "\\udfff", "kind\\udc80", "\\u00e9\\ud83d"])
def test_parse_otlp_json_rejects_a_lone_surrogate_in_a_field_name(name: str) -> None:
    # Unknown field names are ignored (OTLP), but protobuf cannot even look up one
    # that is not valid Unicode: the request is malformed, not a receiver error.
    doc = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"%s":"x"}]}]}]}' % name.encode()
    with pytest.raises(InvalidRequest, match=r"[Ss]urrogate"):
        parse_otlp_json(doc)


def test_parse_otlp_json_still_ignores_unknown_field_names() -> None:
    doc = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","\\u00e9t\\u00e9":1,'
           b'"\\ud83d\\ude00":2}]}]}],"extra":{"nested":[1]}}')
    (span,) = parse_otlp_json(doc).resource_spans[0].scope_spans[0].spans
    assert span.name == "a"


def _json_span(members: str) -> bytes:
    span = f'{{"traceId":"{TRACE.hex()}","spanId":"00000000000000a1",{members}}}'
    return f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}'.encode()


@pytest.mark.parametrize(
    "members", ['"kind":1e400', '"kind":-1e400', '"status":{"code":1e400}',
                '"startTimeUnixNano":1e400'],
)
def test_http_json_number_beyond_a_double_is_400(http_url, ingest, members):
    # An enum of 1e400 raised OverflowError inside protobuf, answered 503 as a
    # receiver error: the Collector retried the malformed batch without end.
    code, headers, body = _post(http_url, _json_span(members), "application/json")
    assert code == 400
    assert "Retry-After" not in headers
    assert "beyond the range of a double" in json.loads(body)["message"]
    assert not ingest.seen


@pytest.mark.parametrize(
    "members", ['"kind":NaN', '"kind":Infinity', '"kind":-Infinity',
                '"attributes":[{"key":"k","value":{"doubleValue":NaN}}]'],
)
def test_parse_otlp_json_refuses_nan_and_infinity(members):
    # Not JSON (RFC 8259 §6); "kind": NaN was taken as kind 0.
    with pytest.raises(InvalidRequest, match="not a number"):
        parse_otlp_json(_json_span(members))


def test_parse_otlp_json_takes_nan_spelled_as_protobuf_spells_it():
    request = parse_otlp_json(
        _json_span('"attributes":[{"key":"k","value":{"doubleValue":"NaN"}}]'))
    value = request.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.double_value
    assert value != value


@pytest.mark.parametrize("field", ["traceId", "spanId", "parentSpanId"])
def test_parse_otlp_json_takes_an_id_that_is_not_hex_as_an_invalid_id(field):
    # The span is rejected by itself later (as a wrong-length id in protobuf is);
    # the whole request was refused.  Never empty: no parent would make it a root.
    span = {"traceId": TRACE.hex(), "spanId": "00000000000000a1",
            "parentSpanId": "00000000000000a0", "name": "n", field: "00f067aa0ba902bz"}
    request = parse_otlp_json(json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode())
    parsed = request.resource_spans[0].scope_spans[0].spans[0]
    ids = {"traceId": parsed.trace_id, "spanId": parsed.span_id,
           "parentSpanId": parsed.parent_span_id}
    assert ids.pop(field) == b"\0"
    assert ids == {k: bytes.fromhex(span[k]) for k in ids}


def test_parse_otlp_json_rejects_non_object():
    with pytest.raises(InvalidRequest):
        parse_otlp_json(b"[1, 2]")


# -- HTTP/1.1 message framing -------------------------------------------------------


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


def _raw(method_path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", **headers}.items())
    return f"{method_path} HTTP/1.1\r\n{head}\r\n".encode() + body


def _exchange(port: int, data: bytes, *, end: bool = False) -> tuple[bytes, bool]:
    """Send *data* on a new connection (and with *end* nothing more: half-close it);
    what came back, and whether the server closed the connection (rather than waiting
    for another request)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            if end:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed first (ENOTCONN, EPIPE): read its answer
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass  # closed with our request unread: what arrived before is the answer
    return received, True


def _chunked(body: bytes, size: int = 7) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


_VALID = _request(2).SerializeToString()
# A complete /v1/traces request: sent as the body of a request answered without
# reading it, it was read as the next request on the connection.
_SMUGGLED = _raw("POST /v1/traces",
                 {"Content-Type": "application/x-protobuf", "Content-Length": str(len(_VALID))},
                 _VALID)
_PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/v1/metrics", {**_PROTOBUF, "Content-Length": str(len(_SMUGGLED))}, 404),
        ("/v1/traces", _PROTOBUF, 400),  # no Content-Length
        ("/v1/traces", {**_PROTOBUF, "Content-Length": "+5"}, 400),
        ("/v1/traces", {"Content-Type": "text/plain",
                        "Content-Length": str(len(_SMUGGLED))}, 415),
        ("/v1/traces", {**_PROTOBUF, "Content-Length": str(len(_SMUGGLED)),
                        "Transfer-Encoding": "chunked"}, 400),
        ("/v1/traces", {**_PROTOBUF, "Transfer-Encoding": "gzip, chunked"}, 501),
        # Python's int() refuses over 4,300 digits: answered 503 (retry) with a
        # traceback in the log.
        ("/v1/traces", {**_PROTOBUF, "Content-Length": "9" * 5000}, 413),
        ("/v1/traces", {**_PROTOBUF, "Content-Length": "0" * 5000 + "9" * 30}, 413),
    ],
    ids=["other-path", "no-content-length", "bad-content-length", "unsupported-type",
         "both-lengths", "unknown-transfer-coding", "5000-digit-length",
         "30-digit-length-after-5000-zeros"],
)
def test_http_answer_without_reading_the_body_closes_the_connection(
    http_url, ingest, path, headers, code
):
    received, closed = _exchange(_port(http_url), _raw(f"POST {path}", headers, _SMUGGLED))
    assert received.startswith(b"HTTP/1.1 %d " % code), received[:200]
    assert b"\r\nConnection: close\r\n" in received
    assert received.count(b"HTTP/1.1 ") == 1  # the body was not read as a request
    assert closed
    assert not ingest.seen


def test_http_content_length_with_leading_zeros_is_read(http_url, ingest):
    # RFC 9110 §8.6: 1*DIGIT; 5,000 zeros in front of the length were a 503.
    head = {**_PROTOBUF, "Content-Length": "0" * 5000 + str(len(_VALID))}
    received, _ = _exchange(_port(http_url), _raw("POST /v1/traces", head, _VALID), end=True)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert len(ingest.seen) == 1


def test_http_chunked_body_is_read_and_the_connection_kept(http_url, ingest):
    # RFC 9112 §7.1: what an exporter sends when it does not know the length ahead
    # (a gzip stream, for one); it was answered 400 and its body left unread.
    connection = http.client.HTTPConnection("127.0.0.1", _port(http_url), timeout=10)
    try:
        for body, encoding in ((_VALID, "identity"), (gzip.compress(_VALID), "gzip")):
            connection.request("POST", "/v1/traces", body=iter([body[:5], body[5:]]),
                               headers={**_PROTOBUF, "Content-Encoding": encoding},
                               encode_chunked=True)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert not response.will_close
    finally:
        connection.close()
    assert [len(rs.scope_spans[0].spans) for rs in ingest.seen] == [2, 2]


def test_http_chunked_body_with_extensions_and_trailers(http_url, ingest):
    framed = (b"5;name=value\r\n" + _VALID[:5] + b"\r\n"
              + b"%X\r\n" % (len(_VALID) - 5) + _VALID[5:] + b"\r\n"
              + b"0\r\nTrailer-Field: x\r\n\r\n")
    headers = {**_PROTOBUF, "Transfer-Encoding": "chunked", "Connection": "close"}
    received, closed = _exchange(_port(http_url), _raw("POST /v1/traces", headers, framed))
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert closed
    assert len(ingest.seen[0].scope_spans[0].spans) == 2


@pytest.mark.parametrize(
    ("framed", "code"),
    [
        (b"zz\r\n" + _VALID, 400),  # not a chunk size
        (b"%x\r\n" % (len(_VALID) - 1) + _VALID + b"\r\n0\r\n\r\n", 400),  # too long
        (_chunked(bytes(1001)), 413),  # beyond the limit in all
        # Framing counts too: 400 bytes of data in 1-byte chunks are 2,000 on the wire.
        (_chunked(bytes(400), size=1), 413),
        (b" 5\r\n" + _VALID[:5] + b"\r\n0\r\n\r\n", 400),  # space before the size
        (b"5\x0b\r\n" + _VALID[:5] + b"\r\n0\r\n\r\n", 400),  # a vertical tab after it
        (b"5;a\rb\r\n" + _VALID[:5] + b"\r\n0\r\n\r\n", 400),  # a bare CR in an extension
    ],
    ids=["bad-size", "chunk-longer-than-size", "too-large", "tiny-chunks-too-large",
         "space-before-size", "vertical-tab", "bare-cr"],
)
def test_http_bad_or_too_large_chunked_body_closes_the_connection(ingest, framed, code):
    server = HttpServer("127.0.0.1:0", ingest, max_message_bytes=1000)
    server.start()
    try:
        headers = {**_PROTOBUF, "Transfer-Encoding": "chunked"}
        received, closed = _exchange(server.port, _raw("POST /v1/traces", headers, framed))
    finally:
        server.stop()
    assert received.startswith(b"HTTP/1.1 %d " % code), received[:200]
    assert b"\r\nConnection: close\r\n" in received
    assert closed
    assert not ingest.seen


@pytest.mark.parametrize(
    "fields",
    [
        [("Content-Length", "0"), ("Content-Length", str(len(_VALID)))],
        [("Content-Length", str(len(_VALID))), ("Content-Length", str(len(_VALID)))],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")],
    ],
    ids=["two-lengths", "same-length-twice", "chunked-then-identity"],
)
def test_http_repeated_framing_fields_are_refused_and_close(http_url, ingest, fields):
    # A front end that takes the other field than this server would frame another
    # request out of the same bytes (RFC 9112 §6.3); "chunked, identity" does not end
    # in chunked.
    head = "".join(f"{k}: {v}\r\n" for k, v in
                   [("Host", "x"), ("Content-Type", "application/x-protobuf"), *fields])
    data = f"POST /v1/traces HTTP/1.1\r\n{head}\r\n".encode() + _VALID
    received, closed = _exchange(_port(http_url), data)
    assert received.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 ")), received[:200]
    assert received.count(b"HTTP/1.1 ") == 1 and closed
    assert not ingest.seen


def test_http_gzip_of_many_members_is_read_up_to_a_bound(http_url, ingest):
    empty = gzip.compress(b"")
    status, _, _ = _post(http_url, empty * 1023 + _GZIPPED, "application/x-protobuf", "gzip")
    assert status == 200 and len(ingest.seen) == 1
    status, _, body = _post(http_url, empty * 1024 + _GZIPPED, "application/x-protobuf",
                            "gzip")
    assert status == 400 and b"more than 1024 members" in body
    assert len(ingest.seen) == 1


def test_parse_otlp_json_refuses_a_lone_surrogate_where_a_message_belongs():
    # protobuf raised SystemError naming it, answered 503: the Collector retried it.
    for body in (b'{"resourceSpans": ["\\ud800"]}',
                 b'{"resourceSpans": [{"resource": "\\udc00"}]}'):
        with pytest.raises(InvalidRequest, match="not an OTLP"):
            parse_otlp_json(body)


def test_http_chunked_body_cut_short_is_400(http_url, ingest):
    headers = {**_PROTOBUF, "Transfer-Encoding": "chunked"}
    framed = b"%x\r\n" % len(_VALID) + _VALID[:10]  # and the client sends no more
    received, _ = _exchange(_port(http_url), _raw("POST /v1/traces", headers, framed), end=True)
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert b"cut short" in received
    assert not ingest.seen


def test_http_requests_beyond_the_ones_being_read_wait_then_get_503(ingest, monkeypatch):
    # Memory is bounded by the bodies read at once, not by the number of clients:
    # a request beyond them waits for its turn, and is answered 503 (retried by the
    # Collector) if none comes, its body left unread in its socket.
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_REQUESTS_AT_ONCE", 1)
    monkeypatch.setattr(otlp_server, "HTTP_TURN_WAIT", 0.3)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    try:
        turns = server._server.RequestHandlerClass.turns_at_once  # type: ignore[attr-defined]
        assert turns.acquire(timeout=5)  # as a request being read holds its turn
        head = {**_PROTOBUF, "Content-Length": str(len(_VALID))}
        received, closed = _exchange(server.port, _raw("POST /v1/traces", head, _VALID))
        assert received.startswith(b"HTTP/1.1 503 "), received[:200]
        assert b"\r\nRetry-After: 1\r\n" in received
        assert b"\r\nConnection: close\r\n" in received and closed
        assert not ingest.seen
        turns.release()
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200 and len(ingest.seen) == 1
    finally:
        server.stop()


def test_http_client_that_stalls_mid_body_is_disconnected(ingest, monkeypatch):
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(otlp_server, "HTTP_REQUESTS_AT_ONCE", 1)
    monkeypatch.setattr(otlp_server, "HTTP_TURN_WAIT", 5.0)  # a turn never given back: 503
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    try:
        head = {**_PROTOBUF, "Content-Length": str(len(_VALID))}
        received, closed = _exchange(server.port, _raw("POST /v1/traces", head, _VALID[:3]))
        assert closed and received == b""  # closed by the server, well before 5 s
        assert not ingest.seen
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200  # its turn was given back
    finally:
        server.stop()


def test_http_client_trickling_its_body_loses_its_turn_at_the_body_deadline(
    ingest, monkeypatch
):
    # A byte now and then passed every read's timeout: eight such clients held
    # every turn, and every real export got 503.
    import threading
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_BODY_SECONDS", 0.6)
    monkeypatch.setattr(otlp_server, "HTTP_REQUESTS_AT_ONCE", 1)
    monkeypatch.setattr(otlp_server, "HTTP_TURN_WAIT", 5.0)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    stop = threading.Event()
    try:
        head = {**_PROTOBUF, "Content-Length": str(len(_VALID) + 100)}
        trickler = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        trickler.sendall(_raw("POST /v1/traces", head, b""))

        def trickle() -> None:
            for _ in range(100):  # well past the deadline, never the whole body
                if stop.wait(0.1):
                    return
                try:
                    trickler.sendall(b"\0")
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(0.2)  # the trickler holds the only turn
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200  # its turn came once the trickler's body time ran out
        assert len(ingest.seen) == 1
    finally:
        stop.set()
        server.stop()


def test_http_request_head_longer_than_its_bound_is_431(http_url, ingest):
    # http.server reads up to 100 header fields of 64 KiB each: 60 connections held
    # 430 MB of them.
    head = {**_PROTOBUF, "Content-Length": str(len(_VALID)),
            "X-One": "a" * 40_000, "X-Two": "b" * 40_000}
    received, closed = _exchange(_port(http_url), _raw("POST /v1/traces", head, _VALID))
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b"longer than 65536 bytes" in received
    assert closed
    assert not ingest.seen
    head = {**_PROTOBUF, "Content-Length": str(len(_VALID)), "X-One": "a" * 40_000}
    received, _ = _exchange(_port(http_url), _raw("POST /v1/traces", head, _VALID), end=True)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    # A request line longer than the bound alone: 414, as http.server answered it.
    received, closed = _exchange(_port(http_url), _raw("POST /" + "a" * 70_000, {}, b""))
    assert received.startswith(b"HTTP/1.1 414 "), received[:200]
    assert closed


def test_http_client_trickling_its_head_is_disconnected_at_the_head_deadline(
    ingest, monkeypatch
):
    # A byte now and then passed each read's 60 s timeout, so a connection could send
    # header fields for as long as it liked, holding its thread and what it sent.
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_HEAD_SECONDS", 0.6)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/traces HTTP/1.1\r\nX-Slow: ")
            started = time.monotonic()
            closed_after = None
            for _ in range(50):  # bounded: 5 s at most
                time.sleep(0.1)
                try:
                    sock.sendall(b"a")
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None and closed_after < 3.0
        received, _ = _exchange(server.port, _raw("POST /v1/traces", {
            **_PROTOBUF, "Content-Length": str(len(_VALID))}, _VALID), end=True)
        assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    finally:
        server.stop()


def _connect_in_turn(server: HttpServer, n: int) -> list[socket.socket]:
    """*n* connections to *server* that send nothing, each opened once the one before
    was accepted (so that they became idle in that order)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            accepted = len(server._server._connections) + 1
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            wait_for(lambda n=accepted: len(server._server._connections) == n, timeout=10,
                     what="the connection to be accepted")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _still_open(sock: socket.socket, wait: float = 0.3) -> bool:
    """Whether *sock*'s connection is still open, nothing sent on it (for *wait* s)."""
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except ConnectionResetError:
        pass
    return False


def test_http_connection_beyond_the_bound_takes_the_place_of_the_one_idle_longest(
    ingest, monkeypatch
):
    # Connections that sent nothing held every place for the head's time (60 s): a
    # real export got 503 until they were closed, and again as soon as they were
    # opened again.
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 3)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    silent: list[socket.socket] = []
    try:
        silent = _connect_in_turn(server, 3)
        began = time.monotonic()
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200 and len(ingest.seen) == 1
        assert time.monotonic() - began < 5.0  # not the head's 60 s
        assert _closed_by_server(silent[0])  # the one idle longest, alone
        assert _still_open(silent[1]) and _still_open(silent[2])
    finally:
        for sock in silent:
            sock.close()
        server.stop(0)


def test_http_connections_beyond_the_bound_all_handling_requests_get_503(
    ingest, monkeypatch
):
    # One thread per connection, unbounded: each also held up to 6 MB of header fields.
    # A connection handling a request is never closed for a new one.
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 2)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    handling: list[socket.socket] = []
    try:
        for _ in range(2):  # each reads a body that has not arrived yet
            handling.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            handling[-1].sendall(_post_request()[:-len(_VALID)])
        wait_for(lambda: _handling(server) == 2, timeout=10, what="the two requests")
        received, closed = _exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 503 "), received[:200]
        assert b"\r\nRetry-After: 1\r\n" in received and closed
        assert _still_open(handling[0]) and _still_open(handling[1])
        handling[0].settimeout(5)
        handling[0].sendall(_VALID)  # its request is served whole
        assert handling[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        assert len(ingest.seen) == 1
    finally:
        for sock in handling:
            sock.close()
        server.stop(0)


def test_http_kept_alive_connection_idle_after_its_answer_is_closed_for_a_new_one(
    ingest, monkeypatch
):
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 2)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    silent: list[socket.socket] = []
    try:
        kept.request("POST", "/v1/traces", body=_VALID, headers=_PROTOBUF)
        response = kept.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Connection") != "close"
        wait_for(lambda: _handling(server) == 0, timeout=10, what="the answered request")
        silent = _connect_in_turn(server, 1)  # idle since after the answer
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200 and len(ingest.seen) == 2
        assert kept.sock is not None
        kept.sock.settimeout(2)
        assert kept.sock.recv(65536) == b""  # closed, between requests: nothing sent
        assert _still_open(silent[0])
    finally:
        kept.close()
        for sock in silent:
            sock.close()
        server.stop(0)


def test_http_connection_idle_counts_from_its_last_answer_not_its_opening(
    ingest, monkeypatch
):
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 2)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    connections: list[socket.socket] = []
    try:
        connections = _connect_in_turn(server, 2)
        answered, silent = connections
        answered.sendall(_post_request())  # opened first, answered since the other opened
        assert answered.recv(65536).startswith(b"HTTP/1.1 200 ")
        wait_for(lambda: _handling(server) == 0, timeout=10, what="the answered request")
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200 and len(ingest.seen) == 2
        assert _closed_by_server(silent)
        assert _still_open(answered)
    finally:
        for sock in connections:
            sock.close()
        server.stop(0)


def test_http_request_whose_line_arrives_as_its_connection_is_closed_is_not_served(
    ingest, monkeypatch
):
    # Its head read, but the connection not yet marked as handling a request when it
    # was chosen as the one idle longest: it is closed unanswered (a client retries
    # it), never served, nor ingested, on a socket already shut down.
    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 1)
    begin = otlp_server._BoundedServer.begin_request
    reached, go = threading.Event(), threading.Event()

    def late_begin(self, request):  # the first request head only: held before its mark
        if not reached.is_set():
            reached.set()
            go.wait(10)
        return begin(self, request)

    monkeypatch.setattr(otlp_server._BoundedServer, "begin_request", late_begin)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    late = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    answers: list[int] = []
    newcomer = threading.Thread(target=lambda: answers.append(_post(
        f"http://127.0.0.1:{server.port}/v1/traces", _VALID, "application/x-protobuf")[0]),
        daemon=True)
    try:
        late.sendall(_post_request())
        assert reached.wait(10)
        newcomer.start()
        wait_for(lambda: not server._server._connections, timeout=10,
                 what="the connection to be closed for the new one")
        go.set()
        newcomer.join(10)
        assert answers == [200]
        assert _closed_by_server(late)  # and nothing was sent on it
        assert len(ingest.seen) == 1  # the new connection's request alone
    finally:
        go.set()
        late.close()
        if newcomer.is_alive():
            newcomer.join(10)
        server.stop(0)


_PARTIAL_HEADS = {
    "request line": b"POST /v1/traces HTTP/1.1\r\n",
    "request line and fields": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/x-protobuf\r\n",
}


def _count_head_reads(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released as each read of a request head's line begins (patched before the
    connections open, so that none is missed)."""
    import spanproof.exporter.otlp_server as otlp_server

    reads = threading.Semaphore(0)
    readline = otlp_server._HeadStream.readline

    def counted(self, limit=-1):
        reads.release()
        return readline(self, limit)

    monkeypatch.setattr(otlp_server._HeadStream, "readline", counted)
    return reads


def _send_partial_heads(
    reads: threading.Semaphore, sockets: list[socket.socket], head: bytes
) -> None:
    """Send *head* (a head without its blank line) on each of *sockets*, and wait until
    the server read all of it on each and waits for more: each line's read, and one
    more begun."""
    for sock in sockets:
        sock.sendall(head)
    for _ in range(len(sockets) * (head.count(b"\n") + 1)):
        assert reads.acquire(timeout=10), "the server did not read the heads"


@pytest.mark.parametrize("head", list(_PARTIAL_HEADS.values()), ids=list(_PARTIAL_HEADS))
def test_http_connections_that_sent_part_of_a_head_give_their_place_to_a_new_one(
    ingest, monkeypatch, head
):
    # A connection counted as handling a request from its request line: 128 that
    # sent one (with some header fields, or none) and went silent got every real
    # export a 503 for the head's 60 s.  It is idle until its whole head arrives.
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 3)
    reads = _count_head_reads(monkeypatch)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    partial: list[socket.socket] = []
    try:
        partial = _connect_in_turn(server, 3)
        _send_partial_heads(reads, partial, head)
        assert _handling(server) == 0
        began = time.monotonic()
        status, _, _ = _post(f"http://127.0.0.1:{server.port}/v1/traces", _VALID,
                             "application/x-protobuf")
        assert status == 200 and len(ingest.seen) == 1
        assert time.monotonic() - began < 5.0  # not the head's 60 s
        assert _closed_by_server(partial[0])  # the one idle longest, alone, unanswered
        assert _still_open(partial[1]) and _still_open(partial[2])
    finally:
        for sock in partial:
            sock.close()
        server.stop(0)


# -- HttpServer.stop: connections kept open -------------------------------------------

def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed *sock*'s connection (within 2 s)."""
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _post_request() -> bytes:
    return _raw("POST /v1/traces", {**_PROTOBUF, "Content-Length": str(len(_VALID))}, _VALID)


def test_http_stop_closes_a_kept_alive_connection_and_ingests_nothing_more(ingest):
    # stop() ended the accept loop only: a connection a client kept open had its next
    # requests served, and ingested, after it.
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("POST", "/v1/traces", body=_VALID, headers=_PROTOBUF)
        response = connection.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Connection") != "close"
        assert len(ingest.seen) == 1
        server.stop()
        with pytest.raises(ConnectionError):  # a reset, a broken pipe, no answer
            connection.request("POST", "/v1/traces", body=_VALID, headers=_PROTOBUF)
            connection.getresponse().read()
        assert len(ingest.seen) == 1
    finally:
        connection.close()
        server.stop()


def _handling(server: HttpServer) -> int:
    """The connections of *server* handling a request now."""
    return sum(server._server._connections.values())


def test_http_stop_returns_within_its_grace_despite_idle_and_trickling_clients(
    ingest, monkeypatch
):
    # A client that held its connection open, or sent its body a byte at a time,
    # kept being served after stop() returned (up to the 60 s idle and 120 s body
    # deadlines).
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_STOP_GRACE", 1.0)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    trickling = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    done = threading.Event()

    def trickle() -> None:
        for byte in _VALID[10:]:  # bounded: ~50 s at most, ended by the server first
            if done.wait(0.1):
                return
            try:
                trickling.sendall(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    try:
        idle.sendall(_post_request())
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        # The answer can arrive before its connection is marked idle: wait for that,
        # or the count below could be the idle connection's, the trickled request not
        # begun yet (then closed at once as idle, and stop() returned early).
        wait_for(lambda: _handling(server) == 0, timeout=10, what="the idle connection")
        trickling.sendall(_post_request()[:-len(_VALID) + 10])
        wait_for(lambda: _handling(server) == 1, timeout=10, what="the trickled request")
        sender.start()
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
        assert 0.9 <= took < 1.0 + 1.5, took  # the request had its grace, no more
        assert _closed_by_server(idle)
        assert _closed_by_server(trickling)
        assert len(ingest.seen) == 1  # the idle client's request only
    finally:
        done.set()
        if sender.is_alive():
            sender.join(5)
        idle.close()
        trickling.close()
        server.stop(0)


def test_http_stop_closes_a_connection_still_sending_its_head_at_once(ingest, monkeypatch):
    # Its request is not read yet: there is nothing to let finish, so stop() does
    # not wait the grace for it (it did, counted as handling a request from its
    # request line), and it is closed unanswered (a client retries it).
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_STOP_GRACE", 3.0)
    reads = _count_head_reads(monkeypatch)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        _send_partial_heads(reads, [sock], _PARTIAL_HEADS["request line"])
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.5  # not the 3 s grace
        assert _closed_by_server(sock)  # and nothing was sent on it
        assert not ingest.seen
    finally:
        sock.close()
        server.stop(0)


def test_http_request_in_flight_at_stop_is_answered_then_closed():
    held = _HeldIngest()
    server = HttpServer("127.0.0.1:0", held)
    server.start()
    stopper = threading.Thread(target=server.stop, daemon=True)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(_post_request())
            wait_for(lambda: held.entered == 1, timeout=10, what="the request to be ingested")
            stopper.start()

            def refused() -> bool:  # stop() has begun: the listening socket is closed
                try:
                    socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                except OSError:
                    return True
                return False

            wait_for(refused, timeout=10, what="the server to stop listening")
            held.release.set()
            received = b""
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received[:200]
        assert b"\r\nConnection: close\r\n" in received
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        held.release.set()
        if stopper.is_alive():
            stopper.join(10)
        server.stop(0)


def test_http_server_waits_for_connections_without_waking_and_stops_at_once(
    ingest, monkeypatch: pytest.MonkeyPatch
):
    # socketserver's loop woke every 0.5 s to look for a stop, and each stop waited
    # for that wake-up: the serving loop now waits with no timeout, and stop() wakes it.
    from spanproof.exporter import otlp_server

    waits: list[float | None] = []

    class Recording(otlp_server.selectors.DefaultSelector):
        def select(self, timeout=None):
            waits.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(otlp_server.selectors, "DefaultSelector", Recording)
    server = HttpServer("127.0.0.1:0", ingest)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/traces"
        status, _, _ = _post(url, _request(1).SerializeToString(), "application/x-protobuf")
        assert status == 200
    finally:
        server.stop()
    assert not server._thread.is_alive()
    assert waits and set(waits) == {None}, waits


def _status_answer(received: bytes) -> tuple[int, status_pb2.Status]:
    """The HTTP status and the google.rpc.Status body of a whole answer."""
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert fields.get(b"Content-Type") == b"application/x-protobuf", received[:300]
    length = int(fields[b"Content-Length"])
    return int(lines[0].split()[1]), status_pb2.Status.FromString(body[:length])


@pytest.mark.parametrize(("request_bytes", "http_code", "grpc_code", "said"), [
    (b"PUT /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 501, 12,
     "Unsupported method ('PUT')"),
    (b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, 3, "longer than"),
    (_raw("POST /v1/traces", {"X-One": "a" * 40_000, "X-Two": "b" * 40_000}, b""), 431, 3,
     "longer than 65536 bytes"),
], ids=["method", "request-line", "head"])
def test_http_errors_the_parser_answers_carry_a_status(
    http_url, request_bytes, http_code, grpc_code, said
):
    # OTLP/HTTP: every 4xx and 5xx body is a google.rpc.Status; these were the
    # standard library's HTML pages.
    received, closed = _exchange(_port(http_url), request_bytes)
    code, status = _status_answer(received)
    assert (code, status.code) == (http_code, grpc_code)
    assert said in status.message
    assert closed


def test_the_busy_answer_carries_a_status():
    from spanproof.exporter.otlp_server import _BUSY_CONNECTION

    code, status = _status_answer(_BUSY_CONNECTION)
    assert (code, status.code) == (503, 14)  # UNAVAILABLE: retried
    assert status.message == "busy: 128 connections are handling requests"
    assert b"\r\nRetry-After: 1\r\n" in _BUSY_CONNECTION
