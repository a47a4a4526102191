"""``witness serve --max-body``: a limit no submission could fit in is a usage error,
not a witness that answers 413 to everything.  So is a ``--shutdown-timeout`` that is
not whole seconds from 1 to an hour."""

from __future__ import annotations

import pytest

from spanproof.verifier._cli import main


@pytest.mark.parametrize("value", ["-1", "0", "1023", "abc", "1_024", "+2048",
                                   "\u0662\u0660\u0664\u0668"])
def test_max_body_below_1024_is_a_usage_error(capsys, tmp_path, value):
    db = tmp_path / "witness.db"
    status = main(["witness", "serve", "--listen", "127.0.0.1:0", "--db", str(db),
                   "--key", str(tmp_path / "missing.key"), "--max-body", value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "argument --max-body: must be a whole number of bytes of at least 1024" in err
    assert repr(value) in err
    assert not db.exists()


@pytest.mark.parametrize("value", ["0", "-1", "3601", "1.5", "abc", "+5", "\u0665"])
def test_a_shutdown_timeout_outside_1_to_3600_seconds_is_a_usage_error(capsys, tmp_path, value):
    db = tmp_path / "witness.db"
    status = main(["witness", "serve", "--listen", "127.0.0.1:0", "--db", str(db),
                   "--key", str(tmp_path / "missing.key"), "--shutdown-timeout", value])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "argument --shutdown-timeout: must be whole seconds from 1 to 3600" in err
    assert repr(value) in err
    assert not db.exists()
