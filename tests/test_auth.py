"""Credentials and caller metadata on calls, on every front end: each call kind carries exactly
one credential header, overrides (`use_credentials`) and providers are consulted per call,
rotated credentials apply at once, a failing provider fails before anything is sent, overrides
stay in their own thread or task, no caller ever sends another's secret, and caller metadata is
validated before sending. Each sync test is followed by its aio twin."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from conftest import (
    API_KEY,
    FAST,
    KEY_CREDS,
    PAT_CREDS,
    SESSION_CREDS,
    SESSION_TOKEN,
    AioPath,
    Path,
    T,
)
from helpers import (
    AIO_PATHS,
    ATTEMPT,
    KINDS,
    OTHER_UAI,
    PAT_HEADER,
    SUCCESS,
    UAI,
    UNAVAILABLE,
    UNLIMITED,
    aio_channel,
    aio_generate,
    aio_invoke,
    aio_stub,
    bare_predict_request,
    call_style,
    credentials_sent,
    invoke,
    list_models,
    method_of,
    predict_request,
    read_all,
    report,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from clarifai_interceptor import Credentials, CredentialsProviderError, use_credentials
from clarifai_interceptor.testing import FakeClarifai, RecordedCall

OTHER = Credentials.from_pat("fake-other-pat-for-tests", user_id="other-user", app_id="other-app")

OTHER_HEADER = ("authorization", "Key fake-other-pat-for-tests")

THIRD = Credentials.from_pat("fake-third-pat-for-tests", user_id="third-user")

THIRD_HEADER = ("authorization", "Key fake-third-pat-for-tests")


def secret_of(call: RecordedCall) -> str | None:
    header = call.header("authorization")
    return None if header is None else header.removeprefix("Key ")


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


INVALID_METADATA = [
    pytest.param("X-Upper", "value", id="uppercase-key"),
    pytest.param("x key", "value", id="key-with-space"),
    pytest.param("x-key", "line\nbreak", id="value-with-newline"),
]


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


# -- every call kind carries one credential header -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_kind_carries_the_credentials(path: Path, fake: FakeClarifai, kind: str) -> None:
    method = invoke(kind, path.channel(), fake)
    (call,) = fake.calls_to(method)
    assert credentials_sent(call) == [PAT_HEADER]
    assert [request.user_app_id for request in call.requests] == [UAI] * len(call.requests)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_every_call_kind_carries_the_credentials_on_aio(
    aio_path: AioPath, fake: FakeClarifai, kind: str
) -> None:
    async with aio_path.channel() as channel:
        method = await aio_invoke(kind, channel, fake)
    (call,) = fake.calls_to(method)
    assert credentials_sent(call) == [PAT_HEADER]
    assert [request.user_app_id for request in call.requests] == [UAI] * len(call.requests)


@pytest.mark.parametrize("kind", KINDS)
def test_caller_metadata_is_kept_beside_exactly_one_credential_header(
    path: Path, fake: FakeClarifai, kind: str
) -> None:
    mine = [("x-request-id", "req-1"), ("x-tag", "a"), ("x-tag", "b")]
    method = invoke(kind, path.channel(), fake, metadata=mine)
    (call,) = fake.calls_to(method)
    assert [pair for pair in call.metadata if pair in mine] == mine
    assert call.headers("x-tag") == ["a", "b"]
    assert credentials_sent(call) == [PAT_HEADER]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("as_metadata", [False, True], ids=["pairs", "aio_metadata"])
async def test_caller_metadata_is_kept_beside_exactly_one_credential_header_on_aio(
    aio_path: AioPath, fake: FakeClarifai, kind: str, as_metadata: bool
) -> None:
    mine = [("x-request-id", "req-1"), ("x-tag", "a"), ("x-tag", "b")]
    metadata = grpc.aio.Metadata(*mine) if as_metadata else mine
    async with aio_path.channel() as channel:
        method = await aio_invoke(kind, channel, fake, metadata=metadata)
    (call,) = fake.calls_to(method)
    assert [pair for pair in call.metadata if pair in mine] == mine
    assert credentials_sent(call) == [PAT_HEADER]


@pytest.mark.parametrize(
    ("credentials", "header"),
    [
        (PAT_CREDS, PAT_HEADER),
        (KEY_CREDS, ("authorization", f"Key {API_KEY}")),
        (SESSION_CREDS, ("x-clarifai-session-token", SESSION_TOKEN)),
    ],
    ids=["pat", "api_key", "session_token"],
)
def test_each_kind_of_secret_is_sent_in_its_header(
    path: Path, fake: FakeClarifai, credentials: Credentials, header: tuple[str, str]
) -> None:
    stub = path.stub(credentials)
    stub.PostModelOutputs(predict_request(), timeout=T, metadata=(("x-request-id", "r"),))
    (call,) = fake.calls_to("PostModelOutputs")
    assert credentials_sent(call) == [header]
    assert call.header("x-request-id") == "r"


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
async def test_each_kind_of_secret_is_sent_in_its_header_on_aio(
    aio_path: AioPath, fake: FakeClarifai, credentials: Credentials, header: tuple[str, str]
) -> None:
    async with aio_path.stub(credentials) as stub:
        await stub.PostModelOutputs(predict_request(), timeout=T, metadata=(("x-request-id", "r"),))
    (call,) = fake.calls_to("PostModelOutputs")
    assert credentials_sent(call) == [header]
    assert call.header("x-request-id") == "r"


@pytest.mark.parametrize(
    "header",
    [
        ("authorization", "Key fake-caller-pat-for-tests"),
        ("x-clarifai-session-token", "fake-caller-session-for-tests"),
    ],
    ids=["authorization", "session_token"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_credential_header_on_the_call_wins_and_user_app_id_stays_empty(
    path: Path, fake: FakeClarifai, kind: str, header: tuple[str, str]
) -> None:
    channel = path.channel()
    method = invoke(kind, channel, fake, metadata=[("x-request-id", "r1"), header])
    with use_credentials(OTHER):
        invoke(kind, channel, fake, metadata=[("x-request-id", "r2"), header])
    first, second = fake.calls_to(method)
    for call, request_id in ((first, "r1"), (second, "r2")):
        assert credentials_sent(call) == [header]
        assert call.header("x-request-id") == request_id
        # The package cannot know whose secret the caller passed: it fills nothing.
        assert [request.HasField("user_app_id") for request in call.requests] == [False] * len(
            call.requests
        )


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
async def test_credential_header_on_the_call_wins_and_user_app_id_stays_empty_on_aio(
    aio_path: AioPath, fake: FakeClarifai, kind: str, header: tuple[str, str]
) -> None:
    async with aio_path.channel() as channel:
        method = await aio_invoke(kind, channel, fake, metadata=[("x-request-id", "r1"), header])
        with use_credentials(OTHER):
            await aio_invoke(kind, channel, fake, metadata=[("x-request-id", "r2"), header])
    first, second = fake.calls_to(method)
    for call, request_id in ((first, "r1"), (second, "r2")):
        assert credentials_sent(call) == [header]
        assert call.header("x-request-id") == request_id
        assert not any(request.HasField("user_app_id") for request in call.requests)


@pytest.mark.asyncio
async def test_compression_passes_through(aio_path: AioPath, fake: FakeClarifai) -> None:
    # grpc.aio carries compression= as a "grpc-internal-" metadata entry of its own.
    # grpcio 1.78 and older spell its key as bytes (_metadata._GRPC_OWN lets both through).
    async with aio_path.stub() as stub:
        response = await stub.PostModelOutputs(
            predict_request(), timeout=T, compression=grpc.Compression.Gzip
        )
        assert response.status.code == SUCCESS
        stream = aio_generate(stub, compression=grpc.Compression.Gzip, metadata=(("x-k", "v"),))
        assert len(await read_all(stream)) == 3
        response = await stub.PostModelOutputs(
            predict_request(),
            timeout=T,
            compression=grpc.Compression.Deflate,
            metadata=grpc.aio.Metadata(("x-k", "w")),
        )
        assert response.status.code == SUCCESS
    for call in fake.calls:
        assert credentials_sent(call) == [PAT_HEADER]
        assert call.request.user_app_id == UAI
    assert fake.calls[1].header("x-k") == "v"
    assert fake.calls[2].header("x-k") == "w"


# -- overrides and providers -----------------------------------------------------------------


def test_use_credentials_overrides_the_default_on_every_channel(
    path: Path, fake: FakeClarifai
) -> None:
    first, second = path.stub(), path.stub()
    with use_credentials(OTHER):
        first.PostModelOutputs(predict_request(), timeout=T)
        list(second.GenerateModelOutputs(predict_request(), timeout=T))
    first.PostModelOutputs(predict_request(), timeout=T)
    inside_unary, after = fake.calls_to("PostModelOutputs")
    (inside_stream,) = fake.calls_to("GenerateModelOutputs")
    for call in (inside_unary, inside_stream):
        assert credentials_sent(call) == [OTHER_HEADER]
        assert call.request.user_app_id == OTHER_UAI
    assert credentials_sent(after) == [PAT_HEADER]
    assert after.request.user_app_id == UAI


@pytest.mark.asyncio
async def test_use_credentials_overrides_the_default_on_every_kind(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    async with aio_path.channel() as channel:
        with use_credentials(OTHER):
            for kind in KINDS:
                await aio_invoke(kind, channel, fake)
        await aio_invoke("unary_unary", channel, fake)
    *inside, after = fake.calls
    assert len(inside) == 4
    for call in inside:
        assert credentials_sent(call) == [OTHER_HEADER]
        assert all(request.user_app_id == OTHER_UAI for request in call.requests)
    assert credentials_sent(after) == [PAT_HEADER]
    assert after.request.user_app_id == UAI


def test_use_credentials_nests_and_restores(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub()

    def call() -> None:
        stub.PostModelOutputs(predict_request(), timeout=T)

    call()
    with use_credentials(OTHER):
        call()
        with use_credentials(THIRD):
            call()
        call()
    call()
    sent = [credentials_sent(c) for c in fake.calls_to("PostModelOutputs")]
    assert sent == [[PAT_HEADER], [OTHER_HEADER], [THIRD_HEADER], [OTHER_HEADER], [PAT_HEADER]]
    apps = [c.request.user_app_id for c in fake.calls_to("PostModelOutputs")]
    third_uai = resources_pb2.UserAppIDSet(user_id="third-user")
    assert apps == [UAI, OTHER_UAI, third_uai, OTHER_UAI, UAI]


def test_use_credentials_restores_after_an_exception(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub()
    fake.script("PostModelOutputs", grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError), use_credentials(OTHER):
        stub.PostModelOutputs(predict_request(), timeout=T)
    stub.PostModelOutputs(predict_request(), timeout=T)
    inside, after = fake.calls_to("PostModelOutputs")
    assert credentials_sent(inside) == [OTHER_HEADER]
    assert credentials_sent(after) == [PAT_HEADER]


def test_credentials_provider_is_consulted_per_call(path: Path, fake: FakeClarifai) -> None:
    rotation = iter([PAT_CREDS, OTHER, THIRD])
    stub = path.stub(lambda: next(rotation))
    for _ in range(3):
        stub.PostModelOutputs(predict_request(), timeout=T)
    sent = [credentials_sent(c) for c in fake.calls_to("PostModelOutputs")]
    assert sent == [[PAT_HEADER], [OTHER_HEADER], [THIRD_HEADER]]


@pytest.mark.asyncio
async def test_credentials_provider_is_consulted_per_call_on_aio(
    aio_path: AioPath, fake: FakeClarifai
) -> None:
    rotation = iter([PAT_CREDS, OTHER, KEY_CREDS])
    async with aio_path.stub(lambda: next(rotation)) as stub:  # type: ignore[arg-type]
        for _ in range(3):
            await stub.PostModelOutputs(predict_request(), timeout=T)
    sent = [credentials_sent(c) for c in fake.calls_to("PostModelOutputs")]
    assert sent == [[PAT_HEADER], [OTHER_HEADER], [("authorization", f"Key {API_KEY}")]]


# -- credential rotation and failing providers -----------------------------------------------


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
        [m async for m in stub.GenerateModelOutputs(bare_predict_request(), timeout=T)]

    for call in (unary, stream):
        provider = Broken()
        async with aio_stub(kind, fake.target, provider) as stub:
            with pytest.raises(CredentialsProviderError) as info:
                await call(stub)
        check_provider_error(info.value, provider, fake)


# -- isolation: threads, tasks, callers ------------------------------------------------------


def test_overrides_stay_in_their_own_thread(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub()
    threads = 16
    barrier = threading.Barrier(threads)

    def worker(i: int) -> None:
        credentials = Credentials.from_pat(
            f"fake-pat-{i}-for-tests", user_id=f"user-{i}", app_id=f"app-{i}"
        )
        with use_credentials(credentials):
            barrier.wait(timeout=T)
            for _ in range(3):
                stub.PostModelOutputs(predict_request(f"model-{i}"), timeout=T)
                list(stub.GenerateModelOutputs(predict_request(f"model-{i}"), timeout=T))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    stub.PostModelOutputs(predict_request("model-main"), timeout=T)

    calls = fake.calls
    assert len(calls) == threads * 6 + 1
    seen = set()
    for call in calls:
        i = call.request.model_id.removeprefix("model-")
        seen.add(i)
        if i == "main":
            assert credentials_sent(call) == [PAT_HEADER]
            assert call.request.user_app_id == UAI
            continue
        assert credentials_sent(call) == [("authorization", f"Key fake-pat-{i}-for-tests")]
        assert call.request.user_app_id == resources_pb2.UserAppIDSet(
            user_id=f"user-{i}", app_id=f"app-{i}"
        )
    assert seen == {str(i) for i in range(threads)} | {"main"}


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
                        bare_predict_request(), timeout=T, metadata=metadata
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


# -- caller metadata validation --------------------------------------------------------------


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


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", AIO_PATHS)
async def test_an_aio_call_refused_before_sending_is_done_and_goes_quietly(
    kind: str, fake: FakeClarifai
) -> None:
    # grpcio 1.82 and older raised the refusal again from cancel() (so from the call's __del__:
    # a warning, an error in this suite), done(), cancelled() and add_done_callback(), and never
    # ran the done callbacks added before it (_aio_fixes gives them 1.83's behaviour).
    async with aio_stub(kind, fake.target) as stub:
        call = stub.ListModels(
            service_pb2.ListModelsRequest(), timeout=T, metadata=[("X-Upper", "v")]
        )
        seen: list[object] = []
        call.add_done_callback(seen.append)
        with pytest.raises(ValueError, match="'X-Upper'"):
            await call
        await asyncio.sleep(0)  # the task's done callbacks run in the loop
        assert seen == [call]
        call.add_done_callback(seen.append)
        assert seen == [call, call]
        assert call.done() is True
        assert call.cancelled() is False
        assert call.cancel() is False
        del call
        seen.clear()
        gc.collect()
    assert fake.calls == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=_PAIRS)
def test_caller_metadata_is_refused_or_sent_exactly(
    metadata_stubs: tuple[FakeClarifai, dict[str, Any]], pairs: list[tuple[str, Any]]
) -> None:
    # A str value on a -bin key is a known bug, tested on its own below.
    assume(not any(k.endswith("-bin") and isinstance(v, str) for k, v in pairs))
    # gRPC's tracing header: grpcio 1.60 (the floor) sends a repeated one differently.
    assume(sum(k == "traceparent" for k, _ in pairs) <= 1)
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
