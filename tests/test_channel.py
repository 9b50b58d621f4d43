"""Channel builders and the wrapper's plumbing: targets, options, delegation, bad input."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import PAT, PAT_CREDS, T

from clarifai_interceptor import insecure_channel, wrap_channel
from clarifai_interceptor._channel import CHANNEL_OPTIONS, channel_options, resolve_target
from clarifai_interceptor.testing import FakeClarifai


def test_resolve_target_defaults_and_ports() -> None:
    assert resolve_target(None, {}) == "api.clarifai.com:443"
    assert resolve_target(None, {"CLARIFAI_GRPC_BASE": "eu.example.test"}) == "eu.example.test:443"
    assert resolve_target(None, {"CLARIFAI_GRPC_BASE": ""}) == "api.clarifai.com:443"
    assert resolve_target("localhost:50051", {}) == "localhost:50051"
    assert resolve_target("[::1]", {}) == "[::1]:443"
    assert resolve_target("[::1]:8080", {}) == "[::1]:8080"
    for bad in ("https://api.clarifai.com", "a b", "", "host/path"):
        with pytest.raises(ValueError, match="HOST or HOST:PORT"):
            resolve_target(bad, {})


def test_channel_options_turn_grpc_retries_off_unless_the_caller_says() -> None:
    assert ("grpc.enable_retries", 0) in channel_options(())
    merged = dict(channel_options([("grpc.enable_retries", 1), ("grpc.primary_user_agent", "x")]))
    assert merged["grpc.enable_retries"] == 1
    assert merged["grpc.primary_user_agent"] == "x"
    assert len(merged) == len(CHANNEL_OPTIONS) + 1


def test_wrap_channel_refuses_what_is_not_a_sync_channel() -> None:
    with pytest.raises(TypeError, match="not str"):
        wrap_channel("localhost:1", PAT_CREDS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="credentials must be"):
        wrap_channel(grpc.insecure_channel("localhost:1"), PAT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry must be"):
        wrap_channel(grpc.insecure_channel("localhost:1"), PAT_CREDS, retry=3)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_wrap_channel_refuses_an_aio_channel() -> None:
    async with grpc.aio.insecure_channel("localhost:1") as channel:
        with pytest.raises(TypeError, match=r"clarifai_interceptor\.aio"):
            wrap_channel(channel, PAT_CREDS)


def test_insecure_channel_needs_a_target() -> None:
    with pytest.raises(ValueError, match="needs a target"):
        insecure_channel(None, PAT_CREDS)  # type: ignore[arg-type]


def test_call_options_pass_through_positionally_and_by_keyword(fake: FakeClarifai) -> None:
    with insecure_channel(fake.target, PAT_CREDS) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        request = service_pb2.ListModelsRequest()
        by_keyword = stub.ListModels(request, timeout=T, wait_for_ready=True)
        positional = stub.ListModels(request, T, None, None, True, None)
        response, call = stub.ListModels.with_call(request, timeout=T, wait_for_ready=True)
    assert by_keyword.status.code == positional.status.code == response.status.code == 10000
    assert call.code() is grpc.StatusCode.OK
    assert len(fake.calls_to("ListModels")) == 3


def test_subscribe_and_unsubscribe_reach_the_wrapped_channel(fake: FakeClarifai) -> None:
    seen: list[grpc.ChannelConnectivity] = []
    threads_before = set(threading.enumerate())
    with insecure_channel(fake.target, PAT_CREDS) as channel:
        channel.subscribe(seen.append, try_to_connect=True)
        grpc.channel_ready_future(channel).result(timeout=T)
        channel.unsubscribe(seen.append)
        # gRPC's connectivity poller raises in its thread if the channel closes while it
        # runs (grpc/grpc#18995); it stops within 0.2 s of the last unsubscribe.
        deadline = time.monotonic() + T
        while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not set(threading.enumerate()) - threads_before, "gRPC's poller did not stop"
    assert grpc.ChannelConnectivity.READY in seen
    assert "clarifai_interceptor channel" in repr(channel)
