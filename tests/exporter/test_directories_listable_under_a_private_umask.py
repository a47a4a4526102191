"""Under a private umask (systemd ``UMask=0077``) the exporter and the processor made
their output, key, journal and witness-queue directories 0700: ``spanproof verify
OUTPUT_DIR`` run by any other account then failed on each (``cannot list the
directory``), every run, though every bundle verified.  The directories a producer
creates are 0755; the files in them keep their modes, and a directory that was
there already keeps its own."""

from __future__ import annotations

import glob
from pathlib import Path

from exporter_support import Recorder, evidence, signing_key
from private_umask import LISTABLE, mode, operators_directory, private_umask

from spanproof.exporter import EvidenceSpanProcessor, SpanproofSpanExporter

# Nothing is ever sent: no bundle is written while these producers run.
WITNESS_URL = "http://127.0.0.1:9"


def test_directories_the_exporter_creates_are_listable_by_anyone(tmp_path: Path) -> None:
    out = tmp_path / "srv" / "spanproof" / "out"  # two missing parents as well
    with private_umask():
        exporter = SpanproofSpanExporter(out, witness_url=WITNESS_URL)
        exporter.shutdown()
    for directory in (tmp_path / "srv", tmp_path / "srv" / "spanproof", out, out / "keys",
                      out / "witness-queue", out / "witness-queue" / "failed"):
        assert mode(directory) == LISTABLE, directory
    assert mode(out / "keys" / "signing.key") == 0o600
    assert mode(out / "keys" / "signing.pub") == 0o644


def test_directories_the_processor_creates_are_listable_its_journal_files_private(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with private_umask():
        rec = Recorder()
        rec.provider.add_span_processor(EvidenceSpanProcessor(out, select_all=True))
        try:
            with evidence(rec, "chat"):
                pass
            assert rec.provider.force_flush()  # journaled
            journal_files = glob.glob(str(out / "journal" / "journal-*.log"))
            assert journal_files
            assert all(mode(path) == 0o600 for path in journal_files)
        finally:
            rec.provider.shutdown()
    for directory in (out, out / "journal", out / "keys"):
        assert mode(directory) == LISTABLE, directory
    assert mode(out / "keys" / "signing.key") == 0o600
    (bundle,) = glob.glob(str(out / "*.spanproof.json"))
    assert mode(bundle) == 0o644


def test_directories_the_operator_made_keep_their_mode(tmp_path: Path) -> None:
    out, journal = tmp_path / "out", tmp_path / "journal"
    operators_directory(out)
    operators_directory(journal)
    with private_umask():
        processor = EvidenceSpanProcessor(out, journal_dir=journal, signing_key=signing_key(),
                                          witness_url=WITNESS_URL)
        processor.shutdown()
    assert mode(out) == 0o700
    assert mode(journal) == 0o700
    assert mode(out / "witness-queue") == LISTABLE  # created inside it: the producer's
