"""Under a private umask (systemd ``UMask=0077``) the receiver made its output, key,
journal and witness-queue directories 0700: ``spanproof verify OUTPUT_DIR`` run by
any other account then failed on each (``cannot list the directory``), every run,
though every bundle verified.  The directories it creates are 0755; its journal
files and private key stay 0600, and a directory that was there already keeps its
own mode."""

from __future__ import annotations

import glob
from pathlib import Path

from private_umask import LISTABLE, mode, operators_directory, private_umask
from receiver_support import FakeClock, signing_key

from spanproof.exporter.receiver import Receiver

# Nothing is ever sent: no span reaches these receivers.
WITNESS_URL = "http://127.0.0.1:9"


def test_directories_the_receiver_creates_are_listable_by_anyone(tmp_path: Path) -> None:
    out = tmp_path / "spanproof" / "out"  # a missing parent as well
    with private_umask():
        receiver = Receiver(out, clock=FakeClock(), witness_url=WITNESS_URL)
        try:
            receiver.start()
            journal_files = glob.glob(str(out / "journal" / "journal-*.log"))
            assert journal_files
            assert all(mode(path) == 0o600 for path in journal_files)
        finally:
            receiver.shutdown(5)
    for directory in (tmp_path / "spanproof", out, out / "journal", out / "keys",
                      out / "witness-queue", out / "witness-queue" / "failed"):
        assert mode(directory) == LISTABLE, directory
    assert mode(out / "keys" / "signing.key") == 0o600


def test_directories_the_operator_made_keep_their_mode(tmp_path: Path) -> None:
    out, journal = tmp_path / "out", tmp_path / "journal"
    operators_directory(out)
    operators_directory(journal)
    with private_umask():
        receiver = Receiver(out, journal_dir=journal, signing_key=signing_key(),
                            clock=FakeClock(), witness_url=WITNESS_URL)
        try:
            receiver.start()
        finally:
            receiver.shutdown(5)
    assert mode(out) == 0o700
    assert mode(journal) == 0o700
    assert mode(out / "witness-queue") == LISTABLE  # created inside it: the receiver's
