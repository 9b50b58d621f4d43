"""The retry budget seen through calls: shared by the calls, threads and tasks of one channel,
not between channels; it bounds attempts under an outage and refills after successes."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from contextlib import suppress
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2_grpc
from conftest import FAST, AioPath, Path, T
from helpers import (
    AIO_PATHS,
    SUCCESS,
    UNAVAILABLE,
    UNLIMITED,
    aio_generate,
    aio_stub,
    attempt_headers,
    budgeted_attempts,
    list_models,
    output,
    predict_request,
    read_all,
    report,
)

from clarifai_interceptor import RetryBudget, RetryPolicy, use_retry
from clarifai_interceptor.testing import FakeClarifai, Stream

#: gRPC's own budget (gRFC A6's example): 10 tokens, 0.1 back per success.
GRPC_BUDGET = RetryBudget(max_tokens=10, token_ratio=0.1)


def retries_a_full_bucket_allows(budget: RetryBudget) -> int:
    """Retries a full bucket allows before it stops them, with no success in between.

    The rule (`TokenBucket`): each retryable failure takes a token *before* the decision; a
    retry is made only while the bucket then holds more than ``max_tokens / 2``. So failure k
    (k = 1, 2, ...) leaves ``max_tokens - k`` and is retried while that exceeds half. This holds
    under concurrency too: each retry decision follows its own failure's token, so the r-th
    retry (in order of decision) sees at most ``max_tokens - r`` tokens.
    """
    tokens, retries = float(budget.max_tokens), 0
    while tokens - 1.0 > budget.max_tokens / 2:
        tokens -= 1.0
        retries += 1
    return retries


def after_success(tokens: float, budget: RetryBudget) -> float:
    """The bucket after a success: ``token_ratio`` back, up to ``max_tokens``."""
    return min(float(budget.max_tokens), tokens + budget.token_ratio)


def successes_until_a_retry(tokens: float, budget: RetryBudget) -> int:
    """Successes until the next retryable failure would be retried (it takes a token first)."""
    count = 0
    while not tokens - 1.0 > budget.max_tokens / 2:
        tokens = after_success(tokens, budget)
        count += 1
    return count


def failing_calls(stub: Any, count: int) -> None:
    for _ in range(count):
        with pytest.raises(grpc.RpcError) as info:
            list_models(stub)
        assert info.value.code() is UNAVAILABLE


def test_retry_budget_is_shared_by_the_calls_of_one_channel(path: Path, fake: FakeClarifai) -> None:
    # gRPC's budget: 10 tokens, a retryable failure takes one, no retry at 5 or fewer.
    channel = path.channel(retry=RetryPolicy(initial_backoff=0, jitter=0, budget=GRPC_BUDGET))
    stub = service_pb2_grpc.V2Stub(channel)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.PostModelOutputs(predict_request(), timeout=T)
    with pytest.raises(grpc.RpcError):
        next(stub.GenerateModelOutputs(predict_request(), timeout=T))
    # 5 attempts (tokens 10 -> 5), then one each: the budget is spent for every call kind.
    assert len(fake.calls_to("PostModelOutputs")) == 5 + 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1
    # Another channel has its own budget.
    fake.clear()
    with pytest.raises(grpc.RpcError):
        path.stub(
            retry=RetryPolicy(initial_backoff=0, jitter=0, budget=GRPC_BUDGET)
        ).PostModelOutputs(predict_request(), timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 5


@pytest.mark.asyncio
async def test_the_four_kinds_share_one_retry_budget(aio_path: AioPath, fake: FakeClarifai) -> None:
    # Four tokens: a retryable failure takes one, and retries stop at half the bucket or less.
    policy = dataclasses.replace(FAST, budget=RetryBudget(max_tokens=4, token_ratio=0))
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    fake.script("GenerateModelOutputs", UNAVAILABLE, Stream([output("not reached")]))
    async with aio_path.stub(retry=policy) as stub:
        with pytest.raises(grpc.RpcError):
            await stub.PostModelOutputs(predict_request(), timeout=T)
        # 4 -> 3 (retried) -> 2 (stop): the unary call made two attempts...
        assert len(fake.calls_to("PostModelOutputs")) == 2
        # ...and left the stream, of another kind, no budget for a retry of its own.
        with pytest.raises(grpc.RpcError) as failure:
            await read_all(aio_generate(stub))
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


def test_budget_bounds_attempts_under_an_outage_and_refills_after(
    path: Path, fake: FakeClarifai
) -> None:
    budget = RetryBudget()
    assert (budget.max_tokens, budget.token_ratio) == (100, 0.2)
    stub = path.stub()  # FAST: the default policy and budget, waits zeroed
    fake.set_default("ListModels", UNAVAILABLE)
    failing_calls(stub, 200)
    attempts = len(fake.calls_to("ListModels"))
    bound = 200 + retries_a_full_bucket_allows(budget)
    assert retries_a_full_bucket_allows(budget) == 49
    # The first 10 calls make 5 attempts each (100 -> 50 tokens: 4 retries each, max_attempts
    # is 5); every later call one. Without a budget it would be 200 * 5 = 1000.
    assert attempts == budgeted_attempts(budget, 200) == 240 <= bound
    assert attempt_headers(fake.calls_to("ListModels"))[:6] == [None, "1", "2", "3", "4", None]

    # The server recovers. The bucket is empty: count the successes that refill it.
    fake.clear()
    fake.set_default("ListModels", SUCCESS)
    tokens = 0.0
    needed = successes_until_a_retry(tokens, budget)
    for _ in range(needed - 1):
        list_models(stub)
        tokens = after_success(tokens, budget)
    fake.script("ListModels", UNAVAILABLE)  # one success short: not retried
    failing_calls(stub, 1)
    tokens = max(0.0, tokens - 1.0)
    assert attempt_headers(fake.calls_to("ListModels"))[-1:] == [None]
    more = successes_until_a_retry(tokens, budget)
    for _ in range(more):
        list_models(stub)
    fake.clear()
    fake.script("ListModels", UNAVAILABLE)  # now a transient failure is retried again
    assert list_models(stub).status.code == SUCCESS
    assert attempt_headers(fake.calls_to("ListModels")) == [None, "1"]
    report(
        f"budget ({path.kind}): 200 calls, server always UNAVAILABLE: {attempts} attempts "
        f"(bound 200 + {bound - 200} = {bound}; no budget: 1000)",
        f"budget ({path.kind}): retries resumed after {needed - 1} successes + 1 unretried "
        f"failure + {more} successes (each success gives back {budget.token_ratio})",
    )


def test_one_failed_call_leaves_the_next_calls_their_retries(
    path: Path, fake: FakeClarifai
) -> None:
    """With the default budget, a call that failed all its attempts does not stop the retry of
    the next call's one transient failure (gRPC's own 10 tokens, 0.1 back, did: 10 -> 5)."""
    stub = path.stub()
    fake.set_default("ListModels", UNAVAILABLE)
    failing_calls(stub, 1)
    assert len(fake.calls_to("ListModels")) == 5
    fake.clear()
    fake.set_default("ListModels", SUCCESS)
    fake.script("ListModels", UNAVAILABLE)  # a blip: one failure, then the default
    assert list_models(stub).status.code == SUCCESS
    assert attempt_headers(fake.calls_to("ListModels")) == [None, "1"]


def test_without_a_budget_every_call_makes_max_attempts(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub(retry=UNLIMITED)
    fake.set_default("ListModels", UNAVAILABLE)
    failing_calls(stub, 20)
    assert len(fake.calls_to("ListModels")) == 20 * UNLIMITED.max_attempts


def test_budget_is_shared_by_threads_on_one_channel(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub()
    fake.set_default("ListModels", UNAVAILABLE)
    threads = [threading.Thread(target=failing_calls, args=(stub, 25)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=T)
    assert not any(thread.is_alive() for thread in threads)
    attempts = len(fake.calls_to("ListModels"))
    # One bucket for the 8 threads: 200 first attempts and at most 4 retries in all (a bucket
    # per thread would allow 8 * 4).
    assert 200 <= attempts <= 200 + retries_a_full_bucket_allows(RetryBudget())
    report(f"budget ({path.kind}): 8 threads x 25 calls on one channel: {attempts} attempts")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_budget_is_shared_by_concurrent_aio_tasks(kind: str, fake: FakeClarifai) -> None:
    fake.set_default("ListModels", UNAVAILABLE)
    async with aio_stub(kind, fake.target) as stub:
        outcomes = await asyncio.gather(
            *(list_models(stub) for _ in range(200)), return_exceptions=True
        )
    assert all(isinstance(o, grpc.RpcError) and o.code() is UNAVAILABLE for o in outcomes)
    attempts = len(fake.calls_to("ListModels"))
    assert 200 <= attempts <= 200 + retries_a_full_bucket_allows(RetryBudget())
    report(f"budget ({kind}): 200 concurrent tasks, always UNAVAILABLE: {attempts} attempts")


def test_single_attempt_calls_spend_the_budget_alike_on_every_front_end(
    fake: FakeClarifai,
) -> None:
    # 10 failures under use_retry(None), then a transient failure with the default policy:
    # retried only if those 10 left the channel's bucket full.
    def unretried_failures() -> None:
        fake.clear()
        fake.set_default("ListModels", UNAVAILABLE)

    def then_one_transient_failure() -> None:
        fake.clear()
        fake.script("ListModels", UNAVAILABLE, SUCCESS)

    verdicts = {}
    for kind in ("interceptor", "wrapper"):
        built = Path(kind, fake.target)
        stub = built.stub()
        unretried_failures()
        with use_retry(None):
            for _ in range(10):
                with suppress(grpc.RpcError):
                    list_models(stub)
        then_one_transient_failure()
        with suppress(grpc.RpcError):
            list_models(stub)
        verdicts[kind] = len(fake.calls_to("ListModels")) == 2
        built.close()

    async def aio_verdict(kind: str) -> bool:
        async with aio_stub(kind, fake.target) as stub:
            unretried_failures()
            with use_retry(None):
                for _ in range(10):
                    with suppress(grpc.RpcError):
                        await list_models(stub)
            then_one_transient_failure()
            with suppress(grpc.RpcError):
                await list_models(stub)
            return len(fake.calls_to("ListModels")) == 2

    for kind in AIO_PATHS:
        verdicts[kind] = asyncio.run(aio_verdict(kind))
    report(f"budget after 10 failures under use_retry(None), next failure retried: {verdicts}")
    assert len(set(verdicts.values())) == 1, verdicts


def test_budget_is_not_shared_between_channels(path: Path, fake: FakeClarifai) -> None:
    fake.set_default("ListModels", UNAVAILABLE)
    first, second = path.stub(), path.stub()
    failing_calls(first, 100)
    assert len(fake.calls_to("ListModels")) == budgeted_attempts(RetryBudget(), 100) == 140
    fake.clear()
    failing_calls(second, 100)  # a full bucket of its own
    assert len(fake.calls_to("ListModels")) == 140
    fake.clear()
    failing_calls(first, 10)  # the first channel's bucket is still empty
    assert len(fake.calls_to("ListModels")) == 10
