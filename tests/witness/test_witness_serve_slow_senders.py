"""Slow senders cannot starve the witness: a request waits a bounded time for its turn
to have its body read (then 503 with ``Retry-After``), and a body read holds its turn
for a bounded time in all (then 408), however steadily it comes (SPEC §12.9).

Eight clients declaring 64 MiB bodies and sending 1 KiB every 0.1 s (above the 8 KiB/s
floor) held every turn for hours, and a genuine 1 KB submission waited as long."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from witness_helpers import ORIGIN, make_bundle, trace_id

from spanproof.exporter.keys import SigningKey
from spanproof.witness.client import WitnessClient

DECLARED = 64 * 1024 * 1024
CHUNK = b"x" * 1024
EVERY = 0.05  # 20 KiB/s: well above the 8 KiB/s floor, so only the total deadline ends it


class SlowSender:
    """A ``POST /v1/submit`` whose 64 MiB body comes 1 KiB at a time, until the
    witness answers (kept in ``answer``), *stop* is set, or 10 s have passed."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        self.answer = b""
        self.sent = 0
        self._port = port
        self._stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self._port), timeout=5) as sock:
            sock.sendall(b"POST /v1/submit HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n" % DECLARED)
            for _ in range(int(10 / EVERY)):  # bounded: 10 s at most
                readable, _, _ = select.select([sock], [], [], EVERY)
                if readable:
                    self.answer = sock.recv(4096)
                    return
                if self._stop.is_set():
                    return
                try:
                    sock.sendall(CHUNK)
                except OSError:
                    return
                self.sent += len(CHUNK)


@pytest.fixture
def witness(tmp_path: Path, witness_private: Any) -> Iterator[Any]:
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner
    from spanproof.witness.store import Store

    store = Store(str(tmp_path / "w.db"))
    yield Witness(store, CheckpointSigner(witness_private, ORIGIN))
    store.close()


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _holding(senders: list[SlowSender]) -> None:
    """Wait (bounded) until every sender is sending its body."""
    deadline = time.monotonic() + 5
    while not all(s.sent for s in senders):
        assert time.monotonic() < deadline, "the slow senders did not start"
        time.sleep(0.02)


def test_slow_senders_holding_every_turn_do_not_keep_a_submission_waiting(
    witness: Any, serve_witness: Any, stop: threading.Event, producer_key: SigningKey,
) -> None:
    srv = serve_witness(witness, requests_at_once=2, body_max_seconds=1.0)
    senders = [SlowSender(_port(srv.url), stop) for _ in range(2)]
    _holding(senders)
    der = producer_key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = make_bundle(trace_id(1), key=producer_key).data
    started = time.monotonic()
    # Before, this waited until the senders stopped: past the client's 8 s here.
    answer = WitnessClient(srv.url, timeout=8).submit(data, public_key_der=der)
    took = time.monotonic() - started
    assert answer.status == 201 and witness.size == 1
    assert took < 4, took  # the senders' 1 s in all, then verifying
    for sender in senders:
        sender.thread.join(5)
        # Still sending at 20 KiB/s when the witness gave up on them.
        assert sender.answer.startswith(b"HTTP/1.1 408 "), sender.answer[:200]
        assert b"1 s at most" in sender.answer


@pytest.mark.parametrize("path", ["/v1/submit", "/v1/submit-batch", "/v1/check"])
def test_a_turn_not_had_within_the_turn_wait_is_answered_503_with_retry_after(
    witness: Any, serve_witness: Any, stop: threading.Event, path: str,
) -> None:
    srv = serve_witness(witness, requests_at_once=1, turn_wait=0.5, body_max_seconds=5.0)
    sender = SlowSender(_port(srv.url), stop)
    _holding([sender])
    conn = http.client.HTTPConnection("127.0.0.1", _port(srv.url), timeout=4)
    try:
        started = time.monotonic()
        conn.request("POST", path, body=b'{"submissions": []}')
        resp = conn.getresponse()
        took = time.monotonic() - started
        assert resp.status == 503, resp.read()[:200]
        assert resp.getheader("Retry-After") == "1"
        assert json.loads(resp.read())["error"].startswith("busy: 1 request bodies")
    finally:
        conn.close()
    assert 0.4 < took < 3, took
    assert not sender.answer and witness.size == 0  # the turn's holder is still sending
