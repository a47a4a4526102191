"""A disclosure names every commitment it opens, with the bundle and the key that
signed it, and says so when those are different signers (SPEC §2.5.5): a producer
can copy another's commitment into its own record without knowing the value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from disclosure_support import (
    SEALED_AT,
    SPAN_A,
    TRACE,
    Written,
    signer,
    span_body,
    write_bundle,
)

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import TrustRoot, check_bundle
from spanproof.verifier._cli import main
from spanproof.verifier.disclosure import DisclosureFile, check_disclosures, load_disclosures
from spanproof.verifier.statement import Producer

OTHER = SigningKey.from_seed(bytes(range(1, 33)))  # a second published test key


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line.rstrip(",\n")) for line in path.read_text().splitlines()
            if line.startswith('{"mediaType":"application/vnd.spanproof.cer')]


def _copying_bundle(tmp_path: Path, original: Written) -> Path:
    """A bundle of the same trace, signed by another key, whose record holds the
    commitment of ``customer.email`` copied from *original*'s span A."""
    (first, *_rest) = _records(original.bundle)
    body = span_body(SPAN_A, {"gen_ai.operation.name": "chat"})
    body["span"]["attributes"]["customer.email"] = copy.deepcopy(
        first["span"]["attributes"]["customer.email"])
    sealed = seal(TRACE, [body], ChainPosition.genesis(TRACE), signer=OTHER,
                  producer=Producer(name="other", version="1", instance="00000000000000bb"),
                  sealed_at=SEALED_AT, reason="root_ended")
    return Path(DirectorySink(tmp_path / "other").write(sealed))


@pytest.fixture
def two_signers(tmp_path: Path) -> tuple[Written, Path, Path, Path]:
    original = write_bundle(tmp_path / "out")
    copied = _copying_bundle(tmp_path, original)
    pems = tmp_path / "keys"
    pems.mkdir()
    (pems / "a.pub").write_bytes(signer().public_pem())
    (pems / "b.pub").write_bytes(OTHER.public_pem())
    chosen = [d for d in load_disclosures(original.disclosures).disclosures
              if d.key == "customer.email" and d.span_id == SPAN_A]
    given = tmp_path / "given.json"
    given.write_bytes(DisclosureFile(tuple(chosen)).to_bytes())
    return original, copied, pems, given


def test_disclosure_names_every_signer_whose_bundle_holds_the_commitment(
    two_signers: tuple[Written, Path, Path, Path],
) -> None:
    original, copied, pems, given = two_signers
    trust = TrustRoot.from_pem_files([str(pems / "a.pub"), str(pems / "b.pub")])
    reports = [check_bundle(p, trust, keep_records=True) for p in (copied, original.bundle)]
    (result,) = check_disclosures(load_disclosures(given).disclosures, reports)
    assert result.ok
    assert [(o.source, o.seq, o.signer_keyid) for o in result.openings] == [
        (str(copied), 0, reports[0].signer_keyid),
        (str(original.bundle), 0, reports[1].signer_keyid),
    ]
    assert str(copied) in result.message and str(original.bundle) in result.message
    (remark,) = result.remarks
    assert "2 different signers" in remark
    assert "not that it knew the value" in remark


def test_verify_says_when_a_disclosed_commitment_is_in_bundles_of_two_signers(
    two_signers: tuple[Written, Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    original, copied, pems, given = two_signers
    argv = ["verify", "--key", str(pems / "a.pub"), "--key", str(pems / "b.pub"),
            "--disclosures", str(given), str(copied), str(original.bundle)]
    main(argv)
    lines = capsys.readouterr().out.splitlines()
    (disclosed,) = [n for n, line in enumerate(lines) if line.startswith("DISCLOSED")]
    assert f"record 0 of {copied} (key " in lines[disclosed]
    assert f"record 0 of {original.bundle} (key " in lines[disclosed]
    assert lines[disclosed + 1].startswith("  remark: the commitment it opens is in bundles "
                                           "of 2 different signers")
    main(["verify", "--json", *argv[1:]])
    (entry,) = json.loads(capsys.readouterr().out)["disclosures"]
    assert [o["bundle"] for o in entry["openings"]] == [str(copied), str(original.bundle)]
    assert all(len(o["signerKeyid"]) == 64 for o in entry["openings"])
    assert len(entry["remarks"]) == 1


def test_one_signer_gets_no_remark(tmp_path: Path) -> None:
    original = write_bundle(tmp_path / "out")
    trust = TrustRoot.from_pem_files([str(_pem(tmp_path))])
    report = check_bundle(original.bundle, trust, keep_records=True)
    results = check_disclosures(load_disclosures(original.disclosures).disclosures, [report])
    assert results
    assert all(r.ok and len(r.openings) == 1 and not r.remarks for r in results)


def _pem(tmp_path: Path) -> Path:
    pem = tmp_path / "signer.pub"
    pem.write_bytes(signer().public_pem())
    return pem


def test_report_shows_the_disclosed_value_in_each_bundle_holding_it_and_the_remark(
    tmp_path: Path, two_signers: tuple[Written, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    original, copied, pems, given = two_signers
    html = tmp_path / "report.html"
    main(["report", "--key", str(pems / "a.pub"), "--key", str(pems / "b.pub"),
          "--disclosures", str(given), "--html", str(html), str(copied), str(original.bundle)])
    assert "  remark: the commitment it opens is in bundles" in capsys.readouterr().out
    document = html.read_text()
    assert document.count('data-disclosure="PASS"') == 2
    assert document.count('class="disclosure-remark"') == 1
