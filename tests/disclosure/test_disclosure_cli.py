"""``spanproof disclose`` and ``spanproof verify --disclosures`` (SPEC §2.5.4, §2.5.5)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from disclosure_support import SPAN_A, SPAN_B, Written, span_body, trust_root, write_bundle

from spanproof.verifier._cli import main
from spanproof.verifier.disclosure import DisclosureFile, load_disclosures


@pytest.fixture
def written(tmp_path: Path) -> Written:
    return write_bundle(tmp_path / "out")


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    return trust_root(tmp_path / "keys")[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _disclose(capsys: pytest.CaptureFixture[str], written: Written, out: Path,
              *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "disclose", str(written.bundle), *extra, "--out", str(out))


def test_disclose_extracts_named_attributes_with_mode_0600(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.email")
    assert code == 0, stdout
    assert "wrote 2 disclosure(s) on 2 span(s)" in stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    file = load_disclosures(out)
    assert {(d.span_id, d.key) for d in file.disclosures} == {
        (SPAN_A, "customer.email"), (SPAN_B, "customer.email")}


def test_disclose_out_through_a_symbolic_link_writes_the_file_it_names(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    # The link was replaced by a regular file, and the file it named kept the old
    # disclosures, as `report --html` did before.
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "reviewer.json"
    target.write_text("last week's disclosures")
    link = tmp_path / "reviewer.json"
    os.symlink(os.path.join("shared", "reviewer.json"), link)
    code, stdout, _ = _disclose(capsys, written, link, "--attr", "customer.email")
    assert code == 0, stdout
    assert link.is_symlink() and os.readlink(link) == os.path.join("shared", "reviewer.json")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert {d.key for d in load_disclosures(target).disclosures} == {"customer.email"}
    assert sorted(os.listdir(shared)) == ["reviewer.json"]


def test_disclose_out_refuses_a_symbolic_link_to_nothing(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "reviewer.json"
    os.symlink(tmp_path / "not-mounted" / "reviewer.json", link)
    code, stdout, err = _disclose(capsys, written, link, "--attr", "customer.email")
    assert code == 2
    assert stdout == ""
    assert f"--out {link}: is a symbolic link to " in err
    assert "nothing is written through it" in err
    assert not (tmp_path / "not-mounted").exists()


def test_disclose_out_refuses_a_symbolic_link_another_user_owns(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    precious = tmp_path / "signing.key"
    precious.write_text("a private key\n")
    link = tmp_path / "reviewer.json"
    os.symlink(precious, link)
    monkeypatch.setattr(os, "geteuid", lambda: os.lstat(link).st_uid + 1)
    code, stdout, err = _disclose(capsys, written, link, "--attr", "customer.email")
    assert (code, stdout) == (2, "")
    assert f"--out {link}: is a symbolic link owned by another user" in err
    assert precious.read_text() == "a private key\n"


def test_disclose_limited_to_spans_and_globs(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.*", "case.priority",
                                "--span", SPAN_A)
    assert code == 0, stdout
    file = load_disclosures(out)
    assert {d.key for d in file.disclosures} == {"customer.email", "customer.tier",
                                                 "case.priority"}
    assert {d.span_id for d in file.disclosures} == {SPAN_A}


def test_disclose_unknown_attribute_fails_and_writes_nothing(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.email",
                                "customer.phone")
    assert code == 1
    assert "no disclosure of attribute 'customer.phone'" in stdout
    assert not out.exists()


def test_disclose_of_an_attribute_in_clear_says_there_is_nothing_to_disclose(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "no disclosure of attribute ... in B.disclosures.json", as for a name
    # the bundle does not hold, while the bundle shows the value to anyone.
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.email",
                                "gen_ai.operation.*", "customer.phone")
    assert code == 1
    assert stdout.splitlines() == [
        f"FAIL {written.bundle}: attribute 'gen_ai.operation.*' is in clear in the bundle "
        "(not committed): there is nothing to disclose",
        f"FAIL {written.bundle}: no disclosure of attribute 'customer.phone' in "
        f"{written.disclosures}",
    ]
    assert not out.exists()
    # On the spans named: fraud.score is in clear on span B and not on span A.
    for span, line in (
        (SPAN_B, "attribute 'fraud.score' is in clear in the bundle on the given span(s) "
                 "(not committed): there is nothing to disclose"),
        (SPAN_A, f"no disclosure of attribute 'fraud.score' on the given span(s) in "
                 f"{written.disclosures}"),
    ):
        code, stdout, _ = _disclose(capsys, written, out, "--attr-exact", "fraud.score",
                                    "--span", span)
        assert code == 1 and stdout == f"FAIL {written.bundle}: {line}\n"
        assert not out.exists()


def test_disclose_without_disclosure_file_is_a_usage_error(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    written.disclosures.unlink()
    code, _, err = _disclose(capsys, written, tmp_path / "r.json", "--attr", "customer.email")
    assert code == 2
    assert "cannot read disclosure file" in err


@pytest.mark.timeout(60)  # a named pipe must be refused unread, never waited on
@pytest.mark.parametrize("kind", ["directory", "named pipe", "missing"])
def test_disclose_says_what_a_bundle_path_that_is_no_bundle_file_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # A directory or a named pipe was "no such bundle file", as if the path were
    # mistyped.
    path = tmp_path / "b.spanproof.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "named pipe":
        os.mkfifo(path)
    code, out, err = _run(capsys, "disclose", str(path), "--attr", "customer.email",
                          "--out", str(tmp_path / "r.json"))
    assert code == 2 and out == ""
    expected = {"directory": "is a directory; disclose takes one bundle file",
                "named pipe": "cannot read: not a regular file (a named pipe)",
                "missing": "no such file or directory"}[kind]
    assert f"{path}: {expected}" in err
    assert not (tmp_path / "r.json").exists()


def test_disclose_refuses_disclosures_that_do_not_match_the_bundle(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(written.disclosures.read_bytes())
    for entry in doc["disclosures"]:
        if entry["key"] == "customer.email":
            entry["value"] = {"stringValue": "someone@else.example"}
    written.disclosures.write_text(json.dumps(doc))
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.email")
    assert code == 1
    assert "value does not match the commitment" in stdout
    assert not out.exists()


def test_verify_with_disclosures_shows_values(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reviewer.json"
    assert _disclose(capsys, written, out, "--attr", "customer.*")[0] == 0
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(out),
                           str(written.bundle))
    assert code == 0, stdout
    assert stdout.startswith("OK ")
    assert f"DISCLOSED trace=4bf92f3577b34da6a3ce929d0e0e4736 span={SPAN_A} customer.email = " \
           '"ana@example.com" (string): opens the commitment in record 0' in stdout
    assert "customer.tier = 5 (int)" in stdout
    assert "customer.flags = [" in stdout
    assert "customer.note = (empty)" in stdout


def test_verify_json_lists_disclosures(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _run(capsys, "verify", "--json", "--key", str(pem), "--disclosures",
                           str(written.disclosures), str(written.bundle))
    assert code == 0
    doc = json.loads(stdout)
    assert doc["ok"] is True
    assert len(doc["disclosures"]) == 8
    assert {d["status"] for d in doc["disclosures"]} == {"PASS"}


def _forge(path: Path, out: Path, source_key: str, changes: dict[str, object]) -> Path:
    doc = json.loads(path.read_bytes())
    (entry,) = [e for e in doc["disclosures"]
                if e["key"] == source_key and e["spanId"] == SPAN_A]
    entry.update(changes)
    doc["disclosures"] = [entry]
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize(
    ("key", "changes", "message"),
    [
        ("customer.email", {"value": {"stringValue": "bob@example.com"}},
         "value does not match the commitment"),
        ("customer.tier", {"value": {"stringValue": "5"}},
         "type mismatch for attribute 'customer.tier'"),
        ("customer.email", {"salt": "ff" * 16}, "salt does not match the commitment"),
        ("customer.email", {"spanId": SPAN_B},
         "(moved from another span or attribute)"),
        ("customer.email", {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
         "is not committed: its value is in the record in clear"),
        # Its line was cut at 200 characters, inside the diagnosis.
        ("customer.email", {"key": "customer.tier"},
         "carries the salt of attribute 'customer.email' of span "),
    ],
    ids=["changed_value", "changed_type", "wrong_salt", "moved_span", "not_committed",
         "moved_key"],
)
def test_verify_with_bad_disclosure_fails(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str],
    key: str, changes: dict[str, object], message: str,
) -> None:
    forged = _forge(written.disclosures, tmp_path / "forged.json", key, changes)
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(forged),
                           str(written.bundle))
    assert code == 1
    assert stdout.startswith("OK "), "the bundle itself still verifies"
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("FAIL disclosure")]
    assert message in line, line
    assert "more characters" not in line, line  # said whole


def test_a_malformed_disclosure_file_fails_as_a_malformed_bundle_does_not_as_a_usage_error(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A disclosure file is evidence handed over with the bundles.  A malformed one
    # was a usage error (exit 2): nothing verified, no FAIL line, and --json printed
    # no document at all, while an empty one, or a malformed bundle, is a FAIL line
    # and exit 1 with the rest still checked.
    bad = tmp_path / "bad.json"
    bad.write_text('{"mediaType":"application/vnd.spanproof.disclosures.v9+json"}')
    reason = ("unknown mediaType 'application/vnd.spanproof.disclosures.v9+json' "
              "(this verifier knows 'application/vnd.spanproof.disclosures.v1+json')")
    good = tmp_path / "good.json"
    good.write_bytes(written.disclosures.read_bytes())
    code, stdout, err = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(bad),
                             "--disclosures", str(good), str(written.bundle))
    assert (code, err) == (1, "")
    lines = stdout.splitlines()
    assert lines[0] == f"FAIL {bad}: {reason}"
    assert lines[1].startswith(f"OK {written.bundle} "), "the bundle is still verified"
    assert [ln for ln in lines[2:] if ln.startswith("DISCLOSED")], "the good file is checked"
    code, stdout, _ = _run(capsys, "verify", "--json", "--key", str(pem), "--disclosures",
                           str(bad), str(written.bundle))
    doc = json.loads(stdout)
    assert (code, doc["ok"], doc["bundles"][0]["verdict"]) == (1, False, "OK")
    assert doc["errors"] == [{"path": str(bad), "reason": reason}]  # said once, not twice
    html = tmp_path / "report.html"
    code, stdout, _ = _run(capsys, "report", "--key", str(pem), "--disclosures", str(bad),
                           "--html", str(html), str(written.bundle))
    assert code == 1 and f"FAIL {bad}: {reason}" in stdout and html.exists()
    # A disclosure file that is not there is a mistake in the command, as a PATH is.
    code, stdout, err = _run(capsys, "verify", "--key", str(pem), "--disclosures",
                             str(tmp_path / "absent.json"), str(written.bundle))
    assert (code, stdout) == (2, "") and "cannot read disclosure file" in err


def test_verify_with_disclosure_file_over_the_size_limit_fails(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as f:  # sparse: no data is written
        f.truncate(64 * 1024 * 1024 + 1)
    code, stdout, err = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(big),
                             str(written.bundle))
    assert (code, err) == (1, "")
    assert (f"FAIL {big}: longer than 67108864 bytes; a disclosure file is at most 64 MiB"
            in stdout)


def test_verify_with_empty_disclosure_file_fails(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_bytes(DisclosureFile(()).to_bytes())
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(empty),
                           str(written.bundle))
    assert code == 1
    assert f"FAIL {empty}: holds no disclosures (nothing was checked)" in stdout
    # --json said ok with exit 0, and report passed, having checked nothing.
    code, stdout, _ = _run(capsys, "verify", "--json", "--key", str(pem), "--disclosures",
                           str(empty), str(written.bundle))
    doc = json.loads(stdout)
    assert (code, doc["ok"], doc["disclosures"]) == (1, False, [])
    assert doc["errors"] == [{"path": str(empty),
                              "reason": "holds no disclosures (nothing was checked)"}]
    html = tmp_path / "report.html"
    code, stdout, _ = _run(capsys, "report", "--key", str(pem), "--disclosures", str(empty),
                           "--html", str(html), str(written.bundle))
    assert code == 1
    assert f"FAIL {empty}: holds no disclosures (nothing was checked)" in stdout


def test_verify_without_disclosures_ignores_the_disclosure_file(
    written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written.disclosures.unlink()
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), str(written.bundle))
    assert code == 0
    assert "DISCLOSED" not in stdout


def test_show_marks_a_committed_genai_attribute(
    tmp_path: Path, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_bundle(tmp_path / "shown", redact=("gen_ai.operation.name",))
    code, stdout, _ = _run(capsys, "show", "--key", str(pem), str(written.bundle))
    assert code == 0, stdout
    assert "operation=<committed>" in stdout, stdout
    assert "execute_tool" not in stdout and "operation=?" not in stdout


def test_a_producer_file_over_the_reviewer_limit_is_still_disclosed_in_part(
    tmp_path: Path, pem: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # Committed values under MAX_VALUE_BYTES can add up to a disclosure file over the
    # 64 MiB a verifier reads (a control character takes six bytes of JSON): the
    # exporter wrote it without a word, and `disclose` refused it too, so no
    # commitment of that bundle could be opened.  The limits are made small here.
    from spanproof.exporter import sinks
    from spanproof.verifier import _cli, disclosure

    for module in (sinks, _cli, disclosure):
        monkeypatch.setattr(module, "MAX_DISCLOSURE_FILE_BYTES", 1500)
    with caplog.at_level("ERROR", logger="spanproof.exporter.sinks"):
        written = write_bundle(tmp_path / "out")
    size = written.disclosures.stat().st_size
    assert size > 1500
    assert any("over the 1500 a verifier reads" in r.getMessage() for r in caplog.records)
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), "--disclosures",
                           str(written.disclosures), str(written.bundle))
    assert code == 1 and "longer than 1500 bytes" in stdout  # a reviewer's input: bounded
    out = tmp_path / "reviewer.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "customer.email",
                                "--span", SPAN_A)
    assert code == 0, stdout  # the producer's own file is read
    code, stdout, _ = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(out),
                           str(written.bundle))
    assert code == 0 and "DISCLOSED" in stdout
    # What disclose writes for a reviewer must be readable by the reviewer.
    code, stdout, _ = _disclose(capsys, written, tmp_path / "all.json", "--attr", "*")
    assert code == 1 and "over the 1500 a reviewer's verifier reads" in stdout
    assert not (tmp_path / "all.json").exists()


def test_disclose_attr_exact_does_not_hand_out_keys_a_pattern_would_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_bundle(tmp_path / "odd", [span_body(SPAN_A, {
        "pin?": "which pin", "pin2": "4711", "note*": "n", "note-secret": "s3cr3t"})],
        redact=("pin*", "note*"))
    out = tmp_path / "exact.json"
    code, stdout, _ = _disclose(capsys, written, out, "--attr-exact", "pin?", "note*")
    assert code == 0, stdout
    assert sorted(d.key for d in load_disclosures(out).disclosures) == ["note*", "pin?"]
    # As a pattern, the same name selects more: that stays so, and shows.
    code, stdout, _ = _disclose(capsys, written, out, "--attr", "pin?")
    assert code == 0, stdout
    assert sorted(d.key for d in load_disclosures(out).disclosures) == ["pin2", "pin?"]
    assert f"disclosed span={SPAN_A} 'pin2'" in stdout


def test_disclose_lists_each_attribute_it_writes(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _disclose(capsys, written, tmp_path / "r.json", "--attr", "customer.e*")
    assert code == 0, stdout
    assert stdout.splitlines() == [
        f"disclosed span={SPAN_A} 'customer.email'",
        f"disclosed span={SPAN_B} 'customer.email'",
        f"wrote 2 disclosure(s) on 2 span(s) to {tmp_path / 'r.json'} (mode 0600)",
    ]


def test_disclose_needs_attr_or_attr_exact(
    tmp_path: Path, written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _disclose(capsys, written, tmp_path / "r.json")
    assert code == 2
    assert "--attr or --attr-exact" in err


def test_report_holding_disclosed_values_is_readable_by_its_owner_only(
    tmp_path: Path, written: Written, pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "report.html"
    old = os.umask(0o022)  # what would leave a plainly opened file readable by all
    try:
        code, stdout, _ = _run(capsys, "report", "--key", str(pem), "--disclosures",
                               str(written.disclosures), "--html", str(html),
                               str(written.bundle))
    finally:
        os.umask(old)
    assert code == 0, stdout
    assert stat.S_IMODE(os.stat(html).st_mode) == 0o600
    assert "ana@example.com" in html.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
