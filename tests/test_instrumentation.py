"""Instrumentation: the hook registry, the logging hook, the OpenTelemetry and Prometheus
instruments, the secrets guard over exported telemetry, and the retry log records end to end.

Unit tests feed hand-made `RetryDetails` / `CallSummary` records through the registry's
engine-facing functions; the gauges read real rate-limit and retry-budget buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path as FsPath
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2
from conftest import PAT, PAT_CREDS, AioPath, Path, T
from helpers import (
    ROOT,
    STREAM_METHOD,
    SUCCESS,
    THROTTLED,
    UNAVAILABLE,
    aio_generate,
    bucket_of,
    generate,
    output,
    predict_request,
    read_all,
    three_requests,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from clarifai_interceptor import (
    DEFAULT_RATE_LIMIT,
    ClarifaiInterceptor,
    RetryBudget,
    RetryPolicy,
    _limiter,
    _switch,
    aio,
    insecure_channel,
)
from clarifai_interceptor._budget import TokenBucket
from clarifai_interceptor._limiter import RateLimit
from clarifai_interceptor._switch import set_testing
from clarifai_interceptor.instrumentation import (
    CallSummary,
    LoggingHook,
    OpenTelemetryInstruments,
    PrometheusInstruments,
    RetryDetails,
    _figures,
    _hooks,
    get_on_retry_hooks,
    set_on_retry_hooks,
)
from clarifai_interceptor.testing import Fail, FakeClarifai, Status, Stream

METHOD = "/clarifai.api.V2/PostInputs"
ATTRIBUTE_METHOD = "clarifai.api.V2/PostInputs"
TARGET = "fake.target.example:443"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Every test starts and ends with the default hooks and the testing switch off."""
    set_on_retry_hooks(None)
    set_testing(False)
    yield
    set_on_retry_hooks(None)
    set_testing(False)


def details(**changes: Any) -> RetryDetails:
    fields: dict[str, Any] = {
        "method": METHOD,
        "target": TARGET,
        "attempt": 1,
        "outcome": "UNAVAILABLE",
        "throttle": False,
        "wait": 0.25,
        "reason": "backoff",
        "elapsed": 0.01,
        "deadline_left": 29.9,
    }
    fields.update(changes)
    return RetryDetails(**fields)


def summary(**changes: Any) -> CallSummary:
    fields: dict[str, Any] = {
        "method": METHOD,
        "target": TARGET,
        "attempts": 3,
        "outcome": "SUCCESS",
        "throttled": 0,
        "waited": 0.3,
        "cut_by": None,
        "elapsed": 0.35,
    }
    fields.update(changes)
    return CallSummary(**fields)


# -- the records -----------------------------------------------------------------------------


def test_records_are_frozen_keyword_only_and_hold_no_secret_fields() -> None:
    record = details()
    with pytest.raises(AttributeError):
        record.wait = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryDetails(METHOD, TARGET, 1, "UNAVAILABLE", False, 0.1, "backoff", 0.0, None)  # type: ignore[misc]
    assert not hasattr(record, "__dict__")  # slots
    names = set(RetryDetails.__dataclass_fields__) | set(CallSummary.__dataclass_fields__)
    assert not names & {"metadata", "request", "response", "credentials", "secret"}
    assert summary() == summary()  # comparable, for tests of users' own hooks


# -- the registry ----------------------------------------------------------------------------


def test_default_hooks_are_one_logging_hook_and_none_restores_them() -> None:
    assert get_on_retry_hooks() == (LoggingHook(),)
    hook = LoggingHook(logging.INFO)
    set_on_retry_hooks([hook])
    assert get_on_retry_hooks() == (hook,)
    set_on_retry_hooks(None)
    assert get_on_retry_hooks() == (LoggingHook(),)


def test_an_empty_registry_calls_nothing_and_returns_none() -> None:
    set_on_retry_hooks([])
    assert get_on_retry_hooks() == ()
    assert _hooks.retry_scheduled(details()) is None
    _hooks.call_ended(summary())  # nothing to call, no error


def test_hooks_are_called_in_order_with_the_details() -> None:
    seen: list[tuple[str, RetryDetails]] = []
    record = details(attempt=2, outcome="CONN_THROTTLED", throttle=True)
    set_on_retry_hooks([lambda d: seen.append(("first", d)), lambda d: seen.append(("second", d))])
    assert _hooks.retry_scheduled(record) is None  # nothing entered: nothing to leave
    assert seen == [("first", record), ("second", record)]


@pytest.mark.parametrize(
    "hooks",
    ["not-a-list", b"bytes", 3, [print, 3], [object()]],
    ids=["str", "bytes", "int", "a-non-callable", "an-object"],
)
def test_a_bad_registry_is_refused_and_changes_nothing(hooks: Any) -> None:
    before = get_on_retry_hooks()
    with pytest.raises(TypeError, match="hooks must be"):
        set_on_retry_hooks(hooks)
    assert get_on_retry_hooks() == before


def test_a_non_callable_on_call_end_is_refused() -> None:
    class Broken:
        on_call_end = 3

        def __call__(self, details: RetryDetails) -> None:
            pass

    with pytest.raises(TypeError, match=r"Broken\.on_call_end must be callable"):
        set_on_retry_hooks([Broken()])


def test_a_raising_hook_is_logged_once_with_its_traceback_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def broken(details: RetryDetails) -> None:
        raise RuntimeError("hook bug")

    set_on_retry_hooks([broken, lambda d: seen.append(d.attempt)])
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    for attempt in (1, 2, 3):
        assert _hooks.retry_scheduled(details(attempt=attempt)) is None
    assert seen == [1, 2, 3]
    records = [r for r in caplog.records if "instrumentation hook" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert records[0].getMessage() == (
        "instrumentation hook test_a_raising_hook_is_logged_once_with_its_traceback_and_the_"
        "others_still_run.<locals>.broken raised RuntimeError; the call goes on"
    )
    assert records[0].exc_info is not None
    assert records[1].exc_info is None
    # Setting the hooks again logs the next failure in full again.
    set_on_retry_hooks([broken])
    _hooks.retry_scheduled(details())
    assert caplog.records[-1].levelno == logging.WARNING


def test_a_raising_on_call_end_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[CallSummary] = []

    class Broken:
        def __call__(self, details: RetryDetails) -> None:
            pass

        def on_call_end(self, summary: CallSummary) -> None:
            raise ValueError("summary bug")

    class Good:
        def __call__(self, details: RetryDetails) -> None:
            pass

        def on_call_end(self, summary: CallSummary) -> None:
            ended.append(summary)

    set_on_retry_hooks([Broken(), LoggingHook(), Good()])  # LoggingHook has no on_call_end
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    _hooks.call_ended(summary())
    assert ended == [summary()]
    (record,) = [r for r in caplog.records if "instrumentation hook" in r.getMessage()]
    assert record.getMessage() == (
        "instrumentation hook "
        "test_a_raising_on_call_end_is_logged_and_the_others_still_run.<locals>.Broken "
        "raised in on_call_end ValueError; the call goes on"
    )


def test_context_managers_are_entered_in_order_and_left_in_reverse() -> None:
    events: list[tuple[str, object]] = []

    class Span:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> Span:
            events.append(("enter", self.name))
            return self

        def __exit__(self, *exc: object) -> None:
            events.append(("exit", self.name))

    @contextlib.contextmanager
    def generated(details: RetryDetails) -> Iterator[None]:
        events.append(("enter", f"generated {details.attempt}"))
        yield
        events.append(("exit", f"generated {details.attempt}"))

    set_on_retry_hooks(
        [
            lambda d: Span("a"),
            lambda d: events.append(("plain", d.attempt)),
            generated,
            lambda d: Span("c"),
        ]
    )
    leave = _hooks.retry_scheduled(details(attempt=4))
    assert events == [("enter", "a"), ("plain", 4), ("enter", "generated 4"), ("enter", "c")]
    assert leave is not None
    leave()
    assert events[4:] == [("exit", "c"), ("exit", "generated 4"), ("exit", "a")]


def test_context_managers_that_raise_are_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    class Fine:
        def __enter__(self) -> None:
            events.append("enter fine")

        def __exit__(self, *exc: object) -> None:
            events.append("exit fine")

    class BadEnter:
        def __enter__(self) -> None:
            raise RuntimeError("enter bug")

        def __exit__(self, *exc: object) -> None:
            events.append("exit bad enter")  # never: it was never entered

    class BadExit:
        def __enter__(self) -> None:
            events.append("enter bad exit")

        def __exit__(self, *exc: object) -> None:
            raise RuntimeError("exit bug")

    def bad_enter(d: RetryDetails) -> BadEnter:
        return BadEnter()

    def bad_exit(d: RetryDetails) -> BadExit:
        return BadExit()

    def not_a_manager(d: RetryDetails) -> int:
        return 42

    set_on_retry_hooks([lambda d: Fine(), bad_enter, bad_exit, not_a_manager])
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    leave = _hooks.retry_scheduled(details())
    assert leave is not None
    leave()
    assert events == ["enter fine", "enter bad exit", "exit fine"]
    messages = [r.getMessage() for r in caplog.records if "instrumentation hook" in r.getMessage()]
    assert [m.split(" ", 3)[3] for m in messages] == [
        "returned a context manager that raised RuntimeError; the call goes on",
        "returned a int, not a context manager; the call goes on",
        "left a context manager that raised RuntimeError; the call goes on",
    ]


def test_a_keyboard_interrupt_in_a_hook_is_not_swallowed() -> None:
    def interrupted(details: RetryDetails) -> None:
        raise KeyboardInterrupt

    set_on_retry_hooks([interrupted])
    with pytest.raises(KeyboardInterrupt):
        _hooks.retry_scheduled(details())


def test_the_registry_is_consistent_across_threads() -> None:
    """Readers always see one whole set of hooks while writers replace it."""
    local = threading.local()

    class Tagged:
        def __init__(self, tag: int, part: str) -> None:
            self.tag, self.part = tag, part

        def __call__(self, details: RetryDetails) -> None:
            local.seen.append((self.tag, self.part))

        def on_call_end(self, summary: CallSummary) -> None:
            local.ended.append(self.tag)

    sets = [[Tagged(tag, "a"), Tagged(tag, "b")] for tag in range(8)]
    problems: list[object] = []
    start = threading.Barrier(8)

    def write(offset: int) -> None:
        start.wait()
        for i in range(400):
            set_on_retry_hooks(sets[(i + offset) % len(sets)])

    def read() -> None:
        start.wait()
        for _ in range(1500):
            local.seen, local.ended = [], []
            _hooks.retry_scheduled(details())
            _hooks.call_ended(summary())
            tags = {tag for tag, _ in local.seen}
            if len(local.seen) != 2 or len(tags) != 1 or len(set(local.ended)) != 1:
                problems.append((local.seen, local.ended))

    set_on_retry_hooks(sets[0])
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []


# -- the logging hook ------------------------------------------------------------------------


def test_the_default_logging_hook_logs_todays_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    assert _hooks.retry_scheduled(details(attempt=2, outcome="CONN_THROTTLED", wait=0.25)) is None
    (record,) = caplog.records
    assert record.name == "clarifai_interceptor"
    assert record.levelno == logging.DEBUG
    assert (
        record.getMessage() == "retrying PostInputs: attempt 2 got CONN_THROTTLED; waiting 0.250 s"
    )
    assert record.__dict__["rpc_method"] == "PostInputs"
    assert record.__dict__["attempt"] == 2
    assert record.__dict__["outcome"] == "CONN_THROTTLED"
    assert record.__dict__["wait"] == 0.25


def test_the_logging_hook_level_and_logger_are_configurable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clarifai_interceptor")
    caplog.set_level(logging.DEBUG, logger="my.app")
    set_on_retry_hooks([LoggingHook(), LoggingHook(logging.INFO), LoggingHook(logger="my.app")])
    _hooks.retry_scheduled(details(method="PostInputs"))  # a short name works too
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("clarifai_interceptor", logging.INFO),  # the DEBUG one is below the logger's level
        ("my.app", logging.DEBUG),
    ]
    assert {r.getMessage() for r in caplog.records} == {
        "retrying PostInputs: attempt 1 got UNAVAILABLE; waiting 0.250 s"
    }


@pytest.mark.parametrize("level", ["DEBUG", 1.5, True, None])
def test_the_logging_hook_refuses_a_bad_level(level: Any) -> None:
    with pytest.raises(ValueError, match="level must be a logging level"):
        LoggingHook(level)


def test_the_logging_hook_refuses_a_bad_logger_name() -> None:
    with pytest.raises(ValueError, match="logger must be a logger's name"):
        LoggingHook(logger=logging.getLogger("x"))  # type: ignore[arg-type]


# -- OpenTelemetry ---------------------------------------------------------------------------


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, InMemorySpanExporter, TracerProvider]]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    set_on_retry_hooks([LoggingHook(), OpenTelemetryInstruments(meter_provider=meters)])
    yield reader, exporter, tracers
    meters.shutdown()
    tracers.shutdown()


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def points(metric: Any) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(point.attributes.items()): point for point in metric.data.data_points}


def attrs(**values: Any) -> frozenset[tuple[str, Any]]:
    return frozenset({"grpc.method": ATTRIBUTE_METHOD, "grpc.target": TARGET, **values}.items())


def test_otel_adds_a_span_event_per_retry_on_the_active_span(otel: Any) -> None:
    _reader, exporter, tracers = otel
    tracer = tracers.get_tracer("test")
    with tracer.start_as_current_span("call"):
        leave = _hooks.retry_scheduled(details(attempt=1, wait=0.1))
        assert leave is None
        _hooks.retry_scheduled(
            details(
                attempt=2,
                outcome="CONN_THROTTLED",
                throttle=True,
                wait=0.3,
                reason="pushback",
                elapsed=0.2,
                deadline_left=None,
            )
        )
    (span,) = exporter.get_finished_spans()
    assert [event.name for event in span.events] == ["clarifai.retry", "clarifai.retry"]
    first, second = (dict(event.attributes) for event in span.events)
    assert first == {
        "grpc.method": ATTRIBUTE_METHOD,
        "grpc.target": TARGET,
        "clarifai.retry.attempt": 1,
        "clarifai.outcome": "UNAVAILABLE",
        "clarifai.retry.throttle": False,
        "clarifai.retry.wait": 0.1,
        "clarifai.retry.reason": "backoff",
        "clarifai.call.elapsed": 0.01,
        "clarifai.call.deadline_left": 29.9,
    }
    assert second["clarifai.retry.throttle"] is True
    assert second["clarifai.retry.reason"] == "pushback"
    assert "clarifai.call.deadline_left" not in second  # no deadline: no attribute


def test_otel_without_an_active_span_or_with_span_events_off_adds_no_event(otel: Any) -> None:
    reader, exporter, tracers = otel
    _hooks.retry_scheduled(details())  # no span is active: nothing to add to, no error
    instruments = OpenTelemetryInstruments(
        meter_provider=MeterProvider(metric_readers=[reader := InMemoryMetricReader()]),
        span_events=False,
    )
    assert repr(instruments) == "<OpenTelemetryInstruments span_events=False>"
    set_on_retry_hooks([instruments])
    with tracers.get_tracer("test").start_as_current_span("call"):
        _hooks.retry_scheduled(details())
    (span,) = exporter.get_finished_spans()
    assert span.events == ()
    (point,) = points(metrics(reader)["clarifai.client.retries"]).values()
    assert point.value == 1  # the metrics are still recorded


def test_otel_counts_each_retry_by_outcome_and_reason(otel: Any) -> None:
    reader, _exporter, _tracers = otel
    for record in (
        details(attempt=1),
        details(attempt=2),
        details(attempt=1, outcome="CONN_THROTTLED", throttle=True, reason="limiter"),
    ):
        _hooks.retry_scheduled(record)
    metric = metrics(reader)["clarifai.client.retries"]
    assert metric.unit == "{retry}"
    assert {key: point.value for key, point in points(metric).items()} == {
        attrs(**{"clarifai.outcome": "UNAVAILABLE", "clarifai.retry.reason": "backoff"}): 2,
        attrs(**{"clarifai.outcome": "CONN_THROTTLED", "clarifai.retry.reason": "limiter"}): 1,
    }


def test_otel_records_each_retried_calls_figures(otel: Any) -> None:
    reader, _exporter, _tracers = otel
    for record in (
        summary(attempts=3, waited=0.3),  # two retries, then success
        summary(attempts=5, outcome="UNAVAILABLE", waited=1.5, cut_by="attempts"),
        # Throttled once and refused by the limiter before any retry: no retries recorded.
        summary(attempts=1, outcome="CONN_THROTTLED", throttled=1, waited=0.0, cut_by="limiter"),
        summary(attempts=2, outcome="CONN_THROTTLED", throttled=2, waited=0.1, cut_by="budget"),
    ):
        _hooks.call_ended(record)
    found = metrics(reader)

    retries = found["grpc.client.call.retries"]
    assert retries.unit == "{retry}"
    by_outcome = {dict(key)["clarifai.outcome"]: point for key, point in points(retries).items()}
    assert {o: (p.count, p.sum) for o, p in by_outcome.items()} == {
        "SUCCESS": (1, 2),
        "UNAVAILABLE": (1, 4),
        "CONN_THROTTLED": (1, 1),
    }
    assert by_outcome["SUCCESS"].explicit_bounds == (1, 2, 3, 4, 5)  # gRFC A96's
    assert list(by_outcome["SUCCESS"].bucket_counts) == [0, 1, 0, 0, 0, 0]

    delay = found["grpc.client.call.retry_delay"]
    assert delay.unit == "s"
    by_outcome = {dict(key)["clarifai.outcome"]: point for key, point in points(delay).items()}
    assert {o: (p.count, round(p.sum, 9)) for o, p in by_outcome.items()} == {
        "SUCCESS": (1, 0.3),
        "UNAVAILABLE": (1, 1.5),
        "CONN_THROTTLED": (1, 0.1),
    }
    assert by_outcome["SUCCESS"].explicit_bounds == _figures.DELAY_BUCKETS

    throttled = found["clarifai.client.attempts.throttled"]
    assert throttled.unit == "{attempt}"
    assert {k: p.value for k, p in points(throttled).items()} == {attrs(): 3}

    given_up = found["clarifai.client.calls.given_up"]
    assert given_up.unit == "{call}"
    assert {k: p.value for k, p in points(given_up).items()} == {
        attrs(**{"clarifai.outcome": "UNAVAILABLE", "clarifai.cut_by": "attempts"}): 1,
        attrs(**{"clarifai.outcome": "CONN_THROTTLED", "clarifai.cut_by": "limiter"}): 1,
        attrs(**{"clarifai.outcome": "CONN_THROTTLED", "clarifai.cut_by": "budget"}): 1,
    }


@pytest.fixture
def live_buckets() -> Iterator[dict[str, Any]]:
    """Real buckets: two retry budgets on one target, one on another; a paced and a dormant
    rate-limit bucket. The figures of other tests' buckets are ignored by the tests."""
    spent = TokenBucket(RetryBudget(max_tokens=10, token_ratio=0.1), TARGET)
    for _ in range(7):
        spent.record(True, None)
    full = TokenBucket(RetryBudget(max_tokens=10), TARGET)
    other = TokenBucket(RetryBudget(max_tokens=4), "other.example:443")
    paced = bucket_of(RateLimit(per_second=5.0), "fake-limiter-pat-one", TARGET)
    dormant = bucket_of(RateLimit(), "fake-limiter-pat-two", TARGET)
    yield {
        "budgets": (spent, full, other),
        "paced": _limiter.identity("fake-limiter-pat-one", TARGET, RateLimit(per_second=5.0)),
        "dormant": _limiter.identity("fake-limiter-pat-two", TARGET, RateLimit()),
        "buckets": (paced, dormant),
    }
    _limiter._reset()


def test_otel_gauges_read_the_live_budgets_and_limiter_buckets(
    otel: Any, live_buckets: dict[str, Any]
) -> None:
    reader, _exporter, _tracers = otel
    found = metrics(reader)
    tokens = found["clarifai.client.retry_budget.tokens"]
    assert tokens.unit == "{token}"
    values = {dict(k)["grpc.target"]: p.value for k, p in points(tokens).items()}
    assert values[TARGET] == 3.0  # the emptiest of the two buckets to that target
    assert values["other.example:443"] == 4.0
    rates = found["clarifai.client.rate_limit.rate"]
    assert rates.unit == "{attempt}/s"
    values = {dict(k)["clarifai.rate_limit.key"]: p.value for k, p in points(rates).items()}
    assert values[live_buckets["paced"]] == 5.0
    assert live_buckets["dormant"] not in values  # dormant: no rate to show
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in values)  # digests only

    live_buckets["budgets"][0].record(False, object())  # a success gives back 0.1
    values = {
        dict(k)["grpc.target"]: p.value
        for k, p in points(metrics(reader)["clarifai.client.retry_budget.tokens"]).items()
    }
    assert values[TARGET] == pytest.approx(3.1)


def test_one_key_under_two_limits_shows_the_slower_rate(live_buckets: dict[str, Any]) -> None:
    fast = RateLimit(per_second=8.0, key="fake-shared-key")
    slow = RateLimit(per_second=2.0, key="fake-shared-key")
    for limit in (fast, slow, fast):  # the third is the first's bucket again
        bucket_of(limit, "fake-limiter-pat-one", TARGET)
    bucket_of(dataclasses.replace(slow, per_second=9.0), "fake-pat-four", TARGET)
    key = _limiter.identity("ignored", TARGET, fast)
    assert key == _limiter.identity("ignored", TARGET, slow)  # keyed by the name, not the secret
    assert _figures.limiter_rates()[key] == 2.0


def test_a_limiter_bucket_that_fails_to_answer_is_skipped(live_buckets: dict[str, Any]) -> None:
    class Unreachable:
        def rate(self) -> float:
            raise ConnectionError("store down")

    with _limiter._LOCK:
        _limiter._BUCKETS["f" * 32, RateLimit(key="x")] = Unreachable()  # type: ignore[assignment]
    rates = _figures.limiter_rates()
    assert "f" * 32 not in rates
    assert rates[live_buckets["paced"]] == 5.0


def test_otel_falls_back_when_the_api_takes_no_bucket_advice() -> None:
    class OldMeter:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def create_histogram(self, name: str, **kwargs: Any) -> str:
            if "explicit_bucket_boundaries_advisory" in kwargs:
                raise TypeError("unexpected keyword argument")
            self.calls.append({"name": name, **kwargs})
            return name

    meter = OldMeter()
    from clarifai_interceptor.instrumentation._otel import _histogram  # noqa: PLC0415

    assert _histogram(meter, "h", "s", "d", (1.0,)) == "h"  # type: ignore[arg-type]
    assert meter.calls == [{"name": "h", "unit": "s", "description": "d"}]


# -- Prometheus ------------------------------------------------------------------------------


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    set_on_retry_hooks([LoggingHook(), PrometheusInstruments(registry)])
    return registry


def labels(**values: str) -> dict[str, str]:
    return {"grpc_method": ATTRIBUTE_METHOD, "grpc_target": TARGET, **values}


def test_prometheus_counts_retries_and_records_calls(registry: CollectorRegistry) -> None:
    _hooks.retry_scheduled(details(attempt=1))
    _hooks.retry_scheduled(details(attempt=2))
    _hooks.retry_scheduled(details(outcome="CONN_THROTTLED", throttle=True, reason="pushback"))
    _hooks.call_ended(summary(attempts=3, waited=0.3))
    _hooks.call_ended(summary(attempts=5, outcome="UNAVAILABLE", waited=1.5, cut_by="attempts"))
    _hooks.call_ended(
        summary(attempts=1, outcome="CONN_THROTTLED", throttled=1, waited=0.0, cut_by="limiter")
    )
    value = registry.get_sample_value
    assert (
        value("clarifai_client_retries_total", labels(outcome="UNAVAILABLE", reason="backoff")) == 2
    )
    assert (
        value("clarifai_client_retries_total", labels(outcome="CONN_THROTTLED", reason="pushback"))
        == 1
    )
    ok = labels(outcome="SUCCESS")
    assert value("clarifai_client_call_retries_count", ok) == 1
    assert value("clarifai_client_call_retries_sum", ok) == 2
    assert value("clarifai_client_call_retries_bucket", {**ok, "le": "1.0"}) == 0
    assert value("clarifai_client_call_retries_bucket", {**ok, "le": "2.0"}) == 1
    assert value("clarifai_client_call_retries_bucket", {**ok, "le": "5.0"}) == 1
    failed = labels(outcome="UNAVAILABLE")
    assert value("clarifai_client_call_retries_sum", failed) == 4
    assert value("clarifai_client_call_retry_delay_seconds_sum", ok) == pytest.approx(0.3)
    assert value("clarifai_client_call_retry_delay_seconds_sum", failed) == pytest.approx(1.5)
    assert value("clarifai_client_call_retry_delay_seconds_bucket", {**ok, "le": "0.4"}) == 1
    assert value("clarifai_client_call_retry_delay_seconds_bucket", {**ok, "le": "0.25"}) == 0
    throttled = labels(outcome="CONN_THROTTLED")
    assert value("clarifai_client_call_retries_count", throttled) is None  # 0 is not recorded
    assert value("clarifai_client_attempts_throttled_total", labels()) == 1
    assert value("clarifai_client_calls_given_up_total", {**failed, "cut_by": "attempts"}) == 1
    assert value("clarifai_client_calls_given_up_total", {**throttled, "cut_by": "limiter"}) == 1
    assert value("clarifai_client_calls_given_up_total", {**ok, "cut_by": "budget"}) is None


def test_prometheus_gauges_read_the_live_buckets(
    registry: CollectorRegistry, live_buckets: dict[str, Any]
) -> None:
    value = registry.get_sample_value
    assert value("clarifai_client_retry_budget_tokens", {"grpc_target": TARGET}) == 3.0
    assert value("clarifai_client_retry_budget_tokens", {"grpc_target": "other.example:443"}) == 4
    name = "clarifai_client_rate_limit_attempts_per_second"
    assert value(name, {"key": live_buckets["paced"]}) == 5.0
    assert value(name, {"key": live_buckets["dormant"]}) is None
    text = generate_latest(registry).decode()
    assert "# TYPE clarifai_client_retry_budget_tokens gauge" in text
    assert "# TYPE clarifai_client_call_retries histogram" in text


def test_prometheus_refuses_a_second_set_on_one_registry_and_adds_nothing() -> None:
    registry = CollectorRegistry()
    first = PrometheusInstruments(registry)
    assert repr(first) == "<PrometheusInstruments>"
    before = generate_latest(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusInstruments(registry)
    assert generate_latest(registry) == before


def test_prometheus_uses_the_default_registry_when_given_none() -> None:
    import prometheus_client  # noqa: PLC0415

    instruments = PrometheusInstruments()
    try:
        set_on_retry_hooks([instruments])
        _hooks.retry_scheduled(details(target="default-registry.example:443"))
        assert (
            prometheus_client.REGISTRY.get_sample_value(
                "clarifai_client_retries_total",
                {
                    "grpc_method": ATTRIBUTE_METHOD,
                    "grpc_target": "default-registry.example:443",
                    "outcome": "UNAVAILABLE",
                    "reason": "backoff",
                },
            )
            == 1
        )
    finally:
        prometheus_client.REGISTRY.unregister(instruments._collector)


# -- optional dependencies -------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_the_package_never_imports_opentelemetry_or_prometheus_by_itself() -> None:
    result = run_python(
        """
        import sys
        import clarifai_interceptor, clarifai_interceptor.testing
        import clarifai_interceptor.instrumentation as instrumentation
        instrumentation.get_on_retry_hooks()
        optional = ("opentelemetry", "prometheus_client")
        print(sorted(m for m in sys.modules if m.split(".")[0] in optional))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_building_an_instrument_without_its_library_says_which_extra() -> None:
    result = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None
        sys.modules["prometheus_client"] = None
        from clarifai_interceptor.instrumentation import (
            OpenTelemetryInstruments, PrometheusInstruments,
        )
        for build in (OpenTelemetryInstruments, PrometheusInstruments):
            try:
                build()
            except ImportError as exc:
                print(type(exc).__name__, build.__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [
        "ModuleNotFoundError OpenTelemetryInstruments",
        "ModuleNotFoundError PrometheusInstruments",
    ]


# -- the secrets guard over telemetry --------------------------------------------------------

GUARD_PROBE = textwrap.dedent(
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from clarifai_interceptor import Credentials
    from clarifai_interceptor.instrumentation import (
        CallSummary, OpenTelemetryInstruments, PrometheusInstruments, RetryDetails,
    )

    # Built from parts: the secret must never appear in pytest's output, not even as source.
    SECRET = "-".join(["fake", "telemetry", "probe", "pat"])
    Credentials.from_pat(SECRET, user_id="u")


    def tracer():
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        return provider.get_tracer("probe")


    def test_span_attribute():
        with tracer().start_as_current_span("call") as span:
            span.set_attribute("auth", "Key " + SECRET)


    def test_span_event():
        with tracer().start_as_current_span("call") as span:
            span.add_event("retry", {"header": SECRET})


    def test_metric_attribute():
        reader = InMemoryMetricReader()
        MeterProvider(metric_readers=[reader]).get_meter("m").create_counter("c").add(
            1, {"who": SECRET}
        )
        reader.get_metrics_data()


    def test_prometheus_label():
        registry = CollectorRegistry()
        Counter("probe", "d", ["who"], registry=registry).labels(SECRET).inc()
        generate_latest(registry)


    def test_our_instruments_export_no_secret():
        reader = InMemoryMetricReader()
        otel = OpenTelemetryInstruments(MeterProvider(metric_readers=[reader]))
        prom = PrometheusInstruments(registry := CollectorRegistry())
        retry = RetryDetails(
            method="/clarifai.api.V2/PostInputs", target="t:1", attempt=1,
            outcome="UNAVAILABLE", throttle=False, wait=0.1, reason="backoff", elapsed=0.0,
            deadline_left=None,
        )
        end = CallSummary(
            method="/clarifai.api.V2/PostInputs", target="t:1", attempts=2, outcome="SUCCESS",
            throttled=0, waited=0.1, cut_by=None, elapsed=0.2,
        )
        with tracer().start_as_current_span("call"):
            for hook in (otel, prom):
                hook(retry)
                hook.on_call_end(end)
        assert reader.get_metrics_data() is not None
        assert b"clarifai_client_retries_total" in generate_latest(registry)
    """
)


def test_secrets_guard_fails_a_test_whose_telemetry_carries_a_secret(tmp_path: FsPath) -> None:
    (tmp_path / "test_probe.py").write_text(GUARD_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.secrets_guard",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-rfp",
            str(tmp_path / "test_probe.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    output = result.stdout + result.stderr
    outcomes = {
        name: outcome
        for outcome, name in re.findall(r"^(PASSED|FAILED) \S+::(\w+)", output, re.MULTILINE)
    }
    assert outcomes == {
        "test_span_attribute": "FAILED",
        "test_span_event": "FAILED",
        "test_metric_attribute": "FAILED",
        "test_prometheus_label": "FAILED",
        "test_our_instruments_export_no_secret": "PASSED",
    }, output
    assert "the attributes of an OpenTelemetry span ('call')" in output
    assert "an event's attributes of an OpenTelemetry span ('call')" in output
    assert "a data point's attributes of the OpenTelemetry metric 'c'" in output
    assert "a sample of the Prometheus metric 'probe'" in output
    assert "fake-telemetry-probe-pat" not in output


# -- end to end: a real server, every front end ----------------------------------------------

#: Exact waits: 0.01 s, then 0.02 s, ... (after a throttle too).
EXACT = RetryPolicy(
    initial_backoff=0.01, throttle_backoff=0.01, multiplier=2.0, jitter=0.0, max_backoff=1.0
)
FRONTS = (
    "wrapper",
    "interceptor",
    "wrapper-future",
    "interceptor-future",
    "aio-channel",
    "aio-interceptors",
)
E2E_T = 10


class Recorder:
    """A hook that keeps every record it is given (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.retries: list[RetryDetails] = []
        self.ends: list[CallSummary] = []

    def __call__(self, details: RetryDetails) -> None:
        with self.lock:
            self.retries.append(details)

    def on_call_end(self, summary: CallSummary) -> None:
        with self.lock:
            self.ends.append(summary)


def post_inputs(
    front: str,
    target: str,
    retry: RetryPolicy | None = EXACT,
    rate_limit: RateLimit | None = None,
    timeout: float = E2E_T,
) -> Any:
    """One PostInputs call through ``front``: the response, or the RpcError it raised."""
    request = service_pb2.PostInputsRequest()
    if front.startswith("aio"):

        async def call() -> Any:
            if front == "aio-channel":
                channel = aio.insecure_channel(
                    target, PAT_CREDS, retry=retry, rate_limit=rate_limit
                )
            else:
                chain = aio.interceptors(
                    PAT_CREDS, retry=retry, rate_limit=rate_limit, target=target
                )
                channel = grpc.aio.insecure_channel(target, interceptors=chain)
            async with channel:
                try:
                    return await service_pb2_grpc.V2Stub(channel).PostInputs(
                        request, timeout=timeout
                    )
                except grpc.RpcError as exc:
                    return exc

        return asyncio.run(call())
    if front.startswith("wrapper"):
        channel = insecure_channel(target, PAT_CREDS, retry=retry, rate_limit=rate_limit)
    else:
        interceptor = ClarifaiInterceptor(
            PAT_CREDS, retry=retry, rate_limit=rate_limit, target=target
        )
        channel = grpc.intercept_channel(grpc.insecure_channel(target), interceptor)
    with channel:
        method = service_pb2_grpc.V2Stub(channel).PostInputs
        try:
            if front.endswith("future"):
                return method.future(request, timeout=timeout).result(timeout=E2E_T)
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc


def check_details(record: RetryDetails, target: str, deadline: float = E2E_T) -> None:
    assert record.method == METHOD
    assert record.target == target
    assert 0 <= record.elapsed < E2E_T
    assert record.deadline_left is not None
    assert 0 < record.deadline_left <= deadline


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_hooks_see_each_retry_and_the_calls_summary(fake: FakeClarifai, front: str) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE, THROTTLED)
    response = post_inputs(front, fake.target)
    assert response.status.code == status_code_pb2.SUCCESS
    assert len(fake.calls_to("PostInputs")) == 3
    first, second = recorder.retries
    assert (first.attempt, first.outcome, first.throttle, first.wait, first.reason) == (
        1,
        "UNAVAILABLE",
        False,
        0.01,
        "backoff",
    )
    assert (second.attempt, second.outcome, second.throttle, second.wait, second.reason) == (
        2,
        "CONN_THROTTLED",
        True,
        0.02,
        "backoff",
    )
    for record in (first, second):
        check_details(record, fake.target)
    assert first.elapsed <= second.elapsed
    (end,) = recorder.ends
    assert (end.method, end.target, end.attempts, end.outcome, end.throttled, end.cut_by) == (
        METHOD,
        fake.target,
        3,
        "SUCCESS",
        1,
        None,
    )
    assert end.waited == pytest.approx(0.03)
    assert end.elapsed >= end.waited


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_the_happy_path_tells_no_hook(fake: FakeClarifai, front: str) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    assert recorder.retries == []
    assert recorder.ends == []


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_a_raising_hook_does_not_fail_the_call(fake: FakeClarifai, front: str) -> None:
    recorder = Recorder()

    class Broken:
        def __call__(self, details: RetryDetails) -> contextlib.AbstractContextManager[None]:
            raise RuntimeError("hook bug")

        def on_call_end(self, summary: CallSummary) -> None:
            raise RuntimeError("summary bug")

    set_on_retry_hooks([Broken(), recorder])
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE)
    assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    assert len(fake.calls_to("PostInputs")) == 2
    assert [r.attempt for r in recorder.retries] == [1]
    assert [e.attempts for e in recorder.ends] == [2]


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_a_context_manager_spans_the_wait_and_ends_before_the_next_attempt(
    fake: FakeClarifai, front: str
) -> None:
    times: list[tuple[str, int, float]] = []

    @contextlib.contextmanager
    def waiting(details: RetryDetails) -> Iterator[None]:
        times.append(("enter", details.attempt, time.monotonic()))
        yield
        times.append(("leave", details.attempt, time.monotonic()))

    set_on_retry_hooks([waiting])
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    arrivals = [call.time for call in fake.calls_to("PostInputs")]
    assert [(what, attempt) for what, attempt, _ in times] == [
        ("enter", 1),
        ("leave", 1),
        ("enter", 2),
        ("leave", 2),
    ]
    (_, _, enter1), (_, _, leave1), (_, _, enter2), (_, _, leave2) = times
    # Entered after the failed attempt reached the server, left before the next one did.
    assert arrivals[0] <= enter1 <= leave1 <= arrivals[1] <= enter2 <= leave2 <= arrivals[2]


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_otel_and_prometheus_count_exactly(fake: FakeClarifai, front: str) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    registry = CollectorRegistry()
    set_on_retry_hooks(
        [OpenTelemetryInstruments(meter_provider=meters), PrometheusInstruments(registry)]
    )
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE, THROTTLED)
    assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    fake.script("PostInputs", *[grpc.StatusCode.UNAVAILABLE] * 5)
    assert post_inputs(front, fake.target).code() == grpc.StatusCode.UNAVAILABLE
    found = metrics(reader)
    where = {"grpc.method": ATTRIBUTE_METHOD, "grpc.target": fake.target}
    retries = points(found["grpc.client.call.retries"])
    ok = frozenset({**where, "clarifai.outcome": "SUCCESS"}.items())
    failed = frozenset({**where, "clarifai.outcome": "UNAVAILABLE"}.items())
    assert {k: (p.count, p.sum) for k, p in retries.items()} == {ok: (1, 2), failed: (1, 4)}
    delay = points(found["grpc.client.call.retry_delay"])
    assert delay[ok].sum == pytest.approx(0.03)
    assert delay[failed].sum == pytest.approx(0.01 + 0.02 + 0.04 + 0.08)
    per_retry = points(found["clarifai.client.retries"])
    assert {dict(k)["clarifai.outcome"]: p.value for k, p in per_retry.items()} == {
        "UNAVAILABLE": 5,
        "CONN_THROTTLED": 1,
    }
    throttled = points(found["clarifai.client.attempts.throttled"])
    assert {k: p.value for k, p in throttled.items()} == {frozenset(where.items()): 1}
    given_up = points(found["clarifai.client.calls.given_up"])
    assert {k: p.value for k, p in given_up.items()} == {
        frozenset(
            {**where, "clarifai.outcome": "UNAVAILABLE", "clarifai.cut_by": "attempts"}.items()
        ): 1
    }
    value = registry.get_sample_value
    prom = {"grpc_method": ATTRIBUTE_METHOD, "grpc_target": fake.target}
    assert value("clarifai_client_call_retries_sum", {**prom, "outcome": "SUCCESS"}) == 2
    assert value("clarifai_client_call_retries_sum", {**prom, "outcome": "UNAVAILABLE"}) == 4
    assert value(
        "clarifai_client_call_retry_delay_seconds_sum", {**prom, "outcome": "UNAVAILABLE"}
    ) == pytest.approx(0.15)
    assert value("clarifai_client_attempts_throttled_total", prom) == 1
    assert (
        value(
            "clarifai_client_calls_given_up_total",
            {**prom, "outcome": "UNAVAILABLE", "cut_by": "attempts"},
        )
        == 1
    )
    meters.shutdown()


def test_e2e_unknown_statuses_make_one_outcome_not_one_series_each(fake: FakeClarifai) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    registry = CollectorRegistry()
    set_on_retry_hooks(
        [OpenTelemetryInstruments(meter_provider=meters), PrometheusInstruments(registry)]
    )
    known = set(status_code_pb2.StatusCode.values())
    unknown = [code for code in range(900_000, 901_000) if code not in known][:300]
    for code in unknown:  # retried once, then a status this clarifai_grpc has no name for
        fake.script("PostInputs", status_code_pb2.MODEL_LOADING, code)
    policy = dataclasses.replace(EXACT, initial_backoff=0, budget=None)
    with insecure_channel(fake.target, PAT_CREDS, retry=policy, rate_limit=None) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        got = [stub.PostInputs(service_pb2.PostInputsRequest(), timeout=E2E_T) for _ in unknown]
    assert [response.status.code for response in got] == unknown  # the number reaches the caller
    prom = {
        sample.labels["outcome"]
        for metric in registry.collect()
        for sample in metric.samples
        if "outcome" in sample.labels
    }
    assert prom == {"MODEL_LOADING", "UNKNOWN_STATUS"}  # retries' outcome, calls' outcome
    found = metrics(reader)
    calls = points(found["grpc.client.call.retries"])
    assert {dict(k)["clarifai.outcome"]: p.count for k, p in calls.items()} == {
        "UNKNOWN_STATUS": 300
    }
    meters.shutdown()


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_otel_adds_span_events_to_the_callers_span(fake: FakeClarifai, front: str) -> None:
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    set_on_retry_hooks([OpenTelemetryInstruments(meter_provider=meters)])
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE, THROTTLED)
    tracer = tracers.get_tracer("test")
    # asyncio.run (inside post_inputs) runs its task in a copy of this context: the span too.
    with tracer.start_as_current_span("caller"):
        assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "caller"]
    events = [dict(e.attributes) for e in span.events if e.name == "clarifai.retry"]
    assert [(e["clarifai.retry.attempt"], e["clarifai.outcome"]) for e in events] == [
        (1, "UNAVAILABLE"),
        (2, "CONN_THROTTLED"),
    ]
    assert events[1]["clarifai.retry.throttle"] is True
    assert events[0]["grpc.target"] == fake.target
    meters.shutdown()
    tracers.shutdown()


PUSHBACK_30MS = Fail(
    grpc.StatusCode.UNAVAILABLE, trailing_metadata=(("grpc-retry-pushback-ms", "30"),)
)
NO_RETRY_PLEASE = Fail(
    grpc.StatusCode.UNAVAILABLE, trailing_metadata=(("grpc-retry-pushback-ms", "-1"),)
)
#: Each case: the script, the policy, the rate limit, then the expected summary.
CUT_CASES = {
    "attempts": (
        [grpc.StatusCode.UNAVAILABLE] * 3,
        dataclasses.replace(EXACT, max_attempts=3),
        None,
        (3, "UNAVAILABLE", "attempts", 0.03),
    ),
    "budget": (
        [grpc.StatusCode.UNAVAILABLE],
        dataclasses.replace(EXACT, budget=RetryBudget(max_tokens=2)),
        None,
        (1, "UNAVAILABLE", "budget", 0.0),
    ),
    "pushback": (
        [NO_RETRY_PLEASE],
        EXACT,
        None,
        (1, "UNAVAILABLE", "pushback", 0.0),
    ),
    "deadline": (
        [grpc.StatusCode.UNAVAILABLE],
        dataclasses.replace(EXACT, initial_backoff=5.0, max_backoff=5.0, timeout=1.0),
        None,
        (1, "UNAVAILABLE", "deadline", 0.0),
    ),
    "limiter": (
        [grpc.StatusCode.UNAVAILABLE],
        EXACT,
        RateLimit(per_second=1.0, max_wait=0.0),
        (1, "UNAVAILABLE", "limiter", 0.0),
    ),
}


@pytest.mark.parametrize("case", CUT_CASES)
@pytest.mark.parametrize("front", FRONTS)
def test_e2e_the_summary_says_what_cut_the_retrying_short(
    fake: FakeClarifai, front: str, case: str
) -> None:
    script, policy, limit, (attempts, outcome, cut_by, waited) = CUT_CASES[case]
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", *script)
    result = post_inputs(front, fake.target, retry=policy, rate_limit=limit)
    assert result.code() == grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls_to("PostInputs")) == attempts
    (end,) = recorder.ends
    assert (end.attempts, end.outcome, end.cut_by, end.throttled) == (
        attempts,
        outcome,
        cut_by,
        0,
    )
    assert end.waited == pytest.approx(waited)
    assert len(recorder.retries) == attempts - 1


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_the_reason_is_pushback_or_limiter_when_they_set_the_wait(
    fake: FakeClarifai, front: str
) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", PUSHBACK_30MS)
    assert post_inputs(front, fake.target).status.code == status_code_pb2.SUCCESS
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE)
    # 20 attempts/s: the retry's permit comes about 50 ms after the first's, past the 10 ms
    # backoff, so the limiter sets the wait.
    limit = RateLimit(per_second=20.0, max_wait=None)
    assert post_inputs(front, fake.target, rate_limit=limit).status.code == SUCCESS
    pushed, paced = recorder.retries
    assert (pushed.reason, pushed.wait) == ("pushback", pytest.approx(0.03))
    assert paced.reason == "limiter"
    assert 0.01 < paced.wait <= 0.05
    assert [e.waited for e in recorder.ends] == [
        pytest.approx(0.03),
        pytest.approx(paced.wait),
    ]


@pytest.mark.parametrize("front", ["wrapper", "interceptor", "aio-channel", "aio-interceptors"])
def test_e2e_a_response_stream_is_retried_with_hooks_until_its_first_message(
    fake: FakeClarifai, front: str
) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    reply = service_pb2.MultiLogEntryResponse(status=status_pb2.Status(code=SUCCESS))
    fake.script(
        "StreamLogEntries",
        grpc.StatusCode.UNAVAILABLE,
        Stream([reply, reply], error=Fail(grpc.StatusCode.UNAVAILABLE)),
    )
    request = service_pb2.StreamLogEntriesRequest()
    if front.startswith("aio"):

        async def read() -> tuple[int, Any]:
            channel = (
                aio.insecure_channel(fake.target, PAT_CREDS, retry=EXACT, rate_limit=None)
                if front == "aio-channel"
                else grpc.aio.insecure_channel(
                    fake.target,
                    interceptors=aio.interceptors(
                        PAT_CREDS, retry=EXACT, rate_limit=None, target=fake.target
                    ),
                )
            )
            async with channel:
                got = 0
                try:
                    async for _ in service_pb2_grpc.V2Stub(channel).StreamLogEntries(
                        request, timeout=E2E_T
                    ):
                        got += 1
                except grpc.RpcError as exc:
                    return got, exc.code()
            return got, None

        got, code = asyncio.run(read())
    else:
        if front == "wrapper":
            channel = insecure_channel(fake.target, PAT_CREDS, retry=EXACT, rate_limit=None)
        else:
            interceptor = ClarifaiInterceptor(
                PAT_CREDS, retry=EXACT, rate_limit=None, target=fake.target
            )
            channel = grpc.intercept_channel(grpc.insecure_channel(fake.target), interceptor)
        got, code = 0, None
        with channel:
            try:
                for _ in service_pb2_grpc.V2Stub(channel).StreamLogEntries(request, timeout=E2E_T):
                    got += 1
            except grpc.RpcError as exc:
                code = exc.code()
    # Retried once before the first message; the error after it reaches the caller as is.
    assert (got, code) == (2, grpc.StatusCode.UNAVAILABLE)
    assert len(fake.calls_to("StreamLogEntries")) == 2
    assert [(r.method, r.attempt, r.outcome) for r in recorder.retries] == [
        ("/clarifai.api.V2/StreamLogEntries", 1, "UNAVAILABLE")
    ]
    assert [(e.attempts, e.cut_by) for e in recorder.ends] == [(2, None)]


FOUR_FAILURES = [grpc.StatusCode.UNAVAILABLE] * 4


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_set_testing_makes_four_retries_instant(fake: FakeClarifai, front: str) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", *FOUR_FAILURES)
    with set_testing(True):
        start = time.monotonic()
        response = post_inputs(
            front, fake.target, retry=RetryPolicy(), rate_limit=DEFAULT_RATE_LIMIT
        )
        took = time.monotonic() - start
    assert response.status.code == status_code_pb2.SUCCESS
    assert len(fake.calls_to("PostInputs")) == 5
    assert [r.wait for r in recorder.retries] == [0.0] * 4
    # Without the switch these four waits sleep at least 1.2 s (the test below); with it, none.
    assert took < 1.0


@pytest.mark.parametrize("front", ["wrapper", "aio-channel"])
def test_e2e_without_set_testing_the_same_case_waits_the_backoff(
    fake: FakeClarifai, front: str
) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", *FOUR_FAILURES)
    start = time.monotonic()
    response = post_inputs(front, fake.target, retry=RetryPolicy(), rate_limit=DEFAULT_RATE_LIMIT)
    took = time.monotonic() - start
    assert response.status.code == status_code_pb2.SUCCESS
    # The default policy: 0.1, 0.2, 0.4, 0.8 s, each shortened by at most 20 % jitter.
    waits = [r.wait for r in recorder.retries]
    assert len(waits) == 4
    for wait, base in zip(waits, (0.1, 0.2, 0.4, 0.8), strict=True):
        assert 0.8 * base <= wait <= base
    assert took >= sum(waits)


@pytest.mark.parametrize("front", FRONTS)
def test_e2e_set_testing_attempts_forces_the_count(fake: FakeClarifai, front: str) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    fake.script("PostInputs", *FOUR_FAILURES)
    with set_testing(True, attempts=2):
        outcome = post_inputs(
            front, fake.target, retry=RetryPolicy(), rate_limit=DEFAULT_RATE_LIMIT
        )
    assert outcome.code() == grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls_to("PostInputs")) == 2
    assert [r.wait for r in recorder.retries] == [0.0]
    (end,) = recorder.ends
    assert (end.attempts, end.cut_by) == (2, "attempts")


@pytest.fixture
def sdk_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: FsPath, fake: FakeClarifai
) -> Iterator[Callable[..., Any]]:
    """Makes a Clarifai SDK ``Model`` client on ``fake`` under ``sdk.install(**kwargs)``; no
    Clarifai environment or CLI config leaks in, nothing stays installed."""
    from clarifai.client.model import Model  # noqa: PLC0415 (the [sdk] extra: main CI job)

    from clarifai_interceptor import sdk  # noqa: PLC0415

    for name in ("CLARIFAI_PAT", "CLARIFAI_SESSION_TOKEN", "CLARIFAI_USER_ID", "CLARIFAI_APP_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CLARIFAI_API_BASE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> Any:
            stack.enter_context(sdk.install(**kwargs))
            return Model(
                url="https://clarifai.com/fake-user/fake-app/models/fake-model",
                pat="fake-sdk-pat-for-instrumentation",
                base_url=f"http://{fake.target}",
            )

        yield make


@pytest.mark.sdk  # needs the Clarifai SDK: CI's floor job deselects it
def test_e2e_the_sdk_integration_tells_the_hooks(
    fake: FakeClarifai, sdk_model: Callable[..., Any]
) -> None:
    recorder = Recorder()
    set_on_retry_hooks([recorder])
    model = sdk_model(retry=EXACT)
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE, THROTTLED)
    model.predict_by_bytes(b"hi", input_type="text")
    assert len(fake.calls_to("PostModelOutputs")) == 3
    assert [(r.method, r.attempt, r.outcome, r.throttle) for r in recorder.retries] == [
        ("/clarifai.api.V2/PostModelOutputs", 1, "UNAVAILABLE", False),
        ("/clarifai.api.V2/PostModelOutputs", 2, "CONN_THROTTLED", True),
    ]
    assert [(e.attempts, e.outcome, e.throttled, e.cut_by) for e in recorder.ends] == [
        (3, "SUCCESS", 1, None)
    ]


@pytest.mark.sdk  # needs the Clarifai SDK: CI's floor job deselects it
def test_e2e_set_testing_makes_the_sdks_retries_instant(
    fake: FakeClarifai, sdk_model: Callable[..., Any]
) -> None:
    model = sdk_model()  # the default policy
    fake.script("PostModelOutputs", *FOUR_FAILURES)
    with set_testing(True):
        start = time.monotonic()
        model.predict_by_bytes(b"hi", input_type="text")
        took = time.monotonic() - start
    assert len(fake.calls_to("PostModelOutputs")) == 5
    assert took < 1.0  # the default policy's four waits sleep at least 1.2 s


@pytest.mark.parametrize("front", ["wrapper", "interceptor", "aio-channel", "aio-interceptors"])
def test_e2e_the_happy_path_runs_no_instrumentation_code(fake: FakeClarifai, front: str) -> None:
    """With OpenTelemetry and Prometheus instruments registered, a call that succeeds at once
    runs not one function of the instrumentation package or of the testing switch."""
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    set_on_retry_hooks(
        [
            LoggingHook(),
            OpenTelemetryInstruments(meter_provider=meters),
            PrometheusInstruments(CollectorRegistry()),
        ]
    )
    package = FsPath(_hooks.__file__).parent
    watched = {str(path) for path in package.iterdir()} | {_switch.__file__}
    ran: list[str] = []

    def profile(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename in watched:
            ran.append(frame.f_code.co_name)

    post_inputs(front, fake.target)  # warm up: connect
    sys.setprofile(profile)
    try:
        for _ in range(3):
            assert post_inputs(front, fake.target).status.code == SUCCESS
    finally:
        sys.setprofile(None)
    assert ran == []
    # The check sees instrumentation code when it runs: a retried call runs plenty.
    fake.script("PostInputs", grpc.StatusCode.UNAVAILABLE)
    sys.setprofile(profile)
    try:
        post_inputs(front, fake.target)
    finally:
        sys.setprofile(None)
    assert "retry_scheduled" in ran
    assert "on_call_end" in ran
    meters.shutdown()


# -- the retry log records, end to end -------------------------------------------------------


def test_one_debug_record_per_retry_and_no_secret(
    path: Path, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, gRPC's included, for the secret check
    stub = path.stub()
    fake.script("PostModelOutputs", UNAVAILABLE, Status(THROTTLED))
    assert stub.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    assert [r.levelno for r in ours] == [logging.DEBUG] * 2
    first, second = (r.getMessage() for r in ours)
    assert "PostModelOutputs" in first
    assert "PostModelOutputs" in second
    assert "UNAVAILABLE" in first
    assert "CONN_THROTTLED" in second
    assert re.search(r"\b1\b", first)
    assert re.search(r"\b2\b", second)

    # The other call shapes log too (each on a fresh channel, with a full retry budget).
    fake.script("GenerateModelOutputs", UNAVAILABLE)
    fake.script(STREAM_METHOD, Status(THROTTLED))
    fake.script("PostModelOutputs", Status(status_code_pb2.MODEL_LOADING))
    assert len(list(generate(path.stub()))) == 3
    assert len(list(path.stub().StreamModelOutputs(three_requests(), timeout=T))) == 3
    path.stub().PostModelOutputs.future(predict_request(), timeout=T).result(timeout=T)
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    messages = [r.getMessage() for r in ours[2:]]
    assert len(messages) == 3
    assert "GenerateModelOutputs" in messages[0]
    assert "UNAVAILABLE" in messages[0]
    assert STREAM_METHOD in messages[1]
    assert "CONN_THROTTLED" in messages[1]
    assert "PostModelOutputs" in messages[2]
    assert "MODEL_LOADING" in messages[2]

    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.__dict__!r}"
        assert PAT not in text


@pytest.mark.asyncio
async def test_one_debug_record_per_retry_and_no_secret_on_aio(
    aio_path: AioPath, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, gRPC's and asyncio's included
    fake.script("PostModelOutputs", UNAVAILABLE, output("busy", THROTTLED))
    fake.script("GenerateModelOutputs", Stream([output("loading", status_code_pb2.MODEL_LOADING)]))
    async with aio_path.stub() as stub:
        assert (await stub.PostModelOutputs(predict_request(), timeout=T)).status.code == SUCCESS
        assert len(await read_all(aio_generate(stub))) == 3
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    assert [r.levelno for r in ours] == [logging.DEBUG] * 3
    first, second, third = (r.getMessage() for r in ours)
    assert "PostModelOutputs" in first
    assert "UNAVAILABLE" in first
    assert "PostModelOutputs" in second
    assert "CONN_THROTTLED" in second
    assert "GenerateModelOutputs" in third
    assert "MODEL_LOADING" in third
    for record in caplog.records:
        assert PAT not in f"{record.getMessage()} {record.args!r} {record.__dict__!r}"


def test_no_record_without_a_retry(
    path: Path, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    stub = path.stub()
    stub.PostModelOutputs(predict_request(), timeout=T)
    assert len(list(generate(stub))) == 3
    fake.script("PostModelOutputs", grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError):
        stub.PostModelOutputs(predict_request(), timeout=T)
    assert [r for r in caplog.records if r.name == "clarifai_interceptor"] == []
