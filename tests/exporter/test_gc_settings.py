"""The garbage-collector settings of spanproof's own processes."""

from __future__ import annotations

import gc

import pytest

from spanproof.verifier._gc import _RARE_THRESHOLD, collecting_rarely


def test_collecting_rarely_raises_the_threshold_and_restores_it() -> None:
    before = gc.get_threshold()
    with collecting_rarely():
        # 100,000 allocations between young collections, whatever the interpreter's
        # default (700, or 2,000 from Python 3.13).
        assert gc.get_threshold() == _RARE_THRESHOLD
        assert gc.get_threshold()[0] > before[0]  # rarer than before, not only different
        assert gc.get_freeze_count() > 0  # what was alive at the start is left alone
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_collecting_rarely_restores_after_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collecting_rarely():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
