"""The attempt flow, without I/O: the steps it asks for, in order, and what it records.

Every front end drives this one flow; here it is driven by hand, with a fake clock's bucket, so
each rule is checked once, for all of them.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from clarifai_interceptor import RateLimit, RetryBudget, RetryPolicy
from clarifai_interceptor._attempts import MARK, Attempts
from clarifai_interceptor._budget import TokenBucket
from clarifai_interceptor._calls import call_outcome
from clarifai_interceptor._closing import CancelledCall, Closing, closed
from clarifai_interceptor._drivers import drive
from clarifai_interceptor._limiter import LocalBucket, RateLimitedError
from clarifai_interceptor._steps import Ask, Send, Wait
from clarifai_interceptor.testing import set_testing

FAST = RetryPolicy(initial_backoff=0, throttle_backoff=0, jitter=0, budget=None)
BUDGETED = RetryPolicy(initial_backoff=0, jitter=0, budget=RetryBudget(max_tokens=4))


class Unavailable(grpc.RpcError):  # type: ignore[misc]
    """A finished attempt's UNAVAILABLE, as gRPC hands it over."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple[()]:
        return ()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fixed(per_second: float, clock: Clock) -> LocalBucket:
    return LocalBucket(RateLimit(per_second=per_second, burst=1), clock)


def steps(attempts: Attempts, outcomes: list[object], ended: object = None) -> list[Any]:
    """Drive the flow by hand: limiter steps answered by its bucket, each `Send` by the next
    outcome, each `Wait` by ``ended`` (None: the wait ran out). Returns the steps, then the
    final outcome."""
    flow = attempts.flow()
    seen: list[Any] = []
    value: Any = None
    feed = iter(outcomes)
    while True:
        try:
            step = flow.send(value)
        except StopIteration as stop:
            return [*seen, stop.value]
        seen.append(step)
        if isinstance(step, Ask):
            value = attempts.ask(step)
        elif isinstance(step, Wait):
            value = ended
        else:
            value = next(feed)


def kinds(seen: list[Any]) -> list[str]:
    return [
        step.op if isinstance(step, Ask) else type(step).__name__.lower()
        for step in seen
        if isinstance(step, Ask | Wait | Send)
    ]


def test_a_paced_call_waits_rechecks_then_sends_and_teaches_nothing_when_fixed() -> None:
    clock = Clock()
    bucket = fixed(2, clock)
    bucket.acquire(0.0, None)  # the slot now is taken: this call's is 0.5 s away
    attempts = Attempts(FAST, "M", None, limiter=bucket)
    seen = steps(attempts, ["answer"])
    assert kinds(seen) == ["acquire", "wait", "recheck", "send"]
    assert seen[1] == Wait((0.5,))
    assert seen[-1] == "answer"
    assert (attempts.sent, attempts.cut_by) == (1, None)


def test_a_wait_ended_by_a_close_gives_the_permit_back() -> None:
    clock = Clock()
    bucket = fixed(2, clock)
    bucket.acquire(0.0, None)
    attempts = Attempts(FAST, "M", None, limiter=bucket)
    ending = closed()
    seen = steps(attempts, [], ended=ending)
    assert kinds(seen) == ["acquire", "wait", "release"]
    assert seen[-1] is ending
    assert (attempts.sent, attempts.number) == (0, 0)
    # The released slot is free again: the next caller gets the one the dead waiter held.
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    assert permit.wait == pytest.approx(0.5)


def test_a_retry_wait_ended_by_a_cancel_gives_the_retrys_permit_back() -> None:
    clock = Clock()
    bucket = fixed(10, clock)
    attempts = Attempts(RetryPolicy(initial_backoff=1, jitter=0, budget=None), "M", None)
    attempts.limiter = bucket
    cancel = CancelledCall()
    seen = steps(attempts, [Unavailable()], ended=cancel)
    assert kinds(seen) == ["acquire", "send", "acquire", "wait", "release"]
    assert seen[-1] is cancel
    assert (attempts.sent, attempts.number) == (1, 1)


def test_testing_mode_books_nothing_and_waits_nothing() -> None:
    clock = Clock()
    bucket = fixed(1, clock)
    bucket.acquire(0.0, None)
    with set_testing(True):
        attempts = Attempts(RetryPolicy(jitter=0, budget=None), "M", None, limiter=bucket)
        seen = steps(attempts, [Unavailable(), "answer"])
    assert kinds(seen) == ["send", "send"]
    assert seen[-1] == "answer"
    permit = bucket.acquire(0.0, None)  # the one slot booked before: nothing more
    assert permit is not None
    assert permit.wait == pytest.approx(1.0)


def test_a_call_on_a_closed_channel_books_nothing() -> None:
    clock = Clock()
    bucket = fixed(1, clock)
    closing = Closing()
    closing.close()
    attempts = Attempts(FAST, "M", None, limiter=bucket, closing=closing)
    assert kinds(steps(attempts, ["answer"])) == ["send"]
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    assert permit.wait == 0


def test_a_refused_first_permit_raises_an_error_that_says_so() -> None:
    clock = Clock()
    bucket = fixed(1, clock)
    bucket.acquire(0.0, None)
    attempts = Attempts(FAST, "M", None, limiter=bucket, limit_wait=0.1)
    with pytest.raises(RateLimitedError) as raised:
        drive(attempts, lambda _number: pytest.fail("nothing may be sent"))
    assert getattr(raised.value, MARK) is attempts
    assert call_outcome(raised.value) == (0, "limiter", 0)


@pytest.mark.parametrize(
    ("policy", "tokens", "why", "sent"),
    [
        (FAST, None, "attempts", 5),
        (BUDGETED, 4, "budget", 2),  # 4 tokens: two failures leave half, and no retry
        (RetryPolicy(initial_backoff=0.5, jitter=0, budget=None, timeout=0.4), None, "deadline", 1),
    ],
)
def test_the_stop_reason_is_the_one_that_stopped(
    policy: RetryPolicy, tokens: float | None, why: str, sent: int
) -> None:
    bucket = None if tokens is None else TokenBucket(policy.budget)  # type: ignore[arg-type]
    attempts = Attempts(policy, "M", None, bucket)
    error = drive(attempts, lambda _number: Unavailable())
    assert isinstance(error, Unavailable)
    assert call_outcome(error) == (sent, why, 0)


def test_call_outcome_refuses_what_is_not_a_call() -> None:
    for thing in (None, "x", 3, object()):
        with pytest.raises(TypeError, match="call_outcome takes"):
            call_outcome(thing)
    assert call_outcome(closed()) == (1, None, 0)  # an error of ours that no call carried
