"""HTTP POST over persistent connections, for the witness submitter (SPEC §12.11).

``urllib.request.urlopen`` opens a new TCP (and TLS) connection for every request
and closes it after the answer; for a producer that submits every bundle it seals,
that set-up costs the submitter, and the witness, more than the request itself.
:class:`KeepAlivePost` keeps one HTTP/1.1 connection per thread and witness, and
reuses it while the witness keeps it open.

A connection the witness closed while it was idle (servers close idle connections
after a few seconds) fails on the next request before any answer arrives; that
request is sent once more on a new connection, within what is left of its timeout.
The request may then reach the witness twice, which is harmless only because a
witness submission is idempotent (SPEC §12.8): this transport is for that request
and no other.

An ``https`` witness's certificate is checked against the system's trust store
(``ssl.create_default_context()``, as ``urllib`` does); a connection that fails
the check raises ``ssl.SSLCertVerificationError``, an ``OSError``.

Where a proxy is configured for the witness's scheme (``http_proxy``,
``https_proxy``, and ``no_proxy`` for exceptions, read once per witness), requests
go through ``urllib`` as before, which honours them.
"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from ._green import GreenSince
from ._untraced import own_thread, untraced_context

__all__ = ["KeepAlivePost", "urllib_post"]

# What a request on a connection the server has closed fails with, before any
# answer: the request is sent again on a new connection.
_CLOSED_BY_SERVER = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: a 3xx reaches the caller as the answer it is, which the
    submitter retries as the witness being unavailable (SPEC §12.11).  Followed, a
    POST became a GET of the new place, answered 405: the submission was given up
    on.  (The witness client has its own: the verifier, which both packages may
    use, imports no network client, and neither package may import the other.)"""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


def urllib_post(
    opener: urllib.request.OpenerDirector, url: str, body: bytes, headers: Mapping[str, str],
    timeout: float, max_response: int,
) -> tuple[int, bytes, str | None]:
    """POST through *opener* (a new connection, its proxies honoured): ``(status,
    body, retry_after)``, the body cut at *max_response* bytes, *retry_after* the
    ``Retry-After`` header (None without one).

    Raises:
        OSError, urllib.error.URLError: the server cannot be reached, or the answer
            was cut short.
    """
    req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))  # noqa: S310
    try:
        with opener.open(req, timeout=timeout) as resp:
            data = resp.read(max_response)
            _check_whole(resp, data, max_response)
            return int(resp.status), data, resp.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(max_response), e.headers.get("Retry-After")


class KeepAlivePost:
    """``post(url, body, headers, timeout) -> (status, body, retry_after)`` over one
    persistent connection per thread and origin (scheme, host and port);
    *retry_after* is the answer's ``Retry-After`` header (None without one).

    Args:
        max_response: answers are cut at this many bytes (and the connection of
            an answer that was cut is not reused).
    """

    def __init__(self, max_response: int) -> None:
        self._max_response = max_response
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPConnection] = set()
        self._direct: dict[tuple[str, str], bool] = {}
        self._opener: urllib.request.OpenerDirector | None = None  # for proxies
        self._deadlines = _Deadlines()

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        """Send one POST and return its status, body and ``Retry-After`` header.

        Raises:
            OSError: the server cannot be reached, or the connection failed
                before a whole answer arrived.
        """
        with untraced_context():  # never a span of the application's HTTP clients
            return self._post(url, body, headers, timeout)

    def _post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        deadline = time.monotonic() + timeout
        parts = urllib.parse.urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if not self._is_direct(origin, parts.hostname or ""):
            if self._opener is None:
                # It reads the proxy settings; it follows no redirect (a POST
                # redirected became a GET, answered 405: given up on, not retried).
                self._opener = urllib.request.build_opener(_NoRedirect())
            return urllib_post(self._opener, url, body, headers, timeout, self._max_response)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        mine: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if mine is None:
            mine = self._local.connections = {}
        conn = mine.get(origin)
        if conn is not None and conn not in self._connections:  # closed by close()
            del mine[origin]
            conn = None
        if conn is not None:
            try:
                return self._exchange(conn, target, body, headers, timeout)
            except _CLOSED_BY_SERVER:
                self._forget(mine, origin)
            except OSError:
                self._forget(mine, origin)
                raise
            # Sent again with what is left of the one timeout: a close that came
            # late (a server holding the request) is not the idle close it looks
            # like, and a whole new timeout made the request take twice as long.
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("no whole answer within the timeout")
        conn = self._connect(parts, timeout)
        mine[origin] = conn
        try:
            return self._exchange(conn, target, body, headers, timeout)
        except OSError:
            self._forget(mine, origin)
            raise

    def close(self) -> None:
        """Close every connection (call once no thread is sending); later calls
        send on new connections."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()
        self._deadlines.stop()

    def _is_direct(self, origin: tuple[str, str], host: str) -> bool:
        direct = self._direct.get(origin)
        if direct is None:
            proxied = origin[0] in urllib.request.getproxies()
            direct = not proxied or bool(urllib.request.proxy_bypass(host))
            self._direct[origin] = direct
        return direct

    def _connect(
        self, parts: urllib.parse.SplitResult, timeout: float
    ) -> http.client.HTTPConnection:
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        with self._lock:
            self._connections.add(conn)
        return conn

    def _forget(self, mine: dict[tuple[str, str], http.client.HTTPConnection],
                origin: tuple[str, str]) -> None:
        conn = mine.pop(origin, None)
        if conn is None:
            return
        conn.close()
        with self._lock:
            self._connections.discard(conn)

    def _exchange(
        self, conn: http.client.HTTPConnection, target: str, body: bytes,
        headers: Mapping[str, str], timeout: float,
    ) -> tuple[int, bytes, str | None]:
        """One request and its whole answer within *timeout* seconds in all: the
        socket's timeout bounds each wait for bytes only, so a server answering a
        byte at a time would hold the delivery thread without end."""
        deadline = time.monotonic() + timeout
        conn.timeout = timeout
        if conn.sock is None:
            conn.connect()
        else:
            conn.sock.settimeout(timeout)
        assert conn.sock is not None
        armed = self._deadlines.arm(conn.sock, deadline)
        failure: OSError | None = None
        try:
            answer = self._send(conn, target, body, headers)
        except OSError as e:
            failure = e
        if self._deadlines.disarm(armed):
            # Shut down at the deadline: what was read then (headers cut at the
            # end of input read as complete) is no answer.
            raise TimeoutError(f"no whole answer within {timeout:g} s") from failure
        if failure is not None:
            raise failure
        return answer

    def _send(
        self, conn: http.client.HTTPConnection, target: str, body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[int, bytes, str | None]:
        try:
            conn.request("POST", target, body=body, headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read(self._max_response)
        except http.client.HTTPException as e:
            if isinstance(e, OSError):  # RemoteDisconnected: a ConnectionResetError
                raise
            raise ConnectionError(f"bad HTTP answer: {type(e).__name__}: {e}") from e
        _check_whole(resp, data, self._max_response)
        if not resp.isclosed():
            # The answer was cut at max_response: the rest is still on the wire.
            conn.close()
        return resp.status, data, resp.getheader("Retry-After")


def _check_whole(resp: http.client.HTTPResponse, data: bytes, max_response: int) -> None:
    """Raise when the answer *resp* was cut short: http.client returns what arrived
    when the server closes before the ``Content-Length`` it declared, and half a
    receipt is no answer of the witness's, as a connection cut is not.

    Raises:
        ConnectionError: fewer bytes than declared arrived (and fewer than
            *max_response*, where the answer is cut on purpose).
    """
    if resp.length and len(data) < max_response:
        raise ConnectionError(f"answer cut short ({len(data)} of "
                              f"{len(data) + resp.length} bytes)")


@dataclasses.dataclass(eq=False)
class _Armed:
    """An exchange on *sock* that must be over by *deadline* (monotonic seconds)."""

    sock: socket.socket
    deadline: float
    expired: bool = False


class _Deadlines:
    """Shuts down the socket of an exchange still running at its deadline, from one
    daemon thread (started on first use), so that the blocked read or write in
    the delivery thread returns at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: set[_Armed] = set()
        self._thread: threading.Thread | None = None
        self._wake = 0.0  # when the thread wakes up next, at the latest
        # Started once gevent patched threading since, the thread would be a
        # greenlet of the delivering thread, waiting on this (real) condition.
        self._green = GreenSince()

    def arm(self, sock: socket.socket, deadline: float) -> _Armed:
        """Watch *sock* until :meth:`disarm`; shut it down at *deadline*."""
        armed = _Armed(sock, deadline)
        with self._cond:
            self._armed.add(armed)
            if self._thread is None:
                if self._green.turned:  # the socket timeout alone (see GreenSince)
                    return armed
                thread = own_thread(self._run, "spanproof-witness-deadlines")
                try:
                    thread.start()
                except RuntimeError:  # at interpreter exit: the socket timeout alone
                    return armed
                self._thread = thread
            elif deadline < self._wake:
                self._cond.notify()
        return armed

    def disarm(self, armed: _Armed) -> bool:
        """Stop watching; whether the deadline had passed (the socket shut down)."""
        with self._cond:
            self._armed.discard(armed)
            return armed.expired

    def stop(self) -> None:
        """Let the thread end (a later :meth:`arm` starts another)."""
        with self._cond:
            self._thread = None  # the running thread ends: it is no longer the one
            self._cond.notify_all()

    def _run(self) -> None:
        idle = 1.0
        with self._cond:
            while self._thread is threading.current_thread():
                now = time.monotonic()
                for armed in [a for a in self._armed if a.deadline <= now]:
                    armed.expired = True
                    self._armed.discard(armed)
                    try:
                        # Not SSLSocket.shutdown, which unwraps TLS under the reader.
                        socket.socket.shutdown(armed.sock, socket.SHUT_RDWR)
                    except OSError:
                        pass
                if self._armed:
                    self._wake = min(a.deadline for a in self._armed)
                    idle = max(idle, self._wake - now)
                else:
                    # Idle: wake up no sooner than an exchange armed now could end,
                    # so that arming one needs no wake-up.
                    self._wake = now + idle
                self._cond.wait(max(0.0, self._wake - now))
