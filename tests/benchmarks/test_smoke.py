"""A smoke run of the performance harness at tiny sizes, so it cannot rot.

It checks that every section runs and reports, never how fast anything was:
benchmarks are not timed unit tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from benchmarks import run


@pytest.mark.timeout(300)
def test_harness_quick_run_reports_every_section_and_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    before = tempfile.gettempdir()
    assert run.main(["--quick", "--work-dir", str(work)]) == 0
    text = capsys.readouterr().out
    assert f"files in {work};" in text
    assert tempfile.gettempdir() == before  # restored for everything else
    assert work.is_dir() and not any(work.iterdir())  # every run cleaned up
    for config in ("noop", "otlp-grpc", "spanproof-100%", "spanproof-10%",
                   "spanproof-100%+process", "spanproof-10%+process", "selection-only-10%"):
        assert f"\n{config} " in text
    for fragment in ("seal:  5-span trace", "canonical: spanproof", "verify: 500 records",
                     "verify: 2,000 records", "receiver over OTLP/gRPC (rotel)",
                     "receiver cost without a transport", "targets:"):
        assert fragment in text
    verdicts = [line.split()[0] for line in text.splitlines() if line.startswith("  PASS")
                or line.startswith("  MISS")]
    assert len(verdicts) == 9  # three per exporter mode, canonical, verify, receiver


def test_unknown_section_is_refused() -> None:
    with pytest.raises(SystemExit):
        run.main(["--only", "nonsense"])
