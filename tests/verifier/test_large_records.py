"""Record lines over ``LARGE_RECORD_BYTES`` (SPEC §8 steps 6-7): parsed only once they
and the lines after them chain, by their bytes alone, to the signed head.

A line of tiny JSON values takes up to ~30 times its size parsed, so a forged line
of 64 MiB, which anyone can put in a file, cost a verifier (or a witness checking a
submission) ~2 GB before any hash refused it.
"""

from __future__ import annotations

import gc
import io
import json
import tracemalloc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from test_tamper import chain, join, resign, split, statement_of

from spanproof.verifier import InvalidBundle, Status, Verdict, canonicalize, verify_bundle
from spanproof.verifier import verify as verify_module
from spanproof.verifier.bundle import LARGE_RECORD_BYTES, BundleReader
from spanproof.verifier.records import record_hash

if TYPE_CHECKING:
    from conftest import Kit

NOT_PARSED = ("are not parsed: the lines from it to the end do not chain to the signed head "
              "by their bytes")
# A line of empty arrays: the costliest to parse for its size.
EMPTY_ARRAYS = b"[" + b",".join([b"[]"] * (LARGE_RECORD_BYTES // 3 + 1)) + b"]"


@pytest.fixture
def parts(kit: Kit) -> tuple[bytes, list[bytes]]:
    """A genuine bundle of four records: its header line and its record lines."""
    return split(kit.seal().data)


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The length of every record line the verifier parses."""
    sizes: list[int] = []
    real = verify_module.loads_canonical

    def loads_canonical(raw: bytes, what: str = "document") -> Any:
        sizes.append(len(raw))
        return real(raw, what)

    monkeypatch.setattr(verify_module, "loads_canonical", loads_canonical)
    yield sizes


def _large(kit: Kit, index: int) -> dict[str, Any]:
    """A record body of step *index* over ``LARGE_RECORD_BYTES``."""
    return kit.span_body(index, attributes={"gen_ai.prompt": "p" * (LARGE_RECORD_BYTES + 10)})


def _records_failure(kit: Kit, data: bytes) -> str:
    report = kit.check(data)
    assert report.verdict is Verdict.FAIL
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["records"], report.checks
    assert all(c.status is Status.SKIPPED for c in report.checks[6:])
    with pytest.raises(InvalidBundle):
        verify_bundle(io.BytesIO(data), kit.trust)
    return failed[0].message


def test_a_forged_large_line_among_the_records_is_not_parsed_fail(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    header, records = parts
    message = _records_failure(kit, join(header, [records[0], EMPTY_ARRAYS, *records[2:]]))
    assert message.startswith(f"record 1: its {len(EMPTY_ARRAYS)} bytes, over "
                              f"{LARGE_RECORD_BYTES}, {NOT_PARSED}")
    assert "(record 2 does not begin with the hash of the line before it as its prev)" in message
    assert max(parsed) < LARGE_RECORD_BYTES  # record 0, parsed as ever; never line 1


def test_a_forged_large_line_chained_to_the_records_after_it_is_not_parsed_fail(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    # The forger re-links the records after the line to its hash: the last one's
    # hash is then not the signed head.
    header, records = parts
    forged = (b'{"mediaType":"application/vnd.spanproof.cer.v1+json","prev":"'
              + record_hash(records[0]).encode() + b'","x":' + EMPTY_ARRAYS + b"}")
    after = [json.loads(raw) for raw in records[2:]]
    linked = chain(after, record_hash(forged), first_seq=2)
    message = _records_failure(kit, join(header, [records[0], forged, *linked]))
    assert f"{NOT_PARSED} (the hash of record 3 is not the signed head)" in message
    assert max(parsed) < LARGE_RECORD_BYTES


def test_a_forged_large_last_line_is_not_parsed_fail(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    header, records = parts
    message = _records_failure(kit, join(header, [*records[:3], EMPTY_ARRAYS]))
    assert f"{NOT_PARSED} (the hash of record 3 is not the signed head)" in message
    assert max(parsed) < LARGE_RECORD_BYTES


def test_a_large_line_appended_past_the_signed_count_is_not_parsed_fail(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    header, records = parts
    message = _records_failure(kit, join(header, [*records, EMPTY_ARRAYS]))
    assert message.startswith(f"record 4: its {len(EMPTY_ARRAYS)} bytes")
    assert f"{NOT_PARSED} (the signed statement covers 4 records)" in message
    assert max(parsed) < LARGE_RECORD_BYTES


def test_a_large_line_in_a_bundle_cut_short_is_not_parsed_fail(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    header, records = parts
    data = join(header, [records[0], EMPTY_ARRAYS])
    message = _records_failure(kit, data)
    assert (f"{NOT_PARSED} (the lines end after record 1, of the 4 records the signed "
            "statement covers)") in message
    assert max(parsed) < LARGE_RECORD_BYTES


def test_a_forged_large_line_costs_no_more_than_its_bytes(
    kit: Kit, parts: tuple[bytes, list[bytes]]
) -> None:
    # Parsed, the line's 1.4 million empty arrays took ~80 MB.
    header, records = parts
    data = join(header, [records[0], EMPTY_ARRAYS * 4, *records[2:]])
    gc.collect()
    tracemalloc.start()
    try:
        report = kit.check(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.verdict is Verdict.FAIL and NOT_PARSED in report.reason
    assert peak < 3 * len(data), peak


def test_signed_large_records_are_parsed_and_verify(
    kit: Kit, parsed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [kit.span_body(0), _large(kit, 1), _large(kit, 2), kit.span_body(3)]
    data = kit.seal(bodies).data
    scans: list[int] = []
    real = BundleReader.unchained

    def unchained(reader: BundleReader, record: bytes, *args: Any) -> str | None:
        scans.append(len(record))
        return real(reader, record, *args)

    monkeypatch.setattr(BundleReader, "unchained", unchained)
    report = kit.check(data, keep_records=True)
    assert report.verdict is Verdict.OK, report.reason
    assert report.records is not None and len(report.records) == 4
    assert len(scans) == 1  # the lines after the first large one are known to chain
    assert sum(size > LARGE_RECORD_BYTES for size in parsed) == 2


def _second_made_large(
    parts: tuple[bytes, list[bytes]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The statement of the bundle of *parts*, and its records with the second one's
    prompt made larger than ``LARGE_RECORD_BYTES`` (to be chained and signed again)."""
    header, records = parts
    bodies = [json.loads(raw) for raw in records]
    bodies[1]["span"]["attributes"]["gen_ai.prompt"] = {"stringValue": "p" * LARGE_RECORD_BYTES}
    return statement_of(join(header, records)), bodies


def test_a_signed_large_record_is_judged_as_any_record(
    kit: Kit, parts: tuple[bytes, list[bytes]]
) -> None:
    # Chained to the signed head, the line is parsed, and the records' defects are
    # found as ever: here the next record has a committed record's media type without
    # a committed value (its `prev` is found after that media type too).
    statement, bodies = _second_made_large(parts)
    bodies[2]["mediaType"] = "application/vnd.spanproof.cer.v1.1+json"
    data = resign(statement, chain(bodies, statement["predicate"]["segment"]["start"]), kit.key)
    message = _records_failure(kit, data)
    assert message.startswith("record 2: ") and NOT_PARSED not in message, message
    assert "requires at least one committed value" in message


def test_a_signed_large_record_out_of_its_chain_fails_the_chain(
    kit: Kit, parts: tuple[bytes, list[bytes]]
) -> None:
    # The key's holder signed a large record whose own prev is wrong: the lines from
    # it chain to the head, so it is parsed, and step 7 fails as it would for any.
    statement, bodies = _second_made_large(parts)
    linked = chain(bodies, statement["predicate"]["segment"]["start"])
    broken = canonicalize({**json.loads(linked[1]), "prev": "sha256:" + "0" * 64})
    after = chain([json.loads(raw) for raw in linked[2:]], record_hash(broken), first_seq=2)
    relinked = [linked[0], broken, *after]
    report = kit.check(resign(statement, relinked, kit.key))
    failed = [c for c in report.checks if c.status is Status.FAIL]
    assert [c.name for c in failed] == ["chain"]
    assert "record 1: previous-hash mismatch" in failed[0].message


class _Unseekable(io.RawIOBase):
    """A pipe's stream: read once, forward only."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_stream_that_cannot_seek_back_is_parsed_as_it_comes(
    kit: Kit, parts: tuple[bytes, list[bytes]], parsed: list[int]
) -> None:
    # Read ahead, it could not be read again: the line is parsed, and refused as not
    # canonical record bytes, as before.
    header, records = parts
    data = join(header, [records[0], EMPTY_ARRAYS, *records[2:]])
    report = verify_module.check_bundle(io.BufferedReader(_Unseekable(data)), kit.trust)
    assert report.verdict is Verdict.FAIL and NOT_PARSED not in report.reason
    assert report.reason.startswith("record 1: ")
    assert len(EMPTY_ARRAYS) in parsed


def test_the_lines_read_ahead_are_read_again(kit: Kit) -> None:
    # The reader is put back where it was: every record after the large one is read
    # and checked (here, the last one's split is the defect found).
    bodies = [_large(kit, 0), kit.span_body(1), kit.span_body(2)]
    header, records = split(kit.seal(bodies).data)
    data = join(header, records)[:-len(b"]}\n")]
    message = _records_failure(kit, data)
    assert message.startswith("truncated: file ends after 3 record(s)")
