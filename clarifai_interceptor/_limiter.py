"""Client-side rate limiting: pace attempts to the rate the server accepts, before sending.

A `RateLimit` says how; a `Bucket` holds the state, one per credential identity and target,
shared by every channel of the process (or, through a `Store` such as
``clarifai_interceptor.redis.RedisStore``, by a fleet). Every attempt, first or retry, asks its
bucket for a `Permit` first: how long to wait before sending. A bucket that cannot give one
within the wait allowed refuses, and the call fails at once with `RateLimitedError`.

Adaptive mode (the default) is dormant, and costs one method call, until the first throttle;
then it paces to a rate that follows TCP CUBIC: cut to ``0.7 x`` on a throttle (at most once per
round of attempts in flight), then back at the old rate about a second later, and growing past
it, never above twice the measured send rate. The maths are pure functions of time, here.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import grpc

__all__ = [
    "BETA",
    "DEFAULT_RATE_LIMIT",
    "GROWTH",
    "Bucket",
    "EndedCall",
    "LocalBucket",
    "Permit",
    "RateLimit",
    "RateLimitedError",
    "Store",
    "bucket_for",
    "cubic_rate",
    "identity",
]

#: The factor a throttle multiplies the rate by (TCP CUBIC's beta, as botocore's adaptive mode).
BETA = 0.7
#: CUBIC's growth constant, relative to the rate before the cut: with 0.3 the rate is back at
#: that rate one second after the cut (K = cbrt((1 - BETA) / GROWTH) = 1 s).
GROWTH = 0.3
_K: float = ((1 - BETA) / GROWTH) ** (1 / 3)
_WINDOW = 0.5  # seconds per bucket of the send-rate estimate
_SMOOTH = 0.8  # weight of the old estimate (botocore's)
_STALL = 0.25  # seconds without a send that count as a stall, not as a slow rate


def _positive(
    name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False
) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        rule = ">= 0" if allow_zero else "> 0"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a finite number {rule}{none}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """How attempts are paced, client-side. Immutable: change with ``dataclasses.replace``.

    Attributes:
        per_second: A fixed rate, paced from the first call; None (the default) for adaptive
            pacing, dormant until the first throttle, then following the rate the server
            accepts.
        burst: Attempts that may go at once before pacing starts (a fixed rate's bucket size;
            an adaptive bucket's once it is active).
        max_wait: The longest an attempt waits for a permit, in seconds; past it (or past the
            call's deadline, whichever is sooner) the call fails at once with
            `RateLimitedError`. 0 never waits (fail fast); None waits as long as the deadline
            allows.
        min_rate: The adaptive rate never falls below this many attempts per second.
        initial_rate: At the first throttle the adaptive rate starts from the rate this process
            was sending at, or from this if that was lower (default: Clarifai's documented
            15 requests/s): a throttle after a handful of calls says others share the limit,
            not that the limit is a handful of calls.
        key: Share one limit under this name instead of per secret: every credential with the
            same ``key`` (and target) paces together. None keys by the secret (hashed).
        store: Where the state lives: None for this process; a `Store` (e.g.
            ``clarifai_interceptor.redis.RedisStore``) to share it across processes.

    Raises:
        ValueError: A number is out of range, or ``store`` is not a `Store`.
    """

    per_second: float | None = None
    burst: float = 1.0
    max_wait: float | None = 30.0
    min_rate: float = 0.5
    initial_rate: float = 15.0
    key: str | None = None
    store: Store | None = None

    def __post_init__(self) -> None:
        _positive("per_second", self.per_second, allow_none=True)
        _positive("burst", self.burst)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst!r}")
        _positive("max_wait", self.max_wait, allow_none=True, allow_zero=True)
        _positive("min_rate", self.min_rate)
        _positive("initial_rate", self.initial_rate)
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError("key must be a non-empty string or None")
        if self.store is not None and not isinstance(self.store, Store):
            raise ValueError(f"store must be a Store or None, not {type(self.store).__name__}")

    @property
    def adaptive(self) -> bool:
        """Whether the rate follows the server (no fixed ``per_second``)."""
        return self.per_second is None


#: The limit every channel gets unless told otherwise: adaptive, waiting up to 30 s.
DEFAULT_RATE_LIMIT = RateLimit()


class Permit(NamedTuple):
    """Leave to send one attempt: after ``wait`` seconds. ``round`` is the bucket's count of
    cuts when the permit was given: a throttle cuts the rate only if no cut came since."""

    wait: float
    round: int


#: The permit of a dormant bucket: go now.
GO = Permit(0.0, 0)


@runtime_checkable
class Bucket(Protocol):
    """The pacing state of one credential identity and target (not part of the API)."""

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | None:
        """Reserve a permit no sooner than ``not_before`` seconds from now; None (nothing
        reserved) if its wait would pass ``max_wait`` seconds."""

    def feedback(self, permit: Permit, throttled: bool) -> None:
        """Record the outcome of an attempt sent under ``permit``."""

    async def acquire_async(self, not_before: float, max_wait: float | None) -> Permit | None:
        """`acquire` for ``grpc.aio`` callers: never blocks the event loop."""

    async def feedback_async(self, permit: Permit, throttled: bool) -> None:
        """`feedback` for ``grpc.aio`` callers."""

    def rate(self) -> float | None:
        """The rate paced to now, in attempts per second; None while dormant."""


@runtime_checkable
class Store(Protocol):
    """Where buckets live: one `Bucket` per key. ``clarifai_interceptor.redis`` has one."""

    def bucket(self, key: str, limit: RateLimit) -> Bucket:
        """The bucket for ``key`` (a digest, no secret in it) under ``limit``."""


def cubic_rate(w_max: float, since_cut: float) -> float:
    """The adaptive rate ``since_cut`` seconds after a cut from ``w_max``: ``BETA * w_max`` at
    the cut, ``w_max`` after ``K`` = 1 s, then growing cubically."""
    lag = since_cut - _K
    return w_max * (1.0 + GROWTH * lag * lag * lag)


class EndedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """An outcome of ours for a call with no attempt in flight: a finished ``grpc.Call`` with
    no metadata (its subclasses say which code and why)."""

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:  # noqa: ARG002 (never runs)
        return False

    def __str__(self) -> str:
        return f"<{type(self).__name__} {self.code()}: {self.details()}>"


class RateLimitedError(EndedCall):
    """The client-side rate limiter refused a call: no permit within the wait allowed.

    A ``grpc.RpcError`` with code ``RESOURCE_EXHAUSTED``, so ``except grpc.RpcError`` keeps
    working; nothing was sent for the attempt it refused.
    """

    def __init__(self, wait: float | None) -> None:
        self._wait = wait

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        bound = "" if self._wait is None else f" within {self._wait:.3f} s"
        return f"the client-side rate limiter refused the call: no permit{bound} (nothing sent)"


class LocalBucket:
    """A `Bucket` in this process: GCRA reservations at the current rate, CUBIC adaptation."""

    __slots__ = (
        "_count",
        "_cut_at",
        "_last",
        "_lock",
        "_measured",
        "_now",
        "_rate",
        "_round",
        "_since",
        "_tat",
        "_w_max",
        "active",
        "limit",
    )

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._now = clock
        self._lock = threading.Lock()
        self.active = not limit.adaptive
        self._rate = limit.per_second or 0.0
        self._w_max = self._rate
        self._cut_at = 0.0
        self._round = 0
        self._tat = clock()  # GCRA's theoretical arrival time of the next permit
        self._since = self._last = self._tat  # start of the send-rate window, last send
        self._count = 0  # sends counted in the window
        self._measured = 0.0  # smoothed send rate; 0 until first measured

    def rate(self) -> float | None:
        if not self.active:
            return None
        with self._lock:
            return self._current(self._now())

    def _current(self, now: float) -> float:
        """The rate to pace at now (lock held)."""
        if not self.limit.adaptive:
            return self._rate
        rate = cubic_rate(self._w_max, now - self._cut_at)
        if self._measured > 0:
            rate = min(rate, 2.0 * self._measured)
        return max(self.limit.min_rate, rate)

    def _count_send(self, now: float) -> None:
        """Count one send in the send-rate estimate (lock held).

        A gap longer than `_STALL` (a client stall: a GC pause, a slow request) closes the
        window at the send before it: the stall itself says nothing about the rate.
        """
        if now - self._last > _STALL:
            self._sample(self._count, self._last - self._since)
            self._since, self._count = now, 0
        self._last = now
        self._count += 1
        elapsed = now - self._since
        if elapsed >= _WINDOW:
            self._sample(self._count, elapsed)
            self._since, self._count = now, 0

    def _sample(self, count: int, elapsed: float) -> None:
        if count and elapsed >= _WINDOW / 5:
            sample, old = count / elapsed, self._measured
            self._measured = sample if old == 0 else _SMOOTH * old + (1 - _SMOOTH) * sample

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | None:
        if not self.active:
            self._count += 1  # racy by design: an estimate, and the happy path stays lock-free
            return GO
        with self._lock:
            now = self._now()
            rate = self._current(now)
            interval = 1.0 / rate
            tolerance = (self.limit.burst - 1.0) * interval
            earliest = now + not_before
            at = max(earliest, self._tat - tolerance)
            wait = at - now
            if max_wait is not None and wait > max_wait:
                return None
            self._tat = max(self._tat, at) + interval
            self._count_send(now)
            return Permit(wait, self._round)

    def feedback(self, permit: Permit, throttled: bool) -> None:
        if not (throttled and self.limit.adaptive):
            return
        with self._lock:
            if permit.round != self._round:
                return  # sent before the last cut: that cut already answered it
            now = self._now()
            if self.active:
                rate = self._current(now)
            else:  # the first throttle: start from the rate we were sending at
                elapsed = max(now - self._since, _WINDOW)
                rate = max(self.limit.initial_rate, self._count / elapsed)
                self._measured = rate
                self._since, self._count, self._last = now, 0, now
                self._tat = now
                self.active = True
            self._w_max = rate
            self._cut_at = now
            self._round += 1

    async def acquire_async(self, not_before: float, max_wait: float | None) -> Permit | None:
        return self.acquire(not_before, max_wait)

    async def feedback_async(self, permit: Permit, throttled: bool) -> None:
        self.feedback(permit, throttled)

    def __repr__(self) -> str:
        state = "dormant" if not self.active else f"{self.rate():.3g}/s"
        return f"<LocalBucket {state}>"


def identity(secret: str, target: str, limit: RateLimit) -> str:
    """The key a bucket is shared under: a digest of the limit's key (or the secret) and the
    target, so that no secret is ever kept in clear."""
    name = limit.key if limit.key is not None else secret
    digest = hashlib.blake2b(f"{target}\0{name}".encode(), digest_size=16, person=b"ci-limit")
    return digest.hexdigest()


_BUCKETS: dict[tuple[str, RateLimit], Bucket] = {}
_LOCK = threading.Lock()


def bucket_for(limit: RateLimit, secret: str, target: str) -> Bucket:
    """The process's bucket for this limit, secret (or key) and target, made at first use."""
    key = identity(secret, target, limit)
    found = _BUCKETS.get((key, limit))
    if found is None:
        with _LOCK:
            found = _BUCKETS.get((key, limit))
            if found is None:
                store = limit.store
                found = LocalBucket(limit) if store is None else store.bucket(key, limit)
                _BUCKETS[key, limit] = found
    return found


def buckets() -> list[tuple[str, Bucket]]:
    """Every bucket of the process with its key (a digest), for gauges."""
    with _LOCK:
        return [(key, bucket) for (key, _limit), bucket in _BUCKETS.items()]


def _reset() -> Any:
    """Forget every bucket (tests)."""
    with _LOCK:
        _BUCKETS.clear()
