"""``show`` and ``disclose`` read a bundle's records one at a time and keep none of them:
what they hold grows by a few numbers a record, not by the records (as ``verify``).

Measured with ``tracemalloc`` against what holding the same records parsed takes in
this process: records of many attributes take dozens of times their size parsed, so
keeping them all (as the commands did) is far above the bound, and keeping a few
numbers a record far below it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from disclosure_support import PRODUCER, SEALED_AT, TRACE, signer, span_body, trust_root
from traced_memory import held_by_records, peak_of

from spanproof.exporter.disclosure import redaction_matcher
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier._cli import main

SPANS = 400
ATTRIBUTES = 120


def _span_id(n: int) -> str:
    return f"{n + 1:016x}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A bundle of many spans of many attributes (a few with a committed
    ``customer.id``) beside its disclosure file, the signer's key, and how many bytes
    holding all its records parsed takes."""
    tmp = tmp_path_factory.mktemp("records")
    bodies = []
    for n in range(SPANS):
        attributes: dict[str, object] = {f"app.a{j}": f"value {j} of span {n}"
                                         for j in range(ATTRIBUTES)}
        attributes["gen_ai.operation.name"] = "chat"
        if n % 100 == 0:
            attributes["customer.id"] = str(n)
        bodies.append(span_body(_span_id(n), attributes, _span_id(n // 2) if n else ""))
    sealed = seal(TRACE, bodies, ChainPosition.genesis(TRACE), signer=signer(),
                  producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                  redact=redaction_matcher(["customer.*"]))
    path = Path(DirectorySink(tmp / "out").write(sealed))
    _trust, pem = trust_root(tmp / "keys")
    count, held = held_by_records(path)
    assert count == SPANS
    return path, pem, held


@pytest.mark.parametrize("with_key", [False, True], ids=["unverified", "verified"])
def test_show_keeps_no_records(
    bundle: tuple[Path, Path, int], with_key: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pem, held = bundle
    key = ["--key", str(pem)] if with_key else []
    code, peak = peak_of(lambda: main(["show", *key, str(path)]), capsys)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("step ") == SPANS  # every span is shown
    assert peak < held / 4, (peak, held)


def test_show_of_a_failed_bundle_keeps_no_records(
    bundle: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pem, held = bundle
    cut = tmp_path / path.name
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) - 10])  # the last record is cut: the chain fails
    code, peak = peak_of(lambda: main(["show", "--key", str(pem), str(cut)]), capsys)
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"the {SPANS - 1} record(s) below were read before the failure" in out
    assert peak < held / 4, (peak, held)


def test_disclose_keeps_no_records(
    bundle: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _pem, held = bundle
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(str(path).replace(".spanproof.json", ".disclosures.json"),
                str(copy).replace(".spanproof.json", ".disclosures.json"))
    out_file = tmp_path / "for-reviewer.json"
    code, peak = peak_of(lambda: main(["disclose", str(copy), "--attr", "customer.*",
                                     "--out", str(out_file)]), capsys)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"wrote {SPANS // 100} disclosure(s)" in out
    assert peak < held / 4, (peak, held)
