"""Property tests: mutated bundles never crash the verifier and are never accepted.

A valid bundle (the conformance suite's ``workflow_pass``) is mutated at the byte
level (flips, deletions, insertions, truncation) and at the JSON level (one value of
the header, the statement or a record replaced, then re-encoded canonically, so the
mutation reaches the later checks).  For every input the verifier must return OK,
FAIL or INCOMPLETE without raising, and OK only when the signed statement and every
hashed record are exactly the original ones (a changed key-id hint is not signed
content; SPEC §8 step 3 uses it only to order the key search).

The default run is quick (hypothesis drives the random source); the ``slow`` tests
run the long campaign: 100,000 cases in process from a fixed seed (split over the
cores, ``fuzz_mutations.run_campaign``) and 200 through the command line (in one
command, and 40 of them one command each).
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fuzz_mutations
import pytest
from fuzz_mutations import BundleMutator, without_unsigned
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanproof.verifier import TrustRoot, Verdict, check_bundle

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
ORIGINAL = (CONFORMANCE / "cases" / "workflow_pass.spanproof.json").read_bytes()
PUB = CONFORMANCE / "keys" / "producer.pub"
TRUST = TrustRoot.from_pem_files([str(PUB)])

_FAST = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _original_report() -> Any:
    report = check_bundle(io.BytesIO(ORIGINAL), TRUST, keep_records=True)
    assert report.verdict is Verdict.OK
    return report


BASELINE = _original_report()


def _judge(data: bytes) -> Verdict:
    """Verify *data*; assert the properties; return the verdict."""
    report = check_bundle(io.BytesIO(data), TRUST, keep_records=True)
    assert report.verdict in (Verdict.OK, Verdict.FAIL, Verdict.INCOMPLETE)
    if report.verdict is not Verdict.FAIL:
        # Accepted: the signed statement and the hashed records are the original ones.
        assert report.statement_digest == BASELINE.statement_digest
        assert report.records == BASELINE.records
    return report.verdict


# -- mutations, driven by a random source (hypothesis's, or a seeded one) ------------

_MUTATOR = BundleMutator(ORIGINAL)


def mutate_bytes(rng: random.Random) -> bytes:
    """The original bundle with one to three byte-level edits."""
    return fuzz_mutations.mutate_bytes(ORIGINAL, rng)


def _check_byte_mutation(data: bytes) -> None:
    verdict = _judge(data)
    if data != ORIGINAL and verdict is not Verdict.FAIL:
        # Only the unsigned key-id hint may differ.
        assert without_unsigned(data) == without_unsigned(ORIGINAL)


def mutate_json(rng: random.Random) -> tuple[bytes, bool]:
    """A re-encoded bundle with one value replaced or deleted; and whether only the
    unsigned key-id hint changed."""
    return _MUTATOR.mutate(rng)


def _check_json_mutation(case: tuple[bytes, bool]) -> None:
    data, hint_only = case
    verdict = _judge(data)
    if verdict is not Verdict.FAIL and data != ORIGINAL:
        assert hint_only, "a changed bundle was accepted"


@_FAST
@given(st.randoms(use_true_random=False))
def test_byte_mutations_never_crash_and_are_never_accepted(rng: random.Random) -> None:
    _check_byte_mutation(mutate_bytes(rng))


@_FAST
@given(st.randoms(use_true_random=False))
def test_json_mutations_never_crash_and_are_never_accepted(rng: random.Random) -> None:
    _check_json_mutation(mutate_json(rng))


def _campaign_case(n: int, rng: random.Random) -> None:
    """Case *n* of the long campaign: byte-level below 60,000, JSON-level above."""
    if n < 60_000:
        data = mutate_bytes(rng)
        try:
            _check_byte_mutation(data)
        except AssertionError as e:
            raise AssertionError(f"byte mutation: {data[:200]!r}...") from e
    else:
        case = mutate_json(rng)
        try:
            _check_json_mutation(case)
        except AssertionError as e:
            raise AssertionError(f"JSON mutation: {case[0][:200]!r}...") from e


@pytest.mark.slow
def test_long_run_of_100000_mutations_in_process() -> None:
    """The long campaign: 60,000 byte-level and 40,000 JSON-level mutations, each
    case seeded from a fixed seed and its number (a failure names the case)."""
    fuzz_mutations.run_campaign(20260302, 100_000, _campaign_case)


# -- through the command line -----------------------------------------------------

def _mutated_files(tmp_path: Path, count: int) -> list[Path]:
    """*count* copies of the original with one bit flipped each, a fixed sample."""
    rng = random.Random(7)
    paths = []
    for n in range(count):
        data = bytearray(ORIGINAL)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path = tmp_path / f"m{n:04d}.spanproof.json"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def _verify_cli(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", "verify", "--key", str(PUB),
         *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def _cli_sample(tmp_path: Path, count: int) -> None:
    """Mutated bundles through ``spanproof verify``, one command each: exit 0 only
    for OK, 1 for FAIL, never a traceback."""
    paths = _mutated_files(tmp_path, count)
    # Two commands at a time: each is mostly the interpreter starting, on one core.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for path, result in zip(paths, pool.map(_verify_cli, paths), strict=True):
            expected = check_bundle(str(path), TRUST).verdict
            assert "Traceback" not in result.stderr, result.stderr
            assert result.stdout.split(" ", 1)[0] == expected.value, path.name
            assert result.returncode == (0 if expected is Verdict.OK else 1), path.name


def test_cli_on_mutated_bundles_exits_with_verdict_code(tmp_path: Path) -> None:
    _cli_sample(tmp_path, 5)


@pytest.mark.slow
def test_cli_on_mutated_bundles_long_sample(tmp_path: Path) -> None:
    """200 mutated bundles in one ``spanproof verify``: a line for each with its
    verdict, never a traceback, exit 1 (some FAIL); and 40 of them one command each."""
    paths = _mutated_files(tmp_path, 200)
    result = _verify_cli(*paths)
    assert "Traceback" not in result.stderr, result.stderr
    verdicts = {}
    for line in result.stdout.splitlines():
        word, rest = line.split(" ", 1)
        if rest.startswith(str(tmp_path)):
            verdicts[rest.split(" ", 1)[0].removesuffix(":")] = word
    expected = {str(p): check_bundle(str(p), TRUST).verdict.value for p in paths}
    assert verdicts == expected
    assert "FAIL" in expected.values()
    assert result.returncode == 1
    (tmp_path / "one-by-one").mkdir()
    _cli_sample(tmp_path / "one-by-one", 40)
