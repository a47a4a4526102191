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


@pytest.mark.parametrize("target", ["root", "parent"])
def test_a_link_to_a_directory_that_holds_the_one_given_is_not_followed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
    target: str,
) -> None:
    # A link to / (or to any directory above DIR) made verify search the whole disk,
    # and check every bundle there as if it were in DIR. It fails instead, named.
    top, seg0, seg1 = _segments(tmp_path, make_bundle)
    outside, _ = make_bundle("elsewhere", directory=tmp_path / "elsewhere")
    link = top / "sub" / "up"
    os.symlink("/" if target == "root" else tmp_path, link)
    held = "/" if target == "root" else str(tmp_path.resolve())
    why = f"a symbolic link to {held}, which holds {top}: not followed"

    errors: list[OSError] = []
    assert list(find_bundles([str(top)], onerror=errors.append)) == [str(seg0), str(seg1)]
    assert [(e.filename, e.strerror) for e in errors] == [(str(link), why)]
    with pytest.raises(OSError, match="not followed"):
        list(find_bundles([str(top)]))

    assert main(["verify", "--key", str(keys.pub), str(top)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {link}: cannot list the directory ({why}); the bundles in it were not " \
        "checked" in out
    assert f"OK {seg0} " in out and f"OK {seg1} " in out
    assert str(outside) not in out and "elsewhere" not in out


def test_a_link_back_to_the_directory_given_is_still_searched_once_without_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    # DIR itself holds DIR, but a link to it adds nothing to search: not a failure.
    top, seg0, seg1 = _segments(tmp_path, make_bundle)
    os.symlink(top, top / "sub" / "self")
    assert main(["verify", "--key", str(keys.pub), str(top)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.count(f"OK {seg0} ") == 1 and out.count(f"OK {seg1} ") == 1


def test_a_link_to_a_directory_above_a_path_given_as_a_link_is_not_followed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle
) -> None:
    # PATH is home/evidence, a link to store/bundles; a link in there to home held
    # PATH as given, though not where it really is, and was followed.
    store, home = tmp_path / "store" / "bundles", tmp_path / "home"
    inside, _ = make_bundle("inside", directory=store)
    outside, _ = make_bundle("outside", directory=home / "other")
    os.symlink(store, home / "evidence")
    os.symlink(home, store / "up")
    given = home / "evidence"
    assert main(["verify", "--key", str(keys.pub), str(given)]) == 1
    out = capsys.readouterr().out
    assert f"OK {given / inside.name} " in out
    assert (f"FAIL {given / 'up'}: cannot list the directory (a symbolic link to "
            f"{home.resolve()}, which holds {given}: not followed)") in out
    assert outside.name not in out


def test_links_not_followed_are_named_in_sorted_order(
    tmp_path: Path, make_bundle: MakeBundle
) -> None:
    # They came in the order the directory listed them, which the file system picks.
    top = tmp_path / "top"
    make_bundle("a", directory=top)
    names = [f"u{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1)]
    for name in names:
        os.symlink(tmp_path, top / name)
    errors: list[OSError] = []
    list(find_bundles([str(top)], onerror=errors.append))
    assert [e.filename for e in errors] == [str(top / n) for n in sorted(names)]
