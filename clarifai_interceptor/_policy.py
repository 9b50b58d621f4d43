"""Retry policy: which outcomes are transient or throttles, how long to wait, when to stop.

Configuration and pure judgement, no I/O and no state shared across calls: `RetryPolicy` and
`RetryBudget` (frozen, validated), the default codes and statuses, and the readers of an outcome
(`describe`, `pushback`). The attempt flow (`_attempts`) asks these; the budget's shared tokens
live in `_budget`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as _sc

from ._compat import slotted
from ._switch import TESTING
from .exceptions import RateLimitedError

__all__ = [
    "ATTEMPT_HEADER",
    "DEFAULT_RETRYABLE_CODES",
    "DEFAULT_RETRYABLE_STATUSES",
    "DEFAULT_THROTTLE_STATUSES",
    "MAX_PUSHBACK",
    "NEVER_RETRIED_CODES",
    "NEVER_RETRIED_STATUSES",
    "NO_RETRY",
    "UNKNOWN_STATUS",
    "RetryBudget",
    "RetryPolicy",
    "describe",
    "for_testing",
    "method_name",
    "pushback",
    "time_left",
]

#: gRPC codes retried by default: the load balancer or server is briefly unreachable.
DEFAULT_RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
#: Clarifai in-body status codes retried by default: throttling, models warming up, and the
#: statuses Clarifai's status-code docs answer with "try again" (the request was not served).
DEFAULT_RETRYABLE_STATUSES: frozenset[int] = frozenset(
    {
        _sc.CONN_THROTTLED,
        _sc.MODEL_BUSY_PLEASE_RETRY,
        _sc.MODEL_DEPLOYING,
        _sc.MODEL_LOADING,
        _sc.RPC_SERVER_UNAVAILABLE,
        _sc.RPC_REQUEST_QUEUE_FULL,
        _sc.TRY_AGAIN,  # "Try the request again"
        _sc.QUEUE_CONN_ERROR,  # "Servers are busy. Please try again later"
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


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """A retry budget (gRFC A6 "retryThrottling"): a token bucket per channel or interceptor.

    Each attempt that fails with a retryable outcome takes a token (a throttle takes
    ``throttle_cost``); each successful response gives back ``token_ratio``. While the bucket
    holds ``max_tokens / 2`` or fewer, no retries are made (first attempts always are), so under
    an outage attempts per call fall towards one.

    The defaults (100 tokens, 0.2 back per success: botocore's 500-token bucket at 5 a retry
    and 1 back, in gRFC A6's terms) let 49 retries go before the bucket stops them: one call
    that failed all its attempts leaves the next calls their retries (gRPC's own 10 and 0.1
    stopped every retry after one such call, until ten successes). The price: a total outage
    costs 49 retries more (200 calls: 249 attempts, not 204) before first attempts go alone.

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

    max_tokens: float = 100.0
    token_ratio: float = 0.2
    throttle_cost: float = 0.0

    def __post_init__(self) -> None:
        _number("max_tokens", self.max_tokens, low=0, allow_low=False)
        _number("token_ratio", self.token_ratio, low=0)
        _number("throttle_cost", self.throttle_cost, low=0)


@slotted
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
            bad = sorted(_sc.StatusCode.Name(s) for s in statuses & NEVER_RETRIED_STATUSES)
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


#: What `describe` calls a status the installed ``clarifai_grpc`` does not know: one name for
#: all of them, so that metric labels stay bounded whatever numbers a server sends.
UNKNOWN_STATUS = "UNKNOWN_STATUS"


def describe(outcome: object) -> str:
    """A short, secret-free name for an outcome: a gRPC code or a Clarifai status name, from a
    bounded set (a status ``clarifai_grpc`` does not know is `UNKNOWN_STATUS`): it labels
    metrics."""
    if isinstance(outcome, grpc.RpcError):
        code = getattr(outcome, "code", None)
        return code().name if code is not None else type(outcome).__name__
    status = getattr(getattr(outcome, "status", None), "code", None)
    if not isinstance(status, int):
        return "message"
    try:
        return str(_sc.StatusCode.Name(status))
    except ValueError:
        return UNKNOWN_STATUS


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


def for_testing(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` as the testing switch has it: no backoff, and its number of attempts."""
    return _testing(policy, TESTING.max_attempts(policy.max_attempts))


@functools.lru_cache(maxsize=256)
def _testing(policy: RetryPolicy, attempts: int) -> RetryPolicy:
    return dataclasses.replace(policy, max_attempts=attempts, initial_backoff=0, throttle_backoff=0)
