"""The drivers of the attempt flow that run in one place: the caller's thread, or a task.

`advance` runs a flow (`Attempts.flow`) until it asks to send an attempt or ends: the blocking
paths (`drive`), the first attempt of a sync response stream and its commit all use it;
`advance_async` is the same under ``grpc.aio``. The ``future()`` driver, which runs on callbacks
and timers, is ``_future.RetryFuture``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from ._attempts import NOTHING, Ask, Attempts, Flow, Send
from ._closing import CancelledCall

__all__ = ["Done", "advance", "advance_async", "drive"]


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


def drive(
    attempts: Attempts,
    send: Callable[[int], Any],
    view: Callable[[Any], object] | None = None,
    flow: Flow | None = None,
) -> Any:
    """Run a call's flow in this thread, waits included (its channel's closing ends them).

    ``send(number)`` starts and finishes attempt ``number``; ``view`` maps what it returns to
    the outcome the flow judges (the same, by default). Returns what the last ``send`` returned
    when its outcome is final, else the outcome that ended the call (`closed()`).

    Raises:
        RateLimitedError: The rate limiter refused the first attempt.
    """
    if flow is None:
        flow = attempts.flow()
    last: Any = None
    judged: object = NOTHING
    step = advance(attempts, flow, None)
    while isinstance(step, Send):
        last = send(step.number)
        judged = last if view is None else view(last)
        step = advance(attempts, flow, judged)
    return last if step.outcome is judged else step.outcome
