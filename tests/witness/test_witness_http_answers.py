"""Headers and bodies of the witness's HTTP answers, read as a browser would: every
answer says nosniff, every error, the framework's own 404 and 405 included, is a
JSON error that no cache keeps, and none quotes a huge value whole."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, make_bundle, trace_id

from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.verify import MAX_MESSAGE_CHARS
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store


@pytest.fixture
def url(
    tmp_path: Path,
    witness_private: Ed25519PrivateKey,
    producer_trust: TrustRoot,
    serve_witness: Any,
) -> Iterator[str]:
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                      producer_trust=producer_trust, clock=FakeClock())
    witness.submit(make_bundle(trace_id(1)).data)
    witness.submit(make_bundle(trace_id(2)).data)
    srv = serve_witness(witness)
    yield srv.url
    srv.stop()
    store.close()


def _ask(url: str, method: str, target: str, body: bytes | None = None
         ) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, target, body=body)
        answer = conn.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        conn.close()


ANSWERS = [
    ("GET", "/", None, 200),
    ("GET", "/v1/info", None, 200),
    ("GET", "/v1/checkpoint", None, 200),
    ("GET", "/v1/checkpoint?size=99", None, 404),
    ("GET", "/v1/lookup?index=0", None, 200),
    ("GET", f"/v1/lookup?trace={trace_id(1)}", None, 200),
    ("GET", "/v1/lookup?trace=%3Cscript%3E", None, 400),
    ("GET", "/v1/proof/inclusion?index=1", None, 200),
    ("GET", "/v1/proof/consistency?from=1", None, 200),
    ("GET", "/v1/receipt?index=0", None, 200),
    ("GET", "/v1/receipt?index=9", None, 404),
    ("POST", "/v1/submit", b"<html><script>alert(1)</script>", 400),
    ("POST", "/v1/check", b"<html><script>alert(1)</script>", 200),
    ("GET", "/v1/%3Cscript%3Ealert(1)%3C/script%3E", None, 404),
    ("OPTIONS", "/v1/lookup", None, 405),
    ("PUT", "/v1/submit", b"x", 405),
    ("DELETE", "/", None, 405),
]


@pytest.mark.parametrize(("method", "target", "body", "status"), ANSWERS)
def test_every_answer_says_nosniff_and_every_error_is_json(
    url: str, method: str, target: str, body: bytes | None, status: int
) -> None:
    got, headers, data = _ask(url, method, target, body)
    assert got == status, data
    assert headers.get_all("X-Content-Type-Options") == ["nosniff"]
    if status >= 400:
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        doc = json.loads(data)
        assert set(doc) <= {"error", "report"} and isinstance(doc["error"], str)
        assert "<script>" not in doc["error"]


def test_an_unknown_method_is_told_which_are_allowed(url: str) -> None:
    status, headers, _ = _ask(url, "PUT", "/v1/submit", b"x")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = _ask(url, "OPTIONS", "/v1/lookup")
    assert status == 405 and set(headers["Allow"].split(", ")) == {"GET", "HEAD"}


def test_head_answers_as_get_without_a_body(url: str) -> None:
    status, headers, data = _ask(url, "HEAD", "/v1/checkpoint")
    assert status == 200 and data == b""
    assert headers["Cache-Control"] == "no-store"
    assert headers.get_all("X-Content-Type-Options") == ["nosniff"]


def _envelope_quoting(size: int) -> bytes:
    """A DSSE envelope whose payloadType is *size* characters of markup."""
    data = make_bundle(trace_id(3)).data
    header = data.split(b"\n", 1)[0]
    envelope = json.loads(header[: header.index(b',"records":[')] + b"}")["envelope"]
    return json.dumps({**envelope, "payloadType": "<b>" * (size // 3)}).encode()


def test_an_error_answer_does_not_echo_a_huge_value_whole(url: str) -> None:
    # A bare envelope is parsed whole, and its error quoted the unknown payloadType:
    # 3 MB sent, 3 MB answered; a bundle's report cut the same message.
    body = _envelope_quoting(3_000_000)
    status, _, data = _ask(url, "POST", "/v1/submit", body)
    assert status == 400 and len(data) < 2 * MAX_MESSAGE_CHARS
    error = json.loads(data)["error"]
    assert error.startswith("envelope: unknown payloadType") and "characters left out" in error
    assert len(error) <= MAX_MESSAGE_CHARS
    batch = json.dumps({"submissions": [base64.b64encode(body).decode()]}).encode()
    status, _, data = _ask(url, "POST", "/v1/submit-batch", batch)
    assert status == 200 and len(data) < 2 * MAX_MESSAGE_CHARS
    (result,) = json.loads(data)["results"]
    assert result["status"] == 400 and len(result["error"]) <= MAX_MESSAGE_CHARS


def test_no_answer_is_readable_by_a_page_of_another_origin(url: str) -> None:
    # Same-origin only (SPEC §12.9): no answer grants another origin, and the
    # preflight of a cross-origin submission with Spanproof-Public-Key is refused.
    parts = urlsplit(url)
    for method, target in (("GET", "/v1/lookup?index=0"), ("GET", "/v1/checkpoint"),
                           ("GET", "/v1/info"), ("OPTIONS", "/v1/submit")):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request(method, target, headers={
                "Origin": "http://localhost:1",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "spanproof-public-key",
            })
            answer = conn.getresponse()
            answer.read()
        finally:
            conn.close()
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
        assert answer.status == (405 if method == "OPTIONS" else 200)


@pytest.mark.parametrize("target", ["/v1/checkpoint?size=1", "/v1/proof/inclusion?index=0&size=1",
                                    "/v1/proof/consistency?from=1&to=2", "/v1/info"])
def test_no_answer_is_kept_by_a_cache(url: str, target: str) -> None:
    # Answers of a given size never change in an honest log, and are no-store all
    # the same: a monitor is shown what the log says now, not what a cache kept.
    status, headers, _ = _ask(url, "GET", target)
    assert status == 200 and headers["Cache-Control"] == "no-store"
