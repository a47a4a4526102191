"""``witness serve --listen HOST:0`` listens on a free port and says which: the line
that announces the witness names the port it bound, so a script can find it."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from witness_helpers import ORIGIN, witness_command, write_private_key


@pytest.mark.timeout(60)
def test_listen_on_port_0_announces_the_port_it_bound(
    tmp_path: Path, witness_private: Any
) -> None:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    proc = subprocess.Popen(
        witness_command("serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "w.db"),
                        "--key", str(key), "--origin", ORIGIN, "--log-level", "warning"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"witness {ORIGIN} on "):
                break
        announced = re.fullmatch(rf"witness {ORIGIN} on http://127\.0\.0\.1:(\d+) \(.*\)\n",
                                 seen[-1] if seen else "")
        assert announced, "".join(seen)
        port = int(announced.group(1))
        assert port != 0
        # It listens there by the time it says so.
        url = f"http://127.0.0.1:{port}/v1/checkpoint"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.status == 200
            assert answer.read().startswith(ORIGIN.encode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(60)
def test_a_port_in_use_is_refused_before_anything_is_made(
    tmp_path: Path, witness_private: Any
) -> None:
    # uvicorn bound last: the database and the key's lock were made before its own
    # "address already in use".  Exit status 3, as another process serving the
    # database or the key: it may be the same witness, still stopping.
    import socket

    key = write_private_key(tmp_path / "witness.key", witness_private)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            witness_command("serve", "--listen", f"127.0.0.1:{port}", "--db",
                            str(tmp_path / "w.db"), "--key", str(key), "--origin", ORIGIN),
            capture_output=True, text=True, timeout=50,
        )
    assert done.returncode == 3, done.stderr
    assert done.stderr.endswith(
        f"spanproof: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"), \
        done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["witness.key", "witness.key.pub"]


def test_a_host_that_is_not_this_machine_s_is_refused(
    tmp_path: Path, witness_private: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from spanproof.witness._cli import main

    key = write_private_key(tmp_path / "witness.key", witness_private)
    status = main(["witness", "serve", "--listen", "no-such-host.invalid:0", "--db",
                   str(tmp_path / "w.db"), "--key", str(key), "--origin", ORIGIN])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("spanproof: error: cannot listen on no-such-host.invalid:0: ")
    assert "while attempting" not in err and "Unknown error" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["witness.key", "witness.key.pub"]


def test_every_address_a_host_name_resolves_to_is_listened_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvicorn bound every address of a name, as asyncio does (localhost is often
    # 127.0.0.1 and ::1); binding the first one alone left clients of ::1 refused.
    import socket

    from spanproof.witness import _cli

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    stream = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    both = [(socket.AF_INET6, *stream, ("::1", 0, 0, 0)), (socket.AF_INET, *stream,
                                                          ("127.0.0.1", 0))]
    monkeypatch.setattr(_cli.socket, "getaddrinfo", lambda *a, **k: both + both)
    try:
        listening = _cli._listen("localhost", 0)
    except OSError as e:  # ::1 not configured on this machine
        pytest.skip(f"cannot listen on ::1 here ({e})")
    try:
        assert [s.getsockname()[0] for s in listening] == ["::1", "127.0.0.1"]
        assert listening[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in listening:
            sock.close()
