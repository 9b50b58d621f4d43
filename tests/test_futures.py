"""The call objects retried calls return: the whole grpc.Future / grpc.Call surface."""

from __future__ import annotations

import time

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import FAST, Path, T

from clarifai_interceptor import RetryPolicy
from clarifai_interceptor._calls import CancelledCall, Raised, RetryFuture
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai

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
    assert call.initial_metadata() == call.trailing_metadata() == ()
