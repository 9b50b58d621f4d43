"""The client-side rate limiter: its maths with a fake clock, then pacing, sharing, fail-fast
and feedback on every front end against a real server.

Secrets are obviously fake. Timing asserts are lower bounds only where pacing is the point (a
slow machine can only make them longer) and generous upper bounds that only catch hangs.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import heapq
import itertools
import random
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import FAST, PAT_CREDS, Judge, T
from helpers import bucket_of

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    NO_RETRY,
    CallOutcome,
    ClarifaiInterceptor,
    Credentials,
    QuotaExceededError,
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
    BETA,
    DIP,
    GO,
    HORIZON,
    MARGIN,
    OK,
    RISE,
    RISE_EVERY,
    RISE_LEARNT,
    SAMPLE,
    STEP,
    LocalBucket,
    Permit,
    Quota,
    Signal,
    identity,
    take,
)
from clarifai_interceptor._signals import read, stated_limit
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


# -- the rules and the schedule, with a fake clock --------------------------------------------

STATED = Signal(throttled=True, stated=15.0)
PACED = 15.0 * (1 - MARGIN)  # a stated 15/s is paced just below
UNSTATED = Signal(throttled=True)


def permits(bucket: LocalBucket, n: int, not_before: float = 0.0) -> list[Permit]:
    got = [bucket.acquire(not_before, None) for _ in range(n)]
    assert all(isinstance(p, Permit) for p in got)
    return got  # type: ignore[return-value]


def test_take_is_a_gcra_with_a_burst_and_refuses_past_max_wait() -> None:
    assert take(0.0, 10.0, 2.0, 1.0, 0.0, None) == (10.0, 10.5)  # idle: now, then an interval
    assert take(10.5, 10.0, 2.0, 1.0, 0.0, None) == (10.5, 11.0)
    assert take(11.0, 10.0, 2.0, 3.0, 0.0, None) == (10.0, 11.5)  # a burst of 3 lets it go now
    assert take(10.0, 10.0, 2.0, 1.0, 5.0, None) == (15.0, 15.5)  # not before 5 s
    assert take(20.0, 10.0, 2.0, 1.0, 0.0, 9.9) is None  # 10 s away: past max_wait


@pytest.mark.parametrize("tat", [1e308, float("inf"), float("nan"), 10.0 + HORIZON + 1])
def test_a_schedule_past_the_horizon_or_garbage_counts_as_empty(tat: float) -> None:
    assert take(tat, 10.0, 2.0, 1.0, 0.0, 30.0) == (10.0, 10.5)


def test_a_fixed_rate_paces_from_the_first_call_with_its_burst() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=10, burst=3), clock)
    waits = [p.wait for p in permits(bucket, 5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    assert bucket.rate() == 10
    bucket.feedback(Permit(0.0, 0), STATED)  # a fixed rate follows no one
    assert bucket.rate() == 10


def test_a_fixed_rate_never_grants_more_than_its_limit_with_retries_mixed_in() -> None:
    """200/s, burst 20, 16 callers whose retries ask for slots 0 to 0.3 s on: in any window
    of 1 s, at most 200 + 20 permits (the over-issue of the old limiter: 204 to 205 a second
    at its steady state)."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=200, burst=20), clock)
    rng = random.Random(7)
    slots: list[float] = []
    for _ in range(4000):
        clock.now += rng.expovariate(400)
        permit = bucket.acquire(rng.choice([0.0, 0.0, rng.uniform(0, 0.3)]), 30.0)
        assert isinstance(permit, Permit)
        slots.append(permit.at)
    slots.sort()
    for i, start in enumerate(slots):
        inside = bisect.bisect_left(slots, start + 1.0) - i
        assert inside <= 220, (start, inside)


def test_a_refused_permit_reserves_nothing() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=1), clock)
    permits(bucket, 2)
    tat = bucket.tat
    assert bucket.acquire(0.0, 0.5) is None
    assert bucket.tat == tat


def test_adaptive_is_dormant_and_lock_free_until_the_first_throttle() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    assert [bucket.acquire(0.0, None) for _ in range(3)] == [GO] * 3
    bucket.feedback(GO, OK)
    assert bucket.rate() is None
    assert not bucket.learning


def test_a_stated_limit_is_paced_at_from_the_first_throttle() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, STATED)
    assert bucket.rate() == pytest.approx(PACED)  # just below the limit: room for jitter
    assert bucket.learning
    # The server's bucket is empty now: the first slot is one interval on, then 15/s.
    waits = [p.wait for p in permits(bucket, 3)]
    assert waits == pytest.approx([1 / PACED, 2 / PACED, 3 / PACED])


def test_a_new_stated_limit_replaces_the_old_at_once() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, STATED)
    [permit] = permits(bucket, 1)
    bucket.feedback(permit, Signal(throttled=True, stated=30.0))
    assert bucket.rate() == pytest.approx(30.0 * (1 - MARGIN))


def test_throttles_at_the_stated_limit_cut_by_beta_once_a_round() -> None:
    """Another consumer shares the quota: at 15/s, 1 of 4 attempts gets through. Every
    process cuts by the same factor, whatever its share (equal cuts, equal rises: equal
    shares)."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, STATED)
    sent = permits(bucket, 8)
    bucket.feedback(sent[0], OK)
    bucket.feedback(sent[1], UNSTATED)
    bucket.feedback(sent[2], UNSTATED)
    assert bucket.rate() == pytest.approx(PACED)  # three attempts back: too few to cut on
    bucket.feedback(sent[3], UNSTATED)
    assert bucket.rate() == pytest.approx(PACED * BETA)
    for permit in sent[4:]:  # the rest of the old round: answered by that cut
        bucket.feedback(permit, UNSTATED)
    assert bucket.rate() == pytest.approx(PACED * BETA)


def test_a_paced_rate_rises_by_steps_of_the_stated_limit_and_never_above_it() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, STATED)
    sent = permits(bucket, 4)
    for permit in sent[:3]:
        bucket.feedback(permit, UNSTATED)
    bucket.feedback(sent[3], UNSTATED)
    low = bucket.rate()
    assert low is not None
    assert low < 15.0
    rates = []
    for _ in range(40):
        clock.now += RISE_EVERY / 2
        for permit in permits(bucket, 2):  # paced: the second waits
            bucket.feedback(permit, OK)
        rates.append(bucket.rate())
    assert rates[1] == pytest.approx(low + RISE * 15.0)
    assert max(r or 0 for r in rates) == pytest.approx(PACED)


def test_an_unstated_limit_is_learnt_from_the_initial_rate_doubling_then_cut() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(initial_rate=10), clock)
    bucket.feedback(GO, UNSTATED)
    assert bucket.rate() == 10
    clock.now += 3 * STEP
    assert bucket.rate() == pytest.approx(80)
    sent = permits(bucket, 10)
    for permit in sent[:5]:
        bucket.feedback(permit, OK)
    for permit in sent[5:]:
        bucket.feedback(permit, UNSTATED)
    cut = 80 * 5 / 6 * (1 - DIP)  # at the first throttle: 5 of 6 back got through (< BETA)
    assert bucket.rate() == pytest.approx(cut)
    clock.now += 100 * STEP
    assert bucket.rate() == pytest.approx(cut)  # no more doubling after a cut


def test_the_rate_never_falls_below_min_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(min_rate=2.0), clock)
    bucket.feedback(GO, STATED)
    for _ in range(30):
        sent = permits(bucket, SAMPLE)
        for permit in sent:
            bucket.feedback(permit, UNSTATED)
    assert bucket.rate() == 2.0


def test_a_cut_gives_the_waiters_of_the_old_round_new_slots_at_the_new_rate() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, Signal(throttled=True, stated=100.0))
    waiting = permits(bucket, 10)
    bucket.feedback(waiting[0], Signal(throttled=True, stated=10.0))  # a lower stated limit
    again = bucket.recheck(waiting[5], None)
    assert again is not waiting[5]
    assert again.rate == pytest.approx(10.0 * (1 - MARGIN))
    assert bucket.recheck(again, None) is again  # the current round: it goes


def test_a_rise_leaves_the_waiters_slots_alone() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, STATED)
    waiting = permits(bucket, 5)
    bucket.feedback(waiting[0], Signal(throttled=True, stated=30.0))  # a higher stated limit
    assert bucket.rate() == pytest.approx(30.0 * (1 - MARGIN))  # a new round, faster
    assert bucket.recheck(waiting[4], None) is waiting[4]


def test_a_learnt_rate_cuts_by_half_at_most_then_rises_by_itself() -> None:
    """No limit stated: the first cut goes to the share that got through, but not below half
    (1 of 4 through: half, not a quarter); paced with no throttle for `RISE_EVERY`, the rate
    rises by `RISE_LEARNT` of itself."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(initial_rate=10), clock)
    bucket.feedback(GO, UNSTATED)
    sent = permits(bucket, SAMPLE)
    bucket.feedback(sent[0], OK)
    for permit in sent[1:]:
        bucket.feedback(permit, UNSTATED)
    assert bucket.rate() == pytest.approx(5.0)
    clock.now += RISE_EVERY
    for permit in permits(bucket, 2):
        bucket.feedback(permit, OK)
    assert bucket.rate() == pytest.approx(5.0 * (1 + RISE_LEARNT))


def test_released_permits_give_their_slots_back_in_any_order() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=10), clock)
    start = bucket.tat
    first, *waiting = permits(bucket, 10)
    rng = random.Random(3)
    rng.shuffle(waiting)
    for permit in waiting:
        bucket.release(permit)
    assert bucket.tat == first.after  # as if only the first had been asked for
    bucket.release(first)  # due now: used (or about to be), nothing back
    assert bucket.tat == first.after != start


def test_a_release_never_lets_more_through_than_the_limit() -> None:
    """Random asks and releases at 20/s, burst 2: the permits kept never exceed 20 a second
    plus the burst in any window."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(per_second=20, burst=2), clock)
    rng = random.Random(11)
    kept: list[Permit] = []
    for _ in range(3000):
        clock.now += rng.expovariate(60)
        permit = bucket.acquire(0.0, 5.0)
        if not isinstance(permit, Permit):
            continue
        kept.append(permit)
        if rng.random() < 0.4:  # a caller gone: one of those still waiting
            gone = rng.choice(kept)
            if gone.at > clock.now:
                bucket.release(gone)
                kept.remove(gone)
    slots = sorted(p.at for p in kept)
    for i, start in enumerate(slots):
        assert bisect.bisect_left(slots, start + 1.0) - i <= 22


def test_a_quota_status_fails_fast_and_lets_one_probe_through_per_interval() -> None:
    clock = Clock()
    bucket = LocalBucket(RateLimit(quota_probe=60.0), clock)
    bucket.feedback(GO, Signal(quota=sc.CONN_EXCEED_HOURLY_LIMIT))
    refused = bucket.acquire(0.0, None)
    assert refused == Quota(sc.CONN_EXCEED_HOURLY_LIMIT, 60.0)
    clock.now += 60.0
    probe = bucket.acquire(0.0, None)
    assert probe == GO  # the probe (the rate is dormant)
    assert isinstance(bucket.acquire(0.0, None), Quota)  # one probe per interval
    assert bucket.learning  # a success has a quota to lift
    bucket.feedback(probe, OK)
    assert bucket.acquire(0.0, None) == GO


def test_quota_probe_none_turns_the_breaker_off() -> None:
    bucket = LocalBucket(RateLimit(quota_probe=None), Clock())
    bucket.feedback(GO, Signal(quota=sc.CONN_EXCEED_MONTHLY_LIMIT))
    assert bucket.acquire(0.0, None) == GO


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("exceeded limit of 15 requests per second", 15.0),
        ("Exceeded LIMIT of 2.5 request/s", 2.5),
        ("rate limit 30 req per sec", 30.0),
        ("limit of 0 requests per second", None),
        ("limit of 1e308 requests per second", None),
        ("limit of 99999999 requests per second", None),
        ("Making too many requests", None),
        ("x" * 10_000 + " exceeded limit of 15 requests per second", None),
        (None, None),
    ],
)
def test_a_stated_limit_is_read_leniently_and_bounded(text: Any, limit: float | None) -> None:
    assert stated_limit(text) == limit


def test_a_throttle_response_states_its_limit_in_details_or_description() -> None:
    response = throttled()
    assert read(response, True) == Signal(throttled=True, stated=15.0)
    assert read(response, False) == OK  # the policy's verdict decides what a throttle is
    response.status.description, response.status.details = (
        "",
        "exceeded limit of 7 requests per second",
    )
    assert read(response, True).stated == 7.0
    quota = service_pb2.MultiModelResponse()
    quota.status.code = sc.CONN_EXCEEDS_LIMITS
    assert read(quota, False) == Signal(quota=sc.CONN_EXCEEDS_LIMITS)


def test_a_simulated_fleet_at_a_stated_limit_shares_it_fairly() -> None:
    """4 processes x 16 callers against a server GCRA at 15/s, burst 15, that states its
    limit, on a fake clock for 40 s, four seeds: the limit is used, and throttles are rare
    after the cold start (a dormant wave of 64 calls at once is throttled whatever the
    limiter). Fairness varies with the seed (0.66 to 0.99: a process whose slots land just
    after the server's refill keeps winning): the median is held, not every seed."""
    runs = [simulate(4, 16, 15.0, 15.0, 40.0, seed) for seed in range(4)]
    assert min(r["goodput"] for r in runs) >= 0.97
    assert max(r["late_attempts_per_success"] for r in runs) <= 1.1
    assert statistics.median(r["jain"] for r in runs) >= 0.9


def simulate(
    processes: int,
    callers: int,
    rate: float,
    burst: float,
    seconds: float,
    seed: int = 0,
    *,
    stated: bool = True,
) -> dict[str, float]:
    clock = Clock()
    clock.now = 0.0
    buckets = [LocalBucket(RateLimit(), clock) for _ in range(processes)]
    events: list[tuple[float, int, int, str, Any]] = []
    order = itertools.count()
    for p in range(processes):
        for c in range(callers):
            heapq.heappush(events, (c * 1e-4, next(order), p, "call", None))
    server = [0.0]
    rng = random.Random(seed)
    counts = {"ok": 0, "attempts": 0, "late_ok": 0, "late_attempts": 0}
    per = [0] * processes
    while events:
        now, _, p, kind, permit = heapq.heappop(events)
        if now > seconds:
            break
        clock.now = now
        bucket = buckets[p]
        if kind == "call":
            got = bucket.acquire(0.0, 30.0)
            assert isinstance(got, Permit)
            heapq.heappush(events, (now + got.wait, next(order), p, "send", got))
        elif kind == "send":
            again = bucket.recheck(permit, 30.0)
            if again is not permit:
                heapq.heappush(events, (now + again.wait, next(order), p, "send", again))
                continue
            now += rng.uniform(0.001, 0.01)  # the network's delay, never the same twice
            late = now > min(10.0, seconds / 4)
            counts["attempts"] += 1
            counts["late_attempts"] += late
            tat = max(server[0], now)
            if tat - (burst - 1) / rate <= now:
                server[0] = tat + 1 / rate
                bucket.feedback(permit, OK)
                counts["ok"] += 1
                counts["late_ok"] += late
                per[p] += 1
            else:
                bucket.feedback(permit, Signal(throttled=True, stated=rate if stated else None))
            heapq.heappush(events, (now + rng.uniform(0.001, 0.01), next(order), p, "call", None))
    return {
        "goodput": counts["ok"] / seconds / rate,
        "jain": sum(per) ** 2 / (processes * sum(x * x for x in per)),
        "late_attempts_per_success": counts["late_attempts"] / counts["late_ok"],
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_second", 0),
        ("per_second", -1),
        ("per_second", float("nan")),
        ("per_second", float("inf")),
        ("per_second", True),
        ("per_second", "15"),
        ("per_second", 1e-300),  # its interval overflowed timers (OverflowError)
        ("per_second", 1e300),
        ("max_wait", 1e300),
        ("quota_probe", 0),
        ("quota_probe", float("inf")),
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
        ours = bucket_of(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
        theirs = bucket_of(_limiter.DEFAULT_RATE_LIMIT, OTHER_CREDS.secret.reveal(), fake.target)
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
    interceptor = ClarifaiInterceptor(PAT_CREDS, target=fake.target, **kwargs)
    yield "interceptor", grpc.intercept_channel(raw, interceptor)
    raw2 = grpc.insecure_channel(fake.target)
    yield "wrapper", wrap_channel(raw2, PAT_CREDS, target=fake.target, **kwargs)
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
            bucket = bucket_of(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
            deadline = time.monotonic() + T  # a future's done-callback runs on gRPC's thread
            while bucket.rate() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bucket.rate() == pytest.approx(PACED), (name, how)  # the limit stated


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
    bucket = bucket_of(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
    assert bucket.rate() is not None  # learning from the initial rate: nothing stated


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
    bucket = bucket_of(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
    assert bucket.rate() == pytest.approx(PACED)  # the limit the throttle stated, read on aio


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


# -- quotas and stated limits through real calls ----------------------------------------------


def quota_reply() -> service_pb2.MultiModelResponse:
    response = service_pb2.MultiModelResponse()
    response.status.code = sc.CONN_EXCEED_HOURLY_LIMIT
    response.status.description = "hourly limit exceeded"
    return response


def test_a_quota_status_makes_later_calls_fail_fast_without_reaching_the_server(
    fake: FakeClarifai,
) -> None:
    _limiter._reset()
    fake.script(METHOD, Reply(quota_reply()))
    for name, channel in sync_channels(fake, retry=FAST):
        stub = service_pb2_grpc.V2Stub(channel)
        if name == "interceptor":
            answer = stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
            assert answer.status.code == sc.CONN_EXCEED_HOURLY_LIMIT  # never retried
        with pytest.raises(QuotaExceededError) as caught:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        error = caught.value
        assert isinstance(error, grpc.RpcError)
        assert error.code() == EXHAUSTED
        assert "CONN_EXCEED_HOURLY_LIMIT" in error.details()
        assert "next probe" in error.details()
        assert call_outcome(error).attempts == 0
        channel.close()
    assert len(fake.calls_to(METHOD)) == 1  # only the call that got the quota status


@pytest.mark.asyncio
async def test_aio_quota_fails_fast_and_a_probe_success_lifts_it(fake: FakeClarifai) -> None:
    _limiter._reset()
    fake.script(METHOD, Reply(quota_reply()))
    limit = RateLimit(quota_probe=0.2)
    async with cia.insecure_channel(
        fake.target, PAT_CREDS, retry=FAST, rate_limit=limit
    ) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        first = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert first.status.code == sc.CONN_EXCEED_HOURLY_LIMIT
        with pytest.raises(QuotaExceededError):
            await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        await asyncio.sleep(0.25)  # the probe's turn: it succeeds (the fake's default)
        probe = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert probe.status.code == sc.SUCCESS
        again = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert again.status.code == sc.SUCCESS
    assert len(fake.calls_to(METHOD)) == 3


def test_a_stated_limit_paces_every_later_call(fake: FakeClarifai) -> None:
    """A throttle stating 20 requests/s: 10 calls after it take about half a second."""
    _limiter._reset()
    limited = throttled()
    limited.status.description = "Making too many requests"
    limited.status.details = "exceeded limit of 20 requests per second"
    fake.script(METHOD, Reply(limited))
    channel = insecure_channel(fake.target, PAT_CREDS, retry=FAST)
    try:
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)  # throttled, then retried
        started = time.monotonic()
        for _ in range(10):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        took = time.monotonic() - started
    finally:
        channel.close()
    assert took >= 9 / 20 * 0.9  # paced at 20/s (a lower bound: a slow machine only adds)
    bucket = bucket_of(_limiter.DEFAULT_RATE_LIMIT, PAT_CREDS.secret.reveal(), fake.target)
    assert bucket.rate() == pytest.approx(20 * (1 - MARGIN))


# -- hostile values and a hostile store -------------------------------------------------------


def test_a_far_off_timer_never_kills_the_shared_timer_thread() -> None:
    """A wait of 1e300 s (a rate of 1e-300/s once made one) sleeps in steps: the thread lives
    on and runs the next job."""
    from clarifai_interceptor import _scheduler  # noqa: PLC0415

    far = _scheduler.call_later(1e300, lambda: None)
    ran = threading.Event()
    _scheduler.call_later(0.01, ran.set)
    assert ran.wait(T)
    far.cancel()
    again = threading.Event()
    _scheduler.call_later(0.01, again.set)
    assert again.wait(T)


class _RaisingStore:
    """A user's `Store` that fails."""

    def bucket(self, key: str, limit: RateLimit) -> _limiter.Bucket:
        raise RuntimeError("the store is down")


def test_a_store_that_raises_has_no_secret_in_its_traceback_frames(fake: FakeClarifai) -> None:
    """The channel's credentials are revealed only to hash them: no frame of the package
    holds the plain secret when a user's `Store` raises (a caller's own header is its own
    argument, in gRPC's frames too: not covered)."""
    _limiter._reset()
    limit = RateLimit(store=_RaisingStore())
    channel = insecure_channel(fake.target, PAT_CREDS, retry=FAST, rate_limit=limit)
    secret = PAT_CREDS.secret.reveal()
    try:
        with pytest.raises(RuntimeError, match="the store is down") as caught:
            service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)
    finally:
        channel.close()
    tb = caught.value.__traceback__
    frames = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        if code is not test_a_store_that_raises_has_no_secret_in_its_traceback_frames.__code__:
            frames += 1  # (this test's own frame holds the secret, to compare with)
            for name, value in tb.tb_frame.f_locals.items():
                assert secret not in repr(value), (code.co_name, name)
        tb = tb.tb_next
    assert frames > 2  # the walk saw the package's frames, not only the test's


def test_a_learnt_rate_starts_at_the_rate_the_process_sent_at_while_dormant() -> None:
    """40 calls in 0.5 s, then a throttle that states nothing: the rate starts at 80/s, not
    at initial_rate (64 callers once spent 4 s on slots reserved at 15/s)."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(initial_rate=15), clock)
    for _ in range(40):
        assert bucket.acquire(0.0, None) == GO
        clock.now += 0.5 / 40
    bucket.feedback(GO, UNSTATED)
    assert bucket.rate() == pytest.approx(80.0)


def test_a_stated_limit_is_paced_just_below_it() -> None:
    """At exactly the limit the server's bucket, empty after the first wave, never refills,
    and the network's jitter is throttled."""
    clock = Clock()
    bucket = LocalBucket(RateLimit(), clock)
    bucket.feedback(GO, Signal(throttled=True, stated=200.0))
    rate = bucket.rate()
    assert rate is not None
    assert 0.98 * 200 <= rate < 200
