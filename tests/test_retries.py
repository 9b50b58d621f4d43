"""Which outcomes are retried and how: retryable codes and body statuses, exhaustion (the last
error or response as is), scope/auth and other failures passed through in one attempt, the
`use_retry` override, server pushback, the attempt header, and what a retry resends. Each sync
test is followed by its aio twin."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import tenacity
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, AioPath, Path, T
from helpers import (
    AIO_PATHS,
    DEFAULT,
    KINDS,
    PAT_HEADER,
    RETRY_ALL_IT_MAY,
    STREAM_METHOD,
    SUCCESS,
    THROTTLED,
    UAI,
    UNAVAILABLE,
    aio_generate,
    aio_invoke,
    aio_stub,
    aio_warm_up,
    attempt_headers,
    bare_predict_request,
    call_style,
    credentials_sent,
    ids,
    list_models,
    metadata_pairs,
    method_of,
    output,
    predict_request,
    pushback_fail,
    read_all,
    report,
    stream_unary,
    warm_up,
)

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    insecure_channel,
    use_retry,
    wrap_channel,
)
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, Reply, Status, Stream

#: The statuses issue 2 requires to be retried by default.
REQUIRED_RETRYABLE_STATUSES = (
    status_code_pb2.CONN_THROTTLED,
    status_code_pb2.MODEL_BUSY_PLEASE_RETRY,
    status_code_pb2.MODEL_DEPLOYING,
    status_code_pb2.MODEL_LOADING,
    status_code_pb2.RPC_SERVER_UNAVAILABLE,
    status_code_pb2.RPC_REQUEST_QUEUE_FULL,
    # Clarifai's status-code docs answer these with "try again" (issue 18).
    status_code_pb2.TRY_AGAIN,
    status_code_pb2.QUEUE_CONN_ERROR,
)

#: Not retried by any default policy, read or write: quotas (seconds of waiting cannot help),
#: and the statuses the README says were decided against (issue 18).
NOT_RETRIED_BY_DEFAULT = (
    status_code_pb2.CONN_EXCEED_HOURLY_LIMIT,
    status_code_pb2.CONN_EXCEED_MONTHLY_LIMIT,
    status_code_pb2.CONN_EXCEEDS_LIMITS,
    status_code_pb2.MODEL_QUEUED_FOR_DEPLOYMENT,
    status_code_pb2.RUNNER_NEEDS_RETRY,
    status_code_pb2.INTERNAL_RESOURCE_EXHAUSTED,
)

SCOPE_STATUSES = (
    status_code_pb2.CONN_INSUFFICIENT_SCOPES,
    status_code_pb2.CONN_KEY_INVALID,
    status_code_pb2.CONN_KEY_NOT_FOUND,
    status_code_pb2.CONN_AUTH_METHOD_DISABLED,
    status_code_pb2.CONN_TOKEN_INVALID,
    status_code_pb2.CONN_CREDENTIALS_INVALID,
)

SCOPE_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def call_and_read(kind: str, channel: grpc.Channel) -> None:
    """Make one call of this kind and read all it answers (raising its error, if any)."""
    stub = service_pb2_grpc.V2Stub(channel)
    requests = [predict_request("a"), predict_request("b")]
    if kind == "unary_unary":
        stub.PostModelOutputs(predict_request(), timeout=T)
    elif kind == "unary_stream":
        list(stub.GenerateModelOutputs(predict_request(), timeout=T))
    elif kind == "stream_unary":
        stream_unary(channel)(requests, timeout=T)
    else:
        list(stub.StreamModelOutputs(requests, timeout=T))


PAT_A = Credentials.from_pat("fake-pat-resend-for-tests", user_id="u", app_id="a")

RESENDING = RetryPolicy(initial_backoff=0, jitter=0)  # every method retried, at once


def resend_channels(fake: FakeClarifai) -> Iterator[tuple[str, grpc.Channel]]:
    for name, credentials in (("pat", PAT_A), ("api-key", DEFAULT)):
        raw = grpc.insecure_channel(fake.target)
        interceptor = ClarifaiInterceptor(credentials, retry=RESENDING)
        yield f"interceptor-{name}", grpc.intercept_channel(raw, interceptor)
        raw.close()
        raw = grpc.insecure_channel(fake.target)
        yield f"wrapper-{name}", wrap_channel(raw, credentials, retry=RESENDING)
        raw.close()


def _ids(fake: FakeClarifai, method: str) -> list[str]:
    return [call.request.inputs[0].id for call in fake.calls_to(method)]


# -- retried outcomes ------------------------------------------------------------------------


def test_unary_retried_on_a_grpc_code(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE, Fail(UNAVAILABLE, "again"), Reply(output("ok")))
    response = path.stub().PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 3
    expected = predict_request()
    expected.user_app_id.CopyFrom(UAI)
    for call in calls:  # every attempt is the same filled request, with the credentials
        assert call.request == expected
        assert credentials_sent(call) == [PAT_HEADER]
    assert [call.header("x-retry-attempt") for call in calls] == [None, "1", "2"]


@pytest.mark.asyncio
async def test_unary_retried_on_a_grpc_code_on_aio(aio_path: AioPath, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE, Fail(UNAVAILABLE, "again"), Reply(output("ok")))
    async with aio_path.stub() as stub:
        response = await stub.PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 3
    assert [c.header("x-retry-attempt") for c in calls] == [None, "1", "2"]
    for call in calls:
        assert credentials_sent(call) == [PAT_HEADER]
        assert call.request.user_app_id == UAI


@pytest.mark.parametrize("status", REQUIRED_RETRYABLE_STATUSES, ids=status_code_pb2.StatusCode.Name)
def test_unary_retried_on_a_body_status(path: Path, fake: FakeClarifai, status: int) -> None:
    fake.script("PostModelOutputs", Status(status), Reply(output("ok")))
    response = path.stub().PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    assert len(fake.calls_to("PostModelOutputs")) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "status",
    [THROTTLED, status_code_pb2.MODEL_LOADING, status_code_pb2.RPC_REQUEST_QUEUE_FULL],
    ids=status_code_pb2.StatusCode.Name,
)
async def test_unary_retried_on_a_body_status_on_aio(
    aio_path: AioPath, fake: FakeClarifai, status: int
) -> None:
    fake.script("PostModelOutputs", output("busy", status), Reply(output("ok")))
    async with aio_path.stub() as stub:
        call = stub.PostModelOutputs(predict_request(), timeout=T)
        assert ids([await call]) == ["ok"]
        assert await call.code() is grpc.StatusCode.OK
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_unary_retried_on_a_code_the_policy_adds(path: Path, fake: FakeClarifai) -> None:
    policy = dataclasses.replace(
        FAST, retryable_codes=frozenset({UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    )
    fake.script("PostModelOutputs", grpc.StatusCode.RESOURCE_EXHAUSTED, Reply(output("ok")))
    response = path.stub(retry=policy).PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_default_policy_makes_five_attempts(path: Path, fake: FakeClarifai) -> None:
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    with pytest.raises(grpc.RpcError):
        path.stub().PostModelOutputs(predict_request(), timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 5


# -- exhausted retries -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["call", "with_call"])
def test_exhausted_retries_raise_the_last_rpc_error_as_is(
    path: Path, fake: FakeClarifai, how: str
) -> None:
    fake.script(
        "PostModelOutputs",
        *[Fail(UNAVAILABLE, f"attempt {n}", (("x-attempt", str(n)),)) for n in (1, 2, 3)],
        Reply(output("never reached")),
    )
    multi_callable = path.stub(retry=dataclasses.replace(FAST, max_attempts=3)).PostModelOutputs
    call = multi_callable if how == "call" else multi_callable.with_call
    with pytest.raises(grpc.RpcError) as failure:
        call(predict_request(), timeout=T)
    error = failure.value
    assert not isinstance(error, tenacity.RetryError)
    assert isinstance(error, grpc.Call)
    assert error.code() is UNAVAILABLE
    assert error.details() == "attempt 3"
    assert ("x-attempt", "3") in [(m.key, m.value) for m in error.trailing_metadata()]
    assert len(fake.calls_to("PostModelOutputs")) == 3


@pytest.mark.asyncio
async def test_exhausted_retries_raise_the_last_rpc_error_as_is_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "PostModelOutputs",
        *[Fail(UNAVAILABLE, f"attempt {n}", (("x-attempt", str(n)),)) for n in (1, 2, 3)],
        Reply(output("never reached")),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=3)) as stub:
        call = stub.PostModelOutputs(predict_request(), timeout=T)
        with pytest.raises(grpc.RpcError) as failure:
            await call
        error = failure.value
        assert type(error) is grpc.aio.AioRpcError
        assert not isinstance(error, tenacity.RetryError)
        assert error.code() is UNAVAILABLE
        assert error.details() == "attempt 3"
        assert ("x-attempt", "3") in metadata_pairs(error.trailing_metadata())
        assert await call.code() is UNAVAILABLE
        assert await call.details() == "attempt 3"
        assert ("x-attempt", "3") in metadata_pairs(await call.trailing_metadata())
    assert len(fake.calls_to("PostModelOutputs")) == 3


@pytest.mark.parametrize("how", ["call", "with_call"])
def test_exhausted_retries_return_the_last_response_as_is(
    path: Path, fake: FakeClarifai, how: str
) -> None:
    fake.script(
        "PostModelOutputs",
        *[output(f"attempt {n}", THROTTLED) for n in (1, 2, 3)],
        Reply(output("never reached")),
    )
    multi_callable = path.stub(retry=dataclasses.replace(FAST, max_attempts=3)).PostModelOutputs
    if how == "call":
        response = multi_callable(predict_request(), timeout=T)
    else:
        response, call = multi_callable.with_call(predict_request(), timeout=T)
        assert call.code() is grpc.StatusCode.OK
    assert response.status.code == THROTTLED
    assert ids([response]) == ["attempt 3"]
    assert len(fake.calls_to("PostModelOutputs")) == 3


@pytest.mark.asyncio
async def test_exhausted_retries_return_the_last_response_as_is_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "PostModelOutputs",
        *[output(f"attempt {n}", THROTTLED) for n in (1, 2, 3)],
        Reply(output("never reached")),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=3)) as stub:
        response = await stub.PostModelOutputs(predict_request(), timeout=T)
    assert type(response) is service_pb2.MultiOutputResponse
    assert response.status.code == THROTTLED
    assert ids([response]) == ["attempt 3"]
    assert len(fake.calls_to("PostModelOutputs")) == 3


# -- scope, auth and other failures: one attempt ---------------------------------------------


@pytest.mark.parametrize("status", SCOPE_STATUSES, ids=status_code_pb2.StatusCode.Name)
def test_scope_and_auth_body_statuses_are_not_retried(
    path: Path, fake: FakeClarifai, status: int
) -> None:
    denial = output("denied", status)
    denial.status.description = "Missing scopes: Predict"
    fake.script("PostModelOutputs", Reply(denial), Reply(output("never reached")))
    fake.script("GenerateModelOutputs", Stream([denial, output("more")]), Reply(output("no")))
    stub = path.stub(retry=RETRY_ALL_IT_MAY)
    assert stub.PostModelOutputs(predict_request(), timeout=T) == denial
    assert list(stub.GenerateModelOutputs(predict_request(), timeout=T)) == [
        denial,
        output("more"),
    ]
    assert len(fake.calls_to("PostModelOutputs")) == 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("status", SCOPE_STATUSES, ids=status_code_pb2.StatusCode.Name)
async def test_scope_and_auth_body_statuses_are_not_retried_on_aio(
    aio_path: AioPath, fake: FakeClarifai, status: int
) -> None:
    fake.script("PostModelOutputs", output("denied", status), Reply(output("never reached")))
    fake.script("GenerateModelOutputs", Stream([output("denied", status), output("more")]))
    async with aio_path.stub() as stub:
        response = await stub.PostModelOutputs(predict_request(), timeout=T)
        streamed = await read_all(aio_generate(stub))
    assert response.status.code == status
    assert ids([response]) == ["denied"]
    assert ids(streamed) == ["denied", "more"]
    assert len(fake.calls_to("PostModelOutputs")) == 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.parametrize("code", SCOPE_CODES, ids=lambda code: code.name)
@pytest.mark.parametrize("kind", KINDS)
def test_scope_and_auth_grpc_codes_are_not_retried(
    path: Path, fake: FakeClarifai, code: grpc.StatusCode, kind: str
) -> None:
    method = {"unary_unary": "PostModelOutputs", "unary_stream": "GenerateModelOutputs"}.get(
        kind, STREAM_METHOD
    )
    fake.script(method, Fail(code, "no scope", (("x-why", "scopes"),)), Reply(output("never")))
    channel = path.channel(retry=RETRY_ALL_IT_MAY)
    with pytest.raises(grpc.RpcError) as failure:
        call_and_read(kind, channel)
    error = failure.value
    assert error.code() is code
    assert error.details() == "no scope"
    assert ("x-why", "scopes") in [(m.key, m.value) for m in error.trailing_metadata()]
    assert len(fake.calls_to(method)) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED],
    ids=lambda c: c.name,
)
async def test_scope_and_auth_grpc_codes_are_not_retried_on_aio(
    aio_path: AioPath, fake: FakeClarifai, code: grpc.StatusCode
) -> None:
    fake.script("PostModelOutputs", Fail(code, "no"), Reply(output("never reached")))
    fake.script("GenerateModelOutputs", Fail(code, "no"), Stream([output("never reached")]))
    async with aio_path.stub(retry=RETRY_ALL_IT_MAY) as stub:
        with pytest.raises(grpc.RpcError) as unary:
            await stub.PostModelOutputs(predict_request(), timeout=T)
        with pytest.raises(grpc.RpcError) as streamed:
            await read_all(aio_generate(stub))
    for failure in (unary, streamed):
        assert failure.value.code() is code
        assert failure.value.details() == "no"
    assert len(fake.calls) == 2


@pytest.mark.asyncio
async def test_a_real_scope_denial_passes_through_in_one_attempt() -> None:
    narrow = Credentials.from_api_key("fake-narrow-key-for-tests")
    async with FakeClarifai(secrets={"fake-narrow-key-for-tests": ["Predict"]}) as fake:
        async with AioPath("channel", fake.target).stub(narrow) as stub:
            response = await stub.ListApps(service_pb2.ListAppsRequest(), timeout=T)
        assert response.status.code == status_code_pb2.CONN_INSUFFICIENT_SCOPES
        assert len(fake.calls_to("ListApps")) == 1


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    ],
    ids=lambda code: code.name,
)
def test_other_grpc_failures_are_not_retried(
    path: Path, fake: FakeClarifai, code: grpc.StatusCode
) -> None:
    fake.script("PostModelOutputs", Fail(code, "nope"), Reply(output("never reached")))
    with pytest.raises(grpc.RpcError) as failure:
        path.stub().PostModelOutputs(predict_request(), timeout=T)
    assert failure.value.code() is code
    assert failure.value.details() == "nope"
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND],
    ids=lambda c: c.name,
)
async def test_other_grpc_failures_are_not_retried_on_aio(
    aio_path: AioPath, fake: FakeClarifai, code: grpc.StatusCode
) -> None:
    fake.script("PostModelOutputs", Fail(code, "bad"), Reply(output("never reached")))
    async with aio_path.stub() as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request(), timeout=T)
    assert failure.value.code() is code
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.parametrize(
    "status",
    [
        status_code_pb2.FAILURE,
        status_code_pb2.MODEL_DOES_NOT_EXIST,
        status_code_pb2.CONN_EXCEED_HOURLY_LIMIT,
        status_code_pb2.INPUT_INVALID_ARGUMENT,
    ],
    ids=status_code_pb2.StatusCode.Name,
)
def test_other_body_failures_are_not_retried(path: Path, fake: FakeClarifai, status: int) -> None:
    failed = output("failed", status)
    failed.status.details = "as the server said it"
    fake.script("PostModelOutputs", Reply(failed), Reply(output("never reached")))
    assert path.stub().PostModelOutputs(predict_request(), timeout=T) == failed
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.parametrize("status", NOT_RETRIED_BY_DEFAULT, ids=status_code_pb2.StatusCode.Name)
@pytest.mark.parametrize("method", ["PostModelOutputs", "PostInputs"])  # a read, a write
def test_quota_and_decided_against_statuses_are_not_retried_by_default(
    fake: FakeClarifai, status: int, method: str
) -> None:
    fake.script(method, Status(status), SUCCESS)
    with insecure_channel(fake.target, DEFAULT) as channel:  # every default: reads and writes
        call = getattr(service_pb2_grpc.V2Stub(channel), method)
        request = getattr(service_pb2, f"{method}Request")()
        assert call(request, timeout=T).status.code == status
    assert len(fake.calls_to(method)) == 1


# -- the use_retry override; concurrent retries ----------------------------------------------


def test_use_retry_overrides_the_default_policy_and_restores(
    path: Path, fake: FakeClarifai
) -> None:
    stub = path.stub(retry=None)  # no retries by default
    fake.script("PostModelOutputs", UNAVAILABLE, UNAVAILABLE)
    with pytest.raises(grpc.RpcError):
        stub.PostModelOutputs(predict_request(), timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 1
    with use_retry(FAST):
        assert stub.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    assert len(fake.calls_to("PostModelOutputs")) == 3

    retrying = path.stub(retry=FAST)
    fake.clear()
    fake.script("PostModelOutputs", UNAVAILABLE)
    with use_retry(None), pytest.raises(grpc.RpcError) as failure:
        retrying.PostModelOutputs(predict_request(), timeout=T)
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("PostModelOutputs")) == 1
    fake.script("PostModelOutputs", UNAVAILABLE)
    assert retrying.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    assert len(fake.calls_to("PostModelOutputs")) == 3


@pytest.mark.asyncio
async def test_use_retry_overrides_the_default_policy_in_a_coroutine(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE, UNAVAILABLE)
    async with aio_path.stub(retry=None) as stub:  # no retries by default
        with pytest.raises(grpc.RpcError):
            await stub.PostModelOutputs(predict_request(), timeout=T)
        assert len(fake.calls_to("PostModelOutputs")) == 1
        with use_retry(FAST):
            assert (
                await stub.PostModelOutputs(predict_request(), timeout=T)
            ).status.code == SUCCESS
        assert len(fake.calls_to("PostModelOutputs")) == 3
    fake.clear()
    fake.script("GenerateModelOutputs", UNAVAILABLE)
    async with aio_path.stub(retry=FAST) as retrying:
        with use_retry(None), pytest.raises(grpc.RpcError) as failure:
            await read_all(aio_generate(retrying))
        assert failure.value.code() is UNAVAILABLE
        assert len(fake.calls_to("GenerateModelOutputs")) == 1


def test_concurrent_retries_do_not_share_state(path: Path, fake: FakeClarifai) -> None:
    threads = 16
    # No budget here: 16 failures would spend the channel's shared one (that is its purpose).
    stub = path.stub(retry=dataclasses.replace(FAST, max_attempts=threads + 2, budget=None))
    fake.script("PostModelOutputs", *[UNAVAILABLE] * threads)
    barrier = threading.Barrier(threads)

    def worker(i: int) -> str:
        barrier.wait(timeout=T)
        response = stub.PostModelOutputs(predict_request(f"model-{i}"), timeout=T)
        return f"{response.status.code}"

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads)))
    assert results == [f"{SUCCESS}"] * threads
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == threads * 2  # every failure retried once more, nothing more
    assert {call.request.model_id for call in calls} == {f"model-{i}" for i in range(threads)}
    assert all(credentials_sent(call) == [PAT_HEADER] for call in calls)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream"])
async def test_retry_waits_do_not_block_the_event_loop(
    aio_path: AioPath, fake: FakeClarifai, kind: str
) -> None:
    policy = RetryPolicy(initial_backoff=0.5, jitter=0)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with aio_path.channel(retry=policy) as channel:
        await aio_warm_up(service_pb2_grpc.V2Stub(channel), fake)
        fake.script("PostModelOutputs", UNAVAILABLE)
        fake.script("GenerateModelOutputs", UNAVAILABLE)
        ticker = asyncio.create_task(tick())
        method = await aio_invoke(kind, channel, fake)
        ticker.cancel()
    # A 0.5 s wait that blocked the loop would leave the ticker a tick or two.
    assert ticks >= 10
    assert len(fake.calls_to(method)) == 2


# -- server pushback -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream"])
def test_server_pushback_minus_one_stops_the_retries(
    path: Path, fake: FakeClarifai, kind: str
) -> None:
    method = "PostModelOutputs" if kind == "unary_unary" else "GenerateModelOutputs"
    refusal = Fail(UNAVAILABLE, "go away", (("grpc-retry-pushback-ms", "-1"),))
    fake.script(method, refusal, Reply(output("never reached")))
    with pytest.raises(grpc.RpcError) as failure:
        call_and_read(kind, path.channel())
    assert failure.value.code() is UNAVAILABLE
    assert failure.value.details() == "go away"
    assert len(fake.calls_to(method)) == 1


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


def test_server_pushback_lengthens_the_wait(path: Path, fake: FakeClarifai) -> None:
    # The policy would wait 1 ms; the server says 300 ms, and is obeyed (never the reverse:
    # a pushback of 0 does not cut a backoff short, see test_retry).
    stub = path.stub(retry=RetryPolicy(initial_backoff=0.001, jitter=0, timeout=60))
    fake.script(
        "PostModelOutputs",
        Fail(UNAVAILABLE, "", (("grpc-retry-pushback-ms", "300"),)),
        Reply(output("ok")),
    )
    started = time.monotonic()
    response = stub.PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    assert 0.3 <= time.monotonic() - started < 5
    assert len(fake.calls_to("PostModelOutputs")) == 2


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


@pytest.mark.asyncio
async def test_a_huge_pushback_never_parks_an_aio_call(fake: FakeClarifai) -> None:
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.2, jitter=0)
    pushback = (("grpc-retry-pushback-ms", "9223372036854775807"),)
    fake.set_default("ListModels", Fail(UNAVAILABLE, "", pushback))
    async with cia.insecure_channel(fake.target, DEFAULT, retry=policy) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            await service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest())
    assert time.monotonic() - started < 5  # four waits of max_backoff at most
    assert len(fake.calls_to("ListModels")) == policy.max_attempts


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
        assert (
            len([m async for m in stub.GenerateModelOutputs(bare_predict_request(), timeout=T)])
            == 3
        )
    assert attempt_headers(fake.calls_to("ListModels")) == [None, "1", "2"]
    assert attempt_headers(fake.calls_to("GenerateModelOutputs")) == [None, "1"]


# -- a retry resends what the first attempt sent ---------------------------------------------


def test_a_retry_after_future_resends_the_original_message(fake: FakeClarifai) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        fake.script("PostInputs", Delay(0.2, Fail(UNAVAILABLE)))  # the caller moves on meanwhile
        request = service_pb2.PostInputsRequest()
        request.inputs.add(id="original")
        future = service_pb2_grpc.V2Stub(channel).PostInputs.future(request, timeout=T)
        request.inputs[0].id = "mutated-after-future"  # the caller reuses its message
        future.result(timeout=T)
        seen[name] = _ids(fake, "PostInputs")
    assert seen == {name: ["original", "original"] for name in seen}
    assert len(seen) == 4


def test_a_retried_response_stream_resends_the_message_it_was_called_with(
    fake: FakeClarifai,
) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        fake.script("GenerateModelOutputs", Fail(UNAVAILABLE))  # before the first message
        request = service_pb2.PostModelOutputsRequest(model_id="m")
        request.inputs.add(id="original")
        stream = service_pb2_grpc.V2Stub(channel).GenerateModelOutputs(request, timeout=T)
        request.inputs[0].id = "mutated-before-reading"
        assert len(list(stream)) == 3
        seen[name] = _ids(fake, "GenerateModelOutputs")
    assert seen == {name: ["original", "original"] for name in seen}
    assert len(seen) == 4


def test_a_retried_request_list_resends_what_was_first_sent(fake: FakeClarifai) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        one = service_pb2.MultiOutputResponse()
        fake.script("StreamModelOutputs", Delay(0.3, Fail(UNAVAILABLE)), Reply(one))
        requests = [service_pb2.PostModelOutputsRequest(model_id="m") for _ in range(2)]
        for number, request in enumerate(requests):
            request.inputs.add(id=f"original-{number}")
        stream_unary = channel.stream_unary(  # V2 has no stream-unary method: its bidi one
            "/clarifai.api.V2/StreamModelOutputs",
            request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
            response_deserializer=service_pb2.MultiOutputResponse.FromString,
        )
        future = stream_unary.future(requests, timeout=T)
        deadline = time.monotonic() + T
        while not fake.calls_to("StreamModelOutputs") and time.monotonic() < deadline:
            time.sleep(0.005)  # the first attempt has sent every message (the fake read them)
        for request in requests:
            request.inputs[0].id = "mutated-after-sending"
        future.result(timeout=T)
        seen[name] = [
            [request.inputs[0].id for request in call.requests]
            for call in fake.calls_to("StreamModelOutputs")
        ]
    assert seen == {name: [["original-0", "original-1"]] * 2 for name in seen}
    assert len(seen) == 4
