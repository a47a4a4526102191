"""ExporterConfig: argument, then OTEL_EXPORTER_SPANPROOF_* variable, then default."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from exporter_support import FakeClock

from spanproof.exporter import (
    DEFAULT_SELECT_ATTRIBUTES,
    ExporterConfig,
    SigningKey,
    SpanproofSpanExporter,
)
from spanproof.exporter.config import ENV_PREFIX
from spanproof.verifier.errors import InvalidKey

ALL_VARIABLES = {
    "OUTPUT_DIR": ("/data/evidence", "output_dir", "/data/evidence"),
    "KEY_FILE": ("/keys/signing.key", "key_file", "/keys/signing.key"),
    "SELECT_ATTRIBUTES": ("a.b,c.d", "select_attributes", ("a.b", "c.d")),
    "SELECT_ALL": ("true", "select_all", True),
    "SEAL_GRACE_MS": ("250", "seal_grace", 0.25),
    "IDLE_TIMEOUT_MS": ("1500", "idle_timeout", 1.5),
    "MAX_RECORDS": ("7", "max_records", 7),
    "MAX_PENDING_TRACES": ("9", "max_pending_traces", 9),
    "SEALED_TRACE_MEMORY": ("0", "sealed_trace_memory", 0),
}


def test_defaults() -> None:
    config = ExporterConfig.from_env(environ={})
    assert config == ExporterConfig()
    assert config.output_dir == "./spanproof-bundles"
    assert config.key_file is None
    assert config.select_attributes == DEFAULT_SELECT_ATTRIBUTES
    assert config.select_all is False
    assert (config.seal_grace, config.idle_timeout) == (2.0, 30.0)
    assert config.max_records == 10_000
    assert config.max_pending_traces == 2048
    assert config.sealed_trace_memory == 65_536


@pytest.mark.parametrize("suffix", sorted(ALL_VARIABLES))
def test_each_variable_overrides_its_default(suffix: str) -> None:
    raw, field, expected = ALL_VARIABLES[suffix]
    config = ExporterConfig.from_env(environ={ENV_PREFIX + suffix: raw})
    assert getattr(config, field) == expected
    assert getattr(ExporterConfig.from_env(environ={}), field) != expected


def test_argument_beats_variable_and_none_falls_through() -> None:
    env = {ENV_PREFIX + "OUTPUT_DIR": "/from/env", ENV_PREFIX + "MAX_RECORDS": "5",
           ENV_PREFIX + "SELECT_ALL": "true"}
    config = ExporterConfig.from_env(environ=env, output_dir="/from/arg", max_records=None,
                                     select_all=False)
    assert config.output_dir == "/from/arg"
    assert config.max_records == 5
    assert config.select_all is False


def test_empty_variable_counts_as_unset() -> None:
    config = ExporterConfig.from_env(environ={ENV_PREFIX + "MAX_RECORDS": "  ",
                                              ENV_PREFIX + "OUTPUT_DIR": ""})
    assert config.max_records == 10_000
    assert config.output_dir == "./spanproof-bundles"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREFIX + "IDLE_TIMEOUT_MS", "42")
    assert ExporterConfig.from_env().idle_timeout == 0.042


@pytest.mark.parametrize(
    ("suffix", "raw", "field"),
    [
        ("SEAL_GRACE_MS", "fast", "seal_grace"),
        ("SEAL_GRACE_MS", "1.5", "seal_grace"),
        ("SEAL_GRACE_MS", "-1", "seal_grace"),
        # Beyond a year; 400 digits overflowed a float and aborted the configuration.
        ("SEAL_GRACE_MS", "31536000001", "seal_grace"),
        ("SEAL_GRACE_MS", "1" * 400, "seal_grace"),
        ("IDLE_TIMEOUT_MS", "1" * 400, "idle_timeout"),
        ("IDLE_TIMEOUT_MS", "30s", "idle_timeout"),
        ("MAX_RECORDS", "0", "max_records"),
        ("MAX_RECORDS", "ten", "max_records"),
        ("MAX_PENDING_TRACES", "-3", "max_pending_traces"),
        ("SEALED_TRACE_MEMORY", "-1", "sealed_trace_memory"),
        ("MAX_VALUE_BYTES", "1MiB", "max_value_bytes"),
        ("MAX_VALUE_BYTES", "100", "max_value_bytes"),
        ("SEALING_PROCESS", "maybe", "sealing_process"),
    ],
)
def test_malformed_tuning_variable_is_warned_about_and_the_default_used(
    suffix: str, raw: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As the OTel SDK does: raising here would abort opentelemetry-instrument's
    # whole configuration.  The other variables still apply.
    env = {ENV_PREFIX + suffix: raw, ENV_PREFIX + "OUTPUT_DIR": "/data/evidence"}
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        config = ExporterConfig.from_env(environ=env)
    assert getattr(config, field) == getattr(ExporterConfig(), field)
    assert config.output_dir == "/data/evidence"
    assert f"{ENV_PREFIX}{suffix}={raw!r} is not valid" in caplog.text
    assert "using the default" in caplog.text


@pytest.mark.parametrize(
    ("suffix", "raw"),
    [
        ("SELECT_ALL", "yes"),
        ("SELECT_ALL", "1"),
        ("WITNESS_URL", "witness.example:8080"),
        # Naming no key: no evidence span selected but those marked, or nothing hidden.
        ("SELECT_ATTRIBUTES", ","),
        ("SELECT_ATTRIBUTES", " , , "),
        ("REDACT_ATTRIBUTES", ","),
    ],
)
def test_malformed_variable_whose_default_changes_what_is_certified_is_an_error(
    suffix: str, raw: str
) -> None:
    with pytest.raises(ValueError, match=ENV_PREFIX + suffix):
        ExporterConfig.from_env(environ={ENV_PREFIX + suffix: raw})


def test_bad_argument_is_a_value_error_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"max_records.*MAX_RECORDS"):
        ExporterConfig.from_env(environ={}, max_records=0)
    with pytest.raises(ValueError, match="seal_grace"):
        ExporterConfig(seal_grace=float("nan"))
    with pytest.raises(ValueError, match="select_attributes"):
        ExporterConfig(select_attributes=("ok", ""))


@pytest.mark.parametrize("field", ["seal_grace", "idle_timeout"])
@pytest.mark.parametrize("value", [365 * 86_400 + 1, 1e300, 10**400])
def test_a_wait_beyond_a_year_is_refused(field: str, value: float) -> None:
    # 10**400 was taken, then overflowed a float at the first root or idle check,
    # failing every export (or killing the sealing process over and over).
    with pytest.raises(ValueError, match=rf"{field} .* must be a number of seconds from 0 to "
                                         r"31536000 \(a year\)"):
        ExporterConfig(**{field: value})


def test_a_wait_of_a_year_is_taken() -> None:
    config = ExporterConfig(seal_grace=365 * 86_400, idle_timeout=365 * 86_400.0)
    assert (config.seal_grace, config.idle_timeout) == (31_536_000, 31_536_000.0)
    from_env = ExporterConfig.from_env(environ={ENV_PREFIX + "SEAL_GRACE_MS": "31536000000"})
    assert from_env.seal_grace == 31_536_000.0


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="grace_period"):
        ExporterConfig.from_env(environ={}, grace_period=1.0)


def test_exporter_without_arguments_is_configured_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "evidence"
    monkeypatch.setenv(ENV_PREFIX + "OUTPUT_DIR", str(out))
    monkeypatch.setenv(ENV_PREFIX + "SEAL_GRACE_MS", "10")
    monkeypatch.delenv(ENV_PREFIX + "KEY_FILE", raising=False)
    with caplog.at_level(logging.WARNING):
        exporter = SpanproofSpanExporter()
    try:
        assert exporter.config.output_dir == str(out)
        assert exporter.config.seal_grace == 0.01
        # No key file configured: one is generated, once, beside the bundles.
        key_path = out / "keys" / "signing.key"
        assert key_path.is_file() and (out / "keys" / "signing.pub").is_file()
        assert os.stat(key_path).st_mode & 0o077 == 0
        assert "generated a signing key" in caplog.text
        second = SpanproofSpanExporter(clock=FakeClock())
        assert second.keyid == exporter.keyid
        second.shutdown()
    finally:
        exporter.shutdown()


def test_exporter_key_file_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanproof.exporter import SigningKey

    key = SigningKey.from_seed(bytes(32))
    key_dir = tmp_path / "k"
    priv, _pub = key.write(key_dir)
    monkeypatch.setenv(ENV_PREFIX + "KEY_FILE", priv)
    exporter = SpanproofSpanExporter(tmp_path / "out")
    try:
        assert exporter.keyid == key.keyid
        assert not (tmp_path / "out" / "keys").exists()
    finally:
        exporter.shutdown()


def test_exporter_starts_with_the_default_under_a_malformed_tuning_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "MAX_PENDING_TRACES", "many")
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        exporter = SpanproofSpanExporter(tmp_path, clock=FakeClock())
    try:
        assert exporter.config.max_pending_traces == ExporterConfig().max_pending_traces
        assert f"{ENV_PREFIX}MAX_PENDING_TRACES='many' is not valid" in caplog.text
    finally:
        exporter.shutdown()


def test_key_file_variable_that_cannot_be_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never replaced by a generated key: bundles would be signed by a key nobody trusts.
    monkeypatch.setenv(ENV_PREFIX + "KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(InvalidKey) as error:
        SpanproofSpanExporter(tmp_path / "out")
    # The path alone did not say which setting, or which variable, gave it.
    assert str(error.value) == (
        f"spanproof exporter setting key_file ({ENV_PREFIX}KEY_FILE): "
        f"{tmp_path / 'missing.key'}: cannot read private key (No such file or directory)")
    assert not (tmp_path / "out" / "keys").exists()


def test_witness_key_variable_that_cannot_be_read_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "WITNESS_KEY", str(tmp_path / "witness.pub"))
    with pytest.raises(InvalidKey, match=rf"^spanproof exporter setting witness_key "
                                         rf"\({ENV_PREFIX}WITNESS_KEY\): "):
        SpanproofSpanExporter(tmp_path / "out", signing_key=SigningKey.generate())


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_an_output_dir_that_is_a_file_is_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # With a key given, nothing else touches the directory before the first write:
    # every bundle would fail to be written, and be lost at shutdown.
    path = tmp_path / "bundles"
    path.write_text("not a directory")
    if how == "variable":
        monkeypatch.setenv(f"{ENV_PREFIX}OUTPUT_DIR", str(path))
    with pytest.raises(ValueError, match=f"output_dir \\({ENV_PREFIX}OUTPUT_DIR\\) must be a "
                                         "directory"):
        SpanproofSpanExporter(path if how == "argument" else None,
                              signing_key=SigningKey.generate())
    assert path.read_text() == "not a directory"


# ----------------------------------------------------------------- list settings


@pytest.mark.parametrize("setting", ["select_attributes", "redact_attributes"])
@pytest.mark.parametrize("value", ["llm.call", b"llm.call", bytearray(b"llm.call")])
def test_a_string_for_a_list_setting_is_a_type_error_showing_the_list(
    setting: str, value: object
) -> None:
    # Iterated, "llm.call" is the keys 'l', 'l', 'm', ...: the wanted span not
    # certified, unrelated ones certified, or a value meant to be hidden in clear.
    with pytest.raises(TypeError) as error:
        ExporterConfig.from_env(environ={}, **{setting: value})
    message = str(error.value)
    assert f"spanproof exporter setting {setting} ({ENV_PREFIX}{setting.upper()})" in message
    assert f"write {setting}=['llm.call']" in message
    with pytest.raises(TypeError, match=f"write {setting}="):
        ExporterConfig(**{setting: value})  # type: ignore[arg-type]


def test_a_comma_separated_string_is_shown_as_the_list_it_meant() -> None:
    with pytest.raises(TypeError, match=r"write redact_attributes=\['customer\.\*', 'a\.b'\]"):
        ExporterConfig.from_env(environ={}, redact_attributes="customer.*, a.b")
    with pytest.raises(TypeError, match=r"write redact_attributes=\[\]"):
        ExporterConfig.from_env(environ={}, redact_attributes="")


def test_any_iterable_of_strings_is_still_a_list() -> None:
    config = ExporterConfig.from_env(environ={}, select_attributes=["a.b"],
                                     redact_attributes=(k for k in ("c.*",)))
    assert config.select_attributes == ("a.b",)
    assert config.redact_attributes == ("c.*",)


@pytest.mark.parametrize("build", ["exporter", "processor", "receiver"])
@pytest.mark.parametrize("setting", ["select_attributes", "redact_attributes"])
def test_producers_refuse_a_string_for_a_list_setting(
    tmp_path: Path, build: str, setting: str
) -> None:
    from spanproof.exporter import EvidenceSpanProcessor
    from spanproof.exporter.receiver import Receiver

    kind = {"exporter": SpanproofSpanExporter, "processor": EvidenceSpanProcessor,
            "receiver": Receiver}[build]
    with pytest.raises(TypeError, match=f"write {setting}=\\['customer.email'\\]"):
        kind(tmp_path / "out", signing_key=SigningKey.generate(),  # type: ignore[operator]
             **{setting: "customer.email"})
    assert not (tmp_path / "out").exists()  # refused before anything was set up


# ------------------------------------------------------------------- path settings


def test_path_settings_take_path_objects(tmp_path: Path) -> None:
    config = ExporterConfig.from_env(environ={}, output_dir=tmp_path / "out",
                                     key_file=tmp_path / "k.key", witness_key=Path("w.pub"))
    assert (config.output_dir, config.key_file, config.witness_key) == (
        str(tmp_path / "out"), str(tmp_path / "k.key"), "w.pub")
    assert ExporterConfig(witness_key=Path("w.pub")).witness_key == "w.pub"  # type: ignore[arg-type]


def test_exporter_loads_a_witness_key_given_as_a_path(tmp_path: Path) -> None:
    from spanproof.witness.signing import generate_key_file

    private = tmp_path / "witness.key"
    generate_key_file(str(private))
    exporter = SpanproofSpanExporter(tmp_path / "out", signing_key=SigningKey.generate(),
                                     witness_key=Path(f"{private}.pub"))
    try:
        assert exporter.config.witness_key == f"{private}.pub"
    finally:
        exporter.shutdown()


# ------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("suffix", "raw"),
    [
        ("MAX_RECORDS", "1_000"),
        ("MAX_RECORDS", "+5"),
        ("MAX_RECORDS", "\u0663"),  # ARABIC-INDIC DIGIT THREE
        ("MAX_RECORDS", "\uff15"),  # FULLWIDTH DIGIT FIVE
        ("SEAL_GRACE_MS", "\u0663"),
        ("SEAL_GRACE_MS", "2_000"),
        ("IDLE_TIMEOUT_MS", "1e3"),
        ("SEALING_PROCESS", "1_0"),
        ("SEALING_PROCESS", "+3"),
        ("SEALING_PROCESS", "\u0662"),
    ],
)
def test_numbers_are_ascii_digits_only(
    suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    # int() takes these: SEAL_GRACE_MS=٣ was 3 ms, MAX_RECORDS=1_000 a thousand.
    field = {"MAX_RECORDS": "max_records", "SEAL_GRACE_MS": "seal_grace",
             "IDLE_TIMEOUT_MS": "idle_timeout", "SEALING_PROCESS": "sealing_process"}[suffix]
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        config = ExporterConfig.from_env(environ={ENV_PREFIX + suffix: raw})
    assert getattr(config, field) == getattr(ExporterConfig(), field)
    assert f"{ENV_PREFIX}{suffix}={raw!r} is not valid" in caplog.text
    assert "digits 0-9" in caplog.text


def test_numbers_may_be_surrounded_by_white_space() -> None:
    env = {ENV_PREFIX + "MAX_RECORDS": " 5 ", ENV_PREFIX + "SEALING_PROCESS": " 2\n",
           ENV_PREFIX + "SEAL_GRACE_MS": "\t250"}
    config = ExporterConfig.from_env(environ=env)
    assert (config.max_records, config.sealing_process, config.seal_grace) == (5, 2, 0.25)


@pytest.mark.parametrize(("suffix", "raw"), [("QUEUE_SIZE", "1_000"), ("QUEUE_SIZE", "\u0663"),
                                             ("QUEUE_BLOCK_MS", "+5"),
                                             ("QUEUE_BLOCK_MS", "\u0663")])
def test_processor_numbers_are_ascii_digits_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    suffix: str, raw: str,
) -> None:
    from spanproof.exporter import EvidenceSpanProcessor
    from spanproof.exporter.processor import DEFAULT_QUEUE_BLOCK, DEFAULT_QUEUE_SIZE

    monkeypatch.setenv(ENV_PREFIX + suffix, raw)
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.processor"):
        processor = EvidenceSpanProcessor(tmp_path, signing_key=SigningKey.generate())
    try:
        assert (processor._queue_size, processor._block) == (DEFAULT_QUEUE_SIZE,
                                                             DEFAULT_QUEUE_BLOCK)
        assert f"{ENV_PREFIX}{suffix}={raw!r} is not valid" in caplog.text
    finally:
        processor.shutdown()


@pytest.mark.parametrize("raw", [" , ", ",", " ,, "])
@pytest.mark.parametrize("suffix", ["SELECT_ATTRIBUTES", "REDACT_ATTRIBUTES"])
def test_an_error_quotes_the_value_as_set(suffix: str, raw: str) -> None:
    with pytest.raises(ValueError) as error:
        ExporterConfig.from_env(environ={ENV_PREFIX + suffix: raw})
    assert f"{ENV_PREFIX}{suffix} must list at least one key, got {raw!r}" in str(error.value)


# ------------------------------------------------------------ unknown variables


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("REDACT_ATTRIBUTE", "REDACT_ATTRIBUTES"),
        ("SEAL_GRACE", "SEAL_GRACE_MS"),
        ("KEYFILE", "KEY_FILE"),
        ("SELECT_ATTRIBUTS", "SELECT_ATTRIBUTES"),
        ("QUEUE_BLOCK", "QUEUE_BLOCK_MS"),
        ("select_all", "SELECT_ALL"),  # the prefix in another case is ours too
    ],
)
def test_a_misspelled_variable_is_warned_about_with_the_closest_name(
    name: str, suggested: str, caplog: pytest.LogCaptureFixture
) -> None:
    var = (ENV_PREFIX.lower() if name.islower() else ENV_PREFIX) + name
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        config = ExporterConfig.from_env(environ={var: "customer.*"})
    assert config == ExporterConfig()  # ignored, and start-up goes on
    (record,) = caplog.records
    assert record.getMessage() == (f"spanproof: {var} is not a spanproof setting and is "
                                   f"ignored; did you mean {ENV_PREFIX}{suggested}?")


@pytest.mark.parametrize("var", [
    "OTEL_SPANPROOF_REDACT_ATTRIBUTES", "SPANPROOF_REDACT_ATTRIBUTES",
    "OTEL_EXPORTER_SPANPROOFREDACT_ATTRIBUTES", "otel_exporter_spanproof__redact_attributes",
])
def test_a_setting_under_a_misspelled_prefix_is_warned_about(
    var: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the exact prefix was looked at: these were ignored without a word, and
    # the values they were set to hide were stored in clear.
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        config = ExporterConfig.from_env(environ={var: "customer.*"})
    assert config == ExporterConfig()
    (record,) = caplog.records
    assert record.getMessage() == (f"spanproof: {var} is not a spanproof setting and is "
                                   f"ignored; did you mean {ENV_PREFIX}REDACT_ATTRIBUTES?")


def test_another_programs_variable_holding_the_word_is_left_alone(
    caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        ExporterConfig.from_env(environ={"MY_SPANPROOF_DASHBOARD_URL": "http://x"})
    assert caplog.records == []


def test_an_unknown_variable_far_from_any_name_is_warned_about_without_a_guess(
    caplog: pytest.LogCaptureFixture
) -> None:
    var = ENV_PREFIX + "COLOUR"
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        ExporterConfig.from_env(environ={var: "blue", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    (record,) = caplog.records
    assert record.getMessage() == (f"spanproof: {var} is not a spanproof setting and is "
                                   "ignored (README, Configuration, lists the variables)")


def test_the_exporter_warns_once_per_unknown_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from spanproof.exporter import EvidenceSpanProcessor

    monkeypatch.setenv(ENV_PREFIX + "REDACT_ATTRIBUTE", "customer.*")
    monkeypatch.setenv(ENV_PREFIX + "SEAL_GRACE", "100")
    for kind in (SpanproofSpanExporter, EvidenceSpanProcessor):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            producer = kind(tmp_path / kind.__name__, signing_key=SigningKey.generate())
        producer.shutdown()
        warned = [r.getMessage() for r in caplog.records
                  if "not a spanproof setting" in r.getMessage()]
        assert len(warned) == 2, warned
        assert f"{ENV_PREFIX}REDACT_ATTRIBUTE " in warned[0]
        assert f"{ENV_PREFIX}SEAL_GRACE " in warned[1]


def _documented_variables() -> set[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return set(re.findall(rf"{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]", readme))


def test_every_variable_readme_documents_is_known(caplog: pytest.LogCaptureFixture) -> None:
    from spanproof.exporter.config import KNOWN_VARIABLES

    documented = _documented_variables()
    assert len(documented) >= 16  # the whole settings table and the processor's
    env = dict.fromkeys(documented, "")  # empty: unset, so only the names count
    with caplog.at_level(logging.WARNING, logger="spanproof.exporter.config"):
        ExporterConfig.from_env(environ=env)
    assert caplog.records == []
    assert documented == set(KNOWN_VARIABLES)  # and README documents every one read


def test_every_variable_read_is_known() -> None:
    # Every name with the prefix spelled out in the package's source is a variable
    # it reads (ENV_PREFIX + suffix included): none of them must warn.
    from spanproof.exporter.config import KNOWN_VARIABLES

    root = Path(__file__).resolve().parents[2]
    source = "\n".join(path.read_text(encoding="utf-8")
                       for folder in ("exporter", "verifier", "witness")
                       for path in (root / folder).rglob("*.py"))
    spelled = set(re.findall(rf"{ENV_PREFIX}([A-Z0-9_]*[A-Z0-9])", source))
    spelled |= set(re.findall(r'ENV_PREFIX \+ "([A-Z0-9_]+)"', source))
    assert {ENV_PREFIX + s for s in spelled} <= set(KNOWN_VARIABLES)


# ------------------------------------------------------------- output directory


@pytest.mark.parametrize("build", ["exporter", "processor", "receiver"])
@pytest.mark.parametrize("how", ["argument", "variable"])
def test_an_output_dir_that_cannot_be_created_is_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: str, how: str
) -> None:
    # Accepted, every bundle failed to be written later and was lost, and the
    # application exited 0.  (Under a regular file: the tests run as root, so a
    # directory without write permission would not do.)
    from spanproof.exporter import EvidenceSpanProcessor
    from spanproof.exporter.receiver import Receiver

    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"
    if how == "variable":
        monkeypatch.setenv(f"{ENV_PREFIX}OUTPUT_DIR", str(out))
    kind = {"exporter": SpanproofSpanExporter, "processor": EvidenceSpanProcessor,
            "receiver": Receiver}[build]
    with pytest.raises(ValueError) as error:
        kind(out if how == "argument" else None,  # type: ignore[operator]
             signing_key=SigningKey.generate())
    assert str(error.value) == (
        f"spanproof exporter setting output_dir ({ENV_PREFIX}OUTPUT_DIR) must be a directory "
        f"spanproof can create and write to, got {str(out)!r} (cannot create it: "
        "Not a directory)")


def test_a_journal_dir_that_cannot_be_created_is_refused_at_construction(
    tmp_path: Path
) -> None:
    # Accepted, the processor journaled nothing from the first span on: every span
    # was sealed from memory only, the durability it exists for gone, the
    # application started as if all were well.
    import threading

    from spanproof.exporter import EvidenceSpanProcessor

    (tmp_path / "afile").write_text("")
    journal = tmp_path / "afile" / "journal"
    threads = set(threading.enumerate())
    with pytest.raises(ValueError) as error:
        EvidenceSpanProcessor(tmp_path / "out", journal_dir=journal,
                              signing_key=SigningKey.generate())
    assert str(error.value) == (
        f"spanproof exporter setting journal_dir must be a directory spanproof can "
        f"create and write to, got {str(journal)!r} (cannot create it: Not a directory)")
    assert not [t for t in threading.enumerate() if t not in threads and t.is_alive()]


def test_a_missing_output_dir_is_created_at_construction_and_left_empty(
    tmp_path: Path
) -> None:
    out = tmp_path / "a" / "b"
    exporter = SpanproofSpanExporter(out, signing_key=SigningKey.generate())
    try:
        assert out.is_dir()
        assert list(out.iterdir()) == []  # no probe file left behind
    finally:
        exporter.shutdown()


def test_an_output_dir_that_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, permissions do not stop a write: what os.access says is what counts.
    out = tmp_path / "out"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if os.fspath(path) == str(out) else real_access(path, mode, **kw)))
    with pytest.raises(ValueError, match=r"got '.*out' \(cannot write to it\)"):
        SpanproofSpanExporter(out, signing_key=SigningKey.generate())


# An env file saved as Latin-1: Python reads b"kunde.stra\xdfe" as 'kunde.stra\udcdfe',
# an item that matched no attribute key, so the value it was meant to hide was stored
# in clear, without a word.
NOT_UTF8 = b"kunde.stra\xdfe".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("suffix", ["REDACT_ATTRIBUTES", "SELECT_ATTRIBUTES"])
def test_a_list_variable_item_that_is_not_utf8_is_an_error_naming_the_variable(
    suffix: str
) -> None:
    assert NOT_UTF8 == "kunde.stra\udcdfe"
    with pytest.raises(ValueError, match=ENV_PREFIX + suffix + r" holds .*not UTF-8"):
        ExporterConfig.from_env(environ={ENV_PREFIX + suffix: f"customer.*, {NOT_UTF8}"})


@pytest.mark.parametrize("field", ["redact_attributes", "select_attributes"])
def test_a_list_argument_item_with_a_lone_surrogate_is_a_value_error_naming_the_setting(
    field: str
) -> None:
    with pytest.raises(ValueError, match=rf"{field} \({ENV_PREFIX}.*lone surrogate"):
        ExporterConfig.from_env(environ={}, **{field: ["customer.*", NOT_UTF8]})
    with pytest.raises(ValueError, match=rf"{field} .*lone surrogate"):
        ExporterConfig(**{field: ("\ud83d",)})


def test_a_list_item_that_is_not_utf8_is_refused_before_anything_is_created(
    tmp_path: Path
) -> None:
    out = tmp_path / "evidence"
    with pytest.raises(ValueError, match="REDACT_ATTRIBUTES"):
        SpanproofSpanExporter(output_dir=str(out), redact_attributes=[NOT_UTF8])
    assert not out.exists()
    assert ExporterConfig(redact_attributes=("kunde.straße",)).redact_attributes == (
        "kunde.straße",)
