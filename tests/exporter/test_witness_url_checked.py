"""A witness URL that can never be reached as written (a port out of range or 0, no
host, white space) is refused where it is given, naming why, instead of being taken
and every submission retried for good.  The message says once what is wrong and names
where the URL came from: the argument, the variable, or the command-line flag."""

from __future__ import annotations

import pytest

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter
from spanproof.exporter.config import ExporterConfig
from spanproof.exporter.receiver import Receiver
from spanproof.exporter.submit import WitnessSubmitter
from spanproof.verifier._cli import main
from spanproof.witness.client import WitnessClient

VAR = "OTEL_EXPORTER_SPANPROOF_WITNESS_URL"

QUERY = ("it has a query or fragment ('?' or '#'); a witness's base URL has none, as the "
         "API's paths are added to its end")
USER = "it has a user name or password ('...@'), which spanproof never sends"

BAD = [
    ("http://127.0.0.1:99999", "its port is '99999', not a number from 1 to 65535"),
    ("http://127.0.0.1:0", "its port is '0', not a number from 1 to 65535"),
    ("http://witness:abc", "its port is 'abc', not a number from 1 to 65535"),
    ("http://[::1]:x", "its port is 'x', not a number from 1 to 65535"),
    ("http://:8080", "it has no host"),
    ("http://wit ness:8080", "it has white space in it"),
    ("ftp://witness", "it does not start with http:// or https://"),
    ("witness.example:8080", "it does not start with http:// or https://"),
    ("http://[::1", "it cannot be read as a URL (Invalid IPv6 URL)"),
    # The API's paths are added to the end: "?x=1/v1/submit" asked for "/", which the
    # witness refused (405) for every bundle, each one queued as failed for good.
    ("http://127.0.0.1:8080?x=1", QUERY),
    ("http://127.0.0.1:8080/?", QUERY),
    ("http://127.0.0.1:8080/#x", QUERY),
    ("http://witness@127.0.0.1:8080", USER),
]


@pytest.mark.parametrize("url, why", BAD)
def test_the_exporter_setting_is_refused(url, why):
    with pytest.raises(ValueError) as e:
        ExporterConfig.from_env(environ={}, witness_url=url)
    assert str(e.value) == f"spanproof exporter setting witness_url {url!r} is not a " \
                           f"witness URL: {why}"


@pytest.mark.parametrize("url, why", BAD)
def test_the_variable_is_refused(url, why):
    with pytest.raises(ValueError) as e:
        ExporterConfig.from_env(environ={VAR: url})
    assert str(e.value) == f"{VAR} {url!r} is not a witness URL: {why}"


@pytest.mark.parametrize("url, why", BAD)
def test_witness_submit_refuses_it(capsys, tmp_path, url, why):
    bundle = tmp_path / "a.spanproof.json"
    bundle.write_bytes(b"{}\n")
    assert main(["witness", "submit", "--url", url, str(bundle)]) == 2
    assert capsys.readouterr().err == \
        f"spanproof: error: --url {url!r} is not a witness URL: {why}\n"


def test_a_good_url_is_taken():
    assert ExporterConfig.from_env(environ={}, witness_url="https://w.example:8443/").witness_url
    assert ExporterConfig.from_env(environ={VAR: " http://w:1 "}).witness_url == "http://w:1"
    assert WitnessClient("http://[::1]:8080").url == "http://[::1]:8080"
    # A path is kept: the API's paths are added to it.
    assert WitnessClient("http://w:1/witness/").url == "http://w:1/witness"


SECRET_URL = "http://submitter:s3cret@127.0.0.1:8080"
SHOWN = "'http://submitter:***@127.0.0.1:8080' is not a witness URL: " + USER


def test_a_password_in_the_url_is_refused_and_never_shown(capsys, tmp_path):
    # It was taken, never sent (no Authorization header), and logged in clear at
    # shutdown with the bundles still queued for it.
    with pytest.raises(ValueError) as e:
        ExporterConfig(witness_url=SECRET_URL)
    assert str(e.value) == f"spanproof exporter setting witness_url {SHOWN}"
    with pytest.raises(ValueError) as e:
        ExporterConfig.from_env(environ={VAR: SECRET_URL})
    assert str(e.value) == f"{VAR} {SHOWN}"
    bundle = tmp_path / "a.spanproof.json"
    bundle.write_bytes(b"{}\n")
    assert main(["witness", "submit", "--url", SECRET_URL, str(bundle)]) == 2
    assert capsys.readouterr().err == f"spanproof: error: --url {SHOWN}\n"


# Each way a user gives a witness URL, and the message it must get for "ftp://w:0".
# Before, every one of them read "... witness_url (OTEL_EXPORTER_SPANPROOF_WITNESS_URL)
# must be an http:// or https:// URL or None (not an http:// or https:// URL), got ...":
# the requirement twice, a Python None on the command line, and the variable named
# for a URL that came from an argument or a flag.
WRONG = "'ftp://w:0' is not a witness URL: it does not start with http:// or https://"


def _refusal(how, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    monkeypatch.delenv(VAR, raising=False)
    if how.endswith("variable"):
        monkeypatch.setenv(VAR, "ftp://w:0")
        url = None
    else:
        url = "ftp://w:0"
    if how.startswith("spanproof"):
        argv = ["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--out", out]
        if how == "spanproof receiver --witness-url":
            argv += ["--witness-url", url]
        elif how == "spanproof witness submit --url":
            argv = ["witness", "submit", "--url", url, str(tmp_path)]
        elif how == "spanproof monitor --url":
            argv = ["monitor", "--url", url, "--state", str(tmp_path / "state"),
                    "--witness-key", str(tmp_path / "witness.pub")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("spanproof: error: ") and err.endswith("\n")
        return err[len("spanproof: error: "):-1]
    constructors = {
        "ExporterConfig": lambda: ExporterConfig(witness_url=url),
        "SpanproofSpanExporter": lambda: SpanproofSpanExporter(out, witness_url=url),
        "EvidenceSpanProcessor": lambda: EvidenceSpanProcessor(out, witness_url=url),
        "Receiver": lambda: Receiver(out, witness_url=url),
        "WitnessClient": lambda: WitnessClient(url),
        "WitnessSubmitter": lambda: WitnessSubmitter(url, out, start=False),
        "SpanproofSpanExporter, variable": lambda: SpanproofSpanExporter(out),
        "EvidenceSpanProcessor, variable": lambda: EvidenceSpanProcessor(out),
        "Receiver, variable": lambda: Receiver(out),
    }
    with pytest.raises(ValueError) as e:
        constructors[how]()
    return str(e.value)


SOURCES = [
    ("ExporterConfig", f"spanproof exporter setting witness_url {WRONG}"),
    ("SpanproofSpanExporter", f"spanproof exporter setting witness_url {WRONG}"),
    ("EvidenceSpanProcessor", f"spanproof exporter setting witness_url {WRONG}"),
    ("Receiver", f"spanproof exporter setting witness_url {WRONG}"),
    ("WitnessClient", WRONG),
    ("WitnessSubmitter", WRONG),
    ("SpanproofSpanExporter, variable", f"{VAR} {WRONG}"),
    ("EvidenceSpanProcessor, variable", f"{VAR} {WRONG}"),
    ("Receiver, variable", f"{VAR} {WRONG}"),
    ("spanproof receiver --witness-url", f"--witness-url {WRONG}"),
    ("spanproof receiver, variable", f"{VAR} {WRONG}"),
    ("spanproof witness submit --url", f"--url {WRONG}"),
    ("spanproof monitor --url", f"--url {WRONG}"),
]


@pytest.mark.parametrize(("how", "message"), SOURCES, ids=[how for how, _ in SOURCES])
def test_witness_url_message_says_once_what_is_wrong_and_where_it_came_from(
    how, message, tmp_path, capsys, monkeypatch
):
    got = _refusal(how, tmp_path, capsys, monkeypatch)
    assert got == message
    assert got.count("http://") == 1 and "None" not in got
