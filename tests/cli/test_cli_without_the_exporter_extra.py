"""The verifier's commands where only ``pip install .`` was run: no OpenTelemetry,
protobuf, gRPC or PyNaCl (the ``exporter`` extra) and no web stack (``witness``).

Each command runs in a fresh interpreter in which importing those packages fails as
it does where they are not installed.  Verifying works there; the producer's commands
and the exporter say which extra they need instead of failing with a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from cli_support import Keys, MakeBundle, flip_in_record

#: Top-level modules of the ``exporter`` and ``witness`` extras' packages.
NOT_INSTALLED = ("opentelemetry", "google", "grpc", "nacl", "starlette", "uvicorn",
                 "httptools", "uvloop")

_BLOCK = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def __init__(self, tops):
        self.tops = tops

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.tops:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled(set(sys.argv[1].split(","))))
del sys.argv[1]
"""

_CLI = _BLOCK + """
from spanproof.verifier._cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(code: str, *args: str, blocked: tuple[str, ...] = NOT_INSTALLED,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return subprocess.run(
        [sys.executable, "-c", code, ",".join(blocked), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )


def test_verify_show_and_report_run_without_the_producer_s_packages(
    tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    good, _ = make_bundle("good")
    bad, _ = make_bundle("bad", trace_id="5bf92f3577b34da6a3ce929d0e0e4737")
    flip_in_record(bad, record=2)

    verified = _run(_CLI, "verify", "--key", str(keys.pub), str(good))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK {good} ")

    failed = _run(_CLI, "verify", "--key", str(keys.pub), str(good), str(bad))
    assert failed.returncode == 1, failed.stderr
    assert f"FAIL {bad}: record 3: previous-hash mismatch" in failed.stdout

    shown = _run(_CLI, "show", "--key", str(keys.pub), str(good))
    assert shown.returncode == 0, shown.stderr
    assert "verdict   OK" in shown.stdout

    html = tmp_path / "report.html"
    reported = _run(_CLI, "report", "--key", str(keys.pub), "--html", str(html), str(good))
    assert reported.returncode == 0, reported.stderr
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_demo_without_the_exporter_extra_names_it_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = _run(_CLI, "demo", "--out", str(out))
    assert result.returncode == 2
    assert "'spanproof demo' cannot run" in result.stderr
    assert "pip install '.[exporter]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_keygen_without_the_exporter_extra_names_it(tmp_path: Path) -> None:
    result = _run(_CLI, "keygen", "--out", str(tmp_path / "keys"))
    assert result.returncode == 2
    assert "'spanproof keygen' cannot run" in result.stderr
    assert "pip install '.[exporter]'" in result.stderr
    assert not (tmp_path / "keys").exists()


def test_importing_the_exporter_names_the_extra_and_the_missing_package() -> None:
    code = _BLOCK + """
try:
    import spanproof.exporter
except ModuleNotFoundError as e:
    print(e.name)
    print(e)
else:
    print("imported")
"""
    result = _run(code, blocked=("nacl",))
    assert result.returncode == 0, result.stderr
    name, message = result.stdout.splitlines()
    assert name == "nacl"
    assert message.startswith("spanproof's exporter needs 'nacl', which is not installed")
    assert "pip install '.[exporter]'" in message


def test_the_traces_exporter_entry_point_names_the_extra() -> None:
    # What opentelemetry-instrument does with OTEL_TRACES_EXPORTER=spanproof.
    code = _BLOCK + """
from importlib.metadata import entry_points
(point,) = entry_points(group="opentelemetry_traces_exporter", name="spanproof")
try:
    point.load()
except ModuleNotFoundError as e:
    print(e)
"""
    result = _run(code, blocked=("grpc", "google", "nacl"))
    assert result.returncode == 0, result.stderr
    assert "pip install '.[exporter]'" in result.stdout


def test_another_missing_module_is_not_blamed_on_the_extra() -> None:
    # orjson is the plain install's: its absence is a broken install, said as Python says it.
    code = _BLOCK + """
try:
    import spanproof.exporter
except ModuleNotFoundError as e:
    print(e)
"""
    result = _run(code, blocked=("orjson",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "No module named 'orjson'"


def test_the_witness_client_commands_run_without_either_extra(
    tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    good, _ = make_bundle("good")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    key = tmp_path / "witness.key"
    made = _run(_CLI, "witness", "keygen", "--key", str(key), "--origin", "test.example/log")
    assert made.returncode == 0, made.stderr
    assert Path(f"{key}.pub").is_file()

    submitted = _run(_CLI, "witness", "submit", "--url", url, "--retry-for", "0", str(good))
    assert submitted.returncode == 3, submitted.stderr
    assert f"FAIL {good}: cannot reach witness {url}" in submitted.stdout

    monitored = _run(_CLI, "monitor", "--url", url, "--state", str(tmp_path / "state"),
                     "--witness-key", f"{key}.pub")
    assert monitored.returncode == 3, monitored.stderr
    assert f"FAIL {url}: cannot reach witness {url}" in monitored.stdout

    served = _run(_CLI, "witness", "serve", "--key", str(key), "--db", str(tmp_path / "w.db"))
    assert served.returncode == 2
    assert "the witness needs its web stack: pip install '.[witness]'" in served.stderr
