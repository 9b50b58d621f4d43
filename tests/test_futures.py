"""`with_call` and `future()`: the call objects retried calls return (the whole grpc.Future /
grpc.Call surface), futures resolved after retries in the background, and done callbacks (when
they fire, in whose context they run)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import tenacity
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import FAST, Path, T
from helpers import (
    DEFAULT,
    PAT_HEADER,
    RETRY_ALL_IT_MAY,
    THROTTLED,
    UNAVAILABLE,
    credentials_sent,
    ids,
    output,
    predict_request,
    warm_up,
)

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    use_credentials,
    wrap_channel,
)
from clarifai_interceptor._calls import CancelledCall, Raised, RetryFuture
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, Reply

SLOW = RetryPolicy(initial_backoff=0.3, jitter=0, budget=None)


def test_retry_future_surface_after_a_retry(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", Fail(grpc.StatusCode.UNAVAILABLE, "first"))
    future = path.stub().PostModelOutputs.future(service_pb2.PostModelOutputsRequest(), timeout=T)
    assert isinstance(future, RetryFuture)
    seen: list[object] = []
    future.add_done_callback(seen.append)
    assert future.result(timeout=T).status.code == sc.SUCCESS
    assert future.exception(timeout=T) is None
    assert future.traceback(timeout=T) is None
    assert future.done()
    assert not future.running()
    assert not future.cancelled()
    assert not future.is_active()
    assert future.code() is grpc.StatusCode.OK
    assert future.cancel() is False  # already done
    assert seen == [future]
    late: list[object] = []
    future.add_done_callback(late.append)
    assert late == [future]  # at once, once done
    assert future.initial_metadata() is not None
    assert future.trailing_metadata() is not None
    assert future.details() in (None, "")


def test_retry_future_times_out_and_reports_time_remaining(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    future = path.stub(retry=SLOW).PostModelOutputs.future(
        service_pb2.PostModelOutputsRequest(), timeout=T
    )
    assert future.running()
    remaining = future.time_remaining()
    assert remaining is not None
    assert 0 < remaining <= T
    with pytest.raises(grpc.FutureTimeoutError):
        future.result(timeout=0.01)
    assert future.result(timeout=T).status.code == sc.SUCCESS
    assert len(fake.calls_to("PostModelOutputs")) == 2


def test_cancelled_retry_future_raises_cancelled_everywhere(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    future = path.stub(retry=SLOW).PostModelOutputs.future(
        service_pb2.PostModelOutputsRequest(), timeout=T
    )
    deadline = time.monotonic() + T
    while len(fake.calls_to("PostModelOutputs")) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.cancel() is True
    for method in (future.result, future.exception, future.traceback):
        with pytest.raises(grpc.FutureCancelledError):
            method(timeout=T)
    assert future.code() is grpc.StatusCode.CANCELLED
    assert future.details() == "Cancelled"
    time.sleep(0.5)  # past the 0.3 s wait: no second attempt may arrive
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_a_failing_done_callback_spares_the_others(
    path: Path, fake: FakeClarifai, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    future = path.stub(retry=SLOW).PostModelOutputs.future(
        service_pb2.PostModelOutputsRequest(), timeout=T
    )
    seen: list[object] = []

    def broken(_: object) -> None:
        raise RuntimeError("callback bug")

    future.add_done_callback(broken)
    future.add_done_callback(seen.append)
    future.result(timeout=T)
    deadline = time.monotonic() + T  # callbacks run just after the result is set
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [future]
    assert any("done callback raised" in r.getMessage() for r in caplog.records)


def test_stream_cancelled_before_reading_ends_cancelled(path: Path, fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", grpc.StatusCode.UNAVAILABLE)
    stream = path.stub(retry=RetryPolicy(initial_backoff=5, jitter=0)).GenerateModelOutputs(
        service_pb2.PostModelOutputsRequest(), timeout=T
    )
    assert stream.cancel() is True  # before the first read: nothing committed yet
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() is grpc.StatusCode.CANCELLED


def test_cancelled_call_is_a_finished_call() -> None:
    call = CancelledCall()
    assert call.code() is grpc.StatusCode.CANCELLED
    assert "waiting to retry" in call.details()
    assert call.initial_metadata() == call.trailing_metadata() == ()
    assert not call.is_active()
    assert call.time_remaining() is None
    assert call.cancel() is False
    assert call.add_callback(lambda: None) is False
    seen: list[object] = []
    call.add_done_callback(seen.append)
    assert seen == [call]
    with pytest.raises(grpc.RpcError):
        next(call)
    assert "CANCELLED" in str(call)
    assert call.debug_error_string() == (
        "CANCELLED:Cancelled by the caller while waiting to retry "
        "(ended by clarifai_interceptor: CancelledCall)"
    )


def test_stream_time_remaining_and_activity(path: Path, fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", Delay(0.2, grpc.StatusCode.UNAVAILABLE))
    stream = path.stub(retry=FAST).GenerateModelOutputs(
        service_pb2.PostModelOutputsRequest(), timeout=T
    )
    assert stream.is_active()
    remaining = stream.time_remaining()
    assert remaining is not None
    assert 0 < remaining <= T
    assert len(list(stream)) == 3
    assert stream.code() is grpc.StatusCode.OK


def test_raised_is_a_finished_future_that_raises_its_error() -> None:
    error = ValueError("invalid metadata key 'X'")
    call = Raised(error)
    with pytest.raises(ValueError, match="invalid metadata") as info:
        call.result(timeout=T)
    assert info.value is error
    assert call.exception(timeout=T) is error
    assert call.traceback() is error.__traceback__
    assert call.done()
    assert not call.running()
    assert not call.cancelled()
    assert call.cancel() is False
    seen: list[object] = []
    call.add_done_callback(seen.append)
    assert seen == [call]
    assert not call.is_active()
    assert call.time_remaining() is None
    assert call.add_callback(lambda: None) is False
    assert call.code() is grpc.StatusCode.UNKNOWN
    assert call.details() == "not sent: ValueError"
    # The error's type, never its message (which may quote what the caller passed).
    assert call.debug_error_string() == (
        "UNKNOWN:not sent: ValueError (ended by clarifai_interceptor: ValueError)"
    )
    assert Raised(CancelledCall()).debug_error_string() == CancelledCall().debug_error_string()
    assert call.initial_metadata() == call.trailing_metadata() == ()


# -- helpers of the tests below --------------------------------------------------------------
TENANT_A = Credentials.from_api_key("fake-tenant-a-key-for-tests")

TENANT_B = Credentials.from_api_key("fake-tenant-b-key-for-tests")


def channels(fake: FakeClarifai, retry: RetryPolicy) -> Iterator[tuple[str, grpc.Channel]]:
    raw = grpc.insecure_channel(fake.target)
    yield "interceptor", grpc.intercept_channel(raw, ClarifaiInterceptor(DEFAULT, retry=retry))
    raw.close()
    raw = grpc.insecure_channel(fake.target)
    yield "wrapper", wrap_channel(raw, DEFAULT, retry=retry)
    raw.close()


def _secret(call: Any) -> str:
    return str(call.header("authorization"))


def _client_threads() -> int:
    """Threads alive, less the fake server's own pool (it grows with concurrent calls)."""
    return sum(not t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())


# -- with_call and future() ------------------------------------------------------------------


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


def test_a_retried_future_and_stream_give_the_last_attempts_debug_error_string(
    path: Path, fake: FakeClarifai
) -> None:
    # As gRPC's own future and stream do: CODE:details of the error they ended with.
    retry = dataclasses.replace(FAST, max_attempts=2)
    fake.script("PostModelOutputs", *[Fail(UNAVAILABLE, f"attempt {n}") for n in (1, 2)])
    # (gRPC's own shape differs by release: CODE:details on 1.85, JSON-like on 1.60.)
    future = path.stub(retry=retry).PostModelOutputs.future(predict_request(), timeout=T)
    error = future.exception(timeout=T)
    assert error is not None
    assert future.debug_error_string() == error.debug_error_string()
    assert "attempt 2" in future.debug_error_string()
    fake.script("GenerateModelOutputs", *[Fail(UNAVAILABLE, f"stream {n}") for n in (1, 2)])
    stream = path.stub(retry=retry).GenerateModelOutputs(predict_request(), timeout=T)
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert stream.debug_error_string() == raised.value.debug_error_string()
    assert "stream 2" in stream.debug_error_string()


def test_future_passes_scope_errors_through(path: Path, fake: FakeClarifai) -> None:
    fake.script("PostModelOutputs", grpc.StatusCode.PERMISSION_DENIED, Reply(output("never")))
    future = path.stub(retry=RETRY_ALL_IT_MAY).PostModelOutputs.future(predict_request(), timeout=T)
    assert future.exception(timeout=T).code() is grpc.StatusCode.PERMISSION_DENIED
    assert len(fake.calls_to("PostModelOutputs")) == 1


def test_a_thousand_futures_waiting_to_retry_hold_a_constant_number_of_threads(
    fake: FakeClarifai,
) -> None:
    policy = RetryPolicy(initial_backoff=30, jitter=0, budget=None)
    fake.set_default("ListModels", Fail(UNAVAILABLE, "down"))
    for name, channel in channels(fake, policy):
        stub = service_pb2_grpc.V2Stub(channel)
        stub.ListApps(service_pb2.ListAppsRequest(), timeout=T)  # gRPC's own threads start
        before = _client_threads()
        futures = [
            stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=60) for _ in range(1000)
        ]
        deadline = time.monotonic() + T
        while len(fake.calls_to("ListModels")) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # every first attempt has failed: all 1,000 wait to retry
        alive = _client_threads()
        assert alive - before <= 2, (name, before, alive)  # the scheduler's one thread
        assert not any(future.done() for future in futures)
        for future in futures:
            future.cancel()
        assert all(future.cancelled() for future in futures)
        fake.clear()


# -- done callbacks --------------------------------------------------------------------------


def test_add_callback_fires_when_the_call_ends_not_at_its_first_attempt(
    fake: FakeClarifai,
) -> None:
    for name, channel in channels(fake, RetryPolicy(initial_backoff=0.3, jitter=0)):
        fake.clear()
        fake.script("ListModels", Fail(UNAVAILABLE, "blip"))
        fired = threading.Event()
        future = service_pb2_grpc.V2Stub(channel).ListModels.future(
            service_pb2.ListModelsRequest(), timeout=T
        )
        assert future.add_callback(fired.set)
        time.sleep(0.15)  # the first attempt has failed; the retry waits 0.3 s
        assert len(fake.calls_to("ListModels")) == 1
        assert not fired.is_set(), name
        future.result(timeout=T)
        assert fired.wait(T), name
        assert future.add_callback(lambda: None) is False  # ended already, as gRPC says


@pytest.mark.parametrize(
    "retry",
    [RetryPolicy(initial_backoff=0, jitter=0), RetryPolicy(max_attempts=1)],
    ids=["retrying", "single-attempt"],
)
def test_a_done_callback_runs_in_the_context_of_the_code_that_added_it(
    fake: FakeClarifai, retry: RetryPolicy
) -> None:
    # gRPC's channel thread copies the context of the call that started it (tenant A's); a
    # done callback of tenant B's future must still call as B.
    for name, channel in channels(fake, retry):
        fake.clear()
        fake.script("GetModel", Delay(0.3, Reply(service_pb2.SingleModelResponse())))
        stub = service_pb2_grpc.V2Stub(channel)
        started = threading.Event()
        chained: list[Any] = []

        def tenant_a(stub: Any = stub, started: threading.Event = started) -> None:
            with use_credentials(TENANT_A):
                future = stub.GetModel.future(service_pb2.GetModelRequest(), timeout=T)
                started.set()
                future.result(timeout=T)

        def tenant_b(
            stub: Any = stub, started: threading.Event = started, chained: list[Any] = chained
        ) -> None:
            started.wait(T)
            with use_credentials(TENANT_B):
                future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)

                def chain(_done: Any, stub: Any = stub, chained: list[Any] = chained) -> None:
                    chained.append(stub.ListApps(service_pb2.ListAppsRequest(), timeout=T))

                future.add_done_callback(chain)
                future.result(timeout=T)

        threads = [threading.Thread(target=tenant_a), threading.Thread(target=tenant_b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(T)
        deadline = time.monotonic() + T
        while not chained and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chained, name
        [call] = fake.calls_to("ListApps")
        assert _secret(call) == f"Key {TENANT_B.secret.reveal()}", name
