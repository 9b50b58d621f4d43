"""``user_app_id``: filled from the credentials when the caller left it empty, kept as set
otherwise, at its own field number, in every message of a client stream; the caller's request
objects are never mutated. Each sync test is followed by its aio twin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from conftest import (
    KEY_CREDS,
    PAT,
    PAT_CREDS,
    PAT_NO_USER,
    SESSION_CREDS,
    USER,
    AioPath,
    Path,
    T,
)
from helpers import (
    KINDS,
    OTHER_UAI,
    PAT_HEADER,
    STREAM_METHOD,
    SUCCESS,
    UAI,
    UNAVAILABLE,
    agenerator,
    aio_invoke,
    aio_stream_unary,
    credentials_sent,
    generator,
    ids,
    invoke,
    output,
    predict_request,
    read_all,
    stream_unary,
    three_requests,
)

from clarifai_interceptor import Credentials
from clarifai_interceptor.testing import FakeClarifai, Reply


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
async def test_which_credentials_fill_user_app_id_on_aio(
    aio_path: AioPath,
    fake: FakeClarifai,
    credentials: Credentials,
    expected: resources_pb2.UserAppIDSet | None,
) -> None:
    async with aio_path.channel(credentials) as channel:
        for kind in KINDS:
            await aio_invoke(kind, channel, fake)
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


@pytest.mark.asyncio
async def test_user_app_id_set_by_the_caller_is_sent_as_set_on_aio(
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


@pytest.mark.asyncio
async def test_caller_request_objects_are_never_mutated_on_aio(
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
        await aio_stream_unary(channel)(stream, timeout=T)
        await read_all(stub.StreamModelOutputs(stream, timeout=T))
        await read_all(stub.StreamModelOutputs(iter(stream), timeout=T))
    assert [m.SerializeToString() for m in (request, *stream)] == before
    sent = [r for call in fake.calls for r in call.requests]
    assert len(sent) == 1 + 1 + 1 + 2 * 2 + 2 + 2
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


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "make", [list, tuple, iter, generator, agenerator], ids=lambda f: f.__name__
)
async def test_each_message_of_a_client_stream_is_filled_as_sent_on_aio(
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
@pytest.mark.parametrize("method", ["stream_unary", "stream_stream"])
async def test_write_style_client_streams_work_and_are_filled(
    aio_path: AioPath, fake: FakeClarifai, method: str
) -> None:
    # grpc.aio feeds write() into the interceptors as an iterator that waits for them to
    # return: the call must be handed over at once, never awaited first.
    fake.script(STREAM_METHOD, Reply(output("single")))
    async with aio_path.channel() as channel:
        if method == "stream_unary":
            call = aio_stream_unary(channel)(timeout=T)
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
