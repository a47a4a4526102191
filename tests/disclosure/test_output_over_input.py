"""``disclose --out`` and ``report --html`` naming one of the command's own inputs are
refused: the producer's disclosure file replaced by a reviewer's subset loses the salts
of every other committed value for good, and a bundle or key replaced by a report is
evidence lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from disclosure_support import Written, trust_root, write_bundle

from spanproof.verifier._cli import main


@pytest.fixture
def written(tmp_path: Path) -> Written:
    return write_bundle(tmp_path / "out")


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    return trust_root(tmp_path / "keys")[1]


def test_disclose_out_refuses_the_producers_disclosure_file(capsys, written):
    before = written.disclosures.read_bytes()
    status = main(["disclose", str(written.bundle), "--attr", "customer.email",
                   "--out", str(written.disclosures)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"--out {written.disclosures}: is {written.disclosures}, an input" in err
    assert written.disclosures.read_bytes() == before


def test_disclose_out_refuses_the_bundle_and_another_name_for_an_input(
        capsys, tmp_path, written):
    bundle = written.bundle.read_bytes()
    assert main(["disclose", str(written.bundle), "--attr", "customer.email",
                 "--out", str(written.bundle)]) == 2
    link = tmp_path / "link.json"
    os.symlink(written.disclosures, link)
    assert main(["disclose", str(written.bundle), "--attr", "customer.email",
                 "--out", str(link)]) == 2
    err = capsys.readouterr().err
    assert f"--out {link}: is {written.disclosures}, an input" in err
    assert written.bundle.read_bytes() == bundle


@pytest.fixture
def witness_pub(tmp_path: Path) -> Path:
    assert main(["witness", "keygen", "--key", str(tmp_path / "witness.key")]) == 0
    return tmp_path / "witness.key.pub"


@pytest.mark.parametrize("which", ["bundle", "disclosures", "key", "witness key"])
def test_report_html_refuses_an_input(capsys, written, pem, witness_pub, which):
    # The witness key, the reviewer's pinned anchor, was written over (exit 0).
    target = {"bundle": written.bundle, "disclosures": written.disclosures, "key": pem,
              "witness key": witness_pub}[which]
    before = target.read_bytes()
    status = main(["report", "--key", str(pem), "--witness-key", str(witness_pub),
                   "--html", str(target), str(written.bundle.parent)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"--html {target}: is " in err and "an input of this command" in err
    assert target.read_bytes() == before


def test_an_existing_other_file_is_still_replaced(capsys, tmp_path, written, pem):
    out = tmp_path / "reviewer.json"
    out.write_text("old")
    assert main(["disclose", str(written.bundle), "--attr", "customer.email",
                 "--out", str(out)]) == 0
    html = tmp_path / "report.html"
    html.write_text("old")
    assert main(["report", "--key", str(pem), "--html", str(html),
                 str(written.bundle.parent)]) == 0
    assert html.read_text().startswith("<!DOCTYPE html>")
