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
import logging
import math
import threading
import time
import weakref
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

from ._ratelimit import RateLimit, Store
from ._redis_bucket import RedisBucket

__all__ = ["DEFAULT_PREFIX", "RedisBucket", "RedisStore"]

log = logging.getLogger("clarifai_interceptor")

#: What every key starts with, before the credential identity's digest.
DEFAULT_PREFIX = "clarifai_interceptor:limit:"

_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)


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
        self._scripts: dict[str, Any] = {}  # the sync client's scripts, by text
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
            await found[""].aclose()

    def _async_script(self, text: str) -> Any:
        """The script ``text`` on this event loop's async client (made from ``url`` on first
        use)."""
        loop = asyncio.get_running_loop()
        with self._lock:  # loops in several threads may share the store
            scripts = self._async.get(loop)
            if scripts is None:
                client = self._async_client
                if client is None:
                    if self._url is None:
                        raise RuntimeError(
                            "this RedisStore has no async client: pass url= or async_client="
                        )
                    client = redis.asyncio.Redis.from_url(
                        self._url, **self._options(for_asyncio=True)
                    )
                scripts = self._async[loop] = {"": client}
            script = scripts.get(text)
            if script is None:
                script = scripts[text] = scripts[""].register_script(text)
        return script

    @property
    def has_sync_client(self) -> bool:
        """Whether sync calls can reach Redis (``url`` or ``client`` given)."""
        return self._client is not None

    def run(
        self, text: str, key: str, args: list[Any], *, count: bool = True, probe: bool = True
    ) -> Any:
        """Run the script ``text`` on ``key`` with ``args`` (not part of the API: the buckets'
        call).

        Returns:
            The script's reply; None when Redis is down or fails (then it counts as down for
            ``retry_after`` seconds, and the call as a fallback if ``count``). Without
            ``probe``, None at once while Redis is down: this call never tries it again.
        """
        client = self._client
        if client is None:
            raise RuntimeError("this RedisStore has no sync client: pass url= or client=")
        if not self._usable(probe):
            self._fell_back(count)
            return None
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = client.register_script(text)
        started = time.monotonic()
        try:
            reply = script(keys=[key], args=args)
        except _ERRORS as error:
            self._failed(error)
            self._fell_back(count)
            return None
        except BaseException:
            self._release()
            raise
        self._succeeded(started)
        return reply

    async def run_async(
        self, text: str, key: str, args: list[Any], *, count: bool = True, probe: bool = True
    ) -> Any:
        """`run` on the running event loop's async client (not part of the API)."""
        if not self._usable(probe):
            self._fell_back(count)
            return None
        started = time.monotonic()
        try:
            reply = await self._async_script(text)(keys=[key], args=args)
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


# A check at import that the store meets the protocol it stands for.
_: type[Store] = RedisStore
