"""The Redis store: one limit across processes, on a real ``redis-server`` (never a mock).

The server is started once per session on a free loopback port (tests that kill a server start
their own). The limiter's maths are checked against `LocalBucket`'s with one injected clock;
everything else runs on Redis's own clock, with bounds that only catch hangs.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
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
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import PAT, PAT_CREDS, T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer, frozen_permits, greedy

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    NO_RETRY,
    Credentials,
    RateLimit,
    RateLimitedError,
    insecure_channel,
    use_credentials,
)
from clarifai_interceptor._limiter import GO, LocalBucket, Permit, bucket_for, identity
from clarifai_interceptor.instrumentation._figures import limiter_rates
from clarifai_interceptor.redis import DEFAULT_PREFIX, RedisBucket, RedisStore
from clarifai_interceptor.testing import FakeClarifai, Reply

#: Seconds within which any call must return, even with Redis dead or hung: catches hangs only.
HANG = 5.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
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
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.kill()


#: Redis's timeout where a test is not about timeouts: a busy machine answers late, and the
#: default 0.25 s would turn that into a fallback the test counts.
GENEROUS = 2.0


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
    """A fake clock, for LocalBucket and for the script's test-only ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _redis_bucket(store: RedisStore, limit: RateLimit, clock: Clock, key: str) -> RedisBucket:
    bucket = store.bucket(key, limit)
    bucket._clock = clock
    return bucket


# --- The maths: the script and LocalBucket agree ---------------------------------------------

# An event: (seconds to advance, then "acquire" with not_before and max_wait, "feedback" of the
# n-th permit given so far, throttled or not, "recheck" of the n-th permit with max_wait, or
# "release" of the n-th permit, never used (n < 0 counts from the latest: the end of the queue).
_EVENT = st.one_of(
    st.tuples(
        st.floats(0, 3),
        st.just("acquire"),
        st.floats(0, 2),
        st.one_of(st.none(), st.floats(0, 5)),
    ),
    st.tuples(st.floats(0, 3), st.just("feedback"), st.integers(0, 1000), st.booleans()),
    st.tuples(
        st.floats(0, 3),
        st.just("recheck"),
        st.integers(0, 1000),
        st.one_of(st.none(), st.floats(0, 5)),
    ),
    st.tuples(
        st.sampled_from([0.0, 0.01, 0.5]), st.just("release"), st.integers(-40, 1000), st.none()
    ),
)
_LIMIT = st.builds(
    RateLimit,
    per_second=st.one_of(st.none(), st.floats(0.5, 500)),
    burst=st.floats(1, 20),
    min_rate=st.floats(0.1, 5),
    initial_rate=st.floats(0.1, 100),
    max_wait=st.none(),
)


def _replay(
    limit: RateLimit, events: list[tuple[Any, ...]], local: Any, remote: Any, clock: Clock
) -> None:
    """Apply ``events`` to both buckets; every permit and rate must be equal.

    The first acquire comes at once: a LocalBucket's send-rate window opens when it is made,
    the script's when the key is (in use, `bucket_for` makes the bucket for its first call).
    """
    permits: list[tuple[Permit, Permit]] = []
    events = [(0.0, "acquire", 0.0, None), *events]
    for step, (advance, kind, first, second) in enumerate(events):
        clock.now += advance
        if kind == "acquire":
            ours, theirs = local.acquire(first, second), remote.acquire(first, second)
            assert ours == theirs, (step, ours, theirs)
            if ours is not None:
                permits.append((ours, theirs))
        elif permits and kind == "recheck":
            ours, theirs = permits[first % len(permits)]
            again, again_theirs = local.recheck(ours, second), remote.recheck(theirs, second)
            assert again == again_theirs, (step, again, again_theirs)
            assert (again is ours) == (again_theirs is theirs), step
            if again is not ours:
                permits.append((again, again_theirs))
        elif permits and kind == "release":
            ours, theirs = permits[first % len(permits)]
            local.release(ours)
            remote.release(theirs)
        elif permits:
            ours, theirs = permits[first % len(permits)]
            local.feedback(ours, second)
            remote.feedback(theirs, second)
        assert local.rate() == remote.rate(), (step, limit)
        assert _state(local) == _remote_state(remote), (step, limit)
    assert remote.store.fallbacks == 0


_FIELDS = (
    "tat",
    "since",
    "last",
    "count",
    "measured",
    "round",
    "w_max",
    "cut_at",
    "paced",
    "ok",
    "ok_since",
    "delivered",
    "start",
    "ok_throttles",
    "redo",
)


def _state(bucket: LocalBucket) -> dict[str, Any]:
    state: dict[str, Any] = {name: float(getattr(bucket, "_" + name)) for name in _FIELDS}
    state["later"] = list(bucket._later)
    state["free"] = list(bucket._free)
    if not bucket.limit.adaptive:
        state["w_max"] = 0.0  # a fixed rate's: the script stores none
    return state


def _remote_state(bucket: RedisBucket) -> dict[str, Any]:
    client = bucket.store._script.registered_client  # type: ignore[union-attr]
    stored = dict(zip(_FIELDS, client.hmget(bucket.key, _FIELDS), strict=True))
    state: dict[str, Any] = {name: float(value or 0) for name, value in stored.items()}
    if stored["delivered"] is None:
        state["delivered"] = -1.0  # the script's default, as LocalBucket's: nothing measured
    for name in ("later", "free"):
        slots = client.hget(bucket.key, name) or b""
        state[name] = [float(slot) for slot in slots.split(b",") if slot]
    return state


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=_LIMIT, events=st.lists(_EVENT, max_size=60))
def test_script_and_local_bucket_agree(
    make_store: Callable[..., RedisStore], limit: RateLimit, events: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    local = LocalBucket(limit, clock)
    remote = _redis_bucket(make_store(), limit, clock, os.urandom(16).hex())
    _replay(limit, events, local, remote, clock)


# Queues, and permits of them never used: small steps, most of them none, and releases near
# either end of the permits given (the queue's end, or slots long due).
_STEP = st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.001, 0.01, 0.2])
_ACQUIRE = st.tuples(_STEP, st.just("acquire"), st.sampled_from([0.0, 0.0, 0.0, 2.0]), st.none())
_QUEUE_EVENT = st.one_of(
    _ACQUIRE,
    _ACQUIRE,
    st.tuples(_STEP, st.just("release"), st.integers(-12, 12), st.none()),
    st.tuples(_STEP, st.just("feedback"), st.integers(-12, 12), st.booleans()),
    st.tuples(_STEP, st.just("recheck"), st.integers(-12, 12), st.none()),
)
_QUEUE_LIMIT = st.builds(  # slow enough, with a burst small enough, for queues to form
    RateLimit,
    per_second=st.one_of(st.none(), st.floats(0.5, 50)),
    burst=st.one_of(st.just(1.0), st.floats(1, 4)),
    min_rate=st.floats(0.1, 5),
    initial_rate=st.floats(0.1, 100),
    max_wait=st.none(),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=_QUEUE_LIMIT, events=st.lists(_QUEUE_EVENT, min_size=30, max_size=80))
def test_script_and_local_bucket_agree_on_queues_given_back(
    make_store: Callable[..., RedisStore], limit: RateLimit, events: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    local = LocalBucket(limit, clock)
    remote = _redis_bucket(make_store(), limit, clock, os.urandom(16).hex())
    _replay(limit, events, local, remote, clock)


def test_script_and_local_bucket_agree_through_a_scripted_adaptive_run(
    make_store: Callable[..., RedisStore],
) -> None:
    """Dormant sends, the first throttle, pacing, a stale throttle, growth, a stall, a cut."""
    limit = RateLimit(burst=2, min_rate=0.5)
    clock = Clock()
    local, remote = LocalBucket(limit, clock), _redis_bucket(make_store(), limit, clock, "k" * 32)
    events: list[tuple[Any, ...]] = [(0.01, "acquire", 0.0, None) for _ in range(40)]
    events += [(0.0, "feedback", 39, True), (0.0, "feedback", 38, True)]  # one cut, not two
    events += [(0.02, "acquire", 0.0, None) for _ in range(50)]
    events += [(0.0, "acquire", 0.0, 0.0), (0.0, "acquire", 0.3, 1.0)]  # refused; not_before
    events += [(0.01, "feedback", 0, True), (0.3, "feedback", 45, False)]  # stale; success
    events += [(0.26, "acquire", 0.0, None) for _ in range(3)]  # just past a stall
    events += [(t, "acquire", 0.0, None) for t in (0.055, 0.055, 0.3)]  # a 0.11 s window
    events += [(3.0, "acquire", 0.0, None), (0.1, "feedback", 93, True)]
    events += [(0.05, "acquire", 0.0, None) for _ in range(30)]
    # Successes measure the delivered rate; retries book slots past the queue, which the
    # queue then skips; a throttle then cuts to the delivered rate.
    events += [(0.02, "feedback", 100 + n, False) for n in range(30)]
    events += [(0.0, "acquire", 0.9, None), (0.0, "acquire", 0.9, None)]
    events += [(0.0, "acquire", 1.5, 0.1), (0.01, "acquire", 0.0, 2.0)]
    events += [(0.02, "acquire", 0.0, None) for _ in range(40)]
    events += [(0.3, "feedback", 150, True), (0.01, "feedback", 151, True)]
    events += [(0.02, "feedback", 140 + n, False) for n in range(20)]
    events += [(0.3, "acquire", 0.0, None), (0.0, "feedback", 170, True)]
    # Retries whose backoffs end close together book slots apart; a queue, then a cut: the
    # rate falls with slots reserved (kept as they are), then grows (re-based).
    events += [(0.001, "acquire", 0.9 + n * 0.003, None) for n in range(20)]
    events += [(0.0, "acquire", 0.0, None) for _ in range(30)]
    events += [(0.3, "feedback", 210, True), (0.0, "acquire", 0.0, None)]
    events += [(0.5, "acquire", 0.0, None) for _ in range(5)]
    _replay(limit, events, local, remote, clock)
    assert remote.rate() is not None
    assert local._delivered > 0
    with remote.store._script.registered_client as client:  # type: ignore[union-attr]
        assert int(client.hget(remote.key, "round")) >= 3


def test_script_and_local_bucket_agree_on_the_cuts_to_the_delivered_rate(
    make_store: Callable[..., RedisStore],
) -> None:
    """A cold start, a first cut floored by BETA, a window of exactly the fewest successes
    that measure, then one success short of it, and a cut floored by HALF."""
    limit = RateLimit()
    clock = Clock()
    local, remote = LocalBucket(limit, clock), _redis_bucket(make_store(), limit, clock, "d" * 32)
    events: list[tuple[Any, ...]] = [(0.001, "acquire", 0.0, None) for _ in range(40)]
    events += [(0.0, "feedback", 40, True)]  # active: 41 sends in 40 ms, over 0.25 s
    events += [(0.05, "acquire", 0.0, None) for _ in range(20)]  # permits 41..60, round 1
    events += [(0.0, "feedback", 41 + n, False) for n in range(20)]  # 20 successes in 1 s
    events += [(0.0, "feedback", 60, True)]  # cut: 20/s delivered, floored at BETA
    events += [(0.05, "acquire", 0.0, None) for _ in range(20)]  # permits 61..80, round 2
    events += [(0.0, "feedback", 61 + n, False) for n in range(16)]  # exactly 16
    events += [(0.0, "feedback", 80, True)]  # measured: cut, floored at HALF
    events += [(0.05, "acquire", 0.0, None) for _ in range(20)]  # permits 81..100, round 3
    events += [(0.0, "feedback", 81 + n, False) for n in range(15)]  # one short
    events += [(0.0, "feedback", 100, True)]  # not measured: a dip
    _replay(limit, events, local, remote, clock)
    assert local._round == 4


def test_script_and_local_bucket_agree_on_laying_a_queue_out_anew_after_a_cut(
    make_store: Callable[..., RedisStore],
) -> None:
    """A queue, then a cut: waiters recheck in the order their slots come due and are laid
    out on the new rate's slots; a permit given after the cut queues behind; one due before
    the cut, one already re-laid and one refused go as they are; once the old queue is used
    up, a recheck joins the new one."""
    limit = RateLimit(burst=1)
    clock = Clock()
    local, remote = LocalBucket(limit, clock), _redis_bucket(make_store(), limit, clock, "r" * 32)
    events: list[tuple[Any, ...]] = [(0.001, "acquire", 0.0, None) for _ in range(40)]
    events += [(0.0, "feedback", 40, True)]  # active
    events += [(0.3, "acquire", 0.0, None)] + [(0.0, "acquire", 0.0, None) for _ in range(29)]
    events += [(0.0, "feedback", n, False) for n in range(20)]  # dormant permits' successes
    events += [(0.0, "feedback", 41, True)]  # a cut, with permits 42..70 waiting
    events += [(0.0, "recheck", 1, None)]  # due before the cut: goes
    events += [(0.004, "recheck", 42 + n, None) for n in range(5)]  # 71..75, laid anew
    events += [(0.0, "recheck", 71, None), (0.0, "recheck", 47, 0.0)]  # re-laid; refused
    events += [(0.0, "acquire", 0.0, None)]  # 76: a new caller queues behind the old queue
    events += [(0.004, "recheck", 48 + n, 5.0) for n in range(23)]  # the rest, then past it
    events += [(0.5, "acquire", 0.9, None), (0.0, "acquire", 0.0, None)]  # a retry's slot
    events += [(0.3, "feedback", 80, True)]  # another cut, with a booked slot counted ahead
    events += [(0.01, "recheck", 100, None), (0.01, "recheck", 101, None)]
    _replay(limit, events, local, remote, clock)
    assert local._round == 3
    assert local._redo > 0


def test_script_and_local_bucket_agree_on_giving_slots_back(
    make_store: Callable[..., RedisStore],
) -> None:
    """Permits never used give their slots back: one inside the queue (free, and again: no
    more), the last ones (the queue ends sooner, and on the free slots), one due, a retry's
    booked slot; then a cut lays the waiters left out without the free slots, a permit of
    the round before gives nothing back, and those given after it do."""
    limit = RateLimit(burst=1)
    clock = Clock()
    local, remote = LocalBucket(limit, clock), _redis_bucket(make_store(), limit, clock, "g" * 32)
    events: list[tuple[Any, ...]] = [(0.001, "acquire", 0.0, None) for _ in range(40)]
    events += [(0.0, "feedback", 40, True)]  # active
    events += [(0.3, "acquire", 0.0, None)] + [(0.0, "acquire", 0.0, None) for _ in range(29)]
    events += [(0.0, "release", 50, None), (0.0, "release", 50, None)]  # free; again: no more
    events += [(0.0, "release", 70, None), (0.0, "release", 69, None)]  # the end of the queue
    events += [(0.0, "release", 41, None)]  # due at once: sent
    events += [(0.0, "acquire", 0.9, None), (0.0, "release", 71, None)]  # booked, unbooked
    events += [(0.0, "acquire", 0.9, None)]  # 72: the same slot again
    events += [(0.0, "release", 60, None), (0.0, "release", 61, None)]  # free
    events += [(0.0, "release", n, None) for n in (64, 68, 62, 67, 63, 66, 65)]  # down to 60
    events += [(0.0, "acquire", 0.0, None)]  # 73: takes the slot of 60
    events += [(0.0, "release", 55, None), (0.0, "feedback", 73, True)]  # free; a cut
    events += [(0.0, "release", 56, None)]  # of the round before: nothing
    events += [(0.0, "acquire", 0.0, None), (0.0, "release", 74, None)]  # after it: back
    events += [(0.01, "recheck", 43, None), (0.0, "recheck", 44, None)]  # 75, 76: laid anew
    events += [(0.0, "acquire", 0.0, None), (0.0, "acquire", 0.0, None)]  # 77, 78
    events += [(0.0, "release", 77, None), (0.0, "release", 76, None)]  # free
    _replay(limit, events, local, remote, clock)
    assert local._round == 2
    assert len(local._free) == 2
    with remote.store._script.registered_client as client:  # type: ignore[union-attr]
        assert client.hget(remote.key, "free").count(b",") == 1


def test_script_and_local_bucket_agree_on_giving_slots_back_with_a_burst(
    make_store: Callable[..., RedisStore],
) -> None:
    """A fixed rate with a burst: the queue's last permit is ``burst`` intervals before its
    end; a free slot is given back once the end reaches it; a retry's booked slot."""
    limit = RateLimit(per_second=20.0, burst=3.0)
    clock = Clock()
    local, remote = LocalBucket(limit, clock), _redis_bucket(make_store(), limit, clock, "h" * 32)
    events: list[tuple[Any, ...]] = [(0.0, "acquire", 0.0, None) for _ in range(12)]
    events += [(0.0, "release", n, None) for n in (12, 5, 11, 10, 8, 9, 7, 6)]  # down to 5
    events += [(0.0, "acquire", 0.0, None), (0.0, "release", 3, None)]  # 13; 3: free
    events += [(0.0, "release", 13, None), (0.0, "release", 4, None)]  # the end, down to 3
    events += [(0.3, "acquire", 0.0, None), (0.0, "acquire", 0.5, None)]  # 14; 15: booked
    events += [(0.0, "release", -1, None), (0.0, "release", -2, None)]  # 15; 14 (due: sent)
    events += [(0.02, "acquire", 0.0, None) for _ in range(5)]
    _replay(limit, events, local, remote, clock)
    assert local._free == []
    assert local._later == []


# --- On Redis's own clock --------------------------------------------------------------------


def test_a_fixed_rate_paces_from_the_first_call(make_store: Callable[..., RedisStore]) -> None:
    bucket = make_store().bucket("a" * 32, RateLimit(per_second=10, burst=3))
    waits = [bucket.acquire(0.0, None) for _ in range(6)]
    assert all(permit is not None for permit in waits)
    assert [p.wait for p in waits if p] == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3], abs=0.05)
    assert bucket.acquire(0.0, 0.0) is None  # fail fast: a wait of ~0.4 s is refused...
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    assert permit.wait == pytest.approx(0.4, abs=0.05)  # ...and reserved nothing
    assert bucket.rate() == 10


def test_two_processes_share_the_adaptive_rate(make_store: Callable[..., RedisStore]) -> None:
    """Two stores (two clients, as two processes): one throttle anywhere cuts both."""
    limit = RateLimit()
    one = make_store().bucket("b" * 32, limit)
    two = make_store().bucket("b" * 32, limit)
    other = make_store().bucket("c" * 32, limit)  # another PAT
    for _ in range(30):
        assert one.acquire(0.0, None) == Permit(0.0, 0)  # dormant: go now
    assert one.rate() is None
    assert two.rate() is None
    before = two.acquire(0.0, None)
    assert before is not None
    two.feedback(before, throttled=True)
    shared = one.rate()
    assert shared is not None
    assert two.rate() == pytest.approx(shared, rel=0.05)
    assert other.rate() is None  # not slowed
    one.feedback(before, throttled=True)  # the same round: that cut answered it already
    after = one.acquire(0.0, None)
    assert after is not None
    assert after.round == 1
    permits = [one.acquire(0.0, None) for _ in range(5)] + [two.acquire(0.0, None)]
    assert [p.wait for p in permits if p] == sorted(p.wait for p in permits if p)  # one queue
    assert permits[-1] is not None
    assert permits[-1].wait > 0


def test_a_cut_in_one_process_lays_out_the_waiters_of_another_anew(
    make_store: Callable[..., RedisStore],
) -> None:
    """A permit given before a cut anywhere in the fleet gets a slot at the new rate when it
    rechecks, once its process has seen the cut (in any reply: there is no round trip
    before that)."""
    clock = Clock()
    key = os.urandom(16).hex()
    limit = RateLimit(burst=1.0, initial_rate=50.0)
    one = _redis_bucket(make_store(), limit, clock, key)
    two = _redis_bucket(make_store(), limit, clock, key)
    assert one.acquire(0.0, None) == GO
    one.feedback(GO, throttled=True)  # active at 50/s, a slow start
    for _ in range(16):
        one.feedback(Permit(0.0, 1), throttled=False)
    clock.now += 1.0
    waiting = [two.acquire(0.0, None) for _ in range(10)]  # 10 ms apart (100/s by now)
    assert all(p is not None and p.round == 1 for p in waiting)
    one.feedback(Permit(0.0, 1), throttled=True)  # the server delivered 16/s: a cut
    rate = one.rate()
    assert rate is not None
    assert rate < 20
    last = waiting[-1]
    assert last is not None
    clock.now = last.at  # the end of its wait
    assert two.recheck(last, None) is last  # two has not seen the cut yet: no round trip
    two.feedback(Permit(0.0, 1), throttled=False)  # any reply tells it (a success, here)
    again = two.recheck(last, None)
    assert again is not last
    assert again.round == 2
    assert again.wait == pytest.approx(0.0, abs=1e-6)  # the queue was laid anew: it is first
    after = two.recheck(waiting[-2] or GO, None)  # the next waiter, at the same moment
    assert after.wait == pytest.approx(1.0 / rate, rel=0.05)  # one slot of the new rate on
    assert two.recheck(after, None) is after  # a permit of the latest round: no trip


def test_permits_from_concurrent_processes_take_distinct_slots(server: RedisServer) -> None:
    """4 processes reserving at once on a frozen clock: exactly the slots one process gets."""
    limit = RateLimit(per_second=50, burst=5)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        runs = pool.starmap(frozen_permits, [(server.url, "d" * 32, 50, 5, 200)] * 4)
    waits = sorted(wait for run in runs for wait in run)
    clock = Clock()
    local = LocalBucket(limit, clock)
    expected = [local.acquire(0.0, None).wait for _ in range(800)]  # type: ignore[union-attr]
    assert waits == expected


def test_concurrent_processes_never_exceed_the_rate(server: RedisServer) -> None:
    """4 processes taking every permit they can without waiting: at most rate*window+burst."""
    rate, burst, seconds = 40, 5, 1.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        start = time.monotonic()
        counts = pool.starmap(greedy, [(server.url, "e" * 32, rate, burst, seconds)] * 4)
        window = time.monotonic() - start
    assert 0 < sum(counts) <= rate * window + burst


def test_the_key_has_a_ttl_refreshed_on_use(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    bucket = make_store(ttl=30).bucket("f" * 32, RateLimit())
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    with server.client() as client:
        assert 0 < client.pttl(bucket.key) <= 30_000
        client.pexpire(bucket.key, 1_000)
        bucket.feedback(permit, throttled=True)
        assert client.pttl(bucket.key) > 1_000
        client.pexpire(bucket.key, 1_000)
        bucket.acquire(0.0, None)
        assert client.pttl(bucket.key) > 1_000


def _evalsha_calls(server: RedisServer) -> int:
    with server.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_waiters_that_never_send_give_their_slots_back_to_the_fleet(
    make_store: Callable[..., RedisStore],
) -> None:
    """10 waiters at 2/s in one process end without sending (cancelled, closed): the next
    caller, in another process, does not wait behind their slots (5 s)."""
    limit = RateLimit(per_second=2, burst=1)
    one = make_store().bucket("g" * 32, limit)
    two = make_store().bucket("g" * 32, limit)
    assert one.acquire(0.0, None) is not None  # sent
    waiters = [one.acquire(0.0, None) for _ in range(10)]
    assert waiters[-1] is not None
    assert waiters[-1].wait == pytest.approx(5.0, abs=0.1)
    for permit in waiters:  # first to last: each one's slot is free until the last's goes
        one.release(permit or GO)
    after = two.acquire(0.0, None)
    assert after is not None
    assert after.wait <= 0.5  # behind the one sent only, not 5.5 s
    assert one.store.fallbacks == two.store.fallbacks == 0


def test_a_release_costs_a_round_trip_only_with_a_slot_to_give_back(
    server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    bucket = make_store().bucket("i" * 32, RateLimit())
    permit = bucket.acquire(0.0, None)
    assert permit == GO
    calls = _evalsha_calls(server)
    bucket.release(permit)  # dormant: nothing reserved, no round trip
    assert _evalsha_calls(server) == calls
    bucket.feedback(permit, throttled=True)  # active
    waiting = [bucket.acquire(0.0, None) for _ in range(3)]
    last = waiting[-1]
    assert last is not None
    assert last.wait > 0
    calls = _evalsha_calls(server)
    bucket.release(last)
    assert _evalsha_calls(server) == calls + 1
    again = bucket.acquire(0.0, None)  # its slot (a little sooner: the rate grows)
    assert again is not None
    assert again.at <= last.at + 1e-6
    time.sleep(0.3)
    bucket.feedback(Permit(0.0, 1), throttled=True)  # a cut: round 2, as the reply says
    calls = _evalsha_calls(server)
    bucket.release(waiting[1] or GO)  # of round 1: the cut laid it out anew; no round trip
    assert _evalsha_calls(server) == calls


def test_redis_holds_no_secret(server: RedisServer, make_store: Callable[..., RedisStore]) -> None:
    limit = RateLimit(store=make_store())
    bucket = bucket_for(limit, PAT, "api.example:443")
    permit = bucket.acquire(0.0, None)
    assert permit is not None
    bucket.feedback(permit, throttled=True)
    with server.client() as client:
        keys = list(client.scan_iter("*"))
        assert keys == [(DEFAULT_PREFIX + identity(PAT, "api.example:443", limit)).encode()]
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
    with pytest.raises(ValueError, match="url") as raised:
        RedisStore(f"http://:{password}@127.0.0.1/0")
    assert password not in str(raised.value)
    store.close()


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

    own_server.start()  # the same port: the store reconnects by itself
    deadline = time.monotonic() + HANG
    while store.decide(bucket.key, bucket._argv("peek"), count=False) is None:
        assert time.monotonic() < deadline, "the store never reconnected"
        time.sleep(0.05)
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
    assert own_server.process is not None
    pid = own_server.process.pid
    results = _run_threads(bucket, lambda: os.kill(pid, signal.SIGSTOP))
    assert all(permit is not None for permit, _ in results)
    # A call that waited out the 0.2 s socket timeout (a loaded machine adds its own delays,
    # but not of that size to every call).
    slow = [seconds for _, seconds in results if seconds >= 0.19]
    assert 1 <= len(slow) <= 6 + 3, "timeouts piled up per call"  # in flight + a few probes
    assert max(slow) < HANG
    assert len(_warnings(caplog)) == 1
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + HANG
    while store.decide(bucket.key, bucket._argv("peek"), count=False) is None:
        assert time.monotonic() < deadline, "the store never reconnected"
        time.sleep(0.05)
    store.close()


def test_a_fallback_bucket_still_paces_and_adapts(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=10, burst=1))
    own_server.kill()
    waits = [bucket.acquire(0.0, None) for _ in range(3)]
    assert [p.wait for p in waits if p] == pytest.approx([0, 0.1, 0.2], abs=0.05)
    adaptive = store.bucket("b" * 32, RateLimit())
    permit = adaptive.acquire(0.0, None)
    assert permit is not None
    adaptive.feedback(permit, throttled=True)
    assert adaptive.rate() is not None  # the local bucket took the throttle
    assert store.fallbacks == 5
    stale = Permit(1.0, 7, 1e12)  # a permit of a round Redis gave, rechecked while it is down
    assert adaptive.recheck(stale, None).round == 1  # the local bucket lays it out: no hang
    store.close()


def test_a_release_goes_where_its_permit_came_from(own_server: RedisServer) -> None:
    """While Redis is down the local bucket gives the permits, and takes their slots back;
    a permit Redis gave cannot give its slot back then (nothing happens, nothing raised)."""
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=2))
    from_redis = [bucket.acquire(0.0, None) for _ in range(3)]
    own_server.kill()
    local = [bucket.acquire(0.0, None) for _ in range(4)]  # 0, 0.5, 1 and 1.5 s
    assert store.fallbacks == 4
    for permit in local[1:]:
        bucket.release(permit or GO)
    bucket.release(from_redis[-1] or GO)  # out of reach: Redis is not tried again for it
    assert store.fallbacks == 4  # a release is no fallback
    after = bucket.acquire(0.0, None)
    assert after is not None
    assert after.wait <= 0.5  # behind the one sent only, not 2 s
    store.close()


# --- asyncio ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def async_store(server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(server.url, timeout=GENEROUS)
    yield store
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_calls_share_state_with_sync_ones(async_store: RedisStore) -> None:
    limit = RateLimit()
    bucket = async_store.bucket("a" * 32, limit)
    permits = await asyncio.gather(*(bucket.acquire_async(0.0, None) for _ in range(20)))
    assert permits == [Permit(0.0, 0)] * 20
    await bucket.feedback_async(Permit(0.0, 0), throttled=True)
    assert bucket.rate() is not None  # the sync client sees the async throttle
    paced = await asyncio.gather(*(bucket.acquire_async(0.0, None) for _ in range(5)))
    assert all(p is not None and p.round == 1 for p in paced)
    assert max(p.wait for p in paced if p) > 0
    assert async_store.fallbacks == 0


@pytest.mark.asyncio
async def test_an_async_client_of_your_own(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port, socket_timeout=1)
    store = RedisStore(async_client=client)
    bucket = store.bucket("a" * 32, RateLimit(per_second=5, burst=1))
    first, second = [await bucket.acquire_async(0.0, None) for _ in range(2)]
    assert first is not None
    assert second is not None
    assert second.wait == pytest.approx(0.2, abs=0.05)
    assert bucket.rate() is None  # no sync client: no reading from a gauge thread
    with pytest.raises(RuntimeError, match="sync client"):
        bucket.acquire(0.0, None)
    await store.aclose()
    await client.aclose()


@pytest.mark.asyncio
async def test_a_hung_redis_never_blocks_the_event_loop(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, timeout=0.3, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit(per_second=100))
    assert await bucket.acquire_async(0.0, None) is not None
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
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
    os.kill(own_server.process.pid, signal.SIGCONT)
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_calls_fall_back_when_redis_dies(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, retry_after=60)
    bucket = store.bucket("a" * 32, RateLimit())
    own_server.kill()
    permit = await bucket.acquire_async(0.0, None)  # fails, falls back
    assert permit == Permit(0.0, 0)
    await bucket.feedback_async(permit, throttled=True)  # down: straight to the local bucket
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
    assert own_server.process is not None
    os.kill(own_server.process.pid, signal.SIGSTOP)
    task = asyncio.create_task(bucket.acquire_async(0.0, None))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    os.kill(own_server.process.pid, signal.SIGCONT)
    assert await bucket.acquire_async(0.0, None) is not None
    assert store.fallbacks == 0
    await store.aclose()
    store.close()


@pytest.mark.asyncio
async def test_async_waiters_give_their_slots_back(async_store: RedisStore) -> None:
    bucket = async_store.bucket("h" * 32, RateLimit(per_second=2))
    assert await bucket.acquire_async(0.0, None) is not None  # sent
    waiters = [await bucket.acquire_async(0.0, None) for _ in range(10)]
    await asyncio.gather(*(bucket.release_async(permit or GO) for permit in waiters))
    after = await bucket.acquire_async(0.0, None)
    assert after is not None
    assert after.wait <= 0.5  # behind the one sent only, not 5.5 s
    assert async_store.fallbacks == 0


@pytest.mark.asyncio
async def test_a_release_that_fails_never_fails_the_call(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "clarifai_interceptor")
    client = redis.asyncio.Redis(port=server.port, socket_timeout=1)
    store = RedisStore(async_client=client)  # no sync client
    bucket = store.bucket("j" * 32, RateLimit(per_second=2))
    assert await bucket.acquire_async(0.0, None) is not None
    waiting = await bucket.acquire_async(0.0, None)
    assert waiting is not None
    bucket.release(waiting)  # no client to reach Redis with: logged, not raised
    assert "could not give a permit's slot back (RuntimeError)" in caplog.text
    await bucket.release_async(waiting)  # this one reaches it
    again = await bucket.acquire_async(0.0, None)
    assert again is not None
    assert again.at == pytest.approx(waiting.at)
    await store.aclose()
    await client.aclose()


def test_stores_without_the_other_client(server: RedisServer) -> None:
    with server.client() as client:
        store = RedisStore(client=client)
        bucket = store.bucket("a" * 32, RateLimit(per_second=5))
        permit = bucket.acquire(0.0, None)
        assert permit is not None
        bucket.feedback(permit, throttled=True)  # a fixed rate takes no feedback
        assert client.hget(bucket.key, "round") is None
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
        ({"url": "redis://localhost", "prefix": None}, "prefix"),
        ({"url": "redis://localhost", "on_error": "raise"}, "on_error"),
        ({"url": "redis://localhost", "ttl": 0}, "ttl"),
        ({"url": "redis://localhost", "ttl": 0.0001}, "ttl"),
        ({"url": "redis://localhost", "ttl": float("inf")}, "ttl"),
        ({"url": "redis://localhost", "timeout": -1}, "timeout"),
        ({"url": "redis://localhost", "timeout": True}, "timeout"),
        ({"url": "redis://localhost", "retry_after": float("nan")}, "retry_after"),
        ({"url": "redis://localhost:notaport"}, "valid Redis URL"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisStore(**kwargs)


def test_a_store_is_a_store(make_store: Callable[..., RedisStore]) -> None:
    store = make_store()
    limit = RateLimit(store=store)  # RateLimit checks the protocol
    bucket = bucket_for(limit, PAT, "t")
    assert isinstance(bucket, RedisBucket)
    assert bucket.key.startswith(DEFAULT_PREFIX)
    assert "up" in repr(store)


# --- End to end: channels to a real gRPC server, paced through Redis ---------------------------

OTHER_CREDS = Credentials.from_pat("fake-other-pat-for-tests", user_id="u2", app_id="a2")


def _list_models(channel: Any) -> Any:
    return service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)


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


def test_one_throttle_anywhere_wakes_every_process(
    fake: FakeClarifai, make_store: Callable[..., RedisStore]
) -> None:
    throttled = service_pb2.MultiModelResponse()
    throttled.status.code = status_code_pb2.CONN_THROTTLED
    fake.script("ListModels", Reply(throttled))
    first, second = RateLimit(store=make_store()), RateLimit(store=make_store())
    channel = insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=first)
    try:
        assert _list_models(channel).status.code == status_code_pb2.CONN_THROTTLED
    finally:
        channel.close()
    elsewhere = bucket_for(second, PAT, fake.target)  # the other "process"
    assert isinstance(elsewhere, RedisBucket)
    assert elsewhere.rate() == pytest.approx(first.initial_rate, rel=0.1)  # a slow start
    assert first.store.fallbacks == second.store.fallbacks == 0  # type: ignore[union-attr]
    # The gauges read the shared rate through the bucket.
    rates = limiter_rates()
    assert list(rates) == [identity(PAT, fake.target, first)]
    assert next(iter(rates.values())) == pytest.approx(first.initial_rate, rel=0.1)


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
    stores = [RedisStore(server.url), RedisStore(server.url)]
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
