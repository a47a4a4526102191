"""The HTML report in headless Chromium: the DOM a reviewer sees shows the steps and
the verdict (OK for a verified bundle, FAIL and the reason for a tampered one), the
page renders to a screenshot, and no script ever runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_support import ROOT, TRACE, Keys, MakeBundle, flip_in_record, span_body
from report_support import WORKFLOW_STEPS, Page, read_page, run


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=90, check=False)


def _dom(chromium: str, tmp_path: Path, report: Path) -> Page:
    result = _chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return read_page(result.stdout.decode())


def _screenshot(chromium: str, tmp_path: Path, report: Path) -> bytes:
    shot = tmp_path / "report.png"
    result = _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                       "--window-size=1280,1600", report.as_uri())
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    return data


def test_verified_bundle_in_the_browser(
    chromium: str, capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    report = tmp_path / "report.html"
    assert run(capsys, "report", "--key", keys.pub, path, "--html", report)[0] == 0
    page = _dom(chromium, tmp_path, report)
    assert page.body_verdict == "OK"
    assert sorted(set(page.steps)) == sorted(WORKFLOW_STEPS)
    assert set(page.verdicts) == {"OK"}
    assert "Verified. These 7 records are exactly what" in page.text
    _screenshot(chromium, tmp_path, report)


def test_tampered_bundle_in_the_browser(
    chromium: str, capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    path, _ = make_bundle()
    flip_in_record(path, 3)
    report = tmp_path / "report.html"
    assert run(capsys, "report", "--key", keys.pub, path, "--html", report)[0] == 1
    page = _dom(chromium, tmp_path, report)
    assert page.body_verdict == "FAIL"
    assert "OK" not in page.verdicts and "FAIL" in page.verdicts
    assert "Verification FAILED: record 4: previous-hash mismatch" in page.text
    assert "NOT VERIFIED" in page.text
    assert {"receive_case", "Xxecute_tool crm.get_account"} <= set(page.steps)
    _screenshot(chromium, tmp_path, report)


def test_a_script_in_a_span_name_stays_text_in_the_browser(
    chromium: str, capsys, tmp_path: Path, keys: Keys, make_bundle: MakeBundle
):
    name = "<script>document.body.setAttribute('data-verdict','PWNED')</script>"
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", name)])
    report = tmp_path / "report.html"
    assert run(capsys, "report", "--key", keys.pub, path, "--html", report)[0] == 0
    page = _dom(chromium, tmp_path, report)
    assert page.body_verdict == "OK"  # the script did not run
    assert "script" not in page.tags
    assert name in page.steps
