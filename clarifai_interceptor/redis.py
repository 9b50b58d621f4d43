"""One rate limit across a fleet: the limiter's state in Redis (the ``[redis]`` extra).

Give a `RedisStore` to `RateLimit` and every process using one PAT (and target) paces to one
shared limit: a fixed rate's reservations, or the adaptive rate itself, so one throttle anywhere
cuts everyone's rate::

    limit = RateLimit(store=RedisStore("redis://limits.internal:6379/0"))
    channel = insecure_channel(target, credentials, rate_limit=limit)

Each decision (a permit, a rate change, a quota) is one small atomic Lua script
(``_redis_bucket``) on one hash per credential identity (a digest: no secret reaches Redis, and
in braces: one slot of a Redis Cluster) under Redis's own clock, with a time to live refreshed on
use. The rules are `LocalBucket`'s (``Rules``, in Python).

Where Redis runs: a URL (``redis://``, ``rediss://``, ``unix://``; ``valkey://`` and
``valkeys://`` read as ``redis://`` and ``rediss://``: Valkey speaks Redis's protocol), with
``cluster=True`` for a Redis Cluster (or Valkey's); `RedisStore.from_sentinel` for a master that
Sentinel names (it follows failovers); or clients of your own: redis-py's ``Redis`` and
``RedisCluster`` (sync and asyncio; a Sentinel's ``master_for`` client is a ``Redis``), and
valkey-py's ``Valkey`` and ``ValkeyCluster`` (the ``[valkey]`` extra).

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
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.sentinel
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
    from redis.retry import Retry
except ImportError:  # pragma: no cover (CI installs the extra)
    raise ImportError(
        "clarifai_interceptor.redis needs redis-py: pip install 'clarifai-interceptor[redis]'"
    ) from None

from ._ratelimit import RateLimit, Store
from ._redis_bucket import RedisBucket

_SYNC: tuple[type, ...] = (redis.Redis, redis.cluster.RedisCluster)
_ASYNC: tuple[type, ...] = (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)
_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,  # not a RedisError: a cluster that cannot be found
    OSError,
    asyncio.TimeoutError,
)
try:  # valkey-py's clients (the ``[valkey]`` extra), a fork of redis-py with errors of its own
    import valkey
    import valkey.asyncio
    import valkey.asyncio.cluster
    import valkey.cluster
    import valkey.exceptions
except ImportError:
    pass
else:
    _SYNC += (valkey.Valkey, valkey.cluster.ValkeyCluster)
    _ASYNC += (valkey.asyncio.Valkey, valkey.asyncio.cluster.ValkeyCluster)
    _ERRORS += (valkey.exceptions.ValkeyError, valkey.exceptions.ValkeyClusterException)

__all__ = ["DEFAULT_PREFIX", "RedisBucket", "RedisStore"]

log = logging.getLogger("clarifai_interceptor")

#: What every key starts with, before the credential identity's digest.
DEFAULT_PREFIX = "clarifai_interceptor:limit:"

_BAD_URL = "url must be a redis://, rediss://, unix://, valkey:// or valkeys:// URL"
#: Valkey's URL schemes, as redis-py reads them (a Valkey server speaks Redis's protocol).
_SCHEMES = {"valkey://": "redis://", "valkeys://": "rediss://"}


def _number(name: str, value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class RedisStore:
    """A `Store` whose buckets keep their state in Redis, shared by every process using it.

    Args:
        url: The Redis server, e.g. ``"redis://host:6379/0"`` (``rediss://`` for TLS,
            ``unix://`` for a socket, ``valkey://`` and ``valkeys://`` alike). The store
            builds its own clients from it, with ``timeout`` and without redis-py's own
            retries: a sync one, and one per event loop for ``grpc.aio`` calls, made on the
            loop's first call and closed when the loop shuts down (`asyncio.run` does that on
            return; `aclose` closes it sooner).
        client: A ``redis.Redis`` or ``RedisCluster`` (or valkey-py's ``Valkey`` or
            ``ValkeyCluster``) to use instead of ``url`` for sync calls (its own timeouts and
            retries apply: keep them short). Never closed by the store.
        async_client: The same from ``redis.asyncio`` (or ``valkey.asyncio``), for
            ``grpc.aio`` calls on one event loop. Never closed by the store.
        cluster: ``url`` is a node of a Redis Cluster: the clients are ``RedisCluster``
            (made on first use: they ask the node for the slots, which fails while it is down).
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
            ``cluster`` without ``url`` or with a ``unix://`` one, or a number, ``prefix`` or
            ``on_error`` out of range (the URL is never echoed).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        cluster: bool = False,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = 600.0,
        on_error: Literal["local", "fail"] = "local",
        timeout: float = 0.25,
        retry_after: float = 1.0,
    ) -> None:
        if (url is None) == (client is None and async_client is None):
            raise ValueError("RedisStore needs url, or client and/or async_client (not both)")
        if client is not None and not isinstance(client, _SYNC):
            raise ValueError(
                f"client must be a redis.Redis or RedisCluster, not {type(client).__name__}"
            )
        if async_client is not None and not isinstance(async_client, _ASYNC):
            raise ValueError(
                "async_client must be a redis.asyncio.Redis or RedisCluster, "
                f"not {type(async_client).__name__}"
            )
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, not {type(prefix).__name__}")
        if on_error not in ("local", "fail"):
            raise ValueError(f"on_error must be 'local' or 'fail', got {on_error!r}")
        if not isinstance(cluster, bool) or (cluster and url is None):
            raise ValueError("cluster=True goes with url (a client says what it is itself)")
        self.prefix = prefix
        self.ttl = _number("ttl", ttl)
        if self.ttl < 0.001:
            raise ValueError(f"ttl must be at least 0.001 s, got {ttl!r}")
        self.on_error = on_error
        self.timeout = _number("timeout", timeout)
        self.retry_after = _number("retry_after", retry_after)
        self.fallbacks = 0
        self._url = url
        #: Make the sync client on first use (a cluster's finds its nodes then), and an async
        #: client per event loop: set when the store makes its clients (and closes them). Each
        #: returns the client and what else to close with it (a Sentinel's own clients).
        self._sync_factory: Callable[[], tuple[Any, list[Any]]] | None = None
        self._async_factory: Callable[[], tuple[Any, list[Any]]] | None = None
        self._others: list[Any] = []  # closed with the sync client
        if url is not None:
            self._from_url(url, cluster)
            if not cluster:
                client, self._others = self._sync_factory()  # type: ignore[misc]
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

    def _from_url(self, url: str, cluster: bool) -> None:
        """Check ``url`` (never echoed: it may hold a password) and set the factories."""
        if not isinstance(url, str):
            raise ValueError(
                "url must be a redis://, rediss://, unix://, valkey:// or valkeys:// URL"
            )
        for scheme, same in _SCHEMES.items():
            if url.startswith(scheme):
                url = same + url[len(scheme) :]
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "url must be a redis://, rediss://, unix://, valkey:// or valkeys:// URL"
            )
        if cluster and url.startswith("unix://"):
            raise ValueError("a Redis Cluster is reached over TCP: not a unix:// URL")
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError:
            raise ValueError("url is not a valid Redis URL") from None
        sync, for_asyncio = self._options(), self._options(for_asyncio=True)
        if cluster:  # the asyncio cluster takes no retry_on_timeout (the retry says it all)
            for_asyncio.pop("retry_on_timeout")
            self._sync_factory = lambda: (redis.cluster.RedisCluster.from_url(url, **sync), [])
            self._async_factory = lambda: (
                redis.asyncio.cluster.RedisCluster.from_url(url, **for_asyncio),
                [],
            )
        else:
            self._sync_factory = lambda: (redis.Redis.from_url(url, **sync), [])
            self._async_factory = lambda: (redis.asyncio.Redis.from_url(url, **for_asyncio), [])

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        connection_kwargs: Mapping[str, Any] | None = None,
        sentinel_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RedisStore:
        """A store on the master Redis Sentinel names ``service_name``, following failovers.

        Args:
            sentinels: The Sentinels' ``(host, port)``.
            service_name: The master's name, as the Sentinels know it.
            connection_kwargs: Options of the connections to the master (``password``,
                ``username``, ``db``, ``ssl``...), besides the store's timeouts.
            sentinel_kwargs: Options of the connections to the Sentinels (their own
                ``password``...).
            kwargs: `RedisStore`'s own (``prefix``, ``ttl``, ``on_error``, ``timeout``,
                ``retry_after``).
        """
        timeout = _number("timeout", kwargs.get("timeout", 0.25))
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        to_sentinels = {**options, **(sentinel_kwargs or {})}
        hosts = list(sentinels)
        extra = dict(connection_kwargs or {})

        def sync() -> tuple[Any, list[Any]]:
            found = redis.sentinel.Sentinel(hosts, sentinel_kwargs=to_sentinels, **options)
            client = found.master_for(service_name, **store._options(), **extra)
            return client, list(found.sentinels)

        def for_asyncio() -> tuple[Any, list[Any]]:
            found = redis.asyncio.sentinel.Sentinel(hosts, sentinel_kwargs=to_sentinels, **options)
            client = found.master_for(service_name, **store._options(for_asyncio=True), **extra)
            return client, list(found.sentinels)

        store = cls(client=redis.Redis(), **kwargs)  # a stand-in, never connected
        store._client.close()
        store._client = None
        store._sync_factory, store._async_factory = sync, for_asyncio
        return store

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
        """Close the sync client if the store made it (from ``url``, or `from_sentinel`)."""
        if self._sync_factory is not None and self._client is not None:
            for client in (self._client, *self._others):
                client.close()
                pool = getattr(client, "connection_pool", None)
                if pool is not None:  # a Sentinel's client does not own its pool
                    pool.disconnect()

    async def aclose(self) -> None:
        """Close the async client the store made for the running event loop, if any (it
        closes by itself when the loop shuts down: `asyncio.run` does that)."""
        with self._lock:
            found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None and _CLOSER in found:
            await found[_CLOSER].aclose()

    def _async_script(self, text: str) -> Any:
        """The script ``text`` on this event loop's async client.

        A store that makes its clients (``url``, `from_sentinel`) makes one per event loop on
        first use, and closes it when the loop shuts down its async generators (as
        `asyncio.run` does on return; `aclose` closes it sooner): a generator whose
        ``finally`` closes the client is registered with the loop (its first step runs here,
        to its ``yield``). A loop that is closed without that leaves it to `aclose`."""
        loop = asyncio.get_running_loop()
        with self._lock:  # loops in several threads may share the store
            scripts = self._async.get(loop)
            if scripts is None:
                client = self._async_client
                if client is not None:
                    scripts = {"": client}
                elif self._async_factory is not None:
                    client, others = self._async_factory()
                    closer = _closes(client, *others)
                    with contextlib.suppress(StopIteration):  # at its yield: registered
                        closer.__anext__().send(None)
                    scripts = {"": client, _CLOSER: closer}
                else:
                    raise RuntimeError(
                        "this RedisStore has no async client: pass url= or async_client="
                    )
                self._async[loop] = scripts
            script = scripts.get(text)
            if script is None:
                script = scripts[text] = scripts[""].register_script(text)
        return script

    def _sync_script(self, text: str) -> Any:
        """The script ``text`` on the sync client (a cluster's is made on first use: it asks
        the nodes for the slots, which fails while they are down)."""
        script = self._scripts.get(text)
        if script is None:
            with self._lock:
                if self._client is None and self._sync_factory is not None:
                    self._client, self._others = self._sync_factory()
                client = self._client
            script = self._scripts[text] = client.register_script(text)
        return script

    @property
    def has_sync_client(self) -> bool:
        """Whether sync calls can reach Redis (``url``, ``client`` or `from_sentinel`)."""
        return self._client is not None or self._sync_factory is not None

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
        if not self.has_sync_client:
            raise RuntimeError("this RedisStore has no sync client: pass url= or client=")
        if not self._usable(probe):
            self._fell_back(count)
            return None
        started = time.monotonic()
        try:
            reply = self._sync_script(text)(keys=[key], args=args)
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
        # getattr: a store whose __init__ raised part-way is still shown (in a traceback).
        state = "down" if getattr(self, "_down", False) else "up"
        prefix, on_error = getattr(self, "prefix", None), getattr(self, "on_error", None)
        return f"<RedisStore prefix={prefix!r} on_error={on_error!r} {state}>"


_CLOSER = "\0closer"  # a key of a loop's scripts: the generator that closes its client


async def _closes(*clients: Any) -> AsyncGenerator[None, None]:
    """Closes ``clients`` when closed: by the event loop's shutdown, or `RedisStore.aclose`."""
    try:
        yield
    finally:
        for client in clients:
            close = getattr(client, "aclose", None) or client.close
            await close()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:  # a Sentinel's client does not own its pool
                await pool.disconnect()


# A check at import that the store meets the protocol it stands for.
_: type[Store] = RedisStore
