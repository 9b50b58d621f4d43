"""One rate limit across a fleet: the limiter's state in Redis (the ``[redis]`` extra).

Give a `RedisStore` to `RateLimit` and every process using one PAT (and target) paces to one
shared limit: a fixed rate's reservations, or the adaptive rate itself, so one throttle anywhere
cuts everyone's rate::

    limit = RateLimit(store=RedisStore("redis://limits.internal:6379/0"))
    channel = insecure_channel(target, credentials, rate_limit=limit)

Each decision (a permit, a throttle) is one atomic Lua script, ``_redis_limiter.lua``, on one
hash per credential identity (a digest: no secret reaches Redis) under Redis's own clock, with a
time to live refreshed on use. The maths are `LocalBucket`'s, and a test holds them equal.

When Redis is down or slow, no call is lost or hung: past a short socket timeout each bucket
paces with a `LocalBucket` of its own (``on_error="local"``) or refuses the permit
(``on_error="fail"``, the call fails with `RateLimitedError`). The store logs one warning per
outage, counts the calls it could not decide in Redis (`RedisStore.fallbacks`), and tries Redis
again after ``retry_after`` seconds, one caller at a time.

A permit never used gives its slot back (`RedisBucket.release`) where it came from: to Redis,
or to the local bucket that gave it while Redis was down. A release is best effort: it never
raises, never waits for a Redis that is down, and is not counted as a fallback.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

try:
    import redis
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover (CI installs the extra)
    raise ImportError(
        "clarifai_interceptor.redis needs redis-py: pip install 'clarifai-interceptor[redis]'"
    ) from None

from ._limiter import LocalBucket
from ._ratelimit import GO, Bucket, Permit, RateLimit

__all__ = ["DEFAULT_PREFIX", "RedisBucket", "RedisStore"]

log = logging.getLogger("clarifai_interceptor")

#: What every key starts with, before the credential identity's digest.
DEFAULT_PREFIX = "clarifai_interceptor:limit:"

_SCRIPT = importlib.resources.files(__package__).joinpath("_redis_limiter.lua").read_text("utf-8")
_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
_GIVEN = 1024  # waiting permits of the local bucket remembered at most (for their release)


def _number(name: str, value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class RedisStore:
    """A `Store` whose buckets keep their state in Redis, shared by every process using it.

    Args:
        url: The Redis server, e.g. ``"redis://host:6379/0"`` (``rediss://`` for TLS,
            ``unix://`` for a socket). The store builds its own clients from it, with
            ``timeout`` and without redis-py's own retries.
        client: A ``redis.Redis`` to use instead of ``url`` for sync calls (its own timeouts
            and retries apply: keep them short).
        async_client: A ``redis.asyncio.Redis`` for ``grpc.aio`` calls. Without one (and with
            ``url``) the store makes one per event loop.
        prefix: What every key starts with.
        ttl: Seconds a bucket's state outlives its last use.
        on_error: What a bucket does when Redis fails: ``"local"`` paces in this process,
            ``"fail"`` refuses the permit.
        timeout: Socket and connect timeout, in seconds, of the clients built from ``url``.
        retry_after: Seconds after a failure before Redis is tried again.

    Attributes:
        fallbacks: Calls decided without Redis (locally, or refused) because it failed.

    Raises:
        ValueError: Neither or both of ``url`` and the clients, a URL that is not a Redis URL,
            or a number, ``prefix`` or ``on_error`` out of range (the URL is never echoed).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = 600.0,
        on_error: Literal["local", "fail"] = "local",
        timeout: float = 0.25,
        retry_after: float = 1.0,
    ) -> None:
        if (url is None) == (client is None and async_client is None):
            raise ValueError("RedisStore needs url, or client and/or async_client (not both)")
        if client is not None and not isinstance(client, redis.Redis):
            raise ValueError(f"client must be a redis.Redis, not {type(client).__name__}")
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise ValueError(
                f"async_client must be a redis.asyncio.Redis, not {type(async_client).__name__}"
            )
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, not {type(prefix).__name__}")
        if on_error not in ("local", "fail"):
            raise ValueError(f"on_error must be 'local' or 'fail', got {on_error!r}")
        self.prefix = prefix
        self.ttl = _number("ttl", ttl)
        if self.ttl < 0.001:
            raise ValueError(f"ttl must be at least 0.001 s, got {ttl!r}")
        self.on_error = on_error
        self.timeout = _number("timeout", timeout)
        self.retry_after = _number("retry_after", retry_after)
        self.fallbacks = 0
        self._url = url
        if url is not None:
            if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("url must be a redis://, rediss:// or unix:// URL")
            try:
                client = redis.Redis.from_url(url, **self._options())
            except ValueError:
                raise ValueError("url is not a valid Redis URL") from None
        self._client = client
        self._script = None if client is None else client.register_script(_SCRIPT)
        self._async_client = async_client
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._down = False
        self._down_at = 0.0  # when the current outage was first seen
        self._retry_at = 0.0
        self._probing = False

    def _options(self, *, for_asyncio: bool = False) -> dict[str, Any]:
        """The clients' options: short timeouts, no retries (the store falls back instead).

        The asyncio client gets redis-py's asyncio ``Retry``: redis-py 8.2 warns when it is
        handed the sync one (an error wherever warnings are)."""
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": AsyncRetry(NoBackoff(), 0) if for_asyncio else Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
        }

    def bucket(self, key: str, limit: RateLimit) -> RedisBucket:
        """The bucket for ``key`` (a digest) under ``limit`` (not part of the API: `RateLimit`
        asks for it)."""
        return RedisBucket(self, key, limit)

    def close(self) -> None:
        """Close the sync client if the store made it (from ``url``)."""
        if self._url is not None and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the async client the store made for the running event loop, if any."""
        with self._lock:
            found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None and self._async_client is None:
            await found.registered_client.aclose()

    def _async_script(self) -> Any:
        """The script on this event loop's async client (made from ``url`` on first use)."""
        loop = asyncio.get_running_loop()
        with self._lock:  # loops in several threads may share the store
            script = self._async.get(loop)
            if script is None:
                client = self._async_client
                if client is None:
                    if self._url is None:
                        raise RuntimeError(
                            "this RedisStore has no async client: pass url= or async_client="
                        )
                    client = redis.asyncio.Redis.from_url(
                        self._url, **self._options(for_asyncio=True)
                    )
                script = self._async[loop] = client.register_script(_SCRIPT)
        return script

    @property
    def has_sync_client(self) -> bool:
        """Whether sync calls can reach Redis (``url`` or ``client`` given)."""
        return self._script is not None

    def decide(self, key: str, args: list[Any], *, count: bool = True, probe: bool = True) -> Any:
        """Run the script on ``key`` with ``args`` (not part of the API: the buckets' call).

        Returns:
            The script's reply; None when Redis is down or fails (then it counts as down for
            ``retry_after`` seconds, and the call as a fallback if ``count``). Without
            ``probe``, None at once while Redis is down: this call never tries it again.
        """
        if self._script is None:
            raise RuntimeError("this RedisStore has no sync client: pass url= or client=")
        if not self._usable(probe):
            self._fell_back(count)
            return None
        started = time.monotonic()
        try:
            reply = self._script(keys=[key], args=args)
        except _ERRORS as error:
            self._failed(error)
            self._fell_back(count)
            return None
        except BaseException:
            self._release()
            raise
        self._succeeded(started)
        return reply

    async def decide_async(
        self, key: str, args: list[Any], *, count: bool = True, probe: bool = True
    ) -> Any:
        """`decide` on the running event loop's async client (not part of the API)."""
        if not self._usable(probe):
            self._fell_back(count)
            return None
        started = time.monotonic()
        try:
            reply = await self._async_script()(keys=[key], args=args)
        except _ERRORS as error:
            self._failed(error)
            self._fell_back(count)
            return None
        except BaseException:  # cancelled, or misused: let the next caller try Redis
            self._release()
            raise
        self._succeeded(started)
        return reply

    def _usable(self, probe: bool = True) -> bool:
        """Whether this caller may try Redis: always when up; when down, one caller at a time
        once ``retry_after`` has passed (never, without ``probe``)."""
        if not self._down:
            return True
        if not probe:
            return False
        with self._lock:
            if not self._down:
                return True
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True
            return True

    def _release(self) -> None:
        with self._lock:
            self._probing = False

    def _succeeded(self, started: float) -> None:
        if self._down:
            with self._lock:
                # A call that began before the outage was seen says nothing about now.
                if started < self._down_at:
                    return
                was_down, self._down, self._probing = self._down, False, False
            if was_down:
                log.info("the rate limiter's Redis store is reachable again")

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            was_down, self._down, self._probing = self._down, True, False
            now = time.monotonic()
            if not was_down:
                self._down_at = now
            self._retry_at = now + self.retry_after
        if not was_down:
            action = "pacing in this process" if self.on_error == "local" else "refusing permits"
            log.warning(
                "the rate limiter's Redis store failed (%s); %s, trying Redis again every %g s",
                type(error).__name__,
                action,
                self.retry_after,
            )

    def _fell_back(self, count: bool) -> None:
        if count:
            with self._lock:
                self.fallbacks += 1

    def __repr__(self) -> str:  # never the URL: it may hold a password
        state = "down" if self._down else "up"
        return f"<RedisStore prefix={self.prefix!r} on_error={self.on_error!r} {state}>"


class RedisBucket:
    """A `Bucket` whose state is one Redis hash, shared by every process (not part of the API).

    Falls back to a `LocalBucket` of its own (or refuses) while Redis fails.
    """

    __slots__ = (
        "_args",
        "_clock",
        "_given",
        "_given_lock",
        "_round",
        "key",
        "limit",
        "local",
        "store",
    )

    def __init__(self, store: RedisStore, key: str, limit: RateLimit) -> None:
        self.store = store
        self.limit = limit
        self.key = store.prefix + key
        self.local = LocalBucket(limit)
        self._round = 0  # the latest round a reply named: a permit of it needs no recheck
        #: The waiting permits ``local`` gave while Redis failed: their release goes to it.
        self._given: dict[Permit, None] = {}
        self._given_lock = threading.Lock()
        #: Tests only: a clock for the script instead of Redis's TIME.
        self._clock: Callable[[], float] | None = None
        ttl_ms = max(1, round(store.ttl * 1000))
        per_second = limit.per_second or 0
        self._args = (ttl_ms, per_second, limit.burst, limit.min_rate, limit.initial_rate)

    def _argv(self, op: str, *more: object) -> list[Any]:
        now = "" if self._clock is None else repr(self._clock())
        return [op, self._args[0], now, *self._args[1:], *more]

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | None:
        args = self._argv("acquire", not_before, "" if max_wait is None else max_wait)
        reply = self.store.decide(self.key, args)
        return (
            self._fallback_acquire(not_before, max_wait) if reply is None else self._permit(reply)
        )

    async def acquire_async(self, not_before: float, max_wait: float | None) -> Permit | None:
        args = self._argv("acquire", not_before, "" if max_wait is None else max_wait)
        reply = await self.store.decide_async(self.key, args)
        return (
            self._fallback_acquire(not_before, max_wait) if reply is None else self._permit(reply)
        )

    def _permit(self, reply: Sequence[Any]) -> Permit | None:
        """The acquire script's answer: ``{granted, wait, round, rate, at}``."""
        self._round = round_ = int(reply[2])
        return Permit(float(reply[1]), round_, float(reply[4])) if int(reply[0]) else None

    def _recheck_args(self, permit: Permit, max_wait: float | None) -> list[Any] | None:
        """The script's arguments for a recheck; None if no reply named a later round (a cut
        anywhere in the fleet shows in this process's next reply: no round trip till then)."""
        if permit.round == self._round:
            return None
        wait = "" if max_wait is None else max_wait
        return self._argv("recheck", 0, wait, permit.round, repr(permit.at))

    def _rechecked(
        self, permit: Permit, reply: Sequence[Any] | None, max_wait: float | None
    ) -> Permit:
        if reply is None:  # Redis failed: the local bucket's answer (or the permit, as it was)
            if self.store.on_error != "local":
                return permit
            again = self.local.recheck(permit, max_wait)
            if again is not permit:
                self._forget(permit)
                self._remember(again)
            return again
        if int(reply[0]) == 2:
            return permit
        again = self._permit(reply) or permit
        if again is not permit:
            self._forget(permit)
        return again

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        args = self._recheck_args(permit, max_wait)
        if args is None:
            return permit
        return self._rechecked(permit, self.store.decide(self.key, args), max_wait)

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        args = self._recheck_args(permit, max_wait)
        if args is None:
            return permit
        return self._rechecked(permit, await self.store.decide_async(self.key, args), max_wait)

    def _fallback_acquire(self, not_before: float, max_wait: float | None) -> Permit | None:
        if self.store.on_error == "fail":
            return None
        permit = self.local.acquire(not_before, max_wait)
        if permit is not None:
            self._remember(permit)
        return permit

    def _remember(self, permit: Permit) -> None:
        """Note that ``local`` gave ``permit`` (if it waits: only then can it be released)."""
        if permit.wait > 0:
            with self._given_lock:
                if len(self._given) >= _GIVEN:  # the oldest: long due, most likely
                    del self._given[next(iter(self._given))]
                self._given[permit] = None

    def _forget(self, permit: Permit) -> bool:
        """Forget ``permit`` (used, released or replaced); whether ``local`` gave it."""
        if not self._given:
            return False  # the usual case: no lock
        with self._given_lock:
            return self._given.pop(permit, False) is None

    def _release_args(self, permit: Permit) -> list[Any] | None:
        """The script's arguments to release ``permit``; None if Redis has nothing to do (a
        dormant permit; one of an earlier round; one the local bucket gave, given back to it
        here)."""
        if permit == GO:
            return None  # dormant: nothing was reserved (and no round trip)
        if self._forget(permit):
            self.local.release(permit)
            return None
        if permit.round != self._round:
            return None  # a cut since, as a reply said: the script would do nothing
        return self._argv("release", permit.round, repr(permit.at), repr(permit.wait))

    def _released(self, reply: Sequence[Any] | None) -> None:
        if reply is not None:
            self._round = int(reply[1])

    def release(self, permit: Permit) -> None:
        """Give back the slot of ``permit``, never used (`LocalBucket.release` says what that
        does): in Redis (one round trip), or in the local bucket if it gave the permit while
        Redis was down. Nothing while Redis is down (its state is out of reach: the slot
        stays taken there); never raises (a failure is logged at debug level)."""
        try:
            args = self._release_args(permit)
            if args is not None:
                reply = self.store.decide(self.key, args, count=False, probe=False)
                self._released(reply)
        except Exception as error:  # noqa: BLE001 (a release must never fail the caller's call)
            _unreleased(error)

    async def release_async(self, permit: Permit) -> None:
        """`release` for ``grpc.aio`` callers: never blocks the event loop."""
        try:
            args = self._release_args(permit)
            if args is not None:
                reply = await self.store.decide_async(self.key, args, count=False, probe=False)
                self._released(reply)
        except Exception as error:  # noqa: BLE001 (a release must never fail the caller's call)
            _unreleased(error)

    @property
    def learning(self) -> bool:
        """Adaptive, and active as the last reply said (round 0 is dormant: its successes
        cost no round trip)."""
        return self._round != 0 and self.limit.adaptive

    def _teaches(self, throttled: bool) -> bool:
        """Whether the outcome changes the shared state: a throttle, or a success under an
        active adaptive limit."""
        return self.limit.adaptive and (throttled or self._round != 0)

    def feedback(self, permit: Permit, throttled: bool) -> None:
        self._forget(permit)  # sent: it will not be released
        if self._teaches(throttled):
            args = self._argv("feedback", permit.round, int(throttled))
            reply = self.store.decide(self.key, args)
            if reply is None:
                self._fallback_feedback(permit, throttled)
            else:
                self._round = int(reply[0])

    async def feedback_async(self, permit: Permit, throttled: bool) -> None:
        self._forget(permit)  # sent: it will not be released
        if self._teaches(throttled):
            args = self._argv("feedback", permit.round, int(throttled))
            reply = await self.store.decide_async(self.key, args)
            if reply is None:
                self._fallback_feedback(permit, throttled)
            else:
                self._round = int(reply[0])

    def _fallback_feedback(self, permit: Permit, throttled: bool) -> None:
        if self.store.on_error == "local":
            self.local.feedback(permit, throttled)

    def rate(self) -> float | None:
        """The shared rate now (one read of Redis); while Redis fails, the local one's (or
        None with ``on_error="fail"``); None without a sync client."""
        if not self.store.has_sync_client:
            return None
        reply = self.store.decide(self.key, self._argv("peek"), count=False)
        if reply is None:
            return self.local.rate() if self.store.on_error == "local" else None
        return float(reply[1]) if int(reply[0]) else None

    def __repr__(self) -> str:
        return f"<RedisBucket {self.limit.per_second or 'adaptive'} {self.store!r}>"


def _unreleased(error: Exception) -> None:
    log.debug("the rate limiter could not give a permit's slot back (%s)", type(error).__name__)


# A check at import that the classes meet the protocols they stand for.
_: type[Bucket] = RedisBucket
