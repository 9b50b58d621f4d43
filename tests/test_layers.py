"""One layer of ours per call: stacked layers pass calls through to the outermost, gRPC call
credentials passed with a call replace ours (one ``authorization`` header), aio has one
interceptor per call kind sharing one engine, and calls made from a response stream's done
callback are calls of ours like any other (credentials, ``user_app_id``, retries).

gRPC runs a channel's done callbacks in its channel thread (``grpc.aio``: in the call's own
task), whose context it copied when a layer of ours started the call; a channel of ours used
from there must not take that context for a layer of ours above it and pass the call through.
Each such stream sends 16 messages of 1 MiB: HTTP/2 flow control keeps it open until the test
reads it, so the done callback is always registered before the stream ends, and runs where gRPC
runs it (not at once, in the test's own thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import trustme
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT, PAT_CREDS, T, localhost
from helpers import PAT_HEADER, UAI, UNAVAILABLE, aio_invoke, credentials_sent

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    aio,
    secure_channel,
    wrap_channel,
)
from clarifai_interceptor.testing import FakeClarifai, RecordedCall, Stream

OUTER = Credentials.from_api_key("fake-outer-layer-key")
INNER = Credentials.from_api_key("fake-inner-layer-key")
AT_ONCE = RetryPolicy(initial_backoff=0, jitter=0, budget=None)  # 5 attempts, no waits
INNER_AT_ONCE = RetryPolicy(max_attempts=3, initial_backoff=0, jitter=0, budget=None)

Stack = Callable[[grpc.Channel], grpc.Channel]
STACKS: dict[str, Stack] = {
    "interceptor over wrapper": lambda raw: grpc.intercept_channel(
        wrap_channel(raw, INNER, retry=INNER_AT_ONCE), ClarifaiInterceptor(OUTER, retry=AT_ONCE)
    ),
    "wrapper over interceptor": lambda raw: wrap_channel(
        grpc.intercept_channel(raw, ClarifaiInterceptor(INNER, retry=INNER_AT_ONCE)),
        OUTER,
        retry=AT_ONCE,
    ),
    "wrapper over wrapper": lambda raw: wrap_channel(
        wrap_channel(raw, INNER, retry=INNER_AT_ONCE), OUTER, retry=AT_ONCE
    ),
    "interceptor over interceptor": lambda raw: grpc.intercept_channel(
        raw,  # the first interceptor given is the outermost
        ClarifaiInterceptor(OUTER, retry=AT_ONCE),
        ClarifaiInterceptor(INNER, retry=INNER_AT_ONCE),
    ),
}


def _secrets(fake: FakeClarifai, method: str) -> list[list[str]]:
    return [call.headers("authorization") for call in fake.calls_to(method)]


@pytest.mark.parametrize("stack", STACKS.values(), ids=STACKS.keys())
def test_stacked_layers_of_ours_retry_once_as_the_outer_one(
    fake: FakeClarifai, stack: Stack
) -> None:
    fake.set_default("ListModels", UNAVAILABLE)
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    outer = [f"Key {OUTER.secret.reveal()}"]
    with stack(grpc.insecure_channel(fake.target)) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(grpc.RpcError) as blocking:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert blocking.value.code() is UNAVAILABLE
        assert _secrets(fake, "ListModels") == [outer] * 5  # not 15: one layer, the outer, retried
        future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
        assert future.exception(timeout=T).code() is UNAVAILABLE
        assert _secrets(fake, "ListModels") == [outer] * 10
        with pytest.raises(grpc.RpcError):
            list(stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T))
        assert _secrets(fake, "GenerateModelOutputs") == [outer] * 5


def test_stacked_aio_interceptors_of_ours_retry_once_as_the_outer_one(
    fake: FakeClarifai,
) -> None:
    fake.set_default("ListModels", UNAVAILABLE)

    async def call() -> grpc.StatusCode:
        interceptors = [
            *cia.interceptors(OUTER, retry=AT_ONCE),
            *cia.interceptors(INNER, retry=INNER_AT_ONCE),
        ]
        async with grpc.aio.insecure_channel(fake.target, interceptors=interceptors) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            try:
                await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    assert asyncio.run(call()) is UNAVAILABLE
    assert _secrets(fake, "ListModels") == [[f"Key {OUTER.secret.reveal()}"]] * 5


CALL_SECRET = "fake-call-credentials-secret"


class _Plugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __call__(self, _context: Any, callback: Any) -> None:
        callback((("authorization", f"Key {CALL_SECRET}"),), None)


def call_credentials() -> grpc.CallCredentials:
    return grpc.metadata_call_credentials(_Plugin())


def test_call_credentials_passed_with_a_call_replace_ours(
    tls_fake: FakeClarifai, authority: trustme.CA
) -> None:
    roots = authority.cert_pem.bytes()
    pat = Credentials.from_pat("fake-pat-of-the-channel", user_id="u", app_id="a")
    wrapper = secure_channel(localhost(tls_fake), pat, root_certificates=roots)
    raw = grpc.secure_channel(localhost(tls_fake), grpc.ssl_channel_credentials(roots))
    intercepted = grpc.intercept_channel(raw, ClarifaiInterceptor(pat))
    for channel in (wrapper, intercepted):
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T, credentials=call_credentials())
        stub.ListModels.future(
            service_pb2.ListModelsRequest(), timeout=T, credentials=call_credentials()
        ).result(timeout=T)
        stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)  # ours, without theirs
        channel.close()
    theirs, ours = [f"Key {CALL_SECRET}"], [f"Key {pat.secret.reveal()}"]
    assert _secrets(tls_fake, "ListModels") == [theirs, theirs, ours] * 2
    filled = [call.request.HasField("user_app_id") for call in tls_fake.calls_to("ListModels")]
    assert filled == [False, False, True] * 2  # theirs: no user of ours filled in


def test_aio_call_credentials_passed_with_a_call_replace_ours(
    tls_fake: FakeClarifai, authority: trustme.CA
) -> None:
    roots = authority.cert_pem.bytes()

    async def call() -> None:
        credentials = grpc.ssl_channel_credentials(roots)
        interceptors = cia.interceptors(OUTER)
        async with grpc.aio.secure_channel(
            localhost(tls_fake), credentials, interceptors=interceptors
        ) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            await stub.ListModels(
                service_pb2.ListModelsRequest(), timeout=T, credentials=call_credentials()
            )
            await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)

    asyncio.run(call())
    assert _secrets(tls_fake, "ListModels") == [
        [f"Key {CALL_SECRET}"],
        [f"Key {OUTER.secret.reveal()}"],
    ]


# -- helpers of the tests below --------------------------------------------------------------
INTERCEPTOR_KINDS = (
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
)

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


# -- aio: one interceptor per call kind ------------------------------------------------------


def test_interceptors_are_one_per_call_kind_and_share_one_engine() -> None:
    chain = aio.interceptors(PAT_CREDS, retry=FAST)
    assert [type(i) for i in chain] == [
        aio.UnaryUnaryInterceptor,
        aio.UnaryStreamInterceptor,
        aio.StreamUnaryInterceptor,
        aio.StreamStreamInterceptor,
    ]
    for interceptor, kind in zip(chain, INTERCEPTOR_KINDS, strict=True):
        # grpc.aio files each object under the first kind it is: it must be exactly one.
        assert [isinstance(interceptor, k) for k in INTERCEPTOR_KINDS] == [
            k is kind for k in INTERCEPTOR_KINDS
        ]
    assert len({id(interceptor._core) for interceptor in chain}) == 1
    assert chain[0]._core.retry is FAST


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (aio.UnaryUnaryInterceptor, "unary_unary"),
        (aio.UnaryStreamInterceptor, "unary_stream"),
        (aio.StreamUnaryInterceptor, "stream_unary"),
        (aio.StreamStreamInterceptor, "stream_stream"),
    ],
)
async def test_each_interceptor_works_alone(fake: FakeClarifai, cls: Any, kind: str) -> None:
    interceptor = cls(PAT_CREDS, retry=FAST)
    async with grpc.aio.insecure_channel(fake.target, interceptors=[interceptor]) as channel:
        method = await aio_invoke(kind, channel, fake)
    (call,) = fake.calls_to(method)
    assert credentials_sent(call) == [PAT_HEADER]
    assert [r.user_app_id for r in call.requests] == [UAI] * len(call.requests)


# -- calls made from done callbacks are calls like any other ---------------------------------


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
