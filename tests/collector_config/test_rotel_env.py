"""collector_config/rotel.env as shipped: rotel-agent started with exactly its variables
(only the ports moved to free ones), in front of a receiver started as its comment
says, carries a stock OTLP exporter's spans into bundles that verify; and the flags
form its comment (and README) gives is the same settings, flag for flag."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from processes import free_port, rotel_agent, wait_for

from benchmarks.run import rotel_env
from spanproof.exporter import SigningKey
from spanproof.verifier import TrustRoot, Verdict, check_bundle, find_bundles

ROOT = Path(__file__).resolve().parents[2]
ROTEL_ENV = ROOT / "collector_config" / "rotel.env"
README = ROOT / "README.md"

# host:port on loopback, as the file writes every endpoint.
_ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")
# `[env: ROTEL_X=]` under a flag in `rotel-agent start --help`.
_HELP_FLAG = re.compile(r"^\s+(--[a-z0-9-]+)\b(?:(?!\n\s+--).)*?\[env: ([A-Z0-9_]+)=",
                        re.MULTILINE | re.DOTALL)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- what the file says -------------------------------------------------------------


def env_file_variables(text: str) -> dict[str, str]:
    """The NAME=value lines of an env file (comments and blank lines skipped)."""
    variables: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"not NAME=value: {line!r}"
        assert name not in variables, f"{name} set twice"
        variables[name] = value
    return variables


def commented_command(text: str, starts: str) -> list[str]:
    """The words of the command in the file's comments whose first line starts with
    *starts* (after ``#`` and indentation), its backslash continuations joined."""
    lines = [line.removeprefix("#").strip() for line in text.splitlines()
             if line.startswith("#")]
    for i, line in enumerate(lines):
        if line.startswith(starts):
            command = line
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + " " + lines[i]
            return shlex.split(command)
    raise AssertionError(f"no command starting {starts!r} in the comments")


def readme_rotel_command() -> list[str]:
    """README's rotel-agent command (the sh block after **rotel**), joined."""
    text = README.read_text(encoding="utf-8")
    start = text.index('"$ROTEL_AGENT" start', text.index("**rotel**"))
    end = text.index("\n", start)
    while text[end - 1] == "\\":
        end = text.index("\n", end + 1)
    return shlex.split(text[start:end].replace("\\\n", " "))


def flag_values(words: list[str]) -> dict[str, str]:
    """``--flag value`` pairs after ``start``."""
    args = words[words.index("start") + 1:]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2], strict=True))


def moved_ports(value: str, ports: dict[str, int]) -> str:
    """*value* with each loopback port replaced by the free one chosen for it."""
    return _ADDRESS.sub(lambda m: f"127.0.0.1:{ports[m.group(1)]}", value)


def rotel_help() -> str:
    return subprocess.run([rotel_agent(), "start", "--help"], env=rotel_env(),
                          capture_output=True, text=True, timeout=30, check=True).stdout


# -- the checks that need no server ---------------------------------------------------


def test_sourcing_rotel_env_in_sh_sets_exactly_the_variables_parsed_here() -> None:
    # The file is read the way its comment says: `set -a; . collector_config/rotel.env`.
    parsed = env_file_variables(ROTEL_ENV.read_text(encoding="utf-8"))
    out = subprocess.run(["sh", "-c", 'set -a; . "$1"; env', "sh", str(ROTEL_ENV)],
                         env={"PATH": os.defpath}, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    sourced = dict(line.split("=", 1) for line in out.splitlines()
                   if line.startswith("ROTEL_"))
    assert sourced == parsed


def test_rotel_env_flags_form_is_the_same_settings_and_every_flag_exists() -> None:
    text = ROTEL_ENV.read_text(encoding="utf-8")
    variables = env_file_variables(text)
    env_of_flag = dict(_HELP_FLAG.findall(rotel_help()))
    assert "--otlp-exporter-endpoint" in env_of_flag  # the help text was understood
    for name, words in (("rotel.env's comment", commented_command(text, '"$ROTEL_AGENT" start')),
                        ("README", readme_rotel_command())):
        flags = flag_values(words)
        unknown = sorted(set(flags) - set(env_of_flag))
        assert not unknown, f"{name} gives flags rotel-agent start does not have: {unknown}"
        as_variables = {env_of_flag[flag]: value for flag, value in flags.items()}
        assert as_variables == variables, f"{name}'s flags are not rotel.env's settings"
    # And every variable the file sets is one rotel-agent reads.
    assert set(variables) <= set(env_of_flag.values())


# -- end to end -------------------------------------------------------------------------


class Server:
    """A process started with its output in a log file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, **popen: object) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     **popen)  # type: ignore[call-overload]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, port: int, what: str) -> None:
        wait_for(lambda: listening(port) or self.proc.poll() is not None, timeout=60,
                 what=what)
        if self.proc.poll() is not None:
            self.stop()
            pytest.fail(f"{what}: exited with {self.proc.returncode}: {self.log()[-800:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._log.close()
        return code


@pytest.fixture
def ports() -> dict[str, int]:
    """A free loopback port for each port rotel.env and its comment name."""
    ports = sorted(set(_ADDRESS.findall(ROTEL_ENV.read_text(encoding="utf-8"))))
    assert len(ports) == 3, ports  # rotel's gRPC and HTTP, the receiver's gRPC
    return {port: free_port() for port in ports}


@pytest.fixture
def receiver(tmp_path: Path, ports: dict[str, int]) -> Iterator[Server]:
    """`spanproof receiver` as rotel.env's comment starts it, in *tmp_path* (its
    relative --out and --key resolve there), its port moved."""
    words = commented_command(ROTEL_ENV.read_text(encoding="utf-8"), "spanproof receiver")
    args = [moved_ports(word, ports) for word in words[2:]]
    key = args[args.index("--key") + 1]
    SigningKey.from_seed(bytes(range(32))).write(str(tmp_path / os.path.dirname(key)),
                                                 exist_ok=True)
    assert (tmp_path / key).is_file(), key  # the key written is the one it names
    server = Server([sys.executable, "-m", "spanproof.verifier", "receiver", *args],
                    tmp_path / "receiver.log", cwd=tmp_path)
    grpc = args[args.index("--grpc") + 1]
    try:
        server.wait_listening(int(grpc.rsplit(":", 1)[1]), "the receiver to listen")
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.log()


@pytest.fixture
def rotel(tmp_path: Path, ports: dict[str, int], receiver: Server) -> Iterator[str]:
    """rotel-agent started with rotel.env's variables and no other ROTEL_* setting;
    its OTLP/gRPC address."""
    variables = {name: moved_ports(value, ports) for name, value in
                 env_file_variables(ROTEL_ENV.read_text(encoding="utf-8")).items()}
    env = {k: v for k, v in rotel_env().items() if not k.startswith("ROTEL_")}
    server = Server([rotel_agent(), "start"], tmp_path / "rotel.log",
                    env={**env, **variables})
    grpc = variables["ROTEL_OTLP_GRPC_ENDPOINT"]
    try:
        server.wait_listening(int(grpc.rsplit(":", 1)[1]), "rotel-agent to listen")
        yield grpc
    finally:
        server.stop()


def send_traces(endpoint: str, traces: int) -> set[tuple[str, str]]:
    """Send *traces* traces through the SDK's stock OTLP/gRPC exporter; the (trace id,
    span id) of the evidence spans among them."""
    provider = TracerProvider(resource=Resource.create({"service.name": "app"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=50))
    tracer = provider.get_tracer("app")
    evidence: set[tuple[str, str]] = set()
    try:
        for i in range(traces):
            with tracer.start_as_current_span("request"):
                with tracer.start_as_current_span(
                    "chat", attributes={"gen_ai.operation.name": "chat", "i": i},
                ) as span:
                    ctx = span.get_span_context()
                    evidence.add((f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"))
                with tracer.start_as_current_span("db query", attributes={"db.system": "x"}):
                    pass
    finally:
        provider.shutdown()
    return evidence


def certified(out: Path, trust: TrustRoot) -> list[tuple[str, str]]:
    spans = []
    for path in sorted(find_bundles([str(out)])) if out.is_dir() else []:
        report = check_bundle(path, trust, keep_records=True)
        assert report.verdict is Verdict.OK, (path, report.reason)
        assert report.records is not None
        spans.extend((r["span"]["traceId"], r["span"]["spanId"]) for r in report.records)
    return spans


@pytest.mark.slow
def test_rotel_started_with_rotel_env_carries_stock_otlp_spans_into_verified_bundles(
    tmp_path: Path, rotel: str, receiver: Server
) -> None:
    evidence = send_traces(rotel, 10)
    words = commented_command(ROTEL_ENV.read_text(encoding="utf-8"), "spanproof receiver")
    key = words[words.index("--key") + 1]
    trust = TrustRoot.from_pem_files([str(tmp_path / os.path.dirname(key) / "signing.pub")])
    out = tmp_path / "bundles"
    wait_for(lambda: len(certified(out, trust)) >= len(evidence), timeout=90,
             what="every evidence span in a verified bundle")
    assert sorted(certified(out, trust)) == sorted(evidence)
