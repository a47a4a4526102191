"""The witness's public page in headless Chromium: look-ups by ``?trace=`` and
``?digest=`` show the entry, its conflict flag and every check's verdict; an
uploaded bundle file shows every verification check (driven over the Chrome
DevTools protocol on a pipe)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, chromium_path, make_bundle, trace_id

from spanproof.verifier.keys import TrustRoot
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

CONFLICTED = trace_id(40)
PLAIN = trace_id(41)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def site(
    tmp_path: Path,
    witness_private: Ed25519PrivateKey,
    producer_trust: TrustRoot,
    serve_witness: Any,
) -> Iterator[tuple[str, Witness, str]]:
    store = Store(str(tmp_path / "w.db"))
    witness = Witness(
        store,
        CheckpointSigner(witness_private, ORIGIN),
        producer_trust=producer_trust,
        clock=FakeClock(),
    )
    witness.submit(make_bundle(CONFLICTED, name="approve refund").data)
    witness.submit(make_bundle(CONFLICTED, name="deny refund").data)
    plain = make_bundle(PLAIN)
    witness.submit(plain.data)
    srv = serve_witness(witness)
    yield srv.url, witness, plain.statement_digest
    srv.stop()
    store.close()


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        # Lets the page's fetches finish before the DOM is dumped.
        "--virtual-time-budget=15000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=90, check=False)


@dataclasses.dataclass
class Page:
    ready: bool = False
    entries: list[dict[str, str]] = dataclasses.field(default_factory=list)
    verdicts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    text: str = ""
    html: str = ""


class _Reader(HTMLParser):
    """Collects entry rows (by cell class) and check rows (name, verdict)."""

    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._cell: str | None = None
        self._check: str | None = None
        self._in_verdict = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "body" and a.get("data-ready") == "true":
            self.page.ready = True
        if tag == "tr" and cls == "entry":
            self.page.entries.append({})
        if tag == "tr" and cls == "check":
            self._check = a.get("data-check")
        if tag == "td":
            self._cell = next((c for c in cls.split() if c.startswith("entry-")), None)
            self._in_verdict = "verdict" in cls.split()

    def handle_data(self, data: str) -> None:
        self.page.text += data
        if self._cell and self.page.entries:
            self.page.entries[-1][self._cell] = self.page.entries[-1].get(self._cell, "") + data
        if self._in_verdict and self._check:
            self.page.verdicts.append((self._check, data))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell, self._in_verdict = None, False


def _load(chromium: str, tmp_path: Path, url: str) -> Page:
    result = _chromium(chromium, tmp_path / "profile", "--dump-dom", url)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    reader = _Reader()
    reader.page.html = result.stdout.decode()
    reader.feed(reader.page.html)
    return reader.page


def test_trace_lookup_shows_entries_conflicts_and_verdicts(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path
) -> None:
    url, _witness, _ = site
    page = _load(chromium, tmp_path, f"{url}/?trace={CONFLICTED}")
    assert page.ready
    assert [e["entry-index"] for e in page.entries] == ["0", "1"]
    assert {e["entry-tree-size"] for e in page.entries} == {"3"}
    assert [e["entry-conflict"] for e in page.entries] == ["CONFLICT", "CONFLICT"]
    names = [name for name, _ in page.verdicts]
    assert names.count("signature") == 2 and names.count("head") == 2
    assert names.count("browser-inclusion") == 2
    assert {v for _, v in page.verdicts} == {"PASS"}
    assert ORIGIN in page.text


def test_digest_lookup_and_unknown_trace(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path
) -> None:
    url, _witness, digest = site
    page = _load(chromium, tmp_path, f"{url}/?digest={digest}")
    (entry,) = page.entries
    assert entry["entry-index"] == "2" and entry["entry-conflict"] == "no"
    assert entry["entry-digest"] == digest
    assert ("browser-inclusion", "PASS") in page.verdicts
    page = _load(chromium, tmp_path, f"{url}/?trace={trace_id(99)}")
    assert page.ready and not page.entries and "No entry in this log" in page.text


def test_a_trace_lookup_of_more_than_a_page_links_to_the_next(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanproof.witness import app

    url, _witness, _ = site
    monkeypatch.setattr(app, "LOOKUP_PAGE_ENTRIES", 1)
    page = _load(chromium, tmp_path, f"{url}/?trace={CONFLICTED}")
    assert [e["entry-index"] for e in page.entries] == ["0"]
    assert f'href="?trace={CONFLICTED}&amp;after=0"' in page.html
    assert "1 entry for " + CONFLICTED + "; more follow" in page.text
    page = _load(chromium, tmp_path, f"{url}/?trace={CONFLICTED}&after=0")
    assert [e["entry-index"] for e in page.entries] == ["1"]
    assert 'id="next-page"' not in page.html
    assert "1 entry for " + CONFLICTED + " after index 0" in page.text


def _answer_with(witness: Witness, monkeypatch: pytest.MonkeyPatch,
                 change: Callable[[Any], Any]) -> None:
    """Make *witness*'s look-ups answer *change* of the entries it found (each an
    ``(entry, conflict, receipt)``): a lying witness, for the page to catch."""
    real = witness._lookup

    def lying(**kwargs: Any) -> Any:
        published, found = real(**kwargs)
        return published, change(found)

    monkeypatch.setattr(witness, "_lookup", lying)


def test_browser_check_catches_a_bad_proof(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, witness, digest = site

    def lying(found: Any) -> Any:
        out = []
        for entry, conflict, receipt in found:
            proof = list(receipt.inclusion_proof)
            proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
            out.append(
                (entry, conflict, dataclasses.replace(receipt, inclusion_proof=tuple(proof)))
            )
        return out

    _answer_with(witness, monkeypatch, lying)
    page = _load(chromium, tmp_path, f"{url}/?digest={digest}")
    assert ("browser-inclusion", "FAIL") in page.verdicts


def test_browser_check_fails_a_receipt_whose_tree_size_is_not_the_checkpoints(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entry 0's proof in the signed tree of size 3 ([leaf 1, leaf 2]) walks the same
    # path in a tree of size 4, so it reaches the signed root for a receipt that claims
    # size 4; the page took the size from the receipt, not from the checkpoint.
    url, witness, _ = site
    _answer_with(witness, monkeypatch, lambda found: [
        (entry, conflict, dataclasses.replace(receipt, tree_size=4))
        for entry, conflict, receipt in found])
    page = _load(chromium, tmp_path, f"{url}/?trace={CONFLICTED}")
    assert [e["entry-index"] for e in page.entries] == ["0", "1"]
    assert [v for name, v in page.verdicts if name == "browser-inclusion"] == ["FAIL", "FAIL"]
    assert "receipt tree size 4 does not match the checkpoint's tree size 3" in page.text


def test_browser_check_fails_a_receipt_of_another_entry(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries 0 and 1 with each other's receipts: each receipt proves its own leaf,
    # and the page said PASS under entries whose leaves it had not proven.
    url, witness, _ = site

    def swapping(found: Any) -> Any:
        receipts = [receipt for _, _, receipt in found][::-1]
        return [(entry, conflict, receipt)
                for (entry, conflict, _), receipt in zip(found, receipts, strict=True)]

    _answer_with(witness, monkeypatch, swapping)
    page = _load(chromium, tmp_path, f"{url}/?trace={CONFLICTED}")
    assert [e["entry-index"] for e in page.entries] == ["0", "1"]
    assert [v for name, v in page.verdicts if name == "browser-inclusion"] == ["FAIL", "FAIL"]
    assert "receipt is for index 1, not this entry's index 0" in page.text


def test_screenshot(chromium: str, site: tuple[str, Witness, str], tmp_path: Path) -> None:
    url, _witness, _ = site
    shot = tmp_path / "page.png"
    result = _chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,1600",
        f"{url}/?trace={CONFLICTED}",
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    assert re.search(rb"IDAT", data)


class _DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, chromium: str, profile: Path) -> None:
        r_child, self._w = os.pipe()  # our commands -> the browser's fd 3
        self._r, w_child = os.pipe()  # the browser's fd 4 -> our replies
        # Put the pipe ends on fds 3 and 4 in the child (a tiny exec trampoline;
        # /usr/bin/chromium is a shell script, so no shell redirections here).
        trampoline = (
            "import os, sys; a, b = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2])); "
            "os.dup2(a, 3); os.dup2(b, 4); os.set_inheritable(3, True); "
            "os.set_inheritable(4, True); os.execv(sys.argv[3], sys.argv[3:])"
        )
        cmd = [
            sys.executable,
            "-c",
            trampoline,
            str(r_child),
            str(w_child),
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(r_child, w_child),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(r_child)
        os.close(w_child)
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self._r], [], [], max(0.0, left))
                if not ready:
                    raise TimeoutError(f"no DevTools answer to {method}")
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never satisfied {expression!r}")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)


def _upload(chromium: str, tmp_path: Path, url: str, bundle: Path) -> Page:
    tools = _DevTools(chromium, tmp_path / "profile-cdp")
    try:
        tools.open(url + "/")
        tools.wait_for("document.body.getAttribute('data-ready') === 'true'")
        tools.set_file("#bundle-file", bundle)
        tools.evaluate("document.getElementById('check-button').click()")
        tools.wait_for("document.getElementById('status').textContent.startsWith('checked')")
        html = tools.evaluate("document.body.outerHTML")
    finally:
        tools.close()
    reader = _Reader()
    reader.feed(html)
    reader.page.ready = True
    return reader.page


def test_uploaded_bundle_shows_every_check_and_its_entry(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path
) -> None:
    url, _witness, digest = site
    path = tmp_path / "plain.spanproof.json"
    path.write_bytes(make_bundle(PLAIN).data)
    page = _upload(chromium, tmp_path, url, path)
    assert "verdict: OK" in page.text.replace("\n", " ")
    checks = [name for name, _ in page.verdicts]
    for name in (
        "format",
        "envelope",
        "signature",
        "statement",
        "key-validity",
        "records",
        "chain",
        "head",
        "completeness",
        "browser-inclusion",
    ):
        assert name in checks
    assert {v for _, v in page.verdicts} == {"PASS"}
    (entry,) = page.entries
    assert entry["entry-digest"] == digest and entry["entry-conflict"] == "no"


def test_uploaded_tampered_bundle_shows_the_failed_check(
    chromium: str, site: tuple[str, Witness, str], tmp_path: Path
) -> None:
    url, _witness, _ = site
    path = tmp_path / "tampered.spanproof.json"
    path.write_bytes(make_bundle(PLAIN).data.replace(b'"name":"step 1"', b'"name":"step X"'))
    page = _upload(chromium, tmp_path, url, path)
    uploaded = dict(page.verdicts[:9])  # the first table: checks of the uploaded file
    assert uploaded["head"] == "FAIL" and uploaded["signature"] == "PASS"
    assert uploaded["completeness"] == "SKIPPED"
    assert "verdict: FAIL" in page.text and "last record altered" in page.text
    # Its signed statement is the one logged (only the records were altered), so the
    # page also shows that log entry and what the witness checked back then.
    (entry,) = page.entries
    assert entry["entry-index"] == "2"
