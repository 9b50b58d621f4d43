"""Deadlines bound retries: no wait runs past the policy's timeout or the call's, each attempt
gets only the time left, and no failure pattern overruns the deadline on any front end."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import grpc
import pytest
from conftest import FAST, AioPath, Path, T
from helpers import (
    AIO_PATHS,
    SUCCESS,
    THROTTLED,
    UNAVAILABLE,
    UNLIMITED,
    WARM_UP_TRIES,
    aio_generate,
    aio_stub,
    aio_warm_up,
    call_style,
    ids,
    list_models,
    output,
    predict_request,
    pushback_fail,
    read_all,
    report,
    warm_up,
)

from clarifai_interceptor import Credentials, RetryPolicy
from clarifai_interceptor.testing import Delay, FakeClarifai, Reply, Stream

DEADLINE = 0.4

#: The overshoot allowed past the deadline.
MARGIN = 0.05

#: No single run may overshoot this much, however loaded the machine: N attempts' worth of
#: timeouts (pitfall 8 of CLARIFAI.md) would be seconds past.
GROSS = 1.0

#: Overshoot (elapsed - deadline) of every first measurement, for the closing figure.
OVERSHOOTS: list[float] = []

PATTERNS: dict[str, tuple[list[Any], RetryPolicy]] = {
    "UNAVAILABLE x20, backoff 0.05 s": (
        [UNAVAILABLE] * 20,
        dataclasses.replace(UNLIMITED, max_attempts=20, initial_backoff=0.05, multiplier=1),
    ),
    "CONN_THROTTLED x20, backoff 0.03 s x1.5, jitter 0.2": (
        [THROTTLED] * 20,
        dataclasses.replace(
            UNLIMITED, max_attempts=20, initial_backoff=0.03, multiplier=1.5, jitter=0.2
        ),
    ),
    "Delay 0.15 s then UNAVAILABLE, x5": (
        [Delay(0.15, UNAVAILABLE)] * 5,
        dataclasses.replace(UNLIMITED, max_attempts=5),
    ),
    "pushback 120 ms x5": ([pushback_fail("120")] * 5, UNLIMITED),
    "mixed: UNAVAILABLE, Delay 0.1 s then CONN_THROTTLED, pushback 100 ms, Delay 5 s": (
        [UNAVAILABLE, Delay(0.1, THROTTLED), pushback_fail("100"), Delay(5, SUCCESS)],
        UNLIMITED,
    ),
    "one slow success: Delay 5 s": ([Delay(5, SUCCESS)], UNLIMITED),
    "UNAVAILABLE x5 with the default budget, backoff 0.3 s": (
        [UNAVAILABLE] * 5,
        dataclasses.replace(FAST, initial_backoff=0.3, jitter=0),
    ),
}

_RUNS = itertools.count()


def _own_secret() -> Credentials:
    """Credentials no other run shares: runs in parallel must not pace one another through one
    rate-limit bucket (a pushback pattern wakes the adaptive limiter), this test is about
    deadlines."""
    return Credentials.from_api_key(f"fake-deadline-key-{next(_RUNS)}")


#: A warm-up call (it connects the channel; it is not measured) that gets no answer in this
#: long is given up: the run starts again on a new fake and channel, up to `WARM_UP_TRIES`
#: times. A fresh start also gets past a stuck connection, which a second call on the same
#: channel would not.
WARM_UP = T / 2


def afresh(run: Callable[[], float]) -> float:
    """``run()``, started again if its warm-up timed out (measured calls raise nothing)."""
    for _ in range(WARM_UP_TRIES - 1):
        try:
            return run()
        except grpc.RpcError as exc:  # noqa: PERF203 (a warm-up timed out: start afresh)
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            report(f"a warm-up got no answer in {WARM_UP} s: the run starts afresh")
    return run()


def sync_run(
    kind: str, style: str, outcomes: list[Any], retry: RetryPolicy, timeout: float
) -> float:
    """Seconds one call in ``style`` on a new ``kind`` channel takes against ``outcomes``."""
    with FakeClarifai() as fake:
        built = Path(kind, fake.target)
        try:
            stub = built.stub(_own_secret(), retry=retry)
            warm_up(stub, fake, tries=1, timeout=WARM_UP)
            fake.script("ListModels", *outcomes)
            started = time.monotonic()
            with suppress(grpc.RpcError):
                call_style(stub, style, timeout=timeout)
            return time.monotonic() - started
        finally:
            built.close()


def aio_run(kind: str, outcomes: list[Any], retry: RetryPolicy, timeout: float) -> float:
    """As `sync_run`, for one aio call."""
    with FakeClarifai() as fake:
        return asyncio.run(aio_call(fake, kind, outcomes, retry, timeout))


async def aio_call(
    fake: FakeClarifai, kind: str, outcomes: list[Any], retry: RetryPolicy, timeout: float
) -> float:
    async with aio_stub(kind, fake.target, _own_secret(), retry=retry) as stub:
        await aio_warm_up(stub, fake, tries=1, timeout=WARM_UP)
        fake.script("ListModels", *outcomes)
        started = time.monotonic()
        with suppress(grpc.RpcError):
            await list_models(stub, timeout=timeout)
        return time.monotonic() - started


def test_no_wait_runs_past_the_policy_timeout(path: Path, fake: FakeClarifai) -> None:
    # Waits 0.3 s then 0.6 s: the second would end past the 0.5 s budget, so retries stop.
    policy = RetryPolicy(initial_backoff=0.3, multiplier=2.0, jitter=0, timeout=0.5)
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=T)
    elapsed = time.monotonic() - started
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("PostModelOutputs")) == 2
    assert elapsed < 3  # all five attempts would wait 0.3 + 0.6 + 1.2 + 2.4 s


@pytest.mark.asyncio
async def test_no_wait_runs_past_the_policy_timeout_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    # Waits 0.5 s then 1 s: the second would end past the 1.2 s budget, so retries stop.
    policy = RetryPolicy(initial_backoff=0.5, multiplier=2.0, jitter=0, timeout=1.2)
    async with aio_path.stub(retry=policy) as stub:
        await aio_warm_up(stub, fake)
        fake.set_default("PostModelOutputs", UNAVAILABLE)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request(), timeout=T)
        elapsed = time.monotonic() - started
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("PostModelOutputs")) == 2
    assert elapsed < 5  # all five attempts would wait 0.5 + 1 + 2 + 4 s


def test_call_timeout_bounds_all_attempts_and_waits(path: Path, fake: FakeClarifai) -> None:
    # Attempts at 0, 0.2 and 0.4 s; a third 0.2 s wait would end past the call's 0.5 s, so the
    # retries stop there and the caller gets the last real outcome. (No budget: it would stop
    # the retries first, and this test is about the deadline.)
    policy = RetryPolicy(
        max_attempts=1000,
        initial_backoff=0.2,
        multiplier=1.0,
        jitter=0,
        timeout=None,
        budget=None,
    )
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=0.5)
    elapsed = time.monotonic() - started
    # Not DEADLINE_EXCEEDED: no wait ran into the deadline and left an attempt no time.
    assert failure.value.code() is UNAVAILABLE
    assert 2 <= len(fake.calls_to("PostModelOutputs")) <= 3
    assert elapsed < 3  # 1000 attempts would take 200 s


@pytest.mark.asyncio
async def test_total_timeout_bounds_a_retried_attempt_that_hangs(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    # Without a per-attempt deadline the second attempt would wait T s and then succeed.
    policy = RetryPolicy(initial_backoff=0.3, jitter=0, total_timeout=1.0)
    fake.script("PostModelOutputs", UNAVAILABLE, Delay(T, Reply(output("too late"))))
    async with aio_path.stub(retry=policy) as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request())
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(fake.calls_to("PostModelOutputs")) == 2


@pytest.mark.parametrize(
    ("policy", "timeout"),
    [
        (RetryPolicy(initial_backoff=0, jitter=0, total_timeout=0.5), T),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=None), 0.5),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=30), 0.5),
    ],
    ids=["total_timeout", "call_timeout", "call_timeout_shorter"],
)
def test_each_attempt_gets_only_the_time_left(
    path: Path, fake: FakeClarifai, policy: RetryPolicy, timeout: float
) -> None:
    # Each attempt takes 0.3 s: the second has only 0.2 s left and runs out of time. A timeout
    # re-applied to every attempt would instead give five UNAVAILABLE attempts (1.5 s).
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", Delay(0.3, UNAVAILABLE))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=timeout)
    elapsed = time.monotonic() - started
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Two attempts fit; on a loaded machine the first may already use up the 0.5 s.
    assert len(fake.calls_to("PostModelOutputs")) in (1, 2)
    assert elapsed < 3


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "timeout"),
    [
        (RetryPolicy(initial_backoff=0, jitter=0, total_timeout=1.0), T),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=None), 1.0),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=30), 1.0),
    ],
    ids=["total_timeout", "call_timeout", "call_timeout_shorter"],
)
async def test_each_attempt_gets_only_the_time_left_on_aio(
    aio_path: AioPath, fake: FakeClarifai, policy: RetryPolicy, timeout: float
) -> None:
    # Each attempt takes 0.6 s: the second has only 0.4 s left and runs out of time. A timeout
    # re-applied to every attempt would instead give five UNAVAILABLE attempts (3 s).
    async with aio_path.stub(retry=policy) as stub:
        await aio_warm_up(stub, fake)
        fake.set_default("PostModelOutputs", Delay(0.6, UNAVAILABLE))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request(), timeout=timeout)
        elapsed = time.monotonic() - started
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Two attempts fit; on a loaded machine the first may already use up the 1 s.
    assert len(fake.calls_to("PostModelOutputs")) in (1, 2)
    assert elapsed < 2.9


@pytest.mark.asyncio
async def test_the_callers_timeout_bounds_a_stream_and_the_policy_only_its_retries(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    policy = RetryPolicy(initial_backoff=0, jitter=0, timeout=0.3)
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Delay(0.8, Stream([output("slow but in time")])),
        Delay(T, Stream([output("too late")])),
    )
    async with aio_path.stub(retry=policy) as stub:
        # The stream outlives the policy's 0.3 s: only the caller's timeout ends a stream.
        assert ids(await read_all(aio_generate(stub))) == ["slow but in time"]
        with pytest.raises(grpc.RpcError) as failure:
            await read_all(aio_generate(stub, timeout=0.5))
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(fake.calls_to("GenerateModelOutputs")) == 3


def test_pushback_beyond_the_deadline_stops_instead_of_waiting(
    path: Path, fake: FakeClarifai
) -> None:
    stub = path.stub()
    warm_up(stub, fake)
    fake.script("ListModels", pushback_fail("5000"), SUCCESS)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list_models(stub, timeout=2.0)
    elapsed = time.monotonic() - started
    assert info.value.code() is UNAVAILABLE
    assert elapsed < 1.5  # it did not wait (5 s), nor run into the deadline (2 s)
    assert len(fake.calls_to("ListModels")) == 1


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_no_failure_pattern_overruns_the_call_deadline(pattern: str) -> None:
    """Every call path and deadline source ends by the deadline + `MARGIN`.

    This 2-core machine is shared: another process can stall a thread for a few hundred ms
    (measured up to +250 ms on runs that were otherwise at +2 to +5 ms). A run over the margin
    is measured again, up to twice; the best of three must be within it, and no run at all may
    be grossly late. A real overrun (a wait past the deadline, a timeout per attempt) is late
    every time. The first measurements run at once (each against its own server), the
    measurements again one by one.
    """
    outcomes, policy = PATTERNS[pattern]
    runs: dict[str, Callable[[], float]] = {}
    for source in ("call timeout", "total_timeout"):
        if source == "call timeout":
            retry, timeout = policy, DEADLINE
        else:
            retry, timeout = dataclasses.replace(policy, total_timeout=DEADLINE), T
        for kind in ("interceptor", "wrapper"):
            for style in ("call", "future"):
                runs[f"{kind} {style}, {source}"] = functools.partial(
                    afresh, functools.partial(sync_run, kind, style, outcomes, retry, timeout)
                )
        for kind in AIO_PATHS:
            runs[f"{kind}, {source}"] = functools.partial(
                afresh, functools.partial(aio_run, kind, outcomes, retry, timeout)
            )
    with ThreadPoolExecutor(len(runs)) as pool:
        started = {name: pool.submit(run) for name, run in runs.items()}
        # Generous: only a hang exceeds it (three fresh starts whose warm-ups all time out).
        measured = {name: future.result(timeout=4 * T) for name, future in started.items()}
    first: dict[str, float] = {}
    best: dict[str, float] = {}
    again = 0
    for name, run in runs.items():
        overshoots = [measured[name] - DEADLINE]
        while overshoots[-1] > MARGIN and len(overshoots) < 3:
            overshoots.append(run() - DEADLINE)
            again += 1
        assert max(overshoots) <= GROSS, (name, overshoots)
        first[name], best[name] = overshoots[0], min(overshoots)
    OVERSHOOTS.extend(first.values())
    worst = max(first, key=lambda name: first[name])
    report(
        f"deadline {DEADLINE} s, {pattern}: overshoot {min(first.values()) * 1000:+.1f} to "
        f"{first[worst] * 1000:+.1f} ms (worst: {worst}); {again} run(s) measured again; "
        f"max overshoot so far {max(OVERSHOOTS) * 1000:+.1f} ms"
    )
    assert all(overshoot <= MARGIN for overshoot in best.values()), best
