"""What ``WitnessClient`` makes of answers no witness sends: redirects, and HTTP that
is not well formed.  Each must be the witness being unavailable (SPEC §12.7 step 6),
never a refusal, so a monitor does not raise a fork alert on a proxy's word."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import (
    ORIGIN,
    PRODUCER_SEED,
    WITNESS_SEED,
    make_bundle,
    trace_id,
    write_bundle,
)

from spanproof.exporter.keys import SigningKey
from spanproof.verifier.checkpoint import Checkpoint
from spanproof.verifier.errors import TransportError
from spanproof.verifier.merkle import leaf_hash
from spanproof.witness._cli import main
from spanproof.witness.client import HTTPStatusError, MalformedAnswer, WitnessClient
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


@pytest.mark.parametrize(("headers", "retry_after"), [
    (("Retry-After: 30",), "30"), ((), None),
], ids=["with-retry-after", "without"])
def test_an_error_answer_s_retry_after_is_kept(
    canned: Canned, headers: tuple[str, ...], retry_after: str | None
) -> None:
    # The submitter waits at least that long before asking again (SPEC §12.11).
    canned.answers["/v1/proof/consistency"] = answer(
        "503 Service Unavailable", b'{"error":"busy"}', "Content-Type: application/json",
        *headers)
    with pytest.raises(HTTPStatusError) as got:
        WitnessClient(canned.url, timeout=5).consistency_proof(3, 5)
    assert (got.value.status, got.value.message) == (503, "busy")
    assert got.value.retry_after == retry_after


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


# --- answers that are not HTTP ---------------------------------------------------------

NOT_HTTP = {
    "bad-status-line": b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nhi",
    "chunked-body-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc",
    "header-line-too-long": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n",
    "too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: a\r\n" * 150 + b"\r\n",
    "error-body-cut": b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc",
    # 'SUPERSCRIPT TWO' in latin-1: str.isdigit() says yes, int() says no.
    "content-length-superscript": b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n"
                                  b"Connection: close\r\n\r\nhi",
    "content-length-sign": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n"
                           b"Connection: close\r\n\r\nhi",
}


@pytest.mark.parametrize("raw", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_an_answer_that_is_not_http_is_a_transport_error(canned: Canned, raw: bytes) -> None:
    canned.answers["/v1/checkpoint"] = raw
    with pytest.raises(TransportError) as got:
        WitnessClient(canned.url, timeout=5).checkpoint()
    if "500" in raw.split(b"\r\n")[0].decode():
        assert isinstance(got.value, HTTPStatusError) and got.value.status == 500
    else:
        assert not isinstance(got.value, (HTTPStatusError, MalformedAnswer))


def test_a_content_length_of_any_length_is_read_as_a_number(canned: Canned) -> None:
    canned.answers["/v1/checkpoint"] = (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000
                                        + b"\r\nConnection: close\r\n\r\nhi")
    with pytest.raises(TransportError, match="cut short"):
        WitnessClient(canned.url, timeout=5).checkpoint()
    canned.answers["/v1/checkpoint"] = (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000
                                        + b"2\r\nConnection: close\r\n\r\nhi")
    assert WitnessClient(canned.url, timeout=5).checkpoint() == b"hi"


@pytest.mark.parametrize("raw", [NOT_HTTP["bad-status-line"], NOT_HTTP["chunked-body-cut"]],
                         ids=["bad-status-line", "chunked-body-cut"])
def test_monitor_of_a_witness_answering_malformed_http_is_unavailable(
    canned: Canned, raw: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It exited 1, the status of a fork or rollback, with a traceback.
    signer = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
    canned.answers["/v1/checkpoint"] = raw
    status = main(["monitor", "--url", canned.url, "--state", str(tmp_path / "m.json"),
                   "--witness-key", signer.vkey, "--timeout", "5"])
    out = capsys.readouterr().out
    assert status == 3 and out.startswith(f"FAIL {canned.url}: witness {canned.url} answered "
                                          "with malformed HTTP"), out


def test_submit_to_a_witness_answering_malformed_http_fails_each_bundle_as_unavailable(
    canned: Canned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first bundle's answer ended the run with a traceback.
    producer = tmp_path / "producer.pub"
    producer.write_bytes(SigningKey.from_seed(PRODUCER_SEED).public_pem())
    paths = [write_bundle(tmp_path, make_bundle(trace_id(i))) for i in range(2)]
    canned.answers["/v1/submit-batch"] = NOT_HTTP["header-line-too-long"]
    canned.answers["/v1/submit"] = NOT_HTTP["bad-status-line"]
    status = main(["witness", "submit", *map(str, paths), "--url", canned.url,
                   "--producer-key", str(producer), "--timeout", "5", "--retry-for", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 3 and len(lines) == 2, lines
    assert all(line.startswith("FAIL") and "malformed HTTP" in line for line in lines)
    assert not list(tmp_path.glob("*.receipt.json"))


# --- notes padded on the way -------------------------------------------------------------


def _padded(note: bytes) -> bytes:
    """*note* with 63 signature lines of keys nobody pinned, names of 16,000 quotes
    each (~1 MB, under the note's limit): ignored when verifying (C2SP signed-note),
    and addable by anyone between the witness and the monitor."""
    blob = base64.b64encode(bytes(68)).decode("ascii")
    return note + "".join(f"\u2014 {chr(34) * 16_000}{i} {blob}\n"
                          for i in range(63)).encode("utf-8")


def test_a_note_padded_on_the_way_is_remembered_without_the_padding(
    canned: Canned, tmp_path: Path
) -> None:
    # The whole note was saved, ~2 MB once its quotes were escaped: every later run
    # read a state over its 1 MiB limit, a usage error instead of a check, against
    # the honest witness too, and a fork went unseen.
    signer = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(8))
    honest = signer.sign(Checkpoint(ORIGIN, tree.size, tree.root()))
    canned.answers["/v1/checkpoint"] = answer("200 OK", _padded(honest))
    client = WitnessClient(canned.url, timeout=5)
    state = tmp_path / "monitor.json"
    assert monitor_once(client, str(state), [signer.key]).current.size == 8
    assert json.loads(state.read_text())["checkpoint"] == honest.decode("utf-8")
    canned.answers["/v1/checkpoint"] = _signed(signer, tree)
    tree.append(leaf_hash(b"next"))
    canned.answers["/v1/proof/consistency"] = answer(
        "200 OK", json.dumps({"proof": [base64.b64encode(h).decode()
                                        for h in tree.consistency_proof(8, 9)]}).encode())
    assert monitor_once(client, str(state), [signer.key]).current.size == 9


def test_the_largest_note_a_witness_can_sign_is_read_back_from_the_state(
    canned: Canned, tmp_path: Path
) -> None:
    # Its own text (an extension line of quotes) escapes to twice its size.
    signer = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(WITNESS_SEED), ORIGIN)
    tree = MerkleTree(leaf_hash(bytes([i])) for i in range(8))
    big = signer.sign(Checkpoint(ORIGIN, tree.size, tree.root(), ('"' * 1_040_000,)))
    canned.answers["/v1/checkpoint"] = answer("200 OK", big)
    client = WitnessClient(canned.url, timeout=5)
    state = tmp_path / "monitor.json"
    assert monitor_once(client, str(state), [signer.key]).current.size == 8
    assert state.stat().st_size > 2_000_000
    assert monitor_once(client, str(state), [signer.key]).current.size == 8
