"""The independent witness: append-only Merkle log, signed checkpoints, receipts.

The service (``serve``) needs the ``witness`` extra (Starlette, uvicorn); nothing
imported here does, so clients and monitors work with the base install.  The
receipt format and its offline verification live in :mod:`spanproof.verifier`
(``merkle``, ``checkpoint``, ``receipt``).
"""

from __future__ import annotations

__all__: list[str] = []
