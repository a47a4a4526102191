"""spanproof's own work, kept out of the application's traces.

An application traced with instrumentations (``opentelemetry-instrument``, or the
``opentelemetry-instrumentation-*`` packages by hand) has its HTTP clients, logging
and threads traced.  spanproof's own I/O must not be: a witness submission through
``urllib`` (the path taken when a proxy is configured) made a span, which the
exporter then sealed (with ``select_all``) and submitted, which made another span,
without end.  The SDK's ``BatchSpanProcessor`` runs ``export()`` with
instrumentation suppressed; spanproof's threads (the sealer, the writer, the
witness submitter's) run outside it, and a thread started while an application span
is current inherits that span where the ``threading`` instrumentation is installed.

:func:`untraced` runs a thread's target, :func:`untraced_context` a block, and
:func:`quiet_thread` the rest of a thread, in a context of their own: empty (no
current span, no baggage), with instrumentation and HTTP instrumentation suppressed,
the keys the OpenTelemetry instrumentations read
(``opentelemetry.instrumentation.utils.is_instrumentation_enabled`` and
``is_http_instrumentation_enabled``).  :func:`own_thread` and :func:`own_timer` make
every thread the package starts.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from opentelemetry import context as _otel_context

__all__ = ["own_thread", "own_timer", "quiet_thread", "untraced", "untraced_context"]

_T = TypeVar("_T")


def _quiet() -> _otel_context.Context:
    """An empty context in which instrumentations record nothing."""
    quiet = _otel_context.Context()
    for name in ("_SUPPRESS_INSTRUMENTATION_KEY", "_SUPPRESS_HTTP_INSTRUMENTATION_KEY"):
        key = getattr(_otel_context, name, None)
        if key is not None:
            quiet = _otel_context.set_value(key, True, quiet)
    return quiet


_QUIET = _quiet()


@contextlib.contextmanager
def untraced_context() -> Iterator[None]:
    """Run the block in an empty context with instrumentation suppressed."""
    token = _otel_context.attach(_QUIET)
    try:
        yield
    finally:
        _otel_context.detach(token)


def quiet_thread() -> None:
    """Give the calling thread that context for good (a thread pool's initializer:
    the pool's tasks then run in it, or in their submitter's where the ``threading``
    instrumentation carries it over, which is spanproof's own quiet thread's)."""
    _otel_context.attach(_QUIET)


def untraced(target: Callable[..., _T]) -> Callable[..., _T]:
    """*target*, run by :func:`untraced_context`."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> _T:
        with untraced_context():
            return target(*args, **kwargs)

    return run


def own_thread(target: Callable[..., object], name: str,
               args: tuple[Any, ...] = ()) -> threading.Thread:
    r"""A daemon thread of spanproof's own, named *name*, running *target(\*args)*
    untraced: every thread the package starts is made here (a test looks), so none
    runs in the application's context."""
    return threading.Thread(target=untraced(target), args=args, name=name, daemon=True)


def own_timer(seconds: float, target: Callable[[], object], name: str) -> threading.Timer:
    """A daemon :class:`threading.Timer` of spanproof's own, *target* run untraced."""
    timer = threading.Timer(seconds, untraced(target))
    timer.daemon = True
    timer.name = name
    return timer
