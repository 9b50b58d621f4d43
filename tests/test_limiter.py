"""The client-side rate limiter: its maths with a fake clock, then pacing, sharing, fail-fast
and feedback on every front end against a real server.

Secrets are obviously fake. Timing asserts are lower bounds only where pacing is the point (a
slow machine can only make them longer) and generous upper bounds that only catch hangs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import FAST, PAT_CREDS, Judge, T

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    NO_RETRY,
    CallOutcome,
    ClarifaiInterceptor,
    Credentials,
    RateLimit,
    RateLimitedError,
    RetryPolicy,
    _limiter,
    call_outcome,
    insecure_channel,
    use_credentials,
    wrap_channel,
)
from clarifai_interceptor._attempts import Attempts
from clarifai_interceptor._limiter import (
    _DOUBLING,
    _FIRST,
    _K,
    _SUCCESSES,
    BETA,
    DIP,
    GO,
    GROWTH,
    HALF,
    Bucket,
    LocalBucket,
    Permit,
    bucket_for,
    cubic_rate,
    identity,
    start_rate,
)
from clarifai_interceptor.testing import Fail, FakeClarifai, Reply

METHOD = "ListModels"
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OTHER_CREDS = Credentials.from_pat("fake-other-pat-for-tests", user_id="u2", app_id="a2")


class Clock:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ok() -> service_pb2.MultiModelResponse:
    response = service_pb2.MultiModelResponse()
    response.status.code = sc.SUCCESS
    return response


def throttled() -> service_pb2.MultiModelResponse:
    response = service_pb2.MultiModelResponse()
    response.status.code = sc.CONN_THROTTLED
    response.status.description = "exceeded limit of 15 requests per second"
    return response


# -- the maths, with a fake clock --------------------------------------------------------------


def test_cubic_rate_dips_below_the_delivered_rate_then_probes_above_slowly() -> None:
    assert cubic_rate(100.0, 0.0) == pytest.approx(100.0 * (1 - DIP))
    assert cubic_rate(100.0, _K) == pytest.approx(100.0)
    assert cubic_rate(100.0, _K + 1.0) == pytest.approx(100.0 * (1 + GROWTH))
    assert cubic_rate(100.0, 0.5) < cubic_rate(100.0, _K) < cubic_rate(100.0, _K + 0.5)
    assert cubic_rate(100.0, _K + 0.5) < 101.0  # just above: probing, slowly


def test_the_slow_start_doubles_every_period() -> None:
    assert start_rate(50.0, 0.0) == 50.0
    assert start_rate(50.0, _DOUBLING) == pytest.approx(100.0)
    assert start_rate(50.0, 2 * _DOUBLING) == pytest.approx(200.0)


def test_fixed_rate_paces_from_the_first_call_with_its_burst() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=10, burst=3), clock)
    waits = [bucket.acquire(0.0, None).wait for _ in range(6)]  # type: ignore[union-attr]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    clock.now += 10  # idle: the burst is back, and no more
    waits = [bucket.acquire(0.0, None).wait for _ in range(4)]  # type: ignore[union-attr]
    assert waits == pytest.approx([0, 0, 0, 0.1])


def test_a_permit_is_never_sooner_than_asked() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=10), clock)
    first = bucket.acquire(0.55, None)
    assert first is not None
    assert first.wait == pytest.approx(0.55)
    # The slots before a retry's booked one stay free for others...
    second = bucket.acquire(0.0, None)
    assert second is not None
    assert second.wait == pytest.approx(0.0)
    # ...and the queue skips the booked slot when it gets there.
    waits = [bucket.acquire(0.0, None).wait for _ in range(5)]  # type: ignore[union-attr]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.65])
    # Two retries that end their backoff at once get slots apart.
    third, fourth = bucket.acquire(2.0, None), bucket.acquire(2.0, None)
    assert third is not None
    assert fourth is not None
    assert (third.wait, fourth.wait) == pytest.approx((2.0, 2.1))


def test_a_refused_permit_reserves_nothing() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=1), clock)
    assert bucket.acquire(0.0, 0.0) == Permit(0.0, 0, clock.now)
    assert bucket.acquire(0.0, 0.5) is None  # the next slot is 1 s away
    assert bucket.acquire(0.0, 0.5) is None
    permit = bucket.acquire(0.0, 1.0)
    assert permit is not None
    assert permit.wait == pytest.approx(1.0)


def _send(bucket: LocalBucket, clock: Clock, seconds: float, per_second: float) -> list[Permit]:
    """Acquire at ``per_second`` for ``seconds``; every permit given."""
    permits = []
    for _ in range(round(seconds * per_second)):
        permit = bucket.acquire(0.0, None)
        assert permit is not None
        permits.append(permit)
        clock.now += 1.0 / per_second
    return permits


def _serve(
    bucket: LocalBucket, clock: Clock, seconds: float, offered: float, server: float
) -> tuple[int, int]:
    """Offer ``offered`` attempts/s (capped by the bucket's pacing) to a server that admits
    ``server``/s from a bucket of 20 and answers at once; (successes, throttles)."""
    tokens, last, ok, throttled = 20.0, clock.now, 0, 0
    end, step = clock.now + seconds, 1.0 / offered
    while clock.now < end:
        permit = bucket.acquire(0.0, None)
        assert permit is not None
        clock.now += max(permit.wait, step)
        tokens = min(20.0, tokens + (clock.now - last) * server)
        last = clock.now
        if tokens >= 1:
            tokens -= 1
            ok += 1
            bucket.feedback(permit, throttled=False)
        else:
            throttled += 1
            bucket.feedback(permit, throttled=True)
    return ok, throttled


def test_adaptive_is_dormant_and_free_until_the_first_throttle() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    for _ in range(50):
        assert bucket.acquire(0.0, 0.0) is GO
        clock.now += 0.01  # 100 sends per second
    assert bucket.rate() is None
    assert not bucket.active
    bucket.feedback(GO, throttled=False)
    assert not bucket.active  # successes teach nothing while dormant...
    assert bucket._ok == 0  # ...nor count: a dormant success takes no lock
    bucket.feedback(GO, throttled=True)
    assert bucket.active
    # It starts from the rate it saw sent (100/s), then probes upwards (a slow start).
    assert bucket.rate() == pytest.approx(100.0, rel=0.05)
    clock.now += _DOUBLING
    assert bucket.rate() == pytest.approx(200.0, rel=0.05)


def test_the_first_estimate_divides_by_a_short_window_at_least() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(initial_rate=1.0), clock)
    for _ in range(50):  # 50 sends in 5 ms: a cold start into a throttle
        bucket.acquire(0.0, None)
        clock.now += 0.0001
    bucket.feedback(GO, throttled=True)
    assert bucket.rate() == pytest.approx(50 / _FIRST, rel=0.01)


def test_a_throttle_cuts_to_the_rate_delivered_since_the_last_throttle() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000), clock)
    _send(bucket, clock, 1.0, 100.0)
    bucket.feedback(GO, throttled=True)  # active at 100/s, a slow start
    clock.now += 0.001
    for permit in _send(bucket, clock, 0.5, 100.0):  # delivered: 100/s
        bucket.feedback(permit, throttled=False)
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._delivered == pytest.approx(100.0, rel=0.03)
    # The slow start began at (not below) what the server delivered: its window offered more
    # than that all along, so the measure is whole and the rate goes straight to it.
    assert bucket.rate() == pytest.approx(100.0 * (1 - DIP), rel=0.03)
    # Throttles all through the next second (the server's pace, not ours), and 60 successes:
    # the server delivers 60/s.
    bucket.feedback(Permit(0.0, 1), throttled=True)  # of the round before: no cut, counted
    for permit in _send(bucket, clock, 1.0, 60.0):
        bucket.feedback(permit, throttled=False)
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._delivered == pytest.approx(60.0, rel=0.03)
    assert bucket.rate() == pytest.approx(60.0 * (1 - DIP), rel=0.03)  # just below it
    clock.now += _K
    assert bucket.rate() == pytest.approx(60.0, rel=0.03)  # back at it, then above, slowly


def test_a_slow_start_from_below_the_server_cuts_by_beta_at_most() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000, initial_rate=1.0), clock)
    _send(bucket, clock, 1.0, 20.0)
    bucket.feedback(GO, throttled=True)  # a slow start from 20/s, below the server's 100/s
    assert bucket._w_max == pytest.approx(20.0, rel=0.03)
    clock.now += 0.001
    # A window that undercounts (a quarter of the successes told of, the rest late):
    for number, permit in enumerate(_send(bucket, clock, 1.9, 100.0)):
        if number % 4 == 0:
            bucket.feedback(permit, throttled=False)
    before = bucket.rate()
    assert before is not None
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._delivered == pytest.approx(25.0, rel=0.03)
    assert bucket._delivered < BETA * before  # so that BETA is what holds the rate up
    assert bucket.rate() == pytest.approx(BETA * before * (1 - DIP), rel=0.03)


def test_a_quiet_window_says_the_server_gives_at_least_its_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000), clock)
    _send(bucket, clock, 1.0, 100.0)
    bucket.feedback(GO, throttled=True)
    clock.now += 0.001
    for permit in _send(bucket, clock, 0.5, 100.0):
        bucket.feedback(permit, throttled=False)
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)  # the plateau: 100/s
    assert bucket._w_max == pytest.approx(100.0, rel=0.03)
    # Paced below the plateau (in the dip after the cut, say) with no throttle until the one
    # that ends the window: that rate was ours; the server gives that much at least, and
    # the plateau stands (cutting to it would spiral down, window after window).
    for permit in _send(bucket, clock, 1.0, 80.0):
        bucket.feedback(permit, throttled=False)
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._round == 3
    assert bucket._delivered == pytest.approx(100.0, rel=0.03)
    assert bucket._w_max == pytest.approx(100.0, rel=0.03)


def test_a_window_that_undercounts_at_most_halves_the_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000), clock)
    _send(bucket, clock, 1.0, 100.0)
    bucket.feedback(GO, throttled=True)
    clock.now += 0.3
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)  # ends the slow start
    before = bucket.rate()
    assert before is not None
    for _ in range(_SUCCESSES):  # a few successes in 1.5 s (reported late, say)
        clock.now += 1.5 / _SUCCESSES
        bucket.feedback(Permit(0.0, 2), throttled=False)
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._delivered == pytest.approx(_SUCCESSES / 1.8, rel=0.01)  # since activation
    assert bucket._w_max == pytest.approx(HALF * cubic_rate(before / (1 - DIP), 1.5), rel=0.01)


def test_many_throttles_of_one_round_cut_once_and_never_collapse() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000), clock)
    _send(bucket, clock, 1.0, 100.0)
    bucket.feedback(GO, throttled=True)
    for permit in _send(bucket, clock, 0.5, 100.0):
        bucket.feedback(permit, throttled=False)
    in_flight = [bucket.acquire(0.0, None) for _ in range(50)]
    for permit in in_flight:  # fifty throttles of one round: one cut
        assert permit is not None
        bucket.feedback(permit, throttled=True)
    once = bucket.rate()
    assert once is not None
    assert bucket._round == 2
    # Throttles of permits given after the cut, but within a round of it, do not cut again.
    for _ in range(20):
        clock.now += 0.01
        later = bucket.acquire(0.0, None)
        assert later is not None
        bucket.feedback(later, throttled=True)
    assert bucket._round == 2
    # With no success at all since, a cut has nothing to go by: it dips, no more.
    clock.now += 0.1
    bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket._round == 3
    assert bucket.rate() == pytest.approx(once, rel=0.1)


def test_pacing_to_a_server_converges_to_its_rate_with_few_throttles() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    _serve(bucket, clock, 5.0, offered=1000.0, server=120.0)  # a cold start, then:
    ok, throttled = _serve(bucket, clock, 20.0, offered=1000.0, server=120.0)
    assert ok >= 0.97 * 120 * 20  # goodput: the server's rate
    assert throttled < 0.02 * ok
    assert bucket.rate() == pytest.approx(120.0, rel=0.1)


def test_the_rate_grows_back_when_the_server_gives_more() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    _serve(bucket, clock, 10.0, offered=1000.0, server=50.0)
    assert bucket.rate() == pytest.approx(50.0, rel=0.1)
    ok, throttled = _serve(bucket, clock, 10.0, offered=1000.0, server=150.0)
    assert ok > 0.5 * 150 * 10  # probing above slowly (cubic), yet tripled within 10 s
    assert throttled < 0.02 * ok
    assert bucket.rate() >= 0.9 * 150


def test_a_rise_rebases_reserved_slots_and_a_cut_lays_them_out_anew() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    _send(bucket, clock, 1.0, 100.0)
    bucket.feedback(GO, throttled=True)
    queue = [bucket.acquire(0.0, None) for _ in range(300)]  # reserved 3 s ahead at 100/s
    assert queue[-1] is not None
    assert queue[-1].wait == pytest.approx(3.0, rel=0.02)
    # Growth (the slow start doubles the rate in a second): what is reserved is re-based, so
    # that the next permit comes at the new rate's slot, not behind the old rate's queue.
    clock.now += _DOUBLING
    grown = bucket.acquire(0.0, None)
    assert grown is not None
    assert grown.wait == pytest.approx(2.0 * 100 / 200, rel=0.05)
    assert bucket.recheck(grown, None) is grown  # no cut since: send at its slot
    # A cut: nothing stays reserved at the old rate. A permit given before it asks again at
    # the end of its wait and gets the next slot at the new rate, in the order the waiters
    # come back in; a caller after the cut queues behind them; a permit that was due before
    # the cut goes as it is; none is refused for it.
    for _ in range(30):
        bucket.feedback(Permit(0.0, 1), throttled=False)
    bucket.feedback(Permit(0.0, 1), throttled=True)
    assert bucket._round == 2
    rate = bucket.rate()
    assert rate is not None
    assert rate < 200 * 0.6
    due = queue[0]
    assert due is not None
    assert due.at <= clock.now
    assert bucket.recheck(due, None) is due
    waiting = [p for p in queue if p is not None and p.at > clock.now]
    assert len(waiting) > 100
    fresh = bucket.acquire(0.0, None)  # a caller after the cut queues behind every waiter
    assert fresh is not None
    assert fresh.wait >= 0.9 * len(waiting) / rate
    moved = []
    for permit in waiting[:20]:
        clock.now = max(clock.now, permit.at)  # each comes back at the end of its wait
        again = bucket.recheck(permit, None)
        assert again is not permit
        assert again.round == 2
        assert bucket.recheck(again, None) is again  # the new permit needs no second look
        moved.append(again.at)
    assert moved == sorted(moved)
    gaps = [b - a for a, b in itertools.pairwise(moved)]
    assert gaps == pytest.approx([1.0 / rate] * len(gaps), rel=0.05)  # the new rate's slots
    assert moved[-1] < fresh.at  # first come, first served
    # One whose new slot would pass its bound goes at its old one rather than fail.
    late = waiting[-1]
    assert bucket.recheck(late, 0.0) is late


def test_the_send_rate_estimate_survives_a_stall() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(burst=1000), clock)
    for _ in range(100):
        bucket.acquire(0.0, None)
        clock.now += 0.01
    bucket.feedback(GO, throttled=True)
    for _ in range(300):
        bucket.acquire(0.0, None)
        clock.now += 0.01
    before = bucket._measured
    clock.now += 0.6  # the client stalls (a GC pause, a slow request)
    bucket.acquire(0.0, None)
    clock.now += 0.01
    assert bucket._measured >= before * 0.9
    assert bucket.rate() <= 2 * bucket._measured  # type: ignore[operator]


def test_a_throttle_after_a_few_calls_starts_from_the_initial_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(initial_rate=15.0), clock)
    bucket.acquire(0.0, None)
    clock.now += 0.01
    bucket.feedback(GO, throttled=True)  # one call seen: 4/s would be no estimate at all
    assert bucket.rate() == pytest.approx(15.0)


def test_the_adaptive_rate_never_falls_below_min_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(min_rate=2.0), clock)
    bucket.acquire(0.0, None)
    bucket.feedback(GO, throttled=True)
    for _ in range(300):  # throttled every round, never a success: it dips and dips
        clock.now += 0.3
        bucket.feedback(bucket.acquire(0.0, None) or GO, throttled=True)
    assert bucket.rate() == pytest.approx(2.0)


# -- a permit never used gives its slot back ----------------------------------------------------


def _queue(bucket: LocalBucket, count: int) -> list[Permit]:
    permits = [bucket.acquire(0.0, None) for _ in range(count)]
    assert all(permit is not None for permit in permits)
    return permits  # type: ignore[return-value]


def _active(clock: Clock) -> LocalBucket:
    """An adaptive bucket made active by a throttle 0.3 s ago (a cut may come now); the clock
    stands still from here, and so does the rate."""
    bucket = LocalBucket(RateLimit(burst=1.0), clock)
    bucket.acquire(0.0, None)
    bucket.feedback(GO, throttled=True)
    clock.now += 0.3
    return bucket


@pytest.mark.parametrize("order", ["first to last", "last to first", "shuffled", "async"])
def test_waiters_that_never_send_give_every_slot_back(order: str) -> None:
    """10 waiters at 2/s end without sending (cancelled, closed, past their deadline): the
    next caller does not wait behind their slots (5 s), whatever the order they give them
    back in."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=2.0), clock)
    assert isinstance(bucket, Bucket)
    sent = bucket.acquire(0.0, None)
    assert sent == Permit(0.0, 0, clock.now)  # due at once: sent
    waiters = _queue(bucket, 10)
    assert [p.wait for p in waiters] == pytest.approx([0.5 * n for n in range(1, 11)])
    if order == "last to first":
        waiters.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(waiters)
    for permit in waiters:
        if order == "async":
            asyncio.run(bucket.release_async(permit))
        else:
            bucket.release(permit)
    assert bucket._free == []
    clock.now += 0.5  # the interval of the one sent
    after = bucket.acquire(0.0, None)
    assert after is not None
    assert after.wait == 0.0  # at once, not 5 s on
    assert bucket.acquire(0.0, None).wait == pytest.approx(0.5)  # type: ignore[union-attr]


@pytest.mark.parametrize("burst", [1.0, 3.0])
def test_a_slot_given_back_inside_the_queue_never_lets_more_through_than_the_limit(
    burst: float,
) -> None:
    """A slot in the middle of the queue: the permits after it keep theirs, packed; a caller
    let in one interval sooner would send twice in one interval. Every window holds at most
    ``rate * window + burst`` sends, and so does the whole run."""
    rate, seconds = 2.0, 10.0
    clock = Clock()
    start = clock.now
    bucket = LocalBucket(RateLimit(per_second=rate, burst=burst), clock)
    permits = _queue(bucket, 10)
    middle = permits[5]
    assert middle.at > clock.now
    bucket.release(middle)
    assert bucket._free == [middle.at]  # free until the end of the queue reaches it
    sends = [p.at for p in permits if p is not middle]
    while clock.now < start + seconds:  # a greedy caller takes every slot as soon as it can
        permit = bucket.acquire(0.0, 0.0)
        if permit is not None:
            sends.append(permit.at)
        clock.now += 0.01
    sends.sort()
    assert len(sends) <= rate * seconds + burst
    for i, j in itertools.combinations(range(len(sends)), 2):
        assert j - i + 1 <= rate * (sends[j] - sends[i]) + burst + 1e-9, (sends[i], sends[j])


def test_a_slot_inside_the_queue_is_given_back_once_every_slot_after_it_is() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=2.0), clock)
    permits = _queue(bucket, 10)  # 0, 0.5, ... 4.5 s on; the queue ends at 5 s
    for number in (3, 6):
        bucket.release(permits[number])
    assert bucket._tat == clock.now + 5.0  # nobody is let in sooner: the slots after are taken
    assert bucket._free == [permits[3].at, permits[6].at]
    for number in (8, 9, 7):  # the end of the queue: back to the first slot still taken
        bucket.release(permits[number])
    assert bucket._tat == pytest.approx(permits[6].at)
    assert bucket._free == [permits[3].at]
    bucket.release(permits[3])  # given back already: nothing more
    for number in (5, 4):
        bucket.release(permits[number])
    assert bucket._tat == pytest.approx(permits[3].at)
    assert bucket._free == []
    after = bucket.acquire(0.0, None)
    assert after is not None
    assert after.at == pytest.approx(permits[3].at)  # the slot of the first one given back


def test_a_retry_slot_booked_past_the_queue_is_unbooked() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=10.0), clock)
    _queue(bucket, 1)
    retry = bucket.acquire(2.0, None)  # its backoff ends past the queue: a slot of its own
    assert retry is not None
    assert bucket._later == [retry.at]
    tat = bucket._tat
    bucket.release(retry)
    assert bucket._later == []
    assert bucket._tat == tat  # the queue is as it was
    again = bucket.acquire(2.0, None)
    assert again == retry  # the same slot, not one interval after it


def test_a_slot_given_back_is_a_send_that_never_happened() -> None:
    clock = Clock()
    bucket = _active(clock)
    permits = _queue(bucket, 10)
    count = bucket._count
    bucket.release(permits[-1])
    bucket.release(permits[4])
    assert bucket._count == count - 2  # the send-rate estimate counts only sends
    bucket.release(permits[0])  # due at once: sent
    assert bucket._count == count - 2


def test_release_does_nothing_for_a_permit_used_dormant_or_laid_out_anew() -> None:
    clock = Clock()
    dormant = LocalBucket(RateLimit(), clock)
    assert dormant.acquire(0.0, None) is GO
    dormant.release(GO)
    assert not dormant.active
    assert dormant._count == 1  # dormant: not undone (and no lock taken)

    fixed = LocalBucket(RateLimit(per_second=2.0), clock)
    sent, waiting, last = _queue(fixed, 3)
    clock.now += 0.5  # `waiting` is due: sent, or about to be
    fixed.release(waiting)
    fixed.release(sent)
    assert (fixed._tat, fixed._free) == (clock.now + 1.0, [])
    fixed.release(last)  # not due yet: its slot comes back
    assert fixed._tat == clock.now + 0.5

    bucket = _active(clock)
    before = _queue(bucket, 10)
    bucket.feedback(before[-1], throttled=True)  # a cut: the waiters are laid out anew
    assert bucket._round == 2
    state = (bucket._tat, bucket._redo, list(bucket._free), bucket._count)
    bucket.release(before[-1])  # which slot of the new layout it would take is not known
    bucket.release(before[4])
    assert (bucket._tat, bucket._redo, bucket._free, bucket._count) == state
    after = bucket.acquire(0.0, None)  # given after the cut, at the end of the new queue
    assert after is not None
    bucket.release(after)
    assert bucket._tat == pytest.approx(state[0])


def test_a_cut_lays_the_waiters_left_out_without_the_slots_given_back() -> None:
    clock, other = Clock(), Clock()
    bucket, control = _active(clock), _active(other)
    permits = _queue(bucket, 20)
    _queue(control, 20)
    for number in (5, 9, 12):
        bucket.release(permits[number])
    assert len(bucket._free) == 3
    bucket.feedback(permits[-1], throttled=True)
    control.feedback(permits[-1], throttled=True)
    rate = bucket.rate()
    assert rate is not None
    assert rate == control.rate()
    assert bucket._free == []
    # Three fewer waiters to lay out: a caller after the cut queues 3 slots sooner.
    assert control._tat - bucket._tat == pytest.approx(3 / rate)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_second", 0),
        ("per_second", -1),
        ("per_second", float("nan")),
        ("per_second", float("inf")),
        ("per_second", True),
        ("per_second", "15"),
        ("burst", 0.5),
        ("burst", float("inf")),
        ("max_wait", -0.1),
        ("max_wait", float("nan")),
        ("min_rate", 0),
        ("initial_rate", -1),
        ("key", ""),
        ("key", 7),
        ("store", object()),
    ],
)
def test_bad_rate_limits_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RateLimit(**{field: value})


def test_rate_limit_of_the_wrong_type_is_refused_when_the_channel_is_built() -> None:
    raw = grpc.insecure_channel("localhost:1")
    try:
        with pytest.raises(TypeError, match="rate_limit"):
            wrap_channel(raw, PAT_CREDS, rate_limit=15)  # type: ignore[arg-type]
    finally:
        raw.close()


# -- sharing rules ---------------------------------------------------------------------------


def test_identity_is_a_digest_that_names_no_secret() -> None:
    key = identity(PAT_CREDS.secret.reveal(), "localhost:1", RateLimit())
    assert PAT_CREDS.secret.reveal() not in key
    assert len(key) == 32
    assert key != identity(OTHER_CREDS.secret.reveal(), "localhost:1", RateLimit())
    assert key != identity(PAT_CREDS.secret.reveal(), "localhost:2", RateLimit())
    # A shared key widens the limit across secrets.
    shared = RateLimit(key="team")
    assert identity(PAT_CREDS.secret.reveal(), "t", shared) == identity(
        OTHER_CREDS.secret.reveal(), "t", shared
    )


def test_two_channels_with_one_secret_share_a_bucket_and_other_secrets_do_not(
    fake: FakeClarifai,
) -> None:
    one = insecure_channel(fake.target, PAT_CREDS, retry=FAST)
    two = insecure_channel(fake.target, PAT_CREDS, retry=FAST)
    try:
        for channel in (one, two):
            service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)
        ours = bucket_for(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
        theirs = bucket_for(_limiter.DEFAULT_RATE_LIMIT, OTHER_CREDS.secret.reveal(), fake.target)
        assert ours is not theirs
        assert [bucket for _key, bucket in _limiter.buckets()] == [ours, theirs]
    finally:
        one.close()
        two.close()


def test_a_throttled_tenant_does_not_slow_another(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=2, max_wait=0)  # fail fast: any pacing shows as an error
    channel = insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY, rate_limit=limit)
    stub = service_pb2_grpc.V2Stub(channel)
    try:
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        with pytest.raises(RateLimitedError):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        with use_credentials(OTHER_CREDS):  # another PAT: its own bucket, full
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        # A credential header on the call itself is its own tenant too.
        header = (("authorization", "Key fake-third-secret-for-tests"),)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T, metadata=header)
        with pytest.raises(RateLimitedError):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T, metadata=header)
    finally:
        channel.close()
    assert len(fake.calls_to(METHOD)) == 3


# -- pacing and fail-fast on every sync front end ---------------------------------------------


def sync_channels(fake: FakeClarifai, **kwargs: Any) -> Iterator[tuple[str, grpc.Channel]]:
    raw = grpc.insecure_channel(fake.target)
    yield "interceptor", grpc.intercept_channel(raw, ClarifaiInterceptor(PAT_CREDS, **kwargs))
    raw2 = grpc.insecure_channel(fake.target)
    yield "wrapper", wrap_channel(raw2, PAT_CREDS, **kwargs)
    raw.close()
    raw2.close()


@pytest.mark.parametrize("how", ["blocking", "with_call", "future", "stream"])
def test_a_fixed_rate_paces_every_call_kind(fake: FakeClarifai, how: str) -> None:
    for _name, channel in sync_channels(fake, retry=FAST, rate_limit=RateLimit(per_second=20)):
        _limiter._reset()
        stub = service_pb2_grpc.V2Stub(channel)
        started = time.monotonic()
        for _ in range(5):
            request = service_pb2.ListModelsRequest()
            if how == "blocking":
                stub.ListModels(request, timeout=T)
            elif how == "with_call":
                stub.ListModels.with_call(request, timeout=T)
            elif how == "future":
                stub.ListModels.future(request, timeout=T).result(timeout=T)
            else:
                list(stub.StreamLogEntries(service_pb2.StreamLogEntriesRequest(), timeout=T))
        assert time.monotonic() - started >= 4 * 0.05 * 0.9  # four gaps of 1/20 s


def test_fail_fast_raises_our_rpc_error_and_sends_nothing(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=0.5, max_wait=0)
    for name, channel in sync_channels(fake, retry=FAST, rate_limit=limit):
        _limiter._reset()
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        before = len(fake.calls_to(METHOD))
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, name
        assert "client-side rate limiter" in refused.value.details()
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert future.done()
        assert isinstance(future.exception(), RateLimitedError)
        assert future.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(RateLimitedError):
            stub.ListModels.with_call(service_pb2.ListModelsRequest(), timeout=T)
        assert len(fake.calls_to(METHOD)) == before


def test_a_refused_call_has_a_debug_error_string_as_grpcs_errors_do(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=0.5, max_wait=0)
    denied = grpc.StatusCode.PERMISSION_DENIED  # gRPC's own error, to compare
    fake.script(METHOD, denied, denied)
    for name, channel in sync_channels(fake, retry=FAST, rate_limit=limit):
        _limiter._reset()
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(grpc.RpcError) as theirs:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert theirs.value.debug_error_string(), name  # its shape differs by gRPC release
        with pytest.raises(RateLimitedError) as refused:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        text = refused.value.debug_error_string()
        assert text == (  # gRPC's shape, CODE:details, and who ended the call
            f"RESOURCE_EXHAUSTED:{refused.value.details()} "
            "(ended by clarifai_interceptor: RateLimitedError)"
        )
        assert "the client-side rate limiter refused the call" in text
        assert PAT_CREDS.secret.reveal() not in text
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert future.debug_error_string() == text, name


def test_no_permit_wait_runs_past_the_call_deadline(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=0.2, max_wait=None)  # would wait 5 s for the second permit
    for _name, channel in sync_channels(fake, retry=FAST, rate_limit=limit):
        _limiter._reset()
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        started = time.monotonic()
        with pytest.raises(RateLimitedError):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=0.5)
        assert time.monotonic() - started < 0.4  # refused at once, not after a wait


def test_a_paced_future_returns_at_once_and_can_be_cancelled_unsent(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=1)
    for _name, channel in sync_channels(fake, retry=FAST, rate_limit=limit):
        _limiter._reset()
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        before = len(fake.calls_to(METHOD))
        started = time.monotonic()
        paced = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        cancelled = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert time.monotonic() - started < 0.5  # the caller is not blocked for the ~1 s wait
        assert not paced.done()
        assert cancelled.cancel()
        assert cancelled.cancelled()
        with pytest.raises(grpc.FutureCancelledError):
            cancelled.result()
        assert paced.result(timeout=T).status.code == sc.SUCCESS
        assert time.monotonic() - started >= 0.9
        time.sleep(0.2)
        assert len(fake.calls_to(METHOD)) == before + 1  # the cancelled one was never sent


# -- feedback: throttles teach the limiter ---------------------------------------------------


@pytest.mark.parametrize("policy", [FAST, NO_RETRY], ids=["retrying", "no-retry"])
def test_a_throttle_wakes_the_adaptive_limiter_on_every_front_end(
    fake: FakeClarifai, policy: RetryPolicy
) -> None:
    for how in ("blocking", "future"):
        for name, channel in sync_channels(fake, retry=policy):
            _limiter._reset()
            fake.script(METHOD, Reply(throttled()))  # then the default: success
            stub = service_pb2_grpc.V2Stub(channel)
            if how == "blocking":
                stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
            else:
                future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
                future.result(timeout=T)
            bucket = bucket_for(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), "")
            deadline = time.monotonic() + T  # a future's done-callback runs on gRPC's thread
            while not bucket.active and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.01)
            assert bucket.active, (name, how)  # type: ignore[attr-defined]


def test_our_refusal_is_never_retried_even_where_resource_exhausted_is_a_throttle(
    fake: FakeClarifai,
) -> None:
    policy = dataclasses.replace(
        FAST, throttle_codes=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
    )
    limit = RateLimit(per_second=0.5, max_wait=0)
    channel = insecure_channel(fake.target, PAT_CREDS, retry=policy, rate_limit=limit)
    try:
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        with pytest.raises(RateLimitedError):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
    finally:
        channel.close()
    assert len(fake.calls_to(METHOD)) == 1


def test_a_server_resource_exhausted_marked_as_throttle_is_retried(fake: FakeClarifai) -> None:
    policy = dataclasses.replace(
        FAST, throttle_codes=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
    )
    channel = insecure_channel(fake.target, PAT_CREDS, retry=policy)
    fake.script(METHOD, Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"), Reply(ok()))
    try:
        stub = service_pb2_grpc.V2Stub(channel)
        assert stub.ListModels(service_pb2.ListModelsRequest(), timeout=T).status.code == sc.SUCCESS
    finally:
        channel.close()
    assert len(fake.calls_to(METHOD)) == 2
    bucket = bucket_for(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
    assert bucket.active  # type: ignore[attr-defined]


def test_a_refused_retry_ends_the_call_with_its_last_outcome() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=1), clock)
    attempts = Attempts(FAST, "M", None, None, bucket, None, 0.0)
    judge = Judge(attempts)
    assert judge.first() == 0
    assert judge.after(throttled()) is None  # the retry's permit is a second away
    assert attempts.cut_by == "limiter"
    assert attempts.number == 1


def test_many_threads_share_one_paced_bucket_without_losing_a_call(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=200, burst=5)
    channel = insecure_channel(fake.target, PAT_CREDS, retry=FAST, rate_limit=limit)
    stub = service_pb2_grpc.V2Stub(channel)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(T)
    channel.close()
    assert not errors
    assert len(fake.calls_to(METHOD)) == 80
    assert time.monotonic() - started >= (80 - 5) / 200 * 0.9


# -- aio -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aio_pacing_never_blocks_the_event_loop(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=50, burst=1)
    lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - before - 0.005)

    async with cia.insecure_channel(fake.target, PAT_CREDS, retry=FAST, rate_limit=limit) as ch:
        stub = service_pb2_grpc.V2Stub(ch)
        tick = asyncio.ensure_future(ticker())
        started = time.monotonic()
        await asyncio.gather(
            *(stub.ListModels(service_pb2.ListModelsRequest(), timeout=T) for _ in range(25))
        )
        elapsed = time.monotonic() - started
        stop.set()
        await tick
    assert elapsed >= 24 / 50 * 0.9
    assert lag < 0.25  # generous: only a loop blocked for the waits would fail it


@pytest.mark.asyncio
async def test_aio_fail_fast_and_throttle_feedback(fake: FakeClarifai) -> None:
    limit = RateLimit(per_second=0.5, max_wait=0)
    async with cia.insecure_channel(fake.target, PAT_CREDS, retry=FAST, rate_limit=limit) as ch:
        stub = service_pb2_grpc.V2Stub(ch)
        await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        with pytest.raises(grpc.RpcError) as refused:
            await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(fake.calls_to(METHOD)) == 1
    fake.script(METHOD, Reply(throttled()), Reply(ok()))
    async with cia.insecure_channel(fake.target, PAT_CREDS, retry=NO_RETRY) as ch:
        stub = service_pb2_grpc.V2Stub(ch)
        response = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert response.status.code == sc.CONN_THROTTLED  # one attempt, as asked
    bucket = bucket_for(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
    assert bucket.active  # type: ignore[attr-defined]


# -- hostile servers -------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["9223372036854775807", "9" * 5000, "1e9", "-0"])
def test_a_huge_or_garbage_pushback_never_parks_a_call(fake: FakeClarifai, hint: str) -> None:
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.2, jitter=0)
    fake.set_default(
        METHOD, Fail(grpc.StatusCode.UNAVAILABLE, "", (("grpc-retry-pushback-ms", hint),))
    )
    for _name, channel in sync_channels(fake, retry=policy):
        stub = service_pb2_grpc.V2Stub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert isinstance(future.exception(timeout=T), grpc.RpcError)
        assert time.monotonic() - started < 5  # at most 4 waits of max_backoff each, twice


# -- per-call outcome ------------------------------------------------------------------------


def test_call_outcome_counts_attempts_on_every_sync_front_end(fake: FakeClarifai) -> None:
    unlimited = dataclasses.replace(FAST, budget=None)  # an outage below would spend the budget
    for name, channel in sync_channels(fake, retry=unlimited):
        stub = service_pb2_grpc.V2Stub(channel)
        _response, call = stub.ListModels.with_call(service_pb2.ListModelsRequest(), timeout=T)
        assert call_outcome(call) == CallOutcome(1, None, 0), name  # the happy path: gRPC's own
        fake.script(METHOD, Reply(throttled()), Fail(grpc.StatusCode.UNAVAILABLE, "blip"))
        response, call = stub.ListModels.with_call(service_pb2.ListModelsRequest(), timeout=T)
        assert response.status.code == sc.SUCCESS
        assert call_outcome(call) == CallOutcome(3, None, 1), name
        assert call.code() is grpc.StatusCode.OK  # still the last attempt's call
        fake.set_default(METHOD, Fail(grpc.StatusCode.UNAVAILABLE, "down"))
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert isinstance(future.exception(timeout=T), grpc.RpcError)
        assert call_outcome(future) == CallOutcome(FAST.max_attempts, "attempts", 0), name
        fake.script("StreamLogEntries", Fail(grpc.StatusCode.UNAVAILABLE, "blip"))
        stream = stub.StreamLogEntries(service_pb2.StreamLogEntriesRequest(), timeout=T)
        list(stream)
        assert call_outcome(stream).attempts == 2, name
        fake.set_default(METHOD, Reply(ok()))


@pytest.mark.asyncio
async def test_call_outcome_of_an_aio_response_stream(fake: FakeClarifai) -> None:
    fake.script("StreamLogEntries", Fail(grpc.StatusCode.UNAVAILABLE, "blip"))
    async with cia.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        stream = service_pb2_grpc.V2Stub(channel).StreamLogEntries(
            service_pb2.StreamLogEntriesRequest(), timeout=T
        )
        async for _message in stream:
            pass
        kept = await stream._interceptors_task  # what grpc.aio hands on: our kept attempt
        assert call_outcome(kept).attempts == 2


# -- a cut while callers wait: their permits are laid out anew ---------------------------------

CUT_LIMIT = RateLimit(initial_rate=50.0, burst=1.0)
WAITERS = 20


def _activate_then_cut_soon() -> Callable[[], tuple[float, float]]:
    """The process's one bucket made active at 50/s (a slow start, up to 100/s after a
    second), with 16 successes told of; returns the cut: a throttle that measures 16
    successes in the second since, so that the rate goes to about 15/s (returns its time and
    the rate it cut to)."""
    [(_key, bucket)] = _limiter.buckets()
    bucket.feedback(GO, throttled=True)
    for _ in range(_SUCCESSES):
        bucket.feedback(Permit(0.0, 1), throttled=False)
    time.sleep(1.0)

    def cut() -> tuple[float, float]:
        bucket.feedback(Permit(0.0, 1), throttled=True)
        rate = bucket.rate()  # read at once: later the cubic growth (and a busy machine) adds
        assert rate is not None
        return time.monotonic(), rate

    return cut


def _laid_out_anew(fake: FakeClarifai, rate: float, cut_at: float) -> None:
    assert rate < 20.0  # the cut measured the server: about 15/s
    after = sorted(call.time for call in fake.calls_to(METHOD) if call.time > cut_at)
    assert len(after) >= WAITERS // 2  # the waiters' slots (10 ms apart) had not all passed
    gaps = sorted(b - a for a, b in itertools.pairwise(after))
    # At the old rate (100/s) they would go 10 ms apart; each rechecks at the end of its wait
    # and goes at the new rate's slot instead (66 ms apart): the median gap says which.
    assert gaps[len(gaps) // 2] >= 0.5 / rate, gaps


@pytest.mark.parametrize("how", ["wrapper", "interceptor", "future"])
def test_callers_waiting_when_the_rate_is_cut_go_at_the_new_rate(
    fake: FakeClarifai, how: str
) -> None:
    kind = "wrapper" if how == "wrapper" else "interceptor"
    for name, channel in sync_channels(fake, retry=FAST, rate_limit=CUT_LIMIT):
        if name != kind:
            continue
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)  # the bucket, dormant
        cut = _activate_then_cut_soon()
        if how == "future":
            futures = [
                stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
                for _ in range(WAITERS)
            ]
            cut_at, rate = cut()
            for future in futures:
                future.result(timeout=T)
        else:
            threads = [
                threading.Thread(
                    target=stub.ListModels,
                    args=(service_pb2.ListModelsRequest(),),
                    kwargs={"timeout": T},
                )
                for _ in range(WAITERS)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.02)
            cut_at, rate = cut()
            for thread in threads:
                thread.join(T)
        _laid_out_anew(fake, rate, cut_at)


@pytest.mark.asyncio
async def test_aio_callers_waiting_when_the_rate_is_cut_go_at_the_new_rate(
    fake: FakeClarifai,
) -> None:
    async with cia.insecure_channel(
        fake.target, PAT_CREDS, retry=FAST, rate_limit=CUT_LIMIT
    ) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        cut = _activate_then_cut_soon()
        calls = [
            asyncio.ensure_future(stub.ListModels(service_pb2.ListModelsRequest(), timeout=T))
            for _ in range(WAITERS)
        ]
        await asyncio.sleep(0.02)  # every task has its permit, 10 ms apart
        cut_at, rate = cut()
        await asyncio.gather(*calls)
    _laid_out_anew(fake, rate, cut_at)


def test_successes_of_permits_given_while_dormant_count_once_active() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    wave = [bucket.acquire(0.0, None) for _ in range(40)]  # a cold start: all go at once
    assert wave == [GO] * 40
    bucket.feedback(GO, throttled=False)
    assert bucket._ok == 0  # dormant: a success teaches nothing (and takes no lock)
    bucket.feedback(GO, throttled=True)  # the first throttle
    assert bucket.learning
    for permit in wave[:20]:  # the rest of the wave, answered after it: the server's work
        bucket.feedback(permit or GO, throttled=False)
    assert bucket._ok == 20
    fixed = LocalBucket(RateLimit(per_second=5.0), clock)
    assert not fixed.learning  # a fixed rate learns nothing: its successes cost no call
