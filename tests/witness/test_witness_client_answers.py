"""What ``WitnessClient`` makes of answers no witness sends: redirects, and HTTP that
is not well formed.  Each must be the witness being unavailable (SPEC §12.7 step 6),
never a refusal, so a monitor does not raise a fork alert on a proxy's word."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, WITNESS_SEED

from spanproof.verifier.checkpoint import Checkpoint
from spanproof.verifier.merkle import leaf_hash
from spanproof.witness.client import HTTPStatusError, WitnessClient
from spanproof.witness.monitor import monitor_once
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.tree import MerkleTree


def answer(status: str, body: bytes = b"", *headers: str) -> bytes:
    """An HTTP/1.1 answer that closes its connection, with a Content-Length."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Canned:
    """A server that answers each request's path (no query) with the bytes
    ``answers`` maps it to (a 404 otherwise), as they are, and records request lines."""

    url: str = ""
    answers: dict[str, bytes | Callable[[], bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def reply(self, request_line: str) -> bytes:
        self.requests.append(request_line)
        target = request_line.split(" ")[1] if " " in request_line else ""
        path = target.split("?")[0]
        if "://" in path:  # through a proxy: the absolute URL
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        got = self.answers.get(path, answer("404 Not Found", b'{"error":"no"}'))
        return got() if callable(got) else got


def _serve(listener: socket.socket, canned: Canned, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            continue  # the accept timeout, or the listener closed
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(canned.reply(head.split(b"\r\n")[0].decode("latin-1")))
            except OSError:
                pass


@pytest.fixture
def canned() -> Iterator[Canned]:
    """A :class:`Canned` server on 127.0.0.1, stopped at teardown."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    served = Canned(url=f"http://127.0.0.1:{listener.getsockname()[1]}")
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, served, stop), daemon=True)
    thread.start()
    yield served
    stop.set()
    thread.join(10)
    listener.close()


def _signed(signer: CheckpointSigner, tree: MerkleTree) -> Callable[[], bytes]:
    """The answer to ``/v1/checkpoint``: *tree*'s current size, signed."""
    return lambda: answer("200 OK", signer.sign(Checkpoint(ORIGIN, tree.size, tree.root())),
                          "Content-Type: text/plain")


# --- redirects -------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "303 See Other",
                                    "307 Temporary Redirect", "308 Permanent Redirect"])
def test_a_redirect_is_not_followed(canned: Canned, status: str) -> None:
    canned.answers["/v1/proof/consistency"] = answer(status, b"", "Location: /maintenance")
    canned.answers["/maintenance"] = answer("404 Not Found", b"<html>maintenance</html>",
                                            "Content-Type: text/html")
    with pytest.raises(HTTPStatusError) as got:
        WitnessClient(canned.url, timeout=5).consistency_proof(3, 5)
    assert got.value.status == int(status.split()[0])
    assert [line.split("?")[0] for line in canned.requests] == ["GET /v1/proof/consistency"]


def test_a_redirected_proof_request_is_no_fork_alert(canned: Canned, tmp_path: Path) -> None:
    # Followed, the redirect to a maintenance page that answers 404 was the witness
    # refusing to prove its new checkpoint: a fork alert, and evidence written.
    signer = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
    keys = [signer.key]
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(8))
    canned.answers["/v1/checkpoint"] = _signed(signer, tree)
    canned.answers["/v1/proof/consistency"] = answer("302 Found", b"", "Location: /maintenance")
    canned.answers["/maintenance"] = answer("404 Not Found", b"down for maintenance")
    client = WitnessClient(canned.url, timeout=5)
    state = tmp_path / "monitor.json"
    assert monitor_once(client, str(state), keys).current.size == 8
    tree.append(leaf_hash(b"next"))
    with pytest.raises(HTTPStatusError) as got:  # unavailable: a TransportError
        monitor_once(client, str(state), keys)
    assert got.value.status == 302
    assert not list(tmp_path.glob("monitor.json.evidence*"))


def test_the_client_still_goes_through_a_configured_proxy(
    canned: Canned, monkeypatch: pytest.MonkeyPatch
) -> None:
    canned.answers["/v1/checkpoint"] = answer("200 OK", b"through the proxy")
    monkeypatch.setenv("http_proxy", canned.url)
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert WitnessClient("http://witness.invalid:8080", timeout=5).checkpoint() == (
        b"through the proxy"
    )
    assert canned.requests == ["GET http://witness.invalid:8080/v1/checkpoint HTTP/1.1"]
