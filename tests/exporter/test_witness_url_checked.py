"""A witness URL that can never be reached as written (a port out of range or 0, no
host, white space) is refused where it is given, naming why, instead of being taken
and every submission retried for good."""

from __future__ import annotations

import pytest

from spanproof.exporter.config import ExporterConfig
from spanproof.verifier._cli import main
from spanproof.witness.client import WitnessClient

BAD = [
    ("http://127.0.0.1:99999", "Port out of range 0-65535"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://witness:abc", "Port could not be cast to integer value"),
    ("http://:8080", "no host"),
    ("http://wit ness:8080", "white space in it"),
    ("ftp://witness", "not an http:// or https:// URL"),
]


@pytest.mark.parametrize("url, why", BAD)
def test_the_exporter_setting_is_refused(url, why):
    with pytest.raises(ValueError, match=rf"witness_url .*\({why}"):
        ExporterConfig.from_env(environ={}, witness_url=url)


@pytest.mark.parametrize("url, why", BAD)
def test_the_variable_is_refused(url, why):
    with pytest.raises(ValueError, match=rf"OTEL_EXPORTER_SPANPROOF_WITNESS_URL.*\({why}"):
        ExporterConfig.from_env(environ={"OTEL_EXPORTER_SPANPROOF_WITNESS_URL": url})


@pytest.mark.parametrize("url, why", BAD)
def test_witness_submit_refuses_it(capsys, tmp_path, url, why):
    bundle = tmp_path / "a.spanproof.json"
    bundle.write_bytes(b"{}\n")
    assert main(["witness", "submit", "--url", url, str(bundle)]) == 2
    assert why in capsys.readouterr().err


def test_a_good_url_is_taken():
    assert ExporterConfig.from_env(environ={}, witness_url="https://w.example:8443/").witness_url
    assert WitnessClient("http://[::1]:8080").url == "http://[::1]:8080"
