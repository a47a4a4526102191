"""A bundle whose committed values share a salt verifies, with a remark that says so
(SPEC §2.5.2): equal salt digests are equal salts, and whoever holds the disclosure
of one value can then test guesses of the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from disclosure_support import SPAN_A, default_bodies, seal_bodies, trust_root

from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import Verdict, check_bundle
from spanproof.verifier._cli import main


def _written(tmp_path: Path, salt: bytes | None) -> Path:
    source = None if salt is None else (lambda: salt)
    return Path(DirectorySink(tmp_path / "out").write(seal_bodies(default_bodies(),
                                                                  salt=source)))


def test_reused_salt_is_reported_without_failing_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _written(tmp_path, b"\x07" * 16)
    trust, pem = trust_root(tmp_path / "keys")
    report = check_bundle(bundle, trust)
    assert report.verdict is Verdict.OK
    (remark,) = report.remarks
    assert remark.startswith("salt reused: the commitment of 'customer.email' in record 0 "
                             "has the salt digest of a commitment in the same record")
    assert "(7 committed values reuse an earlier one's salt)" in remark
    assert main(["verify", "--key", str(pem), str(bundle)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("OK ")
    assert lines[1] == f"  remark: {remark}"
    main(["verify", "--json", "--key", str(pem), str(bundle)])
    assert json.loads(capsys.readouterr().out)["bundles"][0]["remarks"] == [remark]


def test_reused_salt_across_records_names_both(tmp_path: Path) -> None:
    bodies = default_bodies()
    for body in bodies:  # one committed attribute per record
        attributes = body["span"]["attributes"]
        for key in [k for k in attributes if k != "gen_ai.operation.name"]:
            del attributes[key]
        attributes["customer.id"] = {"stringValue": body["span"]["spanId"]}
    bundle = Path(DirectorySink(tmp_path / "out").write(
        seal_bodies(bodies, salt=lambda: b"\x01" * 16)))
    trust, _pem = trust_root(tmp_path / "keys")
    (remark,) = check_bundle(bundle, trust).remarks
    assert "of 'customer.id' in record 1 has the salt digest of a commitment in record 0" \
        in remark
    assert "(2 committed values" in remark


def test_fresh_salts_give_no_remark(tmp_path: Path) -> None:
    bundle = _written(tmp_path, None)
    trust, _pem = trust_root(tmp_path / "keys")
    report = check_bundle(bundle, trust)
    assert report.verdict is Verdict.OK
    assert report.remarks == ()


def test_report_shows_the_reused_salt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _written(tmp_path, b"\x07" * 16)
    _trust, pem = trust_root(tmp_path / "keys")
    html = tmp_path / "report.html"
    assert main(["report", "--key", str(pem), "--html", str(html), str(bundle)]) == 0
    assert "  remark: salt reused" in capsys.readouterr().out
    assert '<p class="remark note">salt reused: ' in html.read_text()


def test_disclose_refuses_a_salt_that_also_opens_a_value_not_chosen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Handed one value's disclosure, a reviewer holds its salt, and with it can test
    # guesses of every other value committed with that salt: 'customer.tier' (5) in
    # a few hashes.  disclose wrote the file without a word.
    bundle = _written(tmp_path, b"\x07" * 16)
    out = tmp_path / "for-reviewer.json"
    assert main(["disclose", str(bundle), "--attr-exact", "customer.email", "--span", SPAN_A,
                 "--out", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert not out.exists()
    assert lines == [
        f"FAIL {bundle}: the salt of 'customer.email' on span {SPAN_A} is also the salt of "
        f"'case.priority' on span {SPAN_A} (record 0), which is not chosen: whoever gets the "
        "file could test guesses of that value (a reused salt, SPEC §2.5.2); nothing "
        "written. Choose both (--attr-exact, --span), or neither",
        f"FAIL {bundle}: 6 more commitment(s) not chosen share a chosen salt",
    ]
    # Every value the salt opens chosen: the file hands out nothing more than it says.
    assert main(["disclose", str(bundle), "--attr", "*", "--out", str(out)]) == 0
    assert out.exists()


def test_salts_past_the_limit_are_not_kept_and_a_remark_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every salt digest was kept while the records streamed, before they were proven
    # signed: ~160 bytes per committed value, 800 MB for a forged bundle of them.
    from spanproof.verifier import verify

    monkeypatch.setattr(verify, "SALTS_CHECKED", 3)
    bundle = _written(tmp_path, None)  # fresh salts: 8 committed values
    trust, _pem = trust_root(tmp_path / "keys")
    kept: list[int] = []
    add = verify._SaltReuse.add

    def counting(self: verify._SaltReuse, record, position: int) -> None:
        add(self, record, position)
        kept.append(len(self.seen))

    monkeypatch.setattr(verify._SaltReuse, "add", counting)
    report = check_bundle(bundle, trust)
    assert report.verdict is Verdict.OK
    assert max(kept) == 3
    assert report.remarks == ("salt reuse not checked for 5 committed values: only the first "
                              "3 distinct salt digests of a bundle are compared",)
