"""Tests of clarifai_interceptor.testing (FakeClarifai) and its pytest fixture, over real gRPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from clarifai_grpc.channel import clarifai_channel
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

from clarifai_interceptor.testing import (
    Delay,
    Fail,
    FakeClarifai,
    RecordedCall,
    Reply,
    Status,
    Stream,
)

if clarifai_channel.wrap_response_deserializer is None:
    clarifai_channel.wrap_response_deserializer = clarifai_channel._response_deserializer_for_grpc

SUCCESS = status_code_pb2.SUCCESS
KEY_INVALID = status_code_pb2.CONN_KEY_INVALID
INSUFFICIENT = status_code_pb2.CONN_INSUFFICIENT_SCOPES
PAT = "fake-pat-for-tests"
NARROW = "fake-narrow-key-for-tests"
AUTH = (("authorization", f"Key {PAT}"),)
PREDICT_SCOPES = ["Apps_Get", "Concepts_Get", "Models_Get", "Predict"]  # PostModelOutputs' needs
T = 10  # seconds: every call has a timeout so nothing can hang


@pytest.fixture
def stub(clarifai_fake: FakeClarifai) -> Iterator[service_pb2_grpc.V2Stub]:
    with grpc.insecure_channel(clarifai_fake.target) as channel:
        yield service_pb2_grpc.V2Stub(channel)


@pytest.fixture
def auth_fake() -> Iterator[FakeClarifai]:
    with FakeClarifai(secrets={PAT: None, NARROW: ["Predict", "Models_Get"]}) as fake:
        yield fake


@pytest.fixture
def auth_stub(auth_fake: FakeClarifai) -> Iterator[service_pb2_grpc.V2Stub]:
    with grpc.insecure_channel(auth_fake.target) as channel:
        yield service_pb2_grpc.V2Stub(channel)


def predict(stub: service_pb2_grpc.V2Stub, **kwargs: object) -> service_pb2.MultiOutputResponse:
    return stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T, **kwargs)


def test_fixture_serves_default_success(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    assert clarifai_fake.target.startswith("127.0.0.1:")
    response = predict(stub)
    assert isinstance(response, service_pb2.MultiOutputResponse)
    assert response.status.code == SUCCESS
    app = stub.GetApp(service_pb2.GetAppRequest(), timeout=T)
    assert isinstance(app, service_pb2.SingleAppResponse)
    assert app.status.code == SUCCESS
    assert [call.method for call in clarifai_fake.calls] == ["PostModelOutputs", "GetApp"]


def test_script_is_consumed_in_order_then_default(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    reply = service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id="out-1")])
    clarifai_fake.script(
        "PostModelOutputs",
        Fail(grpc.StatusCode.UNAVAILABLE, "lb down", (("retry-after", "1"),)),
        Status(status_code_pb2.CONN_THROTTLED, "slow down"),
    )
    clarifai_fake.script("PostModelOutputs", Reply(reply))

    with pytest.raises(grpc.RpcError) as failure:
        predict(stub)
    error = failure.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == "lb down"
    assert ("retry-after", "1") in [(m.key, m.value) for m in error.trailing_metadata() or ()]

    throttled = predict(stub)
    assert throttled.status.code == status_code_pb2.CONN_THROTTLED
    assert throttled.status.description == "slow down"
    assert [output.id for output in predict(stub).outputs] == ["out-1"]
    assert predict(stub).status.code == SUCCESS
    assert len(clarifai_fake.calls_to("PostModelOutputs")) == 4


def test_shorthand_outcomes_and_set_default(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    clarifai_fake.script(
        "PostModelOutputs",
        grpc.StatusCode.PERMISSION_DENIED,
        status_code_pb2.MODEL_LOADING,
        service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id="bare")]),
    )
    clarifai_fake.set_default("PostModelOutputs", Status(status_code_pb2.MODEL_BUSY_PLEASE_RETRY))

    with pytest.raises(grpc.RpcError) as failure:
        predict(stub)
    assert isinstance(failure.value, grpc.Call)
    assert failure.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert predict(stub).status.code == status_code_pb2.MODEL_LOADING
    assert predict(stub).outputs[0].id == "bare"
    assert predict(stub).status.code == status_code_pb2.MODEL_BUSY_PLEASE_RETRY
    assert predict(stub).status.code == status_code_pb2.MODEL_BUSY_PLEASE_RETRY
    # Scripts apply per method: another method still gets the built-in default.
    assert stub.GetApp(service_pb2.GetAppRequest(), timeout=T).status.code == SUCCESS


def test_server_streaming_default_sends_three_successes(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    responses = stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
    codes = [response.status.code for response in responses]
    assert codes == [SUCCESS, SUCCESS, SUCCESS]
    assert len(clarifai_fake.calls_to("GenerateModelOutputs")) == 1


def test_stream_fails_after_its_messages(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    first = service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id="a")])
    second = service_pb2.MultiOutputResponse(outputs=[resources_pb2.Output(id="b")])
    clarifai_fake.script(
        "GenerateModelOutputs",
        Stream([first, second], error=Fail(grpc.StatusCode.UNAVAILABLE, "mid-stream")),
    )
    received: list[str] = []
    responses = stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
    with pytest.raises(grpc.RpcError) as failure:
        received.extend(response.outputs[0].id for response in responses)
    assert received == ["a", "b"]
    assert isinstance(failure.value, grpc.Call)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "mid-stream"

    clarifai_fake.script("GenerateModelOutputs", Stream([second]))
    again = stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
    assert [response.outputs[0].id for response in again] == ["b"]


def test_client_stream_records_every_request(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    # V2 has no stream-unary method; PostModelVersionsUpload is bidirectional.
    requests = [
        service_pb2.PostModelVersionsUploadRequest(
            content_part=resources_pb2.UploadContentPart(part_number=number)
        )
        for number in (1, 2, 3)
    ]
    responses = stub.PostModelVersionsUpload(iter(requests), timeout=T)
    assert [response.status.code for response in responses] == [SUCCESS] * 3
    (call,) = clarifai_fake.calls_to("PostModelVersionsUpload")
    assert list(call.requests) == requests
    assert call.request == requests[0]


def test_delay_then_outcome(clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub) -> None:
    clarifai_fake.script("PostModelOutputs", Delay(0.3, Status(status_code_pb2.MODEL_DEPLOYING)))
    started = time.monotonic()
    response = predict(stub)
    assert time.monotonic() - started >= 0.3
    assert response.status.code == status_code_pb2.MODEL_DEPLOYING


def test_delay_past_deadline_is_deadline_exceeded_and_stops_early() -> None:
    fake = FakeClarifai().start()
    try:
        fake.script("PostModelOutputs", Delay(30, SUCCESS))
        with grpc.insecure_channel(fake.target) as channel, pytest.raises(grpc.RpcError) as failure:
            service_pb2_grpc.V2Stub(channel).PostModelOutputs(
                service_pb2.PostModelOutputsRequest(), timeout=0.2
            )
        assert isinstance(failure.value, grpc.Call)
        assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        started = time.monotonic()
        fake.stop()  # waits for the handler thread: it must have left its 30 s wait
        assert time.monotonic() - started < 5
    finally:
        fake.stop()


def test_records_metadata_requests_and_time(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    request = service_pb2.PostModelOutputsRequest(
        user_app_id=resources_pb2.UserAppIDSet(user_id="me", app_id="app"), model_id="m1"
    )
    before = time.monotonic()
    stub.PostModelOutputs(
        request,
        metadata=(("authorization", f"Key {PAT}"), ("x-test", "one"), ("x-test", "two")),
        timeout=T,
    )
    after = time.monotonic()
    (call,) = clarifai_fake.calls
    assert call.method == "PostModelOutputs"
    assert call.request == request
    assert call.requests == (request,)
    assert before <= call.time <= after
    assert call.header("authorization") == f"Key {PAT}"
    assert call.headers("x-test") == ["one", "two"]
    assert call.header("x-test") == "one"
    assert call.header("x-missing") is None
    keys = [key for key, _ in call.metadata]
    assert keys.index("authorization") < keys.index("x-test")
    assert PAT not in repr(call)
    assert "<redacted>" in repr(call)


def test_calls_is_a_snapshot_and_clear_forgets(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    clarifai_fake.script("PostModelOutputs", status_code_pb2.MODEL_LOADING)
    snapshot = clarifai_fake.calls
    predict(stub, metadata=(("x-n", "1"),))
    assert snapshot == []
    assert len(clarifai_fake.calls) == 1
    clarifai_fake.script("PostModelOutputs", status_code_pb2.MODEL_LOADING)
    clarifai_fake.clear()
    assert clarifai_fake.calls == []
    assert predict(stub).status.code == SUCCESS  # the script was forgotten too


def test_concurrent_calls_consume_each_outcome_once(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    codes = list(range(50000, 50020))
    clarifai_fake.script("PostModelOutputs", *codes)
    seen: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        code = predict(stub).status.code
        with lock:
            seen.append(code)

    threads = [threading.Thread(target=call) for _ in codes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(T)
    assert sorted(seen) == codes
    assert len(clarifai_fake.calls_to("PostModelOutputs")) == len(codes)


def test_bad_scripts_are_rejected(clarifai_fake: FakeClarifai) -> None:
    with pytest.raises(ValueError, match="PostModelOutput'"):
        clarifai_fake.script("PostModelOutput", SUCCESS)
    with pytest.raises(ValueError, match="NoSuchMethod"):
        clarifai_fake.set_default("NoSuchMethod", SUCCESS)
    with pytest.raises(ValueError, match="Nope"):
        clarifai_fake.calls_to("Nope")
    with pytest.raises(ValueError, match="not server-streaming"):
        clarifai_fake.script("PostModelOutputs", Stream([service_pb2.MultiOutputResponse()]))
    with pytest.raises(ValueError, match="MultiOutputResponse"):
        clarifai_fake.script("PostModelOutputs", Reply(service_pb2.SingleAppResponse()))
    with pytest.raises(ValueError, match="MultiOutputResponse"):
        clarifai_fake.script("PostModelOutputs", Delay(1, service_pb2.SingleAppResponse()))
    with pytest.raises(TypeError, match="str"):
        clarifai_fake.script("PostModelOutputs", "oops")  # type: ignore[arg-type]


def test_lifecycle_errors() -> None:
    fake = FakeClarifai()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.target
    with fake, pytest.raises(RuntimeError, match="already started"):
        fake.start()
    fake.stop()  # stopping twice is harmless
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.target


def test_unknown_scope_names_are_rejected_without_the_secret() -> None:
    with pytest.raises(ValueError, match="Predikt") as failure:
        FakeClarifai(secrets={PAT: ["Predikt"]})
    assert PAT not in str(failure.value)
    with pytest.raises(TypeError):
        FakeClarifai(secrets={PAT: "Predict"})


def test_auth_unknown_missing_and_malformed_secrets(
    auth_fake: FakeClarifai, auth_stub: service_pb2_grpc.V2Stub
) -> None:
    auth_fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    unknown = predict(auth_stub, metadata=(("authorization", "Key fake-unknown-key"),))
    assert unknown.status.code == KEY_INVALID
    assert unknown.status.description == "API key not found"
    missing = predict(auth_stub)
    assert missing.status.code == KEY_INVALID
    assert missing.status.description == "Invalid request: no authorization header"
    malformed = predict(auth_stub, metadata=(("authorization", f"Bearer {PAT}"),))
    assert malformed.status.code == KEY_INVALID
    assert PAT not in malformed.status.description
    # Denied calls are recorded and do not consume the script.
    assert len(auth_fake.calls_to("PostModelOutputs")) == 3
    with pytest.raises(grpc.RpcError):
        predict(auth_stub, metadata=AUTH)


def test_auth_accepts_key_and_session_token(
    auth_fake: FakeClarifai, auth_stub: service_pb2_grpc.V2Stub
) -> None:
    assert predict(auth_stub, metadata=AUTH).status.code == SUCCESS
    token = predict(auth_stub, metadata=(("x-clarifai-session-token", PAT),))
    assert token.status.code == SUCCESS
    unknown = predict(auth_stub, metadata=(("x-clarifai-session-token", "fake-bad-token"),))
    assert unknown.status.code == KEY_INVALID


def test_auth_missing_scopes_are_named(
    auth_fake: FakeClarifai, auth_stub: service_pb2_grpc.V2Stub
) -> None:
    narrow = (("authorization", f"Key {NARROW}"),)
    response = predict(auth_stub, metadata=narrow)
    assert response.status.code == INSUFFICIENT
    assert response.status.description == "Missing scopes: Apps_Get, Concepts_Get"
    assert NARROW not in response.status.description
    streamed = auth_stub.GenerateModelOutputs(
        service_pb2.PostModelOutputsRequest(), metadata=narrow, timeout=T
    )
    assert [message.status.code for message in streamed] == [INSUFFICIENT]


def test_my_scopes_lists_scopes_and_endpoints() -> None:
    secrets = {PAT: PREDICT_SCOPES, NARROW: ["Models_Get", "Predict"]}
    with FakeClarifai(secrets=secrets) as fake, grpc.insecure_channel(fake.target) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        response = stub.MyScopes(service_pb2.MyScopesRequest(), metadata=AUTH, timeout=T)
        narrow = stub.MyScopes(
            service_pb2.MyScopesRequest(), metadata=(("authorization", f"Key {NARROW}"),), timeout=T
        )
    assert response.status.code == SUCCESS
    assert list(response.scopes) == sorted(PREDICT_SCOPES)
    assert {"PostModelOutputs", "GenerateModelOutputs", "MyScopes"} <= set(response.endpoints)
    assert "PostInputs" not in response.endpoints
    assert list(narrow.scopes) == ["Models_Get", "Predict"]
    assert "PostModelOutputs" not in narrow.endpoints
    assert "MyScopes" in narrow.endpoints


def test_my_scopes_without_auth_grants_everything(
    clarifai_fake: FakeClarifai, stub: service_pb2_grpc.V2Stub
) -> None:
    response = stub.MyScopes(service_pb2.MyScopesRequest(), timeout=T)
    assert response.status.code == SUCCESS
    assert {"Predict", "Inputs_Add", "All"} <= set(response.scopes)
    assert "undef" not in response.scopes
    assert len(response.endpoints) == len(
        service_pb2.DESCRIPTOR.services_by_name["V2"].methods_by_name
    )


@pytest.mark.asyncio
async def test_async_with_and_aio_client() -> None:
    async with FakeClarifai() as fake:
        fake.script("PostModelOutputs", status_code_pb2.MODEL_LOADING)
        async with grpc.aio.insecure_channel(fake.target) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            first = await stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
            second = await stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
        assert [first.status.code, second.status.code] == [status_code_pb2.MODEL_LOADING, SUCCESS]
        assert isinstance(fake.calls[0], RecordedCall)


INVALID_REQUEST = status_code_pb2.CONN_INVALID_REQUEST


@pytest.fixture
def pat_fake() -> Iterator[FakeClarifai]:
    """`PAT` is a PAT (its calls must name a user); `NARROW` an API key with every scope."""
    with FakeClarifai(secrets={PAT: None, NARROW: None}, pats=[PAT]) as fake:
        yield fake


def test_a_pat_call_that_names_no_user_is_refused_as_clarifai_does(
    pat_fake: FakeClarifai,
) -> None:
    named = resources_pb2.UserAppIDSet(user_id="fake-user", app_id="fake-app")
    with grpc.insecure_channel(pat_fake.target) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        nobody = predict(stub, metadata=AUTH)
        app_only = stub.PostModelOutputs(
            service_pb2.PostModelOutputsRequest(user_app_id=resources_pb2.UserAppIDSet(app_id="a")),
            metadata=AUTH,
            timeout=T,
        )
        user = stub.PostModelOutputs(
            service_pb2.PostModelOutputsRequest(user_app_id=named), metadata=AUTH, timeout=T
        )
        key = predict(stub, metadata=(("authorization", f"Key {NARROW}"),))  # implies its app
        no_field = stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), metadata=AUTH)
        streamed = stub.GenerateModelOutputs(
            service_pb2.PostModelOutputsRequest(), metadata=AUTH, timeout=T
        )
        statuses = [message.status.code for message in streamed]
    assert nobody.status.code == INVALID_REQUEST
    assert "user_app_id" in nobody.status.description
    assert PAT not in nobody.status.description
    assert app_only.status.code == INVALID_REQUEST
    assert user.status.code == SUCCESS
    assert key.status.code == SUCCESS
    assert no_field.status.code == SUCCESS
    assert statuses == [INVALID_REQUEST]


def test_an_empty_client_stream_with_a_pat_is_served(pat_fake: FakeClarifai) -> None:
    with grpc.insecure_channel(pat_fake.target) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        answers = list(stub.StreamModelOutputs(iter(()), metadata=AUTH, timeout=T))
    assert [answer.status.code for answer in answers] == [SUCCESS] * 3
    (call,) = pat_fake.calls
    assert call.requests == ()


def test_pats_must_be_known_secrets_and_not_a_str() -> None:
    with pytest.raises(ValueError, match="pats") as failure:
        FakeClarifai(secrets={NARROW: None}, pats=[PAT])
    assert PAT not in str(failure.value)
    with pytest.raises(TypeError, match="pats"):
        FakeClarifai(secrets={PAT: None}, pats=PAT)
    with pytest.raises(ValueError, match="pats"):
        FakeClarifai(pats=[PAT])  # no secrets: no auth checking, so no PATs either


def test_a_second_fake_on_a_taken_port_fails_to_start_and_the_first_keeps_serving() -> None:
    """gRPC binds with SO_REUSEPORT: two fakes on one fixed port both started and split the
    calls. The second now fails with a clear error; the first serves every call."""
    with FakeClarifai() as first:
        port = int(first.target.rsplit(":", 1)[1])
        second = FakeClarifai(port=port)
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            second.start()
        with grpc.insecure_channel(first.target) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            for _ in range(6):
                stub.ListModels(service_pb2.ListModelsRequest(), timeout=10)
        assert len(first.calls_to("ListModels")) == 6
    with FakeClarifai(port=port):  # the port is free again: a restart on it binds
        pass
