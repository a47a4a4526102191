"""``spanproof witness serve`` (and ``python -m spanproof.witness serve``) stops
cleanly on SIGTERM (exit 0) and SIGINT (130): uvicorn shuts down, and the store is
closed, so SQLite folds its write-ahead log into the database and removes it."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from witness_helpers import (
    ORIGIN,
    free_port,
    make_bundle,
    trace_id,
    wait_until_up,
    write_bundle,
    write_private_key,
)

from spanproof.exporter.keys import SigningKey
from spanproof.witness._cli import SHUTDOWN_SECONDS
from spanproof.witness.client import WitnessClient

COMMANDS = {
    "spanproof": [sys.executable, "-m", "spanproof.verifier", "witness"],
    "module": [sys.executable, "-m", "spanproof.witness"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_stops_the_witness_and_closes_its_store(
    tmp_path: Path, witness_private: Any, producer_key: SigningKey, signum: int, status: int,
    command: str,
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    pub = tmp_path / "producer.pub"
    pub.write_bytes(producer_key.public_pem())
    db = tmp_path / "w.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "witness.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMANDS[command], "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db),
             "--key", str(key), "--origin", ORIGIN, "--producer-key", str(pub),
             "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(url, proc=proc)
        # The witness extra's C HTTP parser and event loop are installed and used.
        assert "(HTTP: httptools, event loop: uvloop)" in log.read_text()
        bundle = write_bundle(tmp_path, make_bundle(trace_id(1), key=producer_key))
        WitnessClient(url).submit(bundle.read_bytes())
        wal = Path(str(db) + "-wal")
        assert wal.exists(), "the running witness keeps a write-ahead log"
        proc.send_signal(signum)
        assert proc.wait(20) == status, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not wal.exists(), "the store was not closed: its write-ahead log is still there"
    with sqlite3.connect(db) as conn:
        (entries,) = conn.execute("SELECT COUNT(*) FROM leaves").fetchone()
    assert entries == 1


@pytest.mark.timeout(60)
def test_serve_off_the_main_thread_leaves_signal_handlers_alone(
    tmp_path: Path, witness_private: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Embedded in another program's thread, serve cannot set a SIGTERM handler
    # (only the main thread can): it runs without one, and stops when its server does.
    import threading

    import uvicorn

    from spanproof.witness._cli import main

    servers: list[Any] = []
    real_init = uvicorn.Server.__init__

    def remember(self: Any, config: Any) -> None:
        real_init(self, config)
        servers.append(self)

    monkeypatch.setattr(uvicorn.Server, "__init__", remember)
    key = write_private_key(tmp_path / "witness.key", witness_private)
    db = tmp_path / "w.db"
    port = free_port()
    before = signal.getsignal(signal.SIGTERM)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(main([
        "witness", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db), "--key",
        str(key), "--origin", ORIGIN, "--log-level", "warning"])))
    thread.start()
    try:
        wait_until_up(f"http://127.0.0.1:{port}")
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(30)
    assert status == [0] and signal.getsignal(signal.SIGTERM) is before
    assert not Path(str(db) + "-wal").exists(), "the store was not closed"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_serve_owns_the_stop_signals_while_uvicorn_runs(
    tmp_path: Path, witness_private: Any, monkeypatch: pytest.MonkeyPatch, signum: int,
    status: int,
) -> None:
    # uvicorn re-raises the signal that stopped it once it has put back the handler
    # it found.  Left to Python's and asyncio's default handlers, SIGINT's exit
    # depended on whether asyncio's own handler still found the server's task
    # running (one run saw 0 instead of 130); serve's own handlers decide it.
    import uvicorn

    from spanproof.witness._cli import main

    found: list[Any] = []

    def run(self: Any, sockets: Any = None) -> None:
        handler = signal.getsignal(signum)
        found.append(handler)
        signal.raise_signal(signum)  # as uvicorn does after its graceful shutdown

    monkeypatch.setattr(uvicorn.Server, "run", run)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    key = write_private_key(tmp_path / "witness.key", witness_private)
    db = tmp_path / "w.db"
    assert main(["witness", "serve", "--listen", f"127.0.0.1:{free_port()}", "--db",
                 str(db), "--key", str(key), "--origin", ORIGIN,
                 "--log-level", "warning"]) == status
    (handler,) = found
    assert handler not in (signal.SIG_DFL, signal.default_int_handler, before[signum])
    assert {sig: signal.getsignal(sig) for sig in before} == before  # put back
    assert not Path(str(db) + "-wal").exists(), "the store was not closed"


def _trickle(port: int, stop: threading.Event) -> None:
    """A submission whose body comes a byte now and then, never whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        while not stop.wait(0.2):
            try:
                sock.sendall(b" ")
            except OSError:
                return


def test_a_body_that_trickles_in_gets_408_at_its_deadline(
    witness_private: Any, serve_witness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spanproof.witness import app
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner
    from spanproof.witness.store import Store

    monkeypatch.setattr(app, "BODY_SECONDS", 0.6)
    store = Store(str(tmp_path / "w.db"))
    srv = serve_witness(Witness(store, CheckpointSigner(witness_private, ORIGIN)))
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        answer = b""
        for _ in range(25):  # bounded: 5 s at most, one byte each 0.2 s
            time.sleep(0.2)
            try:
                sock.sendall(b" ")
                sock.settimeout(0.01)
                answer += sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                break
            finally:
                sock.settimeout(5)
            if answer:
                break
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request body not received in time" in answer
    # A slow but steady upload is not a trickle: 40 KB at ~20 KB/s, past the 0.6 s
    # (it got 408 at the whole body's deadline, so a large bundle on a slow link was
    # refused on every retry).
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 40960\r\n\r\n")
        for _ in range(20):
            time.sleep(0.1)
            sock.sendall(b"x" * 2048)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # read whole, then refused
    srv.stop()
    store.close()


def test_serve_gives_requests_in_flight_10_s_to_finish_by_default() -> None:
    from spanproof.verifier._cli import build_parser

    args = build_parser().parse_args(["witness", "serve", "--db", "w.db", "--key", "k"])
    assert args.shutdown_timeout == SHUTDOWN_SECONDS == 10


def test_sigterm_does_not_wait_for_a_trickling_client_for_good(
    tmp_path: Path, witness_private: Any,
) -> None:
    # uvicorn's graceful shutdown waited for every request in flight, so a client
    # sending a byte now and then held the exit for as long as it liked.  It gets
    # --shutdown-timeout (here 2 s; 10 by default).
    grace = 2
    key = write_private_key(tmp_path / "witness.key", witness_private)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "witness.log"
    stop = threading.Event()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMANDS["module"], "serve", "--listen", f"127.0.0.1:{port}", "--db",
             str(tmp_path / "w.db"), "--key", str(key), "--origin", ORIGIN,
             "--log-level", "warning",
             "--shutdown-timeout", str(grace)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    trickler = threading.Thread(target=_trickle, args=(port, stop), daemon=True)
    try:
        wait_until_up(url, proc=proc)
        trickler.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        took = time.monotonic() - started
        # The whole grace (the client never finishes), not the client's 60 s.
        assert grace <= took < grace + 8, took
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        trickler.join(10)


def test_submissions_beyond_the_bound_wait_their_turn_unread(
    witness_private: Any, serve_witness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    producer_key: SigningKey,
) -> None:
    # Every submission's body was read and verified at once, however many came:
    # three 40 MiB bodies took the witness to 6 GB.
    from spanproof.witness import app
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner
    from spanproof.witness.store import Store

    monkeypatch.setattr(app, "REQUESTS_AT_ONCE", 1)
    monkeypatch.setattr(app, "BODY_SECONDS", 1.5)
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(store, CheckpointSigner(witness_private, ORIGIN))
    srv = serve_witness(witness)
    port = int(srv.url.rsplit(":", 1)[1])
    stop = threading.Event()
    holder = threading.Thread(target=_trickle, args=(port, stop), daemon=True)
    holder.start()  # takes the only turn until its body deadline
    time.sleep(0.3)
    answers: list[int] = []
    der = producer_key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = make_bundle(trace_id(1), key=producer_key).data
    waiting = threading.Thread(target=lambda: answers.append(
        WitnessClient(srv.url, timeout=10).submit(data, public_key_der=der).status))
    waiting.start()
    try:
        time.sleep(0.5)
        assert witness.size == 0 and not answers  # waiting, its body unread
        waiting.join(10)
        assert answers == [201] and witness.size == 1  # once the holder's time ran out
    finally:
        stop.set()
        holder.join(10)
        srv.stop()
        store.close()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_while_the_witness_starts_stops_it_cleanly(
    tmp_path: Path, witness_private: Any, signum: int, status: int
) -> None:
    # Its handlers were set only just before serving: a SIGTERM during the imports
    # and start-up checks (a service manager stopping it as it starts) killed the
    # process, exit status -15.  Here the signal comes from inside the start-up.
    key = write_private_key(tmp_path / "witness.key", witness_private)
    db = tmp_path / "w.db"
    script = (
        "import os, sys\n"
        "from spanproof.witness import store as module\n"
        "opened = module.Store.__init__\n"
        "def signalled(self, *args, **kwargs):\n"
        f"    os.kill(os.getpid(), {int(signum)})\n"
        "    opened(self, *args, **kwargs)\n"
        "module.Store.__init__ = signalled\n"
        "from spanproof.verifier._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "witness", "serve", "--listen", "127.0.0.1:0",
         "--db", str(db), "--key", str(key), "--origin", ORIGIN],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(f"{db}-wal").exists()
    # The key's lock was released: a witness started now serves it.
    port = free_port()
    with (tmp_path / "again.log").open("wb") as out:
        proc = subprocess.Popen(
            [*COMMANDS["spanproof"], "serve", "--listen", f"127.0.0.1:{port}", "--db",
             str(db), "--key", str(key), "--origin", ORIGIN], stdout=out,
            stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
