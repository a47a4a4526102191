"""The producer side (SPEC §2.5): configuration, commitment of a body, the disclosure
file beside the bundle (mode 0600), and the SDK exporter end to end."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exporter"))

from disclosure_support import (
    REDACT,
    SPAN_A,
    counter_salts,
    default_bodies,
    seal_bodies,
    trust_root,
    write_bundle,
)
from exporter_support import FakeClock, Recorder, make_exporter

from spanproof.exporter.config import ExporterConfig
from spanproof.exporter.disclosure import (
    commit_body,
    redaction_matcher,
)
from spanproof.exporter.sinks import DirectorySink
from spanproof.verifier import Verdict, check_bundle, find_bundles
from spanproof.verifier.disclosure import (
    AttributeMatcher,
    check_disclosures,
    load_disclosures,
)
from spanproof.verifier.values import COMMITTED_VALUE, is_committed_value


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("patterns", "key", "expected"),
    [
        (("customer.*",), "customer.email", True),
        (("customer.*",), "customer.address.city", True),
        (("customer.*",), "customer", False),
        (("customer.*",), "my.customer.email", False),
        (("gen_ai.input.messages",), "gen_ai.input.messages", True),
        (("gen_ai.input.messages",), "gen_ai.input.messages.0", False),
        (("gen_ai.input.messages",), "gen_ai_input_messages", False),
        (("*.email",), "billing.email", True),
        (("user.?d",), "user.id", True),
        (("user.?d",), "user.uuid", False),
        (("a[1]",), "a[1]", True),
        (("a[1]",), "a1", False),
        (("Customer.*",), "customer.email", False),
        (("*",), "", True),
        (("a*a",), "a", False),  # the start and the end of a key do not overlap
        (("ab*ba",), "aba", False),
        (("*aa*aa*",), "aaa", False),  # nor do the parts between stars
        (("*aa*aa*",), "aaaa", True),
        (("a*?*b",), "ab", False),
        (("a*?*b",), "a\nb", True),
    ],
)
def test_glob_matching(patterns: tuple[str, ...], key: str, expected: bool) -> None:
    assert AttributeMatcher(patterns).matches(key) is expected


@pytest.mark.timeout(60)  # the defect took minutes on this key (quadratic in its length)
@pytest.mark.parametrize(("tail", "expected"), [("x", False), ("x.arguments", True)])
def test_glob_matching_is_linear_in_the_key(tail: str, expected: bool) -> None:
    # A regular expression with ".*" per "*" retried every split of the repeats.
    key = "gen_ai.prompt." + ".tool_calls." * 350_000 + tail  # about 4 MB
    matcher = AttributeMatcher(("gen_ai.prompt.*.tool_calls.*.arguments",))
    assert matcher.matches(key) is expected


def test_matcher_rejects_empty_patterns() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        AttributeMatcher(("ok", ""))
    assert AttributeMatcher.parse(" a.b , customer.* ,,").patterns == ("a.b", "customer.*")
    assert redaction_matcher(()) is None


# -------------------------------------------------------------------- configuration


def test_redact_attributes_from_environment() -> None:
    env = {"OTEL_EXPORTER_SPANPROOF_REDACT_ATTRIBUTES": "gen_ai.input.messages, customer.*"}
    config = ExporterConfig.from_env(environ=env)
    assert config.redact_attributes == ("gen_ai.input.messages", "customer.*")
    assert ExporterConfig.from_env(environ={}).redact_attributes == ()
    # A constructor argument wins over the variable.
    override = ExporterConfig.from_env(environ=env, redact_attributes=["x.y"])
    assert override.redact_attributes == ("x.y",)


def test_redact_attributes_validated() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_SPANPROOF_REDACT_ATTRIBUTES"):
        ExporterConfig(redact_attributes=("ok", ""))


# ---------------------------------------------------------------------- commitment


def test_commit_body_is_pure_and_leaves_input_unchanged() -> None:
    body = default_bodies()[0]
    before = repr(body)
    matcher = AttributeMatcher(REDACT)
    first, disclosures = commit_body(body, matcher, salt=counter_salts())
    again, _ = commit_body(body, matcher, salt=counter_salts())
    assert repr(body) == before
    assert first == again
    assert [d.key for d in disclosures] == sorted(
        ["gen_ai.input.messages", "customer.email", "customer.tier", "case.priority"])
    for d in disclosures:
        assert d.value == body["span"]["attributes"][d.key]
        assert first["span"]["attributes"][d.key][COMMITTED_VALUE]["digest"] == d.digest
    assert first["resource"] is body["resource"]


def test_commit_body_salts_are_fresh_by_default() -> None:
    body = default_bodies()[0]
    matcher = AttributeMatcher(("customer.email",))
    _, (one,) = commit_body(body, matcher)
    _, (two,) = commit_body(body, matcher)
    assert len(one.salt) == 16 and one.salt != two.salt
    assert one.digest != two.digest


def test_commit_body_rejects_a_bad_salt_source() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        commit_body(default_bodies()[0], AttributeMatcher(("customer.*",)),
                    salt=lambda: b"short")


# --------------------------------------------------------------- the directory sink


def test_disclosure_file_written_beside_bundle_with_mode_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the file
    try:
        written = write_bundle(tmp_path / "out")
    finally:
        os.umask(old)
    assert written.disclosures.exists()
    assert written.disclosures.name == written.bundle.name.removesuffix(
        ".spanproof.json") + ".disclosures.json"
    assert _mode(written.disclosures) == 0o600
    assert written.disclosures.read_bytes() == written.sealed.disclosures_data()
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_no_disclosure_file_when_nothing_committed(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "out", redact=())
    assert written.bundle.exists()
    assert not written.disclosures.exists()


def test_disclosure_file_follows_an_alternative_bundle_name(tmp_path: Path) -> None:
    first = write_bundle(tmp_path / "out")
    # Another bundle under the same name (the same bundle again is taken as written).
    second = write_bundle(tmp_path / "out", default_bodies()[:2])  # stored as <stem>.1
    assert second.bundle.name.endswith(".1.spanproof.json")
    assert second.disclosures.exists() and first.disclosures.exists()
    assert _mode(second.disclosures) == 0o600


def test_disclosure_file_of_a_bundle_moved_away_is_never_written_over(tmp_path: Path) -> None:
    # The bundle is shipped or archived, its salts kept beside where it was; the same
    # name is sealed again (the chain restarted: nothing left to continue).  The kept
    # file was replaced, and the shipped bundle's commitments could never be opened.
    out = tmp_path / "out"
    first = write_bundle(out)
    first.bundle.rename(tmp_path / first.bundle.name)
    kept = first.disclosures.read_bytes()
    again = seal_bodies(default_bodies()[:2], salt=lambda: os.urandom(16))
    sink = DirectorySink(out)
    second = Path(sink.write(again))
    assert first.disclosures.read_bytes() == kept
    assert second.name.endswith(".1.spanproof.json")
    secret = second.with_name(second.name.replace(".spanproof.json", ".disclosures.json"))
    assert secret.read_bytes() == again.disclosures_data() and _mode(secret) == 0o600
    # The same bundle written again (a retry) is taken as written, not stored a third time.
    assert sink.write(again) == str(second)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [first.disclosures.name, second.name, secret.name])


# ------------------------------------------------------------ redacted vs unredacted


def _uncommit(record: dict[str, Any], disclosed: dict[tuple[str, str], Any]) -> dict[str, Any]:
    span = dict(record["span"])
    attrs = {}
    for key, typed in span["attributes"].items():
        attrs[key] = disclosed[(span["spanId"], key)] if is_committed_value(typed) else typed
    span["attributes"] = attrs
    return {**record, "span": span}


def test_redacted_and_unredacted_runs_differ_only_in_committed_values(tmp_path: Path) -> None:
    recorder = Recorder()
    with recorder.tracer.start_as_current_span("agent"):
        for i in range(3):
            attrs = {"gen_ai.operation.name": "chat", "customer.email": f"c{i}@example.com",
                     "customer.id": i, "gen_ai.input.messages": f"prompt {i}",
                     "gen_ai.request.model": "m"}
            with recorder.tracer.start_as_current_span(f"step {i}", attributes=attrs):
                pass
    spans = recorder.take()
    trust, _ = trust_root(tmp_path / "keys")
    results = {}
    for name, redact in (("plain", None), ("redacted", ["customer.*", "gen_ai.input.messages"])):
        out = tmp_path / name
        exporter = make_exporter(out, FakeClock(), redact_attributes=redact)
        exporter.export(spans)
        exporter.shutdown()
        (path,) = find_bundles([str(out)])
        report = check_bundle(path, trust, keep_records=True)
        assert report.verdict is Verdict.OK, report.reason
        results[name] = (Path(path), report)
    plain_path, plain = results["plain"]
    red_path, red = results["redacted"]
    assert not list(plain_path.parent.glob("*.disclosures.json"))
    disclosures = load_disclosures(red_path.with_name(
        red_path.name.replace(".spanproof.json", ".disclosures.json")))
    assert len(disclosures.disclosures) == 9
    assert all(r.ok for r in check_disclosures(disclosures.disclosures, [red]))
    disclosed = {(d.span_id, d.key): d.value for d in disclosures.disclosures}
    assert plain.records is not None and red.records is not None
    assert len(plain.records) == len(red.records) == 3
    for p, r in zip(plain.records, red.records, strict=True):
        committed = {k for k, v in r["span"]["attributes"].items() if is_committed_value(v)}
        assert committed == {"customer.email", "customer.id", "gen_ai.input.messages"}
        opened = _uncommit(r, disclosed)
        # Only the committed values, the media type and (consequently) the chain differ.
        for member in ("span", "resource", "scope", "seq"):
            assert opened[member] == p[member], member
        assert r["mediaType"].endswith("cer.v1.1+json") and p["mediaType"].endswith("cer.v1+json")
    red_bytes = red_path.read_bytes()
    for i in range(3):
        assert f"c{i}@example.com".encode() not in red_bytes
        assert f"prompt {i}".encode() not in red_bytes
        assert f"c{i}@example.com".encode() in plain_path.read_bytes()


def test_exporter_from_environment_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_SPANPROOF_REDACT_ATTRIBUTES", "customer.email")
    recorder = Recorder()
    with recorder.tracer.start_as_current_span(
            "s", attributes={"gen_ai.operation.name": "chat", "customer.email": "z@example.com"}):
        pass
    exporter = make_exporter(tmp_path / "out", FakeClock())
    assert exporter.config.redact_attributes == ("customer.email",)
    exporter.export(recorder.take())
    exporter.shutdown()
    (path,) = find_bundles([str(tmp_path / "out")])
    assert b"z@example.com" not in Path(path).read_bytes()
    (disc,) = (tmp_path / "out").glob("*.disclosures.json")
    assert _mode(disc) == 0o600
    assert b"z@example.com" in disc.read_bytes()


def test_sealed_bundle_carries_disclosures_outside_its_bytes() -> None:
    sealed = seal_bodies(default_bodies())
    assert sealed.disclosures
    for d in sealed.disclosures:
        assert d.salt.hex().encode() not in sealed.data
    a = [d for d in sealed.disclosures if d.span_id == SPAN_A]
    assert {d.key for d in a} == {"gen_ai.input.messages", "customer.email",
                                  "customer.tier", "case.priority"}


@pytest.mark.parametrize(
    "patterns",
    [("customer.*",), ("*",), ("a*", "a?"), ("a?*",), ("ab*", "ab?", "x"), ("[*",)],
)
@pytest.mark.parametrize("key", ["", "a", "ab", "abc", "customer", "customer.", "customer.x",
                                 "[", "[x", "x", "a?"])
def test_prefix_patterns_match_as_the_general_matcher(
    patterns: tuple[str, ...], key: str
) -> None:
    # "customer.*" takes str.startswith; it must answer as the glob matcher does.
    from spanproof.verifier.disclosure import _Glob

    expected = key in patterns or any(_Glob(p).matches(key) for p in patterns)
    assert AttributeMatcher(patterns).matches(key) is expected


def test_redaction_patterns_given_as_a_string_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"write patterns=\['customer\.email'\]"):
        redaction_matcher("customer.email")
