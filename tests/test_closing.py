"""Closing and cancelling: `Closing` (what ends the waits between attempts when a channel closes),
a closed channel ending every pending retry wait and permit wait at once, channels as context
managers, cancelling a call, a future, a task or a stream (in flight or mid-backoff), Ctrl-C, and
rate-limit permits given back by calls that end without sending. Sync tests sit beside their aio
twins."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, AioPath, Path, T
from helpers import (
    DEFAULT,
    PAT_HEADER,
    SUCCESS,
    THROTTLED,
    UAI,
    UNAVAILABLE,
    aio_generate,
    aio_wait_until,
    aio_warm_up,
    credentials_sent,
    generate,
    ids,
    output,
    predict_request,
    read_all,
    wait_until,
)

from clarifai_interceptor import (
    ClarifaiInterceptor,
    RateLimit,
    RetryPolicy,
    aio,
    insecure_channel,
    wrap_channel,
)
from clarifai_interceptor._attempts import Attempts
from clarifai_interceptor._closing import CLOSED_DETAILS, CancelledCall, Closing, closed
from clarifai_interceptor._steps import Wait
from clarifai_interceptor.instrumentation import set_on_retry_hooks
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, Reply, Stream


def test_close_wakes_every_sleeper_at_once_and_later_sleeps_return_at_once() -> None:
    closing = Closing()
    woke: list[bool] = []
    sleepers = [threading.Thread(target=lambda: woke.append(closing.sleep(60))) for _ in range(5)]
    for sleeper in sleepers:
        sleeper.start()
    time.sleep(0.05)
    closing.close()
    for sleeper in sleepers:
        sleeper.join(T)
    assert woke == [True] * 5
    assert closing.sleep(60) is True  # closed already: no wait at all
    closing.close()  # idempotent


def test_an_open_channel_sleeps_the_whole_wait() -> None:
    closing = Closing()
    assert closing.sleep(0) is False
    assert closing.sleep(0.01) is False


def test_watchers_are_woken_once_and_unwatched_ones_never() -> None:
    closing = Closing()
    seen: list[str] = []
    closing.watch(lambda: seen.append("a"))
    unwatch = closing.watch(lambda: seen.append("b"))
    unwatch()
    closing.close()
    closing.close()
    assert seen == ["a"]
    closing.watch(lambda: seen.append("late"))  # after the close: woken at once
    assert seen == ["a", "late"]


class _Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple[()]:
        return ()


UNAVAILABLE_ERROR = _Unavailable()


def test_a_call_ended_by_a_close_is_cancelled_and_counts_only_the_attempts_sent() -> None:
    error = closed()
    assert isinstance(error, CancelledCall)
    assert isinstance(error, grpc.RpcError)
    assert (error.code(), error.details()) == (grpc.StatusCode.CANCELLED, CLOSED_DETAILS)
    closing = Closing()
    attempts = Attempts(RetryPolicy(jitter=0), "M", None, closing=closing)
    flow = attempts.flow(UNAVAILABLE_ERROR)  # the first attempt failed; the second is waited for
    wait = next(flow)
    assert isinstance(wait, Wait)
    closing.close()
    ended = attempts.sleep(wait.seconds)
    assert ended is not None
    assert ended.details() == CLOSED_DETAILS
    with pytest.raises(StopIteration) as stop:
        flow.send(ended)
    assert stop.value.value is ended
    assert (attempts.number, attempts.sent) == (1, 1)


# -- helpers of the tests below --------------------------------------------------------------
CANCELLED = grpc.StatusCode.CANCELLED


async def wait_for(call: Any) -> Any:
    """Await a call: a coroutine for ``asyncio.create_task``."""
    return await call


class UnarySpy(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Placed after ours: records the call of every attempt."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        self.calls.append(call)
        return call


class StreamSpy(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Placed after ours: records the call of every attempt."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        self.calls.append(call)
        return call


LONG_WAIT = RetryPolicy(initial_backoff=30, jitter=0, budget=None)  # a wait no test sits out


class Waiting:
    """An on-retry hook that counts the calls now waiting to retry."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0

    def __call__(self, _details: Any) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def until(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count >= count, T), self.count


@pytest.fixture
def waiting() -> Iterator[Waiting]:
    hook = Waiting()
    set_on_retry_hooks([hook])
    yield hook
    set_on_retry_hooks(None)


def _ended_by_close(error: BaseException | None) -> bool:
    return (
        isinstance(error, grpc.RpcError)
        and error.code() is grpc.StatusCode.CANCELLED
        and error.details() == CLOSED_DETAILS
    )


LIMIT = RateLimit(per_second=2, burst=1)

#: Calls left waiting for permits: 5 s of slots at 2/s.
WAITING = 10

#: "At once": well under the 5 s the dead slots would make the next call wait. The next call has
#: this timeout, so that the limiter refuses it at once rather than wait 5 s.
PROMPT = 2.5

Build = Callable[[], tuple[grpc.Channel, Callable[[], None]]]


@pytest.fixture(params=("interceptor", "wrapper"))
def build(request: pytest.FixtureRequest, fake: FakeClarifai) -> Iterator[Build]:
    """Builds a channel of ours to ``fake`` under `LIMIT` with the PAT, and its close: the
    wrapper's ``close()``, or the interceptor's ``close()`` with its channel's. Every channel
    built is closed after the test."""
    closers: list[Callable[[], None]] = []

    def make() -> tuple[grpc.Channel, Callable[[], None]]:
        if request.param == "wrapper":
            wrapped = insecure_channel(fake.target, PAT_CREDS, retry=FAST, rate_limit=LIMIT)
            closers.append(wrapped.close)
            return wrapped, wrapped.close
        raw = grpc.insecure_channel(fake.target)
        interceptor = ClarifaiInterceptor(
            PAT_CREDS, retry=FAST, rate_limit=LIMIT, target=fake.target
        )

        def close() -> None:
            interceptor.close()
            raw.close()

        closers.append(close)
        return grpc.intercept_channel(raw, interceptor), close

    yield make
    for close in closers:
        close()


def list_request() -> service_pb2.ListModelsRequest:
    return service_pb2.ListModelsRequest()


def start_waiting(stub: service_pb2_grpc.V2Stub) -> list[grpc.Future]:
    """One call that goes at once (the burst), then `WAITING` futures that wait for permits:
    ``future()`` returns once its permit is booked."""
    first = stub.ListModels.future(list_request(), timeout=T)
    waiting = [stub.ListModels.future(list_request(), timeout=T) for _ in range(WAITING)]
    assert first.result(timeout=T).status.code == status_code_pb2.SUCCESS
    assert not any(future.done() for future in waiting)  # they wait for their slots
    return waiting


def assert_prompt(took: float, outcome: object) -> None:
    """The call succeeded within `PROMPT` seconds."""
    assert not isinstance(outcome, grpc.RpcError), (
        f"the call found no permit within {PROMPT} s, behind slots nobody used: {outcome!r}"
    )
    assert outcome.status.code == status_code_pb2.SUCCESS  # type: ignore[attr-defined]
    assert took < PROMPT, f"the call waited {took:.2f} s behind slots nobody used"


def timed_call(build: Build) -> tuple[float, object]:
    """One call on a new channel with the same PAT, with a `PROMPT` timeout (the limiter
    refuses at once a permit it cannot give within it): the seconds it took, and its response
    or its error."""
    channel, _close = build()
    stub = service_pb2_grpc.V2Stub(channel)
    started = time.monotonic()
    try:
        outcome: object = stub.ListModels(list_request(), timeout=PROMPT)
    except grpc.RpcError as exc:
        outcome = exc
    return time.monotonic() - started, outcome


def assert_next_call_is_not_delayed(fake: FakeClarifai, build: Build) -> None:
    """A call on a new channel with the same PAT goes at once and succeeds, and the calls that
    ended waiting sent nothing."""
    assert_prompt(*timed_call(build))
    assert len(fake.calls_to("ListModels")) == 2  # the first call and this one: nothing else


# -- closing a channel ends its calls' waits -------------------------------------------------


@pytest.mark.parametrize("front", ["wrapper", "interceptor"])
def test_closing_the_channel_ends_every_pending_retry_wait_at_once(
    fake: FakeClarifai, waiting: Waiting, front: str
) -> None:
    fake.set_default("ListModels", UNAVAILABLE)
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    raw = grpc.insecure_channel(fake.target)
    if front == "wrapper":
        channel = wrap_channel(raw, DEFAULT, retry=LONG_WAIT)
        close = channel.close
    else:  # gRPC tells an interceptor nothing of the close: it is told, with its own close()
        interceptor = ClarifaiInterceptor(DEFAULT, retry=LONG_WAIT)
        channel = grpc.intercept_channel(raw, interceptor)

        def close() -> None:
            interceptor.close()
            channel.close()

    stub = service_pb2_grpc.V2Stub(channel)
    futures = [
        stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=120) for _ in range(20)
    ]
    errors: list[BaseException | None] = []

    def blocking() -> None:
        try:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=120)
        except grpc.RpcError as exc:
            errors.append(exc)

    def streaming() -> None:
        try:
            list(stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=120))
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocking) for _ in range(3)]
    threads += [threading.Thread(target=streaming) for _ in range(3)]
    for thread in threads:
        thread.start()
    waiting.until(26)  # every call has failed once and waits 30 s to retry
    closed_at = time.monotonic()
    close()
    for thread in threads:
        thread.join(T)
    assert all(future.done() for future in futures)
    took = time.monotonic() - closed_at
    assert took < T  # not the 30 s wait
    errors += [future.exception() for future in futures]
    assert len(errors) == 26
    assert all(map(_ended_by_close, errors)), {str(e) for e in errors}
    assert len(fake.calls_to("ListModels")) == 23  # nothing more was sent
    assert len(fake.calls_to("GenerateModelOutputs")) == 3


def test_future_settles_when_its_channel_closes_during_a_retry_wait(
    path: Path, fake: FakeClarifai
) -> None:
    channel = path.channel(retry=RetryPolicy(initial_backoff=0.3, jitter=0))
    fake.script("PostModelOutputs", UNAVAILABLE)
    future = service_pb2_grpc.V2Stub(channel).PostModelOutputs.future(predict_request(), timeout=T)
    wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
    channel.close()
    # The retry cannot start on a closed channel: the future must still end (with an error),
    # not stay pending for ever.
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError, ValueError)):
        future.result(timeout=5)
    assert future.done()
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_a_call_ended_by_a_close_has_a_debug_error_string(fake: FakeClarifai) -> None:
    channel = insecure_channel(
        fake.target, PAT_CREDS, retry=RetryPolicy(initial_backoff=0.3, jitter=0)
    )
    fake.script("PostModelOutputs", UNAVAILABLE)
    future = service_pb2_grpc.V2Stub(channel).PostModelOutputs.future(predict_request(), timeout=T)
    wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
    channel.close()
    error = future.exception(timeout=5)
    assert _ended_by_close(error)
    assert isinstance(error, CancelledCall)
    expected = f"CANCELLED:{CLOSED_DETAILS} (ended by clarifai_interceptor: CancelledCall)"
    assert error.debug_error_string() == expected
    assert future.debug_error_string() == expected


def test_blocking_call_ends_when_its_channel_closes_during_a_retry_wait(
    path: Path, fake: FakeClarifai
) -> None:
    channel = path.channel(retry=RetryPolicy(initial_backoff=0.3, jitter=0))
    stub = service_pb2_grpc.V2Stub(channel)
    fake.script("PostModelOutputs", UNAVAILABLE)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            stub.PostModelOutputs(predict_request(), timeout=T)
        except (grpc.RpcError, ValueError) as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
    channel.close()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_a_call_on_a_closed_channel_gets_grpcs_own_error(fake: FakeClarifai) -> None:
    channel = wrap_channel(grpc.insecure_channel(fake.target), DEFAULT, retry=LONG_WAIT)
    channel.close()
    with pytest.raises(ValueError, match="closed channel"):
        service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)


def test_insecure_channel_is_a_context_manager_that_closes(fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE)
    with insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        assert stub.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 2
    assert all(c.request.user_app_id == UAI for c in calls)
    assert all(credentials_sent(c) == [PAT_HEADER] for c in calls)
    with pytest.raises(ValueError, match="closed channel"):
        stub.PostModelOutputs(predict_request(), timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 2


@pytest.mark.asyncio
async def test_insecure_channel_is_an_async_context_manager_that_closes(
    fake: FakeClarifai,
) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE)
    async with aio.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        assert (await stub.PostModelOutputs(predict_request(), timeout=T)).status.code == SUCCESS
        assert channel.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_wrap_channel_is_a_context_manager_that_closes_the_wrapped_channel(
    fake: FakeClarifai,
) -> None:
    raw = grpc.insecure_channel(fake.target)
    with wrap_channel(raw, PAT_CREDS, retry=FAST) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        assert stub.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    with pytest.raises(ValueError, match="closed channel"):
        service_pb2_grpc.V2Stub(raw).PostModelOutputs(predict_request(), timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 1


# -- cancelling a call; interrupts -----------------------------------------------------------


def test_future_cancel_during_a_retry_wait_stops_the_retries(
    path: Path, fake: FakeClarifai
) -> None:
    stub = path.stub(retry=RetryPolicy(initial_backoff=0.3, jitter=0))
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    future = stub.PostModelOutputs.future(predict_request(), timeout=T)
    wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
    time.sleep(0.1)  # let the client take the failure and start its 0.3 s wait
    assert future.cancel() is True
    with pytest.raises(grpc.FutureCancelledError):
        future.result(timeout=T)
    assert future.cancelled()
    assert future.done()
    assert future.code() is grpc.StatusCode.CANCELLED
    # No attempt may follow: wait well past the 0.3 s backoff and look again.
    time.sleep(1.0)
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.asyncio
async def test_cancelling_the_task_mid_backoff_stops_the_retries(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    policy = RetryPolicy(initial_backoff=0.5, jitter=0)
    async with aio_path.stub(retry=policy) as stub:
        await aio_warm_up(stub, fake)
        fake.script("PostModelOutputs", UNAVAILABLE, Reply(output("never reached")))
        task = asyncio.create_task(wait_for(stub.PostModelOutputs(predict_request(), timeout=T)))
        await asyncio.sleep(0.1)
        assert len(fake.calls_to("PostModelOutputs")) == 1  # the first attempt has failed
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.8)  # well past the 0.5 s the retry was due
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_future_cancel_while_an_attempt_is_in_flight(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", Delay(T, Reply(output("never"))), Reply(output("never")))
    future = path.stub().PostModelOutputs.future(predict_request(), timeout=T)
    wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
    assert future.cancel() is True
    # grpc.Future: once cancel() returned True the future is cancelled and done, at once (as
    # gRPC's own futures are), not when some callback gets round to it.
    assert future.cancelled()
    assert future.done()
    with pytest.raises(grpc.FutureCancelledError):
        future.result(timeout=T)
    assert future.code() is grpc.StatusCode.CANCELLED
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.asyncio
async def test_cancelling_the_task_cancels_the_attempt_in_flight(fake: FakeClarifai) -> None:
    spy = UnarySpy()
    fake.script("PostModelOutputs", Delay(T, UNAVAILABLE), Reply(output("never reached")))
    async with AioPath("interceptors", fake.target).channel(inner=[spy]) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        task = asyncio.create_task(wait_for(stub.PostModelOutputs(predict_request(), timeout=T)))
        await aio_wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 3)  # at once, not after the server's T s
        (attempt,) = spy.calls
        assert attempt.cancelled()
        assert await attempt.code() is CANCELLED
        await asyncio.sleep(0.3)
    assert len(spy.calls) == 1
    assert len(fake.calls_to("PostModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["in_flight", "mid_backoff"])
async def test_cancel_on_the_callers_call_stops_everything(
    aio_path: AioPath, fake: FakeClarifai, when: str
) -> None:
    policy = RetryPolicy(initial_backoff=T / 2, jitter=0)
    if when == "in_flight":
        fake.script("PostModelOutputs", Delay(T, UNAVAILABLE))
    else:
        fake.script("PostModelOutputs", UNAVAILABLE)
    async with aio_path.stub(retry=policy) as stub:
        call = stub.PostModelOutputs(predict_request(), timeout=T)
        await aio_wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
        await asyncio.sleep(0.1)
        assert call.cancel() is True
        assert await asyncio.wait_for(call.code(), 3) is CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        await asyncio.sleep(0.3)
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_stream_cancel_while_the_server_is_working(path: Path, fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", Delay(T, Stream([output("never")])))
    stream = generate(path.stub())
    wait_until(lambda: len(fake.calls_to("GenerateModelOutputs")) == 1)
    assert stream.cancel() is True
    with pytest.raises(grpc.RpcError) as failure:
        next(stream)
    assert failure.value.code() is grpc.StatusCode.CANCELLED
    assert stream.code() is grpc.StatusCode.CANCELLED
    assert not stream.is_active()
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


def test_stream_cancel_during_a_retry_wait_stops_the_retries(
    path: Path, fake: FakeClarifai
) -> None:
    stub = path.stub(retry=RetryPolicy(initial_backoff=8, jitter=0, timeout=60))
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    stream = generate(stub)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            next(stream)
        except grpc.RpcError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: len(fake.calls_to("GenerateModelOutputs")) == 1)
    stream.cancel()
    reader.join(timeout=4)  # half the 8 s wait: the cancel must have ended it
    assert not reader.is_alive()
    assert len(outcome) == 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


def test_stream_cancelled_during_a_retry_wait_reports_cancelled(
    path: Path, fake: FakeClarifai
) -> None:
    # Like the future's cancel(): the caller cancelled, so the call ends CANCELLED (gRPC's
    # meaning of a cancelled RPC), and cancel() says it cancelled something.
    stub = path.stub(retry=RetryPolicy(initial_backoff=8, jitter=0, timeout=60))
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    stream = generate(stub)
    outcome: list[grpc.RpcError] = []

    def read() -> None:
        try:
            next(stream)
        except grpc.RpcError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: len(fake.calls_to("GenerateModelOutputs")) == 1)
    time.sleep(0.2)  # let the reader reach its 8 s wait before the retry
    assert stream.cancel() is True
    reader.join(timeout=4)
    assert not reader.is_alive()
    assert [exc.code() for exc in outcome] == [grpc.StatusCode.CANCELLED]
    assert stream.code() is grpc.StatusCode.CANCELLED
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["in_flight", "mid_backoff"])
async def test_cancelling_a_stream_before_its_first_message_stops_everything(
    fake: FakeClarifai, when: str
) -> None:
    spy = StreamSpy()
    policy = RetryPolicy(initial_backoff=T / 2, jitter=0)
    if when == "in_flight":
        fake.script("GenerateModelOutputs", Delay(T, Stream([output("never reached")])))
    else:
        fake.script("GenerateModelOutputs", UNAVAILABLE)
    async with AioPath("interceptors", fake.target).channel(retry=policy, inner=[spy]) as ch:
        stream = aio_generate(service_pb2_grpc.V2Stub(ch))
        reader = asyncio.create_task(read_all(stream))
        await aio_wait_until(lambda: len(fake.calls_to("GenerateModelOutputs")) == 1)
        await asyncio.sleep(0.1)
        assert stream.cancel() is True
        assert await asyncio.wait_for(stream.code(), 3) is CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reader, 3)
        (attempt,) = spy.calls
        assert attempt.done()
        await asyncio.sleep(0.3)
    assert len(spy.calls) == 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["channel", "interceptors"])
async def test_abandoned_and_kept_stream_attempts_are_cancelled_on_the_server(kind: str) -> None:
    # FakeClarifai sends a whole stream at once; this server sends one message, then waits.
    ended = {n: asyncio.Event() for n in (1, 2, 3)}
    attempts = 0

    async def generate_outputs(request: Any, context: Any) -> AsyncIterator[Any]:
        nonlocal attempts
        attempts += 1
        number = attempts
        context.add_done_callback(lambda _context: ended[number].set())
        if number == 1:
            await context.abort(UNAVAILABLE, "attempt 1")
        yield output(f"attempt {number}", THROTTLED if number == 2 else SUCCESS)
        await asyncio.sleep(T)
        yield output("never reached")

    handler = grpc.unary_stream_rpc_method_handler(
        generate_outputs,
        request_deserializer=service_pb2.PostModelOutputsRequest.FromString,
        response_serializer=service_pb2.MultiOutputResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "clarifai.api.V2", {"GenerateModelOutputs": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AioPath(kind, f"127.0.0.1:{port}").stub() as stub:
            stream = aio_generate(stub)
            assert ids([await stream.read()]) == ["attempt 3"]
            # Attempt 2's retryable first message abandoned it: it was cancelled, not left open.
            await asyncio.wait_for(ended[2].wait(), 3)
            assert not ended[3].is_set()
            assert stream.cancel() is True
            await asyncio.wait_for(ended[3].wait(), 3)  # the server saw the kept attempt end
            assert await stream.code() is CANCELLED
            assert stream.cancelled()
    finally:
        await server.stop(None)
    assert attempts == 3


def test_nothing_is_sent_after_ctrl_c_on_a_blocking_interceptor_call(fake: FakeClarifai) -> None:
    assert threading.current_thread() is threading.main_thread()
    policy = RetryPolicy(initial_backoff=0.6, jitter=0)
    raw = grpc.insecure_channel(fake.target)
    stub = service_pb2_grpc.V2Stub(
        grpc.intercept_channel(raw, ClarifaiInterceptor(DEFAULT, retry=policy))
    )
    fake.set_default("ListModels", Fail(UNAVAILABLE, "down"))
    interrupter = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        time.sleep(1.0)  # past the 0.6 s the next attempt would have waited
        assert len(fake.calls_to("ListModels")) == 1
    finally:
        interrupter.cancel()
        raw.close()


# -- rate-limit permits: a call that ends without sending gives its slot back ----------------


def test_cancelled_futures_give_back_the_slots_they_waited_for(
    fake: FakeClarifai, build: Build
) -> None:
    """10 ``future()`` calls waiting for permits are cancelled: the next call on a new channel
    with the same PAT does not wait behind their slots."""
    channel, _close = build()
    waiting = start_waiting(service_pb2_grpc.V2Stub(channel))
    for future in waiting:
        assert future.cancel()
    assert all(future.cancelled() for future in waiting)
    assert_next_call_is_not_delayed(fake, build)


@pytest.mark.asyncio
async def test_cancelled_aio_calls_give_back_the_slots_they_waited_for(
    fake: FakeClarifai,
) -> None:
    """On aio channels: 10 calls waiting for permits are cancelled; the next call on a new aio
    channel with the same PAT does not wait behind their slots."""
    async with aio.insecure_channel(
        fake.target, PAT_CREDS, retry=FAST, rate_limit=LIMIT
    ) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        await stub.ListModels(list_request(), timeout=T)  # the burst: at once
        waiting = [stub.ListModels(list_request(), timeout=T) for _ in range(WAITING)]
        await asyncio.sleep(0.1)  # each books its permit at once; the first is due at 0.5 s
        assert not any(call.done() for call in waiting)
        for call in waiting:
            call.cancel()
        for call in waiting:
            with pytest.raises(asyncio.CancelledError):
                await call
    async with aio.insecure_channel(
        fake.target, PAT_CREDS, retry=FAST, rate_limit=LIMIT
    ) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        started = time.monotonic()
        try:
            outcome: object = await stub.ListModels(list_request(), timeout=PROMPT)
        except grpc.RpcError as exc:
            outcome = exc
        took = time.monotonic() - started
    assert_prompt(took, outcome)
    assert len(fake.calls_to("ListModels")) == 2


def test_closing_a_channel_gives_back_the_slots_its_calls_waited_for(
    fake: FakeClarifai, build: Build
) -> None:
    """10 ``future()`` calls wait for permits and their channel is closed (each ends
    ``CANCELLED``): the next call on a new channel with the same PAT does not wait behind
    their slots."""
    channel, close = build()
    waiting = start_waiting(service_pb2_grpc.V2Stub(channel))
    close()
    for future in waiting:
        error = future.exception(timeout=T)
        assert isinstance(error, grpc.RpcError)
        assert error.code() is CANCELLED
    assert_next_call_is_not_delayed(fake, build)


def test_calls_on_a_closed_channel_book_no_slots(fake: FakeClarifai, build: Build) -> None:
    """A call on a channel of ours already closed fails without booking a slot: after 10 such
    calls, a call on a new channel with the same PAT goes at once."""
    channel, close = build()
    stub = service_pb2_grpc.V2Stub(channel)
    close()
    for _ in range(WAITING):
        with pytest.raises((grpc.RpcError, ValueError)):  # gRPC: "closed channel" ValueError
            stub.ListModels(list_request(), timeout=T)
    assert_prompt(*timed_call(build))
    assert len(fake.calls_to("ListModels")) == 1


def test_closing_the_channel_ends_a_wait_for_a_rate_limit_permit(fake: FakeClarifai) -> None:
    slow = RateLimit(per_second=0.1)  # a permit every 10 s
    channel = wrap_channel(grpc.insecure_channel(fake.target), DEFAULT, rate_limit=slow)
    stub = service_pb2_grpc.V2Stub(channel)
    stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)  # the one permit at hand
    errors: list[BaseException] = []

    def paced() -> None:
        try:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=120)
        except grpc.RpcError as exc:
            errors.append(exc)

    caller = threading.Thread(target=paced)
    caller.start()
    time.sleep(0.1)  # waiting for its permit now (or about to: a closed channel waits not at all)
    channel.close()
    caller.join(T)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert _ended_by_close(errors[0])
    assert len(fake.calls_to("ListModels")) == 1
