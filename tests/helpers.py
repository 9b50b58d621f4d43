"""Helpers shared by several behaviour test modules: constants, requests, and helpers that make
or read calls. A helper for ``grpc.aio`` is named ``aio_*`` beside its sync counterpart (``invoke``
and `aio_invoke`, ``warm_up`` and `aio_warm_up`, ...). Fixtures live in ``conftest.py``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Any

import grpc
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import APP, FAST, PAT, PAT_CREDS, USER, T

from clarifai_interceptor import Credentials, RetryPolicy, aio
from clarifai_interceptor.testing import Fail, FakeClarifai, RecordedCall, Reply

SUCCESS = status_code_pb2.SUCCESS

THROTTLED = status_code_pb2.CONN_THROTTLED

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

CREDENTIAL_KEYS = ("authorization", "x-clarifai-session-token")

PAT_HEADER = ("authorization", f"Key {PAT}")

UAI = resources_pb2.UserAppIDSet(user_id=USER, app_id=APP)

OTHER_UAI = resources_pb2.UserAppIDSet(user_id="other-user", app_id="other-app")

#: A policy that retries every gRPC code it may: scope and auth errors must still pass through.
RETRY_ALL_IT_MAY = dataclasses.replace(
    FAST,
    retryable_codes=frozenset(grpc.StatusCode)
    - {
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    },
)

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

STREAM_METHOD = "StreamModelOutputs"  # bidirectional; PostModelOutputsRequest has user_app_id


def predict_request(model_id: str = "model-1") -> service_pb2.PostModelOutputsRequest:
    """A request with user_app_id left empty and other fields set."""
    return service_pb2.PostModelOutputsRequest(
        model_id=model_id, inputs=[resources_pb2.Input(id="input-1")]
    )


def output(output_id: str, code: int = SUCCESS) -> service_pb2.MultiOutputResponse:
    """A response told apart by its output id, with this body status."""
    response = service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id=output_id)])
    response.status.code = code
    return response


def ids(responses: Iterable[service_pb2.MultiOutputResponse]) -> list[str]:
    return [response.outputs[0].id for response in responses]


def credentials_sent(call: RecordedCall) -> list[tuple[str, str | bytes]]:
    """Every credential header the server received on this call, in order."""
    return [(key, value) for key, value in call.metadata if key in CREDENTIAL_KEYS]


def stream_unary(channel: grpc.Channel) -> Any:
    """A stream-unary multi-callable on the bidi ``StreamModelOutputs`` (V2 has no stream-unary).

    The server must be scripted to answer with exactly one message.
    """
    return channel.stream_unary(
        f"/clarifai.api.V2/{STREAM_METHOD}",
        request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
        response_deserializer=service_pb2.MultiOutputResponse.FromString,
    )


def invoke(kind: str, channel: grpc.Channel, fake: FakeClarifai, metadata: Any = None) -> str:
    """Make one successful call of this kind; return the V2 method name the server records."""
    stub = service_pb2_grpc.V2Stub(channel)
    if kind == "unary_unary":
        response = stub.PostModelOutputs(predict_request(), timeout=T, metadata=metadata)
        assert response.status.code == SUCCESS
        return "PostModelOutputs"
    if kind == "unary_stream":
        responses = stub.GenerateModelOutputs(predict_request(), timeout=T, metadata=metadata)
        assert [response.status.code for response in responses] == [SUCCESS] * 3
        return "GenerateModelOutputs"
    requests = [predict_request("model-a"), predict_request("model-b")]
    if kind == "stream_unary":
        fake.script(STREAM_METHOD, Reply(output("single")))
        response = stream_unary(channel)(requests, timeout=T, metadata=metadata)
        assert ids([response]) == ["single"]
        return STREAM_METHOD
    responses = stub.StreamModelOutputs(iter(requests), timeout=T, metadata=metadata)
    assert [response.status.code for response in responses] == [SUCCESS] * 3
    return STREAM_METHOD


def wait_until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def generate(stub: service_pb2_grpc.V2Stub) -> Any:
    return stub.GenerateModelOutputs(predict_request(), timeout=T)


def three_requests() -> list[service_pb2.PostModelOutputsRequest]:
    return [predict_request(f"model-{n}") for n in range(3)]


def generator(messages: list[Any]) -> Iterator[Any]:
    yield from messages


async def read_all(stream: Any) -> list[Any]:
    return [message async for message in stream]


def metadata_pairs(metadata: Any) -> list[tuple[str, Any]]:
    return list(metadata or ())


def aio_stream_unary(channel: Any) -> Any:
    """A stream-unary multi-callable on the bidi ``StreamModelOutputs`` (V2 has no stream-unary).

    The server must be scripted to answer with exactly one message.
    """
    return channel.stream_unary(
        f"/clarifai.api.V2/{STREAM_METHOD}",
        request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
        response_deserializer=service_pb2.MultiOutputResponse.FromString,
    )


async def aio_invoke(kind: str, channel: Any, fake: FakeClarifai, metadata: Any = None) -> str:
    """Make one successful call of this kind; return the V2 method name the server records."""
    stub = service_pb2_grpc.V2Stub(channel)
    if kind == "unary_unary":
        response = await stub.PostModelOutputs(predict_request(), timeout=T, metadata=metadata)
        assert response.status.code == SUCCESS
        return "PostModelOutputs"
    if kind == "unary_stream":
        stream = stub.GenerateModelOutputs(predict_request(), timeout=T, metadata=metadata)
        assert [r.status.code for r in await read_all(stream)] == [SUCCESS] * 3
        return "GenerateModelOutputs"
    requests = [predict_request("model-a"), predict_request("model-b")]
    if kind == "stream_unary":
        fake.script(STREAM_METHOD, Reply(output("single")))
        response = await aio_stream_unary(channel)(requests, timeout=T, metadata=metadata)
        assert ids([response]) == ["single"]
        return STREAM_METHOD
    stream = stub.StreamModelOutputs(iter(requests), timeout=T, metadata=metadata)
    assert [r.status.code for r in await read_all(stream)] == [SUCCESS] * 3
    return STREAM_METHOD


async def aio_wait_until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


#: Tries of a warm-up call (each of T s) before it fails the test.
WARM_UP_TRIES = 3


def _warm_up_failed(exc: grpc.RpcError, tries_left: int) -> bool:
    return tries_left == 0 or exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED


async def aio_warm_up(
    stub: service_pb2_grpc.V2Stub,
    fake: FakeClarifai,
    *,
    tries: int = WARM_UP_TRIES,
    timeout: float = T,
) -> None:
    """As `warm_up`, on an aio channel."""
    for tries_left in reversed(range(tries)):
        try:
            await stub.ListStatusCodes(
                service_pb2.ListStatusCodesRequest(), timeout=timeout, wait_for_ready=True
            )
            break
        except grpc.RpcError as exc:
            if _warm_up_failed(exc, tries_left):
                raise
    fake.clear()


def aio_generate(stub: service_pb2_grpc.V2Stub, **kwargs: Any) -> Any:
    return stub.GenerateModelOutputs(predict_request(), **{"timeout": T, **kwargs})


async def agenerator(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        await asyncio.sleep(0)
        yield message


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


def bare_predict_request() -> service_pb2.PostModelOutputsRequest:
    return service_pb2.PostModelOutputsRequest(model_id="model-1")


def attempt_headers(calls: list[RecordedCall]) -> list[str | None]:
    return [call.header(ATTEMPT) for call in calls]


def warm_up(
    stub: Any, fake: FakeClarifai, *, tries: int = WARM_UP_TRIES, timeout: float = T
) -> None:
    """Connect before a test that measures time, then forget the call. The warm-up is not
    what is measured: on a loaded machine (16 fakes and channels starting at once on 2 cores)
    its first call has twice taken over T in CI, once sync and once aio; it gets ``tries``
    tries of ``timeout`` (a hang still fails, after 3 T by default)."""
    for tries_left in reversed(range(tries)):
        try:
            stub.ListStatusCodes(
                service_pb2.ListStatusCodesRequest(), timeout=timeout, wait_for_ready=True
            )
            break
        except grpc.RpcError as exc:
            if _warm_up_failed(exc, tries_left):
                raise
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
    return list(stub.GenerateModelOutputs(bare_predict_request(), timeout=timeout, **kwargs))


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


def pushback_fail(milliseconds: str) -> Fail:
    return Fail(UNAVAILABLE, "busy", trailing_metadata=((PUSHBACK, milliseconds),))


DEFAULT = Credentials.from_api_key("fake-default-key-for-tests")


def bucket_of(limit: Any, secret: str, target: str) -> Any:
    """The process's rate-limit bucket for ``limit``, ``secret`` and ``target``, as a call
    under them would find it."""
    from clarifai_interceptor._limiter import bucket_for, identity  # noqa: PLC0415

    return bucket_for(limit, identity(secret, target, limit))


def budgeted_attempts(budget: Any, calls: int, max_attempts: int = 5) -> int:
    """Attempts ``calls`` calls make against a server that always fails transiently, under a
    fresh retry ``budget`` (gRFC A6: each failure takes a token, a retry only while more than
    half is left), with no success in between."""
    tokens, attempts = float(budget.max_tokens), 0
    for _ in range(calls):
        for attempt in range(1, max_attempts + 1):
            attempts += 1
            tokens = max(0.0, tokens - 1.0)
            if attempt == max_attempts or not tokens > budget.max_tokens / 2:
                break
    return attempts
