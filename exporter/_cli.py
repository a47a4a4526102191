"""The producer commands of the ``spanproof`` command line: ``keygen`` and ``demo``.

Private.  ``spanproof.verifier._cli`` parses the arguments and imports this module
only when one of these commands runs, so verifying never imports OpenTelemetry.
Each command returns its exit status: 0 success, 1 failure.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from spanproof.examples.support_agent import SAMPLE_CASES, Outcome, run_case
from spanproof.verifier import TrustRoot, find_bundles
from spanproof.verifier._cli import (
    BundleResult,
    check_path,
    format_link,
    format_result,
    link_results,
)
from spanproof.verifier.errors import InvalidKey
from spanproof.verifier.tree import render_tree
from spanproof.verifier.verify import Verdict

from ._exporter import SpanproofSpanExporter
from .config import DEFAULT_SELECT_ATTRIBUTES
from .keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, SigningKey

__all__ = ["demo", "keygen"]

_PROG = "spanproof"


def _error(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr)


def keygen(out: str, *, force: bool = False) -> int:
    """``spanproof keygen --out DIR``: write a new key pair and print its key id.

    Refuses (exit 1) to replace an existing key unless *force*.
    """
    priv = os.path.join(out, PRIVATE_KEY_NAME)
    pub = os.path.join(out, PUBLIC_KEY_NAME)
    existing = [p for p in (priv, pub) if os.path.exists(p)]
    if existing and not force:
        _error(f"{existing[0]} already exists; not replacing a key "
               "(bundles it signed would no longer verify with the new one). "
               "Use --force to replace it.")
        return 1
    key = SigningKey.generate()
    try:
        priv, pub = key.write(out, exist_ok=force)
    except FileExistsError:
        _error(f"{priv} already exists; use --force to replace it")
        return 1
    except OSError as e:
        _error(f"cannot write the key to {out}: {e.strerror or e}")
        return 1
    print(f"key id       {key.keyid}")
    print(f"private key  {priv}  (mode 0600: for the producer, "
          "e.g. OTEL_EXPORTER_SPANPROOF_KEY_FILE)")
    print(f"public key   {pub}  (for verifiers: "
          f"{_PROG} verify --key {shlex.quote(pub)} BUNDLES)")
    return 0


def _demo_key(keys_dir: str) -> tuple[SigningKey, str]:
    """Reuse ``keys_dir/signing.key`` or create it; return the key and what happened."""
    priv = os.path.join(keys_dir, PRIVATE_KEY_NAME)
    if os.path.exists(priv):
        key = SigningKey.load(priv)
        pub_path = os.path.join(keys_dir, PUBLIC_KEY_NAME)
        if not os.path.exists(pub_path):
            key.write(keys_dir, exist_ok=True)
        return key, "reused"
    try:
        key = SigningKey.generate()
        key.write(keys_dir)
    except FileExistsError:  # another demo run created it meanwhile
        return SigningKey.load(priv), "reused"
    return key, "created"


def _run_cases(bundles_dir: str, key_file: str) -> list[Outcome]:
    """Run every sample case under a tracer provider exporting to spanproof; seal all."""
    exporter = SpanproofSpanExporter(
        output_dir=bundles_dir,
        key_file=key_file,
        # Fixed selection, whatever OTEL_EXPORTER_SPANPROOF_* says, so the demo's
        # bundles always hold the same spans.
        select_attributes=DEFAULT_SELECT_ATTRIBUTES,
        select_all=False,
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": "support-agent"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("spanproof.examples.support_agent")
    try:
        return [run_case(tracer, case) for case in SAMPLE_CASES]
    finally:
        provider.shutdown()  # seals and writes every pending trace


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def demo(out: str) -> int:
    """``spanproof demo --out DIR``: trace, certify and verify the support-case agent.

    Writes ``DIR/keys/signing.key`` and ``signing.pub`` (reused when present) and
    ``DIR/bundles/*.spanproof.json``, verifies the bundles written by this run with
    the public key, and prints each trace's tree and verify line.  Exit 0 only when
    every one verified.
    """
    keys_dir = os.path.join(out, "keys")
    bundles_dir = os.path.join(out, "bundles")
    started = time.monotonic()
    priv = os.path.join(keys_dir, PRIVATE_KEY_NAME)
    pub = os.path.join(keys_dir, PUBLIC_KEY_NAME)
    try:
        key, how = _demo_key(keys_dir)
        trust = TrustRoot.from_pem_files([pub])
    except (OSError, InvalidKey) as e:
        _error(f"cannot set up the demo key in {keys_dir}: {e}")
        return 1
    before = set(find_bundles([bundles_dir])) if os.path.isdir(bundles_dir) else set()

    try:
        outcomes = _run_cases(bundles_dir, priv)
    except (ValueError, OSError) as e:  # a bad OTEL_EXPORTER_SPANPROOF_* value, disk
        _error(f"cannot run the demo: {e}")
        return 1
    written = sorted(set(find_bundles([bundles_dir])) - before)
    results = [check_path(path, trust, keep_records=True) for path in written]

    print("spanproof demo: a support-case agent traced with OpenTelemetry, certified by "
          "spanproof, verified offline")
    print(f"  signing key  {priv}  ({how}; key id {key.keyid[:16]}...)")
    print(f"  public key   {pub}  (all an auditor needs, with the bundles)")
    print(f"  bundles      {bundles_dir}")
    ok = True
    shown: set[str] = set()
    for case, outcome in zip(SAMPLE_CASES, outcomes, strict=True):
        decision = outcome.decision
        where = f" to {decision.queue}" if decision.escalated else ""
        print()
        print(f"case {case.case_id} \"{case.subject}\": intent {outcome.intent}, "
              f"{decision.action}{where} ({decision.rule})")
        mine = [r for r in results if _trace_of(r) == outcome.trace_id]
        if not mine:
            print(f"FAIL trace {outcome.trace_id}: no bundle was written for it")
            ok = False
        for result in mine:
            shown.add(result.path)
            records = result.report.records if result.report is not None else None
            if records:
                print(_indent(render_tree(records)))
            print(format_result(result))
            ok = ok and result.verdict is Verdict.OK
    for result in results:
        if result.path not in shown:
            print(format_result(result))
            ok = ok and result.verdict is Verdict.OK
    for link in link_results(results):
        if len(link.segments) > 1 or not link.ok:
            print(format_link(link))
        ok = ok and link.ok

    print()
    older = len(before)
    verdict = "all verified" if ok else "NOT all verified"
    print(f"{len(outcomes)} cases, {len(written)} bundles written, {verdict} with {pub} "
          f"({time.monotonic() - started:.2f} s).")
    if older:
        print(f"{older} bundle(s) from earlier runs are also in {bundles_dir}.")
    print("Verify them yourself, offline, with only the public key:")
    print(f"  {_PROG} verify --key {shlex.quote(pub)} {shlex.quote(bundles_dir)}")
    print("Change one character inside any record of a bundle and run it again: it fails.")
    return 0 if ok else 1


def _trace_of(result: BundleResult) -> str | None:
    stmt = result.report.statement if result.report is not None else None
    return stmt.trace_id if stmt is not None else None

