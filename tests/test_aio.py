"""Acceptance tests of the ``grpc.aio`` front end (issue 3), on both aio paths.

Every test drives the real ``V2Stub`` (or, for stream-unary, of which V2 has no method, a
multi-callable on a V2 method) over a real ``grpc.aio`` channel against `FakeClarifai`, and
asserts on what the server recorded. The ``aio_path`` fixture runs each test through
`aio.insecure_channel` and through ``grpc.aio.insecure_channel(target,
interceptors=aio.interceptors(...))``. Retry waits are zero unless a test is about time, and
every call has a timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import tenacity
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import (
    API_KEY,
    APP,
    FAST,
    KEY_CREDS,
    PAT,
    PAT_CREDS,
    PAT_NO_USER,
    SESSION_CREDS,
    SESSION_TOKEN,
    USER,
    T,
)

from clarifai_interceptor import (
    Credentials,
    MissingCredentialsError,
    RetryBudget,
    RetryPolicy,
    aio,
    use_credentials,
    use_retry,
)
from clarifai_interceptor._credentials import ENV_VARS
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, RecordedCall, Reply, Stream

SUCCESS = status_code_pb2.SUCCESS
THROTTLED = status_code_pb2.CONN_THROTTLED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CANCELLED = grpc.StatusCode.CANCELLED
CREDENTIAL_KEYS = ("authorization", "x-clarifai-session-token")
PAT_HEADER = ("authorization", f"Key {PAT}")
UAI = resources_pb2.UserAppIDSet(user_id=USER, app_id=APP)
OTHER = Credentials.from_pat("fake-other-pat-for-tests", user_id="other-user", app_id="other-app")
OTHER_HEADER = ("authorization", "Key fake-other-pat-for-tests")
OTHER_UAI = resources_pb2.UserAppIDSet(user_id="other-user", app_id="other-app")
SCOPE_STATUSES = (
    status_code_pb2.CONN_INSUFFICIENT_SCOPES,
    status_code_pb2.CONN_KEY_INVALID,
    status_code_pb2.CONN_KEY_NOT_FOUND,
    status_code_pb2.CONN_AUTH_METHOD_DISABLED,
    status_code_pb2.CONN_TOKEN_INVALID,
    status_code_pb2.CONN_CREDENTIALS_INVALID,
)
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
INTERCEPTOR_KINDS = (
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
)

# -- paths and helpers -----------------------------------------------------------------------


@dataclass
class AioPath:
    """Builds aio channels to a server through one of the two aio paths.

    ``channel``: `aio.insecure_channel`; ``interceptors``: ``grpc.aio.insecure_channel`` with
    `aio.interceptors` (and any ``inner`` interceptors after ours).
    """

    kind: str
    target: str

    def channel(
        self,
        credentials: Credentials | None = PAT_CREDS,
        *,
        retry: RetryPolicy | None = FAST,
        inner: Iterable[Any] = (),
    ) -> Any:
        if self.kind == "channel":
            assert not inner, "the channel path takes no extra interceptors"
            return aio.insecure_channel(self.target, credentials, retry=retry)
        chain = [*aio.interceptors(credentials, retry=retry), *inner]
        return grpc.aio.insecure_channel(self.target, interceptors=chain)

    @asynccontextmanager
    async def stub(
        self, credentials: Credentials | None = PAT_CREDS, *, retry: RetryPolicy | None = FAST
    ) -> AsyncIterator[service_pb2_grpc.V2Stub]:
        async with self.channel(credentials, retry=retry) as channel:
            yield service_pb2_grpc.V2Stub(channel)


@pytest.fixture(params=("channel", "interceptors"))
def aio_path(request: pytest.FixtureRequest, fake: FakeClarifai) -> AioPath:
    """One of the two aio paths to ``fake``; tests using it run once per path."""
    return AioPath(request.param, fake.target)


def predict_request(model_id: str = "model-1") -> service_pb2.PostModelOutputsRequest:
    """A request with user_app_id left empty and other fields set."""
    return service_pb2.PostModelOutputsRequest(
        model_id=model_id, inputs=[resources_pb2.Input(id="input-1")]
    )


def three_requests() -> list[service_pb2.PostModelOutputsRequest]:
    return [predict_request(f"model-{n}") for n in range(3)]


def output(output_id: str, code: int = SUCCESS) -> service_pb2.MultiOutputResponse:
    """A response told apart by its output id, with this body status."""
    response = service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id=output_id)])
    response.status.code = code
    return response


def ids(responses: Iterable[service_pb2.MultiOutputResponse]) -> list[str]:
    return [response.outputs[0].id for response in responses]


async def read_all(stream: Any) -> list[Any]:
    return [message async for message in stream]


async def read_into(received: list[Any], stream: Any) -> None:
    """Read a stream into ``received``, keeping what arrived before an error."""
    async for message in stream:
        received.append(message)  # noqa: PERF401 (the list outlives an error)


def credentials_sent(call: RecordedCall) -> list[tuple[str, str | bytes]]:
    """Every credential header the server received on this call, in order."""
    return [(key, value) for key, value in call.metadata if key in CREDENTIAL_KEYS]


def metadata_pairs(metadata: Any) -> list[tuple[str, Any]]:
    return list(metadata or ())


def stream_unary(channel: Any) -> Any:
    """A stream-unary multi-callable on the bidi ``StreamModelOutputs`` (V2 has no stream-unary).

    The server must be scripted to answer with exactly one message.
    """
    return channel.stream_unary(
        f"/clarifai.api.V2/{STREAM_METHOD}",
        request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
        response_deserializer=service_pb2.MultiOutputResponse.FromString,
    )


async def invoke(kind: str, channel: Any, fake: FakeClarifai, metadata: Any = None) -> str:
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
        response = await stream_unary(channel)(requests, timeout=T, metadata=metadata)
        assert ids([response]) == ["single"]
        return STREAM_METHOD
    stream = stub.StreamModelOutputs(iter(requests), timeout=T, metadata=metadata)
    assert [r.status.code for r in await read_all(stream)] == [SUCCESS] * 3
    return STREAM_METHOD


async def wait_until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def warm_up(stub: service_pb2_grpc.V2Stub, fake: FakeClarifai) -> None:
    """Connect the channel before a test that measures time, then forget the call."""
    await stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
    fake.clear()


async def wait_for(call: Any) -> Any:
    """Await a call: a coroutine for ``asyncio.create_task``."""
    return await call


def generate(stub: service_pb2_grpc.V2Stub, **kwargs: Any) -> Any:
    return stub.GenerateModelOutputs(predict_request(), **{"timeout": T, **kwargs})


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


# -- the API: one interceptor per call kind, sharing one engine ------------------------------


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


def test_bad_arguments_fail_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="credentials must be"):
        aio.interceptors("fake-pat-as-a-string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry must be"):
        aio.UnaryStreamInterceptor(PAT_CREDS, retry="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a target"):
        aio.insecure_channel(None, PAT_CREDS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HOST"):
        aio.insecure_channel("http://localhost:1", PAT_CREDS)
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    created: list[object] = []
    monkeypatch.setattr(grpc.aio, "insecure_channel", lambda *a, **k: created.append(a))
    monkeypatch.setattr(grpc.aio, "secure_channel", lambda *a, **k: created.append(a))
    for build in (
        aio.interceptors,
        aio.UnaryUnaryInterceptor,
        lambda: aio.insecure_channel("localhost:1"),
        aio.secure_channel,
    ):
        with pytest.raises(MissingCredentialsError, match="CLARIFAI_PAT"):
            build()
    assert created == []  # no channel was made, so none is left open


def test_no_secret_in_reprs() -> None:
    texts = [repr(i) for i in aio.interceptors(PAT_CREDS)]
    texts += [
        repr(aio.UnaryUnaryInterceptor(KEY_CREDS)),
        str(aio.StreamUnaryInterceptor(SESSION_CREDS)),
    ]
    assert "UnaryUnaryInterceptor(retry=RetryPolicy(" in texts[0]
    for text in texts:
        for secret in (PAT, API_KEY, SESSION_TOKEN):
            assert secret not in text


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
        method = await invoke(kind, channel, fake)
    (call,) = fake.calls_to(method)
    assert credentials_sent(call) == [PAT_HEADER]
    assert [r.user_app_id for r in call.requests] == [UAI] * len(call.requests)


# -- channel builders ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_insecure_channel_has_our_options_and_interceptors(
    fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = grpc.aio.insecure_channel
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", spy)
    mine = [("grpc.primary_user_agent", "fake-agent"), ("grpc.max_receive_message_length", 7)]
    async with aio.insecure_channel(fake.target, PAT_CREDS, options=mine) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        assert (await stub.PostModelOutputs(predict_request(), timeout=T)).status.code == SUCCESS
    ((args, kwargs),) = seen
    assert args == (fake.target,)
    options = dict(kwargs["options"])
    assert len(options) == len(kwargs["options"])  # each option once
    assert options["grpc.enable_retries"] == 0  # no gRPC retries under ours
    assert options["grpc.max_send_message_length"] == 1024 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 7  # the caller's option wins
    assert options["grpc.primary_user_agent"] == "fake-agent"
    assert [type(i) for i in kwargs["interceptors"]] == [
        aio.UnaryUnaryInterceptor,
        aio.UnaryStreamInterceptor,
        aio.StreamUnaryInterceptor,
        aio.StreamStreamInterceptor,
    ]
    (call,) = fake.calls_to("PostModelOutputs")
    assert credentials_sent(call) == [PAT_HEADER]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "env", "expected"),
    [
        (None, None, "api.clarifai.com:443"),
        (None, "fake-clarifai.example", "fake-clarifai.example:443"),
        ("fake-host.example:8443", "fake-clarifai.example", "fake-host.example:8443"),
    ],
)
async def test_secure_channel_target_options_and_interceptors(
    monkeypatch: pytest.MonkeyPatch, target: str | None, env: str | None, expected: str
) -> None:
    if env is None:
        monkeypatch.delenv("CLARIFAI_GRPC_BASE", raising=False)
    else:
        monkeypatch.setenv("CLARIFAI_GRPC_BASE", env)
    real = grpc.aio.secure_channel
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "secure_channel", spy)
    async with aio.secure_channel(target, KEY_CREDS, retry=None) as channel:
        assert isinstance(channel, grpc.aio.Channel)
    ((args, kwargs),) = seen
    assert args[0] == expected
    assert isinstance(args[1], grpc.ChannelCredentials)
    assert dict(kwargs["options"])["grpc.enable_retries"] == 0
    interceptors = kwargs["interceptors"]
    assert len(interceptors) == 4
    assert interceptors[0]._core.credentials is KEY_CREDS


@pytest.mark.asyncio
async def test_credentials_from_the_environment_are_read_when_built(
    fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLARIFAI_PAT", "fake-env-pat-for-tests")
    monkeypatch.setenv("CLARIFAI_USER_ID", "env-user")
    monkeypatch.setenv("CLARIFAI_APP_ID", "env-app")
    channel = aio.insecure_channel(fake.target, retry=FAST)
    chain = aio.interceptors(retry=FAST)
    monkeypatch.setenv("CLARIFAI_PAT", "fake-later-pat-for-tests")  # too late: already built
    async with channel, grpc.aio.insecure_channel(fake.target, interceptors=chain) as other:
        for built in (channel, other):
            await service_pb2_grpc.V2Stub(built).PostModelOutputs(predict_request(), timeout=T)
    for call in fake.calls_to("PostModelOutputs"):
        assert credentials_sent(call) == [("authorization", "Key fake-env-pat-for-tests")]
        assert call.request.user_app_id == resources_pb2.UserAppIDSet(
            user_id="env-user", app_id="env-app"
        )
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


FRESH_SCRIPT = """
import asyncio
import sys
import grpc
from clarifai_grpc.channel import clarifai_channel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
assert clarifai_channel.wrap_response_deserializer is None, "the quirk is gone: test is moot"
from clarifai_interceptor import Credentials, aio
target, how = sys.argv[1], sys.argv[2]
creds = Credentials.from_pat("fake-pat-for-tests", user_id="fake-user", app_id="fake-app")

async def main():
    if how == "insecure_channel":
        channel = aio.insecure_channel(target, creds)
    else:
        channel = grpc.aio.insecure_channel(target, interceptors=aio.interceptors(creds))
    async with channel:
        stub = service_pb2_grpc.V2Stub(channel)
        response = await stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=10)
        print(response.status.code)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["insecure_channel", "interceptors"])
def test_v2stub_works_in_a_fresh_interpreter(fake: FakeClarifai, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARIFAI_")}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_SCRIPT, fake.target, how],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(SUCCESS)
    (call,) = fake.calls_to("PostModelOutputs")
    assert credentials_sent(call) == [PAT_HEADER]
    assert call.request.user_app_id == UAI


# -- 1. credentials and metadata -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_every_call_kind_carries_the_credentials(
    aio_path: AioPath, fake: FakeClarifai, kind: str
) -> None:
    async with aio_path.channel() as channel:
        method = await invoke(kind, channel, fake)
    (call,) = fake.calls_to(method)
    assert credentials_sent(call) == [PAT_HEADER]
    assert [request.user_app_id for request in call.requests] == [UAI] * len(call.requests)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("as_metadata", [False, True], ids=["pairs", "aio_metadata"])
async def test_caller_metadata_is_kept_beside_exactly_one_credential_header(
    aio_path: AioPath, fake: FakeClarifai, kind: str, as_metadata: bool
) -> None:
    mine = [("x-request-id", "req-1"), ("x-tag", "a"), ("x-tag", "b")]
    metadata = grpc.aio.Metadata(*mine) if as_metadata else mine
    async with aio_path.channel() as channel:
        method = await invoke(kind, channel, fake, metadata=metadata)
    (call,) = fake.calls_to(method)
    assert [pair for pair in call.metadata if pair in mine] == mine
    assert credentials_sent(call) == [PAT_HEADER]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("credentials", "header"),
    [
        (PAT_CREDS, PAT_HEADER),
        (KEY_CREDS, ("authorization", f"Key {API_KEY}")),
        (SESSION_CREDS, ("x-clarifai-session-token", SESSION_TOKEN)),
    ],
    ids=["pat", "api_key", "session_token"],
)
async def test_each_kind_of_secret_is_sent_in_its_header(
    aio_path: AioPath, fake: FakeClarifai, credentials: Credentials, header: tuple[str, str]
) -> None:
    async with aio_path.stub(credentials) as stub:
        await stub.PostModelOutputs(predict_request(), timeout=T, metadata=(("x-request-id", "r"),))
    (call,) = fake.calls_to("PostModelOutputs")
    assert credentials_sent(call) == [header]
    assert call.header("x-request-id") == "r"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "header",
    [
        ("authorization", "Key fake-caller-pat-for-tests"),
        ("x-clarifai-session-token", "fake-caller-session-for-tests"),
    ],
    ids=["authorization", "session_token"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_credential_header_on_the_call_wins_and_user_app_id_stays_empty(
    aio_path: AioPath, fake: FakeClarifai, kind: str, header: tuple[str, str]
) -> None:
    async with aio_path.channel() as channel:
        method = await invoke(kind, channel, fake, metadata=[("x-request-id", "r1"), header])
        with use_credentials(OTHER):
            await invoke(kind, channel, fake, metadata=[("x-request-id", "r2"), header])
    first, second = fake.calls_to(method)
    for call, request_id in ((first, "r1"), (second, "r2")):
        assert credentials_sent(call) == [header]
        assert call.header("x-request-id") == request_id
        assert not any(request.HasField("user_app_id") for request in call.requests)


@pytest.mark.asyncio
async def test_use_credentials_overrides_the_default_on_every_kind(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    async with aio_path.channel() as channel:
        with use_credentials(OTHER):
            for kind in KINDS:
                await invoke(kind, channel, fake)
        await invoke("unary_unary", channel, fake)
    *inside, after = fake.calls
    assert len(inside) == 4
    for call in inside:
        assert credentials_sent(call) == [OTHER_HEADER]
        assert all(request.user_app_id == OTHER_UAI for request in call.requests)
    assert credentials_sent(after) == [PAT_HEADER]
    assert after.request.user_app_id == UAI


@pytest.mark.asyncio
async def test_credentials_provider_is_consulted_per_call(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    rotation = iter([PAT_CREDS, OTHER, KEY_CREDS])
    async with aio_path.stub(lambda: next(rotation)) as stub:  # type: ignore[arg-type]
        for _ in range(3):
            await stub.PostModelOutputs(predict_request(), timeout=T)
    sent = [credentials_sent(c) for c in fake.calls_to("PostModelOutputs")]
    assert sent == [[PAT_HEADER], [OTHER_HEADER], [("authorization", f"Key {API_KEY}")]]


@pytest.mark.asyncio
async def test_compression_passes_through(aio_path: AioPath, fake: FakeClarifai) -> None:
    # grpc.aio carries compression= as a "grpc-internal-" metadata entry of its own.
    async with aio_path.stub() as stub:
        response = await stub.PostModelOutputs(
            predict_request(), timeout=T, compression=grpc.Compression.Gzip
        )
        assert response.status.code == SUCCESS
        stream = generate(stub, compression=grpc.Compression.Gzip, metadata=(("x-k", "v"),))
        assert len(await read_all(stream)) == 3
    for call in fake.calls:
        assert credentials_sent(call) == [PAT_HEADER]
        assert call.request.user_app_id == UAI
    assert fake.calls[1].header("x-k") == "v"


# -- 2. user_app_id --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (PAT_CREDS, UAI),
        (SESSION_CREDS, UAI),
        (Credentials.from_pat(PAT, user_id=USER), resources_pb2.UserAppIDSet(user_id=USER)),
        (PAT_NO_USER, None),
        (KEY_CREDS, None),
    ],
    ids=["pat", "session_token", "pat_user_only", "pat_no_user", "api_key"],
)
async def test_which_credentials_fill_user_app_id(
    aio_path: AioPath,
    fake: FakeClarifai,
    credentials: Credentials,
    expected: resources_pb2.UserAppIDSet | None,
) -> None:
    async with aio_path.channel(credentials) as channel:
        for kind in KINDS:
            await invoke(kind, channel, fake)
    requests = [request for call in fake.calls for request in call.requests]
    assert len(requests) == 1 + 1 + 2 + 2
    for request in requests:
        if expected is None:
            assert not request.HasField("user_app_id")
        else:
            assert request.user_app_id == expected


@pytest.mark.asyncio
async def test_user_app_id_set_by_the_caller_is_sent_as_set(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    request = predict_request()
    request.user_app_id.CopyFrom(resources_pb2.UserAppIDSet(app_id="caller-app"))
    async with aio_path.stub() as stub:
        await stub.PostModelOutputs(request, timeout=T)
        await read_all(stub.GenerateModelOutputs(request, timeout=T))
        await read_all(stub.StreamModelOutputs([predict_request("filled"), request], timeout=T))
    (unary,) = fake.calls_to("PostModelOutputs")
    (server_stream,) = fake.calls_to("GenerateModelOutputs")
    (client_stream,) = fake.calls_to(STREAM_METHOD)
    assert unary.request == request
    assert server_stream.request == request
    assert client_stream.requests[0].user_app_id == UAI
    assert client_stream.requests[1] == request


async def agenerator(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        await asyncio.sleep(0)
        yield message


def generator(messages: list[Any]) -> Iterator[Any]:
    yield from messages


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "make", [list, tuple, iter, generator, agenerator], ids=lambda f: f.__name__
)
async def test_each_message_of_a_client_stream_is_filled_as_sent(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    preset = predict_request("preset")
    preset.user_app_id.CopyFrom(OTHER_UAI)
    async with aio_path.stub() as stub:
        responses = stub.StreamModelOutputs(
            make([predict_request("a"), preset, predict_request("c")]), timeout=T
        )
        assert len(await read_all(responses)) == 3
    (call,) = fake.calls_to(STREAM_METHOD)
    assert [r.model_id for r in call.requests] == ["a", "preset", "c"]
    assert [r.user_app_id for r in call.requests] == [UAI, OTHER_UAI, UAI]


@pytest.mark.asyncio
async def test_caller_request_objects_are_never_mutated(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    request = predict_request()
    stream = [predict_request("model-a"), predict_request("model-b")]
    before = [m.SerializeToString() for m in (request, *stream)]
    fake.script("PostModelOutputs", UNAVAILABLE)  # also across a retry
    fake.script(STREAM_METHOD, UNAVAILABLE, Reply(output("single")))
    async with aio_path.channel() as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        await stub.PostModelOutputs(request, timeout=T)
        await read_all(stub.GenerateModelOutputs(request, timeout=T))
        await stream_unary(channel)(stream, timeout=T)
        await read_all(stub.StreamModelOutputs(stream, timeout=T))
        await read_all(stub.StreamModelOutputs(iter(stream), timeout=T))
    assert [m.SerializeToString() for m in (request, *stream)] == before
    sent = [r for call in fake.calls for r in call.requests]
    assert len(sent) == 1 + 1 + 1 + 2 * 2 + 2 + 2
    assert all(r.user_app_id == UAI for r in sent)


# -- 3. unary retry, exhaustion, deadlines ---------------------------------------------------


@pytest.mark.asyncio
async def test_unary_retried_on_a_grpc_code(aio_path: AioPath, fake: FakeClarifai) -> None:
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


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "status",
    [THROTTLED, status_code_pb2.MODEL_LOADING, status_code_pb2.RPC_REQUEST_QUEUE_FULL],
    ids=status_code_pb2.StatusCode.Name,
)
async def test_unary_retried_on_a_body_status(
    aio_path: AioPath, fake: FakeClarifai, status: int
) -> None:
    fake.script("PostModelOutputs", output("busy", status), Reply(output("ok")))
    async with aio_path.stub() as stub:
        call = stub.PostModelOutputs(predict_request(), timeout=T)
        assert ids([await call]) == ["ok"]
        assert await call.code() is grpc.StatusCode.OK
    assert len(fake.calls_to("PostModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_unary_sequence_is_replayed(aio_path: AioPath, fake: FakeClarifai) -> None:
    fake.script(STREAM_METHOD, UNAVAILABLE, Reply(output("busy", THROTTLED)), Reply(output("ok")))
    async with aio_path.channel() as channel:
        response = await stream_unary(channel)(tuple(three_requests()), timeout=T)
    assert ids([response]) == ["ok"]
    calls = fake.calls_to(STREAM_METHOD)
    assert len(calls) == 3
    for call in calls:
        assert [r.model_id for r in call.requests] == ["model-0", "model-1", "model-2"]
        assert all(r.user_app_id == UAI for r in call.requests)


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [iter, generator, agenerator], ids=lambda f: f.__name__)
async def test_stream_unary_iterator_is_never_replayed(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, Fail(UNAVAILABLE, "once"), Reply(output("never reached")))
    async with aio_path.channel() as channel:
        with pytest.raises(grpc.RpcError) as failure:
            await stream_unary(channel)(make(three_requests()), timeout=T)
    assert failure.value.code() is UNAVAILABLE
    assert failure.value.details() == "once"
    (call,) = fake.calls_to(STREAM_METHOD)
    assert len(call.requests) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["stream_unary", "stream_stream"])
async def test_write_style_client_streams_work_and_are_filled(
    aio_path: AioPath, fake: FakeClarifai, method: str
) -> None:
    # grpc.aio feeds write() into the interceptors as an iterator that waits for them to
    # return: the call must be handed over at once, never awaited first.
    fake.script(STREAM_METHOD, Reply(output("single")))
    async with aio_path.channel() as channel:
        if method == "stream_unary":
            call = stream_unary(channel)(timeout=T)
        else:
            call = service_pb2_grpc.V2Stub(channel).StreamModelOutputs(timeout=T)
        for request in three_requests():
            await call.write(request)
        await call.done_writing()
        if method == "stream_unary":
            assert ids([await call]) == ["single"]
        else:
            assert ids(await read_all(call)) == ["single"]
    (recorded,) = fake.calls_to(STREAM_METHOD)
    assert [r.model_id for r in recorded.requests] == ["model-0", "model-1", "model-2"]
    assert all(r.user_app_id == UAI for r in recorded.requests)
    assert credentials_sent(recorded) == [PAT_HEADER]


@pytest.mark.asyncio
async def test_exhausted_retries_raise_the_last_rpc_error_as_is(
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


@pytest.mark.asyncio
async def test_exhausted_retries_return_the_last_response_as_is(
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


@pytest.mark.asyncio
async def test_no_wait_runs_past_the_policy_timeout(aio_path: AioPath, fake: FakeClarifai) -> None:
    # Waits 0.5 s then 1 s: the second would end past the 1.2 s budget, so retries stop.
    policy = RetryPolicy(initial_backoff=0.5, multiplier=2.0, jitter=0, timeout=1.2)
    async with aio_path.stub(retry=policy) as stub:
        await warm_up(stub, fake)
        fake.set_default("PostModelOutputs", UNAVAILABLE)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request(), timeout=T)
        elapsed = time.monotonic() - started
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("PostModelOutputs")) == 2
    assert elapsed < 5  # all five attempts would wait 0.5 + 1 + 2 + 4 s


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
async def test_each_attempt_gets_only_the_time_left(
    aio_path: AioPath, fake: FakeClarifai, policy: RetryPolicy, timeout: float
) -> None:
    # Each attempt takes 0.6 s: the second has only 0.4 s left and runs out of time. A timeout
    # re-applied to every attempt would instead give five UNAVAILABLE attempts (3 s).
    async with aio_path.stub(retry=policy) as stub:
        await warm_up(stub, fake)
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


# -- 4, 5. scope, auth and other failures: one attempt ---------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("status", SCOPE_STATUSES, ids=status_code_pb2.StatusCode.Name)
async def test_scope_and_auth_body_statuses_are_not_retried(
    aio_path: AioPath, fake: FakeClarifai, status: int
) -> None:
    fake.script("PostModelOutputs", output("denied", status), Reply(output("never reached")))
    fake.script("GenerateModelOutputs", Stream([output("denied", status), output("more")]))
    async with aio_path.stub() as stub:
        response = await stub.PostModelOutputs(predict_request(), timeout=T)
        streamed = await read_all(generate(stub))
    assert response.status.code == status
    assert ids([response]) == ["denied"]
    assert ids(streamed) == ["denied", "more"]
    assert len(fake.calls_to("PostModelOutputs")) == 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED],
    ids=lambda c: c.name,
)
async def test_scope_and_auth_grpc_codes_are_not_retried(
    aio_path: AioPath, fake: FakeClarifai, code: grpc.StatusCode
) -> None:
    fake.script("PostModelOutputs", Fail(code, "no"), Reply(output("never reached")))
    fake.script("GenerateModelOutputs", Fail(code, "no"), Stream([output("never reached")]))
    async with aio_path.stub(retry=RETRY_ALL_IT_MAY) as stub:
        with pytest.raises(grpc.RpcError) as unary:
            await stub.PostModelOutputs(predict_request(), timeout=T)
        with pytest.raises(grpc.RpcError) as streamed:
            await read_all(generate(stub))
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


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND],
    ids=lambda c: c.name,
)
async def test_other_grpc_failures_are_not_retried(
    aio_path: AioPath, fake: FakeClarifai, code: grpc.StatusCode
) -> None:
    fake.script("PostModelOutputs", Fail(code, "bad"), Reply(output("never reached")))
    async with aio_path.stub() as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await stub.PostModelOutputs(predict_request(), timeout=T)
    assert failure.value.code() is code
    assert len(fake.calls_to("PostModelOutputs")) == 1


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
            await read_all(generate(retrying))
        assert failure.value.code() is UNAVAILABLE
        assert len(fake.calls_to("GenerateModelOutputs")) == 1


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
            await read_all(generate(stub))
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


# -- 6, 7. response streams: retried only before the first message ---------------------------


@pytest.mark.asyncio
async def test_stream_retried_on_an_error_before_the_first_message(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        UNAVAILABLE,
        Stream([], error=Fail(UNAVAILABLE)),
        Stream([output("a"), output("b"), output("c")]),
    )
    async with aio_path.stub() as stub:
        stream = generate(stub)
        assert ids(await read_all(stream)) == ["a", "b", "c"]
        assert await stream.code() is grpc.StatusCode.OK
    calls = fake.calls_to("GenerateModelOutputs")
    assert len(calls) == 3
    assert [c.header("x-retry-attempt") for c in calls] == [None, "1", "2"]
    assert all(call.request.user_app_id == UAI for call in calls)


@pytest.mark.asyncio
async def test_stream_retried_on_a_retryable_first_message(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("busy", status_code_pb2.MODEL_LOADING), output("dropped")]),
        Stream([output("a"), output("b")]),
    )
    async with aio_path.stub() as stub:
        assert ids(await read_all(generate(stub))) == ["a", "b"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_exhausted_delivers_the_last_attempt_whole(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("first", THROTTLED)]),
        Stream([output("last", THROTTLED), output("then")]),
        Stream([output("never reached")]),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=2)) as stub:
        assert ids(await read_all(generate(stub))) == ["last", "then"]
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_stream_exhausted_raises_the_last_error(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Fail(UNAVAILABLE, "attempt 1"),
        Fail(UNAVAILABLE, "attempt 2", (("x-attempt", "2"),)),
        Stream([output("never reached")]),
    )
    async with aio_path.stub(retry=dataclasses.replace(FAST, max_attempts=2)) as stub:
        stream = generate(stub)
        with pytest.raises(grpc.RpcError) as failure:
            await stream.read()
        assert type(failure.value) is grpc.aio.AioRpcError
        assert failure.value.code() is UNAVAILABLE
        assert failure.value.details() == "attempt 2"
        assert await stream.code() is UNAVAILABLE
        assert await stream.details() == "attempt 2"
        assert ("x-attempt", "2") in metadata_pairs(await stream.trailing_metadata())
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "failure",
    [Fail(UNAVAILABLE, "mid-stream"), Fail(grpc.StatusCode.INTERNAL, "mid-stream")],
    ids=["UNAVAILABLE", "INTERNAL"],
)
async def test_stream_not_retried_after_the_first_message(
    aio_path: AioPath, fake: FakeClarifai, failure: Fail
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b")], error=failure),
        Stream([output("duplicate a"), output("duplicate b")]),
    )
    received: list[Any] = []
    async with aio_path.stub() as stub:
        stream = generate(stub)
        with pytest.raises(grpc.RpcError) as raised:
            await read_into(received, stream)
        assert await stream.code() is failure.code
    assert ids(received) == ["a", "b"]
    assert raised.value.code() is failure.code
    assert raised.value.details() == "mid-stream"
    assert len(fake.calls_to("GenerateModelOutputs")) == 1


@pytest.mark.asyncio
async def test_stream_retryable_status_after_the_first_message_is_delivered(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("a"), output("b", THROTTLED), output("c")]),
        Stream([output("duplicate")]),
    )
    async with aio_path.stub() as stub:
        assert ids(await read_all(generate(stub))) == ["a", "b", "c"]
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
        stream = generate(stub)
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
        await wait_until(lambda: done == [stream])
        assert stream.cancel() is False  # nothing left to cancel
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


@pytest.mark.asyncio
async def test_a_retried_stream_read_ends_with_eof(aio_path: AioPath, fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", UNAVAILABLE, Stream([output("a")]), UNAVAILABLE, Stream([]))
    async with aio_path.stub() as stub:
        stream = generate(stub)
        assert ids([await stream.read()]) == ["a"]
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() is grpc.StatusCode.OK
        empty = generate(stub)
        assert await empty.read() is grpc.aio.EOF
        assert await empty.code() is grpc.StatusCode.OK
    assert len(fake.calls_to("GenerateModelOutputs")) == 4


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
        assert ids(await read_all(generate(stub))) == ["slow but in time"]
        with pytest.raises(grpc.RpcError) as failure:
            await read_all(generate(stub, timeout=0.5))
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(fake.calls_to("GenerateModelOutputs")) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [list, tuple], ids=["list", "tuple"])
async def test_stream_stream_sequence_is_replayed(
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


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [iter, generator, agenerator], ids=lambda f: f.__name__)
async def test_stream_stream_iterator_is_never_replayed(
    aio_path: AioPath, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    fake.script(STREAM_METHOD, UNAVAILABLE, Stream([output("never reached")]))
    async with aio_path.stub() as stub:
        with pytest.raises(grpc.RpcError) as failure:
            await read_all(stub.StreamModelOutputs(make(three_requests()), timeout=T))
    assert failure.value.code() is UNAVAILABLE
    (call,) = fake.calls_to(STREAM_METHOD)
    assert len(call.requests) == 3


@pytest.mark.asyncio
async def test_stream_stream_not_retried_after_the_first_message(
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


# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancelling_the_task_mid_backoff_stops_the_retries(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    policy = RetryPolicy(initial_backoff=0.5, jitter=0)
    async with aio_path.stub(retry=policy) as stub:
        await warm_up(stub, fake)
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


@pytest.mark.asyncio
async def test_cancelling_the_task_cancels_the_attempt_in_flight(fake: FakeClarifai) -> None:
    spy = UnarySpy()
    fake.script("PostModelOutputs", Delay(T, UNAVAILABLE), Reply(output("never reached")))
    async with AioPath("interceptors", fake.target).channel(inner=[spy]) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        task = asyncio.create_task(wait_for(stub.PostModelOutputs(predict_request(), timeout=T)))
        await wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
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
        await wait_until(lambda: len(fake.calls_to("PostModelOutputs")) == 1)
        await asyncio.sleep(0.1)
        assert call.cancel() is True
        assert await asyncio.wait_for(call.code(), 3) is CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        await asyncio.sleep(0.3)
    assert len(fake.calls_to("PostModelOutputs")) == 1


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
        stream = generate(service_pb2_grpc.V2Stub(ch))
        reader = asyncio.create_task(read_all(stream))
        await wait_until(lambda: len(fake.calls_to("GenerateModelOutputs")) == 1)
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
            stream = generate(stub)
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
        await warm_up(service_pb2_grpc.V2Stub(channel), fake)
        fake.script("PostModelOutputs", UNAVAILABLE)
        fake.script("GenerateModelOutputs", UNAVAILABLE)
        ticker = asyncio.create_task(tick())
        method = await invoke(kind, channel, fake)
        ticker.cancel()
    # A 0.5 s wait that blocked the loop would leave the ticker a tick or two.
    assert ticks >= 10
    assert len(fake.calls_to(method)) == 2


# -- contextvars across asyncio tasks --------------------------------------------------------


@pytest.mark.asyncio
async def test_200_concurrent_tasks_each_under_its_own_credentials(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    tasks = 200
    # 50 failures spread over the tasks: retries run in each task's own context too.
    fake.script("PostModelOutputs", *[UNAVAILABLE] * 50)
    policy = dataclasses.replace(FAST, max_attempts=60, budget=None)

    async def one(stub: service_pb2_grpc.V2Stub, i: int) -> int:
        credentials = Credentials.from_pat(f"fake-pat-{i}", user_id=f"u{i}", app_id="a")
        with use_credentials(credentials):
            await asyncio.sleep(0)  # let the other tasks interleave
            response = await stub.PostModelOutputs(predict_request(f"model-{i}"), timeout=T)
            stream = stub.GenerateModelOutputs(
                predict_request(f"model-{i}"), timeout=T, metadata=(("x-task", str(i)),)
            )
            streamed = await read_all(stream)
        return int(response.status.code) + len(streamed)

    async with aio_path.stub(retry=policy) as stub:
        results = await asyncio.gather(*(one(stub, i) for i in range(tasks)))
    assert results == [SUCCESS + 3] * tasks
    unary = fake.calls_to("PostModelOutputs")
    streams = fake.calls_to("GenerateModelOutputs")
    assert len(unary) == tasks + 50
    assert len(streams) == tasks
    for call in unary + streams:
        ((_, header),) = credentials_sent(call)
        i = str(header).removeprefix("Key fake-pat-")
        assert call.request.user_app_id == resources_pb2.UserAppIDSet(user_id=f"u{i}", app_id="a")
        assert call.request.model_id == f"model-{i}"
    for call in streams:
        assert call.header("x-task") == call.request.model_id.removeprefix("model-")
    assert {c.request.model_id for c in unary} == {f"model-{i}" for i in range(tasks)}
    assert {c.request.model_id for c in streams} == {f"model-{i}" for i in range(tasks)}


@pytest.mark.asyncio
async def test_use_credentials_in_one_task_never_leaks_into_its_siblings(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    async with aio_path.stub() as stub:

        async def predict(tag: str) -> None:
            await stub.PostModelOutputs(predict_request(tag), timeout=T)

        async def overriding() -> None:
            with use_credentials(OTHER):
                entered.set()
                await release.wait()
                await predict("owner inside")
            await predict("owner after")

        async def sibling(tag: str) -> None:
            await entered.wait()
            await predict(tag)

        created_before = asyncio.create_task(sibling("created before"))
        owner = asyncio.create_task(overriding())
        await asyncio.wait_for(entered.wait(), T)
        created_after = asyncio.create_task(sibling("created after"))
        gathered = asyncio.gather(sibling("gathered 1"), sibling("gathered 2"))
        await asyncio.wait_for(asyncio.gather(created_before, created_after, gathered), T)
        await predict("parent")
        release.set()
        await asyncio.wait_for(owner, T)
    sent = {call.request.model_id: credentials_sent(call) for call in fake.calls}
    assert sent == {
        "created before": [PAT_HEADER],
        "created after": [PAT_HEADER],
        "gathered 1": [PAT_HEADER],
        "gathered 2": [PAT_HEADER],
        "parent": [PAT_HEADER],
        "owner inside": [OTHER_HEADER],
        "owner after": [PAT_HEADER],
    }


@pytest.mark.asyncio
async def test_overrides_apply_to_the_calls_made_inside_the_block(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    # grpc.aio runs the interceptors in a task created when the call is made, with a copy of
    # the caller's context: what counts is where the call is made, not where it is awaited.
    async with aio_path.stub() as stub:
        with use_credentials(OTHER):
            made_inside = stub.PostModelOutputs(predict_request("made inside"), timeout=T)
        made_outside = stub.PostModelOutputs(predict_request("made outside"), timeout=T)
        await made_inside
        with use_credentials(OTHER):
            await made_outside
    sent = {call.request.model_id: credentials_sent(call) for call in fake.calls}
    assert sent == {"made inside": [OTHER_HEADER], "made outside": [PAT_HEADER]}


# -- 9. logging ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_debug_record_per_retry_and_no_secret(
    aio_path: AioPath, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, gRPC's and asyncio's included
    fake.script("PostModelOutputs", UNAVAILABLE, output("busy", THROTTLED))
    fake.script("GenerateModelOutputs", Stream([output("loading", status_code_pb2.MODEL_LOADING)]))
    async with aio_path.stub() as stub:
        assert (await stub.PostModelOutputs(predict_request(), timeout=T)).status.code == SUCCESS
        assert len(await read_all(generate(stub))) == 3
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    assert [r.levelno for r in ours] == [logging.DEBUG] * 3
    first, second, third = (r.getMessage() for r in ours)
    assert "PostModelOutputs" in first
    assert "UNAVAILABLE" in first
    assert "PostModelOutputs" in second
    assert "CONN_THROTTLED" in second
    assert "GenerateModelOutputs" in third
    assert "MODEL_LOADING" in third
    for record in caplog.records:
        assert PAT not in f"{record.getMessage()} {record.args!r} {record.__dict__!r}"


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
        server_stream = generate(stub)
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
