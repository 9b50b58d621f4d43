"""See what the retries and the limiter do: hooks told of every retry, and built-in instruments.

A hook is a callable taking a `RetryDetails`, called when a retry is scheduled, before its wait;
it may return a context manager, entered before the wait and left before the next attempt. A
hook with an ``on_call_end(summary)`` method is also given a `CallSummary` of each call that was
retried, throttled or cut short (never of a call whose first attempt was simply final, so the
happy path costs nothing). Hooks are process-wide::

    from clarifai_interceptor.instrumentation import (
        LoggingHook, OpenTelemetryInstruments, set_on_retry_hooks,
    )

    set_on_retry_hooks([LoggingHook(), OpenTelemetryInstruments()])

The default is ``(LoggingHook(),)``: one DEBUG record per retry. `OpenTelemetryInstruments`
needs the ``[otel]`` extra, `PrometheusInstruments` the ``[prometheus]`` one; both import their
library only when built.
"""

from __future__ import annotations

from ._data import CallSummary, CutBy, Reason, RetryDetails
from ._hooks import CallEndHook, RetryHook, get_on_retry_hooks, set_on_retry_hooks
from ._logging import LoggingHook
from ._otel import OpenTelemetryInstruments
from ._prometheus import PrometheusInstruments

__all__ = [
    "CallEndHook",
    "CallSummary",
    "CutBy",
    "LoggingHook",
    "OpenTelemetryInstruments",
    "PrometheusInstruments",
    "Reason",
    "RetryDetails",
    "RetryHook",
    "get_on_retry_hooks",
    "set_on_retry_hooks",
]
