"""The long campaigns' runner (``fuzz_mutations.run_campaign``) runs every case once,
each from its own seed, and fails when any case fails, in any of its processes."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from fuzz_mutations import run_campaign


@pytest.fixture(params=[1, 2, 3], ids=["one-process", "two-processes", "three-processes"])
def cores(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The number of cores the runner sees (it forks one child per further core)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(request.param)))
    return int(request.param)


def test_every_case_runs_once_with_its_own_seed(cores: int, tmp_path: Path) -> None:
    def case(n: int, rng: random.Random) -> None:
        # Each process appends to the file: one line per case, whoever ran it.
        with open(tmp_path / "ran", "a") as ran:
            ran.write(f"{n} {rng.random()!r}\n")

    run_campaign(7, 50, case)
    lines = (tmp_path / "ran").read_text().splitlines()
    ran = {int(n): float(value) for n, value in (line.split() for line in lines)}
    assert len(lines) == 50
    assert ran == {n: random.Random(f"7:{n}").random() for n in range(50)}


@pytest.mark.parametrize("failing", [0, 1, 2, 49])
def test_a_failing_case_fails_the_campaign_and_is_named(cores: int, failing: int) -> None:
    def case(n: int, rng: random.Random) -> None:
        assert n != failing, "the planted failure"

    with pytest.raises(AssertionError, match=f"case {failing} of campaign 7:(.|\n)*planted"):
        run_campaign(7, 50, case)


def test_a_process_that_dies_in_a_case_fails_the_campaign(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    parent = os.getpid()

    def case(n: int, rng: random.Random) -> None:
        if os.getpid() != parent:
            os._exit(3)  # a crash in the child, with no answer written

    with pytest.raises(AssertionError, match="ended with status"):
        run_campaign(7, 10, case)


def test_no_process_is_left_behind_when_the_callers_part_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    parent = os.getpid()

    started = tmp_path / "child"

    def case(n: int, rng: random.Random) -> None:
        if os.getpid() == parent:
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise AssertionError("the caller's part fails while the child runs")
        started.write_text(str(os.getpid()))
        while True:  # a child that would run for good
            time.sleep(0.01)

    with pytest.raises(AssertionError, match="while the child runs"):
        run_campaign(7, 10, case)
    with pytest.raises(ChildProcessError):
        os.waitpid(int(started.read_text()), os.WNOHANG)  # killed and reaped already
