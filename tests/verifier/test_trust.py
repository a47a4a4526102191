"""Trust roots (SPEC §6): key files, trust-root documents, validity windows, rotation."""

from __future__ import annotations

import json
import os
import pickle
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from odd_keys import unknown_type_private_pem, unknown_type_public_pem

from spanproof.exporter.keys import SigningKey
from spanproof.verifier import (
    TRUST_ROOT_MEDIA_TYPE,
    InvalidBundle,
    InvalidKey,
    Status,
    TrustedKey,
    TrustRoot,
    Verdict,
    key_id,
    load_public_key,
)
from spanproof.verifier.checkpoint import WitnessKey
from spanproof.verifier.keys import format_time, load_private_key, parse_time

if TYPE_CHECKING:
    from conftest import Kit

KEY_A = SigningKey.from_seed(b"\xaa" * 32)
KEY_B = SigningKey.from_seed(b"\xbb" * 32)
ROTATION = datetime(2026, 6, 1, tzinfo=timezone.utc)
EC_P256_PEM = (
    ec.derive_private_key(0x5EED, ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def _entry(key: SigningKey, **fields: Any) -> dict[str, Any]:
    return {"keyid": key.keyid, "publicKey": key.public_pem().decode(), **fields}


def _doc(*entries: dict[str, Any], media_type: str = TRUST_ROOT_MEDIA_TYPE) -> bytes:
    return json.dumps({"mediaType": media_type, "keys": list(entries)}).encode()


def _rotation_root() -> TrustRoot:
    # A signed until the rotation (then expired); B from the rotation on.
    return TrustRoot.from_json(
        _doc(
            _entry(
                KEY_A,
                validFrom="2025-01-01T00:00:00Z",
                validUntil=format_time(ROTATION),
                comment="retired at rotation",
            ),
            _entry(KEY_B, validFrom=format_time(ROTATION)),
        ),
        "trust.json",
    )


def test_trust_root_with_two_keys_and_windows() -> None:
    root = _rotation_root()
    a, b = root.keys
    assert (a.keyid, b.keyid) == (KEY_A.keyid, KEY_B.keyid)
    assert a.valid_from == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert a.valid_until == ROTATION and b.valid_from == ROTATION and b.valid_until is None
    assert a.source == "trust.json: keys[0]"
    assert a.valid_at(ROTATION - timedelta(microseconds=1)) and not a.valid_at(ROTATION)
    assert b.valid_at(ROTATION) and not b.valid_at(ROTATION - timedelta(microseconds=1))


def test_keyid_is_optional_and_derived_from_the_key() -> None:
    entry = _entry(KEY_A)
    del entry["keyid"]
    (key,) = TrustRoot.from_json(_doc(entry)).keys
    assert key.keyid == KEY_A.keyid == key_id(KEY_A.private_key.public_key())
    assert key.valid_from is None and key.valid_until is None


def _with_top_level(**members: Any) -> bytes:
    # SPEC §6.2: besides mediaType and keys, only a comment string may stand at the top.
    doc = json.loads(_doc(_entry(KEY_A)))
    doc.update(members)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _doc(_entry(KEY_A), media_type="application/vnd.spanproof.trust-root.v2+json"),
            "mediaType must be 'application/vnd.spanproof.trust-root.v1+json' "
            "(got 'application/vnd.spanproof.trust-root.v2+json')",
        ),
        (json.dumps({"keys": []}).encode(), "mediaType must be"),
        (json.dumps([1]).encode(), "mediaType must be"),
        (_doc(_entry(KEY_A, keyid=KEY_B.keyid)), "does not match the key"),
        (_doc({"publicKey": EC_P256_PEM}), "key is not Ed25519"),
        (
            _doc({"publicKey": "-----BEGIN PUBLIC KEY-----\nnot b64\n-----END PUBLIC KEY-----\n"}),
            "not a PEM public key",
        ),
        (_doc({"publicKey": KEY_A.public_pem().decode()[:60]}), "not a PEM public key"),
        (_doc({"publicKey": KEY_A.private_pem().decode()}), "not a PEM public key"),
        (_doc(), "'keys' must be a non-empty array"),
        (_doc({"keyid": KEY_A.keyid}), "needs a 'publicKey' PEM string"),
        (_doc(_entry(KEY_A, trusted=True)), "unknown fields ['trusted']"),
        (_doc(_entry(KEY_A, validFrom="2026-01-01")), "validFrom: must be an RFC 3339 UTC time"),
        (_doc(_entry(KEY_A, validUntil="soon Z")), "validUntil: must be an RFC 3339 UTC time"),
        (
            _doc(_entry(KEY_A, validUntil="2026-06-01T00:00:00+02:00")),
            "validUntil: must be an RFC 3339 UTC time",
        ),
        (
            _doc(_entry(KEY_A, validUntil="\uff12\uff10\uff12\uff16-06-01T00:00:00Z")),
            "validUntil: must be an RFC 3339 UTC time",
        ),
        (_doc(_entry(KEY_A, validFrom="2026-02-30T00:00:00Z")), "is not a valid date and time"),
        (b'{"mediaType":"x","mediaType":"y","keys":[]}', "duplicate JSON key 'mediaType'"),
        (b"\xff", "not valid UTF-8"),
        (b'{"mediaType":' + b"1" * 5000 + b'}', "integer literal too long (over 4300 digits)"),
        (_doc({"publicKey": unknown_type_public_pem().decode()}), "key is not Ed25519"),
        (_with_top_level(trusted=True), "trust.json: unknown fields ['trusted']"),
        (_with_top_level(comment=["rotated"]), "trust.json: comment must be a string"),
        (_doc(_entry(KEY_A, comment=1)), "trust.json: keys[0].comment: must be a string"),
    ],
    ids=[
        "unknown_media_type_fail",
        "missing_media_type_fail",
        "not_an_object_fail",
        "keyid_mismatch_fail",
        "ec_p256_key_fail",
        "malformed_pem_fail",
        "truncated_pem_fail",
        "private_key_pem_fail",
        "no_keys_fail",
        "missing_public_key_fail",
        "unknown_field_fail",
        "valid_from_without_time_fail",
        "valid_until_not_a_time_fail",
        "valid_until_with_offset_fail",
        "valid_until_fullwidth_digits_fail",
        "valid_from_impossible_date_fail",
        "duplicate_json_key_fail",
        "invalid_utf8_fail",
        "integer_literal_too_long_fail",
        "key_type_openssl_does_not_know_fail",
        "unknown_top_level_member_fail",
        "top_level_comment_not_a_string_fail",
        "entry_comment_not_a_string_fail",
    ],
)
def test_trust_root_rejects(data: bytes, message: str) -> None:
    with pytest.raises(InvalidKey) as info:
        TrustRoot.from_json(data, "trust.json")
    assert message in str(info.value)
    assert str(info.value).startswith("trust.json")
    assert isinstance(info.value, ValueError)


def test_load_public_key_rejects_non_ed25519() -> None:
    with pytest.raises(InvalidKey, match=r"key\.pem: key is not Ed25519"):
        load_public_key(EC_P256_PEM.encode(), "key.pem")


PEM_A = KEY_A.public_pem()
PEM_B = KEY_B.public_pem()
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _non_canonical_base64(pem: bytes) -> bytes:
    """*pem* with the unused low bits of its last base64 digit set (it decodes the same)."""
    padded = pem.index(b"=")
    index = B64.index(pem[padded - 1 : padded]) | 1
    return pem[: padded - 1] + B64[index : index + 1] + pem[padded:]


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (PEM_A + PEM_B, "2 PEM blocks; a key file holds exactly one"),
        (PEM_B + PEM_A, "2 PEM blocks; a key file holds exactly one"),
        (KEY_A.private_pem() + PEM_A, "2 PEM blocks; a key file holds exactly one"),
        (b"trust this key:\n" + PEM_A, "text before -----BEGIN PUBLIC KEY-----"),
        (PEM_A + b"and more\n", "text after -----END PUBLIC KEY-----"),
        (PEM_A.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
         "a PEM header 'Proc-Type' in the block"),
        (PEM_A.replace(b"-----\n", b"-----\n\n", 1), "line 1 of the block is not base64"),
        (PEM_A.replace(b"-----\nMC", b"-----\nM C", 1), "line 1 of the block is not base64"),
        (PEM_A.replace(b"-----END", b"AA==\n-----END"), "the block is not valid base64"),
        (_non_canonical_base64(PEM_A), "the block is not canonical padded base64"),
        (PEM_A.replace(b"-----END", b"-----END PRIVATE KEY-----\n-----END"),
         "line 2 of the block is not base64"),
        (PEM_A.replace(b"-----END PUBLIC KEY-----\n", b""),
         "no -----END PUBLIC KEY----- line after -----BEGIN PUBLIC KEY-----"),
        (KEY_A.private_pem(),
         "no -----BEGIN PUBLIC KEY----- line; found '-----BEGIN PRIVATE KEY-----'"),
        (PEM_A.replace(b"MC", b"\xc3\xa9", 1), "not ASCII text"),
        (b"  " + PEM_A, "no -----BEGIN PUBLIC KEY----- line; found '  -----BEGIN PUBLIC"),
        (PEM_A.replace(b"-----\nMC", b"-----\n\tMC", 1), "line 1 of the block is not base64"),
        (PEM_A.replace(b"\n-----END", b"\n -----END"),
         "no -----END PUBLIC KEY----- line after -----BEGIN PUBLIC KEY-----"),
        (PEM_A.replace(b"\n", b"\x0b\n"), "no -----BEGIN PUBLIC KEY----- line"),
        (b"\n".join(line + b"\x0c" if n == 1 else line
                    for n, line in enumerate(PEM_A.split(b"\n"))),
         "line 1 of the block is not base64"),
        (b"\x0b\n" + PEM_A, "text before -----BEGIN PUBLIC KEY-----"),
        (PEM_A + b"\x1c\n", "text after -----END PUBLIC KEY-----"),
    ],
    ids=[
        "two_blocks_first_trusted_fail",
        "two_blocks_second_trusted_fail",
        "private_then_public_block_fail",
        "text_before_block_fail",
        "text_after_block_fail",
        "pem_headers_inside_block_fail",
        "blank_line_inside_block_fail",
        "space_inside_base64_line_fail",
        "base64_padding_inside_block_fail",
        "base64_unused_bits_set_fail",
        "end_line_of_another_label_inside_block_fail",
        "no_end_line_fail",
        "private_key_block_fail",
        "not_ascii_fail",
        "begin_line_indented_fail",
        "base64_line_indented_fail",
        "end_line_indented_fail",
        "lines_ending_in_vertical_tab_fail",
        "base64_line_ending_in_form_feed_fail",
        "vertical_tab_line_before_block_fail",
        "separator_control_line_after_block_fail",
    ],
)
def test_load_public_key_is_strict_pem(pem: bytes, message: str) -> None:
    # A lenient PEM reader trusted the first of two concatenated keys (`cat a.pub
    # b.pub` trusted a only) and skipped text and headers around it (SPEC §6.2).
    with pytest.raises(InvalidKey) as info:
        load_public_key(pem, "key.pem")
    assert str(info.value).startswith("key.pem: not a PEM public key (")
    assert message in str(info.value)


def test_two_keys_in_one_pem_file_fail(tmp_path: Path) -> None:
    (tmp_path / "both.pub").write_bytes(PEM_A + PEM_B)
    with pytest.raises(InvalidKey, match="2 PEM blocks"):
        TrustRoot.from_pem_files([str(tmp_path / "both.pub")])
    with pytest.raises(InvalidKey, match=re.escape("keys[0]: not a PEM public key (2 PEM")):
        TrustRoot.from_json(_doc({"publicKey": (PEM_A + PEM_B).decode()}), "trust.json")


@pytest.mark.parametrize(
    "pem",
    [
        PEM_A,
        PEM_A.replace(b"\n", b"\r\n"),
        PEM_A.rstrip(b"\n"),
        b"\n  \n" + PEM_A + b"\n\t\n",
        PEM_A.replace(b"\n", b"  \n"),
        PEM_A.replace(b"\n", b" \t \r\n"),
    ],
    ids=["as_written", "crlf", "no_final_newline", "blank_lines_around", "trailing_spaces",
         "trailing_spaces_and_tabs_then_crlf"],
)
def test_load_public_key_accepts_trailing_spaces_tabs_and_blank_lines(pem: bytes) -> None:
    # SPEC §6.1: spaces, tabs and CRs at the end of a line are all a reader ignores.
    assert key_id(load_public_key(pem, "key.pem")) == KEY_A.keyid


def test_load_public_key_rejects_a_key_type_openssl_does_not_know() -> None:
    with pytest.raises(InvalidKey, match=r"key\.pem: key is not Ed25519 .*1\.3\.101\.99"):
        load_public_key(unknown_type_public_pem(), "key.pem")


def test_load_private_key_rejects_a_key_type_openssl_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(unknown_type_private_pem())
    path.chmod(0o600)
    with pytest.raises(InvalidKey, match=r"signing\.key: private key is not Ed25519"):
        load_private_key(path)


@pytest.mark.timeout(60)  # the defect was a reader blocked forever on the pipe
def test_load_private_key_from_a_named_pipe_nobody_writes_fails_without_blocking(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "signing.key", 0o600)
    with pytest.raises(InvalidKey, match=r"signing\.key: empty, no private key in it"):
        load_private_key(tmp_path / "signing.key")


def test_load_private_key_reads_a_device_no_further_than_the_limit(tmp_path: Path) -> None:
    (tmp_path / "signing.key").symlink_to("/dev/zero")
    with pytest.raises(InvalidKey, match=r"signing\.key: cannot read private key "
                                         r"\(larger than 1048576 bytes\)"):
        load_private_key(tmp_path / "signing.key")


def test_pem_files(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_bytes(KEY_A.public_pem())
    (tmp_path / "b.pub").write_bytes(KEY_B.public_pem())
    root = TrustRoot.from_pem_files([str(tmp_path / "a.pub"), str(tmp_path / "b.pub")])
    assert [k.keyid for k in root.keys] == [KEY_A.keyid, KEY_B.keyid]
    assert root.keys[0].source == str(tmp_path / "a.pub")


def test_pem_file_missing_or_wrong(tmp_path: Path) -> None:
    with pytest.raises(InvalidKey, match="cannot read key file"):
        TrustRoot.from_pem_files([str(tmp_path / "absent.pub")])
    (tmp_path / "ec.pub").write_text(EC_P256_PEM)
    with pytest.raises(InvalidKey, match="key is not Ed25519"):
        TrustRoot.from_pem_files([str(tmp_path / "ec.pub")])


def test_same_key_in_two_pem_files_fail(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_bytes(KEY_A.public_pem())
    (tmp_path / "again.pub").write_bytes(KEY_A.public_pem())
    with pytest.raises(InvalidKey, match=re.escape(
        f"key {KEY_A.keyid} is trusted twice, from {tmp_path / 'a.pub'} and from "
        f"{tmp_path / 'again.pub'}"
    )):
        TrustRoot.from_pem_files([str(tmp_path / "a.pub"), str(tmp_path / "again.pub")])


def test_same_key_from_two_trust_roots_fail() -> None:
    # Each file alone is usable; together they give one key two windows, and which
    # one applied depended on the order the keys were joined in (SPEC §6.2).
    retired = TrustRoot.from_json(_doc(_entry(KEY_A, validUntil="2020-01-01T00:00:00Z")), "old")
    current = TrustRoot.from_json(_doc(_entry(KEY_A), _entry(KEY_B)), "new")
    for first, second in ((retired, current), (current, retired)):
        with pytest.raises(InvalidKey, match=re.escape(
            f"key {KEY_A.keyid} is trusted twice, from {first.keys[0].source} and from "
            f"{second.keys[0].source}"
        )):
            TrustRoot.from_keys([*first.keys, *second.keys])


def test_same_key_twice_in_one_trust_root_fail() -> None:
    doc = _doc(_entry(KEY_A), _entry(KEY_A, validUntil="2020-01-01T00:00:00Z"))
    with pytest.raises(InvalidKey, match=re.escape(
        f"key {KEY_A.keyid} is trusted twice, from root.json: keys[0] and from "
        "root.json: keys[1]"
    )):
        TrustRoot.from_json(doc, "root.json")


def test_empty_trust_root_is_a_caller_mistake() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        TrustRoot.from_keys([])


def test_key_id_hint_only_orders_the_search() -> None:
    root = _rotation_root()
    assert [k.keyid for k in root.ordered_for(KEY_B.keyid)] == [KEY_B.keyid, KEY_A.keyid]
    assert [k.keyid for k in root.ordered_for("unknown")] == [KEY_A.keyid, KEY_B.keyid]
    assert len(root.ordered_for(None)) == 2


# --- rotation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signer", "sealed_at", "verdict"),
    [
        (KEY_A, ROTATION - timedelta(days=30), Verdict.OK),
        (KEY_B, ROTATION + timedelta(days=30), Verdict.OK),
        (KEY_B, ROTATION, Verdict.OK),
        (KEY_A, ROTATION, Verdict.FAIL),
        (KEY_A, ROTATION + timedelta(days=30), Verdict.FAIL),
        (KEY_B, ROTATION - timedelta(days=30), Verdict.FAIL),
        (KEY_A, datetime(2024, 12, 31, tzinfo=timezone.utc), Verdict.FAIL),
    ],
    ids=[
        "a_in_its_window",
        "b_in_its_window",
        "b_at_rotation",
        "a_at_rotation_expired_fail",
        "a_after_rotation_expired_fail",
        "b_before_rotation_fail",
        "a_before_its_window_fail",
    ],
)
def test_rotation(kit: Kit, signer: SigningKey, sealed_at: datetime, verdict: Verdict) -> None:
    data = kit.seal(signer=signer, sealed_at=sealed_at).data
    report = kit.check(data, _rotation_root())
    assert report.verdict is verdict, report.reason
    assert report.signer_keyid == signer.keyid
    if verdict is Verdict.FAIL:
        check = next(c for c in report.checks if c.status is Status.FAIL)
        assert check.name == "key-validity"
        assert "outside its trust-root window" in check.message


def test_same_key_without_window_verifies_any_time(kit: Kit) -> None:
    data = kit.seal(signer=KEY_A, sealed_at=ROTATION + timedelta(days=3650)).data
    root = TrustRoot.from_keys([TrustedKey.from_public_key(KEY_A.private_key.public_key())])
    assert kit.check(data, root).verdict is Verdict.OK


# Pickled for `spanproof verify --jobs`: cryptography's key objects cannot be.


def test_trusted_and_witness_keys_survive_pickling() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    key = TrustedKey(private.public_key(), key_id(private.public_key()), "root.json: keys[0]",
                     datetime(2026, 1, 1, tzinfo=timezone.utc),
                     datetime(2027, 1, 1, tzinfo=timezone.utc))
    root = TrustRoot.from_keys([key])
    copy = pickle.loads(pickle.dumps(root))
    assert copy == root
    (copied,) = copy.keys
    assert copied.keyid == key.keyid and copied.valid_until == key.valid_until
    assert copied.verify(private.sign(b"message"), b"message")
    assert not copied.verify(private.sign(b"message"), b"other")
    pinned = WitnessKey(private.public_key(), "trust.test/witness", "witness.vkey")
    assert pickle.loads(pickle.dumps(pinned)) == pinned
    assert pickle.loads(pickle.dumps(pinned)).vkey() == pinned.vkey()


def test_a_pickled_trusted_key_derives_its_key_id_again() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    trusted = TrustedKey.from_public_key(private.public_key(), "trusted")
    assert pickle.loads(pickle.dumps(trusted)).keyid == key_id(private.public_key())


# --- TrustedKey built from Python: checked as a trust-root entry is (SPEC §6.1, §6.2) ---


def test_trusted_key_with_a_key_id_not_its_own_fail() -> None:
    public = KEY_A.private_key.public_key()
    for keyid in ("0" * 64, KEY_B.keyid, KEY_A.keyid.upper()):
        with pytest.raises(InvalidKey, match=re.escape(
            f"mine: key id {keyid!r} is not the key's own ({KEY_A.keyid}); a key id is "
            "derived from the key, never assigned (SPEC §6.1)"
        )):
            TrustedKey(public, keyid, "mine")


def test_same_key_twice_under_another_keys_id_picks_no_window_fail(kit: Kit) -> None:
    # Retired under its own key id and trusted again under KEY_B's: the unsigned key id
    # hint of a bundle would pick which of the two windows applied (FAIL or OK), and
    # the report would name KEY_B's key id for KEY_A's signature.
    public = KEY_A.private_key.public_key()
    retired = TrustedKey(public, KEY_A.keyid, "retired", valid_until=ROTATION)
    with pytest.raises(InvalidKey, match="is not the key's own"):
        TrustedKey(public, KEY_B.keyid, "renamed")
    data = kit.seal(signer=KEY_A, sealed_at=ROTATION + timedelta(days=1)).data
    assert kit.check(data, TrustRoot.from_keys([retired])).verdict is Verdict.FAIL


def test_trust_root_finds_the_same_key_by_its_bytes() -> None:
    public = KEY_A.private_key.public_key()
    with pytest.raises(InvalidKey, match=re.escape(
        f"key {KEY_A.keyid} is trusted twice, from retired and from again"
    )):
        TrustRoot.from_keys([TrustedKey(public, KEY_A.keyid, "retired", valid_until=ROTATION),
                             TrustedKey.from_public_key(public, "again")])


def test_trust_root_of_something_else_than_trusted_keys_is_a_caller_mistake() -> None:
    with pytest.raises(TypeError, match="a trust root holds TrustedKey entries, not"):
        TrustRoot.from_keys([KEY_A.private_key.public_key()])  # type: ignore[list-item]


def test_trusted_key_of_another_type_is_a_caller_mistake() -> None:
    with pytest.raises(TypeError, match="TrustedKey key must be an Ed25519PublicKey"):
        TrustedKey(KEY_A.private_key, KEY_A.keyid, "mine")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["valid_from", "valid_until"])
def test_trusted_key_window_without_time_zone_fail(field: str) -> None:
    # Compared with the bundle's sealedAt, a naive bound made check_bundle raise.
    with pytest.raises(InvalidKey, match=re.escape(
        f"mine: {field} 2026-06-01T00:00:00 has no time zone"
    )):
        TrustedKey(KEY_A.private_key.public_key(), KEY_A.keyid, "mine",
                   **{field: datetime(2026, 6, 1)})


@pytest.mark.parametrize("value", ["2026-06-01T00:00:00Z", 1780272000, date(2026, 6, 1)],
                         ids=["string", "number", "date"])
def test_trusted_key_window_not_a_datetime_is_a_caller_mistake(value: Any) -> None:
    with pytest.raises(TypeError, match=r"mine: TrustedKey valid_until must be a datetime "
                                        r"with a time zone or None, not "):
        TrustedKey(KEY_A.private_key.public_key(), KEY_A.keyid, "mine", valid_until=value)


@pytest.mark.parametrize("length", [timedelta(0), timedelta(days=-1)], ids=["empty", "reversed"])
def test_trusted_key_window_holding_no_time_fail(length: timedelta) -> None:
    until = ROTATION + length
    with pytest.raises(InvalidKey, match=re.escape(
        f"mine: valid_from {format_time(ROTATION)} is not before valid_until "
        f"{format_time(until)}: the key would be valid at no time (SPEC §6.2)"
    )):
        TrustedKey(KEY_A.private_key.public_key(), KEY_A.keyid, "mine", ROTATION, until)


def test_trusted_key_window_past_the_calendars_edge_in_utc_is_open() -> None:
    # datetime.max in New York is past the calendar in UTC: kept in UTC, it raised
    # OverflowError, where such a bound was taken before windows were checked.
    west, east = timezone(timedelta(hours=-5)), timezone(timedelta(hours=1))
    key = TrustedKey(KEY_A.private_key.public_key(), KEY_A.keyid, "mine",
                     valid_from=datetime.min.replace(tzinfo=east),
                     valid_until=datetime.max.replace(tzinfo=west))
    assert key.valid_until is None and key.valid_from is None  # open on both sides
    assert key.valid_at(ROTATION)
    assert key.valid_at(datetime.max.replace(tzinfo=timezone.utc))  # the last instant too


def test_trusted_key_window_in_another_zone_is_kept_in_utc(kit: Kit) -> None:
    paris = timezone(timedelta(hours=2))
    key = TrustedKey(KEY_A.private_key.public_key(), KEY_A.keyid, "mine",
                     valid_until=datetime(2026, 6, 1, 2, 0, tzinfo=paris))
    assert key.valid_until == ROTATION and key.valid_until.tzinfo is timezone.utc
    root = TrustRoot.from_keys([key])
    assert kit.check(kit.seal(signer=KEY_A, sealed_at=ROTATION).data, root).verdict \
        is Verdict.FAIL
    before = ROTATION - timedelta(microseconds=1)
    assert kit.check(kit.seal(signer=KEY_A, sealed_at=before).data, root).verdict is Verdict.OK


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_999, timezone.utc)),
        ("2016-12-31T23:59:60.5Z", datetime(2016, 12, 31, 23, 59, 59, 999_999, timezone.utc)),
        # At 23:59 of any date (SPEC §5.3: no table of leap seconds is kept).
        ("2026-03-02T23:59:60Z", datetime(2026, 3, 2, 23, 59, 59, 999_999, timezone.utc)),
    ],
)
def test_parse_time_reads_a_leap_second_as_the_last_microsecond(
    text: str, expected: datetime
) -> None:
    parsed = parse_time(text, "sealedAt")
    assert parsed == expected
    day = expected.date()
    assert parse_time(f"{day}T23:59:59.999998Z", "x") < parsed
    assert parsed < parse_time(f"{day + timedelta(days=1)}T00:00:00Z", "x")


@pytest.mark.parametrize(
    "text",
    ["2016-12-31T12:00:60Z", "2016-12-31T23:59:61Z", "0000-01-01T00:00:00Z",
     "2026-02-30T00:00:00Z"],
)
def test_parse_time_refuses_what_no_instant_is(text: str) -> None:
    with pytest.raises(InvalidBundle, match="not a valid date and time"):
        parse_time(text, "sealedAt")


@pytest.mark.parametrize("year", [1, 9, 10, 99, 100, 999, 1000, 2026, 9999])
def test_format_time_writes_a_four_digit_year_below_1000(year: int) -> None:
    # strftime's %Y wrote the year 999 as "999" (glibc does not pad it), which is not
    # the YYYY of SPEC §5.3: the producer signed such a sealedAt, and the verifier
    # refused its own bundle; show and report displayed it so.
    when = datetime(year, 3, 2, 9, 30, 0, 250_000, timezone.utc)
    text = format_time(when)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", text), text
    assert text.startswith(f"{year:04d}-03-02T")
    assert parse_time(text, "sealedAt") == when
