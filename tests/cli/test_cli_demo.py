"""``spanproof demo``: the support-case agent traced, certified and verified end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_support import flip_in_record, spanproof_script

from spanproof.verifier import TrustRoot, check_bundle, find_bundles
from spanproof.verifier._cli import main
from spanproof.verifier.values import decode_value

N_CASES = 4


def _records(bundle: str, pub: Path) -> list[dict[str, Any]]:
    report = check_bundle(bundle, TrustRoot.from_pem_files([str(pub)]), keep_records=True)
    assert report.ok, report.reason
    assert report.records is not None
    return list(report.records)


def _root(records: list[dict[str, Any]]) -> dict[str, Any]:
    (root,) = [r["span"] for r in records if r["span"]["parentSpanId"] == ""]
    return root


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "spanproof-demo"
    assert main(["demo", "--out", str(out)]) == 0
    return out


def test_demo_writes_keys_and_one_verified_bundle_per_case(demo_dir: Path, capsys):
    pub = demo_dir / "keys" / "signing.pub"
    assert (demo_dir / "keys" / "signing.key").exists() and pub.exists()
    bundles = list(find_bundles([str(demo_dir / "bundles")]))
    assert len(bundles) == N_CASES
    assert main(["verify", "--key", str(pub), str(demo_dir / "bundles")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nOK ") + out.startswith("OK ") == N_CASES


def test_demo_bundles_hold_escalated_and_not_escalated_cases(demo_dir: Path):
    pub = demo_dir / "keys" / "signing.pub"
    escalated = []
    for bundle in find_bundles([str(demo_dir / "bundles")]):
        records = _records(bundle, pub)
        names = {r["span"]["name"] for r in records}
        flag = decode_value(_root(records)["attributes"]["support.escalated"])
        assert flag == ("escalate" in names)
        assert flag != ("send_response" in names)
        escalated.append(flag)
    assert any(escalated) and not all(escalated)


def test_demo_bundles_certify_the_steps_and_genai_calls_but_not_plain_spans(demo_dir: Path):
    pub = demo_dir / "keys" / "signing.pub"
    bundle = next(iter(find_bundles([str(demo_dir / "bundles")])))
    records = _records(bundle, pub)
    names = {r["span"]["name"] for r in records}
    assert {
        "handle_support_case", "receive_case", "classify_intent", "chat support-classifier-1",
        "retrieve_account_context", "execute_tool crm.get_account", "check_fraud_threshold",
        "apply_policy", "draft_response", "chat support-writer-1",
    } <= names
    assert "format_reply" not in names  # traced, but not evidence
    chats = [r["span"] for r in records if r["span"]["name"].startswith("chat ")]
    for chat in chats:
        attrs = chat["attributes"]
        assert attrs["gen_ai.operation.name"] == {"stringValue": "chat"}
        assert int(attrs["gen_ai.usage.input_tokens"]["intValue"]) > 0


def test_demo_output_shows_trees_verify_lines_and_the_command(tmp_path, capsys):
    out_dir = tmp_path / "d"
    assert main(["demo", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("  handle_support_case [SERVER, OK, ") == N_CASES
    assert "  ├── classify_intent [INTERNAL, OK, " in out
    assert "operation=chat model=support-classifier-1 input_tokens=" in out
    assert "ERROR: no account for customer CUST-4040" in out
    assert sum(line.startswith("OK ") for line in out.splitlines()) == N_CASES
    pub, bundles = out_dir / "keys" / "signing.pub", out_dir / "bundles"
    assert f"  spanproof verify --key {pub} {bundles}\n" in out


def test_rerunning_the_demo_adds_bundles_and_all_still_verify(tmp_path, capsys):
    out_dir = tmp_path / "d"
    assert main(["demo", "--out", str(out_dir)]) == 0
    key_before = (out_dir / "keys" / "signing.key").read_bytes()
    assert main(["demo", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "reused" in out
    assert f"{N_CASES} bundle(s) from earlier runs" in out
    assert (out_dir / "keys" / "signing.key").read_bytes() == key_before
    assert len(list(find_bundles([str(out_dir / "bundles")]))) == 2 * N_CASES
    assert main(["verify", "--key", str(out_dir / "keys" / "signing.pub"),
                 str(out_dir / "bundles")]) == 0


def test_one_character_changed_in_any_demo_record_fails_verification(tmp_path, capsys):
    out_dir = tmp_path / "d"
    assert main(["demo", "--out", str(out_dir)]) == 0
    pub, bundles = out_dir / "keys" / "signing.pub", out_dir / "bundles"
    paths = sorted(find_bundles([str(bundles)]))
    n_records = len(Path(paths[0]).read_bytes().split(b"\n")) - 3
    for path, record in ((paths[0], 0), (paths[1], n_records // 2), (paths[2], n_records - 1)):
        original = Path(path).read_bytes()
        flip_in_record(Path(path), record)
        capsys.readouterr()
        assert main(["verify", "--key", str(pub), str(bundles)]) == 1
        out = capsys.readouterr().out
        assert f"FAIL {path}: " in out
        Path(path).write_bytes(original)
    assert main(["verify", "--key", str(pub), str(bundles)]) == 0


@pytest.mark.skipif(os.name == "nt", reason="POSIX console script")
def test_demo_console_script_then_verify(tmp_path):
    script = spanproof_script()
    out_dir = tmp_path / "demo"
    done = subprocess.run([script, "demo", "--out", str(out_dir)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [script, "verify", "--key", str(out_dir / "keys" / "signing.pub"),
         str(out_dir / "bundles")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == N_CASES


def test_demo_ignores_the_spanproof_variables_of_the_shell(tmp_path, capsys, monkeypatch):
    # A WITNESS_URL exported for the application made the demo queue every bundle
    # for a witness; REDACT_ATTRIBUTES, SELECT_ALL and the others changed its bundles.
    prefix = "OTEL_EXPORTER_SPANPROOF_"
    for suffix, value in (("WITNESS_URL", "http://127.0.0.1:9"), ("REDACT_ATTRIBUTES", "*"),
                          ("SELECT_ALL", "true"), ("SELECT_ATTRIBUTES", "nothing.here"),
                          ("SEALING_PROCESS", "true"), ("MAX_RECORDS", "1"),
                          ("KEY_FILE", str(tmp_path / "missing.key")),
                          ("OUTPUT_DIR", str(tmp_path / "elsewhere")),
                          ("REDACT_ATTRIBUTE", "typo")):
        monkeypatch.setenv(prefix + suffix, value)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    out_dir = tmp_path / "d"
    assert main(["demo", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"  settings     the demo's own: it ignores the {prefix}* variables set here\n" in out
    bundles = sorted(find_bundles([str(out_dir / "bundles")]))
    assert len(bundles) == N_CASES
    assert not (out_dir / "bundles" / "witness-queue").exists()
    assert not list((out_dir / "bundles").glob("*.disclosures.json"))
    assert not (tmp_path / "elsewhere").exists()
    names = {r["span"]["name"] for r in _records(bundles[0], out_dir / "keys" / "signing.pub")}
    assert "format_reply" not in names  # not evidence: SELECT_ALL was not applied


@pytest.mark.parametrize("value", ["true", " TRUE "])
def test_demo_traces_its_cases_whatever_otel_sdk_disabled_says(
    tmp_path, capsys, monkeypatch, value
):
    # The SDK's provider reads OTEL_SDK_DISABLED: a shell that disabled OpenTelemetry
    # for its applications made the demo trace nothing, "no bundle was written", exit 1.
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    out_dir = tmp_path / "d"
    assert main(["demo", "--out", str(out_dir)]) == 0
    assert len(list(find_bundles([str(out_dir / "bundles")]))) == N_CASES
    assert f"{N_CASES} bundles written, all verified" in capsys.readouterr().out
    assert os.environ["OTEL_SDK_DISABLED"] == value  # the variable is given back


def test_demo_says_nothing_of_settings_without_spanproof_variables(
    tmp_path, capsys, monkeypatch
):
    for name in list(os.environ):
        if name.upper().startswith("OTEL_EXPORTER_SPANPROOF_"):
            monkeypatch.delenv(name)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert "  settings " not in capsys.readouterr().out


def test_demo_out_that_cannot_be_used_is_a_usage_error(tmp_path, capsys):
    # README: every command exits 2 for a path it cannot use; the demo exited 1, as
    # for a bundle that failed to verify.
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "demo"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"spanproof: error: --out {out}: cannot set up the demo key" in err


def _bundle_contents(out_dir: Path) -> list[list[tuple[str, list[str], dict[str, Any]]]]:
    """Each bundle's records as (span name, attribute keys, resource attributes but
    the per-run ``service.instance.id``), bundles in a stable order."""
    pub = out_dir / "keys" / "signing.pub"
    bundles = []
    for bundle in find_bundles([str(out_dir / "bundles")]):
        records = []
        for r in _records(bundle, pub):
            resource = {k: decode_value(v) for k, v in r["resource"]["attributes"].items()
                        if k != "service.instance.id"}
            records.append((r["span"]["name"], sorted(r["span"]["attributes"]), resource))
        bundles.append(sorted(records))
    return sorted(bundles)


def test_demo_bundles_are_the_same_whatever_the_sdk_limits_and_resource_variables_say(
    tmp_path, capsys, monkeypatch
):
    # SpanLimits() and Resource.create read the shell: with these exported the demo's
    # spans kept two attributes each, lost their selecting one, and its bundles held
    # 2 or 3 records instead of 11, "all verified".
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    assert main(["demo", "--out", str(tmp_path / "clean")]) == 0
    for name, value in (("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2"),
                        ("OTEL_ATTRIBUTE_COUNT_LIMIT", "1"),
                        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "3"),
                        ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "3"),
                        ("OTEL_SPAN_EVENT_COUNT_LIMIT", "0"),
                        ("OTEL_SERVICE_NAME", "another"),
                        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")):
        monkeypatch.setenv(name, value)
    assert main(["demo", "--out", str(tmp_path / "limited")]) == 0
    clean = _bundle_contents(tmp_path / "clean")
    assert [len(b) for b in clean] == [len(b) for b in _bundle_contents(tmp_path / "limited")]
    assert clean == _bundle_contents(tmp_path / "limited")
    assert {"service.name", "telemetry.sdk.language", "telemetry.sdk.version"} <= set(
        clean[0][0][2])
