"""A small HTTP client for a witness (SPEC §12.9), on the standard library only.

Used by ``spanproof witness submit`` and ``spanproof monitor``.  Every answer is
untrusted data: callers verify checkpoints and receipts with pinned keys.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spanproof.verifier._batch import batch_request, batch_results, witness_url_error
from spanproof.verifier.errors import TransportError

__all__ = ["HTTPStatusError", "MalformedAnswer", "Response", "WitnessClient"]

_MAX_RESPONSE = 16 * 1024 * 1024
# RFC 9110 §8.6: 1*DIGIT, ASCII only (str.isdigit() takes '²', which int() refuses).
_CONTENT_LENGTH = re.compile(r"[0-9]+\Z")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: a 3xx reaches the caller as the HTTP error it is.

    A witness answers its own API; a 3xx is a proxy or a misconfiguration between
    us and it, which SPEC §12.7 step 6 counts as the witness being unavailable.
    Followed, it would turn into the answer of another page (a 404, say: a refusal).
    """

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


class MalformedAnswer(TransportError):
    """The witness answered, but not with what the request asks for."""


class HTTPStatusError(TransportError):
    """The witness answered with an HTTP error status (``status``, ``message``), and
    its ``Retry-After`` header as sent (``retry_after``; None without one)."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = dict(body or {})
        self.retry_after = retry_after


@dataclass(frozen=True)
class Response:
    """A successful answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class WitnessClient:
    """Talks to the witness at *url* (``http://host:port``, optionally with a path
    prefix).

    Raises:
        ValueError: *url* is not an http(s) URL with a host and, if it has one, a port
            from 1 to 65535 (the message quotes it and says what is wrong).
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        url_error = witness_url_error(url)
        if url_error is not None:
            raise ValueError(url_error)
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and return a 2xx answer.

        A redirect is not followed: it is an :class:`HTTPStatusError` with its 3xx.
        The request and its whole answer take at most ``timeout`` seconds in all,
        however slowly the bytes come (the socket's timeout bounds each wait only).

        Raises:
            HTTPStatusError: the witness answered with a non-2xx status.
            TransportError: the witness could not be reached, gave no whole answer
                within ``timeout``, or the answer was cut short or is not
                well-formed HTTP.
        """
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
        deadline = _Deadline()
        timer = threading.Timer(self.timeout, deadline.expire)
        timer.daemon = True
        timer.start()
        late = TransportError(f"witness {self.url} gave no whole answer within "
                              f"{self.timeout:g} s")
        try:
            answer = self._exchange(req, deadline)
        except (TransportError, OSError, http.client.HTTPException):
            if deadline.expired:
                raise late from None
            raise
        finally:
            timer.cancel()
            deadline.close()
        if deadline.expired:
            # Shut down at the deadline: what was read then (a body read to the end
            # of input, when no length was given) is no answer.
            raise late
        return answer

    def _exchange(self, req: urllib.request.Request, deadline: _Deadline) -> Response:
        """:meth:`request`'s exchange, on sockets *deadline* shuts down in time."""
        # The default handlers (proxies from the environment, https), but no
        # redirects, and connections whose sockets the deadline watches.
        opener = urllib.request.build_opener(
            _NoRedirect(), _WatchedHTTP(deadline), _WatchedHTTPS(deadline))
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                data = resp.read(_MAX_RESPONSE + 1)
                status = resp.status
                got = {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as e:
            try:
                raw = e.read(_MAX_RESPONSE)
            except (http.client.HTTPException, OSError):
                raw = b""  # the status is the answer; its body is only the message
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError):
                doc = {}
            message = doc.get("error") if isinstance(doc, dict) else None
            raise HTTPStatusError(
                e.code, str(message or e.reason), doc if isinstance(doc, dict) else None,
                e.headers.get("Retry-After") if e.headers is not None else None,
            ) from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TransportError(f"cannot reach witness {self.url}: {reason}") from e
        except http.client.HTTPException as e:
            # Not HTTP (a bad status line, a header line too long, a chunked body cut
            # short): no answer of the witness's, as a connection cut is not.
            detail = str(e)
            if not detail.startswith(type(e).__name__):
                detail = f"{type(e).__name__}: {detail}"
            raise TransportError(
                f"witness {self.url} answered with malformed HTTP: {detail}"
            ) from e
        if len(data) > _MAX_RESPONSE:
            raise TransportError(f"witness answer larger than {_MAX_RESPONSE} bytes")
        declared = got.get("content-length")
        if declared is not None:
            digits = declared.strip()
            if _CONTENT_LENGTH.match(digits) is None:
                raise TransportError(
                    f"witness answered with malformed HTTP: Content-Length {declared!r}"
                )
            # More significant digits than the largest answer kept has is more bytes
            # than arrived (and spares int() a number of any length).
            significant = digits.lstrip("0") or "0"
            if len(significant) > len(str(_MAX_RESPONSE)) or len(data) < int(significant):
                # http.client returns what arrived when the peer closes early.
                raise TransportError(f"witness answer cut short ({len(data)} of {digits} bytes)")
        return Response(status, got, data)

    def _json(self, path: str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resp = self.request("GET", path, query=query)
        try:
            doc = json.loads(resp.body)
        except (ValueError, RecursionError) as e:
            # A proxy's page, say: not an answer of the witness's.
            raise TransportError(f"witness answer to {path} is not JSON") from e
        if not isinstance(doc, dict):
            raise MalformedAnswer(f"witness answer to {path} is not a JSON object")
        return doc

    def submit(self, data: bytes, *, public_key_der: bytes | None = None) -> Response:
        """POST a bundle (or DSSE envelope) to ``/v1/submit``; the body is the receipt.

        Raises:
            HTTPStatusError: rejected (400, 413, 422) or unavailable (503).
            TransportError: the witness could not be reached.
        """
        headers = {"Content-Type": "application/vnd.spanproof.bundle.v1+json",
                   **_key_header(public_key_der)}
        return self.request("POST", "/v1/submit", body=data, headers=headers)

    def submit_batch(
        self, datas: Sequence[bytes], *, public_key_der: bytes | None = None
    ) -> list[dict[str, Any]]:
        """POST several bundles to ``/v1/submit-batch`` (SPEC §12.9); each one's
        result, in order: ``{"status": 201 or 200, "leafIndex", "conflict",
        "receipt"}``, or ``{"status": 400 or 422, "error", ...}``.

        Raises:
            HTTPStatusError: the batch as a whole was refused (404 or 405 from a
                witness that takes no batches; 400, 413, 503, ...).
            MalformedAnswer: the answer does not hold one result object per
                submission.
            TransportError: the witness could not be reached.
        """
        headers = {"Content-Type": "application/json", **_key_header(public_key_der)}
        resp = self.request("POST", "/v1/submit-batch", body=batch_request(datas),
                            headers=headers)
        try:
            return batch_results(resp.body, len(datas))
        except ValueError as e:
            raise MalformedAnswer(f"witness answer to a batch of {len(datas)}: {e}") from e

    def checkpoint(self, size: int | None = None) -> bytes:
        """The signed checkpoint note (latest, or of tree *size*).

        Raises:
            TransportError: unreachable, or an HTTP error.
        """
        query = {"size": size} if size is not None else None
        return self.request("GET", "/v1/checkpoint", query=query).body

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """The consistency proof between two tree sizes.

        Raises:
            TransportError: unreachable, an HTTP error, or a malformed answer.
        """
        doc = self._json("/v1/proof/consistency", {"from": size1, "to": size2})
        return _hashes(doc.get("proof"), "consistency proof")

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of entry *index* in the tree of *size*.

        Raises:
            TransportError: unreachable, an HTTP error, or a malformed answer.
        """
        doc = self._json("/v1/proof/inclusion", {"index": index, "size": size})
        return _hashes(doc.get("proof"), "inclusion proof")

    def lookup(self, **query: Any) -> dict[str, Any]:
        """The ``/v1/lookup`` document for ``trace=``, ``digest=`` or ``index=``: one
        page of a trace's or digest's entries (``after=``, ``limit=``), its ``next``
        saying where the following page starts (see :meth:`lookup_entries`).

        Raises:
            TransportError: unreachable, or an HTTP error.
        """
        return self._json("/v1/lookup", query)

    def lookup_entries(self, **query: Any) -> Iterator[dict[str, Any]]:
        """Every entry of a ``trace=`` or ``digest=`` look-up, page after page.

        Raises:
            TransportError: unreachable, an HTTP error, or pages that do not go
                forward (a ``next`` other than the page's last index, or not above
                the ``after=`` asked).
        """
        after = -1
        while True:
            page = {**query, "after": str(after)} if after >= 0 else query
            doc = self.lookup(**page)
            entries = doc.get("entries")
            if not isinstance(entries, list):
                raise MalformedAnswer("witness look-up answer has no entries list")
            yield from entries
            following = doc.get("next")
            if following is None:
                return
            last = entries[-1].get("index") if entries and isinstance(entries[-1], dict) else None
            if (following != last or not isinstance(following, str) or not following.isdigit()
                    or int(following) <= after):
                raise MalformedAnswer(f"witness look-up answer's next {following!r} is not "
                                      f"its last entry's index, after {after}")
            after = int(following)


class _Deadline:
    """The sockets of one request, shut down when its time is up (:meth:`expire`,
    from a timer thread): a read or write blocked on them then returns at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        self.expired = False

    def watch(self, sock: socket.socket) -> None:
        """Shut *sock* down at the deadline (at once if it has passed)."""
        with self._lock:
            if self._closed:
                return
            self._socks.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        """The time is up: shut down every socket watched, unless closed."""
        with self._lock:
            if self._closed:
                return
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def close(self) -> None:
        """The request is over: shut nothing down from now on."""
        with self._lock:
            self._closed = True
            self._socks.clear()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already, or never connected


def _watching(http_class: Any, deadline: _Deadline) -> Callable[..., Any]:
    """A factory of *http_class* connections whose sockets *deadline* watches, from
    the moment they connect (before a proxy tunnel or TLS handshake)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        conn = http_class(*args, **kwargs)
        create = conn._create_connection

        def connect(*a: Any, **k: Any) -> socket.socket:
            sock: socket.socket = create(*a, **k)
            deadline.watch(sock)
            return sock

        conn._create_connection = connect
        return conn

    return make


class _WatchedHTTP(urllib.request.HTTPHandler):
    """The default ``http`` handler, on connections a deadline watches."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_watching(http_class, self._deadline), req, **kwargs)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    """The default ``https`` handler, on connections a deadline watches."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_watching(http_class, self._deadline), req, **kwargs)


def _key_header(public_key_der: bytes | None) -> dict[str, str]:
    """The ``Spanproof-Public-Key`` header for a producer key, if one is given."""
    if public_key_der is None:
        return {}
    return {"Spanproof-Public-Key": base64.b64encode(public_key_der).decode("ascii")}


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise MalformedAnswer(f"witness {what}: 'proof' must be an array")
    try:
        return [base64.b64decode(h, validate=True) for h in value]
    except (binascii.Error, ValueError, TypeError) as e:
        raise MalformedAnswer(f"witness {what}: hashes must be base64") from e
