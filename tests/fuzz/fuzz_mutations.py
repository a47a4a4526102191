"""Mutations of the fuzz tests: byte-level edits of any file, and JSON-level value
replacements of a bundle, a receipt or a disclosure file, re-encoded canonically so
that the change reaches the checks after parsing.

Every mutation draws from the random source it is given, so a seeded source replays
a campaign exactly.  (A unique module name: the test folders share one import path.)
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import traceback
from collections.abc import Callable
from typing import Any

from spanproof.verifier.canonical import canonicalize


def run_campaign(seed: int, count: int, case: Callable[[int, random.Random], None]) -> None:
    """Run ``case(n, rng)`` for every n below *count*, each with a random source of
    its own seeded from *seed* and n (so a failing case replays alone), split over
    this process and forked children, one per further core (at most four in all):
    the campaigns are CPU-bound and a test run otherwise uses one core.  A failure
    is raised with its case number, from a child as its traceback's text."""
    processes = max(1, min(4, len(os.sched_getaffinity(0))))
    children: list[tuple[int, int]] = []  # (pid, the pipe its failure comes through)
    try:
        for part in range(1, processes):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its part, its answer, and out (no pytest teardown)
                status = 1  # whatever stops it before its answer is written is a failure
                try:
                    os.close(read)
                    failure = _run_part(seed, count, case, part, processes)
                    with os.fdopen(write, "wb") as answer:
                        answer.write(failure.encode("utf-8", "replace"))
                    status = 1 if failure else 0
                finally:
                    os._exit(status)
            os.close(write)
            children.append((pid, read))
        failure = _run_part(seed, count, case, 0, processes)
        if failure:
            raise AssertionError(failure)
        while children:
            pid, read = children.pop()
            try:
                with os.fdopen(read, "rb") as answer:
                    failure = answer.read().decode("utf-8", "replace")
            finally:
                status = os.waitpid(pid, 0)[1]
            if failure or status:
                raise AssertionError(failure or f"a campaign process ended with status {status}")
    finally:
        for pid, read in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)


def _run_part(seed: int, count: int, case: Callable[[int, random.Random], None],
              part: int, parts: int) -> str:
    """Cases part, part + parts, ... of a campaign; the first failure's text, or ""."""
    for n in range(part, count, parts):
        try:
            case(n, random.Random(f"{seed}:{n}"))
        except Exception:
            return f"case {n} of campaign {seed}:\n{traceback.format_exc()}"
    return ""


_SPECIAL = b'{}[]",:\n\\ 0aZ\x00\xff'
DELETE = object()  # a "value" that removes the member or element instead


def mutate_bytes(original: bytes, rng: random.Random) -> bytes:
    """*original* with one to three byte-level edits."""
    data = bytearray(original)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        kind = rng.choice(["flip", "set", "delete", "insert", "truncate"])
        at = rng.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "set":
            data[at] = rng.choice(_SPECIAL)
        elif kind == "delete":
            del data[at:at + rng.randint(1, 16)]
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del data[at:]
    return bytes(data)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of *value* itself and of every member and element inside it."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(paths(v, (*prefix, i)))
    return out


def random_value(rng: random.Random) -> Any:
    """A replacement value: JSON of every type, and strings a field might hold."""
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice([None, True, False, {}, [], DELETE])
    if kind == 1:
        return rng.randint(1 - 2**53, 2**53 - 1)  # RFC 8785 carries no larger integers
    if kind == 2:
        return rng.uniform(-1e300, 1e300)
    if kind == 3:
        return "".join(chr(rng.choice([0x41, 0x7A, 0x30, 0x22, 0x5C, 0xE9, 0x1F600, 0x0A]))
                       for _ in range(rng.randint(0, 8)))
    return rng.choice(["0", "1", "2", "5", "-1", "01", "sha256:" + "00" * 32, "", "a" * 16,
                       "recovered", "18446744073709551616", "STATUS_CODE_ERROR"])


def set_path(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """*doc* with the value at *path* replaced by *value* (or removed: DELETE)."""
    if not path:
        return None if value is DELETE else value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def mutate_document(original: bytes, rng: random.Random) -> bytes:
    """A JSON document (a receipt, a disclosure file) with one value replaced or
    removed, re-encoded canonically with a final line feed."""
    doc = json.loads(original)
    path = rng.choice(paths(doc))
    return canonicalize(set_path(doc, path, random_value(rng))) + b"\n"


class BundleMutator:
    """JSON-level mutations of one bundle: one value of its header, its signed
    statement or one record replaced, then the bundle framed again (SPEC §7)."""

    def __init__(self, original: bytes) -> None:
        self.original = original
        header, statement, records = self.documents()
        self._targets: list[tuple[str, tuple[Any, ...]]] = (
            [("header", p) for p in paths(header) if p[:2] != ("envelope", "payload")]
            + [("statement", p) for p in paths(statement)]
            + [(f"record{i}", p) for i, r in enumerate(records) for p in paths(r)]
        )

    def documents(self) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """Fresh copies of the header, the statement and the records."""
        lines = self.original.split(b"\n")
        header = json.loads(lines[0][: -len(b',"records":[')] + b"}")
        statement = json.loads(base64.b64decode(header["envelope"]["payload"]))
        records = [json.loads(line.removesuffix(b",")) for line in lines[1:-2]]
        return header, statement, records

    def mutate(self, rng: random.Random) -> tuple[bytes, bool]:
        """A re-encoded bundle with one value replaced or deleted; and whether only
        the unsigned key-id hint changed."""
        header, statement, records = self.documents()
        where, path = rng.choice(self._targets)
        value = random_value(rng)
        if where == "header":
            header = set_path(header, path, value)
        elif where == "statement":
            statement = set_path(statement, path, value)
        else:
            i = int(where.removeprefix("record"))
            records[i] = set_path(records[i], path, value)
        hint_only = where == "header" and len(path) == 4 and path[-1] == "keyid"
        return encode_bundle(header, statement, records), hint_only


def encode_bundle(header: Any, statement: Any, records: list[Any]) -> bytes:
    """Frame *header* (with *statement* as its payload) and *records* as a bundle."""
    if isinstance(header, dict) and isinstance(header.get("envelope"), dict):
        header["envelope"]["payload"] = base64.b64encode(canonicalize(statement)).decode()
    lines = [canonicalize(header)[:-1] + b',"records":[']
    lines += [canonicalize(r) + (b"," if i < len(records) - 1 else b"")
              for i, r in enumerate(records)]
    return b"\n".join([*lines, b"]}", b""])


def without_unsigned(data: bytes) -> bytes:
    """*data* (a bundle) without what no signature covers and no check reads: the
    key-id hints of its signatures and the reserved ``receipts`` member (SPEC §7.2)."""
    header = data.split(b"\n", 1)[0]
    parsed = json.loads(header[: -len(b',"records":[')] + b"}")
    parsed.pop("receipts", None)
    for sig in parsed["envelope"]["signatures"]:
        sig.pop("keyid", None)
    return canonicalize(parsed) + data.split(b"\n", 1)[1]
