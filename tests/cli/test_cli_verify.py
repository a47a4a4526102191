"""``spanproof verify``: output lines, --verbose, --json, failures and exit codes."""

from __future__ import annotations

import base64
import dataclasses
import errno
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    OTHER_TRACE,
    PRODUCER,
    RECEIVE,
    ROOT,
    TOOL,
    TRACE,
    Keys,
    flip_in_record,
    span_body,
    spanproof_script,
    workflow_bodies,
)
from odd_keys import unknown_type_public_pem

from spanproof.exporter.keys import SigningKey
from spanproof.verifier import TRUST_ROOT_MEDIA_TYPE, TrustRoot
from spanproof.verifier._cli import CONFLICTS_SHOWN, NOTE_CHARS_SHOWN, NOTES_SHOWN, main
from spanproof.verifier._files import MAX_NAMED_FILE, open_regular
from spanproof.verifier.disclosure import load_disclosures
from spanproof.verifier.receipt import check_receipt_for_bundle, receipt_path
from spanproof.verifier.statement import Completeness, Producer
from spanproof.verifier.verify import CHECKS, Status, check_bundle


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_ok_line_names_trace_segment_records_seal_and_key(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 0, out + err
    assert out == (
        f"OK {path} trace={TRACE} segment=0 records=7 seal=root_ended "
        f"key={keys.signer.keyid[:16]}\n"
    )
    assert err == ""


def test_directory_verifies_every_bundle_below_it(capsys, keys: Keys, make_bundle, tmp_path):
    make_bundle("a")
    make_bundle("b", trace_id=OTHER_TRACE, directory=tmp_path / "bundles" / "nested")
    (tmp_path / "bundles" / "notes.txt").write_text("not a bundle")
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("OK ") for line in lines)
    assert {re.search(r"trace=(\w+)", line).group(1) for line in lines} == {TRACE, OTHER_TRACE}


def test_same_bundle_given_twice_is_checked_once(capsys, keys: Keys, make_bundle, tmp_path):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path, tmp_path / "bundles")
    assert code == 0
    assert len(out.splitlines()) == 1


def test_a_bundle_reached_through_symbolic_links_is_checked_once(
    capsys, keys: Keys, make_bundle, tmp_path
):
    path, _ = make_bundle()
    (tmp_path / "dir-link").symlink_to(tmp_path / "bundles", target_is_directory=True)
    (tmp_path / "file-link.spanproof.json").symlink_to(path)
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "dir-link",
                       tmp_path / "file-link.spanproof.json", path, tmp_path / "bundles")
    assert code == 0
    assert out.splitlines() == [
        f"OK {tmp_path / 'dir-link' / path.name} trace={TRACE} segment=0 records=7 "
        f"seal=root_ended key={keys.signer.keyid[:16]}"
    ]


def test_verbose_lists_nine_checks_as_pass_and_the_receipt_check_skipped(
    capsys, keys: Keys, make_bundle
):
    # SPEC §8 step 10 is SKIPPED when no witness key was given; --verbose left it out.
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--verbose", "--key", keys.pub, path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("OK ")
    checks = lines[1:]
    assert len(checks) == len(CHECKS) + 1 == 10
    for n, (line, name) in enumerate(zip(checks, CHECKS, strict=False), start=1):
        assert line.startswith(f"  PASS  step {n} {name}: "), line
    assert checks[-1] == "  SKIPPED  step 10 receipt: no witness key was given (--witness-key)"


def test_verbose_marks_the_failed_check_and_skips_the_rest(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    flip_in_record(path, 0)
    code, out, _ = run(capsys, "verify", "-v", "--key", keys.pub, path)
    assert code == 1
    statuses = [line.split()[0] for line in out.splitlines()[1:]]
    assert statuses == ["PASS"] * 5 + ["SKIPPED", "FAIL", "SKIPPED", "SKIPPED", "SKIPPED"]


def test_json_report_has_bundles_traces_and_ok(capsys, keys: Keys, make_bundle):
    path, sealed = make_bundle()
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, path)
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True
    (bundle,) = doc["bundles"]
    assert bundle["path"] == str(path)
    assert bundle["verdict"] == "OK"
    assert bundle["traceId"] == TRACE
    assert bundle["segment"] == 0
    assert bundle["records"] == 7
    assert bundle["head"] == sealed.statement.head
    assert bundle["statementDigest"] == sealed.statement_digest
    assert bundle["signerKeyid"] == keys.signer.keyid
    assert [c["name"] for c in bundle["checks"]] == [*CHECKS, "receipt"]
    assert [c["status"] for c in bundle["checks"]] == ["PASS"] * 9 + ["SKIPPED"]
    assert bundle["checks"][-1] == {"name": "receipt", "step": 10, "status": "SKIPPED",
                                    "message": "no witness key was given (--witness-key)"}
    assert doc["traces"] == [
        {"traceId": TRACE, "producerInstance": sealed.statement.producer.instance,
         "segments": [0], "ok": True, "message": "segment 0 forms one chain", "remarks": []}
    ]


def test_json_writes_a_segment_index_beyond_2_53_exactly(capsys, keys: Keys, make_bundle):
    # uint64 values (SPEC §2.2) stay JSON numbers; README tells consumers that read
    # numbers as doubles to read these as big integers.
    _, first = make_bundle("seg0")
    index = 2**53 + 1
    path, _ = make_bundle("far", position=dataclasses.replace(first.next_position(),
                                                              segment_index=index))
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, path)
    assert code == 0, out
    assert f'"segment": {index},' in out and f"{index}" in out.split('"segments"')[1]
    doc = json.loads(out)
    assert doc["bundles"][0]["segment"] == doc["traces"][0]["segments"][0] == index


def test_json_reports_failure(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    flip_in_record(path, 2)
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, path)
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["bundles"][0]["verdict"] == "FAIL"
    assert "previous-hash mismatch" in doc["bundles"][0]["reason"]


def test_one_character_changed_in_a_record_fails_with_the_record_named(
    capsys, keys: Keys, make_bundle
):
    path, _ = make_bundle()
    flip_in_record(path, 0)
    code, out, err = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: record 1: previous-hash mismatch")
    assert err == ""


def test_last_record_changed_fails_at_the_signed_head(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    flip_in_record(path, 6)
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: chain head ")
    assert "does not match the signed head" in out


def test_one_bad_bundle_among_good_ones_fails_the_run(capsys, keys: Keys, make_bundle, tmp_path):
    good, _ = make_bundle("good")
    bad, _ = make_bundle("bad", trace_id=OTHER_TRACE)
    flip_in_record(bad, 3)
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 1
    assert f"FAIL {bad}: record 4: previous-hash mismatch" in out
    assert f"OK {good} " in out


def test_untrusted_key_fails(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--key", keys.other_pub, path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: signed by a key that is not trusted")


def test_either_of_two_keys_may_have_signed(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, _, _ = run(capsys, "verify", "--key", keys.other_pub, "--key", keys.pub, path)
    assert code == 0


def test_trust_root_file(capsys, keys: Keys, make_bundle, tmp_path):
    path, _ = make_bundle()
    root = tmp_path / "trust.json"
    root.write_text(json.dumps({
        "mediaType": TRUST_ROOT_MEDIA_TYPE,
        "keys": [{"keyid": keys.signer.keyid, "publicKey": keys.pub.read_text(),
                  "validFrom": "2026-01-01T00:00:00Z"}],
    }))
    code, out, _ = run(capsys, "verify", "--trust-root", root, path)
    assert code == 0, out


@pytest.mark.parametrize(
    ("window", "stated"),
    [
        ({"validFrom": "2027-01-01T00:00:00Z"}, "valid from 2027-01-01T00:00:00.000000Z"),
        ({"validUntil": "2020-01-01T00:00:00Z"}, "valid until before 2020-01-01T00:00:00.000000Z"),
        ({"validFrom": "2019-01-01T00:00:00Z", "validUntil": "2020-01-01T00:00:00Z"},
         "valid from 2019-01-01T00:00:00.000000Z, until before 2020-01-01T00:00:00.000000Z"),
    ],
    ids=["not-yet", "retired", "closed-before"],
)
def test_trust_root_window_that_excludes_the_sealing_time_fails(
    capsys, keys: Keys, make_bundle, tmp_path, window: dict[str, str], stated: str
):
    path, _ = make_bundle()
    root = tmp_path / "trust.json"
    root.write_text(json.dumps({
        "mediaType": TRUST_ROOT_MEDIA_TYPE,
        "keys": [{"publicKey": keys.pub.read_text(), **window}],
    }))
    code, out, _ = run(capsys, "verify", "--trust-root", root, path)
    assert code == 1
    # The signed time as the bundle has it, and the window it is outside.
    header = json.loads(path.read_bytes().split(b"\n", 1)[0][: -len(b',"records":[')] + b"}")
    statement = json.loads(base64.b64decode(header["envelope"]["payload"]))
    sealed_at = statement["predicate"]["sealedAt"]
    assert (f"is not valid at sealedAt {sealed_at} (outside its trust-root window, "
            f"{stated})") in out


def _root_file(path: Path, pem: str, **window: str) -> Path:
    path.write_text(json.dumps({"mediaType": TRUST_ROOT_MEDIA_TYPE,
                                "keys": [{"publicKey": pem, **window}]}))
    return path


@pytest.mark.parametrize(
    "sources",
    [
        ("retired", "open"),
        ("open", "retired"),
        ("key", "retired"),
        ("retired", "key"),
        ("key", "key"),
    ],
)
def test_same_key_from_two_sources_is_a_usage_error(
    capsys, keys: Keys, make_bundle, tmp_path, sources
):
    # One key, a retired window in one trust root and an open one in another (or given
    # as a plain --key file): which window applied depended on the order of the options.
    path, _ = make_bundle()
    pem = keys.pub.read_text()
    files = {
        "retired": _root_file(tmp_path / "retired.json", pem, validUntil="2020-01-01T00:00:00Z"),
        "open": _root_file(tmp_path / "open.json", pem),
    }
    argv: list[object] = []
    for source in sources:
        argv += ["--key", keys.pub] if source == "key" else ["--trust-root", files[source]]
    code, out, err = run(capsys, "verify", *argv, path)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"spanproof: error: key {keys.signer.keyid} is trusted twice, from "
    ), err
    for source in sources:
        assert (str(keys.pub) if source == "key" else f"{files[source]}: keys[0]") in err


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-3], "truncated"),
        (lambda data: b"", "empty file"),
        (lambda data: b"\x00\xffgarbage, not json at all\n", "not a spanproof v1 bundle"),
        (lambda data: b'{"hello": "world"}\n', "not a spanproof v1 bundle"),
        (lambda data: data + b"trailing", "data after the closing"),
    ],
    ids=["half", "last-bytes-cut", "empty", "garbage", "other-json", "trailing-data"],
)
def test_malformed_files_fail_with_a_message(capsys, keys: Keys, make_bundle, damage, reason):
    path, sealed = make_bundle()
    path.write_bytes(damage(sealed.data))
    code, out, err = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: ")
    assert reason in out
    assert err == ""


def test_an_integer_literal_too_long_for_python_is_named_not_pythons_limit(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # Past 4300 digits Python's own error advises sys.set_int_max_str_digits(), which a
    # user cannot act on; each input says what is wrong, with its usual verdict.
    too_long = "integer literal too long (over 4300 digits)"
    path, sealed = make_bundle()
    target = b'"droppedEventsCount":"0"'
    assert target in sealed.data
    path.write_bytes(sealed.data.replace(target, b'"droppedEventsCount":' + b"1" * 5000, 1))
    code, out, err = run(capsys, "verify", "--key", keys.pub, path)
    assert (code, err) == (1, "")
    assert out == f"FAIL {path}: record 0: {too_long}\n"
    good, _ = make_bundle("good")
    root = tmp_path / "root.json"
    root.write_bytes(b'{"mediaType":' + b"1" * 5000 + b"}")
    code, out, err = run(capsys, "verify", "--trust-root", root, good)
    assert (code, out) == (2, "")
    assert err == f"spanproof: error: {root}: {too_long}\n"
    values = tmp_path / "values.disclosures.json"
    values.write_bytes(b'{"disclosures":' + b"1" * 5000 + b"}")
    code, out, err = run(capsys, "verify", "--key", keys.pub, "--disclosures", values, good)
    assert (code, err) == (1, "")
    assert out.startswith(f"FAIL {values}: {too_long}\nOK {good} ")


def test_directory_without_bundles_fails(capsys, keys: Keys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run(capsys, "verify", "--key", keys.pub, empty)
    assert code == 1
    assert out == f"FAIL {empty}: no bundles (*.spanproof.json) found\n"


def test_incomplete_bundle_fails_unless_allowed(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle(completeness=Completeness(dropped_spans=2, unsampled_spans=1))
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 1
    assert out.startswith(f"INCOMPLETE {path}: 2 evidence spans dropped before certification")
    assert "--allow-incomplete" in out
    code, out, _ = run(capsys, "verify", "--allow-incomplete", "--key", keys.pub, path)
    assert code == 0
    assert out.startswith(f"OK {path} ")
    assert out.rstrip().endswith("incomplete=(2 dropped, 1 unsampled; allowed)")


def _declaring(make_bundle: Any, notes: tuple[str, ...], conflicts: tuple[str, ...]) -> Path:
    """A bundle that declares losses, *notes* and *conflicts* (the first conflict's
    span certified twice, as a producer certifies a conflict)."""
    bodies = workflow_bodies()
    bodies.append(span_body(TRACE, conflicts[0], ROOT, "receive_case retried", start_ms=13))
    path: Path = make_bundle(bodies=bodies, completeness=Completeness(
        dropped_spans=2, conflicts=conflicts, notes=notes))[0]
    return path


def test_verify_text_output_reports_conflicts_notes_and_seal_reason_incomplete(
    capsys, keys: Keys, make_bundle
):
    # SPEC §8 step 9: the verifier reports the declared losses, the conflicts, the
    # notes and the seal reason; the text output gave the losses alone.
    notes = ("recovered from instance 00000000000000ab", "queue limit 2048 applied")
    path = _declaring(make_bundle, notes, (RECEIVE, TOOL))
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 1
    verdict = (f"INCOMPLETE {path}: 2 evidence spans dropped before certification; sealed: "
               f"root_ended (trace={TRACE} segment=0; conflicts=2; notes=2; signature and "
               "chain verified; --allow-incomplete accepts declared losses)")
    assert out.splitlines() == [verdict]  # one line per bundle (DESIGN)
    code, out, _ = run(capsys, "verify", "-v", "--key", keys.pub, path)
    assert out.splitlines()[:4] == [
        verdict,
        f"  conflicting span ids: {RECEIVE}, {TOOL}",
        "  note: recovered from instance 00000000000000ab",
        "  note: queue limit 2048 applied",
    ]
    assert ("  FAIL  step 9 completeness: incomplete: 2 evidence spans dropped before "
            "certification; sealed: root_ended") in out.splitlines()


def test_verify_text_output_reports_conflicts_and_notes_when_incomplete_is_allowed(
    capsys, keys: Keys, make_bundle
):
    notes = ("recovered from instance 00000000000000ab",)
    path = _declaring(make_bundle, notes, (RECEIVE,))
    code, out, _ = run(capsys, "verify", "--allow-incomplete", "--key", keys.pub, path)
    assert code == 0
    verdict = (f"OK {path} trace={TRACE} segment=0 records=8 seal=root_ended "
               f"key={keys.signer.keyid[:16]} incomplete=(2 dropped; allowed) conflicts=1 "
               "notes=1")
    assert out.splitlines() == [verdict]
    code, out, _ = run(capsys, "verify", "-v", "--allow-incomplete", "--key", keys.pub, path)
    assert out.splitlines()[:3] == [
        verdict,
        f"  conflicting span ids: {RECEIVE}",
        "  note: recovered from instance 00000000000000ab",
    ]


def test_verify_text_output_bounds_and_escapes_producer_notes(capsys, keys: Keys, make_bundle):
    # Notes are the producer's text, any number of them of any length: a few are
    # shown, each cut short and escaped, and the rest counted.
    many = (RECEIVE, *(f"{i:016x}" for i in range(1, CONFLICTS_SHOWN + 3)))
    notes = ("forged\nOK line\x1b[2J", "x" * (NOTE_CHARS_SHOWN + 5),
             *(f"note {i}" for i in range(NOTES_SHOWN + 1)))
    path = _declaring(make_bundle, notes, many)
    code, out, _ = run(capsys, "verify", "-v", "--allow-incomplete", "--key", keys.pub, path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"OK {path} ")
    assert lines[0].endswith(f" conflicts={len(many)} notes={len(notes)}")
    assert lines[1] == ("  conflicting span ids: " + ", ".join(sorted(many)[:CONFLICTS_SHOWN])
                        + " (and 3 more)")
    assert lines[2] == "  note: forged\\nOK line\\x1b[2J"
    assert lines[3] == f"  note: {'x' * NOTE_CHARS_SHOWN}... (5 more characters)"
    assert lines[4:NOTES_SHOWN + 3] == [*(f"  note: note {i}" for i in range(NOTES_SHOWN - 2)),
                                        "  ... and 3 more notes"]
    assert lines[NOTES_SHOWN + 3].startswith("  PASS  step 1 ")


def test_segments_of_a_trace_are_checked_together(capsys, keys: Keys, make_bundle, tmp_path):
    _, first = make_bundle("seg0")
    _, second = make_bundle("seg1", position=first.next_position())
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    assert out.splitlines()[-1] == \
        f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1 form one chain"
    assert second.statement.segment_index == 1


@pytest.mark.parametrize("how", ["hard link", "copy"])
def test_an_archived_copy_of_a_segment_verified_beside_it_is_not_a_second_segment(
    capsys, keys: Keys, make_bundle, tmp_path, how: str
):
    first_path, first = make_bundle("seg0")
    make_bundle("seg1", position=first.next_position())
    archive = tmp_path / "archive"
    archive.mkdir()
    kept = archive / Path(first_path).name
    if how == "hard link":
        os.link(first_path, kept)
    else:
        kept.write_bytes(Path(first_path).read_bytes())
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles", archive)
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1 form one chain "
        f"(segment 0 given twice, the same signed statement ({first_path}, {kept}))")


def test_segments_handed_over_without_segment_0_are_said_to_be(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # Verifying later segments alone is legitimate (SPEC §4.4), but a reviewer who
    # needs the whole trace must see that segment 0 was not among them: the line
    # that says so was printed only for more than one segment.
    _, first = make_bundle("seg0", directory=tmp_path / "withheld")
    _, second = make_bundle("seg1", position=first.next_position(),
                            directory=tmp_path / "withheld")
    make_bundle("seg2", position=second.next_position())
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    assert out.splitlines()[-1] == (f"OK trace {TRACE} instance {PRODUCER.instance}: "
                                    "segment 2 forms one chain (segments 0-1 not present)")
    make_bundle("seg1", position=first.next_position())
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    (link,) = json.loads(out)["traces"]
    assert (link["segments"], link["remarks"]) == ([1, 2], ["segment 0 not present"])
    assert link["message"] == "segments 1, 2 form one chain (segment 0 not present)"


def test_another_instances_segment_0_does_not_stand_in_for_a_withheld_one(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # Two producers of one trace each have a chain (SPEC §4.4).  With instance aa's
    # segment 0 withheld and bb's handed over in its place, every bundle line said
    # OK for "segment=0" and "segment=1" of the trace, and nothing else was printed.
    _, first = make_bundle("aa-seg0", directory=tmp_path / "withheld")
    make_bundle("aa-seg1", position=first.next_position())
    other = Producer(PRODUCER.name, PRODUCER.version, "00000000000000bb")
    make_bundle("bb-seg0", producer=other)
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    assert [line for line in out.splitlines() if line.startswith("OK trace")] == [
        f"OK trace {TRACE} instance {PRODUCER.instance}: segment 1 forms one chain "
        "(segment 0 not present)"]


def test_a_last_segment_sealed_at_the_size_limit_says_later_ones_may_exist(
    capsys, keys: Keys, make_bundle, tmp_path
):
    make_bundle("seg0", reason="size_limit")
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"OK trace {TRACE} instance {PRODUCER.instance}: segment 0 forms one chain "
        "(segment 0 was sealed at the producer's size limit, so later segments may exist)")


def test_a_chain_signed_by_two_keys_says_so(capsys, keys: Keys, make_bundle, tmp_path):
    # The spec allows it (a key rotated between segments), but a reviewer trusting
    # several keys should see that one holder continued another's chain.
    other = SigningKey.from_seed(b"\x07" * 32)
    other_pub = tmp_path / "keys" / "rotated.pub"
    other_pub.write_bytes(other.public_pem())
    _, first = make_bundle("seg0")
    make_bundle("seg1", position=first.next_position(), signer=other)
    code, out, _ = run(capsys, "verify", "--key", keys.pub, "--key", other_pub,
                       tmp_path / "bundles")
    assert code == 0, out
    ids = sorted([keys.signer.keyid[:16], other.keyid[:16]])
    assert out.splitlines()[-1] == (
        f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1 form one chain "
        f"(signed by 2 keys: {ids[0]}, {ids[1]})")


def retired_key_trust_root(tmp_path: Path, keys: Keys, retired: SigningKey,
                           until: str) -> Path:
    """A trust root of *keys*' key and *retired*, valid until before *until*."""
    root = tmp_path / "trust.json"
    root.write_text(json.dumps({"mediaType": TRUST_ROOT_MEDIA_TYPE, "keys": [
        {"keyid": keys.signer.keyid, "publicKey": keys.pub.read_text()},
        {"keyid": retired.keyid, "publicKey": retired.public_pem().decode(),
         "validUntil": until}]}))
    return root


def test_a_retired_key_continuing_a_segment_sealed_after_its_window_fails_the_trace(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # A thief of a retired key backdates its segment into the key's window, but the
    # segment it continues, signed by the current key, was sealed after the window
    # closed: the continuation was signed after that, by a key no longer valid.
    # Each bundle verified OK alone, and the chain did too ("signed by 2 keys").
    retired = SigningKey.from_seed(b"\x07" * 32)
    root = retired_key_trust_root(tmp_path, keys, retired, "2026-03-02T09:00:00Z")
    _, first = make_bundle("seg0")  # sealed 09:30:00.25 by the current key
    make_bundle("seg1", position=first.next_position(), signer=retired,
                sealed_at=datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc))
    code, out, _ = run(capsys, "verify", "--trust-root", root, tmp_path / "bundles")
    assert code == 1, out
    assert sum(line.startswith("OK ") for line in out.splitlines()) == 2
    assert out.splitlines()[-1] == (
        f"FAIL trace {TRACE} instance {PRODUCER.instance}: segment 1 is signed by key "
        f"{retired.keyid[:16]}, valid until before 2026-03-02T09:00:00.000000Z, but "
        "continues segment 0, sealed at 2026-03-02T09:30:00.250000Z")


def test_a_retired_key_continuing_a_segment_sealed_inside_its_window_is_one_chain(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # The honest order of a rotation: the retired key sealed before its window closed,
    # the current key continued after.
    retired = SigningKey.from_seed(b"\x07" * 32)
    root = retired_key_trust_root(tmp_path, keys, retired, "2026-03-02T09:30:00.250001Z")
    _, first = make_bundle("seg0", signer=retired)
    make_bundle("seg1", position=first.next_position())
    code, out, _ = run(capsys, "verify", "--trust-root", root, tmp_path / "bundles")
    assert code == 0, out
    assert out.splitlines()[-1].startswith(
        f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1 form one chain "
        "(signed by 2 keys")


def test_a_segment_stating_a_time_before_the_one_it_continues_is_remarked(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # Possible with an honest producer whose clock was set back, so not a failure,
    # but a reviewer who relies on sealedAt must see it.
    _, first = make_bundle("seg0")
    make_bundle("seg1", position=first.next_position(),
                sealed_at=datetime(2026, 3, 2, 9, 29, tzinfo=timezone.utc))
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"OK trace {TRACE} instance {PRODUCER.instance}: segments 0, 1 form one chain "
        "(segment 1 states it was sealed at 2026-03-02T09:29:00.000000Z, before segment 0 "
        "(2026-03-02T09:30:00.250000Z), which it continues: a producer's clock set back, "
        "or a sealing time that is not true)")


def test_a_missing_segment_fails_the_trace(capsys, keys: Keys, make_bundle, tmp_path):
    _, first = make_bundle("seg0")
    second_dir = tmp_path / "elsewhere"
    _, second = make_bundle("seg1", position=first.next_position(), directory=second_dir)
    make_bundle("seg2", position=second.next_position())
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 1
    assert out.splitlines()[-1] == \
        f"FAIL trace {TRACE} instance {PRODUCER.instance}: segment 1 is missing"
    assert sum(line.startswith("OK ") for line in out.splitlines()) == 2


def test_a_bug_in_the_checks_is_reported_as_a_failure_not_a_traceback(
    capsys, keys: Keys, make_bundle, monkeypatch
):
    import spanproof.verifier._cli as cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "check_bundle", broken)
    path, _ = make_bundle()
    code, out, _ = run(capsys, "verify", "--verbose", "--key", keys.pub, path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: verifier error: RuntimeError: simulated bug")
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, path)
    assert json.loads(out)["bundles"][0]["verdict"] == "FAIL"


# ------------------------------------------------------------------ usage errors: 2


def test_no_key_is_a_usage_error(capsys, make_bundle):
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", path)
    assert code == 2
    assert out == ""
    assert err.startswith("spanproof: error: no trusted key")


def test_missing_path_is_a_usage_error(capsys, keys: Keys, tmp_path):
    missing = tmp_path / "nope.spanproof.json"
    code, out, err = run(capsys, "verify", "--key", keys.pub, missing)
    assert code == 2
    assert out == ""
    assert err == f"spanproof: error: {missing}: no such file or directory\n"


def test_missing_key_file_is_a_usage_error(capsys, make_bundle, tmp_path):
    path, _ = make_bundle()
    code, _, err = run(capsys, "verify", "--key", tmp_path / "absent.pub", path)
    assert code == 2
    assert err.startswith("spanproof: error: ")
    assert "cannot read key file" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key\n", "not a PEM public key"),
        (b"", "empty, no public key in it"),
        (b"\n \n", "empty, no public key in it"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
         "not a PEM public key"),
    ],
    ids=["text", "empty", "blank", "bad-pem"],
)
def test_bad_key_file_is_a_usage_error(capsys, make_bundle, tmp_path, content, message):
    path, _ = make_bundle()
    bad = tmp_path / "bad.pub"
    bad.write_bytes(content)
    code, _, err = run(capsys, "verify", "--key", bad, path)
    assert code == 2
    assert err.startswith(f"spanproof: error: {bad}: {message}")


def test_private_key_given_as_key_is_a_usage_error(capsys, keys: Keys, make_bundle, tmp_path):
    path, _ = make_bundle()
    priv = tmp_path / "signing.key"
    priv.write_bytes(keys.signer.private_pem())
    code, _, err = run(capsys, "verify", "--key", priv, path)
    assert code == 2
    assert err.startswith("spanproof: error: ")


def test_bad_trust_root_is_a_usage_error(capsys, make_bundle, tmp_path):
    path, _ = make_bundle()
    root = tmp_path / "trust.json"
    root.write_text('{"mediaType": "something/else", "keys": []}')
    code, _, err = run(capsys, "verify", "--trust-root", root, path)
    assert code == 2
    assert err.startswith("spanproof: error: ") and "mediaType" in err
    code, _, err = run(capsys, "verify", "--trust-root", tmp_path / "absent.json", path)
    assert code == 2
    assert "cannot read trust root" in err


def test_unknown_flag_is_a_usage_error(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", "--frobnicate", "--key", keys.pub, path)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: spanproof verify")
    assert "spanproof: error: unrecognized arguments: --frobnicate" in err


def test_no_path_and_no_command_are_usage_errors(capsys, keys: Keys):
    assert run(capsys, "verify", "--key", keys.pub)[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


def test_help_and_version_exit_zero(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("verify", "show", "keygen", "demo"):
        assert command in out
    code, out, _ = run(capsys, "verify", "--help")
    assert code == 0 and "--allow-incomplete" in out and "--trust-root" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("spanproof ")


# --------------------------------------------------------------- real processes


def test_console_script_verifies_and_fails_without_traceback(keys: Keys, make_bundle):
    script = spanproof_script()
    path, _ = make_bundle()
    done = subprocess.run([script, "verify", "--key", str(keys.pub), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK {path} trace={TRACE}")
    flip_in_record(path, 1)
    done = subprocess.run([script, "verify", "--key", str(keys.pub), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL {path}: record 2: previous-hash mismatch")
    assert "Traceback" not in done.stdout + done.stderr
    done = subprocess.run([script, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "spanproof: error:" in done.stderr


def test_python_dash_m_runs_the_cli(keys: Keys, make_bundle):
    path, _ = make_bundle()
    done = subprocess.run(
        [sys.executable, "-m", "spanproof.verifier", "verify", "--key", str(keys.pub), str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK ")


def test_verifying_never_imports_opentelemetry_grpc_or_the_exporter(keys: Keys, make_bundle):
    path, _ = make_bundle()
    code = f"""
import sys
from spanproof.verifier._cli import main
rc = main(["verify", "--key", {str(keys.pub)!r}, {str(path)!r}])
rc2 = main(["show", "--key", {str(keys.pub)!r}, {str(path)!r}])
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("opentelemetry", "grpc")
                or m.startswith("spanproof.exporter"))
assert rc == 0 and rc2 == 0, (rc, rc2)
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_verify_paths_are_printed_as_given(capsys, keys: Keys, make_bundle, tmp_path, monkeypatch):
    path, _ = make_bundle()
    monkeypatch.chdir(tmp_path)
    relative = Path("bundles") / path.name
    code, out, _ = run(capsys, "verify", "--key", keys.pub, relative)
    assert code == 0
    assert out.startswith(f"OK {relative} ")


class _FullStream(io.StringIO):
    """Standard output on a full disk: every write fails with ENOSPC."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _output_commands(keys: Keys, path: Path, tmp_path: Path) -> dict[str, list[object]]:
    return {
        "verify": ["verify", "--key", keys.pub, path],
        "verify --json": ["verify", "--json", "--key", keys.pub, path],
        "show": ["show", "--key", keys.pub, path],
        "report": ["report", "--key", keys.pub, "--html", tmp_path / "r.html", path],
    }


@pytest.mark.parametrize("command", ["verify", "verify --json", "show", "report"])
def test_output_that_cannot_be_written_is_said_to_be_standard_output(
    capsys, keys: Keys, make_bundle, tmp_path, monkeypatch, command
):
    path, _ = make_bundle()
    monkeypatch.setattr("sys.stdout", _FullStream())
    code, _, err = run(capsys, *_output_commands(keys, path, tmp_path)[command])
    assert code == 1
    assert err == ("spanproof: error: cannot write to standard output: "
                   f"{os.strerror(errno.ENOSPC)}\n")


@pytest.mark.parametrize("how", ["write", "writelines", "print"])
def test_every_way_of_writing_standard_output_is_guarded(monkeypatch, how):
    # writelines went to the stream beneath the guard: the error named no stream.
    from spanproof.verifier._stdout import StdoutError, writing_stdout

    monkeypatch.setattr("sys.stdout", _FullStream())
    with pytest.raises(StdoutError, match=os.strerror(errno.ENOSPC)), writing_stdout():
        {"write": lambda: sys.stdout.write("x\n"),
         "writelines": lambda: sys.stdout.writelines(["x\n"]),
         "print": lambda: print("x")}[how]()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["verify", "show", "report"])
def test_console_script_writing_to_a_full_device_says_it_was_standard_output(
    keys: Keys, make_bundle, tmp_path, command, buffered
):
    # Buffered, the output fails only when flushed: once the command is done, not as
    # the interpreter exits (where Python reports an ignored exception, status 120).
    path, _ = make_bundle()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    argv = [str(a) for a in _output_commands(keys, path, tmp_path)[command]]
    with open("/dev/full", "w") as full:
        done = subprocess.run([spanproof_script(), *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stderr == ("spanproof: error: cannot write to standard output: "
                           f"{os.strerror(errno.ENOSPC)}\n")


@pytest.mark.parametrize("command", ["verify", "show", "report"])
def test_console_script_with_standard_output_closed_still_answers_by_its_status(
    keys: Keys, make_bundle, tmp_path, command
):
    # `>&-`: every command failed "unexpected AttributeError" (sys.stdout is None),
    # exit 1, which said a bundle failed; report still wrote its file.
    path, _ = make_bundle()
    argv = [str(a) for a in _output_commands(keys, path, tmp_path)[command]]
    done = subprocess.run([spanproof_script(), *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert (done.returncode, done.stderr) == (0, "")
    path.write_bytes(path.read_bytes().replace(b'"records"', b'"recordz"', 1))
    done = subprocess.run([spanproof_script(), *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == 1 and "unexpected" not in done.stderr


def test_console_script_whose_reader_went_away_exits_141_not_1(
    keys: Keys, make_bundle, tmp_path
):
    # `verify ... | head -1`: exit 1 said a bundle failed, or 0 when the output fit in
    # the pipe; every bundle here verifies.
    path, _ = make_bundle()
    for i in range(400):
        (tmp_path / "bundles" / f"copy-{i}.spanproof.json").write_bytes(path.read_bytes())
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails
    try:
        done = subprocess.run([spanproof_script(), "verify", "--verbose", "--key", str(keys.pub),
                               str(tmp_path / "bundles")],
                              stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(writer)
    assert done.returncode == 141
    assert done.stderr == ""  # nothing about an ignored exception at exit


def test_console_script_on_a_latin_1_terminal_escapes_what_it_cannot_show(
    keys: Keys, make_bundle, tmp_path
):
    # show's tree lines (U+251C, U+2500) stopped the command with an
    # UnicodeEncodeError after a few lines, exit 1.
    path, _ = make_bundle()
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run([spanproof_script(), "show", "--key", str(keys.pub), str(path)],
                          capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.decode("latin-1")
    assert "\\u2500" in shown and "verified" in shown.lower()


def test_witness_commands_are_registered_on_the_same_cli(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "witness" in out and "monitor" in out
    code, _, err = run(capsys, "witness")
    assert code == 2
    assert "spanproof: error:" in err


# -- files that are not files: a bundle directory handed over by someone else ---------


@pytest.mark.timeout(60)  # the defect was a reader blocked forever on the pipe
def test_a_named_pipe_or_device_named_like_a_bundle_fails_without_being_read(
    capsys, keys: Keys, make_bundle, tmp_path
):
    path, _ = make_bundle()
    os.mkfifo(tmp_path / "bundles" / "pipe.spanproof.json")
    (tmp_path / "bundles" / "zero.spanproof.json").symlink_to("/dev/zero")
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 1
    lines = sorted(out.splitlines())
    assert lines[0].startswith(f"FAIL {tmp_path / 'bundles' / 'pipe.spanproof.json'}: "
                               "cannot read: not a regular file (a named pipe)")
    assert lines[1].startswith(f"FAIL {tmp_path / 'bundles' / 'zero.spanproof.json'}: "
                               "cannot read: not a regular file (a character device)")
    assert lines[2].startswith(f"OK {path} ")


@pytest.mark.timeout(60)
def test_show_of_a_named_pipe_fails_without_blocking(capsys, keys: Keys, tmp_path):
    pipe = tmp_path / "pipe.spanproof.json"
    os.mkfifo(pipe)
    code, out, err = run(capsys, "show", "--key", keys.pub, pipe)
    assert code == 1
    assert "not a regular file (a named pipe)" in out + err


@pytest.mark.timeout(60)
def test_a_named_pipe_as_a_bundles_receipt_fails_the_receipt_check(
    keys: Keys, make_bundle
):
    path, _ = make_bundle()
    os.mkfifo(receipt_path(path))
    report = check_bundle(path, TrustRoot.from_pem_files([keys.pub]))
    check = check_receipt_for_bundle(path, report, [], required=True)
    assert check.status is Status.FAIL
    assert check.message.endswith("not a regular file (a named pipe)")


@pytest.mark.parametrize("receipt", ["directory", "named pipe"])
@pytest.mark.timeout(60)
def test_report_skips_an_unreadable_receipt_without_a_witness_key_as_verify_does(
    capsys, tmp_path, keys: Keys, make_bundle, receipt
):
    # Anyone who can write beside a genuine bundle made `report` FAIL it (exit 1)
    # while `verify` said OK: without a pinned witness key the receipt is not
    # checked, readable or not (SPEC §8 step 10).
    path, _ = make_bundle()
    if receipt == "directory":
        os.mkdir(receipt_path(path))
    else:
        os.mkfifo(receipt_path(path))
    code, out, _ = run(capsys, "verify", "--key", keys.pub, path)
    assert code == 0 and out.startswith("OK ")
    code, out, _ = run(capsys, "report", "--key", keys.pub, "--html", tmp_path / "r.html", path)
    assert code == 0 and out.startswith("OK "), out
    report = check_bundle(path, TrustRoot.from_pem_files([keys.pub]))
    check = check_receipt_for_bundle(path, report, [])
    assert check.status is Status.SKIPPED
    assert check.message.startswith("receipt not checked: no witness key is pinned")


@pytest.mark.timeout(60)
def test_a_named_pipe_as_a_disclosure_file_is_refused(tmp_path):
    pipe = tmp_path / "values.disclosures.json"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match=r"not a regular file \(a named pipe\)"):
        load_disclosures(pipe)


# -- key and trust-root files: the user's own input, read from a pipe too ---------------


def test_a_key_read_from_a_pipe_its_writer_fills_later_is_used(capsys, keys: Keys, make_bundle):
    # --key <(...): the command may start reading before the writer has written.
    path, _ = make_bundle()
    read_end, write_end = os.pipe()

    def write_late() -> None:
        time.sleep(0.2)
        os.write(write_end, keys.pub.read_bytes())
        os.close(write_end)

    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        code, out, err = run(capsys, "verify", "--key", f"/dev/fd/{read_end}", path)
    finally:
        writer.join(10)
        os.close(read_end)
    assert code == 0, err
    assert out.startswith(f"OK {path} ")


@pytest.mark.timeout(60)  # the defect was a command blocked forever on the pipe
@pytest.mark.parametrize(("option", "message"), [
    ("--key", "empty, no public key in it"),
    ("--trust-root", "invalid JSON: Expecting value (line 1 column 1)"),
])
def test_a_named_pipe_nobody_writes_as_key_or_trust_root_fails_without_blocking(
    capsys, make_bundle, tmp_path, option, message
):
    path, _ = make_bundle()
    pipe = tmp_path / "trusted"
    os.mkfifo(pipe)
    code, out, err = run(capsys, "verify", option, pipe, path)
    assert code == 2  # the key is unusable; no bundle failed
    assert out == ""
    assert err == f"spanproof: error: {pipe}: {message}\n"


@pytest.mark.parametrize("option", ["--key", "--trust-root"])
def test_a_device_as_key_or_trust_root_is_read_no_further_than_the_limit(
    capsys, make_bundle, tmp_path, option
):
    path, _ = make_bundle()
    (tmp_path / "endless").symlink_to("/dev/zero")
    code, _, err = run(capsys, "verify", option, tmp_path / "endless", path)
    assert code == 2
    assert f"{tmp_path / 'endless'}: cannot read " in err
    assert f"(larger than {MAX_NAMED_FILE} bytes)" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_directory_as_key_is_refused_without_keeping_its_descriptor_open(
    capsys, make_bundle, tmp_path
):
    path, _ = make_bundle()
    code, _, err = run(capsys, "verify", "--key", tmp_path, path)
    assert code == 2
    assert err == f"spanproof: error: {tmp_path}: cannot read key file (Is a directory)\n"
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    assert str(tmp_path) not in held


def test_a_key_file_of_a_type_openssl_does_not_know_is_a_usage_error(
    capsys, make_bundle, tmp_path
):
    path, _ = make_bundle()
    (tmp_path / "odd.pub").write_bytes(unknown_type_public_pem())
    code, _, err = run(capsys, "verify", "--key", tmp_path / "odd.pub", path)
    assert code == 2  # the key is unusable; no bundle failed
    assert f"{tmp_path / 'odd.pub'}: key is not Ed25519" in err


def test_open_regular_reads_a_regular_file_and_refuses_a_directory(tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    with open_regular(tmp_path / "f") as f:
        assert f.read() == b"data"
    with pytest.raises(OSError, match=r"not a regular file \(a directory\)"):
        open_regular(tmp_path)


# -- what reaches the auditor's terminal --------------------------------------------

ODD_NAME = "z\x1b[2K\rOK pretend\u2028-tampered.spanproof.json"


def test_control_characters_in_a_file_name_are_escaped_not_sent_to_the_terminal(
    capsys, keys: Keys, make_bundle, tmp_path
):
    # Printed raw, ESC [2K and a carriage return erased "FAIL" from the auditor's
    # screen and left a line starting "OK pretend...".
    path, _ = make_bundle()
    odd = tmp_path / "bundles" / ODD_NAME
    odd.write_bytes(path.read_bytes() + b"x")
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 1
    assert not any(ch in out for ch in "\x1b\r\u2028")
    assert f"FAIL {tmp_path / 'bundles'}/z\\x1b[2K\\rOK pretend\\u2028-tampered" in out
    code, out, _ = run(capsys, "show", "--key", keys.pub, odd)
    assert code == 1
    assert not any(ch in out for ch in "\x1b\r\u2028")
    assert "bundle    " + str(tmp_path / "bundles") + "/z\\x1b[2K\\rOK pretend" in out


def test_show_escapes_what_the_statement_says(capsys, keys: Keys, make_bundle):
    # A producer's own words (a completeness note) reach the header, signed or not.
    note = "x\x1b[2J\x1b]0;owned\x07\rverdict   OK"
    path, _ = make_bundle(completeness=Completeness(dropped_spans=1, notes=(note,)))
    for argv, mark in ((["show", path], "(unverified) "), (["show", "--key", keys.pub, path], "")):
        _, out, _ = run(capsys, *argv)
        assert not any(ch in out for ch in "\x1b\x07\r")
        assert f"note      {mark}x\\x1b[2J\\x1b]0;owned\\x07\\rverdict   OK" in out


def test_a_usage_error_naming_an_odd_path_is_escaped(capsys, keys: Keys, tmp_path):
    code, _, err = run(capsys, "verify", "--key", keys.pub, tmp_path / "gone\x1b]0;title\x07")
    assert code == 2
    assert "\x1b" not in err and "\x07" not in err and "gone\\x1b]0;title\\x07" in err


def test_printable_escapes_controls_and_undecodable_bytes_only():
    from spanproof.verifier._term import printable

    assert printable("café 😀 plain") == "café 😀 plain"
    # An undecodable file name byte is the byte (0xff), not the code point standing
    # for it; a lone surrogate not from a file name keeps its own escape.
    assert printable("a\x1bb\rc\x00d\x7fe\u2028f\udcffg\ud800") == (
        "a\\x1bb\\rc\\x00d\\x7fe\\u2028f\\xffg\\ud800"
    )


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "lines"])
def test_a_file_name_that_is_not_utf8_neither_breaks_the_output_nor_the_run(
    keys: Keys, make_bundle, tmp_path, json_output: bool
):
    # Under a strict UTF-8 standard output (a UTF-8 locale), --json printed the raw
    # name and failed: "unexpected UnicodeEncodeError", no report for any bundle.
    path, _ = make_bundle()
    other, _ = make_bundle("other", trace_id=OTHER_TRACE, directory=tmp_path / "elsewhere")
    odd = os.path.join(os.fsencode(tmp_path / "bundles"), b"a\xffb.spanproof.json")
    os.rename(other, odd)
    done = subprocess.run(
        [spanproof_script(), "verify", *(["--json"] if json_output else []),
         "--key", str(keys.pub), str(tmp_path / "bundles")],
        capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("ascii")  # every other character escaped
    shown = f"{tmp_path / 'bundles'}/a\\xffb.spanproof.json"
    if json_output:
        paths = {b["path"] for b in json.loads(out)["bundles"]}
        assert paths == {str(path), os.fsdecode(odd)}
    else:
        assert f"OK {shown} trace={OTHER_TRACE}" in out


# -- a directory that cannot be listed ------------------------------------------------


@pytest.fixture
def locked_dir(tmp_path, make_bundle, monkeypatch) -> Path:
    """tmp_path/bundles holds a bundle and a subdirectory (with a bundle) that cannot
    be listed (simulated: the tests may run as root, whom permissions do not stop)."""
    make_bundle()
    locked = tmp_path / "bundles" / "locked"
    make_bundle("hidden", trace_id=OTHER_TRACE, directory=locked)
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return locked


UNLISTED = "cannot list the directory (Permission denied); the bundles in it were not checked"


def test_a_directory_that_cannot_be_listed_fails_instead_of_being_skipped(
    capsys, keys: Keys, tmp_path, locked_dir: Path
):
    # os.walk ignores such a directory unless told otherwise: verify said OK for
    # what it found, and exited 0, without the bundles inside.
    code, out, _ = run(capsys, "verify", "--key", keys.pub, tmp_path / "bundles")
    assert code == 1
    lines = out.splitlines()
    assert f"FAIL {locked_dir}: {UNLISTED}" in lines
    assert sum(line.startswith("OK ") for line in lines) == 1
    code, out, _ = run(capsys, "verify", "--json", "--key", keys.pub, tmp_path / "bundles")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert doc["errors"] == [{"path": str(locked_dir), "reason": UNLISTED}]
    code, out, _ = run(capsys, "report", "--key", keys.pub, "--html", tmp_path / "r.html",
                       tmp_path / "bundles")
    assert code == 1 and f"FAIL {locked_dir}: {UNLISTED}" in out
    assert "cannot list the directory (Permission denied)" in (tmp_path / "r.html").read_text()


def test_find_bundles_raises_for_a_directory_it_cannot_list(tmp_path, locked_dir: Path):
    from spanproof.verifier import find_bundles

    with pytest.raises(PermissionError):
        list(find_bundles([str(tmp_path / "bundles")]))
    errors: list[OSError] = []
    found = list(find_bundles([str(tmp_path / "bundles")], onerror=errors.append))
    assert len(found) == 1 and [e.filename for e in errors] == [str(locked_dir)]


@pytest.mark.parametrize("option", [["--require-receipt"], ["--witness-origin", "log.example"]],
                         ids=["require-receipt", "witness-origin"])
def test_a_receipt_option_without_a_witness_key_is_a_usage_error_not_ignored(
    capsys, keys: Keys, make_bundle, option: list[str]
):
    # --witness-origin without --witness-key was ignored: no receipt is checked
    # without a pinned witness key, so the bundle passed (exit 0) as if the user had
    # not asked for receipts from that log.
    path, _ = make_bundle()
    code, out, err = run(capsys, "verify", "--key", keys.pub, *option, path)
    assert code == 2 and out == ""
    assert f"{option[0]} needs --witness-key" in err


@pytest.mark.parametrize("command", ["verify", "report"])
def test_a_producer_key_pinned_as_the_witness_key_is_a_usage_error(
    capsys, tmp_path, keys: Keys, make_bundle, command: str
):
    # Whoever signs the bundles would sign the checkpoints that witness them: the
    # receipts would pass and prove nothing the bundle's signature does not.
    path, _ = make_bundle()
    extra = ["--html", str(tmp_path / "r.html")] if command == "report" else []
    code, out, err = run(capsys, command, "--key", keys.pub, "--witness-key", keys.pub,
                         *extra, path)
    assert code == 2 and out == ""
    assert "the witness key is also a trusted producer key" in err
    assert not (tmp_path / "r.html").exists()
