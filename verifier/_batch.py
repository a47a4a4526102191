"""The submitting side of a witness's ``POST /v1/submit-batch`` (SPEC §12.9): the
request body, the checked answer, and each result's receipt file bytes; a bundle's
envelope alone, for a witness that takes no body as large as the bundle; and when to
try again (SPEC §12.11): the backoff and a ``Retry-After``'s seconds.

Shared by the producer's submitter (``spanproof.exporter.submit``) and ``spanproof
witness submit``, and the batch limit by the witness itself.  No network here.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import io
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .bundle import BundleReader
from .canonical import _parse_int
from .errors import InvalidBundle
from .receipt import Receipt

__all__ = ["BATCH_BYTES", "BATCH_SIZE", "MAX_BATCH", "backoff_delay", "batch_receipt",
           "batch_request", "batch_results", "envelope_submission", "retry_after_asks",
           "retry_after_seconds", "shown_url", "witness_url_error", "witness_url_problem"]

#: Submissions one ``POST /v1/submit-batch`` may carry.
MAX_BATCH = 256
#: How both clients send by default: submissions per request, and the bundle bytes
#: one request carries at most (a larger bundle goes alone), which bounds what a
#: sender holds in memory.
BATCH_SIZE = 16
BATCH_BYTES = 4 * 1024 * 1024
#: A ``Retry-After`` of more seconds than this counts as this many (both clients cap
#: their waits far below it), so that no number is too large to compute with.
_RETRY_AFTER_MAX = 10**9


def backoff_delay(
    failures: int, initial: float, maximum: float, rng: Callable[[], float]
) -> float:
    """Seconds to wait after *failures* consecutive failed attempts: exponential
    (``initial * 2**(failures-1)``, capped at *maximum*) with "equal jitter" (a
    random value in the upper half), so many producers do not retry in lockstep."""
    base = min(maximum, initial * float(1 << min(60, max(0, failures - 1))))
    return base / 2 + rng() * base / 2


def retry_after_seconds(value: str, now: float) -> float | None:
    """The seconds a ``Retry-After`` header *value* asks to wait (RFC 9110 §10.2.3):
    delay-seconds (digits only; beyond ``_RETRY_AFTER_MAX``, that), or an HTTP-date
    less *now* (seconds since the epoch; 0 for a date past).  None when it is
    neither (a sign, a fraction, ``NaN``, an impossible date...)."""
    value = value.strip(" \t")
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        return float(int(digits) if len(digits) <= 9 else _RETRY_AFTER_MAX)
    try:
        date = email.utils.parsedate_to_datetime(value)
        if date.tzinfo is None:  # an HTTP-date is in GMT, as asctime's form leaves unsaid
            date = date.replace(tzinfo=datetime.timezone.utc)
        seconds = date.timestamp() - now
    except (ValueError, TypeError, OverflowError):
        return None
    return min(max(0.0, seconds), float(_RETRY_AFTER_MAX))


def retry_after_asks(status: int, retry_after: str | None, now: float) -> float | None:
    """The seconds an answer of HTTP *status* asks the client to wait by its
    ``Retry-After`` header *retry_after* (SPEC §12.11): a 429's or a 503's, when it
    is delay-seconds or an HTTP-date (see `retry_after_seconds`); else None."""
    if status not in (429, 503) or retry_after is None:
        return None
    return retry_after_seconds(retry_after, now)


def witness_url_problem(url: str) -> str | None:
    """What keeps *url* from being a witness's base URL, said specifically ("its port
    is '0', not a number from 1 to 65535"), or None when it can be one: an http:// or
    https:// URL with a host, a port (if any) from 1 to 65535, and no white space,
    query, fragment, user name or password."""
    if url == "":
        return "it is empty"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:  # an unclosed "[" of an IPv6 host
        return f"it cannot be read as a URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "it does not start with http:// or https://"
    if not parts.hostname:
        return "it has no host"
    try:
        port = parts.port  # raises for a port that is not a number or out of range
    except ValueError:
        port = 0
    if port == 0:
        given = parts.netloc.rpartition(":")[2]
        return f"its port is {given!r}, not a number from 1 to 65535"
    if any(c.isspace() for c in url):
        return "it has white space in it"
    if "?" in url or "#" in url:
        # The API's paths are added to its end: "http://w?x=1" + "/v1/submit"
        # is a request for "/", refused by the witness for good.
        return ("it has a query or fragment ('?' or '#'); a witness's base URL has "
                "none, as the API's paths are added to its end")
    if "@" in parts.netloc:
        return "it has a user name or password ('...@'), which spanproof never sends"
    return None


def shown_url(url: str) -> str:
    """*url* with the password of a ``user:password@`` part replaced by ``***``, to be
    quoted in a message or a log line; otherwise *url* as it is."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        return url
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (at and colon):
        return url
    return url.replace(netloc, f"{user}:***@{host}", 1)


def witness_url_error(url: str) -> str | None:
    """The message for a *url* that cannot be a witness's base URL (see
    `witness_url_problem`), quoting it once: ``"'ftp://w' is not a witness URL: it
    does not start with http:// or https://"``; None when it can be one.  The caller
    puts in front of it where the URL came from (a flag, a variable, an argument)."""
    problem = witness_url_problem(url)
    return None if problem is None else f"{shown_url(url)!r} is not a witness URL: {problem}"


def envelope_submission(bundle: bytes) -> bytes:
    """The DSSE envelope of the bundle file *bundle*, as JSON: what ``POST /v1/submit``
    takes without records (SPEC §12.9), for a witness that answered 413 to the bundle.

    Raises:
        SpanproofError: the bundle's header cannot be read.
    """
    envelope, _ = BundleReader(io.BytesIO(bundle)).read_header()
    return json.dumps(envelope.to_json(), separators=(",", ":")).encode("ascii")


def batch_request(submissions: Sequence[bytes]) -> bytes:
    """The request body: ``{"submissions": [...]}``, each in standard base64."""
    encoded = [base64.b64encode(data).decode("ascii") for data in submissions]
    return json.dumps({"submissions": encoded}).encode("ascii")


def batch_results(answer: bytes, count: int) -> list[dict[str, Any]]:
    """The ``results`` of an answer to a batch of *count*, one per submission, in
    order: a 200 or 201 with its ``receipt`` object, or another status with its
    ``error`` text.

    Raises:
        ValueError: the answer is not one.
    """
    try:
        results = json.loads(answer, parse_int=_parse_int)["results"]
    except (ValueError, KeyError, TypeError, RecursionError, InvalidBundle) as e:
        raise ValueError(f"no results ({type(e).__name__}: {e})") from e
    if not isinstance(results, list) or len(results) != count:
        raise ValueError(f"{count} results expected")
    for result in results:
        if not isinstance(result, dict) or type(result.get("status")) is not int:
            raise ValueError("a result without a status")
        if result["status"] in (200, 201) and not isinstance(result.get("receipt"), dict):
            raise ValueError("a result without its receipt")
        if result["status"] not in (200, 201) and not isinstance(result.get("error"), str):
            raise ValueError("a rejection without its reason")
    return results


def batch_receipt(result: Mapping[str, Any]) -> bytes:
    """A logged submission's receipt file bytes, as ``POST /v1/submit`` answers them.

    Raises:
        InvalidReceipt: the result's ``receipt`` is not a well-formed receipt.
    """
    return Receipt.from_json(result["receipt"]).to_bytes()
