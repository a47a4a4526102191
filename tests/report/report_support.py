"""Helpers for the report tests: run the command line, read a report's HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spanproof.verifier._cli import main

WORKFLOW_STEPS = [
    "handle_support_case",
    "receive_case",
    "classify_intent",
    "chat support-classifier-1",
    "execute_tool crm.get_account",
    "apply_policy",
    "late_callback",
]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run ``spanproof ARGV...``; return exit status, stdout and stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@dataclass
class Page:
    """What a reader of the report sees, collected from its HTML."""

    tags: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str, str]] = field(default_factory=list)  # tag, name, value
    text: str = ""
    steps: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    checks: dict[str, list[str]] = field(default_factory=dict)
    body_verdict: str | None = None
    csp: str | None = None


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._in_step = False
        self._check: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.page.tags.append(tag)
        self.page.attributes.extend((tag, k, v) for k, v in a.items())
        cls = a.get("class", "").split()
        if tag == "body":
            self.page.body_verdict = a.get("data-verdict")
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.page.csp = a.get("content")
        if "step-name" in cls:
            self._in_step = True
            self.page.steps.append("")
        if "verdict" in cls and "data-verdict" in a:
            self.page.verdicts.append(a["data-verdict"])
        if tag == "tr" and "check" in cls:
            self._check = a.get("data-check")
            self.page.checks.setdefault(self._check or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_step = False
        if tag == "tr":
            self._check = None

    def handle_data(self, data: str) -> None:
        self.page.text += data
        if self._in_step:
            self.page.steps[-1] += data
        if self._check is not None:
            self.page.checks[self._check].append(data)


def read_page(html: str) -> Page:
    """Parse a report (or a browser's dump of its DOM)."""
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


def read_report(path: Path) -> Page:
    """Parse the report file at *path*."""
    return read_page(path.read_text(encoding="utf-8"))
