"""Two different signed values never read the same in the HTML report or ``show``.

An array's strings were joined with ``,`` and a map's entries written ``k=v``, none
quoted: ``["refund","approve"]`` and ``["refund,approve"]`` both read
``[refund,approve]``, ``[1,2]`` and ``["1","2"]`` both ``[1,2]``.  And a string holding
a newline read as one holding a backslash and an ``n``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT, TRACE, Keys, MakeBundle, span_body
from report_support import run

from spanproof.verifier.tree import describe_span, tag_text, value_text
from spanproof.verifier.values import encode_value

#: Values of one type whose text differs, and of two types whose text may not in the
#: report, which names the type beside it, but must in show, which does not.
TYPED_PAIRS: list[tuple[Any, Any]] = [
    (5, "5"), (1.5, "1.5"), (True, "true"), (b"\x01", "0x01"), ([1], "[1]"), ({}, "{}"),
]
PAIRS: list[tuple[Any, Any]] = [
    (["refund", "approve"], ["refund,approve"]),
    ("a\x07b", "a\\x07b"),
    ([1, 2], ["1", "2"]),
    ([1], [1.0]),
    ({"a": 1, "b": 2}, {"a=1,b": 2}),
    ({"a": "1"}, {"a": 1}),
    ([True], ["true"]),
    ([b"\x01"], ["0x01"]),
    (["a", ["b"]], ["a", "[\"b\"]"]),
    ("a\nb", "a\\nb"),
    ("\"a\"", "a"),
    ('"a\\nb"', "a\nb"),
    # White space at either end was shown, as it is, in a cell that shows it as
    # nothing.
    ("approve ", "approve"),
    ("\tapprove", "approve"),
]


@pytest.mark.parametrize(("one", "other"), PAIRS, ids=[repr(p) for p in PAIRS])
def test_two_values_never_have_one_text(one: Any, other: Any) -> None:
    assert value_text(encode_value(one)) != value_text(encode_value(other))


@pytest.mark.parametrize(("value", "text"), [
    (["refund", "approve"], '["refund","approve"]'),
    ({"a=1,b": 2}, '{"a=1,b":2}'),
    ([1, 2.5, None, False, b"\xff"], '[1,2.5,null,false,0xff]'),
    ("plain text, as it is", "plain text, as it is"),
    ("a\nb", '"a\\nb"'),
    ('"quoted"', '"\\"quoted\\""'),
    ("approve ", '"approve "'),
    ("white space inside", "white space inside"),
])
def test_what_a_value_reads(value: Any, text: str) -> None:
    assert value_text(encode_value(value)) == text


def test_the_report_s_tags_keep_apart_what_show_keeps_apart() -> None:
    # A tag (model: ..., input_tokens: ...) names no type either.
    texts = {repr(value): tag_text(encode_value(value))
             for pair in PAIRS + TYPED_PAIRS for value in pair}
    assert len(set(texts.values())) == len(texts)


def test_show_keeps_apart_what_the_report_keeps_apart_and_types_too() -> None:
    # The report names each value's type; show's line does not, so a string that
    # reads as another type's value is quoted there.
    lines = set()
    for one, other in PAIRS + TYPED_PAIRS:
        for value in (one, other):
            body = span_body(TRACE, ROOT, "", "step", attributes={"gen_ai.tool.name": value})
            lines.add((repr(value), describe_span(body["span"])))
    assert len({line for _, line in lines}) == len(lines)


def test_the_html_report_shows_each_value_as_no_other(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
) -> None:
    attributes = {f"v{i}.{j}": value for i, pair in enumerate(PAIRS)
                  for j, value in enumerate(pair)}
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", "step", attributes=attributes)])
    out = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 0
    html = out.read_text(encoding="utf-8")
    cell = '<td class="value">'
    assert f"<th>v0.0</th>{cell}[&quot;refund&quot;,&quot;approve&quot;]</td>" in html
    assert f"<th>v0.1</th>{cell}[&quot;refund,approve&quot;]</td>" in html
    newline = PAIRS.index(("a\nb", "a\\nb"))
    assert f'<th>v{newline}.0</th>{cell}&quot;a\\nb&quot;</td><td>text</td>' in html
    assert f'<th>v{newline}.1</th>{cell}a\\nb</td><td>text</td>' in html
    # A browser collapses runs of white space unless told otherwise: "a  b" read "a b".
    assert "td.value,td.disclosed{white-space:pre-wrap;" in html
