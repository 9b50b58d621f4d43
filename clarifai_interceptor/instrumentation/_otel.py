"""OpenTelemetry instruments (extra ``[otel]``): a span event per retry, and retry metrics.

``opentelemetry-api`` is imported when `OpenTelemetryInstruments` is built, never before: the
package works without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ._data import CallSummary, RetryDetails
from ._figures import (
    DELAY_BUCKETS,
    RETRIES_BUCKETS,
    budget_tokens,
    limiter_rates,
    method_attribute,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation

__all__ = ["EVENT", "OpenTelemetryInstruments"]

#: The name of the span event added per retry.
EVENT = "clarifai.retry"
_SCOPE = "clarifai_interceptor"


def _histogram(
    meter: Meter, name: str, unit: str, description: str, buckets: Sequence[float]
) -> Histogram:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23 takes no advice; views can set the buckets
        return meter.create_histogram(name, unit=unit, description=description)


class OpenTelemetryInstruments:
    """Retry metrics and span events through OpenTelemetry: register it as a hook.

    ``set_on_retry_hooks([LoggingHook(), OpenTelemetryInstruments()])``. Each retry adds a
    ``clarifai.retry`` event to the span active where the retry is scheduled (the caller's
    span on blocking calls and in asyncio tasks) and counts in ``clarifai.client.retries``;
    each call that was retried, throttled or cut short records its retries and total wait
    (gRFC A96's ``grpc.client.call.retries`` and ``grpc.client.call.retry_delay``), its
    throttled attempts, and whether the budget, the limiter, the attempts or the deadline cut
    it short. Two observable gauges read the rate limiter's current rates and the retry
    budgets' tokens. Attributes are method names, outcome names, targets and key digests:
    never a secret.

    Args:
        meter_provider: Where the metrics go; None for the global provider.
        span_events: Whether to add a span event per retry.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install
            clarifai-interceptor[otel]``).
    """

    __slots__ = (
        "_cut",
        "_delay",
        "_gauges",
        "_retries",
        "_retry_count",
        "_throttled",
        "_trace",
        "span_events",
    )

    def __init__(self, meter_provider: MeterProvider | None = None, *, span_events: bool = True):
        from opentelemetry import metrics, trace  # noqa: PLC0415 (an optional dependency)

        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._trace = trace
        self.span_events = bool(span_events)
        self._retries = _histogram(
            meter,
            "grpc.client.call.retries",
            "{retry}",
            "Retries per call (the first attempt is not one); calls without retries are not "
            "recorded",
            RETRIES_BUCKETS,
        )
        self._delay = _histogram(
            meter,
            "grpc.client.call.retry_delay",
            "s",
            "Total time per call spent waiting between attempts",
            DELAY_BUCKETS,
        )
        self._retry_count = meter.create_counter(
            "clarifai.client.retries", unit="{retry}", description="Retries scheduled"
        )
        self._throttled = meter.create_counter(
            "clarifai.client.attempts.throttled",
            unit="{attempt}",
            description="Attempts the server throttled",
        )
        self._cut = meter.create_counter(
            "clarifai.client.calls.given_up",
            unit="{call}",
            description="Calls whose retrying was cut short while the outcome was still "
            "worth a retry, by clarifai.cut_by: budget, limiter, attempts, deadline, pushback",
        )
        self._gauges = (
            meter.create_observable_gauge(
                "clarifai.client.rate_limit.rate",
                callbacks=[_observe_rates],
                unit="{attempt}/s",
                description="The rate each active client-side rate-limit bucket paces to",
            ),
            meter.create_observable_gauge(
                "clarifai.client.retry_budget.tokens",
                callbacks=[_observe_tokens],
                unit="{token}",
                description="Tokens left in the retry budget (the emptiest bucket per target)",
            ),
        )

    def __call__(self, details: RetryDetails) -> None:
        """Record a retry (a hook: not called directly)."""
        method = method_attribute(details.method)
        self._retry_count.add(
            1,
            {
                "grpc.method": method,
                "grpc.target": details.target,
                "clarifai.outcome": details.outcome,
                "clarifai.retry.reason": details.reason,
            },
        )
        if not self.span_events:
            return
        span = self._trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {
            "grpc.method": method,
            "grpc.target": details.target,
            "clarifai.retry.attempt": details.attempt,
            "clarifai.outcome": details.outcome,
            "clarifai.retry.throttle": details.throttle,
            "clarifai.retry.wait": details.wait,
            "clarifai.retry.reason": details.reason,
            "clarifai.call.elapsed": details.elapsed,
        }
        if details.deadline_left is not None:
            attributes["clarifai.call.deadline_left"] = details.deadline_left
        span.add_event(EVENT, attributes)

    def on_call_end(self, summary: CallSummary) -> None:
        """Record how a retried, throttled or cut call ended (a hook: not called directly)."""
        attributes = {
            "grpc.method": method_attribute(summary.method),
            "grpc.target": summary.target,
            "clarifai.outcome": summary.outcome,
        }
        retries = summary.attempts - 1
        if retries > 0:  # as gRFC A96 says: 0 is not recorded
            self._retries.record(retries, attributes)
            self._delay.record(summary.waited, attributes)
        if summary.throttled > 0:
            where = {"grpc.method": attributes["grpc.method"], "grpc.target": summary.target}
            self._throttled.add(summary.throttled, where)
        if summary.cut_by is not None:
            self._cut.add(1, {**attributes, "clarifai.cut_by": summary.cut_by})

    def __repr__(self) -> str:
        return f"<OpenTelemetryInstruments span_events={self.span_events}>"


def _observe_rates(_options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation  # noqa: PLC0415 (an optional dependency)

    return [
        Observation(rate, {"clarifai.rate_limit.key": key}) for key, rate in limiter_rates().items()
    ]


def _observe_tokens(_options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation  # noqa: PLC0415 (an optional dependency)

    return [
        Observation(tokens, {"grpc.target": target}) for target, tokens in budget_tokens().items()
    ]
