"""A producer that stops after writing a bundle but before journaling it as sealed.

The bundle is durable, yet the journal still holds its spans as unsealed, so the
next start recovers them.  Sealing them again would put a second bundle for the
same segment beside the first, and the verifier fails such a trace ("segment 0
appears twice").  Recovery must find the written bundle and seal only what it does
not hold.  The receiver stands in for every producer here: the exporter and the
span processor recover through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from receiver_support import (
    TRACE_A,
    FakeClock,
    bundle_paths,
    crash,
    otlp_span,
    quiet_receiver,
    request,
    restart,
    span_id,
    span_ids,
    trust_root,
    verified,
)

from spanproof.exporter.keys import SigningKey
from spanproof.exporter.sealing import ChainPosition, seal
from spanproof.verifier.keys import TrustedKey, TrustRoot
from spanproof.verifier.verify import Verdict, check_bundle, link_segments


def stop_after_writing(out: Path, clock: FakeClock, *requests: Any,
                       late: Any = None, **kwargs: Any) -> None:
    """Ingest *requests*, seal and write them, then stop as a crash would: before the
    journal records them as sealed (and after ingesting *late*, unsealed)."""
    first = quiet_receiver(out, clock, **kwargs)
    first.start()
    for req in requests:
        first(req.resource_spans)
    assert first._journal is not None
    first._journal.append_sealed_many = lambda items: None
    clock.advance(5)
    assert first.flush()
    if late is not None:
        first(late.resource_spans)
    crash(first)


def test_bundle_written_before_crash_is_not_sealed_again(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)))
    (before,) = bundle_paths(str(out))
    assert restart(out, clock) == []
    assert bundle_paths(str(out)) == [before]
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert [link.ok for link in link_segments(reports)] == [True]
    assert not any(name.startswith("journal-") for name in os.listdir(out / "journal"))


def test_spans_after_the_written_bundle_are_sealed_as_its_continuation(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "out"
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)),
                       late=request(otlp_span(TRACE_A, 3, parent=1)))
    (recovered,) = restart(out, clock)
    reports = verified(str(out), trust_root(str(tmp_path)))
    assert [r.statement.segment_index for r in reports if r.statement] == [0, 1]
    assert [span_ids(r) for r in reports] == [[span_id(1), span_id(2)], [span_id(3)]]
    assert reports[1].source == recovered and reports[1].statement is not None
    assert reports[1].statement.seal_reason == "recovered"
    links = link_segments(reports)
    assert [(link.ok, link.segments) for link in links] == [(True, (0, 1))]


@pytest.mark.parametrize("disclosures", ["beside the bundle", "moved away"])
def test_redacted_bundle_written_before_crash_is_not_sealed_again(
    tmp_path: Path, disclosures: str
) -> None:
    # A committed value is compared as the value its disclosure file opens it to;
    # without that file, the rest of the span is, and the commitment taken as equal.
    clock = FakeClock()
    out = tmp_path / "out"
    secret = {"customer.email": "a@example.com"}
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1, extra=secret)),
                       redact_attributes=["customer.*"])
    (opened,) = out.glob("*.disclosures.json")
    if disclosures == "moved away":
        opened.unlink()
    assert restart(out, clock, redact_attributes=["customer.*"]) == []
    assert len(bundle_paths(str(out))) == 1


def test_same_span_id_with_other_content_is_still_sealed(tmp_path: Path) -> None:
    # The written bundle certifies one version of span 2; the journal also holds a
    # different one (a conflicting re-delivery after the seal): that one is sealed.
    clock = FakeClock()
    out = tmp_path / "out"
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)),
                       late=request(otlp_span(TRACE_A, 2, parent=1, name="changed")))
    (recovered,) = restart(out, clock)
    report = check_bundle(recovered, trust_root(str(tmp_path)), keep_records=True,
                          allow_incomplete=True)
    assert report.verdict is Verdict.OK and report.records is not None
    assert [r["span"]["name"] for r in report.records] == ["changed"]


def _signed_by_another_key(path: str, trust: TrustRoot) -> bytes:
    """The same spans, chain position and producer instance, signed by another key."""
    ours = check_bundle(path, trust, keep_records=True)
    assert ours.statement is not None and ours.records is not None
    return seal(
        TRACE_A, [{part: r[part] for part in ("span", "resource", "scope")}
                  for r in ours.records],
        ChainPosition.genesis(TRACE_A), signer=SigningKey.from_seed(b"\x07" * 32),
        producer=ours.statement.producer, sealed_at=ours.statement.sealed_at,
        reason=ours.statement.seal_reason,
    ).data


def _one_byte_flipped(path: str, trust: TrustRoot) -> bytes:
    data = bytearray(Path(path).read_bytes())
    data[-40] ^= 0x01  # inside the last record
    return bytes(data)


@pytest.mark.parametrize("spoil", [_signed_by_another_key, _one_byte_flipped],
                         ids=["signed-by-another-key", "corrupted"])
def test_untrusted_file_under_the_bundle_name_is_not_taken_for_the_written_one(
    tmp_path: Path, spoil: Callable[[str, TrustRoot], bytes],
) -> None:
    # Whatever sits under the expected name must be this producer's own bundle;
    # otherwise the spans are sealed again (under another name) rather than lost.
    clock = FakeClock()
    out = tmp_path / "out"
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1)))
    (path,) = bundle_paths(str(out))
    Path(path).write_bytes(spoil(path, trust_root(str(tmp_path))))
    (resealed,) = restart(out, clock)
    assert resealed != path
    report = check_bundle(resealed, trust_root(str(tmp_path)), keep_records=True)
    assert report.verdict is Verdict.OK and span_ids(report) == [span_id(1)]


@pytest.mark.parametrize("taken_by", ["another bundle", "a kept disclosure file"])
def test_bundle_written_under_a_later_name_before_crash_is_not_sealed_again(
    tmp_path: Path, taken_by: str
) -> None:
    # When the segment's first name was taken (by another chain's bundle, or by the
    # disclosure file of a bundle moved away), the sink stored the bundle as
    # <stem>.1.  Recovery looked under the first name only, and sealed the spans a
    # second time, as another version of segment 0.
    clock = FakeClock()
    out = tmp_path / "out"
    secret = {"customer.email": "a@example.com"}
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1, extra=secret)),
                       redact_attributes=["customer.*"])
    (path,) = bundle_paths(str(out))
    first = Path(path)
    later = first.with_name(first.name.replace(".spanproof.json", ".1.spanproof.json"))
    kept = first.with_name(first.name.replace(".spanproof.json", ".disclosures.json"))
    first.rename(later)
    kept.rename(later.with_name(later.name.replace(".spanproof.json", ".disclosures.json")))
    if taken_by == "another bundle":
        first.write_bytes(_signed_by_another_key(str(later), trust_root(str(tmp_path))))
    else:
        kept.write_text("{}")
    assert restart(out, clock, redact_attributes=["customer.*"]) == []
    assert str(later) in bundle_paths(str(out)) and len(bundle_paths(str(out))) <= 2
    report = check_bundle(str(later), trust_root(str(tmp_path)), keep_records=True)
    assert report.verdict is Verdict.OK and span_ids(report) == [span_id(1)]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_bundle_found_at_recovery_is_durable_before_the_journal_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crashed producer may have died between linking the bundle into place
    # and fsyncing the directory.  Recovery takes it as written and deletes the
    # journal: the bundle's name must be durable first, or a power loss then
    # takes both the bundle and the spans' journal entries.
    clock = FakeClock()
    out = tmp_path / "out"
    stop_after_writing(out, clock, request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)))
    events: list[str] = []
    real_fsync, real_unlink = os.fsync, os.unlink
    directory = os.path.realpath(out)

    def fsync(fd: int) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}") == directory:
            events.append("fsync output directory")
        real_fsync(fd)

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fspath(path)).startswith("journal-"):
            events.append("delete journal")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    assert restart(out, clock) == []
    assert "delete journal" in events
    assert "fsync output directory" in events[:events.index("delete journal")], events


#: The key a receiver is restarted with (the documented rotation).
ROTATED = SigningKey.from_seed(bytes([7]) * 32)


def _written_then_stopped(out: Path) -> str:
    """A two-span trace sealed and written into *out*, then stopped as a crash would
    before the journal recorded it: the bundle's path."""
    stop_after_writing(out, FakeClock(),
                       request(otlp_span(TRACE_A, 1), otlp_span(TRACE_A, 2, parent=1)))
    (before,) = bundle_paths(str(out))
    return before


def _start_rotated(out: Path) -> list[str]:
    """Start a receiver on *out* with the :data:`ROTATED` key and stop it: the bundles
    it recovered."""
    from spanproof.exporter.receiver import Receiver

    rotated = Receiver(out, signing_key=ROTATED, clock=FakeClock(), seal_grace=2.0,
                       idle_timeout=30.0)
    try:
        return rotated.start()
    finally:
        rotated.shutdown(5)


def test_bundle_written_before_a_crash_is_not_sealed_again_under_a_rotated_key(
    tmp_path: Path,
) -> None:
    # Restarted with a new signing key (the documented rotation), recovery trusted
    # only that key: the written segment did not verify, its spans were sealed again
    # under the same segment index, and the trace failed ("segment 0 appears
    # twice").  The journal now names the key its instance signed with.
    out = tmp_path / "out"
    before = _written_then_stopped(out)
    assert _start_rotated(out) == []
    assert bundle_paths(str(out)) == [before]
    assert not any(name.startswith("journal-") for name in os.listdir(out / "journal"))


def _without_key_entries(journal_dir: Path) -> None:
    """Make each journal file one an earlier version wrote: without the entry that
    names its instance's key (the first frame)."""
    from spanproof.exporter.journal import _HEADER

    for path in journal_dir.glob("journal-*.log"):
        data = path.read_bytes()
        length, _ = _HEADER.unpack_from(data)
        first = data[_HEADER.size:_HEADER.size + length]
        assert first.startswith(b'{"t":"key"'), first[:40]
        path.write_bytes(data[_HEADER.size + length:])


def test_an_earlier_versions_journal_recovered_under_a_rotated_key_starts_a_new_chain(
    tmp_path: Path,
) -> None:
    # A journal of an earlier version names no key.  Restarted with a new key, the
    # written segment did not verify under it, its spans were sealed again under the
    # dead instance as the same segment, and the trace failed ("segment 0 appears
    # twice").  They are sealed under a new instance now, and every chain verifies.
    out = tmp_path / "out"
    before = _written_then_stopped(out)
    _without_key_entries(out / "journal")
    (recovered,) = _start_rotated(out)
    assert sorted(bundle_paths(str(out))) == sorted([before, recovered])
    both = TrustRoot.from_keys([
        *trust_root(str(tmp_path)).keys,
        TrustedKey.from_public_key(ROTATED.private_key.public_key(), "the new key")])
    reports = [check_bundle(path, both, keep_records=True) for path in (before, recovered)]
    assert [r.verdict for r in reports] == [Verdict.OK, Verdict.OK]
    old, new = (r.statement for r in reports)
    assert old is not None and new is not None
    assert new.producer.instance != old.producer.instance
    assert new.seal_reason == "recovered" and new.segment_index == 0
    assert any("names no key" in note for note in new.completeness.notes)
    assert all(link.ok for link in link_segments(reports))
