"""A constructor that refuses one of its later arguments leaves the file system as it
was: every argument is checked before the output directory is created or a signing
key generated.  (They were created first: a refused ``key_file``, ``witness_key``,
``journal_dir`` or ``sealing_process`` with a custom clock left an output directory
behind, with a freshly generated key in it, and the log said a key was generated.)
So does ``spanproof receiver`` that cannot listen on a port: it binds its ports once
every argument is checked, before it creates anything."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter
from spanproof.exporter._setup import check_directory, writable_directory
from spanproof.exporter.config import ENV_PREFIX
from spanproof.exporter.keys import SigningKey
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier._cli import main
from spanproof.verifier.errors import InvalidKey


def _tree(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, name), root)
                  for d, dirs, files in os.walk(root) for name in dirs + files)


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Paths for the arguments: a fresh output path (its parent missing too), files
    that cannot be used; no OTEL_EXPORTER_SPANPROOF_* variable set."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    (tmp_path / "not-a-key").write_text("not a key\n")
    (tmp_path / "a-file").write_text("")
    return {
        "out": str(tmp_path / "new" / "out"),
        "missing": str(tmp_path / "missing.pem"),
        "not_a_key": str(tmp_path / "not-a-key"),
        "under_a_file": str(tmp_path / "a-file" / "journal"),
    }


def _refuse() -> None:
    raise ConnectionRefusedError("refused by its caller")


Make = Callable[[dict[str, str]], Any]
CASES: dict[str, tuple[Make, type[Exception]]] = {
    "exporter, key_file missing": (
        lambda p: SpanproofSpanExporter(p["out"], p["missing"]), InvalidKey),
    "exporter, key_file not a key": (
        lambda p: SpanproofSpanExporter(p["out"], p["not_a_key"]), InvalidKey),
    "exporter, witness_key missing": (
        lambda p: SpanproofSpanExporter(p["out"], witness_key=p["missing"]), InvalidKey),
    "exporter, sealing_process with a clock": (
        lambda p: SpanproofSpanExporter(p["out"], sealing_process=True, clock=lambda: 0.0),
        ValueError),
    "exporter, sealing_process with a sink": (
        lambda p: SpanproofSpanExporter(p["out"], sealing_process=2,
                                        sink=DirectorySink(p["out"])), ValueError),
    "processor, key_file missing": (
        lambda p: EvidenceSpanProcessor(p["out"], p["missing"]), InvalidKey),
    "processor, witness_key missing": (
        lambda p: EvidenceSpanProcessor(p["out"], witness_key=p["missing"]), InvalidKey),
    "processor, journal_dir under a file": (
        lambda p: EvidenceSpanProcessor(p["out"], journal_dir=p["under_a_file"]),
        ValueError),
    "receiver, key_file missing": (
        lambda p: Receiver(p["out"], p["missing"]), InvalidKey),
    "receiver, witness_key missing": (
        lambda p: Receiver(p["out"], witness_key=p["missing"]), InvalidKey),
    "receiver, journal_dir under a file": (
        lambda p: Receiver(p["out"], journal_dir=p["under_a_file"]), ValueError),
    "receiver, before_creating refuses": (
        lambda p: Receiver(p["out"], before_creating=_refuse), ConnectionRefusedError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_later_argument_creates_no_output_directory_or_key(
    tmp_path: Path, place: dict[str, str], case: str
) -> None:
    make, error = CASES[case]
    before = _tree(tmp_path)
    with pytest.raises(error):
        make(place)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("variable", ["KEY_FILE", "WITNESS_KEY"])
def test_refused_variable_creates_no_output_directory_or_key(
    tmp_path: Path, place: dict[str, str], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(ENV_PREFIX + variable, place["missing"])
    before = _tree(tmp_path)
    for make in (SpanproofSpanExporter, EvidenceSpanProcessor, Receiver):
        with pytest.raises(InvalidKey, match=variable):
            make(place["out"])
        assert _tree(tmp_path) == before, make


@pytest.mark.parametrize(("flag", "value"), [
    ("--key", "missing"), ("--witness-key", "missing"), ("--journal-dir", "under_a_file"),
])
def test_refused_receiver_flag_creates_no_output_directory_or_key(
    tmp_path: Path, place: dict[str, str], capsys: pytest.CaptureFixture[str],
    flag: str, value: str,
) -> None:
    before = _tree(tmp_path)
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", place["out"], flag, place[value]])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith(f"spanproof: error: {flag}")
    assert _tree(tmp_path) == before


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _receiver_on_a_taken_port(
    taken_flag: str, port: int, out: str, *args: str
) -> list[str]:
    free = {"--grpc": "127.0.0.1:0", "--http": "127.0.0.1:0"}
    ports = {**free, taken_flag: f"127.0.0.1:{port}"}
    return ["receiver", "--grpc", ports["--grpc"], "--http", ports["--http"], "--out", out,
            *args]


def _state(root: Path) -> dict[str, tuple[int, bytes | None, int | None]]:
    """Every path under *root*: its mode and, for a file, its bytes and mtime."""
    state: dict[str, tuple[int, bytes | None, int | None]] = {}
    for name in _tree(root):
        st = os.lstat(root / name)
        is_file = stat.S_ISREG(st.st_mode)
        state[name] = (st.st_mode, (root / name).read_bytes() if is_file else None,
                       st.st_mtime_ns if is_file else None)
    return state


@pytest.mark.parametrize("taken_flag", ["--grpc", "--http"])
def test_receiver_that_cannot_listen_creates_no_output_directory_or_key(
    tmp_path: Path, place: dict[str, str], capsys: pytest.CaptureFixture[str],
    taken_port: int, taken_flag: str,
) -> None:
    # The receiver was built first (its output directory created, a key generated
    # in it) and its ports bound afterwards: a port in use left both behind.
    before = _tree(tmp_path)
    status = main(_receiver_on_a_taken_port(taken_flag, taken_port, place["out"]))
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("spanproof: error: cannot listen: "), err
    assert _tree(tmp_path) == before


def test_receiver_that_cannot_listen_on_http_frees_the_grpc_port_it_bound(
    tmp_path: Path, place: dict[str, str], capsys: pytest.CaptureFixture[str],
    taken_port: int,
) -> None:
    # gRPC's stop() does nothing to a server never started: the gRPC port, bound
    # before the HTTP port was found taken, stayed bound until the process ended.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    argv = ["receiver", "--grpc", f"127.0.0.1:{grpc_port}",
            "--http", f"127.0.0.1:{taken_port}", "--out", place["out"]]
    assert main(argv) == 1, capsys.readouterr().err
    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))  # OSError (in use) while still bound


def test_a_request_before_the_receiver_is_built_is_unavailable() -> None:
    # A server stopped unstarted starts for an instant: a request then got an
    # AttributeError (gRPC's UNKNOWN), not "try again".
    from spanproof.exporter._cli import _Deferred
    from spanproof.exporter.otlp_server import Unavailable

    deferred = _Deferred()
    assert deferred.not_serving() == "receiver is starting"
    with pytest.raises(Unavailable, match="receiver is starting"):
        deferred.check_accepting()
    with pytest.raises(Unavailable, match="receiver is starting"):
        deferred([])


@pytest.mark.parametrize("taken_flag", ["--grpc", "--http"])
def test_receiver_with_a_refused_flag_and_a_port_in_use_is_a_usage_error(
    tmp_path: Path, place: dict[str, str], capsys: pytest.CaptureFixture[str],
    taken_port: int, taken_flag: str,
) -> None:
    # The ports are bound once every argument is checked: the flag to correct is
    # named first, as it was when they were bound after the receiver was built.
    before = _tree(tmp_path)
    status = main(_receiver_on_a_taken_port(taken_flag, taken_port, place["out"],
                                            "--key", place["missing"]))
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("spanproof: error: --key"), err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("taken_flag", ["--grpc", "--http"])
@pytest.mark.parametrize("given_key", [False, True])
def test_receiver_that_cannot_listen_leaves_an_existing_directory_and_key_as_they_were(
    tmp_path: Path, place: dict[str, str], capsys: pytest.CaptureFixture[str],
    taken_port: int, taken_flag: str, given_key: bool,
) -> None:
    # An output directory with its generated key (and no journal directory yet),
    # or a key given with --key; nothing in either is created, changed or removed.
    out = Path(place["out"])
    SigningKey.generate().write(out / "keys")
    args = ["--key", str(out / "keys" / "signing.key")] if given_key else []
    before = _state(tmp_path)
    status = main(_receiver_on_a_taken_port(taken_flag, taken_port, str(out), *args))
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("spanproof: error: cannot listen: "), err
    assert _state(tmp_path) == before


def test_the_same_arguments_once_corrected_construct(
    tmp_path: Path, place: dict[str, str]
) -> None:
    # What was refused above is refused for the argument, not for the place.
    Receiver(place["out"], journal_dir=str(tmp_path / "journal")).shutdown()
    assert "keys/signing.key" in _tree(tmp_path / "new" / "out")
    assert os.path.isdir(tmp_path / "journal")


@pytest.mark.parametrize("shape", [
    "missing", "missing, parent missing", "a file", "under a file", "under a file, deeper",
    "a dangling link", "a link to a directory", "a directory",
])
def test_check_directory_refuses_what_writable_directory_refuses(
    tmp_path: Path, shape: str
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.symlink(tmp_path / "dir", tmp_path / "dirlink")
    path = str(tmp_path / {
        "missing": "new", "missing, parent missing": "new/deeper", "a file": "file",
        "under a file": "file/sub", "under a file, deeper": "file/sub/deeper",
        "a dangling link": "dangling", "a link to a directory": "dirlink",
        "a directory": "dir",
    }[shape])
    def refusal(check: Callable[[str, str], None]) -> str | None:
        try:
            check(path, "journal_dir")
        except ValueError as e:
            return str(e)
        return None

    before = _tree(tmp_path)
    checked = refusal(check_directory)
    assert _tree(tmp_path) == before  # checking created nothing
    assert checked == refusal(writable_directory)
