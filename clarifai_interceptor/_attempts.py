"""One call's attempt flow, written once for every front end, without I/O.

`Attempts.flow` is a generator, as httpx's ``Auth.auth_flow`` is: it yields what to do next and
is sent the result, until it returns the call's final outcome. Its steps (``_steps``):

- `Ask` ``(op, args)``: ask the rate limiter's bucket; the driver sends back
  ``bucket.<op>(*args)`` (`Attempts.ask`, or `Attempts.ask_async` under ``grpc.aio``).
- `Wait` ``(seconds)``: wait before an attempt; the driver sends back None when the wait is
  over, or the outcome that ended it (`closed()` when the channel closed, a `CancelledCall` when
  the caller cancelled).
- `Send` ``(number)``: start attempt ``number`` (the driver gives it the time left) and send back
  its outcome: a response, a ``grpc.RpcError``, or `END` (a response stream with no message).

Every decision is made here, and recorded where it is made: the first permit and the refusal,
the recheck at the end of each wait, the judgement of each outcome, the stop reason, the testing
switch (no waits, no limiter: nothing booked), and the permit no attempt used, given back
(`Attempts.abandon` when a driver is interrupted). The drivers only do I/O: ``_drivers``'
`drive` and `advance` in the caller's thread, ``_future.RetryFuture`` on the scheduler's timers,
``_calls.RetryingStream``, and ``aio``'s two over `advance_async`. This is the only module that
imports tenacity.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import grpc
import tenacity as _t
from clarifai_grpc.grpc.api.status import status_code_pb2 as _sc

from ._budget import TokenBucket
from ._closing import CancelledCall, Closing, closed
from ._policy import RetryPolicy, describe, for_testing, pushback, time_left
from ._ratelimit import OK, Bucket, Permit, Quota, Signal
from ._signals import read
from ._steps import NOTHING, Ask, Flow, Send, Step, Wait
from ._switch import TESTING
from .exceptions import QuotaExceededError, RateLimitedError
from .instrumentation import _hooks
from .instrumentation._data import CallSummary, CutBy, Reason, RetryDetails

__all__ = [
    "MARK",
    "Attempts",
    "delivered",
    "permit_bound",
]


def _last_outcome(state: _t.RetryCallState) -> Any:
    assert state.outcome is not None  # noqa: S101 (tenacity sets it before stopping)
    return state.outcome.result()


class _Stop(_t.stop.stop_base):
    """tenacity's stop for one call: records why it stopped where it decides it."""

    def __init__(self, policy: RetryPolicy, deadline: float | None, bucket: TokenBucket | None):
        self.attempts = policy.max_attempts
        self.deadline = deadline
        self.bucket = bucket
        self.reason: CutBy | None = None

    def __call__(self, state: _t.RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            self.reason = "attempts"
        elif pushback(_last_outcome(state)) == -1.0:
            self.reason = "pushback"
        elif self.bucket is not None and not self.bucket.allows_retry():
            self.reason = "budget"
        elif self.deadline is not None and time.monotonic() + state.upcoming_sleep >= self.deadline:
            self.reason = "deadline"
        return self.reason is not None


class Retry:
    """The retries of one call, decided by a fresh tenacity ``Retrying``, driven step by step.

    Built only after a transient outcome: the happy path never pays for tenacity.
    """

    __slots__ = ("_retrying", "_state", "_stop", "reason")

    def __init__(
        self, policy: RetryPolicy, deadline: float | None, bucket: TokenBucket | None
    ) -> None:
        self.reason: Reason = "backoff"

        def wait(state: _t.RetryCallState) -> float:
            seconds, reason = policy.wait(state.attempt_number, _last_outcome(state))
            self.reason = "pushback" if reason == "pushback" else "backoff"
            return seconds

        self._stop = _Stop(policy, deadline, bucket)
        self._retrying = _t.Retrying(
            stop=self._stop,
            wait=wait,
            retry=_t.retry_if_result(policy.transient),
            retry_error_callback=_last_outcome,
            reraise=True,
        )
        self._state = _t.RetryCallState(self._retrying, fn=None, args=(), kwargs={})

    def after(self, outcome: object) -> tuple[float | None, CutBy | None]:
        """Seconds to wait before the next attempt (None: ``outcome`` is final), and what
        stopped the retrying if something did."""
        # tenacity keeps its statistics per thread; a future's retries run on other threads.
        self._retrying.begin()
        self._state.set_result(outcome)
        action = self._retrying.iter(self._state)
        if isinstance(action, _t.DoSleep):
            self._state.prepare_for_next_attempt()
            return float(action), None
        return None, self._stop.reason


def delivered(limiter: Bucket, outcome: object) -> bool:
    """Whether a success of ``outcome`` (any answer but an error or a throttle) teaches
    ``limiter``: only an active adaptive one (dormant or fixed: no call at all)."""
    return limiter.learning and not isinstance(outcome, grpc.RpcError)


def permit_bound(
    deadline: float | None, limit_wait: float | None, not_before: float = 0.0
) -> float | None:
    """The longest wait for a rate-limit permit: ``limit_wait`` past ``not_before``, and never
    past the deadline (None: no bound)."""
    bound = None if limit_wait is None else not_before + limit_wait
    left = time_left(deadline)
    if left is not None and (bound is None or left < bound):
        bound = left
    return bound


def _full_name(method: str | bytes) -> str:
    return method.decode("ascii", "replace") if isinstance(method, bytes) else method


def _succeeded(outcome: object) -> bool:
    if isinstance(outcome, grpc.RpcError):
        return False
    status = getattr(getattr(outcome, "status", None), "code", None)
    return status is None or status == _sc.SUCCESS


#: The attribute a raised error carries its call's `Attempts` under (`call_outcome` reads it).
MARK = "_clarifai_attempts"


class Attempts:
    """One call's attempts: the state the flow keeps, and the flow itself (`flow`).

    Attributes read by the drivers and `call_outcome`: ``number`` (the attempt last started or
    about to be), ``sent`` (attempts started), ``throttled``, ``cut_by`` (what ended the
    retrying early), ``deadline``, ``closing``, ``policy``.
    """

    __slots__ = (
        "_leave",
        "_retry",
        "bucket",
        "closing",
        "cut_by",
        "deadline",
        "limit_wait",
        "limiter",
        "method",
        "number",
        "permit",
        "policy",
        "retry_until",
        "sent",
        "started",
        "target",
        "throttled",
        "unsent",
        "waited",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        method: str | bytes,
        deadline: float | None,
        bucket: TokenBucket | None = None,
        limiter: Bucket | None = None,
        permit: Permit | None = None,
        limit_wait: float | None = None,
        started: float | None = None,
        target: str = "",
        closing: Closing | None = None,
    ) -> None:
        if TESTING.active:  # no waits, and nothing booked with the limiter
            policy = for_testing(policy)
            limiter = permit = None
        if closing is not None and closing.closed:
            limiter = permit = None  # a call on a closed channel books nothing
        self.policy = policy
        self.method = method
        self.deadline = deadline
        #: No new attempt starts past this: the policy's retry window, or the deadline.
        self.retry_until = deadline
        self.started = started = time.monotonic() if started is None else started
        self.target = target
        window = policy.timeout
        if window is not None:
            until = started + window
            if deadline is None or until < deadline:
                self.retry_until = until
        self.bucket = bucket
        self.limiter = limiter
        self.permit = permit
        self.unsent = permit is not None  # the permit is the next attempt's: not sent yet
        self.limit_wait = limit_wait
        self.closing = closing  # the channel's: closing it ends every wait at once
        self.number = 1
        self.sent = 0
        self.throttled = 0
        #: What ended the retrying early, or None.
        self.cut_by: CutBy | None = None
        self._retry: Retry | None = None
        self._leave: Callable[[], None] | None = None
        self.waited = 0.0  # seconds waited between attempts, for the call's summary

    # The flow.

    def flow(self, first: object = NOTHING) -> Flow:
        """The call's steps (see the module's docstring); returns the final outcome.

        ``first``: the first attempt's outcome, when the caller sent it itself (the happy path
        of ``_drivers.drive``), under the permit it took (`hold`).

        Raises:
            RateLimitedError: The rate limiter refused the first attempt (nothing was sent).
        """
        if first is NOTHING:
            permit = self.permit
            if permit is None and self.limiter is not None:
                bound = permit_bound(self.deadline, self.limit_wait)
                permit = yield Ask(("acquire", (0.0, bound)))
                if permit is None or isinstance(permit, Quota):
                    raise self.refused(bound, permit)
                self.permit, self.unsent = permit, True
            if permit is not None and permit.wait > 0:
                ended = yield from self._wait(permit.wait)
                if ended is not None:
                    return ended
            first = yield self._send()
        else:
            self.sent, self.unsent = 1, False  # the caller sent it under the permit given
        outcome = first
        while True:
            wait, throttled = self._judge(outcome)
            limiter = self.limiter
            signal = read(outcome, throttled)
            if limiter is not None and (
                wait is not None or signal != OK or delivered(limiter, outcome)
            ):  # only then has the limiter anything to say: the happy path skips it
                wait = yield from self._paced(limiter, outcome, wait, signal)
            elif wait is not None:
                wait = self._scheduled(outcome, wait)
            if wait is None:
                self._final(outcome)
                return outcome
            ended = yield from self._wait(wait)
            if ended is not None:
                return ended
            self.resume()
            outcome = yield self._send()

    def hold(self, permit: Permit) -> None:
        """The happy path took the first permit itself (``_drivers.go_now``)."""
        self.permit, self.unsent = permit, True

    def sending(self) -> None:
        """The happy path sends the first attempt itself, under the permit held."""
        self.sent, self.unsent = 1, False

    def refused(self, bound: float | None, quota: Quota | None = None) -> RateLimitedError:
        """The error of a call whose first permit the limiter refused (no wait within
        ``bound``, or a quota exhausted), marked with these attempts (none sent)."""
        self.number = 0
        self.cut_by = "limiter"
        error = RateLimitedError(bound) if quota is None else QuotaExceededError(*quota)
        self._mark(error)
        return error

    def _send(self) -> Send:
        self.sent += 1
        self.unsent = False
        return Send((self.number,))

    def _wait(self, seconds: float) -> Generator[Step, Any, CancelledCall | None]:
        """Wait ``seconds``, then recheck the permit (and wait as long more as a cut since it
        says); the outcome that ended the wait, or None."""
        while seconds > 0:
            ended = yield Wait((seconds,))
            if ended is not None:
                yield from self._give_back()
                self._final(ended)
                return ended  # type: ignore[no-any-return]
            seconds = 0.0
            permit = self.permit
            if self.limiter is not None and permit is not None:
                bound = permit_bound(self.retry_until, self.limit_wait)
                moved = yield Ask(("recheck", (permit, bound)))
                if moved is not permit:  # the limiter cut its rate meanwhile: the new slot
                    self.permit = moved
                    seconds = TESTING.wait(moved.wait)
                    if self.sent:
                        self.waited += seconds  # a retry's wait: the call's summary counts it
        return None

    def _give_back(self) -> Generator[Step, Any, None]:
        """Give the limiter back the permit no attempt used."""
        if self.unsent and self.limiter is not None and self.permit is not None:
            self.unsent = False
            yield Ask(("release", (self.permit,)))

    def _paced(
        self, limiter: Bucket, outcome: object, wait: float | None, signal: Signal
    ) -> Generator[Step, Any, float | None]:
        """Tell ``limiter`` of ``outcome``, and pace the retry ``wait`` says (None: final):
        seconds to wait before the next attempt, or None."""
        permit = self.permit
        if permit is not None and (signal != OK or delivered(limiter, outcome)):
            yield Ask(("feedback", (permit, signal)))
        if wait is None:
            return None
        permit = yield Ask(("acquire", (wait, self._bound(wait))))
        if permit is None or isinstance(permit, Quota):
            self.cut_by = "limiter"
            return None
        self.permit, self.unsent = permit, True
        if permit.wait > wait:
            wait = permit.wait
            if self._retry is not None:
                self._retry.reason = "limiter"
        return self._scheduled(outcome, wait)

    def _judge(self, outcome: object) -> tuple[float | None, bool]:
        """The policy's wait after ``outcome`` (None: final), and whether it was a throttle."""
        policy = self.policy
        throttled = policy.throttle(outcome)
        if throttled:
            self.throttled += 1
        if policy.max_attempts == 1:
            return None, throttled  # as in gRPC, only calls that may be retried feed the budget
        transient = policy.transient(outcome)
        if self.bucket is not None:
            self.bucket.record(transient, outcome, throttled)
        if not transient:
            return None, throttled
        if self._retry is None:
            self._retry = Retry(policy, self.retry_until, self.bucket)
        wait, self.cut_by = self._retry.after(outcome)
        return wait, throttled

    def _bound(self, not_before: float) -> float | None:
        """The longest wait for a retry's permit: no retry starts past the window."""
        return permit_bound(self.retry_until, self.limit_wait, not_before)

    def _scheduled(self, outcome: object, wait: float) -> float:
        """Tell the hooks of the retry about to wait ``wait`` seconds, and count it."""
        wait = TESTING.wait(wait)
        if _hooks._STATE.retry:  # noqa: SLF001 (one read: no hooks, no work)
            self._leave = _hooks.retry_scheduled(
                RetryDetails(
                    method=_full_name(self.method),
                    target=self.target,
                    attempt=self.number,
                    outcome=describe(outcome),
                    throttle=self.policy.throttle(outcome),
                    wait=wait,
                    reason=self.reason(),
                    elapsed=time.monotonic() - self.started,
                    deadline_left=time_left(self.deadline),
                )
            )
        self.number += 1
        self.waited += wait
        return wait

    def resume(self) -> None:
        """The wait is over and the next attempt starts: leave what the hooks entered."""
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()

    def _final(self, outcome: object) -> None:
        """The call ends with ``outcome``: sum it up for the hooks if it was eventful, and mark
        an error with the attempts behind it (`call_outcome`)."""
        self.resume()
        self.number = min(self.number, self.sent)  # the attempt it waited for never started
        if isinstance(outcome, grpc.RpcError):
            self._mark(outcome)
        if (self.sent > 1 or self.throttled or self.cut_by) and _hooks._STATE.end:  # noqa: SLF001
            _hooks.call_ended(
                CallSummary(
                    method=_full_name(self.method),
                    target=self.target,
                    attempts=self.sent,
                    outcome="SUCCESS" if _succeeded(outcome) else describe(outcome),
                    throttled=self.throttled,
                    cut_by=self.cut_by,
                    elapsed=time.monotonic() - self.started,
                    waited=self.waited,
                )
            )

    def _mark(self, error: Exception) -> Exception:
        with contextlib.suppress(AttributeError, TypeError):  # a slotted error: unmarked
            setattr(error, MARK, self)
        return error

    def reason(self) -> Reason:
        """Why the last wait was that long: backoff, pushback or limiter."""
        return "backoff" if self._retry is None else self._retry.reason

    # What every driver shares.

    def ask(self, step: Ask) -> Any:
        """Do an `Ask` step in this thread."""
        return getattr(self.limiter, step.op)(*step.args)

    def ask_async(self, step: Ask) -> Awaitable[Any]:
        """Do an `Ask` step under ``grpc.aio`` (await it): a shared limiter's I/O never blocks
        the loop."""
        return getattr(self.limiter, step.op + "_async")(*step.args)  # type: ignore[no-any-return]

    def sleep(self, seconds: float) -> CancelledCall | None:
        """Do a `Wait` step in this thread: None, or `closed()` if the channel closed."""
        closing = self.closing
        if closing is not None:
            return closed() if closing.sleep(seconds) else None
        time.sleep(seconds)
        return None

    def abandon(self) -> None:
        """The driver stopped mid-flow (Ctrl-C, a cancel, an error): give back the permit no
        attempt used. Never raises: the caller's own exception matters more."""
        if self.unsent and self.limiter is not None and self.permit is not None:
            self.unsent = False
            with contextlib.suppress(Exception):  # a store that fails: its slot expires
                self.limiter.release(self.permit)

    async def abandon_async(self) -> None:
        """`abandon`, under ``grpc.aio``."""
        if self.unsent and self.limiter is not None and self.permit is not None:
            self.unsent = False
            with contextlib.suppress(Exception):  # a store that fails: its slot expires
                await self.limiter.release_async(self.permit)
