"""Two different signed values never read the same in the HTML report or ``show``.

An array's strings were joined with ``,`` and a map's entries written ``k=v``, none
quoted: ``["refund","approve"]`` and ``["refund,approve"]`` both read
``[refund,approve]``, ``[1,2]`` and ``["1","2"]`` both ``[1,2]``.  And a string holding
a newline read as one holding a backslash and an ``n``.  Characters Python counts as
printable but a screen shows as nothing (U+034F, variation selectors) or as the same
thing (``café`` with a combining accent) were shown as they are: ``approve`` and
``approve`` with a U+034F read the same.
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

from spanproof.verifier._term import printable
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


#: Strings that differ only in characters that render as nothing, or in their normal
#: form, or in a combining mark with nothing to sit on.
LOOK_ALIKE: list[tuple[str, str]] = [
    ("approve", "approve\u034f"),
    ("approve", "approve\ufe0f"),
    ("approve\u034f", "approve\ufe0f"),
    ("ab", "a\u3164b"),
    ("ab", "a\U000e0041b"),
    ("caf\u00e9", "cafe\u0301"),
    ("\u00c5", "\u212b"),
    ("\uac01", "\uac00\u11a8"),
    ("approve", "\u0301approve"),
    ('"a"', '"\u0301a"'),
]
#: Text in NFC, in several scripts: shown as it is.
NFC_TEXT = ["na\u00efve", "caf\u00e9", "\u0928\u092e\u0938\u094d\u0924\u0947",
            "\u0645\u0631\u062d\u0628\u0627", "\ud55c\uad6d\uc5b4",
            "\u05e2\u05b4\u05d1\u05b0\u05e8\u05b4\u05d9\u05ea"]


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


@pytest.mark.parametrize(("one", "other"), LOOK_ALIKE, ids=[ascii(p) for p in LOOK_ALIKE])
def test_look_alike_strings_never_read_the_same(one: str, other: str) -> None:
    for text in (value_text, tag_text):  # unsanitized: as the sanitizer leaves them
        shown = [printable(text(encode_value(value))) for value in (one, other)]
        assert reads_as(shown[0]) != reads_as(shown[1])
    lines = [describe_span(span_body(TRACE, ROOT, "", "step",
                                     attributes={"gen_ai.tool.name": value})["span"])
             for value in (one, other)]
    assert reads_as(lines[0]) != reads_as(lines[1])


@pytest.mark.parametrize("text", NFC_TEXT, ids=[ascii(t) for t in NFC_TEXT])
def test_nfc_text_in_any_script_is_shown_as_it_is(text: str) -> None:
    assert value_text(encode_value(text)) == text
    line = describe_span(span_body(TRACE, ROOT, text, text,
                                   attributes={"gen_ai.tool.name": text})["span"])
    assert line == f"{text} [INTERNAL, OK, 1.000 ms]  tool={text}"


def test_the_html_report_shows_look_alike_strings_apart_and_nfc_text_as_it_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
) -> None:
    attributes: dict[str, Any] = {f"v{i}.{j}": value for i, pair in enumerate(LOOK_ALIKE)
                                  for j, value in enumerate(pair)}
    attributes.update({f"nfc{i}": text for i, text in enumerate(NFC_TEXT)})
    path, _ = make_bundle(bodies=[span_body(TRACE, ROOT, "", "step", attributes=attributes)])
    out = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", "--key", keys.pub, path, "--html", out)
    assert code == 0
    cells = {key: html.unescape(cell) for key, cell in re.findall(
        r'<tr><th>([^<]*)</th><td class="value">([^<]*)</td>', out.read_text("utf-8"))}
    for i in range(len(LOOK_ALIKE)):
        assert reads_as(cells[f"v{i}.0"]) != reads_as(cells[f"v{i}.1"]), LOOK_ALIKE[i]
    assert cells["v0.1"] == '"approve\\u034f"'
    assert cells["v5.1"] == '"cafe\\u0301"'
    for i, text in enumerate(NFC_TEXT):
        assert cells[f"nfc{i}"] == text
