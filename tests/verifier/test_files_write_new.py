"""``write_new``: a file written whole under a name not taken yet, never over another."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from spanproof.verifier import _files


def test_write_new_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "evidence.json"
    _files.write_new(target, b"first\n")
    with pytest.raises(FileExistsError):
        _files.write_new(target, b"second\n")
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    with pytest.raises(FileExistsError):
        _files.write_new(tmp_path / "link", b"through a link\n")
    assert target.read_bytes() == b"first\n" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence.json", "link"]


def test_write_new_without_hard_links_creates_the_file_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: str, target: str) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(_files.os, "link", no_links)
    target = tmp_path / "evidence.json"
    _files.write_new(target, b"first\n")
    with pytest.raises(FileExistsError):
        _files.write_new(target, b"second\n")
    assert target.read_bytes() == b"first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["evidence.json"]
