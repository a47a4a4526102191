"""``spanproof show`` and the tree it prints (``spanproof.verifier.tree``)."""

from __future__ import annotations

from typing import Any

import pytest
from cli_support import CHAT, CLASSIFY, NOT_IN_BUNDLE, ROOT, TRACE, Keys, flip_in_record, span_body

from spanproof.verifier._cli import main
from spanproof.verifier.tree import describe_span, render_tree

# The tree of cli_support.workflow_bodies(): step names in parent/child order.
EXPECTED_TREE = [
    "handle_support_case [SERVER, OK, 12.000 ms]  operation=invoke_agent",
    "├── receive_case [INTERNAL, OK, 1.000 ms]",
    "├── classify_intent [INTERNAL, OK, 4.000 ms]",
    "│   └── chat support-classifier-1 [CLIENT, OK, 2.500 ms]  operation=chat "
    "model=support-classifier-1 input_tokens=53 output_tokens=1",
    "├── execute_tool crm.get_account [INTERNAL, ERROR: no account for customer CUST-4040, "
    "1.000 ms]  operation=execute_tool tool=crm.get_account",
    "└── apply_policy [INTERNAL, OK, 1.000 ms]",
    "      • policy.decision  policy.rule=R2-fraud-threshold support.decision=escalate",
    "late_callback [INTERNAL, OK, 1.000 ms]  (parent not certified)",
]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_show_with_key_prints_verdict_and_tree(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, err = run(capsys, "show", "--key", keys.pub, path)
    assert code == 0, err
    header, _, tree = out.partition("\n\n")
    assert f"bundle    {path}" in header
    assert f"trace     {TRACE}  segment 0  records 7" in header
    assert "sealed    root_ended at 2026-03-02T09:30:00.250000Z by spanproof-test 0.1.0" in header
    assert "complete  yes, no declared losses" in header
    assert f"verdict   OK: verified by key {keys.signer.keyid[:16]} ({keys.pub})" in header
    assert tree.splitlines() == EXPECTED_TREE


def test_show_escapes_control_characters_of_the_key_file_name(capsys, keys: Keys, make_bundle):
    # The verdict line names the key file as given: an escape sequence there erased
    # the line above it (the bundle's last claim) and reached the terminal raw.
    path, _ = make_bundle()
    odd = keys.pub.with_name("producer\x1b[1A\x1b[2K\rOK.pub")
    odd.write_bytes(keys.pub.read_bytes())
    code, out, err = run(capsys, "show", "--key", str(odd), path)
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out
    assert "producer\\x1b[1A\\x1b[2K\\rOK.pub)" in out


def test_show_without_key_is_marked_unverified(capsys, make_bundle):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "show", path)
    assert code == 0
    header, _, tree = out.partition("\n\n")
    assert "verdict   UNVERIFIED (no --key given)" in header
    assert "complete  (unverified) yes, no declared losses" in header
    assert "verified by key" not in out
    assert tree.splitlines() == EXPECTED_TREE


def test_show_of_a_tampered_bundle_fails_but_shows_what_was_read(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    flip_in_record(path, 3)  # record 4 then fails its previous-hash check
    code, out, _ = run(capsys, "show", "--key", keys.pub, path)
    assert code == 1
    assert "verdict   FAIL: record 4: previous-hash mismatch" in out
    assert "the 4 record(s) below were read before the failure and are NOT verified" in out
    assert "Xxecute_tool crm.get_account" in out  # the altered name, shown as read


def test_show_marks_the_claims_of_a_key_used_outside_its_window(
        capsys, keys: Keys, make_bundle, tmp_path):
    # Signed by a key the trust root retired before the bundle's sealing time: its
    # completeness claim and notes were printed above the FAIL as facts.
    import json

    path, _ = make_bundle()
    root = tmp_path / "trust-root.json"
    root.write_text(json.dumps({
        "mediaType": "application/vnd.spanproof.trust-root.v1+json",
        "keys": [{"publicKey": keys.pub.read_text(), "validUntil": "2026-01-01T00:00:00Z"}]}))
    code, out, _ = run(capsys, "show", "--trust-root", root, path)
    assert code == 1
    header = out.partition("\n\n")[0].splitlines()
    assert header[0] == f"bundle    {path}"
    assert header[1] == f"trace     (unverified) {TRACE}  segment 0  records 7"
    assert header[2].startswith("sealed    (unverified) root_ended at ")
    assert header[3] == "complete  (unverified) yes, no declared losses"
    assert header[4].startswith("verdict   FAIL: ") and "not valid" in header[4]
    code, out, _ = run(capsys, "show", "--key", keys.pub, path)
    assert code == 0 and "(unverified)" not in out


def test_show_with_the_wrong_key_fails(capsys, keys: Keys, make_bundle):
    path, _ = make_bundle()
    code, out, _ = run(capsys, "show", "--key", keys.other_pub, path)
    assert code == 1
    assert "verdict   FAIL: signed by a key that is not trusted" in out
    assert "(no records to show)" in out


@pytest.mark.parametrize("data", [b"", b"garbage\n", b'{"a":1}'], ids=["empty", "garbage", "json"])
def test_show_of_a_malformed_file_fails_with_a_message(capsys, keys: Keys, tmp_path, data):
    path = tmp_path / "bad.spanproof.json"
    path.write_bytes(data)
    code, out, _ = run(capsys, "show", path)
    assert code == 1
    assert out.startswith(f"FAIL {path}: ")
    code, out, _ = run(capsys, "show", "--key", keys.pub, path)
    assert code == 1
    assert "verdict   FAIL: " in out


def test_show_unverified_of_a_truncated_bundle_shows_records_and_the_problem(
    capsys, make_bundle
):
    path, sealed = make_bundle()
    path.write_bytes(sealed.data[:-40])
    code, out, _ = run(capsys, "show", path)
    assert code == 1
    assert "problem   truncated" in out
    assert "handle_support_case" not in out  # the last record was cut off
    assert "receive_case" in out


@pytest.mark.parametrize("key", [False, True], ids=["unverified", "with-key"])
def test_show_of_a_bundle_quoting_a_huge_value_prints_a_cut_message(
    capsys, keys: Keys, make_bundle, key: bool
):
    # A header is anyone's: one naming a media type of millions of characters made a
    # FAIL line (or a problem line) of all of them, escaped.
    path, sealed = make_bundle()
    header, _, rest = sealed.data.partition(b'"mediaType":"')
    _, _, rest = rest.partition(b'"')
    path.write_bytes(header + b'"mediaType":"' + "\U0010ffff".encode() * 100_000 + b'"' + rest)
    code, out, _ = run(capsys, "show", *(("--key", keys.pub) if key else ()), path)
    assert code == 1
    assert "characters left out" in out
    assert max(len(line) for line in out.splitlines()) < 1200


def test_show_usage_errors(capsys, keys: Keys, tmp_path, make_bundle):
    assert run(capsys, "show", tmp_path / "absent.spanproof.json")[0] == 2
    assert run(capsys, "show", tmp_path)[0] == 2
    path, _ = make_bundle()
    code, _, err = run(capsys, "show", "--key", tmp_path / "absent.pub", path)
    assert code == 2 and err.startswith("spanproof: error: ")


# ----------------------------------------------------------------------- the tree


def _record(body: dict[str, Any], seq: int = 0) -> dict[str, Any]:
    return {"seq": str(seq), **body}


def test_children_are_ordered_by_start_time_not_chain_order():
    records = [
        _record(span_body(TRACE, CHAT, ROOT, "second", start_ms=5)),
        _record(span_body(TRACE, CLASSIFY, ROOT, "first", start_ms=1)),
        _record(span_body(TRACE, ROOT, "", "root", duration_ms=10)),
    ]
    assert [line.split(" [")[0] for line in render_tree(records).splitlines()] == [
        "root", "├── first", "└── second",
    ]


def test_parent_cycles_do_not_loop_and_every_record_is_shown_once():
    records = [
        _record(span_body(TRACE, CHAT, CLASSIFY, "a")),
        _record(span_body(TRACE, CLASSIFY, CHAT, "b")),
        _record(span_body(TRACE, ROOT, ROOT, "self")),
    ]
    lines = render_tree(records).splitlines()
    assert len(lines) == 3
    assert all("(parent cycle: shown here)" in line for line in lines if "──" not in line)


def test_deep_chains_do_not_hit_the_recursion_limit():
    depth = 3000
    ids = [f"{i + 1:016x}" for i in range(depth)]
    records = [
        _record(span_body(TRACE, ids[i], ids[i - 1] if i else "", f"s{i}", start_ms=i))
        for i in range(depth)
    ]
    lines = render_tree(records).splitlines()
    assert len(lines) == depth
    assert lines[-1].endswith(f"(depth {depth - 1}) s{depth - 1} [INTERNAL, OK, 1.000 ms]")
    assert max(len(line) for line in lines) < 250  # indentation stops growing
    assert lines[3].startswith("        └── s3 ")


def test_control_characters_from_the_bundle_are_escaped():
    body = span_body(TRACE, ROOT, "", "evil\x1b[2Jname\n", status=("STATUS_CODE_ERROR", "bad\rmsg"),
                     attributes={"gen_ai.request.model": "m\x07 x"})
    line = describe_span(body["span"])
    assert "\x1b" not in line and "\n" not in line and "\r" not in line and "\x07" not in line
    assert "evil\\x1b[2Jname\\n" in line
    assert 'model="m\\x07 x"' in line


def test_differing_request_and_response_models_are_both_shown():
    body = span_body(TRACE, ROOT, "", "chat", attributes={
        "gen_ai.request.model": "gpt-x", "gen_ai.response.model": "gpt-x-2026-01-01",
        "gen_ai.tool.name": "lookup",
    })
    line = describe_span(body["span"])
    assert line.endswith("tool=lookup request_model=gpt-x response_model=gpt-x-2026-01-01")


def test_orphan_marker_names_spans_whose_parent_is_not_certified():
    records = [_record(span_body(TRACE, CHAT, NOT_IN_BUNDLE, "orphan"))]
    assert render_tree(records).endswith("(parent not certified)")
    assert render_tree([]) == ""


def test_show_unverified_does_not_parse_a_record_line_over_a_mebibyte(
    capsys, make_bundle, monkeypatch: pytest.MonkeyPatch
):
    # A record line of tiny JSON values takes ~30 times its size parsed: a forged
    # 60 MB line took `show` without --key 1.9 GB, where `verify` parses such a line
    # only once it chains to a signed head.
    from spanproof.verifier import _cli

    path, sealed = make_bundle()
    header, _, _ = sealed.data.partition(b"\n")
    huge = b'{"a":[' + b"[]," * 400_000 + b"[]]}"
    path.write_bytes(header + b"\n" + huge + b"\n]}\n")
    parsed: list[int] = []
    loads = _cli.loads_canonical

    def measuring(raw: bytes, where: str) -> Any:
        parsed.append(len(raw))
        return loads(raw, where)

    monkeypatch.setattr(_cli, "loads_canonical", measuring)
    code, out, _ = run(capsys, "show", path)
    assert code == 1
    assert (f"problem   record 0: its {len(huge)} bytes, over 1048576, are not parsed "
            "unless the bundle verifies (give --key or --trust-root)") in out
    assert all(size <= 1024 * 1024 for size in parsed)
