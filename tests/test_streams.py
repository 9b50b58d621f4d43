"""Streams: response streams retried only before their first message (the commit rule), what the
caller reads and the call object it holds, done callbacks; client streams (stream-unary and
stream-stream) replayed from a sequence, never from an iterator. Each sync test is followed by
its aio twin."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest
import tenacity
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, AioPath, Path, T
from helpers import (
    PAT_HEADER,
    STREAM_METHOD,
    THROTTLED,
    UAI,
    UNAVAILABLE,
    agenerator,
    aio_generate,
    aio_stream_unary,
    aio_wait_until,
    credentials_sent,
    generate,
    generator,
    ids,
    metadata_pairs,
    output,
    predict_request,
    read_all,
    stream_unary,
    three_requests,
    wait_until,
)

from clarifai_interceptor import RetryPolicy, aio
from clarifai_interceptor.testing import Fail, FakeClarifai, Reply, Stream


def drain(responses: Iterable[service_pb2.MultiOutputResponse], into: list[str]) -> None:
    """Read a response stream, noting each output id as it arrives (before any error)."""
    for response in responses:
        into.append(response.outputs[0].id)  # noqa: PERF401 (keep what came before an error)


REPLAYABLE = [list, tuple]

ONE_SHOT = [iter, generator]


async def read_into(received: list[Any], stream: Any) -> None:
    """Read a stream into ``received``, keeping what arrived before an error."""
    async for message in stream:
        received.append(message)  # noqa: PERF401 (the list outlives an error)


class OuterUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Placed before ours: records what ours returns to grpc.aio."""

    def __init__(self) -> None:
        self.returned: list[Any] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.returned.append(await continuation(details, request))
        return self.returned[-1]


class OuterStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Placed before ours: records what ours returns to grpc.aio."""

    def __init__(self) -> None:
        self.returned: list[Any] = []

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.returned.append(await continuation(details, requests))
        return self.returned[-1]


# -- response streams: retried only before the first message ---------------------------------


def test_stream_retried_on_an_error_before_the_first_message(
    path: Path, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Stream([], error=Fail(UNAVAILABLE)),
        Stream([output("a"), output("b"), output("c")]),
    )
    stream = generate(path.stub())
    assert ids(stream) == ["a", "b", "c"]
    assert stream.code() is grpc.StatusCode.OK
    calls = fake.calls_to("GenerateModelOutputs")
    assert len(calls) == 3
    assert all(call.request.user_app_id == UAI for call in calls)


@pytest.mark.asyncio
async def test_stream_retried_on_an_error_before_the_first_message_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Stream([], error=Fail(UNAVAILABLE)),
        Stream([output("a"), output("b"), output("c")]),
    )
    async with aio_path.stub() as stub:
        stream = aio_generate(stub)
        assert ids(await read_all(stream)) == ["a", "b", "c"]
        assert await stream.code() is grpc.StatusCode.OK
    calls = fake.calls_to("GenerateModelOutputs")
    assert len(calls) == 3
    assert [c.header("x-retry-attempt") for c in calls] == [None, "1", "2"]
    assert all(call.request.user_app_id == UAI for call in calls)


def test_stream_retried_on_a_retryable_first_message(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("busy", status_code_pb2.MODEL_LOADING), output("dropped")]),
        Stream([output("a"), output("b")]),
    )
    assert ids(generate(path.stub())) == ["a", "b"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_retried_on_a_retryable_first_message_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("busy", status_code_pb2.MODEL_LOADING), output("dropped")]),
        Stream([output("a"), output("b")]),
    )
    async with aio_path.stub() as stub:
        assert ids(await read_all(aio_generate(stub))) == ["a", "b"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


def test_stream_exhausted_delivers_the_last_attempt_whole(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("first", THROTTLED)]),
        Stream([output("last", THROTTLED), output("then")]),
        Stream([output("never reached")]),
    )
    stub = path.stub(retry=dataclasses.replace(FAST, max_attempts=2))
    assert ids(generate(stub)) == ["last", "then"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_exhausted_delivers_the_last_attempt_whole_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("first", THROTTLED)]),
        Stream([output("last", THROTTLED), output("then")]),
        Stream([output("never reached")]),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=2)) as stub:
        assert ids(await read_all(aio_generate(stub))) == ["last", "then"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


def test_stream_exhausted_raises_the_last_error(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        Fail(UNAVAILABLE, "attempt 1"),
        Fail(UNAVAILABLE, "attempt 2"),
        Stream([output("never reached")]),
    )
    stream = generate(path.stub(retry=dataclasses.replace(FAST, max_attempts=2)))
    with pytest.raises(grpc.RpcError) as failure:
        next(stream)
    assert not isinstance(failure.value, tenacity.RetryError)
    assert failure.value.code() is UNAVAILABLE
    assert failure.value.details() == "attempt 2"
    assert stream.code() is UNAVAILABLE
    assert stream.details() == "attempt 2"
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_exhausted_raises_the_last_error_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Fail(UNAVAILABLE, "attempt 1"),
        Fail(UNAVAILABLE, "attempt 2", (("x-attempt", "2"),)),
        Stream([output("never reached")]),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=2)) as stub:
        stream = aio_generate(stub)
        with pytest.raises(grpc.RpcError) as failure:
            await stream.read()
        assert type(failure.value) is grpc.aio.AioRpcError
        assert failure.value.code() is UNAVAILABLE
        assert failure.value.details() == "attempt 2"
        assert await stream.code() is UNAVAILABLE
        assert await stream.details() == "attempt 2"
        assert ("x-attempt", "2") in metadata_pairs(await stream.trailing_metadata())
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.parametrize(
    "failure",
    [Fail(UNAVAILABLE, "mid-stream"), Fail(grpc.StatusCode.INTERNAL, "mid-stream")],
    ids=["UNAVAILABLE", "INTERNAL"],
)
def test_stream_not_retried_after_the_first_message(
    path: Path, fake: FakeClarifai, failure: Fail
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b")], error=failure),
        Stream([output("duplicate a"), output("duplicate b")]),
    )
    stream = generate(path.stub())
    received: list[str] = []
    with pytest.raises(grpc.RpcError) as raised:
        drain(stream, received)
    assert received == ["a", "b"]
    assert raised.value.code() is failure.code
    assert raised.value.details() == "mid-stream"
    assert stream.code() is failure.code
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "failure",
    [Fail(UNAVAILABLE, "mid-stream"), Fail(grpc.StatusCode.INTERNAL, "mid-stream")],
    ids=["UNAVAILABLE", "INTERNAL"],
)
async def test_stream_not_retried_after_the_first_message_on_aio(
    aio_path: AioPath, fake: FakeClarifai, failure: Fail
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b")], error=failure),
        Stream([output("duplicate a"), output("duplicate b")]),
    )
    received: list[Any] = []
    async with aio_path.stub() as stub:
        stream = aio_generate(stub)
        with pytest.raises(grpc.RpcError) as raised:
            await read_into(received, stream)
        assert await stream.code() is failure.code
    assert ids(received) == ["a", "b"]
    assert raised.value.code() is failure.code
    assert raised.value.details() == "mid-stream"
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


def test_stream_retryable_status_after_the_first_message_is_delivered(
    path: Path, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b", THROTTLED), output("c")]),
        Stream([output("duplicate")]),
    )
    assert ids(generate(path.stub())) == ["a", "b", "c"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
async def test_stream_retryable_status_after_the_first_message_is_delivered_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b", THROTTLED), output("c")]),
        Stream([output("duplicate")]),
    )
    async with aio_path.stub() as stub:
        assert ids(await read_all(aio_generate(stub))) == ["a", "b", "c"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
async def test_the_callers_stream_reads_and_reports_the_kept_attempt(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Fail(UNAVAILABLE, "attempt 1", (("x-attempt", "1"),)),
        Stream(
            [output("a"), output("b"), output("c")],
            error=Fail(grpc.StatusCode.INTERNAL, "attempt 2 broke", (("x-attempt", "2"),)),
        ),
    )
    done: list[object] = []
    async with aio_path.stub() as stub:
        stream = aio_generate(stub)
        stream.add_done_callback(done.append)
        assert ids([await stream.read()]) == ["a"]
        assert isinstance(await stream.initial_metadata(), grpc.aio.Metadata)
        received: list[Any] = []
        with pytest.raises(grpc.RpcError) as failure:  # read() then async for, on one object
            await read_into(received, stream)
        assert ids(received) == ["b", "c"]
        assert failure.value.code() is grpc.StatusCode.INTERNAL
        assert await stream.code() is grpc.StatusCode.INTERNAL
        assert await stream.details() == "attempt 2 broke"
        assert ("x-attempt", "2") in metadata_pairs(await stream.trailing_metadata())
        assert stream.done()
        await aio_wait_until(lambda: done == [stream])
        assert stream.cancel() is False  # nothing left to cancel
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_a_retried_stream_read_ends_with_eof(aio_path: AioPath, fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", UNAVAILABLE, Stream([output("a")]), UNAVAILABLE, Stream([]))
    async with aio_path.stub() as stub:
        stream = aio_generate(stub)
        assert ids([await stream.read()]) == ["a"]
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() is grpc.StatusCode.OK
        empty = aio_generate(stub)
        assert await empty.read() is grpc.aio.EOF
        assert await empty.code() is grpc.StatusCode.OK
    assert len(fake.calls_to("GenerateModelOutputs")) == 4


@pytest.mark.asyncio
async def test_a_stream_not_retried_read_ends_with_eof(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    # The caller reads gRPC's own call through gRPC's wrapper, which on grpcio 1.64 and older
    # raised StopAsyncIteration at the end (_aio_fixes gives it 1.65's read()).
    fake.script("GenerateModelOutputs", Stream([output("a")]))
    fake.script(STREAM_METHOD, Stream([output("b")]))
    async with aio_path.stub(retry=None) as stub:
        server_stream = aio_generate(stub)
        bidi = stub.StreamModelOutputs(three_requests(), timeout=T)
        for stream, expected in ((server_stream, "a"), (bidi, "b")):
            assert ids([await stream.read()]) == [expected]
            assert await stream.read() is grpc.aio.EOF
            assert await stream.code() is grpc.StatusCode.OK


# -- the call object of a response stream ----------------------------------------------------


def test_stream_is_a_full_call_and_iterator(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Stream([output("a"), output("b")]),
    )
    done: list[object] = []
    stream = generate(path.stub())
    assert isinstance(stream, grpc.Call)
    assert iter(stream) is stream
    stream.add_done_callback(done.append)
    remaining = stream.time_remaining()
    assert remaining is not None
    assert 0 < remaining <= T
    assert ids([next(stream)]) == ["a"]
    assert ids(stream) == ["b"]
    assert stream.code() is grpc.StatusCode.OK
    assert isinstance(stream.details(), str | None)
    assert isinstance(tuple(stream.initial_metadata()), tuple)
    assert isinstance(tuple(stream.trailing_metadata()), tuple)
    wait_until(lambda: not stream.is_active())
    wait_until(lambda: done == [stream])
    assert stream.cancel() is False  # nothing left to cancel
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_a_retried_stream_is_handed_to_grpc_as_a_full_call_object(fake: FakeClarifai) -> None:
    # grpc.aio hands a call object on as it is (an iterator it would wrap around the first
    # attempt): the caller's call then reports on the attempt that was kept.
    outer = [OuterUnaryStream(), OuterStreamStream()]
    fake.script("GenerateModelOutputs", UNAVAILABLE, Stream([output("a")]))
    fake.script(STREAM_METHOD, UNAVAILABLE, Stream([output("b")]))
    chain = [*outer, *aio.interceptors(PAT_CREDS, retry=FAST)]
    async with grpc.aio.insecure_channel(fake.target, interceptors=chain) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        server_stream = aio_generate(stub)
        bidi = stub.StreamModelOutputs(three_requests(), timeout=T)
        assert ids(await read_all(server_stream)) == ["a"]
        assert ids(await read_all(bidi)) == ["b"]
        for stream in (server_stream, bidi):
            await stream.wait_for_connection()
            assert isinstance(await stream.debug_error_string(), str)
        (kept_unary,), (kept_bidi,) = (spy.returned for spy in outer)
        assert isinstance(kept_unary, grpc.aio.UnaryStreamCall)
        assert isinstance(kept_bidi, grpc.aio.StreamStreamCall)
        for kept in (kept_unary, kept_bidi):
            remaining = kept.time_remaining()
            assert remaining is not None
            assert 0 < remaining <= T
            assert await kept.read() is grpc.aio.EOF
            assert await kept.code() is grpc.StatusCode.OK
        # The requests were a list: like grpc's own call, the kept one takes no writes.
        with pytest.raises(grpc.aio.UsageError):
            await kept_bidi.write(predict_request())
        with pytest.raises(grpc.aio.UsageError):
            await kept_bidi.done_writing()
    assert len(fake.calls) == 4


def test_stream_done_callback_added_after_the_end_runs(path: Path, fake: FakeClarifai) -> None:
    # grpc.Future.add_done_callback: "If the computation has already completed, the callback
    # will be called immediately", as on gRPC's own response streams.
    fake.script("GenerateModelOutputs", UNAVAILABLE, Stream([output("a")]))
    stream = generate(path.stub())
    assert ids(stream) == ["a"]
    done: list[object] = []
    stream.add_done_callback(done.append)
    wait_until(lambda: done == [stream], timeout=5)


def test_stream_done_callback_runs_when_retries_run_out(path: Path, fake: FakeClarifai) -> None:
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    stream = generate(path.stub(retry=dataclasses.replace(FAST, max_attempts=2)))
    done: list[object] = []
    stream.add_done_callback(done.append)
    with pytest.raises(grpc.RpcError):
        next(stream)
    wait_until(lambda: done == [stream], timeout=5)
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


def test_stream_status_is_available_before_reading(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Fail(grpc.StatusCode.INVALID_ARGUMENT, "bad input"),
        Stream([output("never reached")]),
    )
    stream = generate(path.stub())
    assert stream.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert stream.details() == "bad input"
    with pytest.raises(grpc.RpcError) as failure:
        next(stream)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


# -- client streams: replayed from a sequence, never from an iterator ------------------------


@pytest.mark.parametrize("make", REPLAYABLE, ids=["list", "tuple"])
def test_stream_stream_sequence_is_replayed(
    path: Path, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(
        STREAM_METHOD,
        UNAVAILABLE,
        Stream([output("throttled", THROTTLED)]),
        Stream([output("a"), output("b")]),
    )
    responses = path.stub().StreamModelOutputs(make(three_requests()), timeout=T)
    assert ids(responses) == ["a", "b"]
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 3
    expected = three_requests()
    for message in expected:
        message.user_app_id.CopyFrom(UAI)
    assert [list(call.requests) for call in calls] == [expected] * 3
    assert [call.header("x-retry-attempt") for call in calls] == [None, "1", "2"]


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [list, tuple], ids=["list", "tuple"])
async def test_stream_stream_sequence_is_replayed_on_aio(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(
        STREAM_METHOD,
        UNAVAILABLE,
        Stream([output("busy", THROTTLED)]),
        Stream([output("a"), output("b")]),
    )
    async with aio_path.stub() as stub:
        responses = stub.StreamModelOutputs(make(three_requests()), timeout=T)
        assert ids(await read_all(responses)) == ["a", "b"]
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 3
    for call in calls:
        assert [r.model_id for r in call.requests] == ["model-0", "model-1", "model-2"]
        assert all(r.user_app_id == UAI for r in call.requests)


@pytest.mark.parametrize("make", ONE_SHOT, ids=["iterator", "generator"])
def test_stream_stream_iterator_is_never_replayed(
    path: Path, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, Fail(UNAVAILABLE, "down"), Stream([output("never reached")]))
    responses = path.stub().StreamModelOutputs(make(three_requests()), timeout=T)
    with pytest.raises(grpc.RpcError) as failure:
        list(responses)
    assert failure.value.code() is UNAVAILABLE
    assert failure.value.details() == "down"
    (call,) = fake.calls_to(STREAM_METHOD)
    assert [r.model_id for r in call.requests] == ["model-0", "model-1", "model-2"]


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [iter, generator, agenerator], ids=lambda f: f.__name__)
async def test_stream_stream_iterator_is_never_replayed_on_aio(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, UNAVAILABLE, Stream([output("never reached")]))
    async with aio_path.stub() as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await read_all(stub.StreamModelOutputs(make(three_requests()), timeout=T))
    assert failure.value.code() is UNAVAILABLE
    (call,) = fake.calls_to(STREAM_METHOD)
    assert len(call.requests) == 3


def test_stream_stream_not_retried_after_the_first_message(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        STREAM_METHOD,
        Stream([output("a")], error=Fail(UNAVAILABLE, "mid-stream")),
        Stream([output("duplicate")]),
    )
    responses = path.stub().StreamModelOutputs(three_requests(), timeout=T)
    received: list[str] = []
    with pytest.raises(grpc.RpcError) as failure:
        drain(responses, received)
    assert received == ["a"]
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to(STREAM_METHOD)) == 1


@pytest.mark.asyncio
async def test_stream_stream_not_retried_after_the_first_message_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        STREAM_METHOD,
        Stream([output("a")], error=Fail(UNAVAILABLE, "mid-stream")),
        Stream([output("duplicate")]),
    )
    received: list[Any] = []
    async with aio_path.stub() as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await read_into(received, stub.StreamModelOutputs(three_requests(), timeout=T))
    assert ids(received) == ["a"]
    assert failure.value.details() == "mid-stream"
    assert len(fake.calls_to(STREAM_METHOD)) == 1


@pytest.mark.parametrize("make", REPLAYABLE, ids=["list", "tuple"])
@pytest.mark.parametrize("how", ["call", "with_call", "future"])
def test_stream_unary_sequence_is_replayed(
    path: Path, fake: FakeClarifai, make: Callable[[Any], Any], how: str
) -> None:
    fake.script(STREAM_METHOD, UNAVAILABLE, Reply(output("busy", THROTTLED)), Reply(output("ok")))
    multi_callable = stream_unary(path.channel())
    if how == "call":
        response = multi_callable(make(three_requests()), timeout=T)
    elif how == "with_call":
        response, call = multi_callable.with_call(make(three_requests()), timeout=T)
        assert isinstance(call, grpc.Call)
        assert call.code() is grpc.StatusCode.OK
    else:
        future = multi_callable.future(make(three_requests()), timeout=T)
        assert isinstance(future, grpc.Future)
        assert isinstance(future, grpc.Call)
        response = future.result(timeout=T)
    assert ids([response]) == ["ok"]
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 3
    expected = three_requests()
    for message in expected:
        message.user_app_id.CopyFrom(UAI)
    assert [list(call.requests) for call in calls] == [expected] * 3
    assert all(credentials_sent(call) == [PAT_HEADER] for call in calls)


@pytest.mark.asyncio
async def test_stream_unary_sequence_is_replayed_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(STREAM_METHOD, UNAVAILABLE, Reply(output("busy", THROTTLED)), Reply(output("ok")))
    async with aio_path.channel() as channel:
        response = await aio_stream_unary(channel)(tuple(three_requests()), timeout=T)
    assert ids([response]) == ["ok"]
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 3
    for call in calls:
        assert [r.model_id for r in call.requests] == ["model-0", "model-1", "model-2"]
        assert all(r.user_app_id == UAI for r in call.requests)


@pytest.mark.parametrize("make", ONE_SHOT, ids=["iterator", "generator"])
def test_stream_unary_iterator_is_never_replayed(
    path: Path, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, Fail(UNAVAILABLE, "down"), Reply(output("never reached")))
    multi_callable = stream_unary(path.channel())
    with pytest.raises(grpc.RpcError) as failure:
        multi_callable(make(three_requests()), timeout=T)
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to(STREAM_METHOD)) == 1
    fake.clear()
    fake.script(STREAM_METHOD, Reply(output("busy", THROTTLED)), Reply(output("never reached")))
    response = multi_callable(make(three_requests()), timeout=T)
    assert response.status.code == THROTTLED
    (call,) = fake.calls_to(STREAM_METHOD)
    assert [r.model_id for r in call.requests] == ["model-0", "model-1", "model-2"]


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [iter, generator, agenerator], ids=lambda f: f.__name__)
async def test_stream_unary_iterator_is_never_replayed_on_aio(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, Fail(UNAVAILABLE, "once"), Reply(output("never reached")))
    async with aio_path.channel() as channel:
        with pytest.raises(grpc.RpcError) as failure:
            await aio_stream_unary(channel)(make(three_requests()), timeout=T)
    assert failure.value.code() is UNAVAILABLE
    assert failure.value.details() == "once"
    (call,) = fake.calls_to(STREAM_METHOD)
    assert len(call.requests) == 3


@pytest.mark.parametrize("own_header", [False, True], ids=["default_credentials", "own_header"])
@pytest.mark.parametrize(
    "retry", [None, FAST, RetryPolicy(max_attempts=1)], ids=["None", "FAST", "one_attempt"]
)
def test_a_sequence_request_works_on_every_policy(
    path: Path, fake: FakeClarifai, retry: RetryPolicy | None, own_header: bool
) -> None:
    metadata = [("authorization", "Key fake-caller-pat-for-tests")] if own_header else None
    channel = path.channel(retry=retry)
    for make in REPLAYABLE:
        fake.script(STREAM_METHOD, Reply(output("single")))
        assert ids([stream_unary(channel)(make(three_requests()), timeout=T)]) == ["single"]
        responses = service_pb2_grpc.V2Stub(channel).StreamModelOutputs(
            make(three_requests()), timeout=T, metadata=metadata
        )
        assert len(list(responses)) == 3
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 4
    assert all(len(call.requests) == 3 for call in calls)
