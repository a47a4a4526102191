"""`spanproof verify DIR` while a producer writes into DIR: a directory listing taken
while files are created is no snapshot (on ext4 it runs in hash order), so a segment
published before a later one of its trace could be missed while the later one was
seen, and a healthy producer's trace failed with ``segment 1 is missing`` (exit 1).
The directories of a trace with a gap are listed again for the missing segments."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import PRODUCER, TRACE, Keys, MakeBundle, workflow_bodies

from spanproof.verifier._cli import main

CHAIN_LINE = f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1, 2 form one chain"
MISSING_LINE = f"FAIL trace {TRACE} instance {PRODUCER.instance}: segment 1 is missing"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def segment_name(index: int, alternative: int = 0) -> str:
    """Segment *index*'s file name stem as a producer names it (SPEC §7.4), or the
    directory sink's *alternative* when that name is taken."""
    stem = f"{TRACE}-{index:04d}-{PRODUCER.instance}"
    return f"{stem}.{alternative}" if alternative else stem


def three_segments(make_bundle: MakeBundle, directory: Path, *, alternative: int = 0,
                   second_in: Path | None = None) -> list[Path]:
    """Segments 0, 1 and 2 of one trace under their producer's names in *directory*
    (segment 1 in *second_in* when given, under the sink's *alternative* name)."""
    bodies = workflow_bodies()
    first, sealed = make_bundle(segment_name(0), directory=directory, bodies=bodies[:2])
    second, sealed = make_bundle(segment_name(1, alternative), directory=second_in or directory,
                                 bodies=bodies[2:4], position=sealed.next_position())
    third, _ = make_bundle(segment_name(2), directory=directory, bodies=bodies[4:],
                           position=sealed.next_position())
    return [first, second, third]


class Listings:
    """``os.scandir`` whose first listing of one directory leaves out *hidden* (a file
    linked while the listing ran, missed), as a live directory's listing can; it
    counts the listings of that directory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path, *hidden: Path):
        self.directory = os.path.realpath(directory)
        self.hidden = {path.name for path in hidden}
        self.count = 0
        real_scandir = os.scandir

        def scandir(path: Any = ".") -> Any:
            listing = real_scandir(path)
            if os.path.realpath(path) != self.directory:
                return listing
            self.count += 1
            return listing if self.count > 1 else _Without(listing, self.hidden)

        monkeypatch.setattr(os, "scandir", scandir)


class _Without:
    """A directory listing without the entries named in *names*."""

    def __init__(self, listing: Any, names: set[str]) -> None:
        self._listing = listing
        self._names = names

    def __enter__(self) -> Iterator[os.DirEntry[str]]:
        return (entry for entry in self._listing if entry.name not in self._names)

    def __exit__(self, *exc: object) -> None:
        self._listing.close()


@pytest.mark.parametrize("alternative", [0, 1], ids=["its name", "the sink's next name"])
def test_a_segment_the_first_listing_missed_is_found_by_a_second(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch, alternative: int
):
    folder = tmp_path / "bundles"
    paths = three_segments(make_bundle, folder, alternative=alternative)
    listings = Listings(monkeypatch, folder, paths[1])
    code, out = run(capsys, "verify", "--key", keys.pub, folder)
    assert code == 0, out
    lines = out.splitlines()
    # Reported where the first listing would have put it: in sorted order.
    assert [line.split()[1] for line in lines[:3]] == [str(p) for p in paths]
    assert all(line.startswith("OK ") for line in lines[:3])
    assert lines[3:] == [CHAIN_LINE]
    assert listings.count == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_json_holds_the_segment_found_by_the_second_listing(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch, jobs: str
):
    folder = tmp_path / "bundles"
    paths = three_segments(make_bundle, folder)
    Listings(monkeypatch, folder, paths[1])
    code, out = run(capsys, "verify", "--json", "--jobs", jobs, "--key", keys.pub, folder)
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True, out
    assert [(b["path"], b["verdict"], b["segment"]) for b in doc["bundles"]] == [
        (str(p), "OK", i) for i, p in enumerate(paths)]
    (link,) = doc["traces"]
    assert (link["segments"], link["ok"]) == ([0, 1, 2], True)


def test_a_segment_0_the_first_listing_missed_is_found_by_a_second(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch
):
    # The same race, at the start of a chain: "segments 1, 2 form one chain (segment 0
    # not present)" said a segment on the disk was not there.
    folder = tmp_path / "bundles"
    paths = three_segments(make_bundle, folder)
    Listings(monkeypatch, folder, paths[0])
    code, out = run(capsys, "verify", "--key", keys.pub, folder)
    assert code == 0, out
    assert out.splitlines()[-1] == CHAIN_LINE


def test_a_segment_absent_from_the_directory_still_fails_the_trace(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch
):
    folder = tmp_path / "bundles"
    three_segments(make_bundle, folder, second_in=tmp_path / "elsewhere")
    listings = Listings(monkeypatch, folder)
    code, out = run(capsys, "verify", "--key", keys.pub, folder)
    assert code == 1
    assert out.splitlines()[-1] == MISSING_LINE
    assert sum(line.startswith("OK ") for line in out.splitlines()) == 2
    assert listings.count == 2


def test_bundle_files_named_one_by_one_are_not_looked_for_again(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch
):
    # Files named on the command line are the set asked for: a segment beside them
    # that was not named is not taken.
    folder = tmp_path / "bundles"
    first, _, third = three_segments(make_bundle, folder)
    listings = Listings(monkeypatch, folder)
    code, out = run(capsys, "verify", "--key", keys.pub, first, third)
    assert code == 1
    assert out.splitlines()[-1] == MISSING_LINE
    assert listings.count == 0


def test_a_directory_without_a_gap_is_listed_once(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch
):
    folder = tmp_path / "bundles"
    three_segments(make_bundle, folder)
    listings = Listings(monkeypatch, folder)
    code, out = run(capsys, "verify", "--key", keys.pub, folder)
    assert code == 0, out
    assert out.splitlines()[-1] == CHAIN_LINE
    assert listings.count == 1


def test_report_finds_the_segment_the_first_listing_missed(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, monkeypatch
):
    import re

    import spanproof.verifier.report as report_module

    # Its share of the page's steps counts the bundle found late: counted before the
    # second look, the late bundles kept theirs at that count (30 segments of 2,000, 28
    # of them missed, put 60,000 steps on a page that shows 20,000).
    monkeypatch.setattr(report_module, "STEPS_SHOWN_ON_A_PAGE", 4)  # 2 of 2, 1 of 3
    folder = tmp_path / "bundles"
    paths = three_segments(make_bundle, folder)
    Listings(monkeypatch, folder, paths[1])
    page = tmp_path / "r.html"
    code, out = run(capsys, "report", "--key", keys.pub, "--html", page, folder)
    assert code == 0, out
    assert CHAIN_LINE in out.splitlines()
    document = page.read_text()
    assert paths[1].name in document
    assert [int(n) for n in re.findall(r'data-shown="(\d+)"', document)] == [1, 1, 1]
