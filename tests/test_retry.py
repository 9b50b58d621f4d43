"""Unit tests of the retry engine: policy validation, backoff, classification, budget."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import Judge
from helpers import budgeted_attempts
from hypothesis import given
from hypothesis import strategies as st

from clarifai_interceptor import (
    DEFAULT_RETRYABLE_CODES,
    DEFAULT_RETRYABLE_STATUSES,
    NEVER_RETRIED_CODES,
    NEVER_RETRIED_STATUSES,
    NO_RETRY,
    RetryBudget,
    RetryPolicy,
)
from clarifai_interceptor._attempts import Attempts
from clarifai_interceptor._budget import TokenBucket
from clarifai_interceptor._drivers import drive as run
from clarifai_interceptor._drivers import final_at_once
from clarifai_interceptor._policy import describe, pushback, time_left

FAST = RetryPolicy(initial_backoff=0, throttle_backoff=0, jitter=0, budget=None)


class Failure(grpc.RpcError):  # type: ignore[misc]
    """A finished call's error as gRPC hands it over: a code and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code = code
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def response(status: int) -> Any:
    message = service_pb2.MultiOutputResponse()
    message.status.code = status
    return message


UNAVAILABLE = Failure(grpc.StatusCode.UNAVAILABLE)


def test_defaults_match_the_documented_table() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.multiplier) == (5, 0.1, 2.0)
    assert (policy.max_backoff, policy.jitter, policy.timeout) == (5.0, 0.2, 30.0)
    assert policy.retryable_codes == {grpc.StatusCode.UNAVAILABLE} == DEFAULT_RETRYABLE_CODES
    assert (
        {
            sc.CONN_THROTTLED,
            sc.MODEL_BUSY_PLEASE_RETRY,
            sc.MODEL_DEPLOYING,
            sc.MODEL_LOADING,
            sc.RPC_SERVER_UNAVAILABLE,
            sc.RPC_REQUEST_QUEUE_FULL,
        }
        <= policy.retryable_statuses
        == DEFAULT_RETRYABLE_STATUSES
    )
    assert policy.budget == RetryBudget(max_tokens=100, token_ratio=0.2)
    assert NO_RETRY.max_attempts == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 1.5),
        ("max_attempts", True),
        ("initial_backoff", -0.1),
        ("initial_backoff", float("nan")),
        ("multiplier", 0.5),
        ("max_backoff", -1),
        ("max_backoff", float("inf")),
        ("jitter", -0.1),
        ("jitter", 1.5),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", "30"),
    ],
)
def test_bad_numbers_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("code", sorted(NEVER_RETRIED_CODES | {grpc.StatusCode.OK}, key=str))
def test_scope_auth_cancelled_codes_cannot_be_retryable(code: grpc.StatusCode) -> None:
    with pytest.raises(ValueError, match=code.name):
        RetryPolicy(retryable_codes={grpc.StatusCode.UNAVAILABLE, code})


@pytest.mark.parametrize("status", sorted(NEVER_RETRIED_STATUSES | {sc.SUCCESS}))
def test_scope_auth_statuses_cannot_be_retryable(status: int) -> None:
    with pytest.raises(ValueError, match=sc.StatusCode.Name(status)):
        RetryPolicy(retryable_statuses={sc.CONN_THROTTLED, status})


def test_collections_are_checked_and_frozen() -> None:
    policy = RetryPolicy(retryable_codes=[grpc.StatusCode.UNAVAILABLE], retryable_statuses=[11005])
    assert policy.retryable_codes == frozenset({grpc.StatusCode.UNAVAILABLE})
    assert isinstance(policy.retryable_statuses, frozenset)
    with pytest.raises(ValueError, match="retryable_codes"):
        RetryPolicy(retryable_codes=["UNAVAILABLE"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="retryable_statuses"):
        RetryPolicy(retryable_statuses="11005")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget"):
        RetryPolicy(budget=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        RetryBudget(max_tokens=0)


def test_policy_is_frozen_and_replaceable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 2  # type: ignore[misc]
    assert dataclasses.replace(policy, max_attempts=2).max_attempts == 2


def test_backoff_formula() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=0.5, jitter=0.2)
    assert policy.backoff(1, rand=lambda: 0.5) == pytest.approx(0.1 * 0.9)
    assert policy.backoff(2, rand=lambda: 0.5) == pytest.approx(0.2 * 0.9)
    assert policy.backoff(3, rand=lambda: 0.0) == pytest.approx(0.4)
    assert policy.backoff(3, rand=lambda: 1.0) == pytest.approx(0.4 * 0.8)
    assert policy.backoff(10, rand=lambda: 0.0) == pytest.approx(0.5)  # the cap is a true cap
    assert policy.backoff(100_000, rand=lambda: 0.5) == pytest.approx(0.45)  # no overflow
    full = RetryPolicy(initial_backoff=1, jitter=1)
    assert full.backoff(1, rand=lambda: 1.0) == 0  # full jitter reaches zero


@given(
    st.floats(0, 10),
    st.floats(1, 10),
    st.floats(0, 60),
    st.floats(0, 1),
    st.integers(1, 50),
    st.floats(0, 1),
)
def test_backoff_is_within_the_jitter_band(
    initial: float, multiplier: float, cap: float, jitter: float, retry: int, r: float
) -> None:
    policy = RetryPolicy(
        initial_backoff=initial, multiplier=multiplier, max_backoff=cap, jitter=jitter
    )
    base = min(cap, initial * multiplier ** (retry - 1))
    wait = policy.backoff(retry, rand=lambda: r)
    assert base * (1 - jitter) - 1e-9 <= wait <= base + 1e-9
    if initial == 0:
        assert wait == 0


def test_transient_classification() -> None:
    policy = RetryPolicy()
    assert policy.transient(UNAVAILABLE)
    assert not policy.transient(Failure(grpc.StatusCode.PERMISSION_DENIED))
    assert not policy.transient(Failure(grpc.StatusCode.INVALID_ARGUMENT))
    assert policy.transient(response(sc.CONN_THROTTLED))
    assert not policy.transient(response(sc.SUCCESS))
    assert not policy.transient(response(sc.CONN_INSUFFICIENT_SCOPES))
    assert not policy.transient(object())  # a response type without status


def test_deadline_is_the_sooner_of_total_timeout_and_call() -> None:
    now = time.monotonic()
    deadline = RetryPolicy(total_timeout=30).deadline(2)
    assert deadline is not None
    assert now + 1.9 < deadline < now + 2.5
    deadline = RetryPolicy(total_timeout=1).deadline(None)
    assert deadline is not None
    assert deadline < now + 1.5
    # The retry window (timeout) is no deadline: a call nobody bounded is not bounded by us.
    assert RetryPolicy(timeout=1).deadline(None) is None
    assert RetryPolicy().deadline(None) is None
    assert NO_RETRY.deadline(None) is None


def test_the_retry_window_stops_new_attempts_but_cuts_none() -> None:
    attempts = Attempts(RetryPolicy(timeout=0.05, initial_backoff=0, jitter=0), "M", None)
    assert attempts.deadline is None
    judge = Judge(attempts)
    assert judge.after(UNAVAILABLE) == 0  # inside the window: retried
    time.sleep(0.06)
    assert judge.after(UNAVAILABLE) is None  # past it: the last outcome is final
    assert attempts.cut_by == "deadline"
    assert time_left(None) is None
    assert time_left(time.monotonic() - 5) == 0.0


def test_describe_names_codes_and_statuses() -> None:
    assert describe(UNAVAILABLE) == "UNAVAILABLE"
    assert describe(response(sc.CONN_THROTTLED)) == "CONN_THROTTLED"
    # A status the installed clarifai_grpc does not know: one name for all (a bounded label).
    assert describe(response(987654)) == describe(response(-3)) == "UNKNOWN_STATUS"
    assert describe(object()) == "message"


def scripted(*outcomes: object) -> tuple[list[int], Any]:
    seen: list[int] = []

    def attempt(number: int) -> object:
        seen.append(number)
        return outcomes[min(len(seen), len(outcomes)) - 1]

    return seen, attempt


def test_run_retries_codes_and_statuses_then_returns_the_final_outcome() -> None:
    final = response(sc.SUCCESS)
    seen, attempt = scripted(UNAVAILABLE, response(sc.MODEL_LOADING), final)
    assert run(Attempts(FAST, "M", None), attempt) is final
    assert seen == [1, 2, 3]


def test_run_exhaustion_returns_the_last_outcome_itself() -> None:
    last = Failure(grpc.StatusCode.UNAVAILABLE)
    seen, attempt = scripted(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, last)
    assert run(Attempts(FAST, "M", None), attempt) is last
    assert seen == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "final",
    [Failure(grpc.StatusCode.PERMISSION_DENIED), response(sc.CONN_KEY_INVALID), response(10000)],
)
def test_final_outcomes_get_one_attempt(final: object) -> None:
    seen, attempt = scripted(final, response(sc.SUCCESS))
    assert run(Attempts(RetryPolicy(), "M", None), attempt) is final
    assert seen == [1]


def test_no_wait_runs_past_the_deadline() -> None:
    policy = RetryPolicy(initial_backoff=0.4, multiplier=1, jitter=0, budget=None)
    seen, attempt = scripted(UNAVAILABLE)
    started = time.monotonic()
    outcome = run(Attempts(policy, "M", time.monotonic() + 1.0), attempt)
    elapsed = time.monotonic() - started
    assert outcome is UNAVAILABLE
    assert seen == [1, 2, 3]  # waits to 0.4 and 0.8; a third would end at 1.2 > 1.0
    assert elapsed < 1.0


def test_each_retry_logs_one_debug_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    _, attempt = scripted(UNAVAILABLE, response(sc.CONN_THROTTLED), response(sc.SUCCESS))
    run(Attempts(FAST, "PostInputs", None), attempt)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "retrying PostInputs: attempt 1 got UNAVAILABLE; waiting 0.000 s",
        "retrying PostInputs: attempt 2 got CONN_THROTTLED; waiting 0.000 s",
    ]


def test_pushback_parsing() -> None:
    assert (
        pushback(Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "250"),))) == 0.25
    )
    assert pushback(Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "-1"),))) == -1
    assert pushback(Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "x"),))) == -1
    assert pushback(UNAVAILABLE) is None
    assert pushback(response(sc.CONN_THROTTLED)) is None


def test_pushback_sets_the_wait_and_negative_stops() -> None:
    waits: list[float] = []
    policy = RetryPolicy(initial_backoff=0.001, throttle_backoff=0.001, jitter=0, budget=None)
    attempts = Attempts(policy, "M", None)
    judge = Judge(attempts)
    waits.append(
        judge.after(Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "7"),))) or -1
    )
    assert waits == [0.007]
    assert attempts.number == 2
    stop = Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "-5"),))
    assert judge.after(stop) is None
    assert attempts.cut_by == "pushback"


def test_budget_bucket_arithmetic() -> None:
    bucket = TokenBucket(RetryBudget(max_tokens=4, token_ratio=0.5))
    assert bucket.allows_retry()
    bucket.record(True, UNAVAILABLE)
    bucket.record(True, UNAVAILABLE)
    assert bucket.tokens == 2
    assert not bucket.allows_retry()  # at half: no retries
    bucket.record(False, response(sc.SUCCESS))
    assert bucket.tokens == 2.5
    assert bucket.allows_retry()
    bucket.record(False, Failure(grpc.StatusCode.INVALID_ARGUMENT))  # neither success nor retryable
    assert bucket.tokens == 2.5
    for _ in range(10):
        bucket.record(False, response(sc.SUCCESS))
    assert bucket.tokens == 4
    for _ in range(10):
        bucket.record(True, UNAVAILABLE)
    assert bucket.tokens == 0


def test_budget_makes_attempts_fall_towards_one_under_an_outage() -> None:
    bucket = TokenBucket(RetryBudget())
    total = 0
    for _ in range(200):
        seen, attempt = scripted(UNAVAILABLE)
        run(Attempts(FAST, "M", None, bucket), attempt)
        total += len(seen)
    # 100 tokens; retries stop at 50 or fewer: the first 10 calls retry, then none.
    assert total == budgeted_attempts(RetryBudget(), 200, FAST.max_attempts)


@pytest.mark.parametrize(
    "outcome",
    [
        UNAVAILABLE,
        Failure(grpc.StatusCode.INVALID_ARGUMENT),
        Failure(grpc.StatusCode.PERMISSION_DENIED),
        response(sc.SUCCESS),
        response(sc.CONN_THROTTLED),
        response(sc.CONN_KEY_INVALID),
    ],
    ids=describe,
)
@pytest.mark.parametrize("tokens", [10.0, 9.5, 3.0])
@pytest.mark.parametrize(
    "policy", [FAST, RetryPolicy(jitter=0), NO_RETRY], ids=["none", "budget", "one"]
)
def test_final_at_once_agrees_with_attempts(
    outcome: object, tokens: float, policy: RetryPolicy
) -> None:
    # The happy path's shortcut must give Attempts.after's verdict and leave the bucket as
    # Attempts.after would: it may only skip work, never change behaviour.
    bucket = TokenBucket(RetryBudget()) if policy.budget is not None else None
    if bucket is not None:
        bucket.tokens = tokens
    if final_at_once(policy, bucket, outcome):
        before = None if bucket is None else bucket.tokens
        assert Judge(Attempts(policy, "M", None, bucket)).after(outcome) is None
        assert (None if bucket is None else bucket.tokens) == before
    else:
        # A throttle goes to Attempts even with one attempt: it teaches the rate limiter.
        assert policy.max_attempts > 1 or policy.throttle(outcome)
        assert policy.transient(outcome) or (bucket is not None and not bucket.full())


def test_a_retryable_failure_with_pushback_is_a_throttle() -> None:
    policy = RetryPolicy()
    hinted = Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "20"),))
    assert policy.throttle(hinted)  # the server is shedding load: it teaches the limiter
    assert not policy.throttle(UNAVAILABLE)
    refusal = Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "-1"),))
    assert not policy.throttle(refusal)  # "do not retry" is not a pace
    denied = Failure(grpc.StatusCode.PERMISSION_DENIED, (("grpc-retry-pushback-ms", "20"),))
    assert not policy.throttle(denied)  # never retried, so never a throttle
