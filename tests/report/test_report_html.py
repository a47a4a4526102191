"""``spanproof report --html``: what the self-contained report says, that it loads
nothing, that bundle content is only ever text, and its exit status."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cli_support import (
    OTHER_TRACE,
    PRODUCER,
    ROOT,
    SEALED_AT,
    TRACE,
    Keys,
    MakeBundle,
    flip_in_record,
    span_body,
    workflow_bodies,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from report_support import WORKFLOW_STEPS, read_page, read_report, run

from spanproof.exporter.disclosure import AttributeMatcher
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.disclosure import Disclosure, DisclosureFile
from spanproof.verifier.report import (
    COMMITTED_NOT_DISCLOSED,
    ReportItem,
    render_html,
    summarize_checks,
)
from spanproof.verifier.statement import Completeness
from spanproof.verifier.verify import Check, Status, Verdict

SCRIPT_NAME = "<script>alert(1)</script>"


def test_report_of_a_verified_bundle(capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle):
    path, _ = make_bundle()
    out_file = tmp_path / "report.html"
    code, out, err = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"OK {path} trace={TRACE}")  # the verify line
    assert out.splitlines()[-1] == f"report written to {out_file}"
    page = read_report(out_file)
    assert page.body_verdict == "OK"
    assert sorted(set(page.steps)) == sorted(WORKFLOW_STEPS)
    assert "FAIL" not in page.verdicts
    assert "Verified. These 7 records are exactly what the holder of the trusted key" in page.text
    assert "Was it changed?" in page.text and "What ran" in page.text
    # Every SPEC §8 check with its outcome; no witness key given, so step 10 is skipped.
    assert {name: cells[2] for name, cells in page.checks.items()} == {
        "format": "PASS", "envelope": "PASS", "signature": "PASS", "statement": "PASS",
        "key-validity": "PASS", "records": "PASS", "chain": "PASS", "head": "PASS",
        "completeness": "PASS", "receipt": "SKIPPED",
    }
    assert "9 passed, 1 skipped" in page.text
    # GenAI attributes, status and the missing parent.
    assert "operation: chat" in page.text and "model: support-classifier-1" in page.text
    assert "input_tokens: 53" in page.text and "tool: crm.get_account" in page.text
    assert "ERROR: no account for customer CUST-4040" in page.text
    assert "(parent not certified)" in page.text
    assert "Nothing declared missing." in page.text
    assert "Not checked: no receipt" in page.text


def test_report_says_when_segment_0_of_a_trace_is_not_present(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    _, first = make_bundle("seg0", directory=tmp_path / "withheld")
    path, _ = make_bundle("seg1", position=first.next_position())
    out_file = tmp_path / "report.html"
    code, out, err = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 0, err
    assert "segment 1 forms one chain (segment 0 not present)" in out
    page = read_report(out_file)
    assert page.body_verdict == "OK"
    assert (f"Segments of producer instance {PRODUCER.instance} form one chain: segment 1 "
            "forms one chain (segment 0 not present)") in page.text


def test_report_of_a_tampered_bundle_shows_fail_and_the_reason(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    flip_in_record(path, 3)  # record 4 then fails its previous-hash check
    out_file = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 1
    assert out.startswith(f"FAIL {path}: record 4: previous-hash mismatch")
    page = read_report(out_file)
    assert page.body_verdict == "FAIL"
    assert page.verdicts.count("FAIL") >= 3  # overall, trace and bundle banners
    assert "Verification FAILED: record 4: previous-hash mismatch" in page.text
    assert "Yes. The records do not match what was signed" in page.text
    assert "NOT VERIFIED: the 4 record(s) below were read before the failure" in page.text
    assert "Xxecute_tool crm.get_account" in page.steps  # shown as read, marked unverified
    assert page.checks["chain"][2] == "FAIL"
    assert page.checks["head"][2] == "SKIPPED"


def test_report_of_a_bundle_signed_by_another_key_shows_no_records(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    out_file = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.other_pub, path, "--html", out_file)
    assert code == 1
    page = read_report(out_file)
    assert page.steps == []
    assert "signed by a key that is not trusted" in page.text
    assert "Cannot tell: the bundle is not signed by a key you trust" in page.text


def test_unreadable_file_is_reported_as_failed(capsys, tmp_path: Path, keys: Keys):
    bad = tmp_path / "bad.spanproof.json"
    bad.write_bytes(b"garbage\n")
    out_file = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, bad, "--html", out_file)
    assert code == 1
    page = read_report(out_file)
    assert page.body_verdict == "FAIL" and page.steps == []
    assert "Cannot tell: the file is not a readable bundle" in page.text


def test_report_loads_nothing_from_anywhere(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    good, _ = make_bundle("good")
    bad, _ = make_bundle("bad")
    flip_in_record(bad, 2)
    out_file = tmp_path / "report.html"
    run(capsys, "report", "--key", keys.pub, good, bad, "--html", out_file)
    html = out_file.read_text(encoding="utf-8")
    page = read_page(html)
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"url\(|@import|javascript:", html, re.IGNORECASE)
    for tag in ("script", "link", "img", "iframe", "object", "embed", "base", "form"):
        assert tag not in page.tags
    for tag, name, value in page.attributes:
        assert name != "src", (tag, value)
        if name == "href":
            assert value.startswith("#"), (tag, value)  # links within the page only
        assert not name.startswith("on"), (tag, name)
    assert page.csp is not None
    assert "default-src 'none'" in page.csp and "unsafe-inline" not in page.csp


def test_bundle_content_is_escaped(capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle):
    bodies = [
        span_body(TRACE, ROOT, "", SCRIPT_NAME, status=("STATUS_CODE_ERROR", "</td><b>bold"),
                  attributes={"gen_ai.request.model": '"><img src=x onerror=alert(2)>',
                              "<i>key</i>": "x & y", "gen_ai.operation.name": "chat"}),
    ]
    path, _ = make_bundle(bodies=bodies)
    out_file = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 0
    html = out_file.read_text(encoding="utf-8")
    assert SCRIPT_NAME not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = read_page(html)
    assert "script" not in page.tags and "img" not in page.tags and "i" not in page.tags
    assert SCRIPT_NAME in page.steps  # shown as text
    assert '"><img src=x onerror=alert(2)>' in page.text
    assert "</td><b>bold" in page.text and "<i>key</i>" in page.text


def test_incomplete_bundle_is_shown_and_exits_like_verify(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle(completeness=Completeness(dropped_spans=2, notes=("queue full",)))
    out_file = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 1 and out.startswith("INCOMPLETE ")
    page = read_report(out_file)
    assert page.body_verdict == "INCOMPLETE"
    assert "Verified but INCOMPLETE" in page.text
    assert "2 step(s) dropped before they could be certified" in page.text
    assert "queue full" in page.text
    code, _, _ = run(capsys, "report", "--key", keys.pub, "--allow-incomplete", path,
                     "--html", out_file)
    assert code == 0
    assert read_report(out_file).body_verdict == "OK"


def test_exit_status_mirrors_verify(capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle):
    good, _ = make_bundle("good")
    bad, _ = make_bundle("bad")
    flip_in_record(bad, 1)
    html = tmp_path / "r.html"
    for paths in ([good], [good, bad], [bad]):
        verify_code, _, _ = run(capsys, "verify", "--key", keys.pub, *paths)
        report_code, _, _ = run(capsys, "report", "--key", keys.pub, *paths, "--html", html)
        assert report_code == verify_code
    assert run(capsys, "report", "--key", keys.pub, good, bad, "--html", html)[0] == 1
    assert read_report(html).body_verdict == "FAIL"  # still written when something failed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(capsys, "report", "--key", keys.pub, empty, "--html", html)[0] == 1
    assert f"{empty}: no bundles (*.spanproof.json) found." in read_report(html).text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "{good}", "--html", "{html}"], "no trusted key"),
        (["report", "--key", "{pub}", "{good}"], "the following arguments are required: --html"),
        (["report", "--key", "{pub}", "{absent}", "--html", "{html}"], "no such file"),
        (["report", "--key", "{pub}", "{good}", "--html", "{tmp}"], "is a directory"),
        (["report", "--key", "{pub}", "{good}", "--html", "{tmp}/no/such/dir/r.html"],
         "cannot write the report"),
        (["report", "--key", "{pub}", "--require-receipt", "{good}", "--html", "{html}"],
         "--require-receipt needs --witness-key"),
        (["report", "--key", "{pub}", "--witness-origin", "log.example", "{good}", "--html",
          "{html}"], "--witness-origin needs --witness-key"),
        (["report", "--key", "{pub}", "--disclosures", "{absent}", "{good}", "--html",
          "{html}"], "cannot read disclosure file"),
    ],
    ids=["no-key", "no-html", "missing-path", "html-is-dir", "unwritable", "receipt",
         "origin-without-witness-key", "no-disclosures"],
)
def test_usage_errors_exit_2(capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
                             argv: list[str], message: str):
    good, _ = make_bundle()
    values = {"good": good, "pub": keys.pub, "html": tmp_path / "r.html", "tmp": tmp_path,
              "absent": tmp_path / "absent.json"}
    code, out, err = run(capsys, *(a.format(**values) for a in argv))
    assert code == 2
    assert message in err and err.count("spanproof") >= 1
    assert out == ""


def test_genai_tags_of_values_of_different_types_read_differently(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    # Tags name no types: an int and a string of its digits read "412" alike, a string
    # with a trailing space read as the word, and a string that says "committed (not
    # disclosed)" as a committed value.
    def span(span_id: str, name: str, attributes: dict) -> dict:
        return span_body(TRACE, span_id, ROOT, name, attributes=attributes)

    bodies = [
        span_body(TRACE, ROOT, "", "root"),
        span("00000000000000a1", "a", {"gen_ai.usage.input_tokens": 412,
                                        "gen_ai.request.model": COMMITTED_NOT_DISCLOSED,
                                        "gen_ai.operation.name": "approve"}),
        span("00000000000000b1", "b", {"gen_ai.usage.input_tokens": "412",
                                        "gen_ai.request.model": "<committed>",
                                        "gen_ai.operation.name": "approve "}),
    ]
    path, _ = make_bundle(bodies=bodies)
    html = tmp_path / "r.html"
    assert run(capsys, "report", "--key", keys.pub, path, "--html", html)[0] == 0
    tags = re.findall(r'<span class="tag genai"[^>]*>([^<]*)</span>', html.read_text())
    assert sorted(tags) == sorted([
        "input_tokens: 412", "model: &quot;committed (not disclosed)&quot;",
        "operation: approve",
        "input_tokens: &quot;412&quot;", "model: &quot;&lt;committed&gt;&quot;",
        "operation: &quot;approve &quot;",
    ])


def test_committed_values_and_their_disclosures(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    sealed = seal(
        TRACE, workflow_bodies(), ChainPosition.genesis(TRACE), signer=keys.signer,
        producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
        redact=AttributeMatcher.parse("gen_ai.request.*"),
        salt=lambda: bytes(16),
    )
    folder = tmp_path / "redacted"
    folder.mkdir()
    path = folder / sealed.file_name
    path.write_bytes(sealed.data)
    assert b'"gen_ai.request.model":{"committedValue":' in sealed.data
    html = tmp_path / "r.html"

    # Without disclosures: committed, not disclosed, and still verified.
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", html)
    assert code == 0
    page = read_report(html)
    assert f"request_model: {COMMITTED_NOT_DISCLOSED}" in page.text
    assert "response_model: support-classifier-1" in page.text  # not committed
    assert page.text.count(COMMITTED_NOT_DISCLOSED) == 2  # the tag and the attribute row

    # With the disclosure file: the value, marked as matching its commitment.
    disclosures = tmp_path / "d.json"
    disclosures.write_bytes(sealed.disclosures_data())
    code, out, _ = run(capsys, "report", "--key", keys.pub, "--disclosures", disclosures, path,
                       "--html", html)
    assert code == 0, out
    page = read_report(html)
    assert "disclosed, matches its commitment" in page.text
    assert "model: support-classifier-1" in page.text and "request_model" not in page.text
    assert '"support-classifier-1" (string)' in page.text
    assert "Disclosed values: 1 of 1 match their commitments." in page.text
    assert "DISCLOSED " in out

    # A changed value is rejected and fails the report.
    (d,) = DisclosureFile.from_bytes(disclosures.read_bytes()).disclosures
    forged = DisclosureFile((Disclosure(d.trace_id, d.span_id, d.key, d.salt,
                                        {"stringValue": "gpt-x"}),))
    disclosures.write_bytes(forged.to_bytes())
    code, out, _ = run(capsys, "report", "--key", keys.pub, "--disclosures", disclosures, path,
                       "--html", html)
    assert code == 1
    page = read_report(html)
    assert page.body_verdict == "FAIL"
    assert "disclosure REJECTED" in page.text
    assert f"request_model: {COMMITTED_NOT_DISCLOSED}" in page.text  # never the forged value
    assert "FAIL disclosure " in out


# ----------------------------------------------------------------------- library


def test_summarize_checks():
    def check(name: str, step: int, status: Status) -> Check:
        return Check(name, step, status, "")

    assert summarize_checks([check("a", 1, Status.PASS), check("b", 2, Status.PASS)]) == (
        "2 of 2 checks passed"
    )
    assert summarize_checks([
        check("format", 1, Status.PASS), check("chain", 7, Status.FAIL),
        check("head", 8, Status.SKIPPED),
    ]) == "1 passed, 1 FAILED (step 7 chain), 1 skipped"


def test_render_html_of_a_check_that_broke():
    html = render_html([ReportItem("x.spanproof.json", None, "verifier error: boom <b>")])
    page = read_page(html)
    assert page.body_verdict == Verdict.FAIL.value
    assert "verifier error: boom <b>" in page.text and "b" not in page.tags
    assert render_html([]).startswith("<!DOCTYPE html>")


def test_report_shows_a_note_longer_than_2000_characters_whole(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    # A note past 2,000 characters was cut ("… (N more characters)"), though
    # `verify --json` and `show` give it whole and the README says `report` does too.
    note = "recovered after a crash; spans: " + ",".join(f"{n:016x}" for n in range(200))
    assert len(note) > 2000
    path, _ = make_bundle(completeness=Completeness(notes=(note,)))
    out_file = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out_file)
    assert code == 0
    page = read_report(out_file)
    assert note in page.text
    assert "more characters" not in page.text


def test_report_does_not_call_records_unverified_when_only_the_receipt_failed(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    # A bundle whose signature, chain and head verified (SPEC §8 steps 1-8), failed
    # by its missing required receipt (step 10), was shown as "NOT VERIFIED: the 7
    # record(s) below were read before the failure ... may have been altered" and its
    # statement as "unverified", while `verify --verbose` says those steps PASS.
    path, _ = make_bundle(completeness=Completeness(dropped_spans=1))
    vkey = tmp_path / "witness.vkey"
    vkey.write_text(WitnessKey(Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
                               .public_key(), "report.test/witness").vkey())
    argv = ["--key", keys.pub, "--witness-key", vkey, "--require-receipt", path]
    code, out, _ = run(capsys, "verify", "--verbose", *argv)
    assert code == 1 and out.startswith(f"FAIL {path}: witness receipt: no receipt")
    assert "  PASS  step 7 chain" in out and "  PASS  step 8 head" in out
    out_file = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", *argv, "--html", out_file)
    assert code == 1
    page = read_report(out_file)
    assert page.body_verdict == "FAIL"
    assert "Verification FAILED: witness receipt: no receipt" in page.text
    assert "NOT VERIFIED" not in page.text and "(unverified) statement" not in page.text
    assert "may have been altered" not in page.text
    assert ("The 7 record(s) below match what was signed (SPEC §8 steps 1-8 passed), but "
            "the bundle FAILED a later check: witness receipt: no receipt") in page.text
    assert "Yes. The producer declared that 1 step(s) dropped" in page.text
    assert sorted(set(page.steps)) == sorted(WORKFLOW_STEPS)


@pytest.mark.parametrize(("completeness", "bundles", "counts"), [
    (None, "every bundle of this trace verified", "1 verified, 0 failed, 0 incomplete"),
    (Completeness(dropped_spans=1), "every bundle of this trace verified (some declaring "
     "steps they did not certify)", "0 verified, 0 failed, 1 incomplete"),
], ids=["verified", "incomplete"])
def test_trace_whose_disclosure_was_rejected_is_not_called_verified(
    capsys, tmp_path: Path, keys: Keys, completeness: Completeness | None, bundles: str,
    counts: str,
):
    # A trace whose bundles all verified, handed over with a disclosure that was
    # rejected, said "Every bundle of this trace verified." (or, incomplete, "Verified,
    # but ...") under an OK (INCOMPLETE) badge above the rejected value, and the page's
    # FAIL banner said only "1 verified, 0 failed, 0 incomplete".
    sealed = seal(
        TRACE, workflow_bodies(), ChainPosition.genesis(TRACE), signer=keys.signer,
        producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
        redact=AttributeMatcher.parse("gen_ai.request.*"), salt=lambda: bytes(16),
        completeness=completeness,
    )
    path = tmp_path / sealed.file_name
    path.write_bytes(sealed.data)
    (d,) = DisclosureFile.from_bytes(sealed.disclosures_data()).disclosures
    disclosures = tmp_path / "d.json"
    disclosures.write_bytes(DisclosureFile((Disclosure(d.trace_id, d.span_id, d.key, d.salt,
                                                       {"stringValue": "gpt-x"}),)).to_bytes())
    html = tmp_path / "r.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, "--disclosures", disclosures, path,
                     "--html", html)
    assert code == 1
    document = html.read_text(encoding="utf-8")
    page = read_page(document)
    assert page.body_verdict == "FAIL"
    section = re.search(r'<section class="trace" id="t0" data-verdict="(\w+)">', document)
    assert section is not None and section.group(1) == "FAIL"
    assert "Every bundle of this trace verified." not in page.text
    assert "Verified, but the producer declared" not in page.text
    text = " ".join(page.text.split())
    assert (f"FAILED: {bundles}, but a disclosed value handed over with them was REJECTED, "
            "so the trace fails: gen_ai.request.model of step "
            f"{d.span_id}: value does not match the commitment") in text
    assert (f"1 bundle(s) checked: {counts}. The report FAILS: "
            "1 disclosed value(s) rejected.") in text
    # The bundle itself still verified, and says so.
    article = re.search(r'<article class="bundle" data-verdict="(\w+)"', document)
    assert article is not None
    assert article.group(1) == ("OK" if completeness is None else "INCOMPLETE")


def test_a_passing_trace_on_a_failing_page_does_not_read_as_the_pages_verdict(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    # A trace whose bundles all verified said "Every bundle of this trace verified."
    # under an OK badge, and nothing else, on a page whose banner said FAIL, for
    # another trace, without naming it.
    ok, _ = make_bundle("fine", trace_id=OTHER_TRACE)
    bad, _ = make_bundle("changed")
    flip_in_record(bad, 3)
    html = tmp_path / "r.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, bad, ok, "--html", html)
    assert code == 1
    document = html.read_text(encoding="utf-8")
    assert read_page(document).body_verdict == "FAIL"
    sections = {}
    for chunk in document.split('<section class="trace" ')[1:]:
        m = re.match(r'id="(t\d+)" data-verdict="(\w+)"><h2>Trace <code>(\w+)</code>', chunk)
        assert m is not None
        sections[m.group(3)] = (m.group(1), m.group(2), chunk.split("</section>")[0])
    failed_id, failed_verdict, failed = sections[TRACE]
    _passed_id, passed_verdict, passed = sections[OTHER_TRACE]
    assert (failed_verdict, passed_verdict) == ("FAIL", "OK")
    # The page's banner names the trace that failed, and links to it ...
    overall = re.search(r'<div class="banner fail overall">.*?</div>', document)
    assert overall is not None
    assert (f'The report FAILS: 1 bundle(s) failed. Failed: <a href="#{failed_id}">Trace '
            f"<code>{TRACE}</code></a>.") in overall.group(0)
    assert OTHER_TRACE not in overall.group(0)
    # ... and the passing trace's sentence stays true of it, beside a line saying that
    # it is not the page's verdict.
    text = " ".join(read_page(passed).text.split())
    assert "Every bundle of this trace verified." in text
    assert ("This is the verdict of this trace alone: the report as a whole FAILS (the top "
            "of the page says why: which traces failed, or which inputs could not be "
            "checked).") in text
    assert 'href="#summary"' in passed and '<header id="summary">' in document
    assert "verdict of this trace alone" not in failed

    # A page that passes says nothing of the kind.
    code, _, _ = run(capsys, "report", "--key", keys.pub, ok, "--html", html)
    assert code == 0
    assert "verdict of this trace alone" not in html.read_text(encoding="utf-8")


def test_the_banner_names_at_most_20_failed_traces():
    html = render_html([ReportItem(f"b{n:02d}.spanproof.json", None, "verifier error")
                        for n in range(23)])
    overall = re.search(r'<div class="banner fail overall">.*?</div>', html)
    assert overall is not None
    named = re.findall(r'<a href="#t(\d+)">File <code>b(\d+)\.spanproof\.json</code></a>',
                       overall.group(0))
    assert named == [(str(n), f"{n:02d}") for n in range(20)]
    assert overall.group(0).endswith(" and 3 more (see Traces below).</div>")


def test_bundle_sealed_before_year_1000_verifies_and_shows_a_four_digit_year(
    capsys, tmp_path: Path, keys: Keys
):
    # A sealedAt before the year 1000 was signed and shown as "999-03-02T..." (SPEC §5.3
    # and RFC 3339 have a four-digit year), so verify refused the producer's own bundle.
    sealed_at = datetime(999, 3, 2, 9, 30, 0, 250_000, timezone.utc)
    sealed = seal(TRACE, workflow_bodies(), ChainPosition.genesis(TRACE), signer=keys.signer,
                  producer=PRODUCER, sealed_at=sealed_at, reason="root_ended")
    path = tmp_path / sealed.file_name
    path.write_bytes(sealed.data)
    written = "0999-03-02T09:30:00.250000Z"
    assert f'"sealedAt":"{written}"' in base64.b64decode(
        json.loads(sealed.data.split(b"\n", 1)[0] + b"]}")["envelope"]["payload"]
    ).decode()
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 0, out
    code, out, _ = run(capsys, "show", "--key", keys.pub, path)
    assert code == 0 and f"sealed    root_ended at {written} by " in out
    html = tmp_path / "r.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", html)
    assert code == 0
    assert f"Sealed at{written} (the producer's own clock)" in read_report(html).text
