"""A call that ends without sending gives its rate-limit slot back: a caller that waited for a
permit and was cancelled, or whose channel closed, leaves no slot booked behind it, and a call
on a channel already closed books none.

The limit here is fixed: 2 attempts per second, a burst of 1, so that 10 calls waiting for
permits hold 5 s of slots. The next call on a new channel with the same PAT and target shares
their bucket: it must go at once (within a slot or two), not 5 s later. Secrets are the
conftest's fake ones; the timing bound is generous (2.5 s where the dead slots make it 5 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, T

from clarifai_interceptor import ClarifaiInterceptor, RateLimit, aio, insecure_channel
from clarifai_interceptor.testing import FakeClarifai

LIMIT = RateLimit(per_second=2, burst=1)
#: Calls left waiting for permits: 5 s of slots at 2/s.
WAITING = 10
#: "At once": well under the 5 s the dead slots would make the next call wait. The next call has
#: this timeout, so that the limiter refuses it at once rather than wait 5 s.
PROMPT = 2.5
CANCELLED = grpc.StatusCode.CANCELLED

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
