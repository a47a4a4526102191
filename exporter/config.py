"""Exporter configuration: constructor argument, then environment variable, then default.

This is the OTLP exporter's pattern: an explicit argument that is not ``None`` wins,
otherwise the ``OTEL_EXPORTER_SPANPROOF_*`` variable, otherwise the default.  An empty
variable counts as unset (as everywhere in OpenTelemetry).  Durations are seconds in
Python and milliseconds in the environment (``*_MS``), as in the OTel SDK.

A bad argument raises ``ValueError``.  A malformed or out-of-range variable that only
tunes timing, sizes or capacity (``*_MS``, ``MAX_*``, ``SEALED_TRACE_MEMORY``,
``SEALING_PROCESS``) is logged as a warning naming it and its value, and the default
is used, as the OTel SDK does (``OTEL_EXPORTER_OTLP_TIMEOUT=abc``): raising would
abort ``opentelemetry-instrument``'s whole configuration.  What such a default changes
is declared in the bundles (segments, rejected or dropped spans) or costs only CPU.
A variable whose default would change which spans are certified, where, how they
are redacted or who can check them (``SELECT_ALL``, ``WITNESS_URL``, and the paths,
lists and keys) stays an error.

Variables (all prefixed ``OTEL_EXPORTER_SPANPROOF_``), with their defaults:

* ``OUTPUT_DIR`` (``./spanproof-bundles``): where bundle files are written.
* ``KEY_FILE`` (unset): PKCS#8 PEM Ed25519 signing key.  Unset: a key is generated
  once at ``<OUTPUT_DIR>/keys/signing.key`` (and a warning logged).
* ``SELECT_ATTRIBUTES`` (``gen_ai.operation.name,openinference.span.kind,traceloop.span.kind``):
  a span carrying any of these attribute keys, or a key matching one of these glob
  patterns (``gen_ai.*``, the syntax of ``REDACT_ATTRIBUTES``), is evidence.
* ``SELECT_ALL`` (``false``): ``true`` makes every span evidence.
* ``SEAL_GRACE_MS`` (``2000``): seal a trace this long after its local root span ended.
* ``IDLE_TIMEOUT_MS`` (``30000``): seal a trace that received no span for this long.
  Both are at most a year (:data:`MAX_DURATION_SECONDS`).
* ``MAX_RECORDS`` (``10000``): records per bundle; a bigger trace continues in
  linked segments (seal reason ``size_limit``).
* ``MAX_PENDING_TRACES`` (``2048``): open traces held in memory.
* ``SEALED_TRACE_MEMORY`` (``65536``): sealed traces whose chain position is kept
  in memory so a late span continues the chain (beyond it, from the chain found in
  the output directory).
* ``MAX_VALUE_BYTES`` (``1048576``): a span with an attribute value larger than
  this is not certified but declared as rejected in its trace's bundle.
* ``WITNESS_URL`` (unset): submit each sealed bundle to this witness in the
  background (queue under ``<OUTPUT_DIR>/witness-queue``); receipts are written
  beside the bundles.
* ``WITNESS_KEY`` (unset): the witness's public key (PEM file or verifier key
  string); when set, each receipt is verified before it is stored.
* ``REDACT_ATTRIBUTES`` (unset): comma-separated span attribute keys and glob
  patterns (``gen_ai.input.messages,customer.*``) whose values are committed
  instead of stored (SPEC §2.5); values and salts go to ``<name>.disclosures.json``
  (mode 0600) beside each bundle.
* ``SEALING_PROCESS`` (``false``): ``true`` seals in a child Python process, so
  normalizing, encoding, signing and writing take no CPU time from the application
  under the GIL; a number N >= 2 starts N such processes that share the traces (the
  SDK exporter only; the receiver and ``EvidenceSpanProcessor`` ignore it; see
  README, "Performance").

``EvidenceSpanProcessor`` reads two more, ``QUEUE_SIZE`` and ``QUEUE_BLOCK_MS``
(``spanproof.exporter.processor``).  OpenTelemetry's ``OTEL_SDK_DISABLED=true``
builds both the exporter and the processor disabled: they create and start nothing
(``spanproof.exporter._disabled``).

An empty variable counts as unset.  A list that is not empty but names no key
(``,``) is an error, not an empty list, and so is a list item, variable or argument,
holding a lone surrogate (bytes that are not UTF-8, as Python reads them): it could
never match an attribute key.  Numbers are written in the ASCII digits
``0``-``9`` alone: ``1_000``, ``+3`` or another script's digits (``٣``) are malformed.
A variable with the prefix that names no setting (``REDACT_ATTRIBUTE``, singular) is
logged as a warning, with the closest name when there is one, and ignored.

As arguments, ``select_attributes`` and ``redact_attributes`` take a list (or any
iterable) of strings: a ``str`` is a ``TypeError``, as it would be read one character
at a time.  ``output_dir``, ``key_file`` and ``witness_key`` take ``os.PathLike``
objects as well as strings.

Nothing here depends on the OpenTelemetry SDK, so the OTLP receiver reuses it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spanproof.verifier._batch import shown_url, witness_url_error, witness_url_problem
from spanproof.verifier._settings import parse_decimal, refuse_string

__all__ = ["DEFAULT_SELECT_ATTRIBUTES", "ENV_PREFIX", "ExporterConfig"]

_logger = logging.getLogger(__name__)

ENV_PREFIX = "OTEL_EXPORTER_SPANPROOF_"
#: ``EvidenceSpanProcessor``'s own variables (read in ``spanproof.exporter.processor``).
QUEUE_SIZE_VAR = ENV_PREFIX + "QUEUE_SIZE"
QUEUE_BLOCK_VAR = ENV_PREFIX + "QUEUE_BLOCK_MS"
#: The most sealing processes one exporter starts.
MAX_SEALING_PROCESSES = 64
#: The longest seal grace or idle timeout, in seconds (a year): a longer one would
#: never seal, and one too large for a float cannot be added to the clock.
MAX_DURATION_SECONDS = 365 * 86_400

#: Attribute keys that make a span evidence by default: the OTel GenAI semantic
#: conventions, OpenInference and OpenLLMetry (Traceloop).
DEFAULT_SELECT_ATTRIBUTES: tuple[str, ...] = (
    "gen_ai.operation.name",
    "openinference.span.kind",
    "traceloop.span.kind",
)

@dataclass(frozen=True)
class ExporterConfig:
    """Settings of the span exporter (and of the OTLP receiver's assembly).

    Build it with :meth:`from_env`; constructing it directly skips the environment
    but still validates every field.

    Raises:
        ValueError: a field is out of range (the message names the field and its
            environment variable; for a witness URL that cannot be one, the field
            alone, with the URL and what is wrong with it).
    """

    output_dir: str = "./spanproof-bundles"
    key_file: str | None = None
    #: Attribute keys and glob patterns (``*``, ``?``) that make a span evidence.
    select_attributes: tuple[str, ...] = DEFAULT_SELECT_ATTRIBUTES
    select_all: bool = False
    #: Seconds to wait after a trace's local root span ended before sealing it,
    #: so child spans still in the span processor's queue make it into the bundle.
    seal_grace: float = 2.0
    #: Seconds without a new span after which an open trace is sealed anyway.
    idle_timeout: float = 30.0
    max_records: int = 10_000
    #: Open traces held in memory.  When a span of a new trace arrives and this
    #: many are open, the least recently active one is sealed early, with a note
    #: saying why (reason ``root_ended`` when its root span had ended, else
    #: ``idle_timeout``); when as many are already waiting for the sealer, the span
    #: is dropped and declared in its trace's next bundle.
    max_pending_traces: int = 2048
    #: Sealed traces whose chain position is remembered, so a late span continues
    #: the trace's chain in a linked segment without reading the disk.  A late span
    #: of a forgotten trace continues the chain found in the output directory (a
    #: ``DirectorySink``'s; with another sink it starts a new chain at genesis, and
    #: the verifier then reports segment 0 twice).
    sealed_trace_memory: int = 65_536
    #: Largest attribute value (bytes) certified; a span with a larger one is
    #: declared as rejected instead (``exporter/limits.py``).
    max_value_bytes: int = 1_048_576
    #: Witness base URL (``http(s)://host:port``); None submits nothing.
    witness_url: str | None = None
    #: Pinned witness public key used to verify receipts before storing them.
    witness_key: str | None = None
    #: Span attribute keys and glob patterns (``*``, ``?``) whose values are
    #: committed instead of stored (SPEC §2.5); empty commits nothing.
    redact_attributes: tuple[str, ...] = ()
    #: Child Python processes that seal (0 or False: seal in this process; True: 1).
    #: The SDK exporter only; the receiver ignores it.
    sealing_process: int = 0

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        for name in _LIST_FIELDS:
            _refuse_string(name, getattr(self, name))
        _check(isinstance(self.output_dir, str) and self.output_dir != "", "output_dir",
               "must be a non-empty path", self.output_dir)
        _check(self.key_file is None or (isinstance(self.key_file, str) and self.key_file != ""),
               "key_file", "must be a non-empty path or None", self.key_file)
        _check(isinstance(self.select_attributes, tuple)
               and all(isinstance(k, str) and k for k in self.select_attributes),
               "select_attributes", "must be a tuple of non-empty strings",
               self.select_attributes)
        _check_unicode("select_attributes", self.select_attributes)
        _check(isinstance(self.select_all, bool), "select_all", "must be a bool", self.select_all)
        _check(isinstance(self.sealing_process, int)
               and 0 <= self.sealing_process <= MAX_SEALING_PROCESSES, "sealing_process",
               f"must be a bool or a number of processes from 0 to {MAX_SEALING_PROCESSES}",
               self.sealing_process)
        # True and False are ints: store the count itself.
        object.__setattr__(self, "sealing_process", int(self.sealing_process))
        _check(isinstance(self.redact_attributes, tuple)
               and all(isinstance(k, str) and k for k in self.redact_attributes),
               "redact_attributes", "must be a tuple of non-empty strings",
               self.redact_attributes)
        _check_unicode("redact_attributes", self.redact_attributes)
        _check(self.witness_url is None or isinstance(self.witness_url, str), "witness_url",
               "must be a URL or None (no witness)", self.witness_url)
        url_error = None if self.witness_url is None else witness_url_error(self.witness_url)
        if url_error is not None:
            # Given as an argument: a malformed variable is refused as it is read,
            # naming the variable (_parse_witness_url).
            raise ValueError(f"spanproof exporter setting witness_url {url_error}")
        _check(self.witness_key is None or (isinstance(self.witness_key, str)
                                            and self.witness_key != ""),
               "witness_key", "must be a non-empty path or key string, or None",
               self.witness_key)
        for name in ("seal_grace", "idle_timeout"):
            value = getattr(self, name)
            # Compared as given: an int too large for a float is refused, not converted.
            _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                   and 0 <= value <= MAX_DURATION_SECONDS, name,
                   f"must be a number of seconds from 0 to {MAX_DURATION_SECONDS} (a year)",
                   value)
        for name, minimum in (("max_records", 1), ("max_pending_traces", 1),
                              ("max_value_bytes", 1024),
                              ("sealed_trace_memory", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                   name, f"must be an integer >= {minimum}", value)

    @classmethod
    def from_env(
        cls, *, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ExporterConfig:
        """Resolve every setting: an override that is not ``None``, else the
        ``OTEL_EXPORTER_SPANPROOF_*`` variable, else the default.

        Args:
            environ: the environment to read (default :data:`os.environ`).
            overrides: field values by field name; ``None`` means "not given".

        A malformed or out-of-range variable of a tuning setting is logged as a
        warning and its default used (see the module documentation), and so is
        each variable with the prefix that names no setting (with the closest
        name, when one is close).

        Raises:
            TypeError: an override names no field, or a ``str`` is given for a list
                setting (``select_attributes``, ``redact_attributes``).
            ValueError: an override, or a variable other than a tuning setting's, is
                malformed or out of range; the message names the variable (the
                setting, for an override of ``witness_url``).
        """
        env = os.environ if environ is None else environ
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown ExporterConfig field(s): {', '.join(unknown)}")
        _warn_unknown_variables(env)
        values: dict[str, Any] = {}
        for name, (suffix, parse) in _ENV.items():
            given = overrides.get(name)
            if given is not None:
                if name in _LIST_FIELDS:
                    _refuse_string(name, given)
                    given = tuple(given)
                values[name] = given
                continue
            var = ENV_PREFIX + suffix
            # Parsed stripped, but quoted as set: "' , '" is what the user looks for.
            text = env.get(var, "")
            if not text.strip():
                continue
            if name not in _DEFAULT_IF_MALFORMED:
                values[name] = parse(var, text)
                continue
            try:
                value = parse(var, text)
                cls(**{name: value})  # in range (no setting depends on another)
            except ValueError as e:
                _logger.warning("spanproof: %s=%r is not valid (%s); using the default",
                                var, text, e)
                continue
            values[name] = value
        return cls(**values)


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + _ENV[field_name][0]


def _refuse_string(field_name: str, value: object) -> None:
    """Raise ``TypeError`` for a ``str`` given as the list setting *field_name*."""
    refuse_string(value, f"spanproof exporter setting {field_name} ({_env_name(field_name)})",
                  field_name, "attribute keys")


def _warn_unknown_variables(env: Iterable[str]) -> None:
    """Warn about each variable with the prefix (in any case) that names no setting,
    or that names one under another prefix (``OTEL_SPANPROOF_``, ``SPANPROOF_``, the
    prefix without its last underscore): ignored silently, a misspelled
    ``REDACT_ATTRIBUTE`` would store in clear the values it was set to hide."""
    for var in sorted(name for name in env if _MARK in name.upper()):
        if var in KNOWN_VARIABLES:
            continue
        upper = var.upper()
        rest = (upper[len(ENV_PREFIX):] if upper.startswith(ENV_PREFIX)
                else upper.split(_MARK, 1)[1].lstrip("_"))
        close = difflib.get_close_matches(rest, _KNOWN_SUFFIXES, n=1)
        hint = (f"; did you mean {ENV_PREFIX}{close[0]}?" if close
                else " (README, Configuration, lists the variables)")
        if not upper.startswith(ENV_PREFIX) and not close:
            continue  # another program's variable that happens to hold the word
        _logger.warning("spanproof: %s is not a spanproof setting and is ignored%s", var, hint)


# What every spanproof variable, and every misspelling of its prefix, holds.
_MARK = "SPANPROOF"


def _check(ok: bool, field_name: str, requirement: str, value: object) -> None:
    if not ok:
        raise ValueError(
            f"spanproof exporter setting {field_name} ({_env_name(field_name)}) "
            f"{requirement}, got {value!r}"
        )


def _not_unicode(items: Iterable[str]) -> str | None:
    """The first of *items* holding a lone surrogate (U+D800-U+DFFF), else None.

    Python reads bytes that are not UTF-8 (an environment file saved as Latin-1, a
    command-line argument) as lone surrogates: ``kunde.straße`` as
    ``'kunde.stra\\udcdfe'``.  No attribute key holds one (a key is UTF-8 on the
    wire, and one with no UTF-8 form cannot be certified), so such an item could
    never match: a redaction meant to hide a value would store it in clear.
    """
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return item
    return None


def _check_unicode(field_name: str, items: tuple[str, ...]) -> None:
    bad = _not_unicode(items)
    _check(bad is None, field_name,
           f"must hold no lone surrogate (U+D800-U+DFFF, what bytes that are not UTF-8 "
           f"are read as): {bad!r} matches no attribute key", items)


# Each parser takes the variable's text as set (not empty once stripped), parses it
# stripped and quotes it as set.


def _parse_str(var: str, text: str) -> str:
    return text.strip()


def _parse_list(var: str, text: str) -> tuple[str, ...]:
    items = tuple(item for item in (item.strip() for item in text.split(",")) if item)
    if not items:
        # "," or " , ": not empty, so not unset, yet naming nothing.  Taken as no
        # keys, SELECT_ATTRIBUTES would drop every evidence span not marked
        # spanproof.evidence, and a REDACT_ATTRIBUTES meant to hide values hides none.
        raise ValueError(f"{var} must list at least one key, got {text!r} "
                         "(leave it unset for the default)")
    bad = _not_unicode(items)
    if bad is not None:
        raise ValueError(f"{var} holds {bad!r}, which is not UTF-8 (a lone surrogate "
                         "stands for a byte that is not; save the file that sets it in "
                         "UTF-8): no attribute key could match it")
    return items


def _parse_witness_url(var: str, text: str) -> str:
    url = text.strip()
    problem = witness_url_problem(url)
    if problem is not None:
        raise ValueError(f"{var} {shown_url(text)!r} is not a witness URL: {problem}")
    return url


def _parse_bool(var: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError(f"{var} must be 'true' or 'false', got {text!r}")


def _parse_processes(var: str, text: str) -> int:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    try:
        return parse_decimal(lowered)
    except ValueError:
        raise ValueError(f"{var} must be 'true', 'false' or a number of processes in the "
                         f"digits 0-9, got {text!r}") from None


def _parse_int(var: str, text: str) -> int:
    try:
        return parse_decimal(text.strip())
    except ValueError:
        raise ValueError(f"{var} must be a whole number in the digits 0-9, "
                         f"got {text!r}") from None


def _parse_millis(var: str, text: str) -> float:
    try:
        millis = parse_decimal(text.strip())
    except ValueError:
        raise ValueError(f"{var} must be a whole number of milliseconds in the digits 0-9, "
                         f"got {text!r}") from None
    if millis > MAX_DURATION_SECONDS * 1000:
        # Checked before dividing: an int of 309 digits or more overflows a float.
        raise ValueError(f"{var} must be at most {MAX_DURATION_SECONDS * 1000} "
                         f"milliseconds (a year), got {text!r}")
    return millis / 1000


# Field name -> (variable suffix, parser of the variable's text).
_ENV: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "output_dir": ("OUTPUT_DIR", _parse_str),
    "key_file": ("KEY_FILE", _parse_str),
    "select_attributes": ("SELECT_ATTRIBUTES", _parse_list),
    "select_all": ("SELECT_ALL", _parse_bool),
    "seal_grace": ("SEAL_GRACE_MS", _parse_millis),
    "idle_timeout": ("IDLE_TIMEOUT_MS", _parse_millis),
    "max_records": ("MAX_RECORDS", _parse_int),
    "max_pending_traces": ("MAX_PENDING_TRACES", _parse_int),
    "sealed_trace_memory": ("SEALED_TRACE_MEMORY", _parse_int),
    "max_value_bytes": ("MAX_VALUE_BYTES", _parse_int),
    "witness_url": ("WITNESS_URL", _parse_witness_url),
    "witness_key": ("WITNESS_KEY", _parse_str),
    "redact_attributes": ("REDACT_ATTRIBUTES", _parse_list),
    "sealing_process": ("SEALING_PROCESS", _parse_processes),
}
_PATH_FIELDS = ("output_dir", "key_file", "witness_key")
_LIST_FIELDS = ("select_attributes", "redact_attributes")
#: Every variable with the prefix that some part of spanproof reads.
KNOWN_VARIABLES = frozenset(
    {ENV_PREFIX + suffix for suffix, _ in _ENV.values()} | {QUEUE_SIZE_VAR, QUEUE_BLOCK_VAR})
_KNOWN_SUFFIXES = sorted(var[len(ENV_PREFIX):] for var in KNOWN_VARIABLES)
# Settings whose variable, when malformed or out of range, is warned about and
# replaced by the default (see the module documentation); the others raise.
_DEFAULT_IF_MALFORMED = frozenset({
    "seal_grace", "idle_timeout", "max_records", "max_pending_traces",
    "sealed_trace_memory", "max_value_bytes", "sealing_process",
})
