"""A disclosed value is never shown under a key it does not belong to.

A span committed ``customer.email="mallory@evil.example"`` and a second key,
``customer.email`` and an invisible U+034F COMBINING GRAPHEME JOINER, holding
``ana@example.com``.  Disclosing only the second printed ``DISCLOSED ...
customer.email = "ana@example.com"``, and the HTML report showed two rows both
reading ``customer.email``: Python counts U+034F as printable, so it was not escaped.
Keys were printed unquoted too, so a key could bring its own `` = "value" (string)``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from disclosure_support import SPAN_A, Written, span_body, trust_root, write_bundle
from look_alike import reads_as

from spanproof.verifier._cli import main

REAL, LOOK_ALIKE = "customer.email", "customer.email\u034f"


@pytest.fixture
def written(tmp_path: Path) -> Written:
    return write_bundle(tmp_path / "out", [span_body(SPAN_A, {
        "gen_ai.operation.name": "chat",
        REAL: "mallory@evil.example",
        LOOK_ALIKE: "ana@example.com",
        'note = "ana@example.com" (string)': "x",
    })], redact=("customer.*", "note*"))


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    return trust_root(tmp_path / "keys")[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, _ = capsys.readouterr()
    return code, out


def _disclosed_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, written: Written,
                    pem: Path, key: str) -> str:
    out = tmp_path / f"reviewer-{len(key)}.json"
    code, stdout = _run(capsys, "disclose", str(written.bundle), "--attr-exact", key,
                        "--out", str(out))
    assert code == 0, stdout
    code, stdout = _run(capsys, "verify", "--key", str(pem), "--disclosures", str(out),
                        str(written.bundle))
    assert code == 0, stdout
    (line,) = [line for line in stdout.splitlines() if line.startswith("DISCLOSED ")]
    return line


def _key_shown(line: str) -> str:
    found = re.fullmatch(rf"DISCLOSED trace=\w+ span={SPAN_A} (.*) = .* \((string)\): .*",
                         line)
    assert found is not None, line
    return found.group(1)


def test_disclosed_line_of_a_look_alike_key_does_not_read_as_the_real_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, written: Written, pem: Path,
) -> None:
    line = _disclosed_line(capsys, tmp_path, written, pem, LOOK_ALIKE)
    assert '"ana@example.com" (string)' in line
    assert line.isascii()
    assert _key_shown(line) == '"customer.email\\u034f"'
    real = _disclosed_line(capsys, tmp_path, written, pem, REAL)
    assert _key_shown(real) == "customer.email"
    assert reads_as(_key_shown(line)) != reads_as(_key_shown(real))


def test_disclosed_line_quotes_a_key_that_brings_its_own_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, written: Written, pem: Path,
) -> None:
    line = _disclosed_line(capsys, tmp_path, written, pem, 'note = "ana@example.com" (string)')
    assert line.startswith(f'DISCLOSED trace=4bf92f3577b34da6a3ce929d0e0e4736 span={SPAN_A} '
                           '"note = \\"ana@example.com\\" (string)" = "x" (string): ')


def test_html_rows_of_a_real_and_a_look_alike_key_read_differently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, written: Written, pem: Path,
) -> None:
    out = tmp_path / "reviewer.json"
    assert _run(capsys, "disclose", str(written.bundle), "--attr-exact", LOOK_ALIKE,
                "--out", str(out))[0] == 0
    report = tmp_path / "report.html"
    assert main(["report", "--key", str(pem), "--disclosures", str(out), "--html",
                 str(report), str(written.bundle)]) == 0
    rows = {html.unescape(key): html.unescape(cell) for key, cell in re.findall(
        r"<tr><th>([^<]*)</th><td[^>]*>(.*?)</td>", report.read_text(encoding="utf-8"))}
    email_rows = {key: cell for key, cell in rows.items() if "customer.email" in key}
    assert len(email_rows) == 2
    assert len({reads_as(key) for key in email_rows}) == 2
    assert email_rows['"customer.email\\u034f"'].startswith('"ana@example.com" (string)')
    assert "ana@example.com" not in email_rows["customer.email"]
