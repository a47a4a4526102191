"""``witness submit`` and ``monitor``: a ``--timeout`` that is not a usable number of
seconds is a usage error naming the flag, never an unexpected error at the first
connection."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spanproof.verifier._cli import main

BAD_TIMEOUTS = ["-1", "0", "nan", "inf", "1e308", "86401"]
CLOSED_URL = "http://127.0.0.1:9"  # nothing listens: only the timeout decides the answer


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_submit_timeout_out_of_range_is_a_usage_error(capsys, tmp_path, value):
    bundle = tmp_path / "a.spanproof.json"
    bundle.write_bytes(b"{}\n")
    status = main(["witness", "submit", "--url", CLOSED_URL, "--timeout", value, str(bundle)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "argument --timeout" in err and repr(value) in err
    assert "unexpected" not in err


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_monitor_timeout_out_of_range_is_a_usage_error(capsys, tmp_path, value):
    pub = tmp_path / "witness.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    status = main(["monitor", "--url", CLOSED_URL, "--state", str(tmp_path / "state.json"),
                   "--witness-key", str(pub), "--timeout", value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "argument --timeout" in err and repr(value) in err
    assert "unexpected" not in err


def test_a_usable_timeout_is_still_taken(capsys, tmp_path):
    bundle = tmp_path / "a.spanproof.json"
    bundle.write_bytes(b"{}\n")
    status = main(["witness", "submit", "--url", CLOSED_URL, "--timeout", "0.5",
                   "--retry-for", "0", str(bundle)])
    assert status == 3  # unreachable, as before
    assert "cannot reach witness" in capsys.readouterr().out
