"""Retry policy and engine: which outcomes are transient, how long to wait, when to stop.

Pure logic plus tenacity, no I/O: the front ends (sync interceptor, channel wrapper, aio) run the
attempts and the sleeps, and ask a `Retry` what to do after each outcome. This is the only
module that imports tenacity.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import tenacity as _t
from clarifai_grpc.grpc.api.status import status_code_pb2 as _sc

from ._closing import CancelledCall, Closing, closed
from ._limiter import Bucket, Permit
from ._switch import TESTING
from .exceptions import RateLimitedError
from .instrumentation import _hooks
from .instrumentation._data import CallSummary, RetryDetails

__all__ = [
    "ATTEMPT_HEADER",
    "DEFAULT_RETRYABLE_CODES",
    "DEFAULT_RETRYABLE_STATUSES",
    "DEFAULT_THROTTLE_STATUSES",
    "MAX_PUSHBACK",
    "NEVER_RETRIED_CODES",
    "NEVER_RETRIED_STATUSES",
    "NO_RETRY",
    "Attempts",
    "Retry",
    "RetryBudget",
    "RetryPolicy",
    "TokenBucket",
    "describe",
    "final_at_once",
    "follow",
    "for_testing",
    "method_name",
    "permit_bound",
    "pushback",
    "run",
    "time_left",
    "token_buckets",
]

log = logging.getLogger("clarifai_interceptor")

#: gRPC codes retried by default: the load balancer or server is briefly unreachable.
DEFAULT_RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
#: Clarifai in-body status codes retried by default: throttling and models warming up.
DEFAULT_RETRYABLE_STATUSES: frozenset[int] = frozenset(
    {
        _sc.CONN_THROTTLED,
        _sc.MODEL_BUSY_PLEASE_RETRY,
        _sc.MODEL_DEPLOYING,
        _sc.MODEL_LOADING,
        _sc.RPC_SERVER_UNAVAILABLE,
        _sc.RPC_REQUEST_QUEUE_FULL,
    }
)
#: Clarifai in-body statuses that are throttles by default: the server refused for rate.
DEFAULT_THROTTLE_STATUSES: frozenset[int] = frozenset({_sc.CONN_THROTTLED})
#: gRPC codes no policy may retry: scope and auth errors pass straight through, and a
#: cancelled call was cancelled on purpose.
NEVER_RETRIED_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED}
)
#: Clarifai in-body scope and auth statuses no policy may retry.
NEVER_RETRIED_STATUSES: frozenset[int] = frozenset(
    {
        _sc.CONN_INSUFFICIENT_SCOPES,
        _sc.CONN_KEY_INVALID,
        _sc.CONN_KEY_NOT_FOUND,
        _sc.CONN_AUTH_METHOD_DISABLED,
        _sc.CONN_TOKEN_INVALID,
        _sc.CONN_CREDENTIALS_INVALID,
    }
)


def _number(name: str, value: object, *, low: float, allow_low: bool = True) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not allow_low):  # type: ignore[operator]
        rule = ">=" if allow_low else ">"
        raise ValueError(f"{name} must be a finite number {rule} {low}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """A retry budget (gRFC A6 "retryThrottling"): a token bucket per channel or interceptor.

    Each attempt that fails with a retryable outcome takes a token (a throttle takes
    ``throttle_cost``); each successful response gives back ``token_ratio``. While the bucket
    holds ``max_tokens / 2`` or fewer, no retries are made (first attempts always are), so under
    an outage attempts per call fall towards one.

    Throttles cost nothing by default: a throttle says the request was not processed, and it is
    the rate limiter's job, not the budget's, to slow the offered load. A budget that throttles
    drained would stop the very backoff that slows callers down.

    Attributes:
        max_tokens: The bucket's size, and its content at the start.
        token_ratio: What a success gives back.
        throttle_cost: What a throttled attempt takes.

    Raises:
        ValueError: ``max_tokens`` is not positive, or another number is negative.
    """

    max_tokens: float = 10.0
    token_ratio: float = 0.1
    throttle_cost: float = 0.0

    def __post_init__(self) -> None:
        _number("max_tokens", self.max_tokens, low=0, allow_low=False)
        _number("token_ratio", self.token_ratio, low=0)
        _number("throttle_cost", self.throttle_cost, low=0)


_TOKEN_BUCKETS: weakref.WeakSet[TokenBucket] = weakref.WeakSet()


def token_buckets() -> list[TokenBucket]:
    """Every retry budget's bucket alive in the process (each has ``target`` and ``tokens``),
    for gauges."""
    return list(_TOKEN_BUCKETS)


class TokenBucket:
    """The shared state of a `RetryBudget`: thread-safe, and safe across asyncio tasks."""

    __slots__ = ("__weakref__", "_lock", "budget", "target", "tokens")

    def __init__(self, budget: RetryBudget, target: str = "") -> None:
        self.budget = budget
        self.target = target
        self.tokens = float(budget.max_tokens)
        self._lock = threading.Lock()
        _TOKEN_BUCKETS.add(self)

    def record(self, transient: bool, outcome: object, throttled: bool = False) -> None:
        """Take a token for a transient failure; give some back for a successful response."""
        if transient:
            cost = self.budget.throttle_cost if throttled else 1.0
            if cost:
                with self._lock:
                    self.tokens = max(0.0, self.tokens - cost)
        elif self.tokens < self.budget.max_tokens and not isinstance(outcome, grpc.RpcError):
            with self._lock:
                self.tokens = min(self.budget.max_tokens, self.tokens + self.budget.token_ratio)

    def full(self) -> bool:
        """Whether a success would change nothing."""
        return self.tokens >= self.budget.max_tokens

    def allows_retry(self) -> bool:
        """Whether the bucket holds more than half its size."""
        return self.tokens > self.budget.max_tokens / 2


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When and how a call is retried. Immutable: change with ``dataclasses.replace``.

    The wait before retry ``k`` (k = 1 for the second attempt) is::

        base = min(max_backoff, initial_backoff * multiplier ** (k - 1))
        wait = base * (1 - jitter * uniform(0, 1))

    with ``throttle_backoff`` instead of ``initial_backoff`` after a throttle. When the server
    sends pushback (``grpc-retry-pushback-ms``), the wait is the longer of the backoff and the
    pushback spread upwards by up to ``jitter`` (so that the callers it sent back do not return
    at once), and never above ``max_backoff``.

    Jitter only shortens a wait: ``max_backoff`` is a true cap, a zero backoff waits zero,
    ``jitter=0`` gives exact waits and ``jitter=1`` is gRPC's "full jitter". No wait runs past
    the deadline: the retries stop instead, and the caller gets the last outcome.

    Attributes:
        max_attempts: Attempts in all, the first included (1: no retries).
        initial_backoff: Seconds before the first retry, before jitter.
        multiplier: Growth of the backoff per retry (>= 1).
        max_backoff: Cap on the backoff, before jitter.
        jitter: The largest fraction by which a wait is randomly shortened, from 0 to 1.
        timeout: Seconds after the call began past which no new attempt starts (the retry
            window), or None. It never cuts an attempt: a call nobody bounded is not bounded
            by us (no gRPC deadline is sent unless the caller or ``total_timeout`` sets one).
        total_timeout: A hard deadline for the whole call, attempts and waits together, sent
            to the server as each attempt's gRPC deadline; None (the default) for none. The
            call's own ``timeout=`` also applies; whichever ends sooner wins. For calls with a
            response stream it bounds only the retrying, not the stream itself.
        retryable_codes: gRPC status codes that are retried.
        retryable_statuses: Clarifai in-body ``status.code`` values that are retried.
        throttle_codes: gRPC codes that are throttles (e.g. ``RESOURCE_EXHAUSTED``): retried,
            with ``throttle_backoff``, and they teach the adaptive rate limiter. Our own
            `RateLimitedError` is never retried.
        throttle_statuses: Clarifai in-body statuses that are throttles (``CONN_THROTTLED``).
        throttle_backoff: Seconds before the first retry after a throttle, before jitter.
        budget: The `RetryBudget` whose bucket (one per channel or interceptor) limits retries;
            None for no limit beyond ``max_attempts``.

    Raises:
        ValueError: A number is out of range, or a scope, auth or CANCELLED code is listed.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 5.0
    jitter: float = 0.2
    timeout: float | None = 30.0
    total_timeout: float | None = None
    retryable_codes: frozenset[grpc.StatusCode] = field(default=DEFAULT_RETRYABLE_CODES)
    retryable_statuses: frozenset[int] = field(default=DEFAULT_RETRYABLE_STATUSES)
    throttle_codes: frozenset[grpc.StatusCode] = frozenset()
    throttle_statuses: frozenset[int] = field(default=DEFAULT_THROTTLE_STATUSES)
    throttle_backoff: float = 0.25
    budget: RetryBudget | None = RetryBudget()

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        _number("initial_backoff", self.initial_backoff, low=0)
        _number("multiplier", self.multiplier, low=1)
        _number("max_backoff", self.max_backoff, low=0)
        _number("jitter", self.jitter, low=0)
        _number("throttle_backoff", self.throttle_backoff, low=0)
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        for name in ("timeout", "total_timeout"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), low=0, allow_low=False)
        for name in ("retryable_codes", "throttle_codes"):
            codes = self._set(name, getattr(self, name), grpc.StatusCode)
            bad = sorted(c.name for c in codes & (NEVER_RETRIED_CODES | {grpc.StatusCode.OK}))
            if bad:
                raise ValueError(
                    f"{name} may not include {', '.join(bad)}: scope, auth and cancelled "
                    "calls always pass straight through"
                )
        for name in ("retryable_statuses", "throttle_statuses"):
            statuses = self._set(name, getattr(self, name), int)
            bad = sorted(_status_name(s) for s in statuses & NEVER_RETRIED_STATUSES)
            if _sc.SUCCESS in statuses:
                bad.append("SUCCESS")
            if bad:
                raise ValueError(
                    f"{name} may not include {', '.join(bad)}: scope and auth errors "
                    "always pass straight through"
                )
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ValueError("budget must be a RetryBudget or None")

    def _set(self, name: str, values: Iterable[Any], kind: type) -> frozenset[Any]:
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise ValueError(f"{name} must be a collection of {kind.__name__}")
        result = frozenset(values)
        for value in result:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{name} must hold only {kind.__name__} values, got {value!r}")
        if kind is int:
            _known_statuses(name, result)
        object.__setattr__(self, name, result)
        return result

    def backoff(
        self, retry: int, rand: Callable[[], float] = random.random, throttled: bool = False
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the second attempt)."""
        initial = self.throttle_backoff if throttled else self.initial_backoff
        try:
            base = min(self.max_backoff, initial * self.multiplier ** (retry - 1))
        except OverflowError:
            base = self.max_backoff
        return base * (1.0 - self.jitter * rand())

    def wait(
        self, retry: int, outcome: object, rand: Callable[[], float] = random.random
    ) -> tuple[float, str]:
        """Seconds to wait before retry ``retry`` after ``outcome``, and why: ``"backoff"`` or
        ``"pushback"`` (the server's hint, clamped to ``max_backoff`` and spread upwards)."""
        backoff = self.backoff(retry, rand, self.throttle(outcome))
        hint = pushback(outcome)
        if hint is None or hint < 0:
            return backoff, "backoff"
        spread = min(self.max_backoff, MAX_PUSHBACK, hint) * (1.0 + self.jitter * rand())
        spread = min(spread, self.max_backoff)
        return (spread, "pushback") if spread > backoff else (backoff, "backoff")

    def transient(self, outcome: object) -> bool:
        """Whether an attempt's outcome (a ``grpc.RpcError`` or a response) is worth a retry."""
        if isinstance(outcome, grpc.RpcError):
            code = getattr(outcome, "code", None)
            if code is None or type(outcome) is RateLimitedError:
                return False
            code = code()
            return code in self.retryable_codes or code in self.throttle_codes
        status = getattr(getattr(outcome, "status", None), "code", None)
        return status in self.retryable_statuses or status in self.throttle_statuses

    def throttle(self, outcome: object) -> bool:
        """Whether an outcome says the server refused for rate (a throttle): a throttle code or
        status, or a retryable failure that carries server pushback."""
        if isinstance(outcome, grpc.RpcError):
            if type(outcome) is RateLimitedError:
                return False
            code = getattr(outcome, "code", None)
            if self.throttle_codes and code is not None and code() in self.throttle_codes:
                return True
            hint = pushback(outcome)  # a server that pushes back is shedding load: a throttle
            return hint is not None and hint >= 0 and self.transient(outcome)
        return getattr(getattr(outcome, "status", None), "code", None) in self.throttle_statuses

    def deadline(self, timeout: float | None) -> float | None:
        """The monotonic time by which the whole call must end (the caller's ``timeout`` or
        ``total_timeout``, whichever is sooner), or None."""
        total = self.total_timeout
        if total is not None and (timeout is None or total < timeout):
            timeout = total
        return None if timeout is None else time.monotonic() + timeout


def _known_statuses(name: str, statuses: frozenset[int]) -> None:
    """Refuse a status code the installed ``clarifai_grpc`` does not know (a typo, never sent)."""
    unknown = sorted(statuses - set(_sc.StatusCode.values()))
    if unknown:
        raise ValueError(
            f"{name} holds codes that are not Clarifai statuses: {unknown}; use the values of "
            "clarifai_grpc's status_code_pb2, such as status_code_pb2.CONN_THROTTLED"
        )


#: A policy that makes a single attempt.
NO_RETRY = RetryPolicy(max_attempts=1)


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _status_name(status: int) -> str:
    try:
        return str(_sc.StatusCode.Name(status))
    except ValueError:
        return f"status {status}"


def describe(outcome: object) -> str:
    """A short, secret-free name for an outcome: a gRPC code or a Clarifai status name."""
    if isinstance(outcome, grpc.RpcError):
        code = getattr(outcome, "code", None)
        return code().name if code is not None else type(outcome).__name__
    status = getattr(getattr(outcome, "status", None), "code", None)
    return _status_name(status) if isinstance(status, int) else "message"


PUSHBACK = "grpc-retry-pushback-ms"
#: The longest server pushback honoured, in seconds (a policy's ``max_backoff`` caps it too):
#: a hostile or broken server cannot park a call, or overflow a timer.
MAX_PUSHBACK = 60.0
#: The header that tells the server which retry an attempt is (absent on the first attempt).
ATTEMPT_HEADER = "x-retry-attempt"


def pushback(outcome: object) -> float | None:
    """The server's pushback in seconds (gRFC A6), -1.0 for "do not retry", or None if absent."""
    if not isinstance(outcome, grpc.RpcError):
        return None
    trailing = getattr(outcome, "trailing_metadata", None)
    for key, value in (trailing() if trailing is not None else None) or ():
        if key == PUSHBACK:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if not (isinstance(text, str) and text.isascii() and text.isdigit()):
                return -1.0  # gRFC A6: a malformed hint means "do not retry"
            return MAX_PUSHBACK if len(text) > 9 else min(MAX_PUSHBACK, int(text) / 1000)
    return None


def method_name(method: str | bytes) -> str:
    """``/clarifai.api.V2/PostInputs`` (str or bytes) as ``PostInputs``, for log records."""
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    return method.rsplit("/", 1)[-1]


def _last_outcome(state: _t.RetryCallState) -> Any:
    assert state.outcome is not None  # noqa: S101 (tenacity sets it before stopping)
    return state.outcome.result()


class _stop_early(_t.stop.stop_base):  # noqa: N801 (named like tenacity's stops)
    """Stop when the next wait would reach the deadline, the budget is spent, or the server
    pushed back with "do not retry"."""

    def __init__(self, deadline: float | None, bucket: TokenBucket | None) -> None:
        self.deadline = deadline
        self.bucket = bucket

    def __call__(self, state: _t.RetryCallState) -> bool:
        deadline = self.deadline
        if deadline is not None and time.monotonic() + state.upcoming_sleep >= deadline:
            return True
        if self.bucket is not None and not self.bucket.allows_retry():
            return True
        return pushback(_last_outcome(state)) == -1.0


class Retry:
    """The retries of one call, decided by a fresh tenacity ``Retrying``, driven step by step.

    Built by `Attempts` only after a transient outcome: the happy path never pays for tenacity.
    """

    __slots__ = ("_retrying", "_state", "reason")

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None,
        bucket: TokenBucket | None,
    ) -> None:
        self.reason = "backoff"

        def wait(state: _t.RetryCallState) -> float:
            seconds, self.reason = policy.wait(state.attempt_number, _last_outcome(state))
            return seconds

        self._retrying = _t.Retrying(
            stop=_t.stop_after_attempt(policy.max_attempts) | _stop_early(deadline, bucket),
            wait=wait,
            retry=_t.retry_if_result(policy.transient),
            retry_error_callback=_last_outcome,
            reraise=True,
        )
        self._state = _t.RetryCallState(self._retrying, fn=None, args=(), kwargs={})

    def after(self, outcome: object) -> float | None:
        """Seconds to wait before the next attempt, or None if ``outcome`` is final."""
        # tenacity keeps its statistics per thread; a future's retries run on other threads.
        self._retrying.begin()
        self._state.set_result(outcome)
        action = self._retrying.iter(self._state)
        if isinstance(action, _t.DoSleep):
            self._state.prepare_for_next_attempt()
            return float(action)
        return None


def final_at_once(policy: RetryPolicy, bucket: TokenBucket | None, outcome: object) -> bool:
    """Whether a first outcome is final with nothing to record: the happy path, which then
    needs no `Attempts` (the same verdict `Attempts.after` would give, at less cost)."""
    if policy.transient(outcome):  # a throttle teaches the rate limiter even when not retried
        return policy.max_attempts == 1 and not policy.throttle(outcome)
    return (
        policy.max_attempts == 1
        or bucket is None
        or bucket.full()
        or isinstance(outcome, grpc.RpcError)
    )


class Attempts:
    """One call's attempts: pace each, judge each outcome, say how long to wait before the next.

    Every front end drives its calls through one of these: `first` gives the wait before the
    first attempt (the rate limiter's), `after` is fed each outcome (a ``grpc.RpcError`` or a
    response) and returns the seconds to wait before attempt `number`, or None when the outcome
    is final and goes to the caller as is. A rate limiter that refuses the first attempt raises
    `RateLimitedError`; one that refuses a retry makes the last outcome final.
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
        "started",
        "target",
        "throttled",
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
        if TESTING.active:  # the front end may have done it: doing it again changes nothing
            policy = for_testing(policy)
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
        self.limit_wait = limit_wait
        self.closing = closing  # the channel's: closing it ends every wait at once
        self.number = 1
        self.throttled = 0
        #: What ended the retrying early: "attempts", "deadline", "budget", "pushback",
        #: "limiter", or None.
        self.cut_by: str | None = None
        self._retry: Retry | None = None
        self._leave: Callable[[], None] | None = None
        self.waited = 0.0  # seconds waited between attempts, for the call's summary

    def _bound(self, not_before: float) -> float | None:
        """The longest wait for a retry's permit: no retry starts past the window."""
        return permit_bound(self.retry_until, self.limit_wait, not_before)

    def first(self) -> float:
        """Seconds to wait before the first attempt (the rate limiter's pacing).

        Raises:
            RateLimitedError: The limiter has no permit within the wait allowed.
        """
        limiter = self.limiter
        if limiter is None:
            return 0.0
        bound = permit_bound(self.deadline, self.limit_wait)
        permit = limiter.acquire(0.0, bound)
        if permit is None:
            raise RateLimitedError(bound)
        self.permit = permit
        return TESTING.wait(permit.wait)

    async def first_async(self) -> float:
        """`first`, for ``grpc.aio``: a shared limiter's I/O never blocks the event loop."""
        limiter = self.limiter
        if limiter is None:
            return 0.0
        bound = permit_bound(self.deadline, self.limit_wait)
        permit = await limiter.acquire_async(0.0, bound)
        if permit is None:
            raise RateLimitedError(bound)
        self.permit = permit
        return TESTING.wait(permit.wait)

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
        wait = self._retry.after(outcome)
        if wait is None:
            self.cut_by = self._why_stopped(outcome)
        return wait, throttled

    def _why_stopped(self, outcome: object) -> str:
        if self.number >= self.policy.max_attempts:
            return "attempts"
        if pushback(outcome) == -1.0:
            return "pushback"
        if self.bucket is not None and not self.bucket.allows_retry():
            return "budget"
        return "deadline"

    def _paced(self, permit: Permit | None, wait: float) -> float | None:
        if permit is None:
            self.cut_by = "limiter"
            return None
        self.permit = permit
        if permit.wait > wait:
            wait = permit.wait
            if self._retry is not None:
                self._retry.reason = "limiter"
        return wait

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
                    reason=self.reason(),  # type: ignore[arg-type]
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
        """The call ends with ``outcome``: sum it up for the hooks if it was eventful."""
        self.resume()
        if (self.number > 1 or self.throttled or self.cut_by) and _hooks._STATE.end:  # noqa: SLF001
            _hooks.call_ended(
                CallSummary(
                    method=_full_name(self.method),
                    target=self.target,
                    attempts=self.number,
                    outcome="SUCCESS" if _succeeded(outcome) else describe(outcome),
                    throttled=self.throttled,
                    cut_by=self.cut_by,  # type: ignore[arg-type]
                    elapsed=time.monotonic() - self.started,
                    waited=self.waited,
                )
            )

    def after(self, outcome: object) -> float | None:
        """Seconds to wait before the next attempt, or None if ``outcome`` is final."""
        wait, throttled = self._judge(outcome)
        limiter = self.limiter
        if limiter is not None:
            permit = self.permit
            if permit is not None and (throttled or delivered(limiter, outcome)):
                limiter.feedback(permit, throttled)
            if wait is not None:
                wait = self._paced(limiter.acquire(wait, self._bound(wait)), wait)
        if wait is None:
            self._final(outcome)
            return None
        return self._scheduled(outcome, wait)

    async def after_async(self, outcome: object) -> float | None:
        """`after`, for ``grpc.aio``."""
        wait, throttled = self._judge(outcome)
        limiter = self.limiter
        if limiter is not None:
            permit = self.permit
            if permit is not None and (throttled or delivered(limiter, outcome)):
                await limiter.feedback_async(permit, throttled)
            if wait is not None:
                permit = await limiter.acquire_async(wait, self._bound(wait))
                wait = self._paced(permit, wait)
        if wait is None:
            self._final(outcome)
            return None
        return self._scheduled(outcome, wait)

    def recheck(self) -> float:
        """At the end of a wait: seconds more to wait before the attempt, 0 to send it now
        (more only if the limiter cut its rate since the permit: it laid the queue anew)."""
        limiter, permit = self.limiter, self.permit
        if limiter is None or permit is None:
            return 0.0
        moved = limiter.recheck(permit, permit_bound(self.retry_until, self.limit_wait))
        return self._moved(permit, moved)

    def _moved(self, permit: Permit, moved: Permit) -> float:
        if moved is permit:
            return 0.0
        self.permit = moved
        wait = TESTING.wait(moved.wait)
        if self.number > 1:
            self.waited += wait  # a retry's wait: the call's summary counts it
        return wait

    async def recheck_async(self) -> float:
        """`recheck`, for ``grpc.aio``."""
        limiter, permit = self.limiter, self.permit
        if limiter is None or permit is None:
            return 0.0
        bound = permit_bound(self.retry_until, self.limit_wait)
        return self._moved(permit, await limiter.recheck_async(permit, bound))

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` in this thread before an attempt (and as long more as `recheck`
        says); True if the channel was closed meanwhile (then no attempt follows: end the
        call with `end_closed`)."""
        closing = self.closing
        while True:
            if closing is not None:
                if closing.sleep(seconds):
                    return True
            elif seconds > 0:
                time.sleep(seconds)
            if seconds <= 0 or (seconds := self.recheck()) <= 0:
                return False

    def end_closed(self) -> CancelledCall:
        """End the call whose channel closed while it waited: ``CANCELLED``, nothing more sent."""
        if self.number > 1:
            self.number -= 1  # the attempt it waited for never started
        outcome = closed()
        self._final(outcome)
        return outcome

    def reason(self) -> str:
        """Why the last wait `after` gave was chosen: backoff, pushback or limiter."""
        return "backoff" if self._retry is None else self._retry.reason


def delivered(limiter: Bucket, outcome: object) -> bool:
    """Whether a success of ``outcome`` (any answer but an error or a throttle) teaches
    ``limiter``: only an active adaptive one (dormant or fixed: no call at all)."""
    return limiter.learning and not isinstance(outcome, grpc.RpcError)


def _full_name(method: str | bytes) -> str:
    return method.decode("ascii", "replace") if isinstance(method, bytes) else method


def _succeeded(outcome: object) -> bool:
    if isinstance(outcome, grpc.RpcError):
        return False
    status = getattr(getattr(outcome, "status", None), "code", None)
    return status is None or status == _sc.SUCCESS


def for_testing(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` as the testing switch has it: no backoff, and its number of attempts."""
    return _testing(policy, TESTING.max_attempts(policy.max_attempts))


@functools.lru_cache(maxsize=256)
def _testing(policy: RetryPolicy, attempts: int) -> RetryPolicy:
    return dataclasses.replace(policy, max_attempts=attempts, initial_backoff=0, throttle_backoff=0)


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


T = TypeVar("T")


def _same(outcome: object) -> object:
    return outcome


def run(
    attempts: Attempts, attempt: Callable[[int], T], view: Callable[[T], object] = _same
) -> T | CancelledCall:
    """Run ``attempt(number)`` until its outcome is final; return the last outcome as is (or
    `CancelledCall`, if the channel closed while the call waited).

    ``attempt`` gives itself the time left before the deadline; ``view`` maps what it returns
    to the outcome the policy judges (an RpcError or a response).

    Raises:
        RateLimitedError: The rate limiter refused the first attempt.
    """
    wait = attempts.first()
    if wait and attempts.sleep(wait):
        return attempts.end_closed()
    outcome = attempt(1)
    return follow(attempts, attempt, outcome, attempts.after(view(outcome)), view)


def follow(
    attempts: Attempts,
    attempt: Callable[[int], T],
    outcome: T,
    wait: float | None,
    view: Callable[[T], object] = _same,
) -> T | CancelledCall:
    """Go on from an outcome that `Attempts.after` answered with ``wait``: retry until final."""
    while wait is not None:
        if attempts.sleep(wait):
            return attempts.end_closed()
        attempts.resume()
        outcome = attempt(attempts.number)
        wait = attempts.after(view(outcome))
    return outcome
