"""Rate-limit configuration and the limiter's interfaces: `RateLimit`, `Permit`, `Bucket`,
`Store`. No state and no maths: modules that only name a limit import this, never the bucket
(``_limiter``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from ._compat import slotted

__all__ = [
    "DEFAULT_RATE_LIMIT",
    "GO",
    "OK",
    "Bucket",
    "Permit",
    "Quota",
    "RateLimit",
    "Signal",
    "Store",
]


#: The largest number a rate, burst or wait may be: beyond it, times overflow timers.
_LARGEST = 1e6


def _number(name: str, value: object, *, low: float, allow_none: bool = False) -> None:
    """Refuse what is not a finite number in ``[low, _LARGEST]`` (or None if allowed)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= _LARGEST:  # type: ignore[operator]
        none = " or None" if allow_none else ""
        raise ValueError(
            f"{name} must be a number from {low:g} to {_LARGEST:g}{none}, got {value!r}"
        )


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """How attempts are paced, client-side. Immutable: change with ``dataclasses.replace``.

    Attributes:
        per_second: A fixed rate, paced from the first call; None (the default) to pace at the
            limit the server states when it throttles ("exceeded limit of 15 requests per
            second"), shared by every process that shares the state, or, when it states none,
            at a rate learnt from its throttles. Dormant (no pacing) until the first throttle.
        burst: Attempts that may go at once before pacing starts.
        max_wait: The longest an attempt waits for a permit, in seconds; past it (or past the
            call's deadline, whichever is sooner) the call fails at once with
            `RateLimitedError`. 0 never waits (fail fast); None waits as long as the deadline
            allows.
        min_rate: A learnt rate never falls below this many attempts per second.
        initial_rate: The lowest a learnt rate starts at when the server states no limit
            (default: Clarifai's documented 15 requests/s; a bucket of this process starts at
            the rate the process was sending at if higher, a shared store's at this); it
            doubles every second until a throttle.
        quota_probe: After a quota status (hourly, monthly or account limit reached), calls
            under that identity fail fast with `QuotaExceededError` and one call goes through
            every ``quota_probe`` seconds to see whether the quota is back; None turns this
            off (every call goes to the server and gets the quota status itself).
        key: Share one limit under this name instead of per secret: every credential with the
            same ``key`` (and target) paces together. None keys by the secret (hashed).
        store: Where the state lives: None for this process; a `Store` (e.g.
            ``clarifai_interceptor.redis.RedisStore``) to share it across processes.

    Raises:
        ValueError: A number is out of range (rates and waits from 0.001 to 1e6), or
            ``store`` is not a `Store`.
    """

    per_second: float | None = None
    burst: float = 1.0
    max_wait: float | None = 30.0
    min_rate: float = 0.5
    initial_rate: float = 15.0
    quota_probe: float | None = 60.0
    key: str | None = None
    store: Store | None = None

    def __post_init__(self) -> None:
        _number("per_second", self.per_second, low=0.001, allow_none=True)
        _number("burst", self.burst, low=1)
        _number("max_wait", self.max_wait, low=0, allow_none=True)
        _number("min_rate", self.min_rate, low=0.001)
        _number("initial_rate", self.initial_rate, low=0.001)
        _number("quota_probe", self.quota_probe, low=0.001, allow_none=True)
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
    """Leave to send one attempt: after ``wait`` seconds, at ``at`` on the bucket's clock.

    ``round`` counts the bucket's rate changes when it was given: a throttle of an attempt
    sent under an older round is already answered, and a permit of an older round is
    rechecked at the end of its wait (`Bucket.recheck`) if the rate fell since. ``before`` and
    ``after`` are the schedule's end before and after it (`Bucket.release` undoes it while it
    is the last); ``rate`` the rate it was paced at."""

    wait: float
    round: int
    at: float = 0.0
    before: float = 0.0
    after: float = 0.0
    rate: float = 0.0


#: The permit of a dormant bucket: go now.
GO = Permit(0.0, 0)


class Quota(NamedTuple):
    """A bucket's refusal while a quota is exhausted: the Clarifai status that said so, and
    seconds until the next probe call may go."""

    status: int
    probe_in: float


class Signal(NamedTuple):
    """What an attempt's outcome tells the limiter: a throttle (with the limit the server
    stated, in requests per second, if any) or a quota status; neither for a success."""

    throttled: bool = False
    stated: float | None = None
    quota: int = 0


#: A success.
OK = Signal()


@runtime_checkable
class Bucket(Protocol):
    """The pacing state of one credential identity and target (not part of the API)."""

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | Quota | None:
        """Reserve a permit no sooner than ``not_before`` seconds from now; None (nothing
        reserved) if its wait would pass ``max_wait`` seconds; a `Quota` while a quota is
        exhausted (between probes)."""

    def feedback(self, permit: Permit, signal: Signal) -> None:
        """Record the outcome of an attempt sent under ``permit``."""

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        """At the end of ``permit``'s wait: ``permit`` itself to send now; if the rate fell
        since, a new permit at the new rate (wait for it, then recheck that). With none within
        ``max_wait``, ``permit``: it goes at its old slot rather than fail."""

    def release(self, permit: Permit) -> None:
        """Give back a permit nothing was sent under. Never raises."""

    async def acquire_async(
        self, not_before: float, max_wait: float | None
    ) -> Permit | Quota | None:
        """`acquire` for ``grpc.aio`` callers: never blocks the event loop."""

    async def feedback_async(self, permit: Permit, signal: Signal) -> None:
        """`feedback` for ``grpc.aio`` callers."""

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        """`recheck` for ``grpc.aio`` callers."""

    async def release_async(self, permit: Permit) -> None:
        """`release` for ``grpc.aio`` callers."""

    def rate(self) -> float | None:
        """The rate paced to now, in attempts per second; None while dormant."""

    @property
    def learning(self) -> bool:
        """Whether a success has something to teach it (a learnt rate, or a quota to clear):
        only then is it told of successes."""


@runtime_checkable
class Store(Protocol):
    """Where buckets live: one `Bucket` per key. ``clarifai_interceptor.redis`` has one."""

    def bucket(self, key: str, limit: RateLimit) -> Bucket:
        """The bucket for ``key`` (a digest, no secret in it) under ``limit``."""
