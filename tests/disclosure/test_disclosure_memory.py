"""``verify --disclosures`` keeps of each bundle only the records its disclosures need,
not every record of every bundle (SPEC §2.5.5 looks at the named spans alone)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from disclosure_support import PRODUCER, SEALED_AT, TRACE, signer, span_body, trust_root
from traced_memory import held_by_records, peak_of

from spanproof.exporter.disclosure import redaction_matcher
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import TrustRoot, check_bundle
from spanproof.verifier._cli import main
from spanproof.verifier.disclosure import (
    DisclosureFile,
    DisclosureNeeds,
    check_disclosures,
    disclosures_path,
    load_disclosures,
)
from spanproof.verifier.statement import Completeness

SPANS = 1500


def _span_id(n: int) -> str:
    return f"{n + 1:016x}"


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A bundle of many spans, each with a committed ``customer.id``, a disclosure
    file naming one span, and the signer's key."""
    tmp = tmp_path_factory.mktemp("many")
    bodies = [span_body(_span_id(n), {"gen_ai.operation.name": "chat", "customer.id": str(n),
                                      **{f"a{j}": "x" * 40 for j in range(20)}})
              for n in range(SPANS)]
    sealed = seal(TRACE, bodies, ChainPosition.genesis(TRACE), signer=signer(),
                  producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                  redact=redaction_matcher(["customer.*"]))
    bundle = Path(DirectorySink(tmp / "out").write(sealed))
    one = [d for d in load_disclosures(disclosures_path(bundle)).disclosures
           if d.span_id == _span_id(700)]
    given = tmp / "one.json"
    given.write_bytes(DisclosureFile(tuple(one)).to_bytes())
    _trust, pem = trust_root(tmp / "keys")
    return bundle, given, pem


def test_verify_with_one_disclosure_does_not_keep_every_record(
    many: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, given, pem = many
    tracemalloc.start()
    try:
        code = main(["verify", "--jobs", "1", "--key", str(pem), "--disclosures", str(given),
                     str(bundle)])
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"span={_span_id(700)} customer.id = \"700\" (string)" in out
    # Keeping every record takes several times the bundle's size (its bytes, then
    # parsed); one span's records and the streaming take a small part of it.
    assert peak < bundle.stat().st_size, (peak, bundle.stat().st_size)


def test_needed_records_give_the_results_of_all_records(
    many: tuple[Path, Path, Path],
) -> None:
    bundle, given, pem = many
    trust = TrustRoot.from_pem_files([str(pem)])
    disclosures = load_disclosures(given).disclosures
    moved = disclosures[0].__class__(TRACE, _span_id(3), "customer.id", disclosures[0].salt,
                                     disclosures[0].value)
    checked = (*disclosures, moved)
    needs = DisclosureNeeds.of(checked)
    some = check_bundle(bundle, trust, select_records=needs)
    assert some.records is not None
    assert {r["span"]["spanId"] for r in some.records} == {_span_id(700), _span_id(3)}
    every = check_bundle(bundle, trust, keep_records=True)
    assert check_disclosures(checked, [some]) == check_disclosures(checked, [every])
    (_ok, wrong) = check_disclosures(checked, [some])
    assert "carries the salt of attribute 'customer.id' of span " + _span_id(700) in wrong.message


def test_a_named_span_s_records_are_kept_without_their_clear_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every record of a named span was kept whole: values of tiny items take ~25
    # times their bytes parsed, so a bundle repeating one span id with large arrays
    # (its conflicts declared) took ~470 MiB to check one disclosure against 18 MB.
    # Of those records only what the check reads is held: their keys and commitments.
    bodies = [span_body(_span_id(0), {"customer.id": "c-1", "x": [0] * 5000})
              for _ in range(12)]
    sealed = seal(TRACE, bodies, ChainPosition.genesis(TRACE), signer=signer(),
                  producer=PRODUCER, sealed_at=SEALED_AT, reason="root_ended",
                  redact=redaction_matcher(["customer.*"]),
                  completeness=Completeness(conflicts=(_span_id(0),)))
    bundle = Path(DirectorySink(tmp_path / "out").write(sealed))
    one = load_disclosures(disclosures_path(bundle)).disclosures[:1]
    given = tmp_path / "one.json"
    given.write_bytes(DisclosureFile(tuple(one)).to_bytes())
    _trust, pem = trust_root(tmp_path / "keys")
    _records, parsed = held_by_records(bundle)

    def run() -> int:
        return main(["verify", "--jobs", "1", "--key", str(pem), "--disclosures", str(given),
                     str(bundle)])

    code, peak = peak_of(run, capsys)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"span={_span_id(0)} customer.id = \"c-1\" (string)" in out
    assert peak < parsed / 2, (peak, parsed, bundle.stat().st_size)
