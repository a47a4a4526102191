"""The receiver's servers over TLS and mutual TLS: a sender without a certificate the
client CA issued cannot have spans signed (nor, without TLS, send anything)."""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from processes import wait_for

from spanproof.exporter._cli import _server_tls, _transports
from spanproof.exporter.otlp_server import (
    GrpcServer,
    HttpServer,
    IngestResult,
    ServerTLS,
)
from spanproof.verifier._cli import UsageError

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


@dataclass
class Pki:
    """PEM files: a CA, the server's certificate for 127.0.0.1 and a client's, both
    issued by the CA, and a client certificate issued by another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_cert = _certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    ca, _ = _write(directory, "ca", ca_cert, ca_key)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("server", "client",
                                                                       "rogue")}
    server = _write(directory, "server", _certificate(
        "receiver", keys["server"], "test CA", ca_key, ca=False, server=True), keys["server"])
    client = _write(directory, "client", _certificate(
        "collector", keys["client"], "test CA", ca_key, ca=False), keys["client"])
    rogue = _write(directory, "rogue", _certificate(
        "someone", keys["rogue"], "other CA", rogue_ca_key, ca=False), keys["rogue"])
    return Pki(ca, *server, *client, *rogue)


class _Ingest:
    """What reaches the receiver, and the two checks ``_transports`` wires."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, resource_spans: Any) -> IngestResult:
        self.seen.extend(resource_spans)
        return IngestResult()

    def not_serving(self) -> str | None:
        return None

    def check_accepting(self) -> None:
        return None


def _request() -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = TRACE, b"\x01" * 8, "chat"
    return request


@pytest.fixture
def served(pki: Pki) -> Iterator[tuple[int, int, _Ingest]]:
    """The receiver's two servers as `spanproof receiver --tls-cert --tls-key
    --tls-client-ca` makes them: (gRPC port, HTTP port, what reached ingest)."""
    ingest = _Ingest()
    tls = _server_tls(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    grpc_server, http_server = _transports(ingest, "127.0.0.1:0", "127.0.0.1:0",  # type: ignore[arg-type]
                                           1 << 20, tls)
    grpc_server.start()
    http_server.start()
    yield grpc_server.port, http_server.port, ingest
    grpc_server.stop(0)
    http_server.stop()


def _grpc_export(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    address = f"127.0.0.1:{port}"
    channel = (grpc.insecure_channel(address) if credentials is None
               else grpc.secure_channel(address, credentials))
    with channel:
        return trace_service_pb2_grpc.TraceServiceStub(channel).Export(_request(), timeout=10)


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _https_post(port: int, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("POST", "/v1/traces", body=_request().SerializeToString(),
                           headers={"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_grpc_with_a_client_certificate_from_the_ca_is_served(
    pki: Pki, served: tuple[int, int, _Ingest]
) -> None:
    port, _, ingest = served
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes())
    _grpc_export(port, credentials)
    assert len(ingest.seen) == 1


@pytest.mark.parametrize("client", ["no certificate", "another CA's", "plaintext"])
def test_grpc_without_a_certificate_from_the_ca_sends_nothing(
    pki: Pki, served: tuple[int, int, _Ingest], client: str
) -> None:
    port, _, ingest = served
    credentials: grpc.ChannelCredentials | None = None
    if client == "no certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    elif client == "another CA's":
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(), private_key=pki.rogue_key.read_bytes(),
            certificate_chain=pki.rogue_cert.read_bytes())
    with pytest.raises(grpc.RpcError) as error:
        _grpc_export(port, credentials)
    assert error.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ingest.seen == []


def test_https_with_a_client_certificate_from_the_ca_is_served(
    pki: Pki, served: tuple[int, int, _Ingest]
) -> None:
    _, port, ingest = served
    context = _client_context(pki, pki.client_cert, pki.client_key)
    assert _https_post(port, context) == 200
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    connection.request("GET", "/healthz")
    assert connection.getresponse().read() == b"SERVING\n"
    connection.close()
    assert len(ingest.seen) == 1


@pytest.mark.parametrize("client", ["no certificate", "another CA's"])
def test_https_without_a_certificate_from_the_ca_sends_nothing(
    pki: Pki, served: tuple[int, int, _Ingest], client: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, port, ingest = served
    cert, key = (None, None) if client == "no certificate" else (pki.rogue_cert, pki.rogue_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_post(port, _client_context(pki, cert, key))
    assert ingest.seen == []
    assert "Traceback" not in capfd.readouterr().err  # a refused handshake is no error


def test_plain_http_to_the_tls_port_is_not_served(
    served: tuple[int, int, _Ingest], capfd: pytest.CaptureFixture[str]
) -> None:
    _, port, ingest = served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.request("POST", "/v1/traces", body=_request().SerializeToString(),
                           headers={"Content-Type": "application/x-protobuf"})
        connection.getresponse().read()
    connection.close()
    assert ingest.seen == []
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.timeout(20)
@pytest.mark.parametrize("role", ["certificate", "key", "client CA"])
def test_a_tls_file_that_is_a_named_pipe_is_refused_without_blocking(
    pki: Pki, tmp_path: Path, role: str
) -> None:
    # TLS reads its files by path: a named pipe nobody writes would block the start.
    pipe = tmp_path / "pipe.pem"
    os.mkfifo(pipe)
    files = {"certificate": str(pki.server_cert), "key": str(pki.server_key),
             "client CA": str(pki.ca), role: str(pipe)}
    tls = ServerTLS(files["certificate"], files["key"], files["client CA"])
    with pytest.raises(ValueError, match=f"TLS {role} .*pipe.pem: cannot be used "
                                         "\\(not a regular file \\(a named pipe\\)\\)"):
        GrpcServer("127.0.0.1:0", _Ingest(), tls=tls)


_READ_TLS_IN_A_TERMINAL = """
import os, sys
os.setsid()
os.close(os.open(sys.argv[1], os.O_RDWR))  # the pseudo-terminal: now this one's terminal
from spanproof.exporter.otlp_server import ServerTLS
try:
    ServerTLS(sys.argv[2], sys.argv[3]).ssl_context()
except ValueError as e:
    print(e)
"""


def test_an_encrypted_tls_key_is_refused_by_name_without_asking_for_a_passphrase(
    pki: Pki, tmp_path: Path
) -> None:
    # OpenSSL asked for the passphrase on the receiver's terminal and waited there,
    # at start and at a reload (on the thread that accepts connections).
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    controller, terminal = os.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _READ_TLS_IN_A_TERMINAL, os.ttyname(terminal),
             str(pki.server_cert), str(encrypted)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail("waited for a passphrase on the terminal")
        os.set_blocking(controller, False)
        try:
            shown = os.read(controller, 4096)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(controller)
        os.close(terminal)
    assert b"pass phrase" not in shown
    assert out.decode() == (f"TLS key {encrypted} is encrypted: give the key unencrypted "
                            "(no passphrase is asked for)\n")


def test_tls_without_a_client_ca_serves_any_tls_client(pki: Pki) -> None:
    ingest = _Ingest()
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key))
    grpc_server = GrpcServer("127.0.0.1:0", ingest, tls=tls)
    http_server = HttpServer("127.0.0.1:0", ingest, tls=tls)
    grpc_server.start()
    http_server.start()
    try:
        _grpc_export(grpc_server.port,
                     grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes()))
        assert _https_post(http_server.port, _client_context(pki, None, None)) == 200
        with pytest.raises(grpc.RpcError):
            _grpc_export(grpc_server.port, None)  # TLS only
    finally:
        grpc_server.stop(0)
        http_server.stop()
    assert len(ingest.seen) == 2


def test_tls_flags_that_do_not_go_together_or_cannot_be_used_are_usage_errors(
    pki: Pki, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="--tls-cert and --tls-key go together"):
        _server_tls(str(pki.server_cert), None, None)
    with pytest.raises(UsageError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        _server_tls(None, None, str(pki.ca))
    with pytest.raises(UsageError, match=r"TLS certificate .*server\.pem and key .*client\.key "
                                         "cannot be used"):
        _server_tls(str(pki.server_cert), str(pki.client_key), None)  # not its key
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(UsageError, match=rf"TLS client CA {missing} cannot be used"):
        _server_tls(str(pki.server_cert), str(pki.server_key), missing)
    assert _server_tls(None, None, None) is None


def test_spanproof_receiver_with_mutual_tls_certifies_only_what_a_certified_sender_sends(
    pki: Pki, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    from receiver_support import ReceiverProcess, otlp_span, trust_root, verified, write_key

    out = str(tmp_path / "out")
    key_file, _ = write_key(str(tmp_path))
    receiver = ReceiverProcess(out, key_file, "--tls-cert", str(pki.server_cert), "--tls-key",
                               str(pki.server_key), "--tls-client-ca", str(pki.ca),
                               "--seal-grace-ms", "0")
    try:
        assert "tls          on, client certificates required\n" in receiver.lines
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(), private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes())
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.resource_spans.add().scope_spans.add().spans.append(
            otlp_span("0af7651916cd43dd8448eb211c80319c", 1))
        with grpc.secure_channel(receiver.grpc, credentials) as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
        with grpc.insecure_channel(receiver.grpc) as channel, pytest.raises(grpc.RpcError):
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    finally:
        assert receiver.stop(signal.SIGTERM) == 0, receiver.log()
    (report,) = verified(out, trust_root(str(tmp_path)))
    assert report.statement is not None and report.statement.record_count == 1
    usage = subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", "receiver", "--tls-cert",
         str(pki.server_cert)], capture_output=True, text=True, timeout=60, check=False)
    assert (usage.returncode, usage.stderr.strip()) == (
        2, "spanproof: error: --tls-cert and --tls-key go together")


def _https_server(pki: Pki) -> HttpServer:
    """An OTLP/HTTP server over TLS (no client CA), started."""
    server = HttpServer("127.0.0.1:0", _Ingest(),
                        tls=ServerTLS(str(pki.server_cert), str(pki.server_key)))
    server.start()
    return server


def _accepted(server: HttpServer) -> int:
    """The connections *server* holds now."""
    return len(server._server._connections)


def test_tls_connections_beyond_the_bound_are_closed_without_a_handshake(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The busy answer over TLS would need a handshake on the accepting thread, which
    # a client that never finishes one could stall for every other connection.
    import socket
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 1)
    server = _https_server(pki)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        # The one place is held by a request being handled: its body never arrives.
        held = _client_context(pki, None, None).wrap_socket(raw, server_hostname="127.0.0.1")
        held.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n")
        wait_for(lambda: any(server._server._connections.values()), timeout=10,
                 what="the request to be handled")
        began = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                  for _ in range(3)]  # none of them ever starts a handshake
        for sock in silent:
            assert sock.recv(1) == b""  # closed at once, unanswered
            sock.close()
        assert time.monotonic() - began < 2.0  # not a second each on the accepting thread
    finally:
        raw.close()
        server.stop(0)


def test_a_new_https_connection_takes_the_place_of_one_that_never_sent_its_client_hello(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connections that never began their handshake held every place for the
    # handshake's time: a real export was closed unanswered until they were closed.
    import socket
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 2)
    monkeypatch.setattr(otlp_server, "HANDSHAKE_SECONDS", 30.0)  # not what frees a place
    server = _https_server(pki)
    silent: list[socket.socket] = []
    try:
        for accepted in (1, 2):  # in turn: the first is idle longest
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            wait_for(lambda n=accepted: _accepted(server) == n, timeout=10,
                     what="the connection to be accepted")
        began = time.monotonic()
        assert _https_post(server.port, _client_context(pki, None, None)) == 200
        assert time.monotonic() - began < 5.0
        try:
            assert silent[0].recv(1) == b""  # closed for the new one
        except ConnectionResetError:
            pass
        silent[1].settimeout(0.3)
        with pytest.raises(TimeoutError):  # still waiting for its handshake
            silent[1].recv(1)
    finally:
        for sock in silent:
            sock.close()
        server.stop(0)


def test_a_tls_connection_s_handshake_and_first_head_share_one_deadline(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each had its own, so a client could hold a connection for twice the head's time.
    import socket
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_HEAD_SECONDS", 2.0)
    server = _https_server(pki)
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        began = time.monotonic()
        time.sleep(1.5)  # a slow client: the handshake starts late
        client = _client_context(pki, None, None).wrap_socket(raw, server_hostname="127.0.0.1")
        client.sendall(b"GET /healthz HTTP/1.1\r\n")  # and the head never ends
        try:
            while client.recv(4096):
                pass
        except (ssl.SSLError, ConnectionError):
            pass
        held = time.monotonic() - began
        client.close()
    finally:
        server.stop()
    assert 1.5 < held < 3.0  # two seconds from the connection, not from the handshake


def _client_hello() -> bytes:
    """The bytes a TLS client sends first (its ClientHello)."""
    outgoing = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing,
                                                   server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("stalling", ["silent", "a byte at a time"])
def test_stalled_tls_handshakes_hold_the_https_connections_only_for_the_handshake_bound(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, stalling: str
) -> None:
    # A handshake had the head's time (60 s), each read of it only: 128 connections
    # that never sent a ClientHello kept every real request out for a minute (measured:
    # served 59.9 s after them), and one sending its ClientHello a byte at a time held
    # its place for as long as it liked.
    import socket
    import threading
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HTTP_CONNECTIONS_AT_ONCE", 2)
    monkeypatch.setattr(otlp_server, "HTTP_HEAD_SECONDS", 30.0)
    monkeypatch.setattr(otlp_server, "HANDSHAKE_SECONDS", 1.0)
    server = _https_server(pki)
    hello, done = _client_hello(), threading.Event()
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
               for _ in range(2)]

    def trickle() -> None:
        for byte in hello:  # ~1 byte per 0.1 s each: far beyond the bound in all
            for sock in stalled:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
            if done.wait(0.1):
                return

    sender = threading.Thread(target=trickle, daemon=True)
    served_after = None
    try:
        began = time.monotonic()
        if stalling != "silent":
            sender.start()
        while served_after is None and time.monotonic() - began < 10.0:
            try:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", server.port, timeout=10, context=_client_context(pki, None, None))
                connection.request("GET", "/healthz")
                assert connection.getresponse().read() == b"SERVING\n"
                served_after = time.monotonic() - began
                connection.close()
            except (ssl.SSLError, ConnectionError):  # no place for it: closed unanswered
                time.sleep(0.05)
        assert served_after is not None and served_after < 3.0
        # The first was closed for the new connection (it was idle longest), the other
        # at the handshake bound: the head's 30 s is past this read's timeout.
        for sock in stalled:
            try:
                assert sock.recv(1) == b""  # the server closed it
            except ConnectionResetError:
                pass
    finally:
        done.set()
        for sock in stalled:
            sock.close()
        if sender.is_alive():
            sender.join(5)
        server.stop()


# -- certificates read again when their files change -------------------------------


def _issue_server_certificate(directory: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """A CA named *ca_name* and a server certificate for 127.0.0.1 it issued, written
    to *directory*: (CA file, certificate file, key file)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca, _ = _write(directory, "ca", _certificate(ca_name, ca_key, ca_name, ca_key, ca=True),
                   ca_key)
    cert, key_file = _write(directory, "server", _certificate(
        "receiver", key, ca_name, ca_key, ca=False, server=True), key)
    return ca, cert, key_file


def _served_by(grpc_port: int, http_port: int, ca: Path) -> tuple[bool, bool]:
    """Whether a client trusting only *ca* completes a request over gRPC and HTTPS."""
    try:
        _grpc_export(grpc_port, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
        over_grpc = True
    except grpc.RpcError:
        over_grpc = False
    try:
        over_http = _https_post(http_port, ssl.create_default_context(cafile=str(ca))) == 200
    except ssl.SSLError:
        over_http = False
    return over_grpc, over_http


def _replace(source: Path, target: Path) -> None:
    """Replace *target* by a copy of *source*, as a renewal does (a new file renamed in)."""
    staged = target.with_suffix(".new")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


@pytest.fixture
def renewable(tmp_path: Path) -> Iterator[tuple[ServerTLS, Path, Path, Path]]:
    """TLS settings whose files are looked at at every connection, with a
    certificate the first CA issued: (the settings, the first CA, a second CA, the
    directory of a certificate and key the second CA issued)."""
    first_ca, cert, key = _issue_server_certificate(tmp_path / "first", "first CA")
    second_ca, _, _ = _issue_server_certificate(tmp_path / "second", "second CA")
    tls = ServerTLS(str(cert), str(key), reload_interval=0)
    yield tls, first_ca, second_ca, tmp_path / "second"


def _start(tls: ServerTLS) -> tuple[GrpcServer, HttpServer]:
    grpc_server = GrpcServer("127.0.0.1:0", _Ingest(), tls=tls)
    http_server = HttpServer("127.0.0.1:0", _Ingest(), tls=tls)
    grpc_server.start()
    http_server.start()
    return grpc_server, http_server


def test_a_renewed_certificate_is_served_without_a_restart(
    renewable: tuple[ServerTLS, Path, Path, Path]
) -> None:
    tls, first_ca, second_ca, second = renewable
    grpc_server, http_server = _start(tls)
    try:
        ports = (grpc_server.port, http_server.port)
        assert _served_by(*ports, first_ca) == (True, True)
        assert _served_by(*ports, second_ca) == (False, False)
        _replace(second / "server.key", Path(tls.key_file))
        _replace(second / "server.pem", Path(tls.cert_file))
        assert _served_by(*ports, second_ca) == (True, True)
        assert _served_by(*ports, first_ca) == (False, False)
    finally:
        grpc_server.stop(0)
        http_server.stop()


def test_a_half_renewed_pair_keeps_the_previous_certificate_until_it_is_whole(
    renewable: tuple[ServerTLS, Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tls, first_ca, second_ca, second = renewable
    grpc_server, http_server = _start(tls)
    try:
        ports = (grpc_server.port, http_server.port)
        with caplog.at_level(logging.ERROR, logger="spanproof.exporter.otlp_server"):
            _replace(second / "server.pem", Path(tls.cert_file))  # its key not yet
            assert _served_by(*ports, first_ca) == (True, True)
        assert "the TLS files changed but cannot be used" in caplog.text
        _replace(second / "server.key", Path(tls.key_file))
        assert _served_by(*ports, second_ca) == (True, True)
    finally:
        grpc_server.stop(0)
        http_server.stop()


def test_certificate_files_are_looked_at_at_most_once_per_interval(
    renewable: tuple[ServerTLS, Path, Path, Path]
) -> None:
    tls, first_ca, _, second = renewable
    grpc_server, http_server = _start(dataclasses.replace(tls, reload_interval=3600))
    try:
        _replace(second / "server.key", Path(tls.key_file))
        _replace(second / "server.pem", Path(tls.cert_file))
        assert _served_by(grpc_server.port, http_server.port, first_ca) == (True, True)
    finally:
        grpc_server.stop(0)
        http_server.stop()


@pytest.mark.parametrize("interval", [-1, -0.5, float("nan"), "60", None, True])
def test_a_reload_interval_that_is_no_time_to_wait_is_refused(pki: Pki, interval: Any) -> None:
    # NaN and negative numbers looked at the files at every connection, silently.
    with pytest.raises(ValueError, match="reload_interval must be a number of seconds >= 0"):
        ServerTLS(str(pki.server_cert), str(pki.server_key), reload_interval=interval)


@pytest.mark.parametrize("interval", [0, 0.25, 3600, float("inf")])
def test_a_reload_interval_of_zero_or_more_seconds_is_taken(pki: Pki, interval: float) -> None:
    tls = ServerTLS(str(pki.server_cert), str(pki.server_key), reload_interval=interval)
    assert tls.reload_interval == interval


# -- a client CA that is not a root ---------------------------------------------------


@dataclass
class Intermediate:
    """A root CA, the intermediate CA it issued (its key beside it), the server's
    certificate (the root's) and a client certificate the intermediate issued."""

    root: Path
    root_key: ec.EllipticCurvePrivateKey
    intermediate: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def intermediate(tmp_path_factory: pytest.TempPathFactory) -> Intermediate:
    directory = tmp_path_factory.mktemp("intermediate")
    root_key, ca_key, server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root, _ = _write(directory, "root", _certificate("root CA", root_key, "root CA",
                                                     root_key, ca=True), root_key)
    ca, _ = _write(directory, "intermediate", _certificate(
        "collectors CA", ca_key, "root CA", root_key, ca=True), ca_key)
    server = _write(directory, "server", _certificate(
        "receiver", server_key, "root CA", root_key, ca=False, server=True), server_key)
    client = _write(directory, "client", _certificate(
        "collector", client_key, "collectors CA", ca_key, ca=False), client_key)
    return Intermediate(root, root_key, ca, *server, *client)


@pytest.fixture
def served_by_intermediate(
    intermediate: Intermediate,
) -> Iterator[tuple[int, int, _Ingest]]:
    """Both servers, their client CA file holding the intermediate CA alone:
    (gRPC port, HTTP port, what reached ingest)."""
    ingest = _Ingest()
    tls = ServerTLS(str(intermediate.server_cert), str(intermediate.server_key),
                    str(intermediate.intermediate))
    grpc_server = GrpcServer("127.0.0.1:0", ingest, tls=tls)
    http_server = HttpServer("127.0.0.1:0", ingest, tls=tls)
    grpc_server.start()
    http_server.start()
    yield grpc_server.port, http_server.port, ingest
    grpc_server.stop(0)
    http_server.stop()


def _sent_by(grpc_port: int, http_port: int, root: Path, cert: Path,
             key: Path) -> tuple[bool, bool]:
    """Whether a client holding *cert* completes a request over gRPC and HTTPS."""
    try:
        _grpc_export(grpc_port, grpc.ssl_channel_credentials(
            root_certificates=root.read_bytes(), private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes()))
        over_grpc = True
    except grpc.RpcError:
        over_grpc = False
    context = ssl.create_default_context(cafile=str(root))
    context.load_cert_chain(str(cert), str(key))
    try:
        over_http = _https_post(http_port, context) == 200
    except (ssl.SSLError, ConnectionError):
        over_http = False
    return over_grpc, over_http


def test_a_client_ca_that_is_an_intermediate_admits_the_certificates_it_issued(
    intermediate: Intermediate, served_by_intermediate: tuple[int, int, _Ingest]
) -> None:
    # A Collector's client_ca_file takes every CA certificate in it as a trust
    # anchor, and so did the gRPC port; the OTLP/HTTP port refused the same client
    # in the handshake ("unknown ca"), wanting the root above the intermediate.
    grpc_port, http_port, ingest = served_by_intermediate
    assert _sent_by(grpc_port, http_port, intermediate.root, intermediate.client_cert,
                    intermediate.client_key) == (True, True)
    assert len(ingest.seen) == 2


def test_a_client_ca_that_is_an_intermediate_refuses_the_root_s_other_clients(
    intermediate: Intermediate, served_by_intermediate: tuple[int, int, _Ingest],
    tmp_path: Path,
) -> None:
    # Trusting the intermediate is not trusting the root that issued it.
    grpc_port, http_port, ingest = served_by_intermediate
    key = ec.generate_private_key(ec.SECP256R1())
    cert, key_file = _write(tmp_path, "other", _certificate(
        "other sender", key, "root CA", intermediate.root_key, ca=False), key)
    assert _sent_by(grpc_port, http_port, intermediate.root, cert, key_file) == (
        False, False)
    assert ingest.seen == []


# -- why a client was refused ---------------------------------------------------------


def _client_certificate(
    directory: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, *,
    valid: tuple[float, float] = (-5, 60), usage: x509.ObjectIdentifier | None = None,
) -> tuple[Path, Path]:
    """A client certificate "test CA" issued, valid from/to *valid* minutes from now,
    with *usage* as its only extended key usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name("test CA")).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(minutes=valid[0]))
        .not_valid_after(now + datetime.timedelta(minutes=valid[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return _write(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


@pytest.mark.parametrize(("client", "reason"), [
    ("none", "no client certificate was presented"),
    ("another CA's", "client certificate did not verify: "),
    ("expired", "client certificate did not verify: certificate has expired"),
    ("not yet valid", "client certificate did not verify: certificate is not yet valid"),
    ("for servers only", "client certificate did not verify: unsuitable certificate purpose"),
])
def test_a_client_refused_for_its_certificate_over_https_is_logged_with_the_reason(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, client: str, reason: str,
) -> None:
    # Refused handshakes were logged at debug level only: an operator whose
    # Collector's certificate expired saw nothing over OTLP/HTTP, where the gRPC
    # port's log and a Collector's own name the reason.
    import time

    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca, _ = _write(tmp_path, "ca", _certificate("test CA", ca_key, "test CA", ca_key,
                                                ca=True), ca_key)
    cert: Path | None
    key: Path | None
    cert, key = {
        "none": (None, None),
        "another CA's": (pki.client_cert, pki.client_key),
        "expired": _client_certificate(tmp_path, "old", ca_key, valid=(-120, -60)),
        "not yet valid": _client_certificate(tmp_path, "new", ca_key, valid=(60, 120)),
        "for servers only": _client_certificate(tmp_path, "srv", ca_key,
                                                usage=ExtendedKeyUsageOID.SERVER_AUTH),
    }[client]
    ingest = _Ingest()
    server = HttpServer("127.0.0.1:0", ingest, tls=ServerTLS(
        str(pki.server_cert), str(pki.server_key), str(ca)))
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="spanproof.exporter.otlp_server"):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _https_post(server.port, _client_context(pki, cert, key))
            deadline = time.monotonic() + 5
            while "refused in the TLS handshake" not in caplog.text \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.stop()
    assert ingest.seen == []
    (record,) = [r for r in caplog.records if "refused in the TLS handshake" in r.message]
    assert record.levelno == logging.WARNING
    assert record.message.startswith("receiver: OTLP/HTTP client 127.0.0.1:")
    assert record.message.split(": ", 2)[2].startswith(reason)


def test_clients_refused_in_a_loop_over_https_are_logged_once_per_reason_with_a_count(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # Each refused handshake was a warning: a client retrying in a loop made a line
    # per attempt.  Now each reason's first is logged at once, the rest counted.
    import time

    server = HttpServer("127.0.0.1:0", _Ingest(), tls=ServerTLS(
        str(pki.server_cert), str(pki.server_key), str(pki.ca)))
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="spanproof.exporter.otlp_server"):
            for attempt in range(20):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    _https_post(server.port, _client_context(pki, None, None))
                if attempt == 10:  # another client, refused for another reason
                    with pytest.raises((ssl.SSLError, ConnectionError)):
                        _https_post(server.port, _client_context(pki, pki.rogue_cert,
                                                                 pki.rogue_key))
            deadline = time.monotonic() + 10
            while server._server._connections and time.monotonic() < deadline:
                time.sleep(0.05)  # their threads are logging (or counting) the refusals
            assert not server._server._connections
            server.stop()
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "refused in the TLS handshake" in
             r.getMessage()]
    assert len(lines) == 3
    assert lines[0].startswith("receiver: OTLP/HTTP client 127.0.0.1:")
    assert lines[0].endswith(" refused in the TLS handshake: no client certificate was "
                             "presented")
    assert "refused in the TLS handshake: client certificate did not verify: " in lines[1]
    assert lines[2] == ("spanproof: 19 more warning(s) that name OTLP/HTTP clients refused "
                        "in the TLS handshake (no client certificate was presented) were "
                        "held back")


def test_plaintext_or_a_dropped_connection_to_the_https_port_is_not_logged_as_refused(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a certificate's refusal is an operator's business: a port scan, or a
    # probe that opens the port and closes it, stays at debug level.
    import socket
    import time

    server = HttpServer("127.0.0.1:0", _Ingest(), tls=ServerTLS(
        str(pki.server_cert), str(pki.server_key), str(pki.ca)))
    server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="spanproof.exporter.otlp_server"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
                plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                plain.recv(1)
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            deadline = time.monotonic() + 5
            while caplog.text.count("ended:") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.stop()
    assert caplog.text.count("ended:") == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"],
                         ids=["nothing", "a ClientHello's first bytes"])
def test_a_grpc_tls_handshake_that_never_ends_is_closed_at_the_handshake_bound(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    # gRPC's own bound, unset, held such a connection (and its descriptor) for
    # 120 s, twice what an OTLP/HTTP connection's handshake has.
    import socket
    import time

    import spanproof.exporter.otlp_server as otlp_server

    monkeypatch.setattr(otlp_server, "HANDSHAKE_SECONDS", 1.0)
    server = GrpcServer("127.0.0.1:0", _Ingest(), tls=ServerTLS(
        str(pki.server_cert), str(pki.server_key), str(pki.ca)))
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            began = time.monotonic()
            client.sendall(sent)
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:
                pass
            held = time.monotonic() - began
    finally:
        server.stop(0)
    assert 0.5 < held < 5.0


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_before_1_2_is_refused_on_both_ports(
    pki: Pki, served: tuple[int, int, _Ingest], version: str
) -> None:
    # README: TLS 1.2 or later only.  The OTLP/HTTP port sets it; the gRPC port
    # has it from gRPC, which a newer gRPC could change unseen.
    import socket

    def handshake(port: int, offered: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(pki.ca))
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer it at all
        context.minimum_version = context.maximum_version = offered
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return str(tls.version())
            except (ssl.SSLError, ConnectionError) as e:
                if "NO_PROTOCOLS_AVAILABLE" in str(e) or "UNSUPPORTED_PROTOCOL" in str(e):
                    pytest.skip(f"this OpenSSL does not offer {version}")
                return "refused"

    grpc_port, http_port, ingest = served
    for port in (grpc_port, http_port):
        assert handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        assert handshake(port, getattr(ssl.TLSVersion, version)) == "refused"
    assert ingest.seen == []


@pytest.mark.parametrize("with_tls", [True, False], ids=["tls", "no-tls"])
def test_sighup_reads_the_tls_files_again_and_does_not_stop_the_receiver(
    tmp_path: Path, with_tls: bool
) -> None:
    # SIGHUP's default action killed the receiver at once, nothing sealed; a daemon
    # is expected to read its files again on it.  Here the renewed files are served at
    # the next connection, well inside the minute the receiver waits between looks.
    import signal

    from receiver_support import ReceiverProcess, write_key

    first_ca, cert, key = _issue_server_certificate(tmp_path / "first", "first CA")
    second_ca, _, _ = _issue_server_certificate(tmp_path / "second", "second CA")
    key_file, _ = write_key(str(tmp_path))
    flags = ["--tls-cert", str(cert), "--tls-key", str(key)] if with_tls else []
    receiver = ReceiverProcess(str(tmp_path / "out"), key_file, *flags)
    try:
        grpc_port, http_port = (int(a.rsplit(":", 1)[1]) for a in (receiver.grpc, receiver.http))
        if with_tls:
            assert _served_by(grpc_port, http_port, first_ca) == (True, True)
            _replace(tmp_path / "second" / "server.key", key)
            _replace(tmp_path / "second" / "server.pem", cert)
            assert _served_by(grpc_port, http_port, first_ca) == (True, True)  # the minute
        receiver.proc.send_signal(signal.SIGHUP)
        said = receiver._address("SIGHUP:")
        assert said == ("TLS" if with_tls else "no")
        assert receiver.proc.poll() is None
        if with_tls:
            assert _served_by(grpc_port, http_port, second_ca) == (True, True)
    finally:
        code = receiver.stop(signal.SIGTERM)
    assert code == 0, receiver.log()
    assert "receiver stopped: everything sealed\n" in receiver.lines
