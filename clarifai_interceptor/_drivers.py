"""The drivers of the attempt flow that run in one place: the caller's thread, or a task.

`advance` runs a flow (`Attempts.flow`) until it asks to send an attempt or ends: the blocking
paths (`drive`), the first attempt of a sync response stream and its commit all use it;
`advance_async` is the same under ``grpc.aio``. The happy path needs no flow, and this is its
one place: `go_now` (a first permit with no wait) and `final_at_once` (a first outcome final
with nothing to record). The ``future()`` driver, which runs on callbacks and timers, is
``_future.RetryFuture``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from ._attempts import Attempts, delivered, permit_bound
from ._budget import TokenBucket
from ._closing import CancelledCall
from ._policy import RetryPolicy
from ._ratelimit import OK, Quota
from ._signals import QUOTA_STATUSES
from ._steps import NOTHING, Ask, Flow, Send

__all__ = ["Done", "advance", "advance_async", "drive", "go_now", "go_now_async", "told_async"]


class Done(NamedTuple):
    """The flow's end: the call's final ``outcome`` (what `advance` returns instead of a
    `Send`)."""

    outcome: Any


def advance(
    attempts: Attempts,
    flow: Flow,
    value: Any,
    sleep: Callable[[float], CancelledCall | None] | None = None,
) -> Send | Done:
    """Run ``flow`` from ``value`` in this thread until it asks to send an attempt (`Send`) or
    ends (`Done`): limiter steps here, waits with ``sleep`` (`Attempts.sleep` by default).
    Interrupted (Ctrl-C, an error), the permit no attempt used goes back."""
    try:
        while True:
            step = flow.send(value)
            if isinstance(step, Send):
                return step
            if isinstance(step, Ask):
                value = attempts.ask(step)
            else:
                value = (sleep or attempts.sleep)(step.seconds)
    except StopIteration as stop:
        return Done(stop.value)
    except BaseException:
        attempts.abandon()
        raise


async def advance_async(
    attempts: Attempts, flow: Flow, value: Any, before_wait: Callable[[], object] | None = None
) -> Send | Done:
    """`advance` for ``grpc.aio``: waits are ``asyncio.sleep`` (cancelling the task ends
    them), after ``before_wait()`` (the attempt judged is abandoned)."""
    try:
        while True:
            step = flow.send(value)
            if isinstance(step, Send):
                return step
            if isinstance(step, Ask):
                value = await attempts.ask_async(step)
            else:
                if before_wait is not None:
                    before_wait()
                await asyncio.sleep(step.seconds)
                value = None
    except StopIteration as stop:
        return Done(stop.value)
    except BaseException:
        await attempts.abandon_async()
        raise


def final_at_once(policy: RetryPolicy, bucket: TokenBucket | None, outcome: object) -> bool:
    """Whether a first outcome is final with nothing to record: the happy path, which then
    needs no flow (the same verdict the flow would give, at less cost)."""
    if policy.transient(outcome):  # a throttle teaches the rate limiter even when not retried
        return policy.max_attempts == 1 and not policy.throttle(outcome)
    if getattr(getattr(outcome, "status", None), "code", None) in QUOTA_STATUSES:
        return False  # a quota status: the limiter must hear of it
    return (
        policy.max_attempts == 1
        or bucket is None
        or bucket.full()
        or isinstance(outcome, grpc.RpcError)
    )


def go_now(attempts: Attempts) -> bool:
    """The happy path's first permit, taken in this thread: True if the first attempt may go
    at once (no limiter, or a permit with no wait), False if the flow must wait for the permit
    now held.

    Raises:
        RateLimitedError: The limiter refused the first attempt.
    """
    limiter = attempts.limiter
    if limiter is None:
        return True
    bound = permit_bound(attempts.deadline, attempts.limit_wait)
    permit = limiter.acquire(0.0, bound)
    if permit is None or isinstance(permit, Quota):
        raise attempts.refused(bound, permit)
    attempts.hold(permit)
    return not permit.wait


async def go_now_async(attempts: Attempts) -> bool:
    """`go_now` for ``grpc.aio``."""
    limiter = attempts.limiter
    if limiter is None:
        return True
    bound = permit_bound(attempts.deadline, attempts.limit_wait)
    permit = await limiter.acquire_async(0.0, bound)
    if permit is None or isinstance(permit, Quota):
        raise attempts.refused(bound, permit)
    attempts.hold(permit)
    return not permit.wait


async def told_async(attempts: Attempts, outcome: object) -> bool:
    """Whether a first outcome is final with nothing to record but a success (the happy
    path, `final_at_once`), the limiter told of it if it learns; under ``grpc.aio``."""
    if not final_at_once(attempts.policy, attempts.bucket, outcome):
        return False
    limiter, permit = attempts.limiter, attempts.permit
    if limiter is not None and permit is not None and delivered(limiter, outcome):
        await limiter.feedback_async(permit, OK)  # a success under an active limiter
    return True


def drive(
    attempts: Attempts,
    send: Callable[[int], Any],
    view: Callable[[Any], object] | None = None,
) -> Any:
    """Run a call in this thread, waits included (its channel's closing ends them).

    ``send(number)`` starts and finishes attempt ``number``; ``view`` maps what it returns to
    the outcome judged (the same, by default). Returns what the last ``send`` returned when its
    outcome is final, else the outcome that ended the call (`closed()`).

    The happy path needs no flow: a first permit with no wait (`go_now`), a first outcome
    final with nothing to record (`final_at_once`). Anything else is the flow's.

    Raises:
        RateLimitedError: The rate limiter refused the first attempt.
    """
    if not go_now(attempts):
        return _drive(attempts, attempts.flow(), send, view)
    attempts.sending()
    last = send(1)
    judged = last if view is None else view(last)
    if final_at_once(attempts.policy, attempts.bucket, judged):
        limiter, permit = attempts.limiter, attempts.permit
        if limiter is not None and permit is not None and delivered(limiter, judged):
            limiter.feedback(permit, OK)  # a success under an active limiter: delivered
        return last
    return _drive(attempts, attempts.flow(judged), send, view, last, judged)


def _drive(
    attempts: Attempts,
    flow: Flow,
    send: Callable[[int], Any],
    view: Callable[[Any], object] | None,
    last: Any = None,
    judged: object = NOTHING,
) -> Any:
    step = advance(attempts, flow, None)
    while isinstance(step, Send):
        last = send(step.number)
        judged = last if view is None else view(last)
        step = advance(attempts, flow, judged)
    return last if step.outcome is judged else step.outcome
