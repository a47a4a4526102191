"""README's checkable facts against the code: the settings tables' variables,
constructor arguments and defaults, and every flag README gives a ``spanproof``
command.  A platform engineer copies these; a default or a flag that drifted
from the code is a setting that silently does something else."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from spanproof.exporter import EvidenceSpanProcessor, ExporterConfig, SpanproofSpanExporter
from spanproof.exporter.config import ENV_PREFIX, KNOWN_VARIABLES
from spanproof.exporter.processor import DEFAULT_QUEUE_BLOCK, DEFAULT_QUEUE_SIZE
from spanproof.exporter.receiver import Receiver
from spanproof.verifier._cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

# | `OTEL_EXPORTER_SPANPROOF_X` | `argument` | default | meaning |
_ROW = re.compile(r"^\| (?:`(OTEL_EXPORTER_SPANPROOF_[A-Z_]+)`|—) \| `([a-z_]+)` \| ([^|]+) \|",
                  re.MULTILINE)


def _rows() -> list[tuple[str | None, str, str]]:
    return [(var or None, arg, default.strip()) for var, arg, default in _ROW.findall(README)]


def _documented_default(var: str | None, text: str) -> Any:
    """The value README's default column means, in the constructor's units."""
    if text == "unset":
        return None
    literal = text.strip("`")
    if literal in ("true", "false"):
        return literal == "true"
    if literal.isdigit():
        number = int(literal)
        return number / 1000 if var is not None and var.endswith("_MS") else number
    if "," in literal:
        return tuple(literal.split(","))
    return literal


def test_the_settings_tables_are_found() -> None:
    documented = {var for var, _, _ in _rows() if var is not None}
    assert documented == set(KNOWN_VARIABLES)  # the exporter's table and the processor's


@pytest.mark.parametrize(("var", "arg", "default"),
                         [row for row in _rows() if row[1] in
                          {f.name for f in dataclasses.fields(ExporterConfig)}])
def test_exporter_setting_default_is_the_one_readme_gives(
    var: str, arg: str, default: str
) -> None:
    field = {f.name: f for f in dataclasses.fields(ExporterConfig)}[arg]
    assert var == ENV_PREFIX + _env_suffix(arg)
    expected = _documented_default(var, default)
    actual = field.default
    if arg == "redact_attributes":
        actual = actual or None  # () commits nothing: README's "unset"
    if arg == "sealing_process":
        actual = bool(actual)  # 0: README's "false"
    assert actual == expected, f"{var}: README says {default}, the code {field.default!r}"


def _env_suffix(arg: str) -> str:
    from spanproof.exporter.config import _ENV

    return str(_ENV[arg][0])


def test_processor_settings_are_the_ones_readme_gives() -> None:
    rows = {arg: (var, default) for var, arg, default in _rows()}
    assert _documented_default(*rows["queue_size"]) == DEFAULT_QUEUE_SIZE
    assert _documented_default(*rows["queue_block"]) == DEFAULT_QUEUE_BLOCK
    assert rows["journal_dir"] == (None, "`<OUTPUT_DIR>/journal`")


@pytest.mark.parametrize("build", [SpanproofSpanExporter, EvidenceSpanProcessor, Receiver],
                         ids=lambda build: build.__name__)
def test_every_constructor_argument_readme_names_is_taken(build: type) -> None:
    # The exporter's table applies to the processor and the receiver too ("takes the
    # same settings"); journal_dir and the queue settings are the processor's.
    parameters = inspect.signature(build).parameters
    taken = set(parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        taken |= set(inspect.signature(SpanproofSpanExporter).parameters)  # forwarded
    processor_only = {"queue_size", "queue_block"}
    named = {arg for _, arg, _ in _rows()}
    if build is not EvidenceSpanProcessor:
        named -= processor_only
    if build is SpanproofSpanExporter:
        named.discard("journal_dir")
    if build is Receiver:
        named.discard("sealing_process")  # the exporter's; the receiver's is plural
    assert named <= taken, sorted(named - taken)


# ----------------------------------------------------------------- command flags


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> dict[str, argparse.ArgumentParser]:
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, sub in _subcommands(build_parser()).items():
        commands[name] = sub
        for inner, parser in _subcommands(sub).items():
            commands[f"{name} {inner}"] = parser
    return commands


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _invocations() -> list[tuple[str, str]]:
    """(command, the rest of its line) for each ``spanproof COMMAND ...`` in README's
    code spans and shell blocks (lines continued with a backslash joined)."""
    snippets = re.findall(r"`([^`\n]*(?:\n[^`\n]*){0,3})`", README)
    for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL):
        snippets += block.replace("\\\n", " ").splitlines()
    commands = _commands()
    found = []
    for snippet in snippets:
        text = " ".join(snippet.split())
        for match in re.finditer(r"spanproof ((?:witness )?[a-z]+)((?: +\S+)*)", text):
            command = match.group(1)
            if command not in commands:
                continue
            rest = re.split(r" spanproof | \| | && | ; | #", match.group(2))[0]
            found.append((command, rest))
    return found


def test_readme_shows_every_command() -> None:
    shown = {command for command, _ in _invocations()}
    assert set(_commands()) - {"witness"} <= shown


@pytest.mark.parametrize(("command", "rest"), _invocations())
def test_every_flag_readme_gives_a_command_is_one_it_takes(command: str, rest: str) -> None:
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest))
    unknown = flags - _options(_commands()[command])
    assert not unknown, f"spanproof {command}{rest}: {sorted(unknown)}"


def test_every_flag_a_command_takes_is_documented() -> None:
    # disclose --disclosures-file was in its --help alone: a user reading README (or
    # SPEC, which gives witness serve's --max-body and --log-level) never met it.
    spec = (ROOT / "docs" / "SPEC.md").read_text(encoding="utf-8")
    undocumented = sorted(
        f"{command} {option}"
        for command, parser in _commands().items()
        for option in _options(parser)
        if option.startswith("--") and option not in ("--help", "--version")
        and not any(re.search(rf"(?<![\w-]){option}(?![\w-])", text)
                    for text in (README, spec))
    )
    assert not undocumented


def test_every_flag_readme_quotes_is_taken_by_some_command() -> None:
    quoted = set(re.findall(r"`(--[a-z][a-z0-9-]*)", README))
    known = set().union(*(_options(parser) for parser in _commands().values()))
    assert quoted - known == {"--enable-shared"}  # CPython's configure, not ours


def _default(command: str, option: str) -> Any:
    (action,) = [a for a in _commands()[command]._actions if option in a.option_strings]
    return action.default


def test_command_defaults_readme_gives_are_the_code_s() -> None:
    prose = " ".join(README.split())  # as wrapped anywhere
    assert "its defaults are `127.0.0.1:4317` and `127.0.0.1:4318`" in prose
    assert (_default("receiver", "--grpc"), _default("receiver", "--http")) == (
        "127.0.0.1:4317", "127.0.0.1:4318")
    assert "`spanproof demo [--out DIR]` (default `./spanproof-demo`)" in prose
    assert _default("demo", "--out") == "spanproof-demo"
    assert "default 0, at most 64 as for the exporter" in prose
    assert _default("receiver", "--sealing-processes") == 0


def test_max_message_bytes_bounds_readme_gives_are_the_command_s() -> None:
    # README gave only the upper bound; the command refused anything under 1,024
    # bytes with a bound it named nowhere else.
    from spanproof.exporter import _cli as producer_cli
    from spanproof.exporter.otlp_server import MAX_MESSAGE_BYTES
    from spanproof.verifier._cli import UsageError

    prose = " ".join(README.split())
    assert "`--max-message-bytes` (default 64 MiB, from 1,024 bytes to 2 GiB - 1" in prose
    assert MAX_MESSAGE_BYTES == 2**31 - 1
    with pytest.raises(UsageError, match=r"--max-message-bytes must be an integer >= 1024,"):
        producer_cli.receiver(max_message_bytes=1023)
    help_text = _commands()["receiver"].format_help()
    assert "1024 bytes to 2 GiB - 1" in " ".join(help_text.split())


def test_every_repeatable_flag_says_so_in_its_help() -> None:
    # README's synopses mark them (`[--trust-root FILE]...`); --help said "repeat" for
    # --key but not for --trust-root, --disclosures or witness submit's --witness-key.
    silent = [
        f"{command} {action.option_strings[0]}"
        for command, parser in _commands().items()
        for action in parser._actions
        if isinstance(action, argparse._AppendAction) and action.nargs is None
        and not re.search(r"repeat", action.help or "")
    ]
    assert not silent


def test_witness_serve_help_gives_readme_s_exit_status_3() -> None:
    # README: a second `witness serve` on the same database, or with the same key on
    # another database, exits 3; the help named only the database.
    prose = " ".join(README.split())
    assert "a second `witness serve` with the same key on another database exits 3" in prose
    epilog = " ".join((_commands()["witness serve"].epilog or "").split())
    assert "another process serves it or the key" in epilog
    # ... and a port another process listens on exits 3 too.
    assert "a port another process listens on exits 3" in prose
    assert "another process listens on the port" in epilog


def test_readme_synopses_give_every_flag_of_their_command() -> None:
    # README's `spanproof show [--key PUB.pem] BUNDLE` left out --trust-root and
    # --allow-incomplete, which show takes as verify does.
    prose = " ".join(README.split())
    synopsis = re.search(r"`spanproof show ([^`]*)`", prose)
    assert synopsis is not None
    shown = set(re.findall(r"--[a-z][a-z0-9-]*", synopsis.group(1)))
    assert shown == _options(_commands()["show"]) - {"-h", "--help"}
