"""Rate-limit configuration and the limiter's interfaces: `RateLimit`, `Permit`, `Bucket`,
`Store`. No state and no maths: modules that only name a limit import this, never the bucket
(``_limiter``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from ._compat import slotted

__all__ = ["DEFAULT_RATE_LIMIT", "GO", "Bucket", "Permit", "RateLimit", "Store"]


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


@slotted
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
    cuts when the permit was given: a throttle cuts the rate only if no cut came since.
    ``at`` is the slot on the bucket's clock: a cut since re-spaces it (`Bucket.recheck`)."""

    wait: float
    round: int
    at: float = 0.0


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

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        """At the end of ``permit``'s wait: ``permit`` itself to send now; if a cut came since,
        a new permit laid out at the new rate (wait for it, then recheck that). With none
        within ``max_wait``, ``permit``: it goes at its old slot rather than fail."""

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        """`recheck` for ``grpc.aio`` callers."""

    async def acquire_async(self, not_before: float, max_wait: float | None) -> Permit | None:
        """`acquire` for ``grpc.aio`` callers: never blocks the event loop."""

    async def feedback_async(self, permit: Permit, throttled: bool) -> None:
        """`feedback` for ``grpc.aio`` callers."""

    def release(self, permit: Permit) -> None:
        """Give back the slot of a permit that was never used: nothing was sent under it (its
        call ended while it waited). Never raises; does nothing for a permit already due, of
        a dormant bucket, or given before the last cut."""

    async def release_async(self, permit: Permit) -> None:
        """`release` for ``grpc.aio`` callers: never blocks the event loop."""

    def rate(self) -> float | None:
        """The rate paced to now, in attempts per second; None while dormant."""

    @property
    def learning(self) -> bool:
        """Whether successes teach it (adaptive and active): a success of any permit, even
        one given while it was dormant, counts in the rate the server delivered."""


@runtime_checkable
class Store(Protocol):
    """Where buckets live: one `Bucket` per key. ``clarifai_interceptor.redis`` has one."""

    def bucket(self, key: str, limit: RateLimit) -> Bucket:
        """The bucket for ``key`` (a digest, no secret in it) under ``limit``."""
