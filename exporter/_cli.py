"""The producer commands of the ``spanproof`` command line: ``keygen``, ``demo``, ``receiver``.

Private.  ``spanproof.verifier._cli`` parses the arguments and imports this module
only when one of these commands runs, so verifying never imports OpenTelemetry.
Each command returns its exit status: 0 success, 1 failure.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from spanproof.examples.support_agent import SAMPLE_CASES, Outcome, run_case
from spanproof.verifier import TrustRoot, find_bundles
from spanproof.verifier._cli import (
    EXIT_USAGE,
    BundleResult,
    UsageError,
    check_path,
    format_link,
    format_result,
    link_results,
)
from spanproof.verifier._gc import collecting_rarely
from spanproof.verifier._settings import parse_decimal
from spanproof.verifier._term import printable
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.tree import render_tree
from spanproof.verifier.verify import Verdict

from ._disabled import SDK_DISABLED_VAR
from ._exporter import SpanproofSpanExporter
from ._malloc import limit_malloc_arenas
from ._untraced import own_thread
from .config import ENV_PREFIX, MAX_DURATION_SECONDS, MAX_SEALING_PROCESSES
from .keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, SigningKey

if TYPE_CHECKING:
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

    from .otlp_server import GrpcServer, HttpServer, IngestResult, ServerTLS
    from .receiver import Receiver

__all__ = ["demo", "keygen", "receiver"]

_PROG = "spanproof"
# How often the receiver's main thread wakes to run signal handlers (see _serve_receiver).
_SIGNAL_POLL_SECONDS = 0.25


def _error(message: str) -> None:
    # Messages quote paths and values as given: control characters are escaped, as
    # the verifier's and the witness's commands escape them.
    print(f"{_PROG}: error: {printable(message)}", file=sys.stderr)


def keygen(out: str, *, force: bool = False) -> int:
    """``spanproof keygen --out DIR``: write a new key pair and print its key id.

    Refuses to replace an existing key unless *force*.  Every refusal, writing no
    key, exits 2, as a place the command cannot use does (SPEC §12.10, and
    ``witness keygen``): 1 is the status of a check that failed.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        # makedirs() would raise FileExistsError, taken below for an existing key.
        _error(f"cannot write the key to {out}: not a directory (--out takes the "
               "directory for signing.key and signing.pub)")
        return EXIT_USAGE
    priv = os.path.join(out, PRIVATE_KEY_NAME)
    pub = os.path.join(out, PUBLIC_KEY_NAME)
    existing = [p for p in (priv, pub) if os.path.exists(p)]
    if existing and not force:
        _error(f"{existing[0]} already exists; not replacing a key "
               "(bundles it signed would no longer verify with the new one). "
               "Use --force to replace it.")
        return EXIT_USAGE
    key = SigningKey.generate()
    try:
        priv, pub = key.write(out, exist_ok=force)
    except FileExistsError:
        _error(f"{priv} already exists; use --force to replace it")
        return EXIT_USAGE
    except OSError as e:
        _error(f"cannot write the key to {out}: {e.strerror or e}")
        return EXIT_USAGE
    print(f"key id       {key.keyid}")
    # The file names as given, their control characters escaped (a name holding
    # an escape sequence could set the terminal's title or move its cursor).
    print(printable(f"private key  {priv}  (mode 0600: for the producer, "
                    "e.g. OTEL_EXPORTER_SPANPROOF_KEY_FILE)"))
    print(printable(f"public key   {pub}  (for verifiers: "
                    f"{_PROG} verify --key {shlex.quote(pub)} BUNDLES)"))
    return 0


def _demo_key(keys_dir: str) -> tuple[SigningKey, str]:
    """Reuse ``keys_dir/signing.key`` or create it; return the key and what happened."""
    priv = os.path.join(keys_dir, PRIVATE_KEY_NAME)
    if os.path.exists(priv):
        key = SigningKey.load(priv)
        pub_path = os.path.join(keys_dir, PUBLIC_KEY_NAME)
        if not os.path.exists(pub_path):
            key.write(keys_dir, exist_ok=True)
        return key, "reused"
    try:
        key = SigningKey.generate()
        key.write(keys_dir)
    except FileExistsError:  # another demo run created it meanwhile
        return SigningKey.load(priv), "reused"
    return key, "created"


class _DemoExporter(SpanproofSpanExporter):
    """The exporter on its defaults, whatever ``OTEL_EXPORTER_SPANPROOF_*`` says: the
    demo's bundles always hold the same spans, stored in clear, and nothing is sent
    to a witness or sealed in another process."""

    _environ: Mapping[str, str] | None = {}


# OpenTelemetry's default span limits, given as values: SpanLimits() reads the
# OTEL_*_LIMIT variables for each one not given (and SpanLimits.UNSET: no limit on
# the length of values), so a shell exporting OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=2 cut
# the demo's spans to two attributes, and its selection with them.
_DEMO_SPAN_LIMITS = {
    "max_attributes": 128, "max_events": 128, "max_links": 128,
    "max_span_attributes": 128, "max_event_attributes": 128, "max_link_attributes": 128,
    "max_attribute_length": SpanLimits.UNSET, "max_span_attribute_length": SpanLimits.UNSET,
}


def _demo_resource() -> Resource:
    """What ``Resource.create({"service.name": "support-agent"})`` holds in a shell
    with no ``OTEL_*`` variable; ``Resource.create`` reads OTEL_RESOURCE_ATTRIBUTES,
    OTEL_SERVICE_NAME and OTEL_EXPERIMENTAL_RESOURCE_DETECTORS."""
    from opentelemetry.sdk.version import __version__ as sdk_version

    return Resource({
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_INSTANCE_ID: str(uuid.uuid4()),  # as the SDK's detector: one per run
        SERVICE_NAME: "support-agent",
    })


def _run_cases(bundles_dir: str, key_file: str) -> list[Outcome]:
    """Run every sample case under a tracer provider exporting to spanproof; seal all."""
    exporter = _DemoExporter(output_dir=bundles_dir, key_file=key_file)
    # Every case traced, whatever OTEL_TRACES_SAMPLER or OTEL_SDK_DISABLED says: the
    # demo is not an instrumented application, and a disabled provider makes no span
    # (the demo then failed, "no bundle was written").  The provider reads the
    # variable once, here.  Span limits and resource given, not read from the shell.
    disabled = os.environ.pop(SDK_DISABLED_VAR, None)
    try:
        provider = TracerProvider(
            sampler=ALWAYS_ON, resource=_demo_resource(),
            span_limits=SpanLimits(**_DEMO_SPAN_LIMITS), shutdown_on_exit=False,
        )
    finally:
        if disabled is not None:
            os.environ[SDK_DISABLED_VAR] = disabled
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("spanproof.examples.support_agent")
    try:
        return [run_case(tracer, case) for case in SAMPLE_CASES]
    finally:
        provider.shutdown()  # seals and writes every pending trace


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def demo(out: str) -> int:
    """``spanproof demo --out DIR``: trace, certify and verify the support-case agent.

    Writes ``DIR/keys/signing.key`` and ``signing.pub`` (reused when present) and
    ``DIR/bundles/*.spanproof.json``, verifies the bundles written by this run with
    the public key, and prints each trace's tree and verify line.  Exit 0 only when
    every one verified.

    Raises:
        UsageError: *out* cannot hold the demo's key (it cannot be created, or holds
            a key file that cannot be used).
    """
    keys_dir = os.path.join(out, "keys")
    bundles_dir = os.path.join(out, "bundles")
    started = time.monotonic()
    priv = os.path.join(keys_dir, PRIVATE_KEY_NAME)
    pub = os.path.join(keys_dir, PUBLIC_KEY_NAME)
    try:
        key, how = _demo_key(keys_dir)
        trust = TrustRoot.from_pem_files([pub])
    except (OSError, InvalidKey) as e:
        # A place the command was given and cannot use: a usage error, as for every
        # command (README, Keys), not a failed run.
        raise UsageError(f"--out {out}: cannot set up the demo key in {keys_dir}: {e}") from None
    before = set(find_bundles([bundles_dir])) if os.path.isdir(bundles_dir) else set()

    try:
        outcomes = _run_cases(bundles_dir, priv)
    except (ValueError, OSError) as e:  # a bad OTEL_EXPORTER_SPANPROOF_* value, disk
        _error(f"cannot run the demo: {e}")
        return 1
    written = sorted(set(find_bundles([bundles_dir])) - before)
    results = [check_path(path, trust, keep_records=True) for path in written]

    print("spanproof demo: a support-case agent traced with OpenTelemetry, certified by "
          "spanproof, verified offline")
    print(printable(f"  signing key  {priv}  ({how}; key id {key.keyid[:16]}...)"))
    print(printable(f"  public key   {pub}  (all an auditor needs, with the bundles)"))
    print(printable(f"  bundles      {bundles_dir}"))
    if any(name.upper().startswith(ENV_PREFIX) for name in os.environ):
        print(f"  settings     the demo's own: it ignores the {ENV_PREFIX}* variables set here")
    ok = True
    shown: set[str] = set()
    for case, outcome in zip(SAMPLE_CASES, outcomes, strict=True):
        decision = outcome.decision
        where = f" to {decision.queue}" if decision.escalated else ""
        print()
        print(f"case {case.case_id} \"{case.subject}\": intent {outcome.intent}, "
              f"{decision.action}{where} ({decision.rule})")
        mine = [r for r in results if _trace_of(r) == outcome.trace_id]
        if not mine:
            print(f"FAIL trace {outcome.trace_id}: no bundle was written for it")
            ok = False
        for result in mine:
            shown.add(result.path)
            records = result.report.records if result.report is not None else None
            if records:
                print(_indent(render_tree(records)))
            print(format_result(result))
            ok = ok and result.verdict is Verdict.OK
    for result in results:
        if result.path not in shown:
            print(format_result(result))
            ok = ok and result.verdict is Verdict.OK
    for link in link_results(results):
        if len(link.segments) > 1 or not link.ok:
            print(format_link(link))
        ok = ok and link.ok

    print()
    older = len(before)
    verdict = "all verified" if ok else "NOT all verified"
    print(printable(f"{len(outcomes)} cases, {len(written)} bundles written, {verdict} "
                    f"with {pub} ({time.monotonic() - started:.2f} s)."))
    if older:
        print(printable(f"{older} bundle(s) from earlier runs are also in {bundles_dir}."))
    print("Verify them yourself, offline, with only the public key:")
    print(printable(f"  {_PROG} verify --key {shlex.quote(pub)} {shlex.quote(bundles_dir)}"))
    print("Change one character inside any record of a bundle and run it again: it fails.")
    return 0 if ok else 1


def _trace_of(result: BundleResult) -> str | None:
    stmt = result.report.statement if result.report is not None else None
    return stmt.trace_id if stmt is not None else None



# ------------------------------------------------------------------------ receiver


def _address(flag: str, value: str) -> str:
    """Check a ``HOST:PORT`` flag value (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    try:
        number = parse_decimal(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise UsageError(f"{flag} must be HOST:PORT (port 0-65535, 0 = any free port), "
                         f"got {value!r}")
    return value


def _keys(flag: str, value: str | None, hint: str) -> list[str] | None:
    """The comma-separated keys of *flag* (None when not given).

    Raises:
        UsageError: *value* names no key.
    """
    if value is None:
        return None
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise UsageError(f"{flag} must list at least one attribute key, got {value!r} "
                         f"({hint})")
    return keys


def receiver(
    *,
    grpc: str = "127.0.0.1:4317",
    http: str | None = "127.0.0.1:4318",
    out: str | None = None,
    key: str | None = None,
    select_attributes: str | None = None,
    select_all: bool | None = None,
    seal_grace_ms: int | None = None,
    idle_timeout_ms: int | None = None,
    max_records: int | None = None,
    max_pending_traces: int | None = None,
    max_message_bytes: int | None = None,
    max_backlog_spans: int | None = None,
    witness_url: str | None = None,
    witness_key: str | None = None,
    redact_attributes: str | None = None,
    max_value_bytes: int | None = None,
    journal_dir: str | None = None,
    sealing_processes: int = 0,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
) -> int:
    """``spanproof receiver``: serve OTLP/gRPC (and OTLP/HTTP) and certify what arrives.

    With *tls_cert* and *tls_key* both ports serve TLS only, and with *tls_client_ca*
    they require client certificates issued by that CA (see ``ServerTLS``).

    Flags override the ``OTEL_EXPORTER_SPANPROOF_*`` variables.  Its ports are bound
    once every argument is checked, before the output directory or a key is created:
    one it cannot listen on exits 1 creating nothing.  Listens at once, but
    answers ``UNAVAILABLE`` (and its health checks ``NOT_SERVING``) until it has sealed
    what an earlier receiver's journal holds; then prints one line per listening
    address, and runs until SIGTERM or SIGINT, when it stops accepting,
    seals everything pending (reason ``shutdown``) and exits 0 (1 when something
    could not be sealed: it stays in the journal for the next start).

    Raises:
        UsageError: a malformed flag or setting, an unusable key file, or a
            *select_attributes* or *redact_attributes* that names no key (exit 2).
    """
    # First, before the seconds of imports and set-up: a SIGTERM then (a service
    # manager stopping it as it starts) killed the process, exit status -15 where a
    # clean stop is promised; now the receiver starts, stops and exits 0.
    stop = threading.Event()
    hangups = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        hangups.set()  # acted on by the main loop, not in the handler

    previous: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    # SIGHUP, a daemon's "read your files again": the TLS files, at the next
    # connection.  Its default action killed the receiver at once, nothing sealed.
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        return _receiver_until_stopped(
            stop, hangups, previous, grpc, http, out, key, select_attributes, select_all,
            seal_grace_ms, idle_timeout_ms, max_records, max_pending_traces,
            max_message_bytes, max_backlog_spans, witness_url, witness_key,
            redact_attributes, max_value_bytes, journal_dir, sealing_processes, tls_cert,
            tls_key, tls_client_ca)
    finally:  # _serve_receiver puts them back before it seals; an early exit here
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _receiver_until_stopped(
    stop: threading.Event, hangups: threading.Event, previous: dict[int, Any],
    grpc: str, http: str | None, out: str | None, key: str | None,
    select_attributes: str | None, select_all: bool | None, seal_grace_ms: int | None,
    idle_timeout_ms: int | None, max_records: int | None, max_pending_traces: int | None,
    max_message_bytes: int | None, max_backlog_spans: int | None,
    witness_url: str | None, witness_key: str | None, redact_attributes: str | None,
    max_value_bytes: int | None, journal_dir: str | None, sealing_processes: int,
    tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None,
) -> int:
    """:func:`receiver` once its signal handlers are in place."""
    from .otlp_server import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES
    from .receiver import Receiver

    grpc = _address("--grpc", grpc)
    if http is not None:
        http = _address("--http", http)
    # Given, but naming no key (an unset shell variable, say): selecting only spans
    # marked spanproof.evidence would lose the rest without a word, and redacting
    # nothing would store the very values the flag was given to hide.
    selected = _keys("--select-attributes", select_attributes,
                     "leave it out for the default keys; --select-all certifies every span")
    redacted = _keys("--redact-attributes", redact_attributes,
                     "leave it out to redact nothing")
    # A year at most: a longer wait would never seal, and a huge one overflows a float.
    year = (MAX_DURATION_SECONDS * 1000, " (a year)")
    for flag, number, minimum, maximum in (
            ("--seal-grace-ms", seal_grace_ms, 0, year),
            ("--idle-timeout-ms", idle_timeout_ms, 0, year),
            ("--max-records", max_records, 1, None),
            ("--max-pending-traces", max_pending_traces, 1, None),
            ("--max-message-bytes", max_message_bytes, 1024, (MAX_MESSAGE_BYTES, " (2 GiB - 1)")),
            ("--max-value-bytes", max_value_bytes, 1024, None),
            ("--max-backlog-spans", max_backlog_spans, 1, None),
            ("--sealing-processes", sealing_processes, 0, (MAX_SEALING_PROCESSES, ""))):
        if number is not None and number < minimum:
            raise UsageError(f"{flag} must be an integer >= {minimum}, got {number}")
        if number is not None and maximum is not None and number > maximum[0]:
            raise UsageError(f"{flag} must be at most {maximum[0]}{maximum[1]}, got {number}")
    tls = _server_tls(tls_cert, tls_key, tls_client_ca)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Before the receiver's threads allocate: one malloc arena for all of them.
    limit_malloc_arenas()
    backlog: dict[str, Any] = (
        {} if max_backlog_spans is None else {"max_backlog_spans": max_backlog_spans}
    )
    served = _Deferred()
    servers: list[GrpcServer | HttpServer] = []

    def listen() -> None:
        # Every argument is checked, and nothing is created yet: a port that cannot
        # be listened on leaves no output directory, and no generated key, behind.
        limit = DEFAULT_MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
        try:
            servers.extend(_transports(served, grpc, http, limit, tls))
        except (OSError, RuntimeError, ValueError) as e:
            raise _CannotListen(str(e)) from e

    try:
        try:
            service = Receiver(
                output_dir=out,
                key_file=key,
                select_attributes=selected,
                select_all=select_all,
                seal_grace=None if seal_grace_ms is None else seal_grace_ms / 1000,
                idle_timeout=None if idle_timeout_ms is None else idle_timeout_ms / 1000,
                max_records=max_records,
                max_pending_traces=max_pending_traces,
                witness_url=witness_url,
                witness_key=witness_key,
                redact_attributes=redacted,
                max_value_bytes=max_value_bytes,
                journal_dir=journal_dir,
                sealing_processes=sealing_processes,
                before_creating=listen,
                **backlog,
            )
            served.receiver = service
        except BaseException:
            for server in servers:
                server.stop(0)  # bound, never started
            raise
    except _CannotListen as e:
        _error(f"cannot listen: {e}")
        return 1
    except (ValueError, InvalidKey) as e:
        given = {"output_dir": out, "key_file": key, "witness_url": witness_url,
                 "witness_key": witness_key, "journal_dir": journal_dir}
        raise UsageError(_named_by_flag(str(e), given)) from None
    except OSError as e:
        _error(f"cannot set up the receiver: {e}")
        return 1

    with collecting_rarely():
        return _serve_receiver(service, servers, stop, previous, tls, hangups)


class _CannotListen(Exception):
    """A port of ``spanproof receiver`` cannot be listened on (the message says why)."""


class _Deferred:
    """The receiver, to its servers: they are bound before it is built (so that a
    port that cannot be listened on leaves nothing behind) and started once it is.
    Until :attr:`receiver` is set (a server stopped unstarted starts for an instant)
    requests are refused as UNAVAILABLE."""

    receiver: Receiver | None = None

    def _built(self) -> Receiver:
        from .otlp_server import Unavailable

        if self.receiver is None:
            raise Unavailable("receiver is starting")
        return self.receiver

    def __call__(self, resource_spans: Sequence[ResourceSpans]) -> IngestResult:
        return self._built()(resource_spans)

    def not_serving(self) -> str | None:
        return "receiver is starting" if self.receiver is None else self.receiver.not_serving()

    def check_accepting(self) -> None:
        self._built().check_accepting()


_SETTING_FLAGS = {"output_dir": "--out", "key_file": "--key", "witness_url": "--witness-url",
                  "witness_key": "--witness-key", "journal_dir": "--journal-dir"}
_SETTING_NAMED = re.compile(r"^spanproof exporter setting ([a-z_]+)(?: \(OTEL_[A-Z_]+\))?")


def _named_by_flag(message: str, given: dict[str, str | None]) -> str:
    """*message* of the receiver's refused setting, naming the flag that gave it
    (``--key``) rather than the exporter's setting and variable, which the user of
    the command may never have set; a value from the variable keeps its name."""
    match = _SETTING_NAMED.match(message)
    if match is None or given.get(match.group(1)) is None:
        return message
    return _SETTING_FLAGS[match.group(1)] + message[match.end():]


def _server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTLS | None:
    """The receiver's TLS from its flags, checked now (a usage error, not a failure
    once the journal is being recovered).

    Raises:
        UsageError: one of ``--tls-cert`` and ``--tls-key`` without the other,
            ``--tls-client-ca`` without them, or a file that cannot be used.
    """
    from .otlp_server import ServerTLS

    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        if client_ca is not None:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    tls = ServerTLS(cert, key, client_ca)
    try:
        tls.ssl_context()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return tls


def _transports(
    service: Receiver | _Deferred, grpc: str, http: str | None, max_message_bytes: int,
    tls: ServerTLS | None = None,
) -> list[GrpcServer | HttpServer]:
    """The receiver's OTLP/gRPC (and OTLP/HTTP) servers, listening but not started;
    their health checks answer from ``service.not_serving``, and a request is
    refused undecoded by ``service.check_accepting``.  When one cannot be made,
    none is left listening.

    Raises:
        OSError, RuntimeError, ValueError: a port cannot be listened on.
    """
    from .otlp_server import GrpcServer, HttpServer

    servers: list[GrpcServer | HttpServer] = [
        GrpcServer(grpc, service, max_message_bytes=max_message_bytes,
                   health=service.not_serving, admission=service.check_accepting, tls=tls)]
    if http is not None:
        try:
            servers.append(HttpServer(http, service, max_message_bytes=max_message_bytes,
                                      health=service.not_serving,
                                      admission=service.check_accepting, tls=tls))
        except BaseException:
            servers[0].stop(0)
            raise
    return servers


def _stop_servers(servers: Sequence[GrpcServer | HttpServer]) -> None:
    """Stop *servers* together: each stops accepting at once, and the requests in
    flight on all of them finish within one grace (each stop waited for its own in
    turn, so a SIGTERM took both graces before sealing began).  One whose stop cannot
    have a thread of its own is stopped on this one, after the first.

    Raises:
        BaseException: what a server's stop raised, once every stop has returned.
    """
    failures: list[BaseException] = []

    def stop(server: GrpcServer | HttpServer) -> None:
        try:
            server.stop()
        except BaseException as e:  # raised on the caller's thread, below
            failures.append(e)

    others: list[threading.Thread] = []
    later: list[GrpcServer | HttpServer] = []
    for server in servers[1:]:
        thread = own_thread(stop, "spanproof-stop", (server,))
        try:
            thread.start()
        except RuntimeError:  # no thread to be had
            later.append(server)
        else:
            others.append(thread)
    for server in [*servers[:1], *later]:
        stop(server)
    for thread in others:
        thread.join()  # each stop returns within its grace and a second
    if failures:
        raise failures[0]


def _serve_receiver(
    service: Receiver,
    servers: list[GrpcServer | HttpServer],
    stop: threading.Event,
    previous: dict[int, Any],
    tls: ServerTLS | None = None,
    hangups: threading.Event | None = None,
) -> int:
    """Serve on *servers* (made by `_transports` for *service*: listening, not
    started) until *stop* is set, stop them, then seal everything; the exit status.
    Each time *hangups* is set (SIGHUP), the TLS files are looked at on the next
    connection."""
    from .otlp_server import read_tls_files_again

    try:
        # Listening while the journal is recovered (which takes seconds for a large
        # one), requests get UNAVAILABLE with a retry delay and health checks
        # NOT_SERVING, instead of a refused connection that a liveness probe counts
        # as a failure.
        for server in servers:
            server.start()
        try:
            recovered = service.start()
        except OSError as e:
            _error(f"cannot recover or open the journal in {service.journal_dir}: {e}")
            return 1
        if recovered:
            print(f"recovered    {len(recovered)} bundle(s) from an earlier receiver's journal",
                  flush=True)
        print(printable(f"spanproof receiver: key id {service.keyid[:16]}..., bundles in "
                        f"{service.config.output_dir}"), flush=True)
        if tls is not None:
            print("tls          " + ("on" if tls.client_ca_file is None
                                     else "on, client certificates required"), flush=True)
        print(f"otlp-grpc    {servers[0].host}:{servers[0].port}", flush=True)
        if len(servers) > 1:
            print(f"otlp-http    {servers[1].host}:{servers[1].port}", flush=True)
        # A signal delivered to one of the servers' threads runs its handler only
        # when this (the main) thread runs Python code: wake up now and then.
        while not stop.wait(_SIGNAL_POLL_SECONDS):
            if hangups is not None and hangups.is_set():
                hangups.clear()
                if tls is None:
                    print("SIGHUP: no TLS files to read again", flush=True)
                else:
                    read_tls_files_again()
                    print("SIGHUP: TLS files looked at on the next connection", flush=True)
    finally:
        _stop_servers(servers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    done = service.shutdown()
    print("receiver stopped: everything sealed" if done
          else "receiver stopped: some spans not sealed (kept in the journal)", flush=True)
    return 0 if done else 1
