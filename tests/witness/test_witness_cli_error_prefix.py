"""A failing ``witness`` or ``monitor`` command names itself as every other spanproof
command does: ``spanproof: error: <what was wrong>`` on one line of standard error, the
form of argparse and of ``spanproof verify``."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanproof.verifier._cli import main


def _commands(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    missing = str(tmp_path / "missing.key")
    existing = tmp_path / "exists.key"
    existing.write_bytes(b"")
    absent = str(tmp_path / "absent")
    url = "http://127.0.0.1:9"
    return {
        "serve": (["witness", "serve", "--key", missing, "--db", str(tmp_path / "db")],
                  f"{missing}: cannot read witness key (No such file or directory)"),
        "keygen": (["witness", "keygen", "--key", str(existing)],
                   f"{existing} exists; refusing to overwrite a witness key"),
        "submit": (["witness", "submit", absent, "--url", url],
                   f"{absent}: No such file or directory"),
        "monitor": (["monitor", "--url", url, "--state", str(tmp_path / "state"),
                     "--witness-key", missing],
                    f"{missing}: cannot read witness key (No such file or directory)"),
    }


@pytest.mark.parametrize("command", ["serve", "keygen", "submit", "monitor"])
def test_witness_command_errors_say_error_as_the_other_commands_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv, message = _commands(tmp_path)[command]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"spanproof: error: {message}\n"
    # the same form as a failing read-only command
    key = tmp_path / "missing.pub"
    assert main(["verify", str(tmp_path / "absent.spanproof.json"), "--key", str(key)]) == 2
    assert capsys.readouterr().err == (
        f"spanproof: error: {key}: cannot read key file (No such file or directory)\n")
