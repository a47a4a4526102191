"""``python -m spanproof.witness {serve,keygen,submit} ...`` (and ``... monitor ...``):
the witness commands without the main ``spanproof`` CLI."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("witness", "monitor", "-h", "--help"):
        argv = ["witness", *argv]
    sys.exit(main(argv))
