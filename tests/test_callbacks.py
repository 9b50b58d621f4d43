"""Calls made from a response stream's done callback are calls like any other: they carry the
credentials, fill a PAT's ``user_app_id``, and are retried.

gRPC runs a channel's done callbacks in its channel thread (``grpc.aio``: in the call's own
task), whose context it copied when a layer of ours started the call; a channel of ours used
from there must not take that context for a layer of ours above it and pass the call through.

Each stream here sends 16 messages of 1 MiB: HTTP/2 flow control keeps it open until the test
reads it, so the done callback is always registered before the stream ends, and runs where gRPC
runs it (not at once, in the test's own thread).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import APP, FAST, PAT, PAT_CREDS, USER, T

from clarifai_interceptor import ClarifaiInterceptor, aio, wrap_channel
from clarifai_interceptor.testing import FakeClarifai, RecordedCall, Stream

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UAI = resources_pb2.UserAppIDSet(user_id=USER, app_id=APP)
MESSAGES = 16


def long_stream() -> Stream:
    """A response stream that outlasts flow control's window: open until it is read."""
    big = service_pb2.MultiLogEntryResponse(
        log_entries=[resources_pb2.LogEntry(message="x" * (1 << 20))]
    )
    return Stream([big] * MESSAGES)


def credential(call: RecordedCall) -> str:
    """Which credential the server saw on a call, named without the secret (so that a failed
    assertion shows no secret)."""
    sent = call.header("authorization")
    if sent is None:
        return "none"
    return "the PAT" if sent == f"Key {PAT}" else "another secret"


class PassThrough(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """A plain interceptor that is not ours (as OpenTelemetry's instrumentation adds one)."""

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(client_call_details, request)


def call_from_done_callback(fake: FakeClarifai, channel: grpc.Channel) -> object:
    """Read a stream on ``channel`` whose done callback calls ``GetApp`` on ``channel``;
    return what that call gave (its response or its error)."""
    stub = service_pb2_grpc.V2Stub(channel)
    fake.script("StreamLogEntries", long_stream())
    fake.script("GetApp", UNAVAILABLE)  # once: a retry gets the default success
    outcome: list[object] = []
    done = threading.Event()

    def callback(_call: object) -> None:
        try:
            outcome.append(stub.GetApp(service_pb2.GetAppRequest(), timeout=T))
        except grpc.RpcError as exc:
            outcome.append(exc)
        finally:
            done.set()

    stream = stub.StreamLogEntries(service_pb2.StreamLogEntriesRequest(), timeout=T)
    stream.add_done_callback(callback)
    assert sum(1 for _message in stream) == MESSAGES
    assert done.wait(T), "the done callback never ran"
    return outcome[0]


def assert_sent_as_ours(fake: FakeClarifai, outcome: object) -> None:
    """The callback's call carried the PAT and the user's ids, and its one failure was
    retried."""
    calls = fake.calls_to("GetApp")
    assert [credential(call) for call in calls] == ["the PAT"] * len(calls)
    assert [call.request.user_app_id for call in calls] == [UAI] * len(calls)  # type: ignore[attr-defined]
    assert not isinstance(outcome, grpc.RpcError), f"not retried: {outcome!r}"
    assert outcome.status.code == status_code_pb2.SUCCESS  # type: ignore[attr-defined]
    assert len(calls) == 2


def test_a_call_from_a_done_callback_on_an_intercepted_channel_is_authenticated_and_retried(
    fake: FakeClarifai,
) -> None:
    """On ``grpc.intercept_channel(raw, ClarifaiInterceptor(...))``, a unary call made from a
    response stream's done callback carries the credentials, has ``user_app_id`` filled and
    is retried after ``UNAVAILABLE``."""
    raw = grpc.insecure_channel(fake.target)
    try:
        channel = grpc.intercept_channel(raw, ClarifaiInterceptor(PAT_CREDS, retry=FAST))
        outcome = call_from_done_callback(fake, channel)
    finally:
        raw.close()
    assert_sent_as_ours(fake, outcome)


def test_a_call_from_a_done_callback_on_a_wrapper_over_an_intercepted_channel_is_ours(
    fake: FakeClarifai,
) -> None:
    """On ``wrap_channel`` over a channel intercepted by someone else's interceptor (what
    OpenTelemetry's instrumentation gives), a unary call made from a response stream's done
    callback carries the credentials, has ``user_app_id`` filled and is retried."""
    raw = grpc.insecure_channel(fake.target)
    try:
        channel = wrap_channel(grpc.intercept_channel(raw, PassThrough()), PAT_CREDS, retry=FAST)
        outcome = call_from_done_callback(fake, channel)
    finally:
        raw.close()
    assert_sent_as_ours(fake, outcome)


@pytest.mark.asyncio
async def test_an_aio_call_started_from_a_done_callback_is_authenticated_and_retried(
    fake: FakeClarifai,
) -> None:
    """On ``aio.insecure_channel``, a unary call scheduled from a response stream's done
    callback carries the credentials, has ``user_app_id`` filled and is retried after
    ``UNAVAILABLE``."""
    fake.script("StreamLogEntries", long_stream())
    fake.script("GetApp", UNAVAILABLE)
    async with aio.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        started: asyncio.Future[asyncio.Future[Any]] = asyncio.get_running_loop().create_future()

        def callback(_call: object) -> None:
            started.set_result(
                asyncio.ensure_future(stub.GetApp(service_pb2.GetAppRequest(), timeout=T))
            )

        stream = stub.StreamLogEntries(service_pb2.StreamLogEntriesRequest(), timeout=T)
        stream.add_done_callback(callback)
        assert len([message async for message in stream]) == MESSAGES
        task = await asyncio.wait_for(started, T)
        try:
            outcome: object = await task
        except grpc.RpcError as exc:
            outcome = exc
    assert_sent_as_ours(fake, outcome)
