"""Finishing the writes a producer left half done in its output directory.

:class:`~spanproof.exporter.sinks.DirectorySink` writes a bundle, and its
disclosures when it has committed attributes, to temporary files
``.<bundle name>.<8 hex>.tmp``, makes them durable, links the bundle to its name and
then renames the disclosures to ``<name>.disclosures.json``.  A process that stops
in between (``kill -9``, power loss) leaves them behind:

* the disclosures of a bundle that *was* published, under their temporary name.
  They are the only way to open the bundle's commitments, so they are given their
  name (checked first: every disclosure must open a commitment in that bundle);
* temporary files of a bundle that was never published, and their disclosures.
  Nothing refers to them: the spans are sealed again from the journal (the
  ``EvidenceSpanProcessor``, the receiver), or were lost with the process (the
  exporter without a journal, as README says).  They are removed once older than
  *older_than*: a younger one may belong to a live process that is writing it.

The witness submitter writes a bundle's receipt the same way
(``.<stem>.receipt.json.<8 hex>.tmp``, renamed to ``<stem>.receipt.json``), and
deletes the bundle's queue entry only once the receipt has its name: a temporary
receipt left behind is written again when the entry is submitted again, so it
goes once older than *older_than* too.  Its queue directory (and ``failed/`` in
it) holds entries written the same way: :func:`remove_old_temporaries` removes
their temporary files once older than *older_than*, by the same rule.

Other files are never touched, and a disclosures file whose name is taken by
different content is kept (and logged), never overwritten or removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import time
from typing import Any

from spanproof.verifier._files import link_no_replace, temp_target, temporaries
from spanproof.verifier.bundle import BUNDLE_SUFFIX, BundleReader
from spanproof.verifier.disclosure import (
    DisclosureFile,
    check_disclosures_in_records,
    disclosures_path,
)
from spanproof.verifier.errors import InvalidDisclosure, SpanproofError
from spanproof.verifier.receipt import RECEIPT_SUFFIX

from .sinks import bundle_names

__all__ = ["LEFTOVER_AGE_S", "Leftovers", "finish_interrupted_writes", "remove_old_temporaries"]

_logger = logging.getLogger(__name__)

#: A write in progress keeps its temporary files for one group write: milliseconds,
#: seconds on a stalled disk.  One older than this was left by a process that stopped.
LEFTOVER_AGE_S = 3600.0

_ID = r"[0-9a-f]{32}-[0-9]+-[0-9a-f]{16}"  # trace, segment, producer instance
_BUNDLE_NAME = re.compile(_ID + re.escape(BUNDLE_SUFFIX))
# A bundle published under its name or an alternative one (DirectorySink.write).
_PUBLISHED_NAME = re.compile(_ID + r"(?:\.[0-9]+)?" + re.escape(BUNDLE_SUFFIX))
# The receipt of a bundle stored under an alternative name has that name's stem.
_RECEIPT_NAME = re.compile(_ID + r"(?:\.[0-9]+)?" + re.escape(RECEIPT_SUFFIX))
_DISCLOSURES_START = b'{"disclosures":'


@dataclasses.dataclass
class Leftovers:
    """What :func:`finish_interrupted_writes` did, by path."""

    named: list[str] = dataclasses.field(default_factory=list)
    """Disclosures given their name (the new path)."""
    removed: list[str] = dataclasses.field(default_factory=list)
    """Temporary files of bundles never published, and of receipts never named."""
    kept: list[str] = dataclasses.field(default_factory=list)
    """Temporary files left as they are (too young, or in conflict)."""


def finish_interrupted_writes(
    directory: str, *, older_than: float = LEFTOVER_AGE_S, now: float | None = None,
    instance: str | None = None,
) -> Leftovers:
    """Name the disclosures of published bundles that were left under a temporary
    name in *directory*, and remove the temporary files of unpublished bundles and
    unnamed receipts older than *older_than* seconds (see the module's docstring).
    Those of bundles named for producer *instance* are removed whatever their age:
    the caller knows that no write of that instance is under way (its seal workers
    are gone, and it seals the pass they held again itself).

    Raises:
        OSError: *directory* cannot be listed.
    """
    done = Leftovers()
    now = time.time() if now is None else now
    temporaries: list[tuple[str, str | None]] = []  # with the bundle's name, or None
    published: set[str] = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith("."):
                if _PUBLISHED_NAME.fullmatch(entry.name):
                    published.add(entry.name)
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            target = temp_target(entry.name)
            if target is None:
                continue
            if _BUNDLE_NAME.fullmatch(target):
                temporaries.append((entry.path, target))
            elif _RECEIPT_NAME.fullmatch(target):
                temporaries.append((entry.path, None))
    for path, bundle_name in sorted(temporaries):
        bundle_path = None if bundle_name is None else os.path.join(directory, bundle_name)
        ours = (instance is not None and bundle_name is not None
                and bundle_name[:-len(BUNDLE_SUFFIX)].rpartition("-")[2] == instance)
        try:
            _finish(path, bundle_path, published, math.inf if ours else now - older_than,
                    done)
        except OSError as e:
            _logger.warning("spanproof: cannot tidy %s left by an interrupted write (%s)",
                            path, e)
            done.kept.append(path)
    if done.named or done.removed:
        _logger.warning(
            "spanproof: finished writes a stopped process left in %s: named %d "
            "disclosure file(s), removed %d temporary file(s) never published",
            directory, len(done.named), len(done.removed),
        )
    return done


def _finish(path: str, bundle_path: str | None, published: set[str], cutoff: float,
            done: Leftovers) -> None:
    """Handle one temporary file: a sink's (of the bundle at *bundle_path*), or a
    receipt's (*bundle_path* None); *published* holds the names of the bundles in
    the directory."""
    if bundle_path is not None:
        with open(path, "rb") as f:
            data = f.read(len(_DISCLOSURES_START))
            if data == _DISCLOSURES_START:  # DirectorySink writes them canonical
                data += f.read()
        disclosures = _parse_disclosures(data)
        if disclosures is not None:
            opened = _published_bundle(bundle_path, disclosures, published)
            if opened is not None:
                _name_disclosures(path, data, disclosures_path(opened), done)
                return
    _remove_if_older(path, cutoff, done)


def remove_old_temporaries(
    directory: str, names: re.Pattern[str], *, older_than: float = LEFTOVER_AGE_S,
    now: float | None = None,
) -> Leftovers:
    """Remove the temporary files (:func:`~spanproof.verifier._files.write_temp`'s)
    of files named as *names* matches in *directory* that are older than
    *older_than* seconds: a write that never finished, or a younger one that may be
    in progress in another live process (see the module's docstring).  Other files
    are not touched; one that cannot be removed is logged and kept.

    Raises:
        OSError: *directory* cannot be listed.
    """
    done = Leftovers()
    cutoff = (time.time() if now is None else now) - older_than
    for path in temporaries(directory, lambda target: names.fullmatch(target) is not None):
        try:
            _remove_if_older(path, cutoff, done)
        except OSError as e:
            _logger.warning("spanproof: cannot remove %s left by an interrupted write (%s)",
                            path, e)
            done.kept.append(path)
    if done.removed:
        _logger.warning("spanproof: removed %d temporary file(s) a stopped process left in %s",
                        len(done.removed), directory)
    return done


def _remove_if_older(path: str, cutoff: float, done: Leftovers) -> None:
    """Remove the temporary file *path* if it was last written before *cutoff*
    (seconds since the epoch): no live process is still writing it."""
    if os.stat(path).st_mtime < cutoff:
        _discard(path)
        done.removed.append(path)
    else:
        done.kept.append(path)


def _parse_disclosures(data: bytes) -> DisclosureFile | None:
    if not data.startswith(_DISCLOSURES_START):
        return None  # a bundle's temporary file
    try:
        return DisclosureFile.from_bytes(data)
    except InvalidDisclosure:
        return None  # cut short: never made durable, so its bundle was never published


def _published_bundle(bundle_path: str, disclosures: DisclosureFile,
                      published: set[str]) -> str | None:
    """The published bundle (under its name, or an alternative one, among
    *published*) whose commitments every one of *disclosures* opens, or None.

    Every alternative present is tried: one taken before may have been moved away
    since (archived, shipped), leaving a gap before the one these disclosures open.
    """
    directory, name = os.path.split(bundle_path)
    for candidate in (os.path.join(directory, n) for n in bundle_names(name) if n in published):
        try:
            records = _records(candidate)
        except (OSError, SpanproofError):
            continue  # gone, unreadable or not a bundle: not the one these disclosures open
        if disclosures.disclosures and all(
            result.ok for result in check_disclosures_in_records(disclosures.disclosures, records)
        ):
            return candidate
    return None


def _records(bundle_path: str) -> list[dict[str, Any]]:
    """The well-formed records of the bundle file *bundle_path* (signature not
    checked: a disclosure's salted digest binds it to its record)."""
    with open(bundle_path, "rb") as f:
        reader = BundleReader(f)
        reader.read_header()
        return list(reader.parsed_records())


def _name_disclosures(path: str, data: bytes, target: str, done: Leftovers) -> None:
    try:
        link_no_replace(path, target)
    except FileExistsError:
        with open(target, "rb") as f:
            same = f.read() == data
        if not same:
            _logger.warning("spanproof: %s holds disclosures of a published bundle, but "
                            "%s holds other ones; both are kept", path, target)
            done.kept.append(path)
        else:  # a copy of what is there
            _discard(path)
            done.removed.append(path)
        return
    _discard(path)  # without hard links, the link above moved it
    _logger.warning("spanproof: %s: disclosures a stopped process left under a temporary "
                    "name", target)
    done.named.append(target)


def _discard(path: str) -> None:
    """Remove *path*, which another process's start may have removed already."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
