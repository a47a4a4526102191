"""The witness's HTTP API and public page (SPEC §12.9), as a Starlette ASGI app.

Thin: parse the request, call :class:`~spanproof.witness.service.Witness` in a
worker thread (its calls block on SQLite, fsync and hashing), map errors to status
codes.  Bad input is 400, a bundle that fails verification 422 (with the report),
an oversized body or bundle header 413, a body not received in time 408, no turn
to read a body or to be verified, or storage trouble 503 (retry later).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spanproof.verifier._batch import MAX_BATCH
from spanproof.verifier.canonical import parse_strict
from spanproof.verifier.errors import InvalidBundle, InvalidKey, SpanproofError, TransportError
from spanproof.verifier.receipt import RECEIPT_MEDIA_TYPE
from spanproof.verifier.records import is_digest, is_trace_id
from spanproof.verifier.verify import cut_message

from .service import (
    LOOKUP_PAGE_ENTRIES,
    SubmissionRejected,
    SubmissionTooLarge,
    SubmitResult,
    VerifierBusy,
    Witness,
)

__all__ = [
    "BODY_MAX_SECONDS",
    "BODY_MIN_RATE",
    "BODY_SECONDS",
    "DEFAULT_MAX_BODY",
    "MAX_BATCH",
    "PUBLIC_KEY_HEADER",
    "REQUESTS_AT_ONCE",
    "TURN_WAIT",
    "create_app",
]

_logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: A request's body must arrive within this long, plus a second for every
#: BODY_MIN_RATE bytes received: a byte now and then fails it within a minute, a
#: slow but steady upload does not...
BODY_SECONDS = 60.0
BODY_MIN_RATE = 8 * 1024
#: ...and within this long in all, however steady: a body read holds a turn (below),
#: and a client sending just over BODY_MIN_RATE held one for hours (2.3 for 64 MiB),
#: so eight of them kept every other submission waiting.
BODY_MAX_SECONDS = 120.0
#: Submissions (and checks) whose bodies are read at once; the others wait, their
#: bytes left in their sockets: memory is bounded by this many bodies of at most
#: ``--max-body``, not by the number of clients, plus what verifying one of them
#: takes (the witness verifies them one at a time).
REQUESTS_AT_ONCE = 8
#: How long a request waits for its turn before it is answered 503 (Retry-After).
TURN_WAIT = 10.0
_BUSY_RETRY_AFTER = "1"
PUBLIC_KEY_HEADER = "Spanproof-Public-Key"
_UINT = re.compile(r"(0|[1-9][0-9]{0,19})\Z")
# Log positions and sizes are SQLite integers: a larger one names nothing (and the
# database refuses to compare with it).
_MAX_POSITION = 2**63 - 1
_NO_STORE = {"Cache-Control": "no-store"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


def _error(status: int, message: str, extra: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    # A message quotes what it found (an envelope's payloadType, its unknown member
    # names): cut as a report's are, not echoed whole, up to the body's size.
    return JSONResponse({"error": cut_message(message), **(extra or {})}, status_code=status,
                        headers={**(headers or {}), **_NO_STORE})


class _NoSniff:
    """Adds ``X-Content-Type-Options: nosniff`` to every answer of the app.

    Error answers echo what a submitter sent (a report's messages name records of
    the bundle); only the page said nosniff, so a browser was free to sniff the
    API's answers for a type other than the one declared.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def _text_param(request: Request, name: str) -> str | None:
    """The query parameter *name* given at most once (None when not given)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        # Which one counts would be the framework's choice (the last): refused.
        raise _HTTPError(400, f"query parameter {name!r} is given {len(values)} times")
    return values[0] if values else None


def _uint_param(request: Request, name: str, *, required: bool) -> int | None:
    value = _text_param(request, name)
    if value is None:
        if required:
            raise _HTTPError(400, f"query parameter {name!r} is required")
        return None
    if not _UINT.match(value):
        raise _HTTPError(400, f"query parameter {name!r} must be a decimal number")
    number = int(value)
    if number > _MAX_POSITION:
        raise _HTTPError(400, f"query parameter {name!r} is out of range (at most {_MAX_POSITION})")
    return number


async def _read_body(request: Request, limit: int, seconds: float, most_seconds: float) -> bytes:
    """The request's body, at most *limit* bytes, arrived in time: within *seconds*
    plus a second per BODY_MIN_RATE bytes received, and within *most_seconds* in all.

    A client that sent a byte now and then held its request, and a graceful
    shutdown, for as long as it liked; one that went away mid-body logged a
    traceback of ~40 lines.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HTTPError(413, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = request.stream().__aiter__()
    while True:
        left = started + min(seconds + total / BODY_MIN_RATE, most_seconds) - loop.time()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), left)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise _HTTPError(
                408, f"request body not received in time ({total} bytes in "
                     f"{loop.time() - started:.0f} s; {seconds:g} s are allowed, and "
                     f"a second more for every {BODY_MIN_RATE} bytes, "
                     f"{most_seconds:g} s at most)") from None
        except ClientDisconnect:
            _logger.debug("client went away while sending its request body")
            raise _HTTPError(400, "client went away while sending its request body") from None
        total += len(chunk)
        if total > limit:
            raise _HTTPError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    if not total:
        raise _HTTPError(400, "empty request body: send a bundle file or a DSSE envelope")
    return b"".join(chunks)


def _batch_bodies(body: bytes) -> list[bytes]:
    """The submissions of a ``POST /v1/submit-batch`` body: ``{"submissions": [...]}``,
    each a standard base64 string, 1 to ``MAX_BATCH`` of them."""
    # Base64 holds no bracket or comma: a body with more of them than that shape
    # allows is refused before it is parsed (parsed, [{},{},...] took ~50 times
    # its size).
    if body.count(b"{") + body.count(b"[") > 2 or body.count(b",") >= MAX_BATCH:
        raise _HTTPError(
            400, f'batch: expected {{"submissions": [1 to {MAX_BATCH} base64 strings]}}')
    try:
        doc = parse_strict(body, "batch")
    except InvalidBundle as e:
        raise _HTTPError(400, str(e)) from e
    items = doc.get("submissions") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise _HTTPError(
            400, f'batch: expected {{"submissions": [1 to {MAX_BATCH} base64 strings]}}'
        )
    bodies = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            bodies.append(base64.b64decode(item, validate=True))
        except ValueError as e:
            raise _HTTPError(400, f"batch: submission {i} is not base64 ({e})") from e
    return bodies


def _batch_result(result: SubmitResult | SpanproofError) -> dict[str, Any]:
    """One submission's answer in a batch: what ``POST /v1/submit`` would have said."""
    if isinstance(result, SubmitResult):
        return {
            "status": 201 if result.created else 200,
            "leafIndex": str(result.entry.index),
            "conflict": result.conflict,
            "receipt": result.receipt.to_json(),
        }
    if isinstance(result, SubmissionRejected):
        return {"status": 422, "error": cut_message(str(result)),
                "report": result.report.to_json()}
    return {"status": 400, "error": cut_message(str(result))}


def _page() -> tuple[bytes, str]:
    html = resources.files("spanproof.witness").joinpath("static/index.html").read_bytes()
    # Allow exactly the page's own inline script and style, nothing else.
    scripts = re.findall(rb"<script>(.*?)</script>", html, re.S)
    styles = re.findall(rb"<style>(.*?)</style>", html, re.S)

    def sources(blocks: list[bytes]) -> str:
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks
        )

    csp = (
        "default-src 'none'; "
        f"script-src {sources(scripts)}; style-src {sources(styles)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp


def create_app(
    witness: Witness,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    requests_at_once: int | None = None,
    turn_wait: float | None = None,
    body_seconds: float | None = None,
    body_max_seconds: float | None = None,
) -> Starlette:
    """Build the ASGI app serving *witness* (routes in SPEC §12.9).

    The limits left None are the module's (REQUESTS_AT_ONCE, TURN_WAIT,
    BODY_SECONDS, BODY_MAX_SECONDS) when the app is built.
    """
    page, csp = _page()
    at_once = REQUESTS_AT_ONCE if requests_at_once is None else requests_at_once
    wait = TURN_WAIT if turn_wait is None else turn_wait
    seconds = BODY_SECONDS if body_seconds is None else body_seconds
    most_seconds = BODY_MAX_SECONDS if body_max_seconds is None else body_max_seconds
    turns = asyncio.Semaphore(at_once)

    @contextlib.asynccontextmanager
    async def turn() -> AsyncIterator[None]:
        # A turn waited for without end let slow senders holding every turn keep a
        # genuine submission waiting for as long as they kept sending.
        try:
            await asyncio.wait_for(turns.acquire(), wait)
        except asyncio.TimeoutError:
            raise _HTTPError(
                503, f"busy: {at_once} request bodies are being read; retry later",
                headers={"Retry-After": _BUSY_RETRY_AFTER}) from None
        try:
            yield
        finally:
            turns.release()

    async def read_body(request: Request) -> bytes:
        return await _read_body(request, max_body, seconds, most_seconds)

    async def index(request: Request) -> Response:
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": csp,
                "Referrer-Policy": "no-referrer",
            },
        )

    async def info(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(witness.info), headers=_NO_STORE)

    async def checkpoint(request: Request) -> Response:
        size = _uint_param(request, "size", required=False)
        note = await run_in_threadpool(witness.checkpoint, size)
        if note is None:
            raise _HTTPError(404, f"no checkpoint of tree size {size}")
        return PlainTextResponse(note.decode("utf-8"), headers=_NO_STORE)

    async def submit_batch(request: Request) -> Response:
        async with turn():
            bodies = await run_in_threadpool(_batch_bodies, await read_body(request))
            results = await run_in_threadpool(
                witness.submit_batch, bodies, request.headers.get(PUBLIC_KEY_HEADER)
            )
        return JSONResponse({"results": [_batch_result(r) for r in results]},
                            headers=_NO_STORE)

    async def submit(request: Request) -> Response:
        async with turn():
            body = await read_body(request)
            try:
                result = await run_in_threadpool(
                    witness.submit, body, request.headers.get(PUBLIC_KEY_HEADER)
                )
            except SubmissionRejected as e:
                raise _HTTPError(422, str(e), {"report": e.report.to_json()}) from e
        return Response(
            result.receipt.to_bytes(),
            status_code=201 if result.created else 200,
            media_type=RECEIPT_MEDIA_TYPE,
            headers={
                "Spanproof-Leaf-Index": str(result.entry.index),
                "Spanproof-Conflict": "true" if result.conflict else "false",
                **_NO_STORE,
            },
        )

    async def check(request: Request) -> Response:
        async with turn():
            body = await read_body(request)
            doc = await run_in_threadpool(witness.check, body,
                                          request.headers.get(PUBLIC_KEY_HEADER))
        return JSONResponse(doc, headers=_NO_STORE)

    async def inclusion(request: Request) -> Response:
        index = _uint_param(request, "index", required=True)
        size = _uint_param(request, "size", required=False)
        assert index is not None
        try:
            tree_size, leaf, proof = await run_in_threadpool(witness.inclusion_proof, index, size)
        except ValueError as e:
            raise _HTTPError(400, str(e)) from e
        return JSONResponse(
            {
                "leafIndex": str(index),
                "treeSize": str(tree_size),
                "leafHash": base64.b64encode(leaf).decode(),
                "proof": [base64.b64encode(h).decode() for h in proof],
            },
            headers=_NO_STORE,
        )

    async def consistency(request: Request) -> Response:
        first = _uint_param(request, "from", required=True)
        to = _uint_param(request, "to", required=False)
        assert first is not None
        try:
            size2, proof = await run_in_threadpool(witness.consistency_proof, first, to)
        except ValueError as e:
            raise _HTTPError(400, str(e)) from e
        return JSONResponse(
            {
                "from": str(first),
                "to": str(size2),
                "proof": [base64.b64encode(h).decode() for h in proof],
            },
            headers=_NO_STORE,
        )

    def _lookup_args(request: Request) -> dict[str, Any]:
        trace = _text_param(request, "trace")
        digest = _text_param(request, "digest")
        index = _uint_param(request, "index", required=False)
        given = [x for x in (trace, digest, index) if x is not None]
        if len(given) != 1:
            raise _HTTPError(400, "give exactly one of trace=, digest= or index=")
        if trace is not None and not is_trace_id(trace):
            raise _HTTPError(400, "trace must be 32 lowercase hex digits")
        if digest is not None and not is_digest(digest):
            raise _HTTPError(400, "digest must be sha256:<64 lowercase hex digits>")
        return {"trace": trace, "digest": digest, "index": index}

    def _page_args(request: Request) -> dict[str, Any]:
        after = _uint_param(request, "after", required=False)
        limit = _uint_param(request, "limit", required=False)
        if limit is not None and not 0 < limit <= LOOKUP_PAGE_ENTRIES:
            raise _HTTPError(400, f"limit must be 1 to {LOOKUP_PAGE_ENTRIES}")
        return {"after": -1 if after is None else after,
                "limit": LOOKUP_PAGE_ENTRIES if limit is None else limit}

    async def lookup(request: Request) -> Response:
        args = {**_lookup_args(request), **_page_args(request)}
        if args["index"] is not None and ("after" in request.query_params
                                          or "limit" in request.query_params):
            raise _HTTPError(400, "after= and limit= page a trace= or digest= look-up")
        doc = await run_in_threadpool(lambda: witness.lookup_json(**args))
        return JSONResponse(doc, headers=_NO_STORE)

    async def receipt(request: Request) -> Response:
        args = _lookup_args(request)
        if args["trace"] is not None:
            raise _HTTPError(400, "a receipt is for one entry: give digest= or index=")
        # Two tell "several entries" from one.
        found = await run_in_threadpool(lambda: witness.lookup(**args, limit=2))
        if not found:
            raise _HTTPError(404, "no such entry in the log")
        if len(found) > 1:
            raise _HTTPError(409, "several entries have this digest (other signers); use index=")
        return Response(
            found[0][2].to_bytes(), media_type=RECEIPT_MEDIA_TYPE, headers=_NO_STORE
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _HTTPError)
        return _error(exc.status, str(exc), exc.extra, exc.headers)

    async def on_framework_error(request: Request, exc: Exception) -> Response:
        # An unknown path (404) or method (405, with Allow): a JSON error too.
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail, headers=dict(exc.headers or {}))

    async def on_bad_input(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def on_too_large(request: Request, exc: Exception) -> Response:
        return _error(413, str(exc))

    async def on_busy(request: Request, exc: Exception) -> Response:
        return _error(503, str(exc), headers={"Retry-After": _BUSY_RETRY_AFTER})

    async def on_storage(request: Request, exc: Exception) -> Response:
        _logger.error("witness storage failure: %s", exc)
        return JSONResponse(
            {"error": f"witness storage unavailable: {exc}"},
            status_code=503,
            headers={"Retry-After": "5", **_NO_STORE},
        )

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/info", info, methods=["GET"]),
        Route("/v1/checkpoint", checkpoint, methods=["GET"]),
        Route("/v1/submit", submit, methods=["POST"]),
        Route("/v1/submit-batch", submit_batch, methods=["POST"]),
        Route("/v1/check", check, methods=["POST"]),
        Route("/v1/proof/inclusion", inclusion, methods=["GET"]),
        Route("/v1/proof/consistency", consistency, methods=["GET"]),
        Route("/v1/lookup", lookup, methods=["GET"]),
        Route("/v1/receipt", receipt, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_NoSniff)],
        exception_handlers={
            HTTPException: on_framework_error,
            _HTTPError: on_http_error,
            SubmissionTooLarge: on_too_large,
            InvalidBundle: on_bad_input,
            InvalidKey: on_bad_input,
            VerifierBusy: on_busy,
            TransportError: on_storage,
        },
    )
