"""Making every new thread fail to start, as Python 3.12 does while the interpreter
exits (in ``atexit`` callbacks, where the SDK shuts its tracer provider down)."""

from __future__ import annotations

import threading

import pytest


def refuse_new_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``Thread.start()`` raise what Python 3.12 raises at interpreter exit."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
