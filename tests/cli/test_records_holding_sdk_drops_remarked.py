"""A bundle whose records hold what their producer's SDK dropped (an event over
OTEL_SPAN_EVENT_COUNT_LIMIT: ``"droppedEventsCount":"1"``) verifies with a remark
saying so.  ``verify --verbose`` said "no declared losses", ``show`` "complete yes",
``--json`` nothing and the HTML report "Nothing declared missing": silence about a
loss.  The verdict stays the statement's (SPEC §5): a remark, not INCOMPLETE."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import Keys, MakeBundle, workflow_bodies

from spanproof.verifier import TrustRoot, Verdict, check_bundle
from spanproof.verifier._cli import main

REMARK = ("3 record(s) hold what their producer's SDK dropped: 3 attribute(s), 1 event(s), "
          "2 link(s) (droppedAttributesCount, droppedEventsCount, droppedLinksCount); they "
          "certify their spans as kept, not what was dropped")


def _bodies_with_drops() -> list[dict[str, Any]]:
    bodies = workflow_bodies()
    bodies[0]["span"]["droppedEventsCount"] = "1"
    bodies[1]["span"]["droppedAttributesCount"] = "2"
    bodies[1]["span"]["droppedLinksCount"] = "2"
    policy = next(b for b in bodies if b["span"]["events"])
    policy["span"]["events"][0]["droppedAttributesCount"] = "1"  # an event's attribute
    return bodies


@pytest.fixture
def dropped(make_bundle: MakeBundle) -> Path:
    path, _ = make_bundle(bodies=_bodies_with_drops())
    return path


def test_check_bundle_remarks_what_the_records_say_their_sdk_dropped(
        dropped: Path, keys: Keys) -> None:
    report = check_bundle(dropped, TrustRoot.from_pem_files([str(keys.pub)]))
    assert report.verdict is Verdict.OK
    assert report.remarks == (REMARK,)


def test_verify_prints_the_remark_and_verbose_still_passes_completeness(
        dropped: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--verbose", "--key", str(keys.pub), str(dropped)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("OK ")
    assert lines[1] == f"  remark: {REMARK}"
    assert any("completeness: no declared losses" in line for line in lines)


def test_verify_json_holds_the_remark(
        dropped: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--json", "--key", str(keys.pub), str(dropped)]) == 0
    assert json.loads(capsys.readouterr().out)["bundles"][0]["remarks"] == [REMARK]


def test_show_prints_the_remark(
        dropped: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--key", str(keys.pub), str(dropped)]) == 0
    out = capsys.readouterr().out
    assert "complete  yes, no declared losses\n" in out
    assert f"\nremark    {REMARK}\n" in out


def test_report_shows_the_remark(
        dropped: Path, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    assert main(["report", "--key", str(keys.pub), "--html", str(page), str(dropped)]) == 0
    assert f"  remark: {REMARK}" in capsys.readouterr().out
    assert f'<p class="remark note">{html.escape(REMARK)}</p>' in page.read_text()


def test_records_that_dropped_nothing_give_no_remark(
        make_bundle: MakeBundle, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = make_bundle()
    assert check_bundle(path, TrustRoot.from_pem_files([str(keys.pub)])).remarks == ()
    assert main(["show", "--key", str(keys.pub), str(path)]) == 0
    assert "remark" not in capsys.readouterr().out


@pytest.mark.parametrize("part", ["resource", "scope"])
def test_a_resource_or_scope_that_lost_attributes_is_remarked_once_for_its_records(
        part: str, make_bundle: MakeBundle, keys: Keys) -> None:
    # Only spans, events and links were summed: a receiver's record of a resource
    # that lost attributes (the OTLP resource's dropped_attributes_count) said nothing.
    bodies = workflow_bodies()
    for body in bodies:
        body[part] = {**body[part], "droppedAttributesCount": "3"}  # shared dicts: copied
    path, _ = make_bundle(bodies=bodies)
    report = check_bundle(path, TrustRoot.from_pem_files([str(keys.pub)]))
    assert report.verdict is Verdict.OK
    resource, scope = (3, 0) if part == "resource" else (0, 3)
    assert report.remarks == (
        f"{len(bodies)} record(s) name a resource or instrumentation scope that lost "
        f"attributes before certification (up to {resource} of a resource's, {scope} of "
        "a scope's: their droppedAttributesCount)",)
