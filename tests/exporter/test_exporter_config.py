"""ExporterConfig: argument, then OTEL_EXPORTER_SPANPROOF_* variable, then default."""

from __future__ import annotations

import logging
import os
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
