"""The commands the witness's page at ``/`` tells a reviewer to run are the real
CLI's: each parses, and each, run on real files in place of its placeholders,
verifies (the page's ``verify --witness-key WITNESS.pub BUNDLE``, with no producer
key, exited 2: ``no trusted key``)."""

from __future__ import annotations

import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import ORIGIN, FakeClock, make_bundle, trace_id, write_bundle

from spanproof.exporter.keys import SigningKey
from spanproof.verifier._cli import build_parser, main
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

PAGE = Path(__file__).parents[2] / "witness" / "static" / "index.html"


class _Code(HTMLParser):
    """Collects the text of every ``<code>`` element."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "code":
            self._inside = True
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "code":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.texts[-1] += data


def _page_commands() -> list[list[str]]:
    reader = _Code()
    reader.feed(PAGE.read_text(encoding="utf-8"))
    commands = [shlex.split(text) for text in reader.texts if text.startswith("spanproof ")]
    assert commands, "the page shows no spanproof command"
    return [words[1:] for words in commands]


@pytest.mark.parametrize("argv", _page_commands(), ids=" ".join)
def test_each_command_on_the_page_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # raises UsageError on a flag the CLI does not have


def test_each_command_on_the_page_verifies_real_files(
    tmp_path: Path,
    producer_key: SigningKey,
    producer_trust: TrustRoot,
    witness_private: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Store(str(tmp_path / "w.db"))
    try:
        witness = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                          producer_trust=producer_trust, clock=FakeClock())
        bundle = write_bundle(tmp_path, make_bundle(trace_id(1)))
        result = witness.submit(bundle.read_bytes())
        assert result.receipt is not None
        Path(receipt_path(str(bundle))).write_bytes(result.receipt.to_bytes())
    finally:
        store.close()
    producer_pub = tmp_path / "producer.pub"
    producer_pub.write_bytes(producer_key.public_pem())
    witness_pub = tmp_path / "witness.pub"
    witness_pub.write_bytes(witness.signer.key.public_pem())
    files = {"PRODUCER.pub": str(producer_pub), "WITNESS.pub": str(witness_pub),
             "BUNDLE": str(bundle)}
    receipt = Path(receipt_path(str(bundle)))
    for argv in _page_commands():
        real = [files.get(word, word) for word in argv]
        assert main(real) == 0, (argv, capsys.readouterr())
        assert capsys.readouterr().out.startswith(f"OK {bundle} ")
    # The receipt is checked too: one of another log fails the same commands.
    receipt.write_bytes(receipt.read_bytes().replace(ORIGIN.encode(), b"other.test/log"))
    for argv in _page_commands():
        assert main([files.get(word, word) for word in argv]) == 1
        assert capsys.readouterr().out.startswith(f"FAIL {bundle}: ")
