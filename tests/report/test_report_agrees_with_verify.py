"""``spanproof report --html`` says what ``spanproof verify`` says, never more: across a
matrix of inputs, the same exit status, the same printed lines, the same verdict per
bundle, per trace and overall, and everything ``verify --json`` states is in the page."""

from __future__ import annotations

import errno
import html as html_lib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from report_support import read_page, run

from spanproof.exporter.disclosure import AttributeMatcher
from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.disclosure import Disclosure, DisclosureFile
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path
from spanproof.verifier.statement import Completeness

ORIGIN = "report.test/witness"
HOSTILE = "<script>alert(1)</script>\u202egnp.exe\u2066 & \"'" + "x" * 3000


@dataclass(frozen=True)
class Case:
    """An input: the arguments common to ``verify`` and ``report``."""

    args: list[str]
    witness_key: bool = False
    unlistable: Path | None = None  # a directory os.scandir is refused
    crash: Path | None = None  # a bundle whose check raises (a bug)


Build = Callable[[Path, Keys, MakeBundle], Case]


def _witness(tmp_path: Path, keys: Keys, paths: list[Path]) -> Path:
    """Receipts for *paths* from a real witness; returns the witness's vkey file."""
    from spanproof.witness.service import Witness
    from spanproof.witness.signing import CheckpointSigner
    from spanproof.witness.store import Store

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
    vkey = tmp_path / "witness.vkey"
    vkey.write_text(WitnessKey(private.public_key(), ORIGIN).vkey())
    store = Store(str(tmp_path / "witness.db"))
    try:
        witness = Witness(store, CheckpointSigner(private, ORIGIN),
                          producer_trust=TrustRoot.from_pem_files([str(keys.pub)]))
        for path in paths:
            receipt = witness.submit(path.read_bytes()).receipt
            Path(receipt_path(str(path))).write_bytes(receipt.to_bytes())
    finally:
        store.close()
    return vkey


def _redacted(tmp_path: Path, keys: Keys, pattern: str = "gen_ai.request.*",
              completeness: Completeness | None = None) -> tuple[Path, bytes]:
    sealed = seal(
        TRACE, workflow_bodies(), ChainPosition.genesis(TRACE), signer=keys.signer,
        producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
        redact=AttributeMatcher.parse(pattern), salt=lambda: bytes(16),
        completeness=completeness,
    )
    folder = tmp_path / "redacted"
    folder.mkdir(exist_ok=True)
    path = folder / sealed.file_name
    path.write_bytes(sealed.data)
    return path, sealed.disclosures_data()


def good(t: Path, k: Keys, mb: MakeBundle) -> Case:
    return Case(["--key", str(k.pub), str(mb()[0])])


def tampered(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = mb()
    flip_in_record(path, 3)
    return Case(["--key", str(k.pub), str(path)])


def untrusted(t: Path, k: Keys, mb: MakeBundle) -> Case:
    return Case(["--key", str(k.other_pub), str(mb()[0])])


def truncated(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, sealed = mb()
    path.write_bytes(sealed.data[: len(sealed.data) // 2])
    return Case(["--key", str(k.pub), str(path)])


def not_a_bundle(t: Path, k: Keys, mb: MakeBundle) -> Case:
    bad = t / "bundles"
    bad.mkdir(exist_ok=True)
    (bad / "garbage.spanproof.json").write_bytes(b"garbage\n")
    (bad / "empty.spanproof.json").write_bytes(b"")
    (bad / "list.spanproof.json").write_bytes(b"[]")
    return Case(["--key", str(k.pub), str(bad), str(mb("ok")[0])])


def incomplete(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = mb(completeness=Completeness(dropped_spans=2, rejected_spans=1,
                                           conflicts=("00f067aa0ba902b7",),
                                           notes=("queue full", "n" * 500)))
    return Case(["--key", str(k.pub), str(path)])


def incomplete_allowed(t: Path, k: Keys, mb: MakeBundle) -> Case:
    case = incomplete(t, k, mb)
    return Case(["--allow-incomplete", *case.args])


def incomplete_and_ok(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = mb("lossy", completeness=Completeness(unsampled_spans=3))
    return Case(["--key", str(k.pub), str(path), str(mb("fine", trace_id=OTHER_TRACE)[0])])


def segments_link(t: Path, k: Keys, mb: MakeBundle) -> Case:
    _, first = mb("seg0")
    _, second = mb("seg1", position=first.next_position())
    mb("seg2", position=second.next_position(), reason="size_limit")
    return Case(["--key", str(k.pub), str(t / "bundles")])


def segments_gap(t: Path, k: Keys, mb: MakeBundle) -> Case:
    _, first = mb("seg0")
    _, second = mb("seg1", position=first.next_position(), directory=t / "withheld")
    mb("seg2", position=second.next_position())
    return Case(["--key", str(k.pub), str(t / "bundles")])


def segments_repeat(t: Path, k: Keys, mb: MakeBundle) -> Case:
    _, first = mb("seg0")
    mb("seg1a", position=first.next_position())
    mb("seg1b", position=first.next_position(), bodies=workflow_bodies()[:3])
    return Case(["--key", str(k.pub), str(t / "bundles")])


def segment_copy(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, first = mb("seg0")
    mb("seg1", position=first.next_position())
    (t / "bundles" / "seg0-copy.spanproof.json").write_bytes(path.read_bytes())
    return Case(["--key", str(k.pub), str(t / "bundles")])


def segments_later_only(t: Path, k: Keys, mb: MakeBundle) -> Case:
    _, first = mb("seg0", directory=t / "withheld")
    _, second = mb("seg1", position=first.next_position(), directory=t / "withheld")
    path, _ = mb("seg2", position=second.next_position())
    return Case(["--key", str(k.pub), str(path)])


def two_signers(t: Path, k: Keys, mb: MakeBundle) -> Case:
    other = SigningKey.from_seed(bytes([0x42]) * 32)
    _, first = mb("seg0")
    mb("seg1", position=first.next_position(), signer=other)
    return Case(["--key", str(k.pub), "--key", str(k.other_pub), str(t / "bundles")])


def segment_fails_and_links(t: Path, k: Keys, mb: MakeBundle) -> Case:
    _, first = mb("seg0")
    path, second = mb("seg1", position=first.next_position())
    mb("seg2", position=second.next_position())
    flip_in_record(path, 1)
    return Case(["--key", str(k.pub), str(t / "bundles")])


def receipts_valid(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    b, _ = mb("b", trace_id=OTHER_TRACE)
    vkey = _witness(t, k, [a, b])
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), "--require-receipt",
                 str(t / "bundles")], witness_key=True)


def receipts_mixed(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    b, _ = mb("b", trace_id=OTHER_TRACE)
    c, _ = mb("c", trace_id="6bf92f3577b34da6a3ce929d0e0e4738")
    vkey = _witness(t, k, [a, b])
    Path(receipt_path(str(b))).write_bytes(Path(receipt_path(str(a))).read_bytes())
    del c
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), str(t / "bundles")],
                witness_key=True)


def receipts_missing_required(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    mb("b", trace_id=OTHER_TRACE, completeness=Completeness(dropped_spans=1))
    vkey = _witness(t, k, [a])
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), "--require-receipt",
                 "--witness-origin", ORIGIN, str(t / "bundles")], witness_key=True)


def receipt_wrong_origin(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    vkey = _witness(t, k, [a])
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), "--witness-origin",
                 "elsewhere.test/log", str(a)], witness_key=True)


def receipt_garbage(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    vkey = _witness(t, k, [])
    Path(receipt_path(str(a))).write_bytes(b"<b>not a receipt</b>")
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), str(a)], witness_key=True)


def receipt_without_witness_key(t: Path, k: Keys, mb: MakeBundle) -> Case:
    a, _ = mb("a")
    _witness(t, k, [a])
    b, _ = mb("b", trace_id=OTHER_TRACE)
    Path(receipt_path(str(b))).write_bytes(b"garbage")
    return Case(["--key", str(k.pub), str(t / "bundles")])


def disclosures_open(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k)
    d = t / "d.json"
    d.write_bytes(data)
    return Case(["--key", str(k.pub), "--disclosures", str(d), str(path)])


def disclosures_forged(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k)
    (d,) = DisclosureFile.from_bytes(data).disclosures
    forged = DisclosureFile((Disclosure(d.trace_id, d.span_id, d.key, d.salt,
                                        {"stringValue": "<i>gpt-x</i>"}),
                             Disclosure(d.trace_id, "00000000000000ee", d.key, d.salt,
                                        {"stringValue": "nowhere"})))
    f = t / "d.json"
    f.write_bytes(forged.to_bytes())
    return Case(["--key", str(k.pub), "--disclosures", str(f), str(path)])


def disclosure_rejected_incomplete(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k, completeness=Completeness(dropped_spans=1))
    (d,) = DisclosureFile.from_bytes(data).disclosures
    f = t / "d.json"
    f.write_bytes(DisclosureFile((Disclosure(d.trace_id, d.span_id, d.key, d.salt,
                                             {"stringValue": "gpt-x"}),)).to_bytes())
    return Case(["--key", str(k.pub), "--disclosures", str(f), str(path),
                 str(mb("other", trace_id=OTHER_TRACE)[0])])


def disclosures_malformed(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k)
    bad = t / "bad<b>.json"
    bad.write_bytes(b'{"not": "disclosures"}')
    empty = t / "empty.json"
    empty.write_bytes(DisclosureFile(()).to_bytes())
    good_file = t / "d.json"
    good_file.write_bytes(data)
    return Case(["--key", str(k.pub), "--disclosures", str(bad), "--disclosures",
                 str(good_file), str(path)])


def disclosures_empty(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = _redacted(t, k)
    empty = t / "empty.json"
    empty.write_bytes(DisclosureFile(()).to_bytes())
    return Case(["--key", str(k.pub), "--disclosures", str(empty), str(path)])


def disclosures_on_failed_bundle(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k)
    flip_in_record(path, 2)
    d = t / "d.json"
    d.write_bytes(data)
    return Case(["--key", str(k.pub), "--disclosures", str(d), str(path)])


def salt_reused(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, data = _redacted(t, k, "gen_ai.*", Completeness(dropped_spans=1))
    d = t / "d.json"
    d.write_bytes(data)
    return Case(["--key", str(k.pub), "--disclosures", str(d), str(path)])


def two_instances(t: Path, k: Keys, mb: MakeBundle) -> Case:
    from dataclasses import replace

    other = replace(PRODUCER, instance="00000000000000bb")
    _, first = mb("a0")
    mb("a1", position=first.next_position())
    _, second = mb("b0", producer=other)
    _, skipped = mb("b1", producer=other, position=second.next_position(),
                    directory=t / "withheld")
    mb("b2", producer=other, position=skipped.next_position(),
       completeness=Completeness(dropped_spans=4))
    return Case(["--key", str(k.pub), str(t / "bundles")])


def key_out_of_window(t: Path, k: Keys, mb: MakeBundle) -> Case:
    root = t / "trust.json"
    root.write_text(json.dumps({
        "mediaType": "application/vnd.spanproof.trust-root.v1+json",
        "keys": [{"keyid": k.signer.keyid, "publicKey": k.pub.read_text(),
                  "validUntil": "2026-01-01T00:00:00Z"}],
    }))
    _, first = mb("seg0")
    mb("seg1", position=first.next_position())
    return Case(["--trust-root", str(root), str(t / "bundles")])


def oddly_named_file(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = mb()
    odd = t / "evidence.json"
    odd.write_bytes(path.read_bytes())
    vkey = _witness(t, k, [path])
    return Case(["--key", str(k.pub), "--witness-key", str(vkey), "--require-receipt",
                 str(odd), str(path)], witness_key=True)


def check_raises(t: Path, k: Keys, mb: MakeBundle) -> Case:
    path, _ = mb("boom<b>")
    return Case(["--key", str(k.pub), str(path), str(mb("fine", trace_id=OTHER_TRACE)[0])],
                crash=path)


def hostile(t: Path, k: Keys, mb: MakeBundle) -> Case:
    bodies = [span_body(TRACE, ROOT, "", HOSTILE, status=("STATUS_CODE_ERROR", HOSTILE),
                        attributes={"gen_ai.request.model": HOSTILE, HOSTILE[:40]: HOSTILE,
                                    "gen_ai.operation.name": "chat"})]
    directory = t / "dir<img src=x>\u202e"
    path, _ = mb("name<script>\u202e", directory=directory, bodies=bodies,
                 completeness=Completeness(notes=(HOSTILE,), conflicts=(ROOT,)))
    return Case(["--key", str(k.pub), "--allow-incomplete", str(path)])


def empty_directory(t: Path, k: Keys, mb: MakeBundle) -> Case:
    empty = t / "empty"
    empty.mkdir()
    return Case(["--key", str(k.pub), str(empty), str(mb()[0])])


def unlistable_directory(t: Path, k: Keys, mb: MakeBundle) -> Case:
    mb()
    locked = t / "bundles" / "locked"
    locked.mkdir()
    mb("inside", directory=locked, trace_id=OTHER_TRACE)
    return Case(["--key", str(k.pub), str(t / "bundles")], unlistable=locked)


CASES: list[Build] = [
    good, tampered, untrusted, truncated, not_a_bundle, incomplete, incomplete_allowed,
    incomplete_and_ok, segments_link, segments_gap, segments_repeat, segment_copy,
    segments_later_only, two_signers, segment_fails_and_links, receipts_valid,
    receipts_mixed, receipts_missing_required, receipt_wrong_origin, receipt_garbage,
    receipt_without_witness_key, disclosures_open, disclosures_forged,
    disclosure_rejected_incomplete,
    disclosures_malformed, disclosures_empty, disclosures_on_failed_bundle, salt_reused,
    two_instances, key_out_of_window, oddly_named_file, check_raises, hostile,
    empty_directory, unlistable_directory,
]

_ARTICLE = re.compile(r'<article class="bundle" data-verdict="(\w+)" data-path="([^"]*)">')
_SECTION = re.compile(r'<section class="trace" id="t\d+" data-verdict="(\w+)"><h2>(.*?)</h2>')


def _text(page_text: str) -> str:
    return " ".join(page_text.split())


def _in(fragment: str, text: str) -> bool:
    return " ".join(fragment.split()) in text


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _banner_text(document: str, kind: str) -> str:
    """The text of the first ``<div class="banner … KIND">`` of *document*."""
    m = re.search(rf'<div class="banner \w+ {kind}">.*?</div>', document)
    assert m is not None, kind
    return _text(read_page(m.group(0)).text)


def _expected_trace_verdicts(doc: dict[str, Any]) -> dict[str, str]:
    verdicts: dict[str, set[str]] = {}
    for bundle in doc["bundles"]:
        if bundle["traceId"] is not None:
            verdicts.setdefault(bundle["traceId"], set()).add(bundle["verdict"])
    for trace in doc["traces"]:
        if not trace["ok"]:
            verdicts.setdefault(trace["traceId"], set()).add("FAIL")
    for d in doc.get("disclosures", []):
        # A rejected disclosure fails the trace it is for, when the page shows that trace.
        if d["status"] != "PASS" and d["traceId"] in verdicts:
            verdicts[d["traceId"]].add("FAIL")
    return {
        trace: "FAIL" if "FAIL" in seen else "INCOMPLETE" if "INCOMPLETE" in seen else "OK"
        for trace, seen in verdicts.items()
    }


def check_agreement(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: Case) -> str:
    """Run verify, verify --json and report on *case*; assert they agree; return the HTML."""
    v_code, v_out, _ = run(capsys, "verify", *case.args)
    j_code, j_out, _ = run(capsys, "verify", "--json", *case.args)
    out = tmp_path / "report.html"
    r_code, r_out, _ = run(capsys, "report", *case.args, "--html", out)
    assert v_code == j_code == r_code
    lines = r_out.splitlines()
    assert lines[-1] == f"report written to {out}"
    assert lines[:-1] == v_out.splitlines()
    doc = json.loads(j_out)
    document = out.read_text(encoding="utf-8")
    page = read_page(document)
    text = _text(page.text)

    # Overall.
    bundle_verdicts = [b["verdict"] for b in doc["bundles"]]
    if doc["ok"]:
        assert page.body_verdict == "OK"
    elif ("FAIL" in bundle_verdicts or doc["errors"] or not all(t["ok"] for t in doc["traces"])
          or not all(d["status"] == "PASS" for d in doc.get("disclosures", []))):
        assert page.body_verdict == "FAIL"
    else:
        assert page.body_verdict == "INCOMPLETE"
    assert (page.body_verdict == "OK") == (r_code == 0)

    # Per bundle, by path.
    shown = {html_lib.unescape(p): v for v, p in _ARTICLE.findall(document)}
    assert shown == {_printable(b["path"]): b["verdict"] for b in doc["bundles"]}

    # Per trace.
    traces = {}
    for verdict, title in _SECTION.findall(document):
        m = re.fullmatch(r"Trace <code>([0-9a-f]+)</code>", title)
        if m:
            traces[m.group(1)] = verdict
        else:
            assert verdict == "FAIL", title  # a file whose statement was not read
    assert traces == _expected_trace_verdicts(doc)

    # Each verdict's sentence says that verdict: a FAIL never reads as a pass.
    overall_banner = _banner_text(document, "overall")
    assert overall_banner.startswith(page.body_verdict or "")
    if page.body_verdict == "FAIL":
        assert "The report FAILS: " in overall_banner, overall_banner
    else:
        assert "FAIL" not in overall_banner.removeprefix(page.body_verdict or ""), overall_banner
    overall_html = re.search(r'<div class="banner \w+ overall">.*?</div>', document)
    assert overall_html is not None
    for section in document.split('<section class="trace" ')[1:]:
        verdict = re.match(r'id="t(\d+)" data-verdict="(\w+)"><h2>(.*?)</h2>', section)
        assert verdict is not None
        number, trace_verdict, title = verdict.groups()
        sentence = _banner_text(section, "trace-verdict")
        if trace_verdict == "FAIL":
            assert sentence.startswith("FAILFAILED: "), sentence
        else:
            assert "FAIL" not in sentence, sentence
        assert ("Every bundle of this trace verified." in sentence) == (
            trace_verdict == "OK"), sentence
        # A trace that did not fail, on a page that fails, says where it is read that
        # its verdict is not the page's; the page's banner names each trace that failed.
        own = section.split("</section>")[0]
        assert ('class="page-verdict' in own) == (
            page.body_verdict == "FAIL" and trace_verdict != "FAIL"), title
        assert (f'<a href="#t{number}">{title}</a>' in overall_html.group(0)) == (
            trace_verdict == "FAIL"), title

    # Everything verify states is in the page.
    for path, reason in ((e["path"], e["reason"]) for e in doc["errors"]):
        assert _in(_printable(path), text) and _in(_printable(reason), text), reason
    for bundle in doc["bundles"]:
        if bundle["verdict"] != "OK":
            assert _in(_printable(bundle["reason"]), text), bundle["reason"]
        for remark in bundle["remarks"]:
            assert _in(_printable(remark), text), remark
        for check in bundle["checks"]:
            if check["name"] == "receipt" and not case.witness_key:
                continue  # without a witness key, report still says whether one is there
            assert _in(_printable(check["message"]), text), check
        for field in ("statementDigest", "sealReason"):
            if bundle[field] is not None:
                assert _in(_printable(bundle[field]), text), (field, bundle[field])
        comp = bundle["completeness"]
        if comp:
            for note in comp.get("notes", []):
                assert _in(_printable(note), text), note
            for conflict in comp.get("conflicts", []):
                assert conflict in text
    for trace in doc["traces"]:
        if len(trace["segments"]) > 1 or not trace["ok"] or trace["remarks"]:
            assert _in(_printable(trace["message"]), text), trace
        for remark in trace["remarks"]:
            assert _in(_printable(remark), text), remark
    for d in doc.get("disclosures", []):
        if d["status"] != "PASS":
            assert _in(_printable(d["message"]), text), d
        for remark in d.get("remarks", []):
            assert _in(_printable(remark), text), remark
    # Per bundle, every check with the same outcome, the receipt check too.
    articles = document.split('<article class="bundle" ')[1:]
    by_path = {}
    for chunk in articles:
        m = re.match(r'data-verdict="\w+" data-path="([^"]*)"', chunk)
        assert m is not None
        by_path[html_lib.unescape(m.group(1))] = read_page(chunk.split("</article>")[0])
    for bundle in doc["bundles"]:
        shown_checks = by_path[_printable(bundle["path"])].checks
        assert {name: cells[2] for name, cells in shown_checks.items()} == {
            c["name"]: c["status"] for c in bundle["checks"]
        }, bundle["path"]
    return document


@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_report_agrees_with_verify(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, build: Build,
    monkeypatch: pytest.MonkeyPatch,
):
    case = build(tmp_path, keys, make_bundle)
    if case.unlistable is not None:
        # Simulated: the tests may run as root, whom permissions do not stop.
        locked, real_scandir = str(case.unlistable), os.scandir

        def scandir(path: Any = ".") -> Any:
            if os.fspath(path) == locked:
                raise PermissionError(errno.EACCES, "Permission denied", locked)
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    if case.crash is not None:
        import spanproof.verifier._cli as cli

        crash, real_check = str(case.crash), cli.check_bundle

        def check_bundle(path: str, *args: Any, **kwargs: Any) -> Any:
            if path == crash:
                raise RuntimeError("<b>boom</b>")
            return real_check(path, *args, **kwargs)

        monkeypatch.setattr(cli, "check_bundle", check_bundle)
    document = check_agreement(capsys, tmp_path, case)
    page = read_page(document)
    if case.crash is not None:
        assert "verifier error: RuntimeError: <b>boom</b>" in page.text
    assert not {"script", "img", "link", "iframe", "object", "embed", "base", "form",
                "i", "b"} & set(page.tags)
    assert "<script" not in document and "\u202e" not in document and "\u2066" not in document
