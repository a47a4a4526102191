"""``spanproof receiver``: flag values refused as usage errors before anything starts."""

from __future__ import annotations

import os

import pytest

from spanproof.exporter import _cli as producer_cli
from spanproof.verifier._cli import main


def _stop(servers) -> int:
    """Stop the servers `_serve_receiver` is handed (listening, never started); 0."""
    for server in servers:
        server.stop(0)
    return 0


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch):
    """Should a value be let through, return at once instead of serving for good."""
    monkeypatch.setattr(producer_cli, "_serve_receiver",
                        lambda service, servers, *args: _stop(servers))


def _refused(capsys, tmp_path, *flag: str) -> str:
    """Run ``spanproof receiver`` with *flag*; assert it is a usage error (exit 2) and
    that nothing was set up (no output directory).  Standard error."""
    out = tmp_path / "out"
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(out), *flag])
    err = capsys.readouterr().err
    assert status == 2, err
    assert not out.exists()  # refused before the receiver set anything up
    return err


@pytest.mark.parametrize("value", ["2147483648", "3000000000", "99999999999999999999999"])
def test_max_message_bytes_beyond_a_c_int_is_a_usage_error(capsys, tmp_path, value):
    err = _refused(capsys, tmp_path, "--max-message-bytes", value)
    assert "--max-message-bytes must be at most 2147483647" in err
    assert value in err
    assert "unexpected" not in err


@pytest.mark.parametrize("value", ["65", "1000", "99999999999999999999"])
def test_sealing_processes_beyond_64_is_a_usage_error(capsys, tmp_path, value):
    err = _refused(capsys, tmp_path, "--sealing-processes", value)  # no worker started
    assert f"--sealing-processes must be at most 64, got {value}" in err


@pytest.mark.parametrize("flag", ["--seal-grace-ms", "--idle-timeout-ms"])
@pytest.mark.parametrize("value", ["31536000001", "1" * 400])
def test_a_wait_beyond_a_year_is_a_usage_error(capsys, tmp_path, flag, value):
    # 400 digits overflowed a float when divided into seconds: "unexpected
    # OverflowError", exit 1.
    err = _refused(capsys, tmp_path, flag, value)
    assert f"{flag} must be at most 31536000000 (a year), got {value}" in err
    assert "unexpected" not in err


@pytest.mark.parametrize("flag", ["--seal-grace-ms", "--idle-timeout-ms"])
def test_a_wait_of_a_year_is_taken(tmp_path, flag):
    assert main(["receiver", "--grpc", "127.0.0.1:0", "--no-http", "--out",
                 str(tmp_path / "out"), flag, "31536000000"]) == 0


@pytest.mark.parametrize("flag", ["--select-attributes", "--redact-attributes"])
@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_attribute_keys_naming_no_key_are_a_usage_error(capsys, tmp_path, flag, value):
    # Given empty (an unset shell variable, say), the receiver would certify only
    # spans marked spanproof.evidence and drop the rest without a word, or store the
    # values the user meant to hide.
    err = _refused(capsys, tmp_path, flag, value)
    assert (f"spanproof: error: {flag} must list at least one attribute key, "
            f"got {value!r}") in err


@pytest.mark.parametrize(("flag", "setting"), [("--select-attributes", "select_attributes"),
                                               ("--redact-attributes", "redact_attributes")])
def test_attribute_keys_reach_the_receiver(capsys, monkeypatch, tmp_path, flag, setting):
    from spanproof.exporter import receiver as receiver_module

    given: list[object] = []

    class Receiver:
        """Takes the settings, then stops the command before it serves."""

        def __init__(self, **kwargs: object) -> None:
            given.append(kwargs[setting])
            raise OSError("stopped here")

    monkeypatch.setattr(receiver_module, "Receiver", Receiver)
    monkeypatch.setattr(producer_cli, "limit_malloc_arenas", lambda: False)
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(tmp_path / "out"), flag, " a.b, ,c.d "])
    assert status == 1
    assert "cannot set up the receiver: stopped here" in capsys.readouterr().err
    assert given == [["a.b", "c.d"]]


def test_receiver_object_refuses_more_than_64_sealing_processes(tmp_path):
    from spanproof.exporter.receiver import Receiver

    with pytest.raises(ValueError, match="sealing_processes must be from 0 to 64, got 65"):
        Receiver(output_dir=str(tmp_path / "out"), sealing_processes=65)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
def test_a_named_pipe_as_a_tls_file_is_refused_without_blocking(capsys, tmp_path, flag):
    pipe = tmp_path / "pipe.pem"
    os.mkfifo(pipe)
    other = tmp_path / "other.pem"
    other.write_text("not used: the pipe is refused first\n")
    files = {"--tls-cert": other, "--tls-key": other, "--tls-client-ca": None, flag: pipe}
    argv = [arg for name, path in files.items() if path is not None
            for arg in (name, str(path))]
    err = _refused(capsys, tmp_path, *argv)
    what = {"--tls-cert": "certificate", "--tls-key": "key", "--tls-client-ca": "client CA"}
    assert f"TLS {what[flag]} {pipe}: cannot be used (not a regular file (a named pipe))" in err


@pytest.mark.parametrize(("flags", "env", "expected"), [
    ([], None, False),
    ([], "true", True),
    (["--select-all"], None, True),
    (["--select-all"], "false", True),
    # The flag overrides the variable both ways: before, --select-all could only
    # turn it on, and SELECT_ALL=true could not be turned off for one receiver.
    (["--no-select-all"], "true", False),
])
def test_select_all_flags_override_the_variable_both_ways(
    capsys, monkeypatch, tmp_path, flags, env, expected
):
    from spanproof.exporter.config import ENV_PREFIX

    if env is None:
        monkeypatch.delenv(ENV_PREFIX + "SELECT_ALL", raising=False)
    else:
        monkeypatch.setenv(ENV_PREFIX + "SELECT_ALL", env)
    seen: list[bool] = []
    monkeypatch.setattr(producer_cli, "_serve_receiver",
                        lambda service, servers, *args:
                        seen.append(service.config.select_all) or _stop(servers))
    monkeypatch.setattr(producer_cli, "limit_malloc_arenas", lambda: False)
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(tmp_path / "out"), *flags])
    assert status == 0, capsys.readouterr().err
    assert seen == [expected]


@pytest.mark.parametrize("flag", ["--max-records", "--seal-grace-ms", "--max-value-bytes",
                                  "--max-message-bytes", "--max-backlog-spans",
                                  "--sealing-processes"])
@pytest.mark.parametrize("value", ["1_000", "+3", "\u0663", "\uff15", "1e3"])
def test_integer_flags_take_ascii_digits_only(capsys, tmp_path, flag, value):
    # int() takes "1_000", "+3" and "٣" (3): a typo would pass as a number.
    err = _refused(capsys, tmp_path, flag, value)
    assert (f"argument {flag}: must be a whole number in the digits 0-9, "
            f"not {value!r}") in err


@pytest.mark.parametrize("port", ["\u00b2", "\u0663", "+80", "8_0"])
def test_a_port_in_other_digits_is_a_usage_error(capsys, tmp_path, port):
    # "²".isdigit() is True, and int("²") then failed as an unexpected ValueError.
    out = tmp_path / "out"
    status = main(["receiver", "--grpc", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "--grpc must be HOST:PORT" in err and "unexpected" not in err


def test_an_out_directory_that_cannot_be_created_is_a_usage_error(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert (f"spanproof: error: --out must be a directory spanproof can create and write "
            f"to, got {str(out)!r} (cannot create it: Not a directory)" in err)


def test_a_journal_directory_that_cannot_be_created_is_a_usage_error(capsys, tmp_path):
    # Found only when the receiver started, after its servers listened, it was an
    # error exit (1), not the usage error (2) every command gives for a path it
    # cannot use, and the servers had been listening meanwhile.
    (tmp_path / "afile").write_text("")
    journal = tmp_path / "afile" / "journal"
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(tmp_path / "out"), "--journal-dir", str(journal)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert (f"spanproof: error: --journal-dir must be a directory spanproof can create and "
            f"write to, got {str(journal)!r} (cannot create it: Not a directory)" in err)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--key", "missing.key", "--key: {value}: cannot read private key"),
    ("--witness-key", "missing.pub", "--witness-key: {value}: cannot read witness key"),
    ("--witness-url", "ftp://witness", "--witness-url 'ftp://witness' is not a witness URL"),
])
def test_a_refused_flag_is_named_as_the_flag_not_as_a_variable(
    capsys, tmp_path, flag, value, message
):
    # The error named the exporter's setting and variable ("spanproof exporter setting
    # key_file (OTEL_EXPORTER_SPANPROOF_KEY_FILE): ..."), which sent a user who gave
    # --key looking through an environment they had never set.
    if flag != "--witness-url":
        value = str(tmp_path / value)
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"spanproof: error: {message.format(value=value)}" in err
    assert "OTEL_EXPORTER_SPANPROOF" not in err


def test_a_refused_variable_is_still_named_as_the_variable(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_WITNESS_URL", "ftp://witness")
    err = _refused(capsys, tmp_path)
    assert "OTEL_EXPORTER_SPANPROOF_WITNESS_URL 'ftp://witness' is not a witness URL" in err


@pytest.mark.parametrize("flag", ["--grpc", "--http"])
def test_help_says_port_0_takes_a_free_port_for_either_address(capsys, flag):
    # --grpc said so and --http did not, though port 0 takes a free port for both.
    assert main(["receiver", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    (line,) = [part for part in help_text.split(" --") if part.startswith(flag[2:] + " ")]
    assert "port 0: any free" in line, line


def test_a_witness_key_that_is_the_signing_keys_public_half_is_a_usage_error(capsys, tmp_path):
    # The receiver started, and every genuine receipt then failed to verify with the
    # producer's own key: each submission was retired as failed.  `verify` and
    # `witness submit` refuse the same pair.
    from spanproof.exporter.keys import SigningKey

    key_file, public = SigningKey.from_seed(bytes(range(32))).write(tmp_path)
    err = _refused(capsys, tmp_path, "--key", key_file, "--witness-url", "http://127.0.0.1:9",
                   "--witness-key", public)
    assert (f"spanproof: error: --witness-key: {public}: the witness key is also a trusted "
            f"producer key (the signing key {key_file}): a receipt it signs proves nothing "
            "the bundle's own signature does not; pin the witness's own key") in err
    assert "OTEL_EXPORTER_SPANPROOF" not in err
