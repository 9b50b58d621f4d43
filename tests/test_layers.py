"""One layer of ours per call: stacked layers pass calls through to the outermost, and gRPC
call credentials passed with a call replace ours (one ``authorization`` header, theirs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import trustme
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import T, localhost

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    secure_channel,
    wrap_channel,
)
from clarifai_interceptor.testing import FakeClarifai

OUTER = Credentials.from_api_key("fake-outer-layer-key")
INNER = Credentials.from_api_key("fake-inner-layer-key")
AT_ONCE = RetryPolicy(initial_backoff=0, jitter=0, budget=None)  # 5 attempts, no waits
INNER_AT_ONCE = RetryPolicy(max_attempts=3, initial_backoff=0, jitter=0, budget=None)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

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
