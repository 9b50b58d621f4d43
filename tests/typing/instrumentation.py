"""Type-checked only (mypy strict): the instrumentation API and the testing switch as a user
would call them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from clarifai_interceptor.instrumentation import (
    CallSummary,
    LoggingHook,
    OpenTelemetryInstruments,
    PrometheusInstruments,
    RetryDetails,
    RetryHook,
    get_on_retry_hooks,
    set_on_retry_hooks,
)
from clarifai_interceptor.testing import set_testing


def alert(details: RetryDetails) -> None:
    """A plain hook."""
    if details.throttle and details.reason == "pushback":
        print(details.method, details.wait, details.deadline_left)  # noqa: T201


@contextlib.contextmanager
def during_wait(details: RetryDetails) -> Iterator[None]:
    """A hook whose context manager spans the wait."""
    yield


class Counting:
    """A hook object that also wants call summaries."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, details: RetryDetails) -> None:
        self.calls += details.attempt

    def on_call_end(self, summary: CallSummary) -> None:
        self.calls += summary.attempts if summary.cut_by != "budget" else 0


hooks: list[RetryHook] = [
    LoggingHook(logging.INFO),
    alert,
    during_wait,
    Counting(),
    OpenTelemetryInstruments(meter_provider=None, span_events=False),
    PrometheusInstruments(CollectorRegistry()),
]
set_on_retry_hooks(hooks)
set_on_retry_hooks(None)
current: tuple[RetryHook, ...] = get_on_retry_hooks()

with set_testing(True, attempts=2, cap=True):
    pass
set_testing(False)
