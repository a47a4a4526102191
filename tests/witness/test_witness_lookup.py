"""``spanproof witness lookup``: what a witness logged for a trace, against the
bundles an auditor was given.

Offline verification cannot know of segments it was not given (SPEC §4.4): a chain
whose last segment was withheld, or a second history of the trace sealed under
another producer instance with the same key, verified OK, each with valid
receipts, and the witness's own look-up did not flag the second history (its
conflict rule is per instance).  Only the HTTP look-up, unsigned, showed the
entries.  This command verifies each entry's receipt and compares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_helpers import (
    INSTANCE,
    ORIGIN,
    OTHER_WITNESS_SEED,
    PRODUCER_SEED,
    SEALED_AT,
    FakeClock,
    body,
    write_bundle,
    write_private_key,
)

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, SealedBundle, seal
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.keys import TrustRoot
from spanproof.verifier.statement import Producer
from spanproof.witness._cli import main
from spanproof.witness.lookup import compare_entries, read_given
from spanproof.witness.service import Witness
from spanproof.witness.signing import CheckpointSigner
from spanproof.witness.store import Store

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_INSTANCE = "0000000000000001"


def chain(count: int, *, instance: str = INSTANCE, name: str | None = None,
          trace: str = TRACE) -> list[SealedBundle]:
    """*count* linked segments of *trace*, one record each."""
    bundles, position = [], ChainPosition.genesis(trace)
    for n in range(count):
        sealed = seal(trace, [body(trace, n, name)], position,
                      signer=SigningKey.from_seed(PRODUCER_SEED),
                      producer=Producer("spanproof", "0.1.0", instance),
                      sealed_at=SEALED_AT, reason="size_limit")
        bundles.append(sealed)
        position = sealed.next_position()
    return bundles


@pytest.fixture
def witness(tmp_path: Path, producer_trust: TrustRoot, serve_witness: Any,
            witness_private: Ed25519PrivateKey) -> Iterator[tuple[Any, Callable[..., None]]]:
    """A served witness pinning the producer key, and a function logging bundles."""
    store = Store(str(tmp_path / "w.db"))
    service = Witness(store, CheckpointSigner(witness_private, ORIGIN),
                      producer_trust=producer_trust, clock=FakeClock())
    srv = serve_witness(service)

    def log(*bundles: SealedBundle) -> None:
        for sealed in bundles:
            service.submit(sealed.data)

    yield srv, log
    srv.stop()
    store.close()


@pytest.fixture
def pub(tmp_path: Path, witness_private: Ed25519PrivateKey) -> Path:
    key = write_private_key(tmp_path / "witness.key", witness_private)
    return Path(f"{key}.pub")


def lookup(capsys: pytest.CaptureFixture[str], url: str, pub: Path, *paths: Path,
           trace: str = TRACE) -> tuple[int, list[str]]:
    status = main(["witness", "lookup", "--url", url, "--witness-key", str(pub), trace,
                   *map(str, paths)])
    out = capsys.readouterr().out
    return status, out.splitlines()


def given_dir(tmp_path: Path, *bundles: SealedBundle) -> Path:
    folder = tmp_path / "given"
    folder.mkdir(exist_ok=True)
    for sealed in bundles:
        write_bundle(folder, sealed)
    return folder


def test_every_entry_among_the_bundles_given_is_ok(
    tmp_path: Path, witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    segments = chain(3)
    log(*segments)
    status, lines = lookup(capsys, srv.url, pub, given_dir(tmp_path, *segments))
    assert status == 0, lines
    assert [line.split(":")[0] for line in lines[:3]] == [
        "LOGGED entry 0", "LOGGED entry 1", "LOGGED entry 2"]
    assert all(f"instance {INSTANCE} segment {n}" in lines[n] for n in range(3))
    assert lines[-1] == (f"OK trace {TRACE}: 3 entries logged, of 1 producer instance, "
                         "each among the bundles given")


def test_a_withheld_last_segment_is_missing(
    tmp_path: Path, witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    segments = chain(3)
    log(*segments)
    status, lines = lookup(capsys, srv.url, pub, given_dir(tmp_path, *segments[:2]))
    assert status == 1
    assert lines[2].startswith(f"MISSING entry 2: instance {INSTANCE} segment 2 ")
    assert lines[2].endswith("logged, not among the bundles given")
    assert lines[-1] == (f"FAIL trace {TRACE}: 3 entries logged, of 1 producer instance; "
                         "1 not among the bundles given")


def test_a_second_history_under_another_instance_is_missing(
    tmp_path: Path, witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The operator holds the key and re-seals the trace without a step under a new
    # instance id: the witness logs it without a conflict (its rule is per instance).
    srv, log = witness
    original = chain(2)
    rewritten = chain(1, instance=OTHER_INSTANCE, name="rewritten")
    log(*original, *rewritten)
    status, lines = lookup(capsys, srv.url, pub, given_dir(tmp_path, *original))
    assert status == 1
    assert any(line.startswith(f"MISSING entry 2: instance {OTHER_INSTANCE} segment 0 ")
               for line in lines)
    assert lines[-1].startswith(f"FAIL trace {TRACE}: 3 entries logged, of 2 producer "
                                "instances; 1 not among the bundles given")
    # Given the other history instead, the original is what is missing.
    other = tmp_path / "other"
    other.mkdir()
    write_bundle(other, rewritten[0])
    status, lines = lookup(capsys, srv.url, pub, other)
    assert status == 1
    assert sum(line.startswith("MISSING entry ") for line in lines) == 2


def test_two_statements_for_one_segment_are_a_conflict(
    tmp_path: Path, witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    first, second = chain(1)[0], chain(1, name="another version")[0]
    log(first, second)
    status, lines = lookup(capsys, srv.url, pub, given_dir(tmp_path, first, second))
    assert status == 1
    conflicts = [line for line in lines if line.startswith("CONFLICT ")]
    assert conflicts and all("another statement for this segment" in c for c in conflicts)
    assert "in conflict" in lines[-1]


def test_a_bundle_given_that_was_never_logged_is_said_to_be(
    tmp_path: Path, witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    segments = chain(2)
    log(segments[0])
    folder = given_dir(tmp_path, *segments)
    status, lines = lookup(capsys, srv.url, pub, folder)
    assert status == 1
    assert f"NOT LOGGED {folder / segments[1].file_name}: instance {INSTANCE} segment 1 " \
        f"statement {segments[1].statement_digest}" in lines
    assert lines[-1].endswith("1 bundles given not logged")


def test_without_bundles_the_entries_are_listed(
    witness: Any, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    log(*chain(2), *chain(1, trace="1" * 32))
    status, lines = lookup(capsys, srv.url, pub)
    assert status == 0
    assert [line.split(":")[0] for line in lines] == [
        "LOGGED entry 0", "LOGGED entry 1", f"OK trace {TRACE}"]
    assert lines[-1] == f"OK trace {TRACE}: 2 entries logged, of 1 producer instance"


def test_entries_whose_receipts_another_key_signed_fail(
    tmp_path: Path, witness: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, log = witness
    log(*chain(1))
    other = write_private_key(tmp_path / "other.key",
                              Ed25519PrivateKey.from_private_bytes(OTHER_WITNESS_SEED))
    status, lines = lookup(capsys, srv.url, Path(f"{other}.pub"))
    assert status == 1
    assert lines[0].startswith("FAIL entry 0: ")
    assert lines[-1].endswith("1 entries that failed their check")


def test_an_entry_naming_another_statement_than_its_receipt_fails(
    tmp_path: Path, witness: Any, pub: Path,
) -> None:
    # A witness (or a proxy) answering with an entry whose members do not match its
    # verified receipt: the receipt's leaf is what is believed, and the entry fails.
    srv, log = witness
    segments = chain(2)
    log(*segments)
    entries = served_entries(srv.url)
    entries[1] = {**entries[1], "statementDigest": segments[0].statement_digest}
    given, unreadable = read_given([str(given_dir(tmp_path, *segments) / s.file_name)
                                    for s in segments])
    assert not unreadable
    lines, result = compared(entries, pub, given=given)
    assert (result.ok, result.failed) == (False, 1)
    assert lines[1].startswith("FAIL entry 1: its statementDigest ")
    assert result.not_logged  # the second bundle is then matched by no entry


def served_entries(url: str) -> list[dict[str, Any]]:
    from spanproof.witness.client import WitnessClient

    return list(WitnessClient(url).lookup_entries(trace=TRACE))


def compared(entries: list[Any], pub: Path, **kwargs: Any) -> tuple[list[str], Any]:
    """compare_entries' lines and result for *entries*."""
    lines: list[str] = []
    result = compare_entries(entries, TRACE, [WitnessKey.load(str(pub))],
                             on_entry=lines.append, **kwargs)
    return lines, result


def test_two_statements_for_one_segment_are_a_conflict_unmarked_too(
    witness: Any, pub: Path
) -> None:
    # The conflict flag is the witness's unsigned word: a hostile witness leaves it
    # off, and both signed leaves printed as LOGGED, exit 0.
    srv, log = witness
    log(chain(1)[0], chain(1, name="another version")[0])
    entries = [{**entry, "conflict": False} for entry in served_entries(srv.url)]
    lines, result = compared(entries, pub)
    assert result.conflicts == 1 and not result.ok
    assert lines[0].startswith("LOGGED entry 0: ")
    assert lines[1].startswith("CONFLICT entry 1: ")
    assert lines[1].endswith("entry 0 is another statement for this segment of this instance")


def test_an_entry_given_twice_or_out_of_order_fails(witness: Any, pub: Path) -> None:
    srv, log = witness
    log(*chain(2))
    first, second = served_entries(srv.url)
    lines, result = compared([first, second, second, first], pub)
    assert (result.entries, result.failed) == (4, 2)
    assert [line.split(":")[0] for line in lines] == [
        "LOGGED entry 0", "LOGGED entry 1", "FAIL entry 1", "FAIL entry 0"]
    assert lines[2].endswith("it comes after entry 1: the witness answers entries by "
                             "index, each once")


def test_a_long_member_is_quoted_cut(witness: Any, pub: Path) -> None:
    # A value of megabytes was quoted whole in the FAIL line.
    srv, log = witness
    log(*chain(1))
    (entry,) = served_entries(srv.url)
    lines, _ = compared([{**entry, "traceId": "f" * 1_000_000}], pub)
    assert lines[0].startswith("FAIL entry 0: its traceId 'ffff")
    assert len(lines[0]) < 300


@pytest.mark.parametrize("trace", ["4BF92F3577B34DA6A3CE929D0E0E4736", "0" * 32, "abc"])
def test_a_malformed_trace_id_is_a_usage_error(
    pub: Path, capsys: pytest.CaptureFixture[str], trace: str
) -> None:
    status = main(["witness", "lookup", "--url", "http://127.0.0.1:9", "--witness-key",
                   str(pub), trace])
    assert status == 2
    assert "TRACE_ID must be 32 lowercase hex digits" in capsys.readouterr().err


def test_an_unreachable_witness_exits_3(pub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from witness_helpers import free_port

    status = main(["witness", "lookup", "--url", f"http://127.0.0.1:{free_port()}",
                   "--witness-key", str(pub), "--timeout", "2", TRACE])
    assert status == 3
    assert capsys.readouterr().out.startswith("FAIL http://127.0.0.1:")
