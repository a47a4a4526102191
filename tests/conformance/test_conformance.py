"""The conformance suite through the command line, and its regeneration.

Every ``*_pass`` case must verify (exit 0, ``OK``) and every ``*_fail`` case must not
(exit 1, ``FAIL`` or ``INCOMPLETE``) when run as
``spanproof verify --key tests/conformance/keys/producer.pub [--witness-key
tests/conformance/keys/witness.pub] [--disclosures CASE.disclosures.json] CASE`` -- the
same invocation another verifier implementation can be dropped into.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from make_cases import CASES, PASSING, disclosures_name, file_name, generate

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
PRODUCER_PUB = HERE / "keys" / "producer.pub"
WITNESS_PUB = HERE / "keys" / "witness.pub"


def _verify(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", "verify", "--key", str(PRODUCER_PUB),
         *extra, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_verdict_through_the_cli(case: object) -> None:
    name = file_name(case)  # type: ignore[arg-type]
    path = CASES_DIR / name
    assert path.is_file(), f"{name} missing: run tests/conformance/make_cases.py"
    extra: tuple[str, ...] = ()
    if case.receipt:  # type: ignore[attr-defined]
        extra = ("--witness-key", str(WITNESS_PUB))
    if case.disclosures is not None:  # type: ignore[attr-defined]
        extra = ("--disclosures", str(CASES_DIR / disclosures_name(case)))  # type: ignore[arg-type]
    result = _verify(path, *extra)
    assert "Traceback" not in result.stderr
    first = result.stdout.split(" ", 1)[0]
    if name.endswith("_pass.spanproof.json"):
        assert (result.returncode, first) == (0, "OK"), result.stdout + result.stderr
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        if case.disclosures is not None:  # type: ignore[attr-defined]
            # The bundle itself verifies; the disclosure does not open its commitment.
            assert first == "OK" and "\nFAIL disclosure " in result.stdout, result.stdout
        else:
            assert first in ("FAIL", "INCOMPLETE"), result.stdout


def test_declared_losses_case_passes_with_allow_incomplete() -> None:
    path = CASES_DIR / "completeness_declared_losses_fail.spanproof.json"
    result = _verify(path, "--allow-incomplete")
    assert result.returncode == 0, result.stdout + result.stderr


def test_receipt_pass_case_fails_when_its_receipt_is_missing_and_required(
    tmp_path: Path,
) -> None:
    lone = tmp_path / "workflow_pass.spanproof.json"
    lone.write_bytes((CASES_DIR / lone.name).read_bytes())
    result = _verify(lone, "--witness-key", str(WITNESS_PUB), "--require-receipt")
    assert result.returncode == 1, result.stdout


def test_every_committed_file_is_a_listed_case() -> None:
    expected = {file_name(c) for c in CASES}
    expected |= {file_name(c).replace(".spanproof.json", ".receipt.json")
                 for c in CASES if c.receipt}
    expected |= {disclosures_name(c) for c in CASES if c.disclosures is not None}
    assert {p.name for p in CASES_DIR.iterdir()} == expected
    assert PASSING <= {c.name for c in CASES}


def test_readme_table_lists_every_case() -> None:
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    for case in CASES:
        assert f"`{file_name(case)}`" in readme, case.name


def test_regenerating_writes_the_committed_bytes(tmp_path: Path) -> None:
    for path in generate(tmp_path):
        committed = CASES_DIR / path.name
        assert path.read_bytes() == committed.read_bytes(), path.name


def test_an_empty_segment_s_chain_check_says_it_has_no_records() -> None:
    # It said "seq 0..-1 linked by prev hashes": a range going backwards.
    result = _verify(CASES_DIR / "no_records_pass.spanproof.json", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  PASS  step 7 chain: no records: the head is the segment's start" in result.stdout
    assert "..-1" not in result.stdout
