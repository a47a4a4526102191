"""The witness database is the file ``--db`` names, whatever the name looks like,
and one process serves it (SPEC §12.8 step 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanproof.verifier.errors import TransportError
from spanproof.witness.store import Store


@pytest.mark.parametrize("name", ["file:w.db", ":memory:"])
def test_a_db_name_sqlite_reads_otherwise_is_a_file_and_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # SQLite read "file:w.db" as a URI (the file w.db) while no lock was taken for
    # it: a second witness served the same log from its own, older, tree.  It read
    # ":memory:" as a database in memory: the log served from it, and every receipt,
    # was lost when the witness stopped, and its key, which had signed that log's
    # size, refused every start after.
    monkeypatch.chdir(tmp_path)
    store = Store(name)
    try:
        with pytest.raises(TransportError, match="served by another process"):
            Store(name)
    finally:
        store.close()
    assert (tmp_path / name).is_file()
    assert not (tmp_path / "w.db").exists()


def test_a_symbolic_link_to_the_db_shares_its_lock(tmp_path: Path) -> None:
    # The lock was named after the name given: through a link, a second process
    # took a lock of its own and served the same log.
    db = tmp_path / "w.db"
    link = tmp_path / "alias.db"
    link.symlink_to(db.name)
    store = Store(str(db))
    try:
        with pytest.raises(TransportError, match="served by another process"):
            Store(str(link))
    finally:
        store.close()


def test_an_empty_db_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite opened a temporary database for "", deleted on close: the log was lost
    # when the witness stopped.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TransportError, match="empty name"):
        Store("")


def test_a_database_it_cannot_write_is_refused_on_open(tmp_path: Path) -> None:
    # SQLite opened it read-only without a word, and the witness served it: every
    # submission was answered 503, "retry later", for as long as it ran.
    import os
    import shutil
    import subprocess
    import sys

    db = tmp_path / "w.db"
    Store(str(db)).close()
    db.chmod(0o444)
    script = ("import sys\nfrom spanproof.witness.store import Store\n"
              "try:\n    Store(sys.argv[1]).close()\nexcept Exception as e:\n"
              "    print(e)\n    sys.exit(3)\n")
    command = [sys.executable, "-c", script, str(db)]
    if os.geteuid() == 0:  # root writes whatever the mode says, unless it drops that
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the right to ignore modes")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "cannot write the witness database" in done.stdout
    assert "readonly" in done.stdout


@pytest.mark.parametrize("name", ["", "a directory"])
def test_serve_with_a_db_no_file_could_have_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # Exit 3 ("unavailable") told a supervisor to start it again, for ever.
    from spanproof.verifier._cli import main

    key = tmp_path / "witness.key"
    assert main(["witness", "keygen", "--key", str(key)]) == 0
    capsys.readouterr()
    db = "" if name == "" else str(tmp_path)
    status = main(["witness", "serve", "--key", str(key), "--db", db,
                   "--listen", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert ("--db: no database file named (an empty name)" if name == "" else
            f"--db {tmp_path}: is a directory; --db takes the log's database file") in err
    assert not (tmp_path / "witness.key.lock").exists()  # refused before the key was held
