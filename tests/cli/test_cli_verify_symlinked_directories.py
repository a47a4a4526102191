"""`spanproof verify DIR` checks the bundles below DIR's symbolic links to directories,
as it reads symbolic links to bundle files: a link to an archived folder of segments
was skipped without a word, and the run reported OK on the bundles it happened to see.
Each directory is searched once, so a link back up ends the search there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_support import TRACE, Keys, MakeBundle, workflow_bodies

from spanproof.verifier._cli import main
from spanproof.verifier.verify import find_bundles


def _segments(tmp_path: Path, make_bundle: MakeBundle) -> tuple[Path, Path, Path]:
    """DIR holding segment 0 and, through a link to another folder, segment 1."""
    top, archive = tmp_path / "top", tmp_path / "archive"
    _, first = make_bundle("seg0", directory=top, bodies=workflow_bodies()[:3])
    second, _ = make_bundle("seg1", directory=archive, bodies=workflow_bodies()[3:],
                            position=first.next_position())
    (top / "sub").mkdir()
    os.symlink(archive, top / "sub" / "linked")
    return top, top / "seg0.spanproof.json", top / "sub" / "linked" / second.name


def test_verify_checks_bundles_below_a_symlinked_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    top, seg0, seg1 = _segments(tmp_path, make_bundle)
    assert main(["verify", "--key", str(keys.pub), str(top)]) == 0
    out = capsys.readouterr().out
    assert f"OK {seg0} trace={TRACE} segment=0 " in out
    assert f"OK {seg1} trace={TRACE} segment=1 " in out
    assert f"OK trace {TRACE} instance 00000000000000aa: segments 0, 1 form one chain" in out


def test_a_failing_bundle_below_a_symlinked_directory_fails_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    top, _, seg1 = _segments(tmp_path, make_bundle)
    seg1.write_bytes(seg1.read_bytes()[:-3])  # cut its closing line
    assert main(["verify", "--key", str(keys.pub), str(top)]) == 1
    assert f"FAIL {seg1}: truncated" in capsys.readouterr().out


def test_a_link_loop_and_a_second_link_search_each_directory_once(
    tmp_path: Path, make_bundle: MakeBundle
) -> None:
    top, seg0, seg1 = _segments(tmp_path, make_bundle)
    os.symlink("..", top / "sub" / "up")  # back to top: a loop
    os.symlink(tmp_path / "archive", top / "sub" / "same-archive")
    assert list(find_bundles([str(top)])) == [str(seg0), str(seg1)]
