"""``spanproof receiver``: flag values refused as usage errors before anything starts."""

from __future__ import annotations

import pytest

from spanproof.verifier._cli import main


@pytest.mark.parametrize("value", ["2147483648", "3000000000", "99999999999999999999999"])
def test_max_message_bytes_beyond_a_c_int_is_a_usage_error(capsys, tmp_path, value):
    out = tmp_path / "out"
    status = main(["receiver", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                   "--out", str(out), "--max-message-bytes", value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "--max-message-bytes must be at most 2147483647" in err
    assert value in err
    assert "unexpected" not in err
    assert not out.exists()  # refused before the receiver set anything up
