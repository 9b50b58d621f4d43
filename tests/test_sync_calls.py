"""Acceptance tests of the sync core (issue 2, behaviours 1-10), on both sync paths.

Every test drives the real ``V2Stub`` (or, for stream-unary, of which V2 has no method, a
multi-callable on a V2 method) over real gRPC against `FakeClarifai`, and asserts on what the
server recorded. The ``path`` fixture runs each test through ``grpc.intercept_channel`` with
`ClarifaiInterceptor` and through `wrap_channel`. Retry waits are zero unless a test is about time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    Path,
    T,
)

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    insecure_channel,
    use_credentials,
    use_retry,
    wrap_channel,
)
from clarifai_interceptor.testing import (
    Delay,
    Fail,
    FakeClarifai,
    RecordedCall,
    Reply,
    Status,
    Stream,
)

SUCCESS = status_code_pb2.SUCCESS
THROTTLED = status_code_pb2.CONN_THROTTLED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CREDENTIAL_KEYS = ("authorization", "x-clarifai-session-token")
PAT_HEADER = ("authorization", f"Key {PAT}")
UAI = resources_pb2.UserAppIDSet(user_id=USER, app_id=APP)
OTHER = Credentials.from_pat("fake-other-pat-for-tests", user_id="other-user", app_id="other-app")
OTHER_HEADER = ("authorization", "Key fake-other-pat-for-tests")
OTHER_UAI = resources_pb2.UserAppIDSet(user_id="other-user", app_id="other-app")
THIRD = Credentials.from_pat("fake-third-pat-for-tests", user_id="third-user")
THIRD_HEADER = ("authorization", "Key fake-third-pat-for-tests")

#: The statuses issue 2 requires to be retried by default.
REQUIRED_RETRYABLE_STATUSES = (
    status_code_pb2.CONN_THROTTLED,
    status_code_pb2.MODEL_BUSY_PLEASE_RETRY,
    status_code_pb2.MODEL_DEPLOYING,
    status_code_pb2.MODEL_LOADING,
    status_code_pb2.RPC_SERVER_UNAVAILABLE,
    status_code_pb2.RPC_REQUEST_QUEUE_FULL,
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


# -- helpers ---------------------------------------------------------------------------------


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


def drain(responses: Iterable[service_pb2.MultiOutputResponse], into: list[str]) -> None:
    """Read a response stream, noting each output id as it arrives (before any error)."""
    for response in responses:
        into.append(response.outputs[0].id)  # noqa: PERF401 (keep what came before an error)


def wait_until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def warm_up(stub: service_pb2_grpc.V2Stub, fake: FakeClarifai) -> None:
    """Connect the channel before a test that measures time, then forget the call."""
    stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
    fake.clear()


# -- 1. credentials and metadata -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_kind_carries_the_credentials(path: Path, fake: FakeClarifai, kind: str) -> None:
    method = invoke(kind, path.channel(), fake)
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


# -- 10. threads -----------------------------------------------------------------------------


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


# -- 2. user_app_id --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_empty_user_app_id_is_filled_and_nothing_else_changes(
    path: Path, fake: FakeClarifai, kind: str
) -> None:
    method = invoke(kind, path.channel(), fake)
    (call,) = fake.calls_to(method)
    expected = (
        [predict_request()]
        if kind.startswith("unary")
        else [
            predict_request("model-a"),
            predict_request("model-b"),
        ]
    )
    for message in expected:
        message.user_app_id.CopyFrom(UAI)
    assert list(call.requests) == expected


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
def test_which_credentials_fill_user_app_id(
    path: Path,
    fake: FakeClarifai,
    credentials: Credentials,
    expected: resources_pb2.UserAppIDSet | None,
) -> None:
    channel = path.channel(credentials)
    for kind in KINDS:
        invoke(kind, channel, fake)
    requests = [request for call in fake.calls for request in call.requests]
    assert len(requests) == 1 + 1 + 2 + 2
    for request in requests:
        if expected is None:
            assert not request.HasField("user_app_id")
        else:
            assert request.user_app_id == expected


@pytest.mark.parametrize(
    "preset",
    [
        resources_pb2.UserAppIDSet(user_id="caller-user", app_id="caller-app"),
        resources_pb2.UserAppIDSet(app_id="caller-app"),
        resources_pb2.UserAppIDSet(user_id="caller-user"),
    ],
    ids=["both", "app_only", "user_only"],
)
def test_user_app_id_set_by_the_caller_is_sent_as_set(
    path: Path, fake: FakeClarifai, preset: resources_pb2.UserAppIDSet
) -> None:
    stub = path.stub()
    request = predict_request()
    request.user_app_id.CopyFrom(preset)
    stub.PostModelOutputs(request, timeout=T)
    list(stub.GenerateModelOutputs(request, timeout=T))
    list(stub.StreamModelOutputs([predict_request("filled"), request], timeout=T))
    (unary,) = fake.calls_to("PostModelOutputs")
    (server_stream,) = fake.calls_to("GenerateModelOutputs")
    (client_stream,) = fake.calls_to(STREAM_METHOD)
    assert unary.request == request
    assert server_stream.request == request
    assert client_stream.requests[0].user_app_id == UAI
    assert client_stream.requests[1] == request


def test_caller_request_objects_are_never_mutated(path: Path, fake: FakeClarifai) -> None:
    stub = path.stub()
    channel = path.channel()
    request = predict_request()
    stream = [predict_request("model-a"), predict_request("model-b")]
    before = [m.SerializeToString() for m in (request, *stream)]
    fake.script("PostModelOutputs", UNAVAILABLE)  # also across a retry
    fake.script(STREAM_METHOD, UNAVAILABLE, Reply(output("single")))
    stub.PostModelOutputs(request, timeout=T)
    stub.PostModelOutputs.with_call(request, timeout=T)
    stub.PostModelOutputs.future(request, timeout=T).result(timeout=T)
    list(stub.GenerateModelOutputs(request, timeout=T))
    stream_unary(channel)(stream, timeout=T)
    list(stub.StreamModelOutputs(stream, timeout=T))
    list(stub.StreamModelOutputs(iter(stream), timeout=T))
    assert [m.SerializeToString() for m in (request, *stream)] == before
    assert not any(m.HasField("user_app_id") for m in (request, *stream))
    # ...while the server saw every one of those messages filled in.
    sent = [r for call in fake.calls for r in call.requests]
    assert len(sent) == 1 + 1 + 1 + 1 + 1 + 2 * 2 + 2 + 2
    assert all(r.user_app_id == UAI for r in sent)


def test_requests_without_user_app_id_pass_unchanged(path: Path, fake: FakeClarifai) -> None:
    request_types = (
        service_pb2.GetStatusCodeRequest,
        service_pb2.PostModelVersionsUploadRequest,
    )
    for request_type in request_types:
        assert "user_app_id" not in request_type.DESCRIPTOR.fields_by_name
    stub = path.stub()
    status_request = service_pb2.GetStatusCodeRequest(status_code_id="10000")
    stub.GetStatusCode(status_request, timeout=T)
    uploads = [
        service_pb2.PostModelVersionsUploadRequest(
            content_part=resources_pb2.UploadContentPart(part_number=number, data=b"\x00\x01")
        )
        for number in (1, 2, 3)
    ]
    responses = stub.PostModelVersionsUpload(uploads, timeout=T)
    assert [response.status.code for response in responses] == [SUCCESS] * 3
    (status_call,) = fake.calls_to("GetStatusCode")
    (upload_call,) = fake.calls_to("PostModelVersionsUpload")
    assert status_call.request.SerializeToString() == status_request.SerializeToString()
    assert [m.SerializeToString() for m in upload_call.requests] == [
        m.SerializeToString() for m in uploads
    ]
    assert credentials_sent(upload_call) == [PAT_HEADER]


@pytest.mark.parametrize(
    ("method", "request_type", "extra"),
    [
        ("ListScopes", service_pb2.ListScopesRequest, {"key_type": "personal_access_token"}),
        ("ListLogEntries", service_pb2.ListLogEntriesRequest, {"page": 3, "model_id": "m"}),
        ("StreamLogEntries", service_pb2.StreamLogEntriesRequest, {"model_id": "m"}),
    ],
)
def test_user_app_id_is_filled_at_its_own_field_number(
    path: Path, fake: FakeClarifai, method: str, request_type: Any, extra: dict[str, Any]
) -> None:
    assert request_type.DESCRIPTOR.fields_by_name["user_app_id"].number != 1
    request = request_type(**extra)
    answer = getattr(path.stub(), method)(request, timeout=T)
    if method.startswith("Stream"):
        assert [response.status.code for response in answer] == [SUCCESS] * 3
    (call,) = fake.calls_to(method)
    expected = request_type(**extra)
    expected.user_app_id.CopyFrom(UAI)
    assert call.request == expected


def test_one_multi_callable_sends_preset_and_filled_requests_alike(
    path: Path, fake: FakeClarifai
) -> None:
    # The wrapper serializes requests sent as they are and filled ones through two underlying
    # multi-callables; the choice is per call, whichever comes first.
    preset = predict_request("preset")
    preset.user_app_id.CopyFrom(OTHER_UAI)
    method = path.stub().PostModelOutputs
    method(preset, timeout=T)
    method(predict_request("a"), timeout=T)
    method.with_call(preset, timeout=T)
    method.future(predict_request("b"), timeout=T).result(timeout=T)
    method(preset, timeout=T)
    sent = [call.request.user_app_id for call in fake.calls_to("PostModelOutputs")]
    assert sent == [OTHER_UAI, UAI, OTHER_UAI, UAI, OTHER_UAI]


@pytest.mark.parametrize("make", [list, tuple, iter], ids=["list", "tuple", "iterator"])
def test_each_message_of_a_client_stream_is_filled_as_sent(
    path: Path, fake: FakeClarifai, make: Callable[[Any], Any]
) -> None:
    preset = predict_request("preset")
    preset.user_app_id.CopyFrom(OTHER_UAI)
    messages = [predict_request("a"), preset, predict_request("c")]
    responses = path.stub().StreamModelOutputs(make(messages), timeout=T)
    assert len(list(responses)) == 3
    (call,) = fake.calls_to(STREAM_METHOD)
    assert [r.model_id for r in call.requests] == ["a", "preset", "c"]
    assert [r.user_app_id for r in call.requests] == [UAI, OTHER_UAI, UAI]


# -- 3. unary retry --------------------------------------------------------------------------


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


@pytest.mark.parametrize("status", REQUIRED_RETRYABLE_STATUSES, ids=status_code_pb2.StatusCode.Name)
def test_unary_retried_on_a_body_status(path: Path, fake: FakeClarifai, status: int) -> None:
    fake.script("PostModelOutputs", Status(status), Reply(output("ok")))
    response = path.stub().PostModelOutputs(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
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


def test_no_wait_runs_past_the_policy_timeout(path: Path, fake: FakeClarifai) -> None:
    # Waits 0.3 s then 0.6 s: the second would end past the 0.5 s budget, so retries stop.
    policy = RetryPolicy(initial_backoff=0.3, multiplier=2.0, jitter=0, timeout=0.5)
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=T)
    elapsed = time.monotonic() - started
    assert failure.value.code() is UNAVAILABLE
    assert len(fake.calls_to("PostModelOutputs")) == 2
    assert elapsed < 3  # all five attempts would wait 0.3 + 0.6 + 1.2 + 2.4 s


def test_call_timeout_bounds_all_attempts_and_waits(path: Path, fake: FakeClarifai) -> None:
    # Attempts at 0, 0.2 and 0.4 s; a third 0.2 s wait would end past the call's 0.5 s, so the
    # retries stop there and the caller gets the last real outcome. (No budget: it would stop
    # the retries first, and this test is about the deadline.)
    policy = RetryPolicy(
        max_attempts=1000,
        initial_backoff=0.2,
        multiplier=1.0,
        jitter=0,
        timeout=None,
        budget=None,
    )
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=0.5)
    elapsed = time.monotonic() - started
    # Not DEADLINE_EXCEEDED: no wait ran into the deadline and left an attempt no time.
    assert failure.value.code() is UNAVAILABLE
    assert 2 <= len(fake.calls_to("PostModelOutputs")) <= 3
    assert elapsed < 3  # 1000 attempts would take 200 s


@pytest.mark.parametrize(
    ("policy", "timeout"),
    [
        (RetryPolicy(initial_backoff=0, jitter=0, total_timeout=0.5), T),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=None), 0.5),
        (RetryPolicy(initial_backoff=0, jitter=0, timeout=30), 0.5),
    ],
    ids=["total_timeout", "call_timeout", "call_timeout_shorter"],
)
def test_each_attempt_gets_only_the_time_left(
    path: Path, fake: FakeClarifai, policy: RetryPolicy, timeout: float
) -> None:
    # Each attempt takes 0.3 s: the second has only 0.2 s left and runs out of time. A timeout
    # re-applied to every attempt would instead give five UNAVAILABLE attempts (1.5 s).
    stub = path.stub(retry=policy)
    warm_up(stub, fake)
    fake.set_default("PostModelOutputs", Delay(0.3, UNAVAILABLE))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        stub.PostModelOutputs(predict_request(), timeout=timeout)
    elapsed = time.monotonic() - started
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Two attempts fit; on a loaded machine the first may already use up the 0.5 s.
    assert len(fake.calls_to("PostModelOutputs")) in (1, 2)
    assert elapsed < 3


# -- 3b. the retry budget and server pushback ------------------------------------------------


def test_retry_budget_is_shared_by_the_calls_of_one_channel(path: Path, fake: FakeClarifai) -> None:
    # The default budget: 10 tokens, a retryable failure takes one, no retry at 5 or fewer.
    channel = path.channel(retry=RetryPolicy(initial_backoff=0, jitter=0))
    stub = service_pb2_grpc.V2Stub(channel)
    fake.set_default("PostModelOutputs", UNAVAILABLE)
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.PostModelOutputs(predict_request(), timeout=T)
    with pytest.raises(grpc.RpcError):
        next(stub.GenerateModelOutputs(predict_request(), timeout=T))
    # 5 attempts (tokens 10 -> 5), then one each: the budget is spent for every call kind.
    assert len(fake.calls_to("PostModelOutputs")) == 5 + 1
    assert len(fake.calls_to("GenerateModelOutputs")) == 1
    # Another channel has its own budget.
    fake.clear()
    with pytest.raises(grpc.RpcError):
        path.stub(retry=RetryPolicy(initial_backoff=0, jitter=0)).PostModelOutputs(
            predict_request(), timeout=T
        )
    assert len(fake.calls_to("PostModelOutputs")) == 5


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


# -- 4. scope and auth failures pass straight through ----------------------------------------


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


# -- 5. any other failure: one attempt, unchanged --------------------------------------------


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


# -- 6. unary-stream -------------------------------------------------------------------------


def generate(stub: service_pb2_grpc.V2Stub) -> Any:
    return stub.GenerateModelOutputs(predict_request(), timeout=T)


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


def test_stream_retried_on_a_retryable_first_message(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "GenerateModelOutputs",
        Stream([output("busy", status_code_pb2.MODEL_LOADING), output("dropped")]),
        Stream([output("a"), output("b")]),
    )
    assert ids(generate(path.stub())) == ["a", "b"]
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


# -- 7. client streams: stream-unary and stream-stream ---------------------------------------


def three_requests() -> list[service_pb2.PostModelOutputsRequest]:
    return [predict_request(f"model-{n}") for n in range(3)]


def generator(messages: list[Any]) -> Iterator[Any]:
    yield from messages


REPLAYABLE = [list, tuple]
ONE_SHOT = [iter, generator]


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


# -- 8. with_call and future -----------------------------------------------------------------


def test_with_call_returns_the_response_and_a_call(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE, Reply(output("ok")))
    response, call = path.stub().PostModelOutputs.with_call(predict_request(), timeout=T)
    assert ids([response]) == ["ok"]
    assert isinstance(call, grpc.Call)
    assert call.code() is grpc.StatusCode.OK
    assert isinstance(tuple(call.trailing_metadata()), tuple)
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_future_is_a_future_and_a_call_resolved_after_retries(
    path: Path, fake: FakeClarifai
) -> None:
    fake.script("PostModelOutputs", UNAVAILABLE, Reply(output("busy", THROTTLED)))
    fake.script("PostModelOutputs", Reply(output("ok")))
    future = path.stub().PostModelOutputs.future(predict_request(), timeout=T)
    assert isinstance(future, grpc.Future)
    assert isinstance(future, grpc.Call)
    assert ids([future.result(timeout=T)]) == ["ok"]
    assert future.done()
    assert not future.cancelled()
    assert future.exception(timeout=T) is None
    assert future.code() is grpc.StatusCode.OK
    done: list[object] = []
    future.add_done_callback(done.append)
    assert done == [future]
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 3
    assert all(credentials_sent(call) == [PAT_HEADER] for call in calls)


def test_future_returns_at_once_and_retries_in_the_background(
    path: Path, fake: FakeClarifai
) -> None:
    stub = path.stub(retry=RetryPolicy(initial_backoff=1.0, jitter=0))
    warm_up(stub, fake)
    fake.script("PostModelOutputs", UNAVAILABLE, Reply(output("ok")))
    done = threading.Event()
    started = time.monotonic()
    future = stub.PostModelOutputs.future(predict_request(), timeout=T)
    returned_after = time.monotonic() - started
    future.add_done_callback(lambda _: done.set())
    assert returned_after < 0.5  # the 1 s wait before the retry runs in the background
    assert ids([future.result(timeout=T)]) == ["ok"]
    assert done.wait(timeout=T)
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_future_exhausted_holds_the_last_error(path: Path, fake: FakeClarifai) -> None:
    fake.script(
        "PostModelOutputs",
        *[Fail(UNAVAILABLE, f"attempt {n}") for n in (1, 2, 3)],
        Reply(output("never reached")),
    )
    stub = path.stub(retry=dataclasses.replace(FAST, max_attempts=3))
    future = stub.PostModelOutputs.future(predict_request(), timeout=T)
    error = future.exception(timeout=T)
    assert isinstance(error, grpc.RpcError)
    assert not isinstance(error, tenacity.RetryError)
    assert error.code() is UNAVAILABLE
    assert error.details() == "attempt 3"
    with pytest.raises(grpc.RpcError) as failure:
        future.result(timeout=T)
    assert failure.value.details() == "attempt 3"
    assert future.code() is UNAVAILABLE
    assert future.details() == "attempt 3"
    assert len(fake.calls_to("PostModelOutputs")) == 3


def test_future_passes_scope_errors_through(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", grpc.StatusCode.PERMISSION_DENIED, Reply(output("never")))
    future = path.stub(retry=RETRY_ALL_IT_MAY).PostModelOutputs.future(predict_request(), timeout=T)
    assert future.exception(timeout=T).code() is grpc.StatusCode.PERMISSION_DENIED
    assert len(fake.calls_to("PostModelOutputs")) == 1


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


# -- 9. logging ------------------------------------------------------------------------------


def test_one_debug_record_per_retry_and_no_secret(
    path: Path, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, gRPC's included, for the secret check
    stub = path.stub()
    fake.script("PostModelOutputs", UNAVAILABLE, Status(THROTTLED))
    assert stub.PostModelOutputs(predict_request(), timeout=T).status.code == SUCCESS
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    assert [r.levelno for r in ours] == [logging.DEBUG] * 2
    first, second = (r.getMessage() for r in ours)
    assert "PostModelOutputs" in first
    assert "PostModelOutputs" in second
    assert "UNAVAILABLE" in first
    assert "CONN_THROTTLED" in second
    assert re.search(r"\b1\b", first)
    assert re.search(r"\b2\b", second)

    # The other call shapes log too (each on a fresh channel, with a full retry budget).
    fake.script("GenerateModelOutputs", UNAVAILABLE)
    fake.script(STREAM_METHOD, Status(THROTTLED))
    fake.script("PostModelOutputs", Status(status_code_pb2.MODEL_LOADING))
    assert len(list(generate(path.stub()))) == 3
    assert len(list(path.stub().StreamModelOutputs(three_requests(), timeout=T))) == 3
    path.stub().PostModelOutputs.future(predict_request(), timeout=T).result(timeout=T)
    ours = [r for r in caplog.records if r.name == "clarifai_interceptor"]
    messages = [r.getMessage() for r in ours[2:]]
    assert len(messages) == 3
    assert "GenerateModelOutputs" in messages[0]
    assert "UNAVAILABLE" in messages[0]
    assert STREAM_METHOD in messages[1]
    assert "CONN_THROTTLED" in messages[1]
    assert "PostModelOutputs" in messages[2]
    assert "MODEL_LOADING" in messages[2]

    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.__dict__!r}"
        assert PAT not in text


def test_no_record_without_a_retry(
    path: Path, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clarifai_interceptor")
    stub = path.stub()
    stub.PostModelOutputs(predict_request(), timeout=T)
    assert len(list(generate(stub))) == 3
    fake.script("PostModelOutputs", grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError):
        stub.PostModelOutputs(predict_request(), timeout=T)
    assert [r for r in caplog.records if r.name == "clarifai_interceptor"] == []


def test_no_secret_in_reprs(fake: FakeClarifai) -> None:
    interceptor = ClarifaiInterceptor(PAT_CREDS, retry=FAST)
    with (
        grpc.insecure_channel(fake.target) as raw,
        insecure_channel(fake.target, SESSION_CREDS) as own,
    ):
        wrapped = wrap_channel(raw, KEY_CREDS)
        texts = [repr(interceptor), str(interceptor), repr(wrapped), repr(own), str(own)]
        texts += [repr(PAT_CREDS), repr(KEY_CREDS), repr(SESSION_CREDS), str(PAT_CREDS)]
    for text in texts:
        for secret in (PAT, API_KEY, SESSION_TOKEN):
            assert secret not in text


# -- fresh interpreter; channels as context managers -----------------------------------------

FRESH_SCRIPT = """
import sys
import grpc
from clarifai_grpc.channel import clarifai_channel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
assert clarifai_channel.wrap_response_deserializer is None, "the quirk is gone: test is moot"
import clarifai_interceptor as ci
target, how = sys.argv[1], sys.argv[2]
creds = ci.Credentials.from_pat("fake-pat-for-tests", user_id="fake-user", app_id="fake-app")
if how == "insecure_channel":
    channel = ci.insecure_channel(target, creds)
elif how == "wrap_channel":
    channel = ci.wrap_channel(grpc.insecure_channel(target), creds)
else:
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target), ci.ClarifaiInterceptor(creds)
    )
stub = service_pb2_grpc.V2Stub(channel)
response = stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(model_id="m"), timeout=10)
print(response.status.code)
channel.close()
"""


@pytest.mark.parametrize("how", ["insecure_channel", "wrap_channel", "intercept_channel"])
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
