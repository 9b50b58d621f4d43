"""What a hostile review broke, each against a real server: callbacks that ran in another
tenant's context, retries sent after Ctrl-C, add_callback firing at the first attempt, a thread
per pending retry, a pushback that parks an aio call.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import T

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RateLimit,
    RetryPolicy,
    use_credentials,
    wrap_channel,
)
from clarifai_interceptor._closing import CLOSED_DETAILS
from clarifai_interceptor.instrumentation import set_on_retry_hooks
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, Reply

TENANT_A = Credentials.from_api_key("fake-tenant-a-key-for-tests")
TENANT_B = Credentials.from_api_key("fake-tenant-b-key-for-tests")
DEFAULT = Credentials.from_api_key("fake-default-key-for-tests")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def channels(fake: FakeClarifai, retry: RetryPolicy) -> Iterator[tuple[str, grpc.Channel]]:
    raw = grpc.insecure_channel(fake.target)
    yield "interceptor", grpc.intercept_channel(raw, ClarifaiInterceptor(DEFAULT, retry=retry))
    raw.close()
    raw = grpc.insecure_channel(fake.target)
    yield "wrapper", wrap_channel(raw, DEFAULT, retry=retry)
    raw.close()


def _secret(call: Any) -> str:
    return str(call.header("authorization"))


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


def test_nothing_is_sent_after_ctrl_c_on_a_blocking_interceptor_call(fake: FakeClarifai) -> None:
    assert threading.current_thread() is threading.main_thread()
    policy = RetryPolicy(initial_backoff=0.6, jitter=0)
    raw = grpc.insecure_channel(fake.target)
    stub = service_pb2_grpc.V2Stub(
        grpc.intercept_channel(raw, ClarifaiInterceptor(DEFAULT, retry=policy))
    )
    fake.set_default("ListModels", Fail(UNAVAILABLE, "down"))
    interrupter = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
        time.sleep(1.0)  # past the 0.6 s the next attempt would have waited
        assert len(fake.calls_to("ListModels")) == 1
    finally:
        interrupter.cancel()
        raw.close()


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


def _client_threads() -> int:
    """Threads alive, less the fake server's own pool (it grows with concurrent calls)."""
    return sum(not t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())


@pytest.mark.asyncio
async def test_a_huge_pushback_never_parks_an_aio_call(fake: FakeClarifai) -> None:
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.2, jitter=0)
    pushback = (("grpc-retry-pushback-ms", "9223372036854775807"),)
    fake.set_default("ListModels", Fail(UNAVAILABLE, "", pushback))
    async with cia.insecure_channel(fake.target, DEFAULT, retry=policy) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            await service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest())
    assert time.monotonic() - started < 5  # four waits of max_backoff at most
    assert len(fake.calls_to("ListModels")) == policy.max_attempts


# -- 5. A retry resends what the first attempt sent --------------------------------------------

PAT_A = Credentials.from_pat("fake-pat-resend-for-tests", user_id="u", app_id="a")
RESENDING = RetryPolicy(initial_backoff=0, jitter=0)  # every method retried, at once


def resend_channels(fake: FakeClarifai) -> Iterator[tuple[str, grpc.Channel]]:
    for name, credentials in (("pat", PAT_A), ("api-key", DEFAULT)):
        raw = grpc.insecure_channel(fake.target)
        interceptor = ClarifaiInterceptor(credentials, retry=RESENDING)
        yield f"interceptor-{name}", grpc.intercept_channel(raw, interceptor)
        raw.close()
        raw = grpc.insecure_channel(fake.target)
        yield f"wrapper-{name}", wrap_channel(raw, credentials, retry=RESENDING)
        raw.close()


def _ids(fake: FakeClarifai, method: str) -> list[str]:
    return [call.request.inputs[0].id for call in fake.calls_to(method)]


def test_a_retry_after_future_resends_the_original_message(fake: FakeClarifai) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        fake.script("PostInputs", Delay(0.2, Fail(UNAVAILABLE)))  # the caller moves on meanwhile
        request = service_pb2.PostInputsRequest()
        request.inputs.add(id="original")
        future = service_pb2_grpc.V2Stub(channel).PostInputs.future(request, timeout=T)
        request.inputs[0].id = "mutated-after-future"  # the caller reuses its message
        future.result(timeout=T)
        seen[name] = _ids(fake, "PostInputs")
    assert seen == {name: ["original", "original"] for name in seen}
    assert len(seen) == 4


def test_a_retried_response_stream_resends_the_message_it_was_called_with(
    fake: FakeClarifai,
) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        fake.script("GenerateModelOutputs", Fail(UNAVAILABLE))  # before the first message
        request = service_pb2.PostModelOutputsRequest(model_id="m")
        request.inputs.add(id="original")
        stream = service_pb2_grpc.V2Stub(channel).GenerateModelOutputs(request, timeout=T)
        request.inputs[0].id = "mutated-before-reading"
        assert len(list(stream)) == 3
        seen[name] = _ids(fake, "GenerateModelOutputs")
    assert seen == {name: ["original", "original"] for name in seen}
    assert len(seen) == 4


def test_a_retried_request_list_resends_what_was_first_sent(fake: FakeClarifai) -> None:
    seen = {}
    for name, channel in resend_channels(fake):
        fake.clear()
        one = service_pb2.MultiOutputResponse()
        fake.script("StreamModelOutputs", Delay(0.3, Fail(UNAVAILABLE)), Reply(one))
        requests = [service_pb2.PostModelOutputsRequest(model_id="m") for _ in range(2)]
        for number, request in enumerate(requests):
            request.inputs.add(id=f"original-{number}")
        stream_unary = channel.stream_unary(  # V2 has no stream-unary method: its bidi one
            "/clarifai.api.V2/StreamModelOutputs",
            request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
            response_deserializer=service_pb2.MultiOutputResponse.FromString,
        )
        future = stream_unary.future(requests, timeout=T)
        deadline = time.monotonic() + T
        while not fake.calls_to("StreamModelOutputs") and time.monotonic() < deadline:
            time.sleep(0.005)  # the first attempt has sent every message (the fake read them)
        for request in requests:
            request.inputs[0].id = "mutated-after-sending"
        future.result(timeout=T)
        seen[name] = [
            [request.inputs[0].id for request in call.requests]
            for call in fake.calls_to("StreamModelOutputs")
        ]
    assert seen == {name: [["original-0", "original-1"]] * 2 for name in seen}
    assert len(seen) == 4


# -- 10. Closing a channel ends every pending retry wait at once -------------------------------

LONG_WAIT = RetryPolicy(initial_backoff=30, jitter=0, budget=None)  # a wait no test sits out


class Waiting:
    """An on-retry hook that counts the calls now waiting to retry."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0

    def __call__(self, _details: Any) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def until(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count >= count, T), self.count


@pytest.fixture
def waiting() -> Iterator[Waiting]:
    hook = Waiting()
    set_on_retry_hooks([hook])
    yield hook
    set_on_retry_hooks(None)


def _ended_by_close(error: BaseException | None) -> bool:
    return (
        isinstance(error, grpc.RpcError)
        and error.code() is grpc.StatusCode.CANCELLED
        and error.details() == CLOSED_DETAILS
    )


@pytest.mark.parametrize("front", ["wrapper", "interceptor"])
def test_closing_the_channel_ends_every_pending_retry_wait_at_once(
    fake: FakeClarifai, waiting: Waiting, front: str
) -> None:
    fake.set_default("ListModels", UNAVAILABLE)
    fake.set_default("GenerateModelOutputs", UNAVAILABLE)
    raw = grpc.insecure_channel(fake.target)
    if front == "wrapper":
        channel = wrap_channel(raw, DEFAULT, retry=LONG_WAIT)
        close = channel.close
    else:  # gRPC tells an interceptor nothing of the close: it is told, with its own close()
        interceptor = ClarifaiInterceptor(DEFAULT, retry=LONG_WAIT)
        channel = grpc.intercept_channel(raw, interceptor)

        def close() -> None:
            interceptor.close()
            channel.close()

    stub = service_pb2_grpc.V2Stub(channel)
    futures = [
        stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=120) for _ in range(20)
    ]
    errors: list[BaseException | None] = []

    def blocking() -> None:
        try:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=120)
        except grpc.RpcError as exc:
            errors.append(exc)

    def streaming() -> None:
        try:
            list(stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=120))
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocking) for _ in range(3)]
    threads += [threading.Thread(target=streaming) for _ in range(3)]
    for thread in threads:
        thread.start()
    waiting.until(26)  # every call has failed once and waits 30 s to retry
    closed_at = time.monotonic()
    close()
    for thread in threads:
        thread.join(T)
    assert all(future.done() for future in futures)
    took = time.monotonic() - closed_at
    assert took < T  # not the 30 s wait
    errors += [future.exception() for future in futures]
    assert len(errors) == 26
    assert all(map(_ended_by_close, errors)), {str(e) for e in errors}
    assert len(fake.calls_to("ListModels")) == 23  # nothing more was sent
    assert len(fake.calls_to("GenerateModelOutputs")) == 3


def test_a_call_on_a_closed_channel_gets_grpcs_own_error(fake: FakeClarifai) -> None:
    channel = wrap_channel(grpc.insecure_channel(fake.target), DEFAULT, retry=LONG_WAIT)
    channel.close()
    with pytest.raises(ValueError, match="closed channel"):
        service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)


def test_closing_the_channel_ends_a_wait_for_a_rate_limit_permit(fake: FakeClarifai) -> None:
    slow = RateLimit(per_second=0.1)  # a permit every 10 s
    channel = wrap_channel(grpc.insecure_channel(fake.target), DEFAULT, rate_limit=slow)
    stub = service_pb2_grpc.V2Stub(channel)
    stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)  # the one permit at hand
    errors: list[BaseException] = []

    def paced() -> None:
        try:
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=120)
        except grpc.RpcError as exc:
            errors.append(exc)

    caller = threading.Thread(target=paced)
    caller.start()
    time.sleep(0.1)  # waiting for its permit now (or about to: a closed channel waits not at all)
    channel.close()
    caller.join(T)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert _ended_by_close(errors[0])
    assert len(fake.calls_to("ListModels")) == 1
