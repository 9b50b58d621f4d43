"""Reliability and security evidence (issue 5), on the sync paths and, where it matters, aio.

Retry budget, server pushback, the attempt header, credential rotation, metadata validation,
faults survived against a server in another process, deadlines under every failure pattern,
credential isolation under load, secrets kept, and the soak script. Every test drives real gRPC
against a real server (`FakeClarifai`, in this process or in a child process) and asserts on
what the server recorded. The figures are printed: run with ``-s`` to see them.

Secrets are obviously fake. Retry waits are zero unless a test is about waits; every call has a
timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path as FsPath
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, Path, T
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from clarifai_interceptor import (
    Credentials,
    CredentialsProviderError,
    RetryBudget,
    RetryPolicy,
    aio,
    use_credentials,
    use_retry,
)
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, RecordedCall

SUCCESS = status_code_pb2.SUCCESS
THROTTLED = status_code_pb2.CONN_THROTTLED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
PUSHBACK = "grpc-retry-pushback-ms"
ATTEMPT = "x-retry-attempt"
#: The default policy with zero waits and no retry budget: only max_attempts limits retries.
UNLIMITED = dataclasses.replace(FAST, budget=None)
AIO_PATHS = ("aio-channel", "aio-interceptors")
ROOT = FsPath(__file__).resolve().parent.parent


def report(*lines: str) -> None:
    """Print figures (shown with ``pytest -s``)."""
    print("\n".join(lines))  # noqa: T201 (the figures are part of the evidence)


def list_models(stub: Any, **kwargs: Any) -> Any:
    return stub.ListModels(
        service_pb2.ListModelsRequest(), timeout=kwargs.pop("timeout", T), **kwargs
    )


def predict_request() -> service_pb2.PostModelOutputsRequest:
    return service_pb2.PostModelOutputsRequest(model_id="model-1")


def attempt_headers(calls: list[RecordedCall]) -> list[str | None]:
    return [call.header(ATTEMPT) for call in calls]


def secret_of(call: RecordedCall) -> str | None:
    header = call.header("authorization")
    return None if header is None else header.removeprefix("Key ")


def warm_up(stub: Any, fake: FakeClarifai) -> None:
    """Connect before a test that measures time, then forget the call."""
    stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
    fake.clear()


def call_style(stub: Any, style: str, **kwargs: Any) -> Any:
    """One ListModels call in ``style``; a unary response, or the messages of a stream."""
    timeout = kwargs.pop("timeout", T)
    if style == "call":
        return stub.ListModels(service_pb2.ListModelsRequest(), timeout=timeout, **kwargs)
    if style == "with_call":
        return stub.ListModels.with_call(
            service_pb2.ListModelsRequest(), timeout=timeout, **kwargs
        )[0]
    if style == "future":
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=timeout, **kwargs)
        return future.result(timeout=T)
    assert style == "stream"
    return list(stub.GenerateModelOutputs(predict_request(), timeout=timeout, **kwargs))


def method_of(style: str) -> str:
    return "GenerateModelOutputs" if style == "stream" else "ListModels"


def aio_channel(kind: str, target: str, credentials: Any, retry: RetryPolicy | None) -> Any:
    if kind == "aio-channel":
        return aio.insecure_channel(target, credentials, retry=retry)
    return grpc.aio.insecure_channel(
        target, interceptors=aio.interceptors(credentials, retry=retry)
    )


@asynccontextmanager
async def aio_stub(
    kind: str, target: str, credentials: Any = PAT_CREDS, retry: RetryPolicy | None = FAST
) -> AsyncIterator[service_pb2_grpc.V2Stub]:
    async with aio_channel(kind, target, credentials, retry) as channel:
        yield service_pb2_grpc.V2Stub(channel)


# -- retry budget ----------------------------------------------------------------------------


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


def test_budget_bounds_attempts_under_an_outage_and_refills_after(
    path: Path, fake: FakeClarifai
) -> None:
    budget = RetryBudget()
    assert (budget.max_tokens, budget.token_ratio) == (10, 0.1)
    stub = path.stub()  # FAST: the default policy and budget, waits zeroed
    fake.set_default("ListModels", UNAVAILABLE)
    failing_calls(stub, 200)
    attempts = len(fake.calls_to("ListModels"))
    bound = 200 + retries_a_full_bucket_allows(budget)
    assert retries_a_full_bucket_allows(budget) == 4
    # The first call takes 5 attempts (10 -> 5 tokens: 4 retries, and max_attempts is 5);
    # every later call one. Without a budget it would be 200 * 5 = 1000.
    assert attempts == bound == 204
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
    assert len(fake.calls_to("ListModels")) == 104
    fake.clear()
    failing_calls(second, 100)  # a full bucket of its own
    assert len(fake.calls_to("ListModels")) == 104
    fake.clear()
    failing_calls(first, 10)  # the first channel's bucket is still empty
    assert len(fake.calls_to("ListModels")) == 10


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


# -- server pushback -------------------------------------------------------------------------


def pushback_fail(milliseconds: str) -> Fail:
    return Fail(UNAVAILABLE, "busy", trailing_metadata=((PUSHBACK, milliseconds),))


@pytest.mark.parametrize("style", ["call", "future"])
def test_pushback_sets_the_wait_before_the_next_attempt(
    path: Path, fake: FakeClarifai, style: str
) -> None:
    stub = path.stub()  # initial_backoff=0: any wait is the server's
    warm_up(stub, fake)
    fake.script("ListModels", pushback_fail("300"), SUCCESS)
    assert call_style(stub, style).status.code == SUCCESS
    first, second = fake.calls_to("ListModels")
    waited = second.time - first.time
    assert 0.3 <= waited < 0.3 + 0.7
    report(f"pushback 300 ms ({path.kind}, {style}): next attempt {waited * 1000:.1f} ms later")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_pushback_sets_the_wait_on_aio(kind: str, fake: FakeClarifai) -> None:
    async with aio_stub(kind, fake.target) as stub:
        await stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
        fake.script("ListModels", pushback_fail("300"), SUCCESS)
        assert (await list_models(stub)).status.code == SUCCESS
    first, second = fake.calls_to("ListModels")
    waited = second.time - first.time
    assert 0.3 <= waited < 0.3 + 0.7
    report(f"pushback 300 ms ({kind}): next attempt {waited * 1000:.1f} ms later")


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


# grpc-core parses this header as an integer before the interceptor sees it: "abc" arrives as
# -9223372036854775808, which is negative, so "do not retry" as well.
@pytest.mark.parametrize("value", ["-1", "-300", "abc"])
def test_negative_or_malformed_pushback_means_no_retry(
    path: Path, fake: FakeClarifai, value: str
) -> None:
    stub = path.stub()
    fake.script("ListModels", pushback_fail(value), SUCCESS)
    with pytest.raises(grpc.RpcError) as info:
        list_models(stub)
    assert info.value.code() is UNAVAILABLE
    assert len(fake.calls_to("ListModels")) == 1


# -- the attempt header ----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["call", "with_call", "future", "stream"])
def test_retry_k_carries_the_attempt_header_k(path: Path, fake: FakeClarifai, style: str) -> None:
    stub = path.stub()
    fake.script(method_of(style), UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    call_style(stub, style)
    assert attempt_headers(fake.calls_to(method_of(style))) == [None, "1", "2", "3"]
    fake.clear()
    call_style(stub, style)  # a new call starts again without the header
    assert attempt_headers(fake.calls_to(method_of(style))) == [None]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_retry_k_carries_the_attempt_header_k_on_aio(kind: str, fake: FakeClarifai) -> None:
    fake.script("ListModels", UNAVAILABLE, UNAVAILABLE)
    fake.script("GenerateModelOutputs", UNAVAILABLE)
    async with aio_stub(kind, fake.target) as stub:
        await list_models(stub)
        assert len([m async for m in stub.GenerateModelOutputs(predict_request(), timeout=T)]) == 3
    assert attempt_headers(fake.calls_to("ListModels")) == [None, "1", "2"]
    assert attempt_headers(fake.calls_to("GenerateModelOutputs")) == [None, "1"]


# -- credential rotation ---------------------------------------------------------------------

OLD = Credentials.from_pat("fake-old-pat-before-rotation", user_id="user-old", app_id="app")
NEW = Credentials.from_pat("fake-new-pat-after-rotation", user_id="user-new", app_id="app")
#: The secret the broken provider's error names; built as Credentials, so the secrets guard
#: tracks it too.
LEAKY = Credentials.from_pat("fake-pat-the-provider-leaks", user_id="user-leaky").secret.reveal()


class Rotating:
    """A credentials provider: returns ``current``, counting how often it was asked."""

    def __init__(self, current: Credentials) -> None:
        self.current = current
        self.asked = 0

    def __call__(self) -> Credentials:
        self.asked += 1
        return self.current


class Broken:
    """A credentials provider that fails with an error naming a secret."""

    def __init__(self) -> None:
        self.error = RuntimeError(f"vault refused to renew {LEAKY}")
        self.asked = 0

    def __call__(self) -> Credentials:
        self.asked += 1
        raise self.error


def sent_as(call: RecordedCall) -> tuple[str | None, str]:
    return secret_of(call), call.request.user_app_id.user_id  # type: ignore[attr-defined]


@pytest.mark.parametrize("style", ["call", "future", "stream"])
def test_rotated_credentials_apply_without_a_new_channel(
    path: Path, fake: FakeClarifai, style: str
) -> None:
    provider = Rotating(OLD)
    stub = path.stub(provider)  # type: ignore[arg-type]
    for _ in range(3):
        call_style(stub, style)
    provider.current = NEW
    fake.script(method_of(style), UNAVAILABLE)  # a retried call: both attempts carry NEW
    for _ in range(3):
        call_style(stub, style)
    sent = [sent_as(call) for call in fake.calls_to(method_of(style))]
    old = (OLD.secret.reveal(), "user-old")
    new = (NEW.secret.reveal(), "user-new")
    assert sent == [old] * 3 + [new] * 4
    assert provider.asked == 6  # once per call, not per attempt


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_rotated_credentials_apply_on_aio(kind: str, fake: FakeClarifai) -> None:
    provider = Rotating(OLD)
    async with aio_stub(kind, fake.target, provider) as stub:
        await list_models(stub)
        provider.current = NEW
        await list_models(stub)
    sent = [sent_as(call) for call in fake.calls_to("ListModels")]
    assert sent == [(OLD.secret.reveal(), "user-old"), (NEW.secret.reveal(), "user-new")]


def check_provider_error(exc: BaseException, provider: Broken, fake: FakeClarifai) -> None:
    assert isinstance(exc, CredentialsProviderError)
    assert exc.__cause__ is provider.error
    assert LEAKY not in str(exc)
    assert LEAKY not in repr(exc)
    assert provider.asked == 1  # not retried as if it were a network failure
    assert fake.calls == []  # nothing was sent


def sync_styles(*styles: str) -> list[Any]:
    """(path kind, style) pairs, on both sync paths."""
    return [
        pytest.param(kind, style, id=f"{kind}-{style}")
        for kind in ("interceptor", "wrapper")
        for style in styles
    ]


@pytest.mark.parametrize(("kind", "style"), sync_styles("call", "with_call", "future", "stream"))
def test_failing_provider_fails_the_call_before_anything_is_sent(
    fake: FakeClarifai, kind: str, style: str
) -> None:
    provider = Broken()
    built = Path(kind, fake.target)
    stub = built.stub(provider)  # type: ignore[arg-type]
    with pytest.raises(CredentialsProviderError) as info:
        call_style(stub, style)
    built.close()
    check_provider_error(info.value, provider, fake)


def test_interceptor_future_holds_the_error_when_asked_without_timeout_keyword(
    fake: FakeClarifai,
) -> None:
    # The rest of the contract holds on that path: result() (timeout given positionally).
    built = Path("interceptor", fake.target)
    provider = Broken()
    future = built.stub(provider).ListModels.future(service_pb2.ListModelsRequest(), timeout=T)  # type: ignore[arg-type]
    with pytest.raises(CredentialsProviderError) as info:
        future.result(T)
    check_provider_error(info.value, provider, fake)
    future = built.stub().ListModels.future(
        service_pb2.ListModelsRequest(), timeout=T, metadata=[("X-Upper", "v")]
    )
    with pytest.raises(ValueError, match="'X-Upper'"):
        future.result(T)
    assert fake.calls == []
    built.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_failing_provider_fails_the_aio_call_before_anything_is_sent(
    kind: str, fake: FakeClarifai
) -> None:
    async def unary(stub: Any) -> None:
        await list_models(stub)

    async def stream(stub: Any) -> None:
        [m async for m in stub.GenerateModelOutputs(predict_request(), timeout=T)]

    for call in (unary, stream):
        provider = Broken()
        async with aio_stub(kind, fake.target, provider) as stub:
            with pytest.raises(CredentialsProviderError) as info:
                await call(stub)
        check_provider_error(info.value, provider, fake)


# -- metadata validation ---------------------------------------------------------------------

INVALID_METADATA = [
    pytest.param("X-Upper", "value", id="uppercase-key"),
    pytest.param("x key", "value", id="key-with-space"),
    pytest.param("x-key", "line\nbreak", id="value-with-newline"),
]


@pytest.mark.parametrize(("key", "value"), INVALID_METADATA)
@pytest.mark.parametrize(("kind", "style"), sync_styles("call", "future", "stream"))
def test_invalid_metadata_fails_naming_the_key_before_sending(
    fake: FakeClarifai, kind: str, style: str, key: str, value: str
) -> None:
    built = Path(kind, fake.target)
    stub = built.stub()
    with pytest.raises(ValueError, match=re.escape(repr(key))) as info:
        call_style(stub, style, metadata=[("x-fine", "ok"), (key, value)])
    built.close()
    assert "line\nbreak" not in str(info.value)  # the key is named, never the value
    assert fake.calls == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("key", "value"), INVALID_METADATA)
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_invalid_metadata_fails_naming_the_key_on_aio(
    kind: str, fake: FakeClarifai, key: str, value: str
) -> None:
    async with aio_stub(kind, fake.target) as stub:
        with pytest.raises(ValueError, match=re.escape(repr(key))):
            await list_models(stub, metadata=[(key, value)])
    assert fake.calls == []


def grpc_accepts(key: str, value: object) -> bool:
    """gRPC's rules for caller metadata, written from its spec, independently of the package."""
    if not re.fullmatch(r"[0-9a-z_.\-]+", key) or key.startswith("grpc-"):
        return False
    if key.endswith("-bin"):
        return isinstance(value, bytes)
    return isinstance(value, str) and re.fullmatch(r"[\x20-\x7e]*", value) is not None


#: Header names grpc-core (1.85) takes over: a caller's value is silently dropped, or replaced
#: by gRPC's own (``user-agent``). Nothing malformed is sent, but neither is the caller's value;
#: the package does not refuse them.
TAKEN_OVER = frozenset(
    {
        "te",
        "content-type",
        "content-length",
        "user-agent",
        "lb-cost-bin",
        "endpoint-load-metrics-bin",
        "grpclb_client_stats",
        "x-envoy-peer-metadata",
    }
)
#: Header names grpc-core keeps one value of: the last one sent.
SINGLE_VALUED = frozenset({"host", "lb-token", "traceparent"})

_KEYS = st.one_of(
    st.from_regex(r"[0-9a-z_.\-]{1,12}", fullmatch=True),
    st.text(st.characters(codec="ascii"), max_size=12),
    st.text(max_size=6),
    st.sampled_from(
        [
            "authorization",
            "x-clarifai-session-token",
            ATTEMPT,
            "grpc-status",
            "host",
            "lb-token",
            "traceparent",
            "x-trace-bin",
            ":path",
            "Key",
            *sorted(TAKEN_OVER),
        ]
    ),
)
_VALUES = st.one_of(
    st.from_regex(r"[ -~]{0,20}", fullmatch=True), st.text(max_size=20), st.binary(max_size=20)
)
#: Pairs gRPC accepts, so that many examples are sent, not only refused.
_SENDABLE = st.one_of(
    st.tuples(
        st.from_regex(r"[0-9a-z_.\-]{1,12}", fullmatch=True).filter(
            lambda key: not key.startswith("grpc-") and not key.endswith("-bin")
        ),
        st.from_regex(r"[ -~]{0,20}", fullmatch=True),
    ),
    st.tuples(st.from_regex(r"[0-9a-z_.\-]{1,8}-bin", fullmatch=True), st.binary(max_size=20)),
)
_PAIRS = st.lists(
    st.one_of(_SENDABLE, _SENDABLE, st.tuples(_KEYS, _VALUES)), min_size=1, max_size=4
)


@pytest.fixture(scope="module")
def metadata_stubs() -> Iterator[tuple[FakeClarifai, dict[str, Any]]]:
    """A fake and a stub per sync path, for property tests (hypothesis runs many examples)."""
    with FakeClarifai() as fake:
        paths = {kind: Path(kind, fake.target) for kind in ("interceptor", "wrapper")}
        yield fake, {kind: built.stub(retry=UNLIMITED) for kind, built in paths.items()}
        for built in paths.values():
            built.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=_PAIRS)
def test_caller_metadata_is_refused_or_sent_exactly(
    metadata_stubs: tuple[FakeClarifai, dict[str, Any]], pairs: list[tuple[str, Any]]
) -> None:
    # A str value on a -bin key is a known bug, tested on its own below.
    assume(not any(k.endswith("-bin") and isinstance(v, str) for k, v in pairs))
    fake, stubs = metadata_stubs
    valid = all(grpc_accepts(key, value) for key, value in pairs)
    event("valid: sent" if valid else "invalid: refused")
    for stub in stubs.values():
        fake.clear()
        refused: ValueError | None = None
        try:
            list_models(stub, metadata=pairs)
        except ValueError as exc:
            refused = exc
        if refused is not None:
            assert not valid
            assert fake.calls == []
            invalid = [key for key, value in pairs if not grpc_accepts(key, value)]
            assert any(repr(key) in str(refused) for key in invalid)
            continue
        assert valid  # nothing gRPC would refuse (or mangle) was sent
        (received,) = fake.calls
        for key in {key for key, _ in pairs}:
            sent = [value for k, value in pairs if k == key]
            got = [value for k, value in received.metadata if k == key]
            if key == "user-agent":
                assert len(got) == 1
                assert str(got[0]).startswith("grpc-python/")  # gRPC's own, not the caller's
            elif key in TAKEN_OVER:
                assert got == []
            elif key in SINGLE_VALUED:
                assert got == sent[-1:]
            else:
                assert got == sent


def test_str_value_on_a_binary_key_is_refused_with_value_error(
    path: Path, fake: FakeClarifai
) -> None:
    with pytest.raises(ValueError, match="'x-trace-bin'"):
        list_models(path.stub(), metadata=[("x-trace-bin", "text")])
    assert fake.calls == []


def test_grpc_own_compression_entry_is_still_validated(path: Path, fake: FakeClarifai) -> None:
    with pytest.raises(ValueError, match="'grpc-internal-encoding-request'"):
        list_models(path.stub(), metadata=[("grpc-internal-encoding-request", "gzip\nx")])
    assert fake.calls == []


# -- faults survived, against a server in another process ------------------------------------

#: A server in a child process: it imports everything, waits for "go" on stdin, serves on
#: 127.0.0.1:PORT (0: a free one), prints "port N", and answers "calls" with the arrivals
#: (monotonic time, x-retry-attempt) as JSON. Modes: "fake" (FakeClarifai), "slow" (FakeClarifai
#: whose ListModels sleeps 60 s), "stall" (GenerateModelOutputs sends m0, m1, then stalls).
SERVER = textwrap.dedent(
    """
    import json, sys, time
    from concurrent import futures

    import grpc
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2
    from clarifai_grpc.grpc.api.status import status_code_pb2

    from clarifai_interceptor.testing import Delay, FakeClarifai

    mode, port = sys.argv[1], int(sys.argv[2])
    if sys.stdin.readline().strip() != "go":
        sys.exit(1)
    if mode == "stall":
        arrivals = []

        def generate(request, context):
            metadata = dict(context.invocation_metadata())
            arrivals.append([time.monotonic(), metadata.get("x-retry-attempt")])
            for n in range(2):
                response = service_pb2.MultiOutputResponse(
                    outputs=[resources_pb2.Output(id=f"m{n}")]
                )
                response.status.code = status_code_pb2.SUCCESS
                yield response
            print("stalled", flush=True)
            time.sleep(60)

        handler = grpc.unary_stream_rpc_method_handler(
            generate,
            request_deserializer=service_pb2.PostModelOutputsRequest.FromString,
            response_serializer=service_pb2.MultiOutputResponse.SerializeToString,
        )
        server = grpc.server(futures.ThreadPoolExecutor(4))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "clarifai.api.V2", {"GenerateModelOutputs": handler}
            ),)
        )
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        calls = lambda: arrivals
    else:
        fake = FakeClarifai(port=port)
        if mode == "slow":
            fake.set_default("ListModels", Delay(60, status_code_pb2.SUCCESS))
        fake.start()
        port = int(fake.target.rsplit(":", 1)[1])
        calls = lambda: [
            [c.time, c.header("x-retry-attempt")]
            for c in fake.calls
            if c.method != "ListStatusCodes"
        ]
    print("port", port, flush=True)
    for line in sys.stdin:
        if line.strip() == "calls":
            print(json.dumps(calls()), flush=True)
    """
)


class ServerProcess:
    """A server in a child process (see `SERVER`), started ready to bind but not yet bound."""

    def __init__(self, mode: str, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, mode, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = port

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def line(self, timeout: float = 30) -> str:
        return self._lines.get(timeout=timeout)

    def go(self) -> int:
        """Bind and serve; return the port."""
        self._send("go")
        words = self.line().split()
        assert words[0] == "port", words
        self.port = int(words[1])
        return self.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self) -> list[tuple[float, str | None]]:
        """The calls received so far: (monotonic arrival time, x-retry-attempt)."""
        self._send("calls")
        return [(at, attempt) for at, attempt in json.loads(self.line())]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=T)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def test_fake_restarts_on_the_same_port_and_survives_a_taken_one() -> None:
    first = FakeClarifai().start()
    target = first.target
    first.stop()
    port = int(target.rsplit(":", 1)[1])
    with FakeClarifai(port=port) as second, grpc.insecure_channel(target) as channel:
        assert second.target == target
        assert list_models(service_pb2_grpc.V2Stub(channel)).status.code == SUCCESS
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake = FakeClarifai(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError):
            fake.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.target
    fake.start()  # still startable (on that port, now free)
    fake.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start child-process servers; every one is killed after the test."""
    started: list[ServerProcess] = []

    def start(mode: str, port: int = 0) -> ServerProcess:
        server = ServerProcess(mode, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


#: Retries that ride out a server restart: the policy's timeout (5 s) bounds every call. No
#: budget: under a real outage the budget would rightly stop the retries of most calls.
RIDE_OUT = RetryPolicy(
    max_attempts=100, initial_backoff=0.05, max_backoff=0.25, jitter=0, timeout=5, budget=None
)


def test_calls_survive_a_server_restart_on_the_same_port(
    servers: Callable[..., ServerProcess],
) -> None:
    first = servers("fake")
    port = first.go()
    second = servers("fake", port)  # imported and waiting: it binds the moment it is told
    paths = [Path(kind, first.target) for kind in ("interceptor", "wrapper")]
    stubs = [built.stub(retry=RIDE_OUT) for built in paths]
    done: list[tuple[float, float, object]] = []  # (start, end, True or the RpcError)
    stop = threading.Event()

    def one(stub: Any) -> None:
        started = time.monotonic()
        try:
            list_models(stub, timeout=10)
            outcome: object = True
        except grpc.RpcError as exc:
            outcome = exc
        done.append((started, time.monotonic(), outcome))

    def caller(stub: Any) -> None:
        while not stop.is_set():
            one(stub)

    callers = [threading.Thread(target=caller, args=(stubs[n % 2],)) for n in range(4)]
    for thread in callers:
        thread.start()
    time.sleep(0.5)
    first.kill()
    killed = time.monotonic()
    time.sleep(0.25)
    late = [threading.Thread(target=one, args=(stub,)) for stub in stubs]  # begun in the gap
    for thread in late:
        thread.start()
    time.sleep(0.25)
    restarting = time.monotonic()  # nothing can succeed between `killed` and this
    second.go()
    back = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for thread in callers + late:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in callers + late)
    for built in paths:
        built.close()

    failures = [outcome for _, _, outcome in done if outcome is not True]
    assert failures == []  # every call, those the outage caught included, succeeded
    # Pending when the server came back: each of the 4 callers' call, and the 2 begun in the
    # gap (nothing can succeed while no server listens).
    pending = [(start, end) for start, end, _ in done if start < restarting < end]
    begun_in_gap = [(start, end) for start, end, _ in done if killed < start < restarting]
    assert len(pending) >= 4 + 2
    assert len(begun_in_gap) >= 2
    assert all(end > restarting for _, end in begun_in_gap)
    slowest = max(end - start for start, end, _ in done)
    assert slowest <= 5 + 0.5  # within the policy's timeout
    retried = [attempt for _, attempt in second.calls() if attempt is not None]
    assert retried
    report(
        f"restart: server down {back - killed:.2f} s; {len(done)} calls, 0 failed; "
        f"{len(pending)} pending when it came back (begun in the gap: {len(begun_in_gap)}), "
        f"first back {min(end for _, end in pending) - back:.2f} s after the restart; slowest "
        f"call {slowest:.2f} s (policy timeout 5 s); {len(retried)} retries reached the new server"
    )


@pytest.mark.parametrize("kind", ["interceptor", "wrapper", *AIO_PATHS])
def test_connection_dropped_mid_stream_gives_the_messages_then_the_error(
    servers: Callable[..., ServerProcess], kind: str
) -> None:
    first = servers("stall")
    port = first.go()
    second = servers("stall", port)
    received: list[str] = []

    def drop() -> None:
        assert first.line() == "stalled"  # m0 and m1 are sent; the server hangs
        assert len(first.calls()) == 1
        first.kill()
        second.go()  # a retry after the drop would now reach a server and duplicate m0, m1

    if kind in AIO_PATHS:

        async def read() -> grpc.RpcError:
            async with aio_stub(kind, first.target) as stub:
                stream = stub.GenerateModelOutputs(predict_request(), timeout=T)
                try:
                    async for response in stream:
                        received.append(response.outputs[0].id)
                        if len(received) == 2:
                            await asyncio.to_thread(drop)
                except grpc.RpcError as exc:
                    return exc
            raise AssertionError("the stream ended without an error")

        error = asyncio.run(read())
    else:
        built = Path(kind, first.target)

        def read(stream: Any) -> None:
            for response in stream:
                received.append(response.outputs[0].id)
                if len(received) == 2:
                    drop()

        with pytest.raises(grpc.RpcError) as info:
            read(built.stub().GenerateModelOutputs(predict_request(), timeout=T))
        error = info.value
        built.close()
    assert received == ["m0", "m1"]
    assert error.code() is UNAVAILABLE
    time.sleep(0.5)
    assert second.calls() == []  # not re-issued after the first message


@pytest.mark.parametrize("kind", ["interceptor", "wrapper", *AIO_PATHS])
def test_server_sleeping_past_the_deadline_fails_on_time(
    servers: Callable[..., ServerProcess], kind: str
) -> None:
    server = servers("slow")
    server.go()
    # Even DEADLINE_EXCEEDED is retryable here: only the shared deadline can stop the attempts.
    policy = dataclasses.replace(
        UNLIMITED, retryable_codes=frozenset({UNAVAILABLE, DEADLINE_EXCEEDED})
    )
    deadline = 1.0
    elapsed: list[float] = []
    codes: list[grpc.StatusCode] = []
    if kind in AIO_PATHS:

        async def calls() -> None:
            async with aio_stub(kind, server.target, retry=policy) as stub:
                await stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
                started = time.monotonic()
                try:
                    await list_models(stub, timeout=deadline)
                except grpc.RpcError as exc:
                    elapsed.append(time.monotonic() - started)
                    codes.append(exc.code())

        asyncio.run(calls())
    else:
        built = Path(kind, server.target)
        stub = built.stub(retry=policy)
        stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
        for style in ("call", "future"):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                call_style(stub, style, timeout=deadline)
            elapsed.append(time.monotonic() - started)
            codes.append(info.value.code())
        built.close()
    assert codes
    assert set(codes) == {DEADLINE_EXCEEDED}
    assert all(deadline - 0.01 <= e <= deadline + 0.5 for e in elapsed)
    arrivals = server.calls()
    # One attempt per call (a second one could only start in the last instant before the
    # deadline); with the timeout re-applied per attempt it would be 5 attempts and 5 s.
    assert len(codes) <= len(arrivals) <= 2 * len(codes)
    shown = ", ".join(f"{e:.3f}" for e in elapsed)
    report(
        f"slow server ({kind}): DEADLINE_EXCEEDED after {shown} s (deadline {deadline} s), "
        f"{len(arrivals)} attempt(s)"
    )


# -- deadlines under every failure pattern ---------------------------------------------------

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


def sync_run(
    kind: str, style: str, outcomes: list[Any], retry: RetryPolicy, timeout: float
) -> float:
    """Seconds one call in ``style`` on a new ``kind`` channel takes against ``outcomes``."""
    with FakeClarifai() as fake:
        built = Path(kind, fake.target)
        stub = built.stub(_own_secret(), retry=retry)
        warm_up(stub, fake)
        fake.script("ListModels", *outcomes)
        started = time.monotonic()
        with suppress(grpc.RpcError):
            call_style(stub, style, timeout=timeout)
        elapsed = time.monotonic() - started
        built.close()
    return elapsed


def aio_run(kind: str, outcomes: list[Any], retry: RetryPolicy, timeout: float) -> float:
    """As `sync_run`, for one aio call."""
    with FakeClarifai() as fake:
        return asyncio.run(aio_call(fake, kind, outcomes, retry, timeout))


async def aio_call(
    fake: FakeClarifai, kind: str, outcomes: list[Any], retry: RetryPolicy, timeout: float
) -> float:
    async with aio_stub(kind, fake.target, _own_secret(), retry=retry) as stub:
        await stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
        fake.clear()
        fake.script("ListModels", *outcomes)
        started = time.monotonic()
        with suppress(grpc.RpcError):
            await list_models(stub, timeout=timeout)
        return time.monotonic() - started


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
                    sync_run, kind, style, outcomes, retry, timeout
                )
        for kind in AIO_PATHS:
            runs[f"{kind}, {source}"] = functools.partial(aio_run, kind, outcomes, retry, timeout)
    with ThreadPoolExecutor(len(runs)) as pool:
        started = {name: pool.submit(run) for name, run in runs.items()}
        measured = {name: future.result(timeout=T) for name, future in started.items()}
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


# -- isolation under load --------------------------------------------------------------------


def test_no_caller_ever_sends_another_callers_secret(fake: FakeClarifai) -> None:
    threads, tasks, total = 32, 500, 10_000
    per_thread, extra = divmod(total // 2, threads)  # 5,000 calls from threads
    per_task = total // 2 // tasks  # 5,000 from asyncio tasks
    default = Credentials.from_pat("fake-pat-channel-default", user_id="user-default")
    fake.script("ListModels", *[UNAVAILABLE] * 300)  # retries under load too
    fake.script("GenerateModelOutputs", *[UNAVAILABLE] * 30)
    made: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def creds(n: int) -> Credentials:
        return Credentials.from_pat(f"fake-pat-{n}", user_id=f"user-{n}", app_id="app")

    sync_paths = [Path(kind, fake.target) for kind in ("interceptor", "wrapper")]
    # Up to 50 attempts: a call's retries may meet several of the scripted failures.
    policy = dataclasses.replace(UNLIMITED, max_attempts=50)
    sync_stubs = [built.stub(default, retry=policy) for built in sync_paths]

    def thread_main(n: int) -> None:
        stub = sync_stubs[n % 2]
        calls = per_thread + (1 if n < extra else 0)
        try:
            with use_credentials(creds(n)):
                for k in range(calls):
                    style = ("call", "call", "future", "with_call", "stream")[k % 5]
                    call_style(stub, style, metadata=[("x-caller", str(n))])
        except Exception as exc:  # noqa: BLE001 (counted and asserted below)
            errors.append(exc)
        with lock:
            made[str(n)] += calls

    async def task_main(stub: Any, n: int) -> None:
        with use_credentials(creds(n)):
            for k in range(per_task):
                metadata = [("x-caller", str(n))]
                if k % 5 == 4:
                    stream = stub.GenerateModelOutputs(
                        predict_request(), timeout=T, metadata=metadata
                    )
                    assert len([m async for m in stream]) == 3
                else:
                    await list_models(stub, metadata=metadata)
        made[str(n)] += per_task

    async def all_tasks() -> None:
        channels = [aio_channel(kind, fake.target, default, policy) for kind in AIO_PATHS]
        stubs = [service_pb2_grpc.V2Stub(channel) for channel in channels]
        try:
            outcomes = await asyncio.gather(
                *(task_main(stubs[n % 2], threads + n) for n in range(tasks)),
                return_exceptions=True,
            )
            errors.extend(o for o in outcomes if isinstance(o, BaseException))
        finally:
            for channel in channels:
                await channel.close()

    started = time.monotonic()
    workers = [threading.Thread(target=thread_main, args=(n,)) for n in range(threads)]
    workers.append(threading.Thread(target=asyncio.run, args=(all_tasks(),)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    elapsed = time.monotonic() - started
    for built in sync_paths:
        built.close()
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert sum(made.values()) == total

    recorded = [c for c in fake.calls if c.method in ("ListModels", "GenerateModelOutputs")]
    wrong_user = wrong_caller = no_secret = 0
    first_attempts: Counter[str] = Counter()
    for call in recorded:
        secret = secret_of(call)
        caller = call.header("x-caller")
        if secret is None or not secret.startswith("fake-pat-") or caller is None:
            no_secret += 1
            continue
        owner = secret.removeprefix("fake-pat-")
        wrong_user += call.request.user_app_id.user_id != f"user-{owner}"  # type: ignore[attr-defined]
        wrong_caller += owner != caller
        if call.header(ATTEMPT) is None:
            first_attempts[caller] += 1
    report(
        f"isolation: {threads} threads + {tasks} asyncio tasks, {total} calls "
        f"({len(recorded)} attempts, {len(recorded) - total} retries) in {elapsed:.1f} s",
        f"isolation: calls whose secret belonged to another caller: {wrong_caller} "
        f"(by x-caller), {wrong_user} (by user_app_id); without a caller secret: {no_secret}; "
        f"callers whose call count differs: {sum(first_attempts[c] != made[c] for c in made)}",
    )
    assert len(recorded) > total  # the scripted failures were retried
    assert (wrong_caller, wrong_user, no_secret) == (0, 0, 0)
    assert first_attempts == made


# -- secrets ---------------------------------------------------------------------------------

GUARD_PROBE = textwrap.dedent(
    """
    import logging
    import warnings

    import pytest

    from clarifai_interceptor import Credentials

    # Built from parts: the secrets must never appear in pytest's output, not even as source.
    SECRET = "-".join(["fake", "guard", "probe", "pat"])
    OTHER = "-".join(["fake", "guard", "other", "pat"])
    SHORT = "-".join(["f", "k"])


    def test_clean():
        creds = Credentials.from_pat(SECRET, user_id="u")
        logging.getLogger("clarifai_interceptor").debug("built %r", creds)
        assert repr(creds)


    def test_debug_record():
        Credentials.from_pat(SECRET, user_id="u")
        logging.getLogger("clarifai_interceptor").debug("retrying with %s", SECRET)


    def test_warning():
        with pytest.warns(UserWarning):
            warnings.warn("token " + SECRET, UserWarning, stacklevel=1)


    def test_caught_exception():
        with pytest.raises(ValueError):
            raise ValueError("bad " + SECRET)


    def test_secret_of_a_later_test():
        logging.getLogger("elsewhere").warning("%s", OTHER)  # not a secret yet: passes


    def test_builds_other():
        Credentials.from_api_key(OTHER)


    def test_secret_of_an_earlier_test():
        logging.getLogger("elsewhere").warning("%s", OTHER)


    def test_short_secrets_are_not_tracked():
        Credentials.from_api_key(SHORT + "x")
        logging.getLogger("elsewhere").warning("x%sx", SHORT)
    """
)


def test_secrets_guard_fails_a_test_that_leaks_and_never_prints_the_secret(
    tmp_path: FsPath,
) -> None:
    (tmp_path / "test_probe.py").write_text(GUARD_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.secrets_guard",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-rfp",
            str(tmp_path / "test_probe.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    output = result.stdout + result.stderr
    outcomes = {
        name: outcome
        for outcome, name in re.findall(r"^(PASSED|FAILED) \S+::(\w+)", output, re.MULTILINE)
    }
    assert outcomes == {
        "test_clean": "PASSED",
        "test_debug_record": "FAILED",
        "test_warning": "FAILED",
        "test_caught_exception": "FAILED",
        # The guard tracks a secret from when it is built, then for the rest of the session.
        "test_secret_of_a_later_test": "PASSED",
        "test_builds_other": "PASSED",
        "test_secret_of_an_earlier_test": "FAILED",
        "test_short_secrets_are_not_tracked": "PASSED",
    }, output
    assert "a log record of logger 'clarifai_interceptor'" in output
    assert "a warning" in output
    assert "caught by pytest.raises" in output
    assert "first seen in test_probe.py::test_builds_other" in output
    assert "fake-guard-probe-pat" not in output
    assert "fake-guard-other-pat" not in output


# -- soak ------------------------------------------------------------------------------------


def test_soak_script_runs_and_reports_without_fd_growth() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--calls",
            "3000",
            "--warmup",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert figures["calls"] == 3000
    assert figures["errors"] == 0
    for key in ("rss_before_kb", "rss_after_kb", "rss_growth_kb", "fds_before", "fds_after"):
        assert isinstance(figures[key], int), key
    assert figures["rss_growth_kb"] == figures["rss_after_kb"] - figures["rss_before_kb"]
    assert figures["fds_after"] <= figures["fds_before"]
    report(f"soak (3,000 calls): {result.stdout.strip().splitlines()[-1]}")
