"""``WitnessClient``: a request and its whole answer take at most ``--timeout`` in
all.  The socket's timeout bounds each wait for bytes only, so a witness (or a proxy)
sending its answer a byte at a time held ``monitor`` and ``witness submit`` for as
long as it kept sending, and never let them report it unavailable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main
from spanproof.verifier.errors import TransportError
from spanproof.witness.client import WitnessClient

PIECES = 50
EVERY = 0.2  # seconds between pieces: 10 s in all, well within each wait's timeout

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


def _drip(conn: socket.socket, pieces: list[bytes], stop: threading.Event) -> None:
    with conn:
        try:
            conn.recv(65536)
            for piece in pieces:
                if stop.is_set():
                    return
                conn.sendall(piece)
                time.sleep(EVERY)
        except OSError:
            pass


@pytest.fixture(params=["header lines", "body"])
def slow_witness(request: pytest.FixtureRequest) -> Iterator[str]:
    """A server answering every request slowly: a header line at a time, or a body
    of declared length a byte at a time."""
    if request.param == "body":
        pieces = [HEAD + b"Content-Length: %d\r\n\r\n" % PIECES] + [b"x"] * PIECES
    else:
        pieces = [HEAD] + [b"X-Wait-%d: 1\r\n" % i for i in range(PIECES)] + [b"\r\n"]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # to see `stop` in time
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_drip, args=(conn, pieces, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    thread.join(5)


def test_a_witness_answering_a_byte_at_a_time_is_cut_at_the_timeout(slow_witness: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="gave no whole answer within 1 s"):
        WitnessClient(slow_witness, timeout=1).checkpoint()
    assert time.monotonic() - started < 4


def test_monitor_reports_a_witness_answering_a_byte_at_a_time_unavailable(
    slow_witness: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = tmp_path / "witness.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    started = time.monotonic()
    status = main(["monitor", "--url", slow_witness, "--state", str(tmp_path / "m.json"),
                   "--witness-key", str(pub), "--timeout", "1"])
    assert time.monotonic() - started < 4
    assert status == 3
    assert "gave no whole answer within 1 s" in capsys.readouterr().out
