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
``is_http_instrumentation_enabled``).  Without the OpenTelemetry API they do nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["quiet_thread", "untraced", "untraced_context"]

_T = TypeVar("_T")

try:
    from opentelemetry import context as _otel_context
except ImportError:  # pragma: no cover - the exporter extra installs the API
    _otel_context = None  # type: ignore[assignment]


def _quiet() -> Any:
    """An empty context in which instrumentations record nothing."""
    assert _otel_context is not None
    quiet = _otel_context.Context()
    for name in ("_SUPPRESS_INSTRUMENTATION_KEY", "_SUPPRESS_HTTP_INSTRUMENTATION_KEY"):
        key = getattr(_otel_context, name, None)
        if key is not None:
            quiet = _otel_context.set_value(key, True, quiet)
    return quiet


@contextlib.contextmanager
def untraced_context() -> Iterator[None]:
    """Run the block in an empty context with instrumentation suppressed."""
    if _otel_context is None:
        yield
        return
    token = _otel_context.attach(_quiet())
    try:
        yield
    finally:
        _otel_context.detach(token)


def quiet_thread() -> None:
    """Give the calling thread that context for good (a thread pool's initializer:
    the pool's tasks then run in it, or in their submitter's where the ``threading``
    instrumentation carries it over, which is spanproof's own quiet thread's)."""
    if _otel_context is not None:
        _otel_context.attach(_quiet())


def untraced(target: Callable[..., _T]) -> Callable[..., _T]:
    """*target*, run by :func:`untraced_context` (for a thread's ``target``)."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> _T:
        with untraced_context():
            return target(*args, **kwargs)

    return run
