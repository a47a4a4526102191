"""``spanproof verify --jobs`` and ``report --jobs``: bundles checked in worker
processes give exactly the output of checking them one by one."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from cli_support import TRACE, Keys, MakeBundle, flip_in_record
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import spanproof.verifier._jobs as jobs
from spanproof.verifier._cli import main
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.receipt import receipt_path
from spanproof.verifier.statement import Completeness
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

ORIGIN = "jobs.test/witness"


def _trace(n: int) -> str:
    return f"{n + 1:032x}"


@pytest.fixture
def witness_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
    vkey = WitnessKey(private.public_key(), ORIGIN).vkey()
    path = tmp_path / "witness.vkey"
    path.write_text(vkey)
    return private, path


@pytest.fixture
def mixed_dir(
    tmp_path: Path, keys: Keys, make_bundle: MakeBundle,
    witness_key: tuple[Ed25519PrivateKey, Path],
) -> Path:
    """Bundles of every outcome, some with witness receipts, under one directory:
    good ones, a trace of three segments, a trace missing its middle segment, a
    record altered, a truncated file, one signed by an unknown key, one declaring
    losses, and a receipt that belongs to another bundle."""
    directory = tmp_path / "bundles"
    made: list[Path] = []
    for n in range(20):
        made.append(make_bundle(f"good-{n:02d}", trace_id=_trace(n))[0])
    _, first = make_bundle("chain-0", trace_id=_trace(30))
    _, second = make_bundle("chain-1", trace_id=_trace(30), position=first.next_position())
    make_bundle("chain-2", trace_id=_trace(30), position=second.next_position())
    _, gap = make_bundle("gap-0", trace_id=_trace(31))
    _, skipped = make_bundle("gap-1", trace_id=_trace(31), position=gap.next_position(),
                             directory=tmp_path / "elsewhere")
    make_bundle("gap-2", trace_id=_trace(31), position=skipped.next_position())
    altered, _ = make_bundle("altered", trace_id=_trace(32))
    flip_in_record(altered, 2)
    truncated, sealed = make_bundle("truncated", trace_id=_trace(33))
    truncated.write_bytes(sealed.data[: len(sealed.data) // 2])
    from spanproof.exporter.keys import SigningKey

    make_bundle("untrusted", trace_id=_trace(34), signer=SigningKey.from_seed(bytes(32)))
    make_bundle("incomplete", trace_id=_trace(35),
                completeness=Completeness(dropped_spans=2))
    # Receipts for every other good bundle, and one moved onto the wrong bundle.
    private, _ = witness_key
    store = Store(str(tmp_path / "witness.db"))
    try:
        witness = Witness(store, CheckpointSigner(private, ORIGIN),
                          producer_trust=TrustRoot.from_pem_files([str(keys.pub)]))
        for path in made[::2]:
            receipt = witness.submit(path.read_bytes()).receipt
            Path(receipt_path(str(path))).write_bytes(receipt.to_bytes())
    finally:
        store.close()
    Path(receipt_path(str(made[1]))).write_bytes(
        Path(receipt_path(str(made[0]))).read_bytes())
    return directory


class SpyPool(ProcessPoolExecutor):
    """The real pool, counting how often it was started and with how many workers."""

    started: list[int] = []

    def __init__(self, max_workers: int, **kwargs: Any) -> None:
        SpyPool.started.append(max_workers)
        super().__init__(max_workers, **kwargs)


@pytest.fixture
def spy_pool(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    SpyPool.started = []
    monkeypatch.setattr(jobs, "ProcessPoolExecutor", SpyPool)
    return SpyPool.started


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("flags", [["--json"], ["--verbose"], []], ids=["json", "verbose", "lines"])
def test_workers_print_exactly_what_one_process_prints(
    capsys, keys: Keys, mixed_dir: Path, witness_key, spy_pool: list[int], flags: list[str]
):
    _, vkey = witness_key
    argv = ["verify", "--key", keys.pub, "--witness-key", vkey, *flags, mixed_dir]
    code_one, out_one, err_one = run(capsys, *argv, "--jobs", "1")
    assert spy_pool == []
    code_many, out_many, err_many = run(capsys, *argv, "--jobs", "3")
    assert spy_pool == [3]
    assert (code_many, out_many, err_many) == (code_one, out_one, err_one)
    assert code_one == 1
    if flags == ["--json"]:
        doc = json.loads(out_one)
        verdicts = [b["verdict"] for b in doc["bundles"]]
        assert verdicts.count("OK") == 24 and verdicts.count("FAIL") == 4
        assert verdicts.count("INCOMPLETE") == 1
        receipts = [c for b in doc["bundles"] for c in b["checks"] if c["name"] == "receipt"]
        assert sum(c["status"] == "PASS" for c in receipts) == 10
        assert sum(c["status"] == "FAIL" for c in receipts) == 1
        assert [t["ok"] for t in doc["traces"] if t["traceId"] == _trace(31)] == [False]


def test_report_from_workers_is_the_same_page(
    capsys, keys: Keys, mixed_dir: Path, witness_key, tmp_path: Path, spy_pool: list[int]
):
    _, vkey = witness_key
    pages = []
    for count in ("1", "2"):
        html = tmp_path / f"report-{count}.html"
        code, out, _ = run(capsys, "report", "--key", keys.pub, "--witness-key", vkey,
                           "--html", html, "--jobs", count, mixed_dir)
        assert code == 1
        pages.append((out.replace(str(html), "PAGE"), html.read_text()))
    assert spy_pool == [2]
    assert pages[0] == pages[1]
    assert "receipt" in pages[0][1]


def test_a_broken_pool_is_reported_and_the_rest_checked_here(
    capsys, keys: Keys, mixed_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    code_one, out_one, _ = run(capsys, "verify", "--key", keys.pub, "--jobs", "1", mixed_dir)

    class BreaksAfterFive(ProcessPoolExecutor):
        def map(self, fn: Any, *iterables: Any, **kwargs: Any) -> Iterator[Any]:
            results = super().map(fn, *iterables, **kwargs)
            for n, result in enumerate(results):
                if n == 5:
                    raise BrokenProcessPool("a worker was killed")
                yield result

    monkeypatch.setattr(jobs, "ProcessPoolExecutor", BreaksAfterFive)
    code, out, err = run(capsys, "verify", "--key", keys.pub, "--jobs", "2", mixed_dir)
    assert (code, out) == (code_one, out_one)
    total = len(list(mixed_dir.glob("*.spanproof.json")))
    assert err == (
        "spanproof: warning: checking in 2 processes failed (BrokenProcessPool: a worker "
        f"was killed); checking the remaining {total - 5} bundle(s) in this process\n"
    )


def test_workers_started_by_spawn_give_the_same_output(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, spy_pool: list[int]
):
    for n in range(4):
        make_bundle(f"b{n}", trace_id=_trace(n))
    flip_in_record(tmp_path / "bundles" / "b2.spanproof.json", 1)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a second thread: fork is not safe
    other.start()
    try:
        assert jobs._context().get_start_method() == "spawn"
        one = run(capsys, "verify", "--key", keys.pub, "--jobs", "1", tmp_path / "bundles")
        two = run(capsys, "verify", "--key", keys.pub, "--jobs", "2", tmp_path / "bundles")
    finally:
        stop.set()
        other.join()
    assert spy_pool == [2]
    assert two == one
    assert one[0] == 1 and "b2.spanproof.json: record 2: previous-hash mismatch" in one[1]


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "1_0", "+2", "\u0663"])
def test_jobs_below_one_or_not_a_number_is_a_usage_error(capsys, keys: Keys, make_bundle,
                                                         value: str):
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", "--key", keys.pub, f"--jobs={value}", path)
    assert code == 2 and out == ""
    assert f"argument --jobs/-j: must be a whole number of at least 1, not {value!r}" in err


@pytest.mark.parametrize("value", ["257", "3000", "99999999999999999999"])
def test_jobs_above_256_is_a_usage_error(capsys, keys: Keys, make_bundle, value: str):
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", "--key", keys.pub, f"--jobs={value}", path)
    assert code == 2 and out == ""
    assert f"argument --jobs/-j: must be at most 256 (worker processes), not '{value}'" in err


def test_jobs_256_is_taken(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--key", keys.pub, "--jobs=256", path)
    assert code == 0 and out.startswith("OK ")


def test_how_many_workers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobs, "usable_cpus", lambda: 4)
    assert jobs.workers_for(1, 500)[0] == 0  # --jobs 1: this process
    assert jobs.workers_for(8, 3)[0] == 3  # never more workers than bundles
    assert jobs.workers_for(8, 1)[0] == 0
    assert jobs.workers_for(2, 2)[0] == 2  # an explicit count, however few bundles
    # The default: one per CPU, once there are enough bundles to pay for starting them.
    fork = jobs._context().get_start_method() == "fork"
    least = jobs.AUTO_MIN_BUNDLES_FORK if fork else jobs.AUTO_MIN_BUNDLES_SPAWN
    assert jobs.workers_for(None, least - 1)[0] == 0
    assert jobs.workers_for(None, least)[0] == 4
    monkeypatch.setattr(jobs, "usable_cpus", lambda: 1)
    assert jobs.workers_for(None, 10 * least)[0] == 0


@pytest.mark.parametrize("command", ["verify", "report"])
def test_jobs_help_says_what_readme_says_the_default_is(capsys, command: str):
    # The help said "one per usable CPU when there are enough bundles ..., 64 on
    # Linux": 64 read as a number of workers.
    said = (f"a run of at least {jobs.AUTO_MIN_BUNDLES_FORK:,} bundles uses one worker per "
            f"usable CPU on Linux ({jobs.AUTO_MIN_BUNDLES_SPAWN:,} bundles elsewhere")
    assert main([command, "--help"]) == 0
    assert said in " ".join(capsys.readouterr().out.split())
    readme = Path(__file__).parents[2] / "README.md"
    assert said in " ".join(readme.read_text(encoding="utf-8").split())


def test_default_is_one_process_for_a_few_bundles(
    capsys, keys: Keys, make_bundle: MakeBundle, spy_pool: list[int]
):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 0 and out.startswith(f"OK {path} trace={TRACE}")
    assert spy_pool == []



def _dies_in_a_worker(path: str) -> str:
    """The check of a bundle that kills the worker process checking it (forked or
    spawned, whichever the run's threads allow)."""
    if path == "p7" and multiprocessing.parent_process() is not None:
        os._exit(3)
    return path.upper()


def test_a_killed_worker_does_not_lose_or_hang_the_run():
    paths = [f"p{n}" for n in range(40)]
    warnings: list[str] = []
    results = list(jobs.map_in_order(_dies_in_a_worker, paths, 2, warn=warnings.append))
    assert results == [p.upper() for p in paths]
    (warning,) = warnings
    assert warning.startswith("checking in 2 processes failed (BrokenProcessPool")
    assert warning.endswith("bundle(s) in this process")


def test_checks_that_cannot_be_pickled_run_in_this_process():
    warnings: list[str] = []
    results = list(jobs.map_in_order(lambda p: p * 2, ["a", "b", "c"], 2,
                                     warn=warnings.append))
    assert results == ["aa", "bb", "cc"]
    assert len(warnings) == 1
    assert warnings[0].startswith("cannot hand the checks to other processes (")


def test_receipts_of_one_batch_check_their_checkpoint_once_per_process(
    capsys, keys: Keys, make_bundle: MakeBundle, tmp_path: Path, witness_key,
    monkeypatch: pytest.MonkeyPatch,
):
    import spanproof.verifier._cli as cli
    import spanproof.verifier.receipt as receipt_module

    private, vkey = witness_key
    paths = [make_bundle(f"r{n:02d}", trace_id=_trace(n))[0] for n in range(12)]
    store = Store(str(tmp_path / "batches.db"))
    try:
        witness = Witness(store, CheckpointSigner(private, ORIGIN),
                          producer_trust=TrustRoot.from_pem_files([str(keys.pub)]))
        for start in (0, 4, 8):  # three batches of four: three checkpoints
            group = paths[start:start + 4]
            for path, result in zip(group, witness.submit_batch([p.read_bytes() for p in group]),
                                    strict=True):
                Path(receipt_path(str(path))).write_bytes(result.receipt.to_bytes())
    finally:
        store.close()
    # One receipt's checkpoint signature altered: it alone must fail.
    forged = Path(receipt_path(str(paths[5])))
    doc = json.loads(forged.read_bytes())
    text, _, signature = doc["checkpoint"].rpartition(" ")
    doc["checkpoint"] = f"{text} {'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    forged.write_text(json.dumps(doc))
    checked: list[object] = []
    real = receipt_module.verify_checkpoint
    monkeypatch.setattr(receipt_module, "verify_checkpoint",
                        lambda *a, **k: checked.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(cli, "_RECEIPT_VERIFIERS", {})
    code, out, _ = run(capsys, "verify", "--key", keys.pub, "--witness-key", vkey,
                       "--require-receipt", "--jobs", "1", tmp_path / "bundles")
    assert code == 1
    lines = out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["OK"] * 5 + ["FAIL"] + ["OK"] * 6
    assert "checkpoint" in lines[5]
    assert len(checked) == 4  # three checkpoints, and the forged one
