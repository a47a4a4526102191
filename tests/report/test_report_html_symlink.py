"""``spanproof report --html LINK``: a symbolic link to a file is written through (the
link stays, the file it names is replaced), as a shell's ``>`` does; a link that leads
to no file is refused by name, with nothing written, as a dangling ``signing.key`` is."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cli_support import Keys, MakeBundle
from report_support import read_report, run


def test_report_html_through_a_symbolic_link_writes_the_file_it_names(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "report.html"
    target.write_text("last week's report")
    here = tmp_path / "here"
    here.mkdir()
    link = here / "report.html"
    os.symlink(os.path.join("..", "shared", "report.html"), link)  # relative, as ln -s makes

    code, out, err = run(capsys, "report", "--key", keys.pub, path, "--html", link)
    assert code == 0, out + err
    assert out.splitlines()[-1] == f"report written to {link}"
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "shared", "report.html")
    assert read_report(target).body_verdict == "OK"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(os.listdir(here)) == ["report.html"]  # no temporary file left beside it
    assert sorted(os.listdir(shared)) == ["report.html"]


@pytest.mark.parametrize("kind", ["missing", "loop"])
def test_report_html_refuses_a_dangling_symbolic_link(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, kind: str
):
    path, _ = make_bundle()
    shared = tmp_path / "shared"
    shared.mkdir()
    link = tmp_path / "report.html"
    if kind == "missing":
        os.symlink(shared / "not-mounted" / "report.html", link)
    else:
        os.symlink(tmp_path / "other.html", link)
        os.symlink(link, tmp_path / "other.html")
    before = os.readlink(link)

    code, out, err = run(capsys, "report", "--key", keys.pub, path, "--html", link)
    assert code == 2, out + err
    assert out == ""
    assert f"--html {link}: is a symbolic link to {before}, which does not exist" in err
    assert "nothing is written through it" in err
    assert os.readlink(link) == before  # the link is left as it was
    assert os.listdir(shared) == []
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["bundles", "keys", "shared", "report.html", *(["other.html"] if kind == "loop" else [])]
    )


def test_report_html_refuses_a_symbolic_link_another_user_owns(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, monkeypatch
):
    # Planted in a shared folder, it chose which of the user's files the report
    # replaced: the producer's private key, say.
    path, _ = make_bundle()
    precious = tmp_path / "signing.key"
    precious.write_text("a private key\n")
    link = tmp_path / "report.html"
    os.symlink(precious, link)
    monkeypatch.setattr(os, "geteuid", lambda: os.lstat(link).st_uid + 1)
    code, out, err = run(capsys, "report", "--key", keys.pub, path, "--html", link)
    assert code == 2, out + err
    assert f"--html {link}: is a symbolic link owned by another user" in err
    assert "nothing is written through it" in err
    assert precious.read_text() == "a private key\n"
    assert link.is_symlink()
