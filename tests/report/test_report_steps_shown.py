"""``spanproof report`` of a long bundle: every record is verified, but only the first
``STEPS_SHOWN`` steps of a bundle are kept and shown, and the page says so; a bundle of
no more steps renders as it did when every record was kept.

Memory is measured with ``tracemalloc`` against what holding the same records parsed
takes in this process (as ``show`` and ``disclose`` are, in
``tests/disclosure/test_show_disclose_keep_no_records.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli_support import PRODUCER, SEALED_AT, TRACE, Keys, MakeBundle, span_body
from report_support import read_page, read_report, run
from traced_memory import held_by_records, peak_of

import spanproof.verifier._cli as cli
import spanproof.verifier.report as report_module
from spanproof.exporter.disclosure import AttributeMatcher
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.disclosure import Disclosure, DisclosureFile
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.report import STEPS_SHOWN, ReportItem, render_html
from spanproof.verifier.verify import UNVERIFIED_RECORDS_KEPT, link_segments


def _span_id(n: int) -> str:
    return f"{n + 1:016x}"


def _bodies(count: int, attributes: int = 0) -> list[dict[str, Any]]:
    """*count* steps named ``step 00000``..., each with *attributes* attributes, all
    children of the last (as a trace's root span ends last, and is chained last)."""
    last = count - 1
    return [
        span_body(TRACE, _span_id(n), _span_id(last) if n != last else "", f"step {n:05d}",
                  start_ms=n, attributes={f"app.a{j}": f"value {j} of step {n}"
                                          for j in range(attributes)})
        for n in range(count)
    ]


def test_report_of_more_steps_than_shown_says_first_n_of_m(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    total = STEPS_SHOWN + 3
    path, _ = make_bundle("long", bodies=_bodies(total))
    out = tmp_path / "r.html"
    code, printed, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 0, printed
    assert f"records={total}" in printed  # every record verified, as verify says
    document = out.read_text(encoding="utf-8")
    page = read_page(document)
    text = " ".join(page.text.split())
    assert page.body_verdict == "OK"
    assert (f"Showing the first {STEPS_SHOWN:,} of {total:,} steps (records 0.."
            f"{STEPS_SHOWN - 1}): every one of the {total:,} was verified") in text
    assert f"spanproof show --key PUB.pem {path} lists them all" in text
    assert f'data-shown="{STEPS_SHOWN}" data-total="{total}"' in document
    # The tree shows the first steps, in chain order, and nothing after them; their
    # parent is verified, not shown, and is not called "not certified".
    assert page.steps == [f"step {n:05d}" for n in range(STEPS_SHOWN)]
    assert text.count("(parent not among the steps shown)") == STEPS_SHOWN
    assert "not certified" not in text
    for n in range(STEPS_SHOWN, total):
        assert f"step {n:05d}" not in document
        assert _span_id(n) not in document
    assert f"Every attribute of the first {STEPS_SHOWN:,} steps" in text


def _as_when_every_record_was_kept(path: Path, keys: Keys) -> str:
    """The page ``report --key PUB path`` wrote when it kept every record read."""
    trust = TrustRoot.from_pem_files([str(keys.pub)])
    full = cli._BundleCheck(trust, False, keep_records=True, receipts=())(str(path)).report
    assert full is not None
    return render_html([ReportItem(str(path), full)], links=link_segments([full]),
                       trusted={k.keyid: k.source for k in trust.keys})


def test_report_of_a_failed_long_bundle_shows_what_it_showed(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, sealed = make_bundle("cut", bodies=_bodies(STEPS_SHOWN + 3))
    path.write_bytes(sealed.data[: len(sealed.data) - 10])  # the last record is cut
    out = tmp_path / "r.html"
    code, printed, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 1, printed
    document = out.read_text(encoding="utf-8")
    assert document == _as_when_every_record_was_kept(path, keys)
    page = read_page(document)
    text = " ".join(page.text.split())
    assert (f"NOT VERIFIED: the {UNVERIFIED_RECORDS_KEPT} record(s) below were read before "
            "the failure") in text
    assert len(page.steps) == UNVERIFIED_RECORDS_KEPT
    assert "Showing the first" not in text  # the records shown are not called verified


@pytest.mark.parametrize("cap", [STEPS_SHOWN, 7], ids=["real-cap", "cap-at-the-size"])
def test_report_of_no_more_steps_than_shown_renders_as_keeping_every_record(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, monkeypatch, cap: int
):
    monkeypatch.setattr(report_module, "STEPS_SHOWN", cap)
    path, _ = make_bundle("short", bodies=_bodies(7, attributes=3))
    out = tmp_path / "r.html"
    code, printed, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 0, printed
    document = out.read_text(encoding="utf-8")
    assert document == _as_when_every_record_was_kept(path, keys)
    assert "Showing the first" not in document
    assert read_page(document).steps == [f"step {n:05d}" for n in (6, *range(6))]


def _sealed_with_committed(tmp_path: Path, keys: Keys, count: int, committed: int) -> Path:
    """A bundle of *count* steps where step *committed* holds a committed
    ``customer.id``, with its disclosure file beside it."""
    bodies = _bodies(count)
    bodies[committed]["span"]["attributes"]["customer.id"] = {"stringValue": "c-42"}
    sealed = seal(TRACE, bodies, ChainPosition.genesis(TRACE), signer=keys.signer,
                  producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                  redact=AttributeMatcher.parse("customer.*"), salt=lambda: bytes(16))
    path = tmp_path / "bundles" / sealed.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sealed.data)
    (tmp_path / "d.json").write_bytes(sealed.disclosures_data())
    return path


def test_disclosures_of_steps_past_those_shown_are_still_checked(
    capsys, tmp_path: Path, keys: Keys, monkeypatch
):
    monkeypatch.setattr(report_module, "STEPS_SHOWN", 3)
    path = _sealed_with_committed(tmp_path, keys, 10, committed=8)
    good = tmp_path / "d.json"
    out = tmp_path / "r.html"
    code, printed, _ = run(capsys, "report", "--key", keys.pub, "--disclosures", good, path,
                           "--html", out)
    assert code == 0, printed
    assert f"DISCLOSED trace={TRACE} span={_span_id(8)} customer.id = " in printed
    text = " ".join(read_report(out).text.split())
    assert "Disclosed values: 1 of 1 match their commitments." in text
    assert "Showing the first 3 of 10 steps" in text

    (d,) = DisclosureFile.from_bytes(good.read_bytes()).disclosures
    forged = tmp_path / "forged.json"
    forged.write_bytes(DisclosureFile((Disclosure(d.trace_id, d.span_id, d.key, d.salt,
                                                  {"stringValue": "c-43"}),)).to_bytes())
    code, printed, _ = run(capsys, "report", "--key", keys.pub, "--disclosures", forged,
                           path, "--html", out)
    assert code == 1, printed
    page = read_report(out)
    text = " ".join(page.text.split())
    assert page.body_verdict == "FAIL"
    assert "Disclosed values: 0 of 1 match their commitments." in text
    assert f"FAIL disclosure trace={TRACE} span={_span_id(8)} customer.id: " in printed


SPANS = 400
ATTRIBUTES = 120
SHOWN = 20


def test_report_keeps_only_the_steps_it_shows(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, monkeypatch
):
    monkeypatch.setattr(report_module, "STEPS_SHOWN", SHOWN)
    path, _ = make_bundle("wide", bodies=_bodies(SPANS, ATTRIBUTES))
    count, held = held_by_records(path)
    assert count == SPANS
    out = tmp_path / "r.html"
    argv = ["report", "--key", str(keys.pub), str(path), "--html", str(out)]
    code, peak = peak_of(lambda: cli.main(argv), capsys)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"records={SPANS}" in printed
    assert peak < held / 4, (peak, held)
    assert f"Showing the first {SHOWN} of {SPANS} steps" in read_report(out).text


def test_a_page_of_many_bundles_shows_a_share_of_its_steps_each() -> None:
    # Each bundle kept and showed 2,000 steps however many there were: 50 segments of
    # a long trace took 1.2 GiB and wrote a 111 MB page.
    from spanproof.verifier.report import STEPS_SHOWN_ON_A_PAGE, steps_shown_of

    assert steps_shown_of(1) == steps_shown_of(10) == STEPS_SHOWN
    assert steps_shown_of(50) == STEPS_SHOWN_ON_A_PAGE // 50 < STEPS_SHOWN
    assert steps_shown_of(STEPS_SHOWN_ON_A_PAGE + 1) == 0


def test_report_of_many_bundles_keeps_and_shows_their_share(
    capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle, monkeypatch
):
    monkeypatch.setattr(report_module, "STEPS_SHOWN_ON_A_PAGE", 9)  # 3 bundles: 3 each
    paths = [make_bundle(f"b{n}", bodies=_bodies(5))[0] for n in range(3)]
    out = tmp_path / "r.html"
    code, printed, _ = run(capsys, "report", "--key", keys.pub, *paths, "--html", out)
    assert code == 0, printed
    text = " ".join(read_report(out).text.split())
    assert text.count("Showing the first 3 of 5 steps") == 3
    monkeypatch.setattr(report_module, "STEPS_SHOWN_ON_A_PAGE", 2)  # none of each
    code, printed, _ = run(capsys, "report", "--key", keys.pub, *paths, "--html", out)
    assert code == 0, printed
    text = " ".join(read_report(out).text.split())
    assert text.count("None of its 5 steps is shown") == 3
    assert "This bundle holds no records" not in text
