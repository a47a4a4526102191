"""The submitter's HTTP transport (``spanproof.exporter._http.KeepAlivePost``): one
persistent connection per thread, a request retried once on a connection the
server closed while idle, proxies honoured through ``urllib``."""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from witness_helpers import free_port, make_bundle, trace_id, write_bundle

from spanproof.exporter._http import KeepAlivePost
from spanproof.exporter.keys import SigningKey
from spanproof.exporter.submit import WitnessSubmitter
from spanproof.verifier.bundle import BundleReader
from spanproof.verifier.receipt import Receipt, WitnessLeaf, receipt_path
from spanproof.verifier.records import digest_hex
from spanproof.verifier.statement import Statement

HEADERS = {"Content-Type": "application/octet-stream"}


@dataclass
class Seen:
    """What the stub server saw: connections accepted, and each request's line."""

    connections: int = 0
    requests: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    # Close each connection after this many answers without saying so (an idle
    # connection the server dropped); 0 never.
    drop_after: int = 0
    answer: bytes = b'{"ok":true}'
    # When set, send only this many bytes of the answer, then close.
    cut_after: int = 0
    # When set, what answers each request body instead of ``answer``.
    answer_for: Callable[[bytes], bytes] | None = None
    status: int = 201
    retry_after: str | None = None  # sent as Retry-After when set
    location: str | None = None  # sent as Location when set
    # When set, every request after the first is held this many seconds, then its
    # connection closed unanswered.
    hold_then_close: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.answered = 0
            with seen.lock:
                seen.connections += 1

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with seen.lock:
                seen.requests.append(self.requestline)
                seen.bodies.append(body)
            if seen.hold_then_close and len(seen.requests) > 1:
                time.sleep(seen.hold_then_close)
                self.close_connection = True
                return
            answer = seen.answer if seen.answer_for is None else seen.answer_for(body)
            self.send_response(seen.status)
            self.send_header("Content-Type", "application/json")
            if seen.retry_after is not None:
                self.send_header("Retry-After", seen.retry_after)
            if seen.location is not None:
                self.send_header("Location", seen.location)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if seen.cut_after:
                self.wfile.write(answer[: seen.cut_after])
                self.close_connection = True
                return
            self.wfile.write(answer)
            self.answered += 1
            if seen.drop_after and self.answered >= seen.drop_after:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[tuple[str, Seen]]:
    """A local HTTP/1.1 server that keeps connections open, counting them."""
    seen = Seen()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_requests_from_one_thread_share_one_connection(stub: tuple[str, Seen]) -> None:
    url, seen = stub
    post = KeepAlivePost(1 << 20)
    answers = [post(f"{url}/v1/submit", f"bundle {i}".encode(), HEADERS, 5.0) for i in range(5)]
    post.close()
    assert answers == [(201, b'{"ok":true}', None)] * 5
    assert seen.bodies == [f"bundle {i}".encode() for i in range(5)]
    assert seen.requests == ["POST /v1/submit HTTP/1.1"] * 5
    assert seen.connections == 1


def test_each_thread_has_its_own_connection(stub: tuple[str, Seen]) -> None:
    url, seen = stub
    post = KeepAlivePost(1 << 20)
    start = threading.Barrier(3)

    def send() -> None:
        start.wait(10)
        for _ in range(3):
            assert post(f"{url}/v1/submit", b"x", HEADERS, 5.0)[0] == 201

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    post.close()
    assert len(seen.requests) == 9
    assert seen.connections == 3


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_again(
    stub: tuple[str, Seen],
) -> None:
    url, seen = stub
    seen.drop_after = 1
    post = KeepAlivePost(1 << 20)
    answers = [post(f"{url}/v1/submit", f"bundle {i}".encode(), HEADERS, 5.0) for i in range(3)]
    post.close()
    assert [status for status, _, _ in answers] == [201, 201, 201]
    # Every request was answered once, each on a new connection after the drop.
    assert seen.bodies == [b"bundle 0", b"bundle 1", b"bundle 2"]
    assert seen.connections == 3


def test_an_answer_cut_at_the_limit_does_not_poison_the_connection(stub: tuple[str, Seen]) -> None:
    url, seen = stub
    seen.answer = b"y" * 1000
    post = KeepAlivePost(100)
    first = post(f"{url}/v1/submit", b"a", HEADERS, 5.0)
    second = post(f"{url}/v1/submit", b"b", HEADERS, 5.0)
    post.close()
    assert first == (201, b"y" * 100, None)
    assert second == (201, b"y" * 100, None)
    assert seen.bodies == [b"a", b"b"]


def test_an_answer_cut_short_by_the_server_raises_oserror_not_half_an_answer(
    stub: tuple[str, Seen],
) -> None:
    # Half a receipt came back as the answer with its 2xx; with witness keys pinned
    # the submitter took it for a receipt that does not verify and retired the
    # bundle, when the witness had only been restarted mid-answer.
    url, seen = stub
    seen.answer = b'{"mediaType":"application/vnd.spanproof.receipt.v1+json"}'
    seen.cut_after = 12
    post = KeepAlivePost(1 << 20)
    with pytest.raises(OSError, match="cut short"):
        post(f"{url}/v1/submit", b"a", HEADERS, 5.0)
    seen.cut_after = 0
    assert post(f"{url}/v1/submit", b"b", HEADERS, 5.0) == (201, seen.answer, None)
    post.close()


def test_a_request_sent_again_on_a_new_connection_keeps_its_first_deadline(
    stub: tuple[str, Seen],
) -> None:
    # A connection closed unanswered near the timeout was taken for one the server
    # had closed while idle, and the request sent again with a whole new timeout:
    # twice the timeout in all, for the delivery and for the exporter's shutdown.
    url, seen = stub
    seen.hold_then_close = 1.5
    post = KeepAlivePost(1 << 20)
    assert post(f"{url}/v1/submit", b"first", HEADERS, 2.0)[0] == 201
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no whole answer"):
        post(f"{url}/v1/submit", b"second", HEADERS, 2.0)
    assert time.monotonic() - start < 2.6
    assert seen.connections == 2  # sent again all the same: the close came first
    post.close()


@pytest.fixture
def trickler() -> Iterator[str]:
    """A local server that answers every request with a status line, then one
    header line every 0.1 s, for 20 s at most (or until the client hangs up)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(200):
                        if done.wait(0.1):
                            break
                        conn.sendall(b"X-Wait: 1\r\n")
                except OSError:
                    pass  # the client hung up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    done.set()
    thread.join(30)
    listener.close()


def test_an_answer_trickling_in_ends_at_the_timeout(trickler: str) -> None:
    # The timeout bounded each wait for bytes only: a witness (or a proxy) sending a
    # header line now and then held the delivery thread, and every submission after
    # it, for as long as it kept sending.
    post = KeepAlivePost(1 << 20)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        post(f"{trickler}/v1/submit", b"a", HEADERS, 0.5)
    assert time.monotonic() - start < 5.0
    post.close()


def test_an_unreachable_server_raises_oserror() -> None:
    post = KeepAlivePost(1 << 20)
    with pytest.raises(OSError):
        post(f"http://127.0.0.1:{free_port()}/v1/submit", b"x", HEADERS, 2.0)


@pytest.mark.parametrize("proxied", [False, True])
def test_an_answers_retry_after_is_handed_to_the_submitter(
    stub: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    url, seen = stub
    seen.status, seen.retry_after, seen.answer = 503, "7", b'{"error":"busy"}'
    if proxied:  # through urllib, which answers a 503 with an HTTPError
        monkeypatch.setenv("http_proxy", url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        url = "http://witness.example:8080"
    post = KeepAlivePost(1 << 20)
    assert post(f"{url}/v1/submit", b"x", HEADERS, 5.0) == (503, b'{"error":"busy"}', "7")
    seen.status, seen.retry_after = 201, None
    assert post(f"{url}/v1/submit", b"x", HEADERS, 5.0) == (201, b'{"error":"busy"}', None)
    post.close()


def test_a_configured_proxy_is_used(
    stub: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, seen = stub
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    post = KeepAlivePost(1 << 20)
    assert post("http://witness.example:8080/v1/submit", b"x", HEADERS, 5.0)[0] == 201
    # A request to a proxy names the whole URL.
    assert seen.requests == ["POST http://witness.example:8080/v1/submit HTTP/1.1"]


def test_a_redirect_through_a_proxy_is_not_followed(
    stub: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Followed, the POST became a GET of the new place, which a witness answers 405:
    # the submission was given up on (moved to failed/), where SPEC §12.11 retries a
    # 3xx as the witness being unavailable, as it is without a proxy.
    proxy, seen = stub
    seen.status, seen.location = 301, "http://witness-moved.example:8080/v1/submit"
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    post = KeepAlivePost(1 << 20)
    assert post("http://witness.example:8080/v1/submit", b"x", HEADERS, 5.0)[0] == 301
    assert seen.requests == ["POST http://witness.example:8080/v1/submit HTTP/1.1"]


def test_no_proxy_sends_directly(stub: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = stub
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    post = KeepAlivePost(1 << 20)
    assert post(f"{url}/v1/submit", b"x", HEADERS, 5.0)[0] == 201
    post.close()
    assert seen.requests == ["POST /v1/submit HTTP/1.1"]


def _receipt_shaped(bundle: bytes) -> bytes:
    """A well-formed receipt naming *bundle*'s statement (its proof and checkpoint are
    not real: no witness key is pinned to check them)."""
    envelope, _ = BundleReader(io.BytesIO(bundle)).read_header()
    statement = Statement.from_payload(envelope.payload)
    leaf = WitnessLeaf.from_statement(statement, digest_hex(envelope.payload), "ab" * 32)
    return Receipt("stub", 0, 1, (), b"stub\n1\n", leaf).to_bytes()


def test_the_submitter_delivers_every_bundle_over_one_connection(
    tmp_path: Path, stub: tuple[str, Seen],
) -> None:
    url, seen = stub
    seen.answer_for = _receipt_shaped
    key = SigningKey.from_seed(bytes(32))
    (tmp_path / "b").mkdir()
    paths = [write_bundle(tmp_path / "b", make_bundle(trace_id(i), key=key)) for i in range(6)]
    sub = WitnessSubmitter(url, tmp_path / "q", concurrency=1, batch_size=1, start=False)
    for path in paths:
        assert sub.submit(path)
    assert sub.process_due() is None
    sub.close()
    assert len(seen.requests) == 6
    assert seen.connections == 1
    for path in paths:
        assert Path(receipt_path(str(path))).read_bytes() == \
            _receipt_shaped(Path(path).read_bytes())


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "witness test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_file, key_file


@pytest.fixture
def tls_stub(tmp_path: Path) -> Iterator[tuple[str, Seen, Path]]:
    """The stub server behind TLS with a self-signed certificate for 127.0.0.1."""
    cert, key = _self_signed(tmp_path)
    seen = Seen()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", seen, cert
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_https_checks_the_witness_certificate(tls_stub: tuple[str, Seen, Path]) -> None:
    url, seen, _ = tls_stub
    post = KeepAlivePost(1 << 20)
    with pytest.raises(ssl.SSLCertVerificationError):  # an OSError: retried later
        post(f"{url}/v1/submit", b"x", HEADERS, 5.0)
    assert seen.requests == []


def test_https_to_a_trusted_witness_keeps_its_connection(
    tls_stub: tuple[str, Seen, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen, cert = tls_stub
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default trust store, here
    post = KeepAlivePost(1 << 20)
    answers = [post(f"{url}/v1/submit", f"b{i}".encode(), HEADERS, 5.0) for i in range(3)]
    post.close()
    assert [status for status, _, _ in answers] == [201] * 3
    assert seen.bodies == [b"b0", b"b1", b"b2"] and seen.connections == 1


def test_an_answer_cut_short_is_a_transport_error_not_a_malformed_one(
    stub: tuple[str, Seen],
) -> None:
    # http.client returns what arrived when the witness closes early; read as JSON,
    # half a proof was "not JSON", which the monitor now takes for a refusal.
    from spanproof.verifier.errors import TransportError
    from spanproof.witness.client import MalformedAnswer, WitnessClient

    url, seen = stub
    seen.answer = b'{"from":"3","to":"5","proof":[]}'
    seen.cut_after = 10
    with pytest.raises(TransportError, match="cut short") as cut:
        WitnessClient(url).request("POST", "/v1/submit", body=b"x")
    assert not isinstance(cut.value, MalformedAnswer)
