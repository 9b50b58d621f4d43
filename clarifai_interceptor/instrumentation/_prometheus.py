"""Prometheus instruments (extra ``[prometheus]``): the retry figures as counters, histograms and
gauges.

``prometheus_client`` is imported when `PrometheusInstruments` is built, never before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._data import CallSummary, RetryDetails
from ._figures import (
    DELAY_BUCKETS,
    RETRIES_BUCKETS,
    budget_tokens,
    limiter_rates,
    method_attribute,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["PrometheusInstruments"]

_CALL = ("grpc_method", "grpc_target", "outcome")


class PrometheusInstruments:
    """The retry figures on a Prometheus registry: register it as a hook.

    ``set_on_retry_hooks([LoggingHook(), PrometheusInstruments()])``. The same figures as
    `OpenTelemetryInstruments`: ``clarifai_client_retries_total`` per retry,
    ``clarifai_client_call_retries`` and ``clarifai_client_call_retry_delay_seconds`` per call
    that retried, ``clarifai_client_attempts_throttled_total``,
    ``clarifai_client_calls_given_up_total``, and the gauges
    ``clarifai_client_rate_limit_attempts_per_second`` and
    ``clarifai_client_retry_budget_tokens``, read when the registry is collected. Labels are
    method names, outcome names, targets and key digests: never a secret.

    Args:
        registry: The registry to add the metrics to; None for ``prometheus_client.REGISTRY``.
            One set of instruments per registry: a second one fails with ``ValueError``
            (duplicated timeseries), having added nothing.

    Raises:
        ImportError: ``prometheus_client`` is not installed (``pip install
            clarifai-interceptor[prometheus]``).
        ValueError: The registry already has these metrics.
    """

    __slots__ = ("_collector", "_cut", "_delay", "_retries", "_retry_count", "_throttled")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client as prom  # noqa: PLC0415 (an optional dependency)

        self._retry_count = prom.Counter(
            "clarifai_client_retries",
            "Retries scheduled",
            ("grpc_method", "grpc_target", "outcome", "reason"),
            registry=None,
        )
        self._retries = prom.Histogram(
            "clarifai_client_call_retries",
            "Retries per call (the first attempt is not one); calls without retries are not "
            "recorded",
            _CALL,
            buckets=RETRIES_BUCKETS,
            registry=None,
        )
        self._delay = prom.Histogram(
            "clarifai_client_call_retry_delay_seconds",
            "Total time per call spent waiting between attempts",
            _CALL,
            buckets=DELAY_BUCKETS,
            registry=None,
        )
        self._throttled = prom.Counter(
            "clarifai_client_attempts_throttled",
            "Attempts the server throttled",
            ("grpc_method", "grpc_target"),
            registry=None,
        )
        self._cut = prom.Counter(
            "clarifai_client_calls_given_up",
            "Calls whose retrying was cut short while the outcome was still worth a retry, by "
            "cut_by: budget, limiter, attempts, deadline, pushback",
            (*_CALL, "cut_by"),
            registry=None,
        )
        # One collector for all: registering it adds every metric, or none.
        self._collector = _Collector(
            (self._retry_count, self._retries, self._delay, self._throttled, self._cut)
        )
        (prom.REGISTRY if registry is None else registry).register(self._collector)

    def __call__(self, details: RetryDetails) -> None:
        """Count a retry (a hook: not called directly)."""
        self._retry_count.labels(
            method_attribute(details.method), details.target, details.outcome, details.reason
        ).inc()

    def on_call_end(self, summary: CallSummary) -> None:
        """Record how a retried, throttled or cut call ended (a hook: not called directly)."""
        method = method_attribute(summary.method)
        labels = (method, summary.target, summary.outcome)
        retries = summary.attempts - 1
        if retries > 0:  # as gRFC A96 says: 0 is not recorded
            self._retries.labels(*labels).observe(retries)
            self._delay.labels(*labels).observe(summary.waited)
        if summary.throttled > 0:
            self._throttled.labels(method, summary.target).inc(summary.throttled)
        if summary.cut_by is not None:
            self._cut.labels(*labels, summary.cut_by).inc()

    def __repr__(self) -> str:
        return "<PrometheusInstruments>"


class _Collector:
    """The instruments' metrics and the two gauges of live state, as one collector."""

    def __init__(self, metrics: Iterable[Any]) -> None:
        self._metrics = tuple(metrics)

    def describe(self) -> list[Metric]:
        return [*(m for metric in self._metrics for m in metric.describe()), *_gauges(False)]

    def collect(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.collect()
        yield from _gauges(True)


def _gauges(read: bool) -> list[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 (optional dependency)

    rates = GaugeMetricFamily(
        "clarifai_client_rate_limit_attempts_per_second",
        "The rate each active client-side rate-limit bucket paces to",
        labels=("key",),
    )
    tokens = GaugeMetricFamily(
        "clarifai_client_retry_budget_tokens",
        "Tokens left in the retry budget (the emptiest bucket per target)",
        labels=("grpc_target",),
    )
    if read:
        for key, rate in limiter_rates().items():
            rates.add_metric((key,), rate)
        for target, left in budget_tokens().items():
            tokens.add_metric((target,), left)
    return [rates, tokens]
