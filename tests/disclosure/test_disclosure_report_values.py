"""The HTML report shows a disclosed value as far as it shows a value in clear, and
says how much more there is (not cut at a tenth of it)."""

from __future__ import annotations

import html
import re
from pathlib import Path

from disclosure_support import SPAN_A, span_body, trust_root, write_bundle

from spanproof.verifier._cli import main

# 3,889 characters, no white space at either end (a string with some is quoted).
LONG = " ".join(f"word{i}" for i in range(500))


def _cell(document: str, key: str) -> str:
    found = re.search(r"<tr><th>" + re.escape(key) + r"</th><td[^>]*>(.*?)</td>", document)
    assert found is not None, key
    return html.unescape(found.group(1))


def test_report_shows_a_disclosed_value_as_long_as_a_clear_one(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "out", [span_body(SPAN_A, {
        "gen_ai.operation.name": "chat", "clear.prompt": LONG, "secret.prompt": LONG})],
        redact=("secret.*",))
    _trust, pem = trust_root(tmp_path / "keys")
    out = tmp_path / "report.html"
    assert main(["report", "--key", str(pem), "--disclosures", str(written.disclosures),
                 "--html", str(out), str(written.bundle)]) == 0
    document = out.read_text()
    clear, disclosed = _cell(document, "clear.prompt"), _cell(document, "secret.prompt")
    assert clear == LONG[:1999] + f"… ({len(LONG) - 1999} more characters)"
    # The disclosed value is shown quoted, with its type after it.
    shown = '"' + LONG
    assert disclosed.startswith(shown[:1999] + f"… ({len(shown) + 1 - 1999} more characters)"
                                " (string)")
