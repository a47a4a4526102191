"""Two different keys or names never read the same in ``show`` or the HTML report.

Keys and names were printed as they are: in ``show`` an event with the attributes
``amount=5`` and ``decision="approve"`` and one with the single key ``amount=5
decision`` both read ``amount=5 decision=approve``; a span named ``classify [INTERNAL,
OK, 1.2 ms]`` and hundreds of spaces read as a span that passed, its real status past
the end of the screen.  In the HTML report an event ``check: decision`` with the key
``x`` and an event ``check`` with the key ``decision: x`` both read ``event check:
decision: x``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT, TRACE, Keys, MakeBundle, span_body
from look_alike import reads_as
from report_support import run

from spanproof.verifier.tree import describe_span, render_tree
from spanproof.verifier.values import encode_value


def _event(name: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"timeUnixNano": "1772443798000000000", "name": name,
            "attributes": {k: encode_value(v) for k, v in attributes.items()},
            "droppedAttributesCount": "0"}


#: Events that read the same when names and keys are printed as they are.
EVENT_PAIRS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (_event("decided", {"amount": 5, "decision": "approve"}),
     _event("decided", {"amount=5 decision": "approve"})),
    (_event("check: decision", {"x": 1}), _event("check", {"decision: x": 1})),
    (_event("decided  total=5", {}), _event("decided", {"total": 5})),
    (_event("decided", {"total": 5}), _event("decided", {"total\u034f": 5})),
    (_event("decided", {"total": 5}), _event("decided\u034f", {"total": 5})),
    (_event("decided", {"a b": 5}), _event("decided", {"a  b": 5})),
]


def _shown(event: dict[str, Any]) -> str:
    return render_tree([span_body(TRACE, ROOT, "", "step", events=[event])])


@pytest.mark.parametrize(("one", "other"), EVENT_PAIRS, ids=range(len(EVENT_PAIRS)))
def test_show_never_prints_two_events_alike(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert reads_as(_shown(one)) != reads_as(_shown(other))


def test_show_quotes_a_key_that_holds_white_space_or_an_equals_sign() -> None:
    one, other = EVENT_PAIRS[0]
    assert _shown(one).endswith("• decided  amount=5 decision=approve")
    assert _shown(other).endswith('• decided  "amount=5 decision"=approve')


def test_show_prints_no_status_a_span_name_brings() -> None:
    forged = "classify [INTERNAL, OK, 1.2 ms]"
    honest = describe_span(span_body(TRACE, ROOT, "", "classify", duration_ms=1.2)["span"])
    for name in (forged, forged + " " * 300 + "x"):
        line = describe_span(span_body(TRACE, ROOT, "", name,
                                       status=("STATUS_CODE_ERROR", "denied"))["span"])
        assert honest == "classify [INTERNAL, OK, 1.200 ms]"
        assert not reads_as(line).startswith("classify [")
        assert line.startswith('"classify [INTERNAL, OK, 1.2 ms]')
        assert "[INTERNAL, ERROR: denied, 1.000 ms]" in line


def test_show_of_a_bundle_quotes_a_span_name_that_brings_a_status(
    capsys: pytest.CaptureFixture[str], keys: Keys, make_bundle: MakeBundle,
) -> None:
    name = "classify [INTERNAL, OK, 1.2 ms]" + " " * 300
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", name,
                                            status=("STATUS_CODE_ERROR", "denied"))])
    code, out, _ = run(capsys, "show", "--key", keys.pub, path)
    assert code == 0
    (line,) = [line for line in out.splitlines() if "classify" in line]
    assert line.startswith('"classify [INTERNAL, OK, 1.2 ms]')
    assert line.endswith("… [INTERNAL, ERROR: denied, 1.000 ms]")


def test_the_html_report_never_shows_two_event_rows_alike(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
) -> None:
    events = list({repr(event): event for pair in EVENT_PAIRS for event in pair
                   if event["attributes"]}.values())
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", "step", events=events)])
    out = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 0
    document = out.read_text(encoding="utf-8")
    rows = [html.unescape(row) for row in re.findall(
        r'<tr><th>(event [^<]*)</th><td class="value">', document)]
    assert len(rows) == sum(len(event["attributes"]) for event in events)
    assert len({reads_as(row) for row in rows}) == len(rows)
    assert 'event "check: decision": x' in rows
    assert 'event check: "decision: x"' in rows
    assert "th,code,h4{white-space:pre-wrap}" in document  # "a  b" is not "a b"
