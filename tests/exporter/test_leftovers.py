"""Writes a stopped process left half done in its output directory are finished at
the next start: disclosures of a published bundle get their name, temporary files of
bundles never published go once old, and nothing else is touched."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from exporter_support import SEED, signing_key, trust_root, verified

from spanproof.exporter import (
    ChainPosition,
    DirectorySink,
    SealedBundle,
    SpanproofSpanExporter,
    seal,
)
from spanproof.exporter._leftovers import LEFTOVER_AGE_S, finish_interrupted_writes
from spanproof.exporter.disclosure import redaction_matcher
from spanproof.verifier import Producer
from spanproof.verifier.disclosure import check_disclosures, disclosures_path, load_disclosures

TRACE = "0af7651916cd43dd8448eb211c80319c"
OLD = LEFTOVER_AGE_S + 60


def _body(trace: str, secret: str) -> dict[str, Any]:
    return {
        "span": {
            "traceId": trace, "spanId": "00f067aa0ba902b7", "parentSpanId": "",
            "traceState": "", "name": "chat", "kind": "SPAN_KIND_INTERNAL",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "status": {"code": "STATUS_CODE_UNSET", "message": ""},
            "attributes": {"app.secret": {"stringValue": secret}},
            "droppedAttributesCount": "0", "events": [], "droppedEventsCount": "0",
            "links": [], "droppedLinksCount": "0",
        },
        "resource": {"attributes": {}, "droppedAttributesCount": "0", "schemaUrl": ""},
        "scope": {"name": "t", "version": "", "attributes": {}, "droppedAttributesCount": "0",
                  "schemaUrl": ""},
    }


def _bundle(secret: str = "card 4111", reason: str = "root_ended") -> SealedBundle:
    b = seal(TRACE, [_body(TRACE, secret)], ChainPosition.genesis(TRACE), signer=signing_key(),
             producer=Producer("t", "0", "0123456789abcdef"),
             sealed_at=datetime(2027, 1, 1, tzinfo=timezone.utc), reason=reason,
             redact=redaction_matcher(["app.secret"]))
    assert b.disclosures
    return b


def _stopped_after_publishing(directory: Path, b: SealedBundle) -> tuple[str, str]:
    """What a process killed between publishing *b* and naming its disclosures
    leaves: the bundle under its name (and its temporary name), the disclosures
    under theirs.  Returns (bundle path, disclosures' temporary path)."""
    sink = DirectorySink(directory)
    staged = sink._stage(b, fsync=False)
    assert staged.secret is not None
    return sink._publish(staged.temp, staged.name), staged.secret


def _stopped_before_publishing(directory: Path, b: SealedBundle) -> list[str]:
    staged = DirectorySink(directory)._stage(b, fsync=False)
    assert staged.secret is not None
    return [staged.temp, staged.secret]


def _age(*paths: str, seconds: float = OLD) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def _names(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def test_disclosures_left_under_a_temporary_name_get_their_name(tmp_path: Path) -> None:
    b = _bundle()
    bundle_path, secret = _stopped_after_publishing(tmp_path, b)
    done = finish_interrupted_writes(str(tmp_path))  # at once: the bundle is published
    target = tmp_path / SealedBundle.disclosures_file_name(b.file_name)
    assert done.named == [str(target)] and not os.path.exists(secret)
    assert target.read_bytes() == b.disclosures_data()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert Path(bundle_path).read_bytes() == b.data


def test_disclosures_of_a_bundle_published_under_an_alternative_name_get_that_name(
    tmp_path: Path,
) -> None:
    DirectorySink(tmp_path).write(_bundle("another value", reason="shutdown"))  # takes the name
    b = _bundle()
    bundle_path, secret = _stopped_after_publishing(tmp_path, b)
    assert bundle_path.endswith(".1.spanproof.json")
    done = finish_interrupted_writes(str(tmp_path))
    target = bundle_path.removesuffix(".spanproof.json") + ".disclosures.json"
    assert done.named == [target] and Path(target).read_bytes() == b.disclosures_data()
    assert not os.path.exists(secret)
    # The first bundle's own disclosures are not the ones that were named.
    first = tmp_path / SealedBundle.disclosures_file_name(b.file_name)
    assert first.read_bytes() != b.disclosures_data()


def test_disclosures_of_a_bundle_whose_name_was_taken_by_one_moved_away_since_are_kept(
    tmp_path: Path,
) -> None:
    # The bundle was published as <stem>.1 because <stem> was taken; the process
    # stopped before naming its disclosures, and <stem> was archived meanwhile.
    # The gap ended the search: the only copy of the bundle's salts was removed as
    # a file "never published", and its commitments could never be opened.
    archive = tmp_path / "archive"
    archive.mkdir()
    first = Path(DirectorySink(tmp_path).write(_bundle("another value", reason="shutdown")))
    b = _bundle()
    bundle_path, secret = _stopped_after_publishing(tmp_path, b)
    assert bundle_path.endswith(".1.spanproof.json")
    for moved in (first, Path(disclosures_path(str(first)))):
        moved.rename(archive / moved.name)
    _age(secret, bundle_path)
    done = finish_interrupted_writes(str(tmp_path))
    target = bundle_path.removesuffix(".spanproof.json") + ".disclosures.json"
    assert done.named == [target] and secret not in done.removed
    assert Path(target).read_bytes() == b.disclosures_data()
    assert Path(bundle_path).read_bytes() == b.data and not os.path.exists(secret)


def test_without_hard_links_disclosures_still_get_their_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    b = _bundle()
    _, secret = _stopped_after_publishing(tmp_path, b)
    monkeypatch.setattr(os, "link", no_links)
    done = finish_interrupted_writes(str(tmp_path))
    target = tmp_path / SealedBundle.disclosures_file_name(b.file_name)
    assert done.named == [str(target)] and secret not in done.kept
    assert target.read_bytes() == b.disclosures_data() and not os.path.exists(secret)


def test_a_writer_whose_disclosures_another_start_named_meanwhile_reports_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # Another producer starting in the same directory between this writer's link and
    # its rename names the disclosures itself: the writer finds them in place.
    sink = DirectorySink(tmp_path)
    publish = sink._publish

    def another_start_in_between(tmp: str, name: str, **kwargs: bool) -> str:
        path = publish(tmp, name, **kwargs)
        assert finish_interrupted_writes(str(tmp_path)).named
        return path

    monkeypatch.setattr(sink, "_publish", another_start_in_between)
    b = _bundle()
    with caplog.at_level("ERROR"):
        path = sink.write(b)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    target = tmp_path / SealedBundle.disclosures_file_name(b.file_name)
    assert Path(path).read_bytes() == b.data and target.read_bytes() == b.disclosures_data()
    assert _names(tmp_path) == {b.file_name, target.name}


def test_temporary_files_of_an_unpublished_bundle_are_removed_once_old(tmp_path: Path) -> None:
    temps = _stopped_before_publishing(tmp_path, _bundle())
    _age(*temps)
    done = finish_interrupted_writes(str(tmp_path))
    assert sorted(done.removed) == sorted(temps) and _names(tmp_path) == set()


def test_young_temporary_files_may_be_a_live_write_and_are_kept(tmp_path: Path) -> None:
    temps = _stopped_before_publishing(tmp_path, _bundle())
    before = {p: Path(p).read_bytes() for p in temps}
    done = finish_interrupted_writes(str(tmp_path))
    assert done.removed == [] and sorted(done.kept) == sorted(temps)
    assert {p: Path(p).read_bytes() for p in temps} == before


@pytest.mark.parametrize("same", [False, True], ids=["other_disclosures", "same_disclosures"])
def test_a_disclosures_name_already_taken_is_never_overwritten(
    tmp_path: Path, same: bool,
) -> None:
    b = _bundle()
    bundle_path, secret = _stopped_after_publishing(tmp_path, b)
    target = Path(bundle_path.removesuffix(".spanproof.json") + ".disclosures.json")
    there = b.disclosures_data() if same else b"someone else's file\n"
    target.write_bytes(there)
    _age(secret)
    done = finish_interrupted_writes(str(tmp_path))
    assert target.read_bytes() == there
    if same:  # the copy under the temporary name goes
        assert secret in done.removed and done.named == [] and not os.path.exists(secret)
    else:  # both are kept, old as the temporary one is
        assert secret in done.kept and done.named == [] and done.removed == []
        assert Path(secret).read_bytes() == b.disclosures_data()


def test_disclosures_that_open_no_commitment_of_the_bundle_are_not_given_its_name(
    tmp_path: Path,
) -> None:
    # The bundle under this name commits another value: these disclosures are of a
    # bundle that was never published.
    published = _bundle("another value", reason="shutdown")
    DirectorySink(tmp_path).write(published)
    target = tmp_path / SealedBundle.disclosures_file_name(published.file_name)
    own = target.read_bytes()
    temps = _stopped_before_publishing(tmp_path, _bundle())
    done = finish_interrupted_writes(str(tmp_path))
    assert done.named == [] and sorted(done.kept) == sorted(temps)
    assert target.read_bytes() == own
    _age(*temps)
    assert sorted(finish_interrupted_writes(str(tmp_path)).removed) == sorted(temps)


def _tampered(data: bytes, how: str) -> bytes:
    lines = data.split(b"\n")
    if how == "commitment":  # another well-formed digest in the committed value
        i = lines[1].index(b'"digest":"') + len(b'"digest":"')
        flipped = b"0" if lines[1][i:i + 1] != b"0" else b"1"
        lines[1] = lines[1][:i] + flipped + lines[1][i + 1:]
    elif how == "framing":
        lines = lines[:1]
    else:  # the header
        lines[0] = b"{" + lines[0]
    return b"\n".join(lines)


@pytest.mark.parametrize("how", ["commitment", "framing", "header"])
def test_disclosures_are_not_given_the_name_of_a_tampered_bundle(
    tmp_path: Path, how: str,
) -> None:
    b = _bundle()
    bundle_path, secret = _stopped_after_publishing(tmp_path, b)
    Path(bundle_path).write_bytes(_tampered(b.data, how))
    done = finish_interrupted_writes(str(tmp_path))
    assert done.named == [] and secret in done.kept
    assert not (tmp_path / SealedBundle.disclosures_file_name(b.file_name)).exists()


def test_a_temporary_name_gives_back_the_name_it_was_written_for(tmp_path: Path) -> None:
    from spanproof.verifier._files import temp_target, write_temp

    name = f"{TRACE}-0000-0123456789abcdef.spanproof.json"
    temp = write_temp(str(tmp_path), name, b"x", fsync=False)
    assert temp_target(os.path.basename(temp)) == name
    for other in (name, f".{name}.tmp", f".{name}.0a1b2c3.tmp", f".{name}.0A1B2C3D.tmp"):
        assert temp_target(other) is None


def test_disclosures_cut_short_are_of_an_unpublished_bundle(tmp_path: Path) -> None:
    b = _bundle()
    temps = _stopped_before_publishing(tmp_path, b)
    Path(temps[1]).write_bytes(b.disclosures_data()[:40])  # never made durable
    DirectorySink(tmp_path)._publish(temps[0], b.file_name)  # even with the bundle there
    _age(*temps)
    done = finish_interrupted_writes(str(tmp_path))
    assert done.named == [] and sorted(done.removed) == sorted(temps)


@pytest.mark.parametrize("name", [
    ".notes.tmp",
    f".{TRACE}-0000-0123456789abcdef.spanproof.json.receipt.json.0a1b2c3d.tmp",
    f".{TRACE}-0000-0123456789abcdef.receipt.json.0a1b2c3d.tmp.bak",
    f".{TRACE}-0000-0123456789abcdef.disclosures.json.0a1b2c3d.tmp",
    f".{TRACE}-0000-0123456789abcdef.spanproof.json.xyz.tmp",
    f"{TRACE}-0000-0123456789abcdef.spanproof.json.0a1b2c3d.tmp",
    f".{TRACE}-0000-0123456789abcdef.spanproof.json.0a1b2c3d.tmp.bak",
])
def test_files_not_named_as_a_sinks_temporary_file_are_never_touched(
    tmp_path: Path, name: str,
) -> None:
    path = tmp_path / name
    path.write_bytes(b"{}")
    _age(str(path))
    done = finish_interrupted_writes(str(tmp_path))
    assert (done.named, done.removed, done.kept) == ([], [], [])
    assert path.read_bytes() == b"{}"


@pytest.mark.parametrize("stem", [f"{TRACE}-0000-0123456789abcdef",
                                  f"{TRACE}-0000-0123456789abcdef.1"])
def test_a_temporary_receipt_goes_once_old(tmp_path: Path, stem: str) -> None:
    # The submitter keeps the bundle's queue entry until the receipt has its name,
    # so a receipt left under a temporary name is fetched and written again.
    path = tmp_path / f".{stem}.receipt.json.0a1b2c3d.tmp"
    path.write_bytes(b"{}")
    assert finish_interrupted_writes(str(tmp_path)).kept == [str(path)]
    _age(str(path))
    assert finish_interrupted_writes(str(tmp_path)).removed == [str(path)]
    assert not path.exists()


@pytest.mark.parametrize("start", ["exporter", "processor", "receiver"])
def test_every_producer_finishes_interrupted_writes_when_it_starts(
    tmp_path: Path, start: str,
) -> None:
    from spanproof.exporter import EvidenceSpanProcessor
    from spanproof.exporter.receiver import Receiver

    temps = _stopped_before_publishing(tmp_path, _bundle())
    _age(*temps)
    if start == "exporter":
        SpanproofSpanExporter(str(tmp_path), signing_key=signing_key()).shutdown()
    elif start == "processor":
        EvidenceSpanProcessor(str(tmp_path), signing_key=signing_key()).shutdown()
    else:
        receiver = Receiver(str(tmp_path), signing_key=signing_key())
        receiver.start()
        assert receiver.shutdown(10)
    assert not any(os.path.exists(p) for p in temps)


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from spanproof.exporter import SpanproofSpanExporter
    from spanproof.exporter import sinks
    from spanproof.exporter.keys import SigningKey

    exporter = SpanproofSpanExporter(
        sys.argv[1], signing_key=SigningKey.from_seed(bytes.fromhex(sys.argv[2])),
        redact_attributes=("app.secret",), seal_grace=0.0)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    link = sinks.link_no_replace

    def killed(src, dst):  # the bundle is published: die before naming its disclosures
        if dst.endswith(".disclosures.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        link(src, dst)

    sinks.link_no_replace = killed
    with provider.get_tracer("t").start_as_current_span(
            "chat", attributes={"gen_ai.operation.name": "chat", "app.secret": "card 4111"}):
        pass
    exporter.force_flush()
    sys.exit(3)  # not reached
""")


@pytest.mark.timeout(60)
def test_the_next_exporter_names_disclosures_a_killed_one_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out), SEED.hex()],
                          capture_output=True, timeout=50)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    bundles = [n for n in os.listdir(out) if n.endswith(".spanproof.json")]
    assert len(bundles) == 1 and not [n for n in os.listdir(out)
                                      if n.endswith(".disclosures.json")]
    SpanproofSpanExporter(str(out), signing_key=signing_key()).shutdown()
    target = out / SealedBundle.disclosures_file_name(bundles[0])
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    disclosures = load_disclosures(target).disclosures
    results = check_disclosures(disclosures, verified(out, trust_root(tmp_path)))
    assert len(results) == 1 and results[0].ok
    assert results[0].value == {"stringValue": "card 4111"}
