"""Command line of the witness: ``spanproof witness {serve,keygen,submit}`` and
``spanproof monitor``.

:func:`add_commands` registers the commands on the main ``spanproof`` parser; each
sets ``handler`` to a function taking the parsed arguments and returning the exit
status.  Nothing here imports the web stack until ``serve`` runs, so the verifier's
CLI can import this module without Starlette or uvicorn installed.

Exit status: 0 success; 1 a check failed (bundle rejected, bad receipt, fork,
rollback, bad checkpoint signature); 2 usage error; 3 the witness is unreachable
or its storage failed.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import io
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from spanproof.verifier._batch import (
    BATCH_BYTES,
    BATCH_SIZE,
    backoff_delay,
    batch_receipt,
    envelope_submission,
    retry_after_asks,
)
from spanproof.verifier._files import open_regular, remove_stopped_writes, write_atomic
from spanproof.verifier._settings import parse_decimal, parse_seconds
from spanproof.verifier._stdout import StdoutError, writing_stdout
from spanproof.verifier._term import printable
from spanproof.verifier.bundle import BUNDLE_SUFFIX
from spanproof.verifier.checkpoint import (
    WitnessKey,
    load_witness_keys,
    refuse_producer_key_as_witness_key,
)
from spanproof.verifier.errors import (
    InvalidBundle,
    InvalidKey,
    SpanproofError,
    TransportError,
    VerificationError,
)
from spanproof.verifier.keys import TrustedKey, TrustRoot
from spanproof.verifier.receipt import (
    Receipt,
    ReceiptVerifier,
    kept_receipt,
    receipt_path,
    unverified_receipt_for,
)
from spanproof.verifier.verify import BundleReport, Verdict, check_bundle, find_bundles

if TYPE_CHECKING:
    import uvicorn

__all__ = ["add_commands", "main", "parse_listen", "server_stack"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130  # SIGINT, as shells report it
#: How long `witness serve` lets requests in flight finish once told to stop, by
#: default (``--shutdown-timeout``).
SHUTDOWN_SECONDS = 10
#: The longest ``--shutdown-timeout`` taken.
MAX_SHUTDOWN_SECONDS = 3600

_logger = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT``; empty host = 127.0.0.1).

    Raises:
        ValueError: not HOST:PORT with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    try:
        number = parse_decimal(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", number


#: The longest ``--timeout`` of ``witness submit`` and ``monitor``: a day.
MAX_TIMEOUT_SECONDS = 86400.0


def _seconds_up_to_a_day(text: str, *, zero: bool) -> float:
    """Seconds, at most a day; above 0, or from 0 with *zero* (NaN never)."""
    try:
        value = parse_seconds(text)
    except ValueError:
        value = math.nan
    if not (0 <= value if zero else 0 < value) or not value <= MAX_TIMEOUT_SECONDS:
        within = (f"from 0 to {MAX_TIMEOUT_SECONDS:g}" if zero else
                  f"above 0 and at most {MAX_TIMEOUT_SECONDS:g}")
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds {within}, not {text!r}")
    return value


def _timeout(text: str) -> float:
    """A ``--timeout`` value: seconds, more than 0 and at most a day."""
    return _seconds_up_to_a_day(text, zero=False)


#: The smallest ``witness serve --max-body``: below it no bundle would be accepted.
MIN_MAX_BODY = 1024


def _max_body(text: str) -> int:
    """A ``--max-body`` value: a whole number of bytes, at least `MIN_MAX_BODY`."""
    try:
        value = parse_decimal(text)
    except ValueError:
        value = 0
    if value < MIN_MAX_BODY:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of bytes of at least {MIN_MAX_BODY}, not {text!r}")
    return value


def _shutdown_seconds(text: str) -> int:
    """A ``--shutdown-timeout`` value: whole seconds, 1 to `MAX_SHUTDOWN_SECONDS`."""
    try:
        value = parse_decimal(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SHUTDOWN_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be whole seconds from 1 to {MAX_SHUTDOWN_SECONDS}, not {text!r}")
    return value


def _fail(message: str, status: int) -> int:
    print(f"spanproof: error: {printable(message)}", file=sys.stderr)
    return status


# --- witness serve ----------------------------------------------------------------------


def server_stack() -> tuple[str, str]:
    """The HTTP parser and event loop ``witness serve`` runs uvicorn on: ``httptools``
    and ``uvloop`` where installed (the ``witness`` extra installs both; they cost the
    witness ~20% less CPU per submission), else the pure-Python ``h11`` and
    ``asyncio``."""
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    loop = "asyncio"
    if sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None:
        loop = "uvloop"
    return http, loop


def _cmd_serve(args: argparse.Namespace) -> int:
    # First, before the imports and the start-up checks: a SIGTERM then (a service
    # manager stopping it as it starts) killed the process, exit status -15 where a
    # graceful stop is promised.  Noted here, it stops the witness before it serves.
    # (Signal handlers can only be set from the main thread.)
    early: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda signum, frame: early.append(signum))
                    for sig in _STOP_SIGNALS}
    try:
        return _serve(args, early, bool(previous))
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: not set from Python
                signal.signal(sig, handler)


def _serve(args: argparse.Namespace, early: list[int], handling: bool) -> int:
    """``witness serve`` once SIGTERM and SIGINT are noted in *early* (when
    *handling*, on the main thread)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:  # pragma: no cover - depends on the installation
        return _fail(
            "the witness needs its web stack: pip install '.[witness]' in a checkout "
            f"of spanproof ({e})", EXIT_USAGE
        )
    from .service import LogCorrupted, Witness
    from .signing import (
        CheckpointSigner,
        earlier_checkpoint_paths,
        hold_key,
        release_key,
        signed_checkpoint_path,
    )
    from .store import Store

    logging.getLogger().setLevel(args.log_level.upper())
    try:
        host, port = parse_listen(args.listen)
        signer = CheckpointSigner.load(args.key, args.origin)
        trust = _producer_trust(args.producer_key, args.producer_trust_root)
        if trust is not None:
            own = WitnessKey(signer.key.public_key, signer.origin, args.key)
            refuse_producer_key_as_witness_key(trust, [own])
        if args.state_dir is not None and not os.path.isdir(args.state_dir):
            raise ValueError(f"--state-dir {args.state_dir}: not a directory")
        # Names no database file could have: usage errors, not a storage that may
        # come back (exit 3 tells a supervisor to start it again).
        if args.db == "":
            raise ValueError("--db: no database file named (an empty name)")
        if os.path.isdir(args.db):
            raise ValueError(f"--db {args.db}: is a directory; --db takes the log's "
                             "database file")
    except (ValueError, InvalidKey) as e:
        return _fail(str(e), EXIT_USAGE)
    try:
        # Bound first, as the receiver binds its ports: a port another process holds
        # is said before the key is locked or the database made (uvicorn's own bind
        # came last, and left a new database behind its "address already in use").
        listening = _listen(host, port)
    except OSError as e:
        # A port another process listens on is another process serving (exit 3, as
        # for its database or key); a host that is not this machine's is a usage error.
        return _fail(f"cannot listen on {args.listen}: {e.strerror or e}",
                     EXIT_UNAVAILABLE if e.errno == errno.EADDRINUSE else EXIT_USAGE)

    def close_listening() -> None:
        for sock in listening:
            sock.close()

    try:
        held, state_locked = hold_key(args.key, args.state_dir, signer.key_id)
    except TransportError as e:
        close_listening()
        return _fail(str(e), EXIT_UNAVAILABLE)
    signed_file = signed_checkpoint_path(args.key, args.state_dir, signer.key_id)
    if state_locked:
        # Only the process holding the key's lock writes <key>.checkpoint: a temporary
        # file of it is one that a stopped witness left.
        try:
            remove_stopped_writes(os.path.dirname(signed_file),
                                  {os.path.basename(signed_file)}, _logger.warning)
        except OSError as e:  # the directory cannot be listed: the start is not held up
            _logger.warning("cannot look for temporary files of %s (%s)", signed_file,
                            e.strerror or e)
    try:
        store = Store(args.db)
    except TransportError as e:
        close_listening()
        release_key(held)
        return _fail(str(e), EXIT_UNAVAILABLE)
    try:
        witness = Witness(store, signer, producer_trust=trust, signed_file=signed_file,
                          earlier_files=earlier_checkpoint_paths(args.key, args.state_dir,
                                                                 signer.key_id))
    except LogCorrupted as e:
        close_listening()
        store.close()
        release_key(held)
        return _fail(f"refusing to start: {e}", EXIT_FAILED)
    except TransportError as e:
        close_listening()
        store.close()
        release_key(held)
        return _fail(str(e), EXIT_UNAVAILABLE)
    if trust is None:
        _logger.warning(
            "no --producer-key: accepting bundles signed by any key the submitter supplies "
            "(entries are recorded as %r)", "unverified-producer",
        )
    http, loop = server_stack()

    def announce(urls: list[str]) -> None:
        print(printable(f"witness {signer.origin} on {', '.join(urls)} "
                        f"(HTTP: {http}, event loop: {loop})"), file=sys.stderr, flush=True)
        print(f"verifier key: {signer.vkey}", file=sys.stderr, flush=True)

    config = uvicorn.Config(
        create_app(witness, max_body=args.max_body),
        host=host,
        port=port,
        http=http,
        loop=loop,
        log_level=args.log_level,
        lifespan="off",
        server_header=False,
        # Requests still in flight when SIGTERM or SIGINT comes get this long to
        # finish; a client that sends a byte now and then held the exit for good.
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again
    # once its own handler is gone, so the handler it found runs.  With SIGTERM's
    # default action the process would die there, before the store is closed, and
    # report death by signal to its supervisor; SIGINT's would reach asyncio's own
    # handler, which turns it into KeyboardInterrupt only if the server's task has
    # not finished yet.  Handlers of ours make both exits certain.  (Signal handlers
    # can only be set from the main thread.)
    status = EXIT_OK
    try:
        if handling:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, _stopped)
        if early:  # a signal came while it started: it stops before serving
            raise _Stopped(early[0])
        _announcing_server(config, announce).run(sockets=listening)
    except _Stopped as e:
        _logger.info("stopped by %s", signal.Signals(e.signum).name)
        status = EXIT_OK if e.signum == signal.SIGTERM else EXIT_INTERRUPTED
    finally:
        witness.keep_latest()
        store.close()
        release_key(held)
        close_listening()
    return status


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on every address *host* resolves to, at *port*, as uvicorn
    (asyncio's ``create_server``) binds them: ``localhost`` is often 127.0.0.1 and
    ::1; the address reused at once after a stop; IPv6 sockets IPv6 only; uvicorn's
    backlog.

    Raises:
        OSError: it cannot listen there (a port another process listens on:
            ``EADDRINUSE``; a host that is not this machine's or cannot be resolved).
    """
    try:
        found = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(None, e.strerror) from e
    listening: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            listening.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
    except OSError:
        for sock in listening:
            sock.close()
        raise
    return listening


def _announcing_server(config: uvicorn.Config,
                       announce: Callable[[list[str]], None]) -> uvicorn.Server:
    """A uvicorn server that, once it listens, calls *announce* with the URL of each
    address it listens on: the port it bound, not the 0 of ``--listen HOST:0``."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            announce([_url(sock.getsockname())
                      for server in self.servers for sock in server.sockets])

    return Server(config)


def _url(address: tuple[Any, ...]) -> str:
    """``http://HOST:PORT`` of a bound IPv4 or IPv6 socket address."""
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stopped(Exception):
    """SIGTERM or SIGINT reached ``witness serve`` outside uvicorn's own handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def _producer_trust(keys: Sequence[str] | None, root: str | None) -> TrustRoot | None:
    trusted: list[TrustedKey] = []
    if root:
        trusted.extend(TrustRoot.from_json_file(root).keys)
    if keys:
        trusted.extend(TrustRoot.from_pem_files(list(keys)).keys)
    return TrustRoot(tuple(trusted)) if trusted else None


# --- witness keygen ---------------------------------------------------------------------


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from spanproof.verifier._files import temp_target

    from .signing import CheckpointSigner, generate_key_file

    key = Ed25519PrivateKey.generate()
    try:  # the origin is checked before anything is written
        signer = CheckpointSigner(key, args.origin)
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)
    try:
        generate_key_file(args.key, key, args.origin)
    except FileExistsError:
        return _fail(f"{args.key} exists; refusing to overwrite a witness key", EXIT_USAGE)
    except OSError as e:
        named = e.filename2 if e.filename2 is not None else e.filename  # replace(): the target
        where = args.key if named is None else os.fsdecode(named)
        written_for = temp_target(os.path.basename(where))  # a file's temporary copy
        if written_for is not None:
            where = os.path.join(os.path.dirname(where), written_for)
        return _fail(f"{where}: cannot write the witness key ({e.strerror or e})", EXIT_USAGE)
    origin_file = f" and {args.key}.origin" if args.origin is not None else ""
    print(printable(f"wrote {args.key} (private, mode 0600), {args.key}.pub{origin_file}"))
    print(printable(f"origin: {signer.origin}"))
    print(f"verifier key: {signer.vkey}")
    return EXIT_OK


# --- witness submit ---------------------------------------------------------------------


#: Bundles ``witness submit`` sends in one request, and the bundle bytes one request
#: carries at most (a larger bundle goes alone), as the producer's submitter sends them.
SUBMIT_BATCH = BATCH_SIZE
SUBMIT_BATCH_BYTES = BATCH_BYTES

#: How long, in all, ``witness submit`` waits to try again the bundles the witness
#: cannot take now, by default (``--retry-for``, seconds): a busy witness answers
#: 503 with ``Retry-After: 1``, and a rolling restart takes a few seconds.
SUBMIT_RETRY_SECONDS = 30.0
#: The first wait before trying again, and the longest (seconds, before jitter):
#: the producer's submitter's backoff (SPEC §12.11), on a command's scale.
SUBMIT_BACKOFF = (1.0, 8.0)

_Outcome = tuple[str, int]  # a line to print, and the exit status it calls for


def _retry_for(text: str) -> float:
    """A ``--retry-for`` value: seconds, 0 (no retries) to a day."""
    return _seconds_up_to_a_day(text, zero=True)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # a name of its own, for tests


class _Retries:
    """What ``witness submit`` may still wait for bundles the witness cannot take now
    (exit status 3): its waits add up to at most ``--retry-for`` seconds, over the
    whole command, so a witness that stays down costs that once, not once per batch.
    (Each try also takes up to ``--timeout``.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = self.left = seconds

    def wait(self, failures: int, asked: float, why: str) -> bool:
        """Wait before the next try after *failures* in a row: the backoff, or the
        *asked* seconds of a ``Retry-After`` when longer, cut to what is left; say so
        and *why* on standard error.  False, without waiting, when nothing is left or
        the witness asks for more than that (said too, unless retries are off)."""
        if asked > self.left or self.left <= 0:
            if self.seconds > 0:
                limit = (f"the witness asks for {asked:g} s, more than the {self.left:g} s "
                         "left of --retry-for" if asked > self.left else
                         f"--retry-for ({self.seconds:g} s) has run out")
                print(printable(f"spanproof: {why}; not trying again: {limit}"),
                      file=sys.stderr)
            return False
        delay = min(max(backoff_delay(failures, *SUBMIT_BACKOFF, random.random), asked),
                    self.left)
        self.left -= delay
        print(printable(f"spanproof: {why}; trying again in {delay:.1f} s"), file=sys.stderr)
        _sleep(delay)
        return True


def _cmd_submit(args: argparse.Namespace) -> int:
    from .client import WitnessClient

    try:
        client = WitnessClient(args.url, timeout=args.timeout)
    except ValueError as e:
        return _fail(f"--url {e}", EXIT_USAGE)
    try:
        witness_keys = load_witness_keys(args.witness_key or [])
        der = None
        trust = None
        if args.producer_key:
            # Read once: a second read of `--producer-key <(...)` would find it empty.
            trust = TrustRoot.from_pem_files([args.producer_key])
            der = trust.keys[0].key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            refuse_producer_key_as_witness_key(trust, witness_keys)
        paths = list(find_bundles(args.bundles))
    except (ValueError, InvalidKey) as e:
        return _fail(str(e), EXIT_USAGE)
    except OSError as e:  # a path that does not exist, a directory that cannot be listed
        where = "?" if e.filename is None else os.fsdecode(e.filename)
        return _fail(f"{where}: {e.strerror or e}", EXIT_USAGE)
    if witness_keys and not args.producer_key:
        return _fail(
            "--witness-key needs --producer-key to recompute each bundle's leaf", EXIT_USAGE
        )
    submitter = _Submitter(client, der, trust, witness_keys)
    retries = _Retries(args.retry_for)
    statuses = [EXIT_OK]

    def show(outcome: _Outcome) -> None:
        print(printable(outcome[0]), flush=True)  # paths, and what the witness answered
        statuses.append(outcome[1])

    for group in _groups(paths):
        submitter.submit_retrying(group, retries, show)
    return max(statuses)


def _groups(paths: Sequence[str]) -> list[list[str]]:
    """*paths* in groups of up to ``SUBMIT_BATCH`` bundles and ``SUBMIT_BATCH_BYTES``."""
    groups: list[list[str]] = []
    size = 0
    for path in paths:
        try:
            length = os.stat(path).st_size
        except OSError:
            length = 0  # reading it reports the error, for this bundle alone
        if not groups or len(groups[-1]) >= SUBMIT_BATCH or size + length > SUBMIT_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += length
    return groups


def _unavailable(status: int) -> bool:
    """Whether an HTTP *status* says "not now" (exit status 3, try again later)
    rather than that the bundle was refused: a 5xx, 408 or 429, the answers the
    producer's submitter retries (SPEC §12.11), or a redirect, which the client
    does not follow (a proxy's maintenance page; SPEC §12.7 reads it the same)."""
    return status >= 500 or status in (408, 429) or 300 <= status < 400


class _Unwritable(OSError):
    """A receipt the witness gave that cannot be written beside its bundle."""


class _Submitter:
    """Submits groups of bundles for ``witness submit``: each group in one
    ``/v1/submit-batch`` request while the witness takes batches (one by one after
    it answers 404 or 405, or when it refuses a batch or answers it badly), checks
    each receipt, and writes it beside its bundle."""

    def __init__(self, client: Any, der: bytes | None, trust: TrustRoot | None,
                 witness_keys: Sequence[WitnessKey]) -> None:
        self._client = client
        self._der = der
        self._trust = trust
        self._witness_keys = witness_keys
        self._batches = True
        #: The longest wait a ``Retry-After`` asked for in the last `submit` (seconds).
        self.asked = 0.0

    def submit_retrying(self, paths: Sequence[str], retries: _Retries,
                        show: Callable[[_Outcome], None]) -> None:
        """*show* each bundle's line and exit status, in order, once it is final:
        after trying again those the witness could not take now, for as long as
        *retries* allows.  Those before the first bundle still to be tried again are
        shown before each wait, and all of them when a wait is interrupted (those
        not taken with the failure they had), so no line of a bundle whose receipt
        was written is lost."""
        outcomes = self.submit(paths)
        shown = failures = 0
        while True:
            again = [i for i, (_, code) in enumerate(outcomes) if code == EXIT_UNAVAILABLE]
            if not again:
                break
            for outcome in outcomes[shown:again[0]]:
                show(outcome)
            shown = again[0]
            failures += 1
            why = outcomes[shown][0].removeprefix(f"FAIL {paths[shown]}: ")
            try:
                waited = retries.wait(failures, self.asked,
                                      f"{len(again)} bundle(s) not taken now ({why})")
            except KeyboardInterrupt:
                for outcome in outcomes[shown:]:
                    show(outcome)
                raise
            if not waited:
                break
            for i, outcome in zip(again, self.submit([paths[i] for i in again]), strict=True):
                outcomes[i] = outcome
        for outcome in outcomes[shown:]:
            show(outcome)

    def _note(self, error: BaseException) -> None:
        """Keep the wait a 429's or 503's ``Retry-After`` asks for, of *error* or the
        HTTP error it was raised from (SPEC §12.11: one that says neither a number
        of seconds nor a date is ignored)."""
        from .client import HTTPStatusError

        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, HTTPStatusError):
            cause = cause.__cause__
        if isinstance(cause, HTTPStatusError):
            asked = retry_after_asks(cause.status, cause.retry_after, time.time())
            if asked is not None:
                self.asked = max(self.asked, asked)

    def submit(self, paths: Sequence[str]) -> list[_Outcome]:
        """Each bundle's line and exit status, in order, from one try."""
        from .client import HTTPStatusError, MalformedAnswer

        self.asked = 0.0
        outcomes: dict[int, _Outcome] = {}
        ready: list[tuple[int, str, bytes, BundleReport | None]] = []
        for i, path in enumerate(paths):
            try:
                ready.append((i, path, *self._prepared(path)))
            except OSError as e:  # worded as verify words it, not as Python's repr
                outcomes[i] = (f"FAIL {path}: cannot read: {e.strerror or e}", EXIT_FAILED)
            except SpanproofError as e:
                outcomes[i] = (f"FAIL {path}: {e}", EXIT_FAILED)
        verifier = ReceiptVerifier(self._witness_keys) if self._witness_keys else None
        if self._batches and len(ready) > 1:
            try:
                answers = self._client.submit_batch([d for _, _, d, _ in ready],
                                                    public_key_der=self._der)
            except HTTPStatusError as e:
                if e.status in (404, 405):
                    self._batches = False  # an older witness: one by one from now on
                elif _unavailable(e.status):
                    self._note(e)
                    ready, outcomes = [], {**outcomes, **{
                        i: (f"FAIL {path}: witness answered {e}", EXIT_UNAVAILABLE)
                        for i, path, _, _ in ready}}
            except MalformedAnswer:
                pass  # one by one: each gets its own answer
            except TransportError as e:
                ready, outcomes = [], {**outcomes, **{
                    i: (f"FAIL {path}: {e}", EXIT_UNAVAILABLE) for i, path, _, _ in ready}}
            else:
                for (i, path, data, report), answer in zip(ready, answers, strict=True):
                    outcomes[i] = self._answered(path, data, answer, report, verifier)
                ready = []
        for i, path, data, report in ready:
            outcomes[i] = self._one(path, data, report, verifier)
        return [outcomes[i] for i in range(len(paths))]

    def _prepared(self, path: str) -> tuple[bytes, BundleReport | None]:
        """The bundle's bytes, and its report when checked with the producer key.

        The bytes checked are the bytes sent: the file is read once.

        Raises:
            InvalidBundle: its name has no place for a receipt beside it.
            VerificationError: it does not verify (it is not submitted).
            OSError: it cannot be read.
        """
        if not path.endswith(BUNDLE_SUFFIX):
            # Checked once it was logged, this failed after the witness had logged it.
            raise InvalidBundle(f"not submitted: the file name does not end in "
                                f"{BUNDLE_SUFFIX}, so its receipt would have no place "
                                "beside it (SPEC §12.6); rename it")
        with open_regular(path) as f:
            data = f.read()
        report = None
        if self._trust is not None:
            stream = io.BytesIO(data)
            stream.name = path  # what the report calls it
            report = check_bundle(stream, self._trust, allow_incomplete=True)
            if report.verdict is Verdict.FAIL:
                raise VerificationError(f"not submitted: {report.reason}")
        return data, report

    def _one(self, path: str, data: bytes, report: BundleReport | None,
             verifier: ReceiptVerifier | None) -> _Outcome:
        from .client import HTTPStatusError

        try:
            alone = ""
            try:
                resp = self._client.submit(data, public_key_der=self._der)
            except HTTPStatusError as e:
                if e.status != 413:
                    raise
                # Larger than the witness takes: its signed statement alone, as a
                # DSSE envelope, which the witness logs without its records.
                resp = self._client.submit(envelope_submission(data), public_key_der=self._der)
                alone = (" (larger than the witness takes: sent as its DSSE envelope "
                         "alone, its records not checked by the witness)")
            return self._written(
                path, data, resp.body, resp.status == 201,
                resp.headers.get("spanproof-leaf-index", "?"),
                resp.headers.get("spanproof-conflict") == "true", report, verifier,
            ) + alone, EXIT_OK
        except HTTPStatusError as e:
            self._note(e)
            return (f"FAIL {path}: witness answered {e}",
                    EXIT_UNAVAILABLE if _unavailable(e.status) else EXIT_FAILED)
        except TransportError as e:  # a consistency proof among them
            self._note(e)
            return f"FAIL {path}: {e}", EXIT_UNAVAILABLE
        except _Unwritable as e:  # a path that cannot be written (SPEC §12.10)
            return f"FAIL {path}: {e}", EXIT_USAGE
        except (SpanproofError, OSError) as e:
            return f"FAIL {path}: {e}", EXIT_FAILED

    def _answered(self, path: str, data: bytes, answer: dict[str, Any],
                  report: BundleReport | None, verifier: ReceiptVerifier | None) -> _Outcome:
        status = answer["status"]
        if status not in (200, 201):
            return (f"FAIL {path}: witness answered HTTP {status}: {answer.get('error', '')}",
                    EXIT_UNAVAILABLE if _unavailable(status) else EXIT_FAILED)
        try:
            receipt = batch_receipt(answer)
            return self._written(path, data, receipt, status == 201,
                                 str(answer.get("leafIndex", "?")), answer.get("conflict") is True,
                                 report, verifier), EXIT_OK
        except TransportError as e:  # a consistency proof the witness cannot give now
            self._note(e)
            return f"FAIL {path}: {e}", EXIT_UNAVAILABLE
        except _Unwritable as e:
            return f"FAIL {path}: {e}", EXIT_USAGE
        except (SpanproofError, OSError) as e:
            return f"FAIL {path}: {e}", EXIT_FAILED

    def _prove(self, size1: int, size2: int) -> list[bytes]:
        """The consistency proof from tree size *size1* to *size2*, for a receipt
        already beside a bundle and the witness's new one (SPEC §12.6), fetched as
        the monitor fetches it (§12.7 step 6).

        Raises:
            LogInconsistent: the witness does not prove it.
            TransportError: the witness is unavailable (never an HTTPStatusError,
                which would be read as the witness refusing the bundle).
        """
        from .monitor import fetch_consistency_proof

        try:
            return fetch_consistency_proof(self._client, size1, size2)
        except TransportError as e:
            raise TransportError(
                f"cannot check the new receipt against the one beside the bundle: no "
                f"consistency proof from tree size {size1} to {size2} ({e})"
            ) from e

    def _written(self, path: str, data: bytes, receipt: bytes, created: bool, index: str,
                 conflict: bool, report: BundleReport | None,
                 verifier: ReceiptVerifier | None) -> str:
        """Check *receipt* for the bundle *data* (verified with pinned witness keys,
        else its form and statement), write it beside the bundle, and say so."""
        target = receipt_path(path)  # a bundle's name (_prepared)
        verify: Callable[[bytes], object] | None = None
        if verifier is not None:
            assert report is not None
            pinned, checked = verifier, report
            verified = pinned.verify(receipt, checked)
            note = f", receipt verified (checkpoint by {verified.origin})"

            def verify(raw: bytes) -> object:
                return pinned.verify(raw, checked)
        else:
            receipt = unverified_receipt_for(data, receipt)
            note = ", receipt NOT verified (no --witness-key)"
        new = "logged" if created else "already logged"
        flag = " [CONFLICT: another statement is logged for this trace segment]" if conflict else ""
        kept = kept_receipt(target, Receipt.from_bytes(receipt), verify, self._prove)
        if kept is not None:
            return f"OK {path}: {new} at index {index}{note}; {kept}{flag}"
        try:
            write_atomic(target, receipt)
        except OSError as e:
            # Named as the receipt, not the hidden temporary file it is written to,
            # and said to be logged: a submission again gets the same entry.
            raise _Unwritable(f"{new} at index {index}, but its receipt cannot be written "
                              f"to {target} ({e.strerror or e}){flag}") from e
        return f"OK {path}: {new} at index {index}{note}; wrote {target}{flag}"



# --- monitor ----------------------------------------------------------------------------


def _cmd_monitor(args: argparse.Namespace) -> int:
    from spanproof.verifier.errors import LogInconsistent

    from .client import HTTPStatusError, WitnessClient
    from .monitor import check_receipts, find_receipts, monitor_once, read_receipt_checkpoints

    receipts: list[str] = []
    unreadable: list[tuple[str, str]] = []
    try:
        client = WitnessClient(args.url, timeout=args.timeout)
    except ValueError as e:
        return _fail(f"--url {e}", EXIT_USAGE)
    try:
        keys = load_witness_keys(args.witness_key)
        for path in args.receipts:
            found, problems = find_receipts(path)
            receipts += found
            unreadable += problems
            if not found and not problems:
                unreadable.append((path, "no receipts (*.receipt.json) found"))
    except (ValueError, InvalidKey) as e:
        return _fail(str(e), EXIT_USAGE)
    except FileNotFoundError as e:
        return _fail(f"{e.filename}: {e.strerror}", EXIT_USAGE)
    # Receipts are read before the witness's latest checkpoint is fetched, so none
    # can hold a newer one (SPEC §12.7 step 8).
    held, unverified = read_receipt_checkpoints(receipts, keys, origin=args.origin)
    unreadable += unverified

    def failed(e: SpanproofError | OSError) -> int:
        if isinstance(e, LogInconsistent):
            print(printable(f"ALERT {args.url}: {e}"))
            return EXIT_FAILED
        if isinstance(e, TransportError):
            # A 404 for a proof is an alert (fetch_consistency_proof), so this one is
            # the checkpoint's: no witness at that URL (§12.9 GET /v1/checkpoint).
            hint = (" (is --url the witness's base URL?)"
                    if isinstance(e, HTTPStatusError) and e.status == 404 else "")
            print(printable(f"FAIL {args.url}: {e}{hint}"))
            return EXIT_UNAVAILABLE
        if isinstance(e, OSError):  # only monitor_once's: the state file and its lock
            return _fail(_unusable_state(args.state, e), EXIT_USAGE)
        print(printable(f"FAIL {args.url}: {e}"))
        return EXIT_FAILED

    try:
        result = monitor_once(client, args.state, keys, origin=args.origin)
    except (SpanproofError, OSError) as e:  # an evidence file is reported in the alert
        return failed(e)
    # Printed outside: a closed standard output is not a --state that cannot be used.
    print(printable(result.message))
    if not args.receipts:
        return EXIT_OK
    try:
        checked = check_receipts(client, result.current, held, args.state)
    except SpanproofError as e:
        return failed(e)
    for path, why in (*unreadable, *checked.unchecked):
        print(printable(f"FAIL receipt {path}: {why}"))
    print(printable(
        f"OK {result.current.origin}: {checked.consistent} receipt(s), under "
        f"{checked.checkpoints} checkpoint(s), are consistent with tree size "
        f"{result.current.size}"
    ))
    return EXIT_FAILED if unreadable or checked.unchecked else EXIT_OK


def _unusable_state(state: str, error: OSError) -> str:
    """Why ``monitor --state`` cannot be used: a usage error (SPEC §12.10), not a
    failed check, so that a job alerting on exit status 1 does not take it for a
    fork.  A state file that is read but malformed, or whose checkpoint no pinned
    key signed, is a failed check (exit status 1)."""
    why = error.strerror or str(error)
    directory = os.path.dirname(state) or "."
    if error.errno == errno.ENOENT and not os.path.isdir(directory):
        return f"--state {state}: the directory {directory} does not exist"
    lock = f"{state}.lock"
    if error.filename is not None and os.fsdecode(error.filename) == lock:
        return f"--state {state}: cannot open its lock {lock} ({why})"
    history = f"{state}.history"
    if error.filename is not None and os.fsdecode(error.filename) == history:
        return f"--state {state}: cannot append to its history {history} ({why})"
    return f"--state {state}: cannot read or write it ({why})"


# --- lookup -----------------------------------------------------------------------------


def _cmd_lookup(args: argparse.Namespace) -> int:
    from spanproof.verifier.records import is_trace_id

    from .client import WitnessClient
    from .lookup import GivenBundle, compare_entries, read_given

    if not is_trace_id(args.trace):
        return _fail(f"TRACE_ID must be 32 lowercase hex digits, not all zero: "
                     f"{printable(args.trace)!r}", EXIT_USAGE)
    try:
        client = WitnessClient(args.url, timeout=args.timeout)
    except ValueError as e:
        return _fail(f"--url {e}", EXIT_USAGE)
    given: list[GivenBundle] | None = None
    unreadable: list[tuple[str, str]] = []
    try:
        keys = load_witness_keys(args.witness_key)
        if args.bundles:
            given, unreadable = read_given(find_bundles(args.bundles))
    except (ValueError, InvalidKey) as e:
        return _fail(str(e), EXIT_USAGE)
    except OSError as e:  # a path that does not exist, a directory that cannot be listed
        where = "?" if e.filename is None else os.fsdecode(e.filename)
        return _fail(f"{where}: {e.strerror or e}", EXIT_USAGE)
    for path, why in unreadable:
        print(printable(f"FAIL {path}: {why}"), flush=True)
    try:
        result = compare_entries(
            client.lookup_entries(trace=args.trace), args.trace, keys, origin=args.origin,
            given=given, on_entry=lambda line: print(printable(line), flush=True))
    except TransportError as e:
        print(printable(f"FAIL {args.url}: {e}"))
        return EXIT_UNAVAILABLE
    for line in result.not_logged:
        print(printable(line))
    instances = len(result.instances)
    counted = (f"{result.entries} entr{'y' if result.entries == 1 else 'ies'} logged, of "
               f"{instances} producer instance{'' if instances == 1 else 's'}")
    if not result.ok or unreadable:
        problems = [f"{count} {what}" for count, what in (
            (result.failed, "entries that failed their check"),
            (result.conflicts, "in conflict"),
            (result.missing, "not among the bundles given"),
            (len(result.not_logged), "bundles given not logged"),
            (len(unreadable), "bundles given that could not be read"),
        ) if count]
        print(printable(f"FAIL trace {args.trace}: {counted}; {', '.join(problems)}"))
        return EXIT_FAILED
    among = ", each among the bundles given" if given is not None else ""
    print(printable(f"OK trace {args.trace}: {counted}{among}"))
    return EXIT_OK


# --- registration -----------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    """Register ``witness {serve,keygen,submit,lookup}`` and ``monitor`` on the main
    parser's sub-parsers.  Each command sets ``handler`` (parsed args -> exit
    status) and ``subparser`` (its own parser, for usage errors), the convention of
    ``spanproof.verifier._cli``."""
    witness = subparsers.add_parser(
        "witness", help="run or use an independent witness log",
        description="Run a witness (serve), create its key (keygen), log bundles (submit), "
                    "or list what it logged for a trace (lookup).",
    )
    wsub = witness.add_subparsers(dest="witness_command",
                                  metavar="{serve,keygen,submit,lookup}")
    wsub.required = True

    serve = wsub.add_parser(
        "serve", help="serve a witness log over HTTP",
        epilog="Exit status: 0 stopped by SIGTERM, 130 by SIGINT, 1 the log refused at "
               "start (it fails its own check), 2 usage error (a --listen host that is "
               "not this machine's included), 3 the database cannot be opened or "
               "written, or another process listens on the port, or another process "
               "serves it or the key.",
    )
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:8080)")
    serve.add_argument("--db", required=True, metavar="FILE", help="SQLite log database")
    serve.add_argument("--key", required=True, metavar="KEYFILE",
                       help="the witness's Ed25519 private key (PKCS#8 PEM; see keygen)")
    serve.add_argument("--origin", metavar="NAME",
                       help="log origin and key name (default: the one 'witness keygen "
                            "--origin' recorded in KEY.origin, else derived from the key)")
    serve.add_argument("--state-dir", metavar="DIR",
                       help="an existing directory for the key's lock and latest signed "
                            "checkpoint (witness-<key id>.lock and .checkpoint; default: "
                            "KEY.lock and KEY.checkpoint beside the key file), for a key "
                            "on a read-only mount")
    serve.add_argument("--producer-key", action="append", metavar="PUB.pem",
                       help="accept bundles signed by this producer key (repeatable); "
                            "without any, any valid signature by a submitter-supplied key "
                            "is accepted and recorded as unverified-producer")
    serve.add_argument("--producer-trust-root", metavar="FILE",
                       help="accept producer keys from a trust-root file (validity windows)")
    serve.add_argument("--max-body", type=_max_body, default=64 * 1024 * 1024, metavar="BYTES",
                       help="largest accepted submission (default 64 MiB, at least 1024)")
    serve.add_argument("--shutdown-timeout", type=_shutdown_seconds, default=SHUTDOWN_SECONDS,
                       metavar="SECONDS",
                       help=f"how long requests in flight get to finish after SIGTERM or "
                            f"SIGINT (default {SHUTDOWN_SECONDS}; 1 to {MAX_SHUTDOWN_SECONDS})")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=_cmd_serve, subparser=serve)

    keygen = wsub.add_parser(
        "keygen", help="create a witness key",
        epilog="Exit status: 0 written, 2 usage error (a key file that exists is never "
               "overwritten; a place that cannot be written).",
    )
    keygen.add_argument("--key", required=True, metavar="KEYFILE",
                        help="where to write the private key (the public key goes to KEYFILE.pub)")
    keygen.add_argument("--origin", metavar="NAME",
                        help="log origin, printed in the verifier key and recorded in "
                             "KEYFILE.origin, which 'witness serve' then uses and holds "
                             "to (default: derived from the key)")
    keygen.set_defaults(handler=_cmd_keygen, subparser=keygen)

    submit = wsub.add_parser(
        "submit", help="log bundles with a witness and store receipts",
        epilog="Exit status: 0 every bundle logged and its receipt stored, 1 a bundle "
               "failed its check or was refused, or a receipt did not verify or conflicts "
               "with the one kept, 2 usage error, 3 the witness cannot take bundles now "
               "(unreachable, 5xx, 408, 429 or a redirect) and --retry-for ran out: try "
               "again later.",
    )
    submit.add_argument("bundles", nargs="+", metavar="BUNDLE",
                        help="bundle files or directories")
    submit.add_argument("--url", required=True, help="witness base URL (http://host:port)")
    submit.add_argument("--producer-key", metavar="PUB.pem",
                        help="the producer's public key: bundles are verified with it before "
                             "submission, and it is sent to witnesses that pin no producer keys")
    submit.add_argument("--witness-key", action="append", metavar="PUB.pem|VKEY",
                        help="verify each receipt with this witness key before writing it "
                             "(repeatable)")
    submit.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS",
                        help="how long each request to the witness may take, its whole "
                             "answer included (default 30)")
    submit.add_argument("--retry-for", type=_retry_for, default=SUBMIT_RETRY_SECONDS,
                        metavar="SECONDS",
                        help="send again the bundles the witness cannot take now, "
                             "waiting (with backoff, or as a 429's or 503's Retry-After "
                             "asks) at most this long in all, each try also taking up "
                             f"to --timeout (default {SUBMIT_RETRY_SECONDS:g}; 0: never)")
    submit.set_defaults(handler=_cmd_submit, subparser=submit)

    lookup = wsub.add_parser(
        "lookup", help="list what a witness logged for a trace, against the bundles given",
        description="Ask the witness for every entry of TRACE_ID, verify each entry's "
                    "receipt with the pinned witness key, and, with bundles given, check "
                    "that every entry is among them and every bundle of the trace is "
                    "logged: the later segments or second histories that offline "
                    "verification cannot know of.",
        epilog="Exit status: 0 every entry verified (and, with bundles, each among them "
               "and each of them logged), 1 an entry whose receipt did not verify, an "
               "entry in conflict, an entry not among the bundles, a bundle of the trace "
               "not logged or not readable, 2 usage error, 3 the witness is unreachable "
               "or answered with a redirect, a 5xx or malformed HTTP.",
    )
    lookup.add_argument("trace", metavar="TRACE_ID", help="the trace id (32 hex digits)")
    lookup.add_argument("bundles", nargs="*", metavar="BUNDLE|DIR",
                        help="the bundles handed over (files or directories)")
    lookup.add_argument("--url", required=True, help="witness base URL (http://host:port)")
    lookup.add_argument("--witness-key", action="append", required=True,
                        metavar="PUB.pem|VKEY", help="pinned witness key (repeatable)")
    lookup.add_argument("--origin", metavar="NAME", help="pin the log's origin")
    lookup.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS",
                        help="how long each request to the witness may take, its whole "
                             "answer included (default 30)")
    lookup.set_defaults(handler=_cmd_lookup, subparser=lookup)

    monitor = subparsers.add_parser(
        "monitor", help="check a witness for forks and rollbacks",
        description="Fetch the witness's latest checkpoint, verify it with the pinned key, "
                    "check it extends the one remembered in --state, and remember it.",
        epilog="Exit status: 0 consistent, 1 an ALERT (fork or rollback, evidence saved "
               "beside --state) or a check that failed, 2 usage error, 3 the witness is "
               "unreachable or answered with a redirect, a 5xx or malformed HTTP.",
    )
    monitor.add_argument("--url", required=True, help="witness base URL (http://host:port)")
    monitor.add_argument("--state", required=True, metavar="FILE",
                         help="where the last verified checkpoint is remembered")
    monitor.add_argument("--witness-key", action="append", required=True,
                         metavar="PUB.pem|VKEY", help="pinned witness key (repeatable)")
    monitor.add_argument("--origin", metavar="NAME", help="pin the log's origin")
    monitor.add_argument(
        "--receipts", action="append", default=[], metavar="RECEIPT|DIR",
        help="also check that these receipts' checkpoints (every *.receipt.json and "
             "*.receipt.conflict-<16 hex>.json under a directory) are consistent with "
             "the witness's latest (repeatable)",
    )
    monitor.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS",
                        help="how long each request to the witness may take, its whole "
                             "answer included (default 30)")
    monitor.set_defaults(handler=_cmd_monitor, subparser=monitor)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``witness ...`` or ``monitor ...`` (for tests and ``python -m spanproof.witness``)."""
    parser = argparse.ArgumentParser(prog="spanproof")
    add_commands(parser.add_subparsers(dest="command", metavar="{witness,monitor}", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with writing_stdout():
            status: int = args.handler(args)
    except KeyboardInterrupt:  # as the ``spanproof`` command does
        return EXIT_INTERRUPTED
    except StdoutError as e:  # as the ``spanproof`` command does
        return _fail(f"cannot write to standard output: {e}", EXIT_FAILED)
    return status
