"""Channel builders and the wrapper's plumbing: targets, options, delegation, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from conftest import FAST, KEY_CREDS, PAT, PAT_CREDS, T
from helpers import PAT_HEADER, SUCCESS, UAI, credentials_sent, predict_request

from clarifai_interceptor import (
    NO_RETRY,
    RateLimit,
    RateLimitedError,
    aio,
    insecure_channel,
    wrap_channel,
)
from clarifai_interceptor._channel import CHANNEL_OPTIONS, channel_options, resolve_target
from clarifai_interceptor._credentials import ENV_VARS
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


# -- whose rate limit a wrapped channel shares ------------------------------------------------

#: A fixed rate that fails fast: any call the bucket has no permit for raises at once, so a
#: bucket shared with another channel shows as an error, without timing anything.
ONE_PERMIT = RateLimit(per_second=1, max_wait=0)


def list_models(channel: grpc.Channel) -> Any:
    return service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)


def test_wrapped_channels_without_a_target_never_share_a_rate_limit() -> None:
    with FakeClarifai() as one, FakeClarifai() as two:
        raw = [grpc.insecure_channel(one.target), grpc.insecure_channel(two.target)]
        first, second = (
            wrap_channel(channel, PAT_CREDS, retry=NO_RETRY, rate_limit=ONE_PERMIT)
            for channel in raw
        )
        with first, second:
            assert list_models(first).status.code == SUCCESS
            with pytest.raises(RateLimitedError):
                list_models(first)  # its own permit is spent
            # Another server, the same PAT: not paced by the first server's calls.
            assert list_models(second).status.code == SUCCESS
            # Nor is a second wrapped channel to the same server: its target is unknown too.
            third = wrap_channel(
                grpc.insecure_channel(one.target), PAT_CREDS, rate_limit=ONE_PERMIT
            )
            with third:
                assert list_models(third).status.code == SUCCESS
        assert (len(one.calls), len(two.calls)) == (2, 1)


def test_wrapped_channels_given_their_target_share_its_rate_limit() -> None:
    with FakeClarifai() as one, FakeClarifai() as two:
        given = [
            wrap_channel(
                grpc.insecure_channel(fake.target),
                PAT_CREDS,
                target=fake.target,
                retry=NO_RETRY,
                rate_limit=ONE_PERMIT,
            )
            for fake in (one, two)
        ]
        built = insecure_channel(one.target, PAT_CREDS, retry=NO_RETRY, rate_limit=ONE_PERMIT)
        with given[0], given[1], built:
            assert list_models(given[0]).status.code == SUCCESS
            with pytest.raises(RateLimitedError):
                list_models(built)  # one server, one PAT: one limit, however built
            assert list_models(given[1]).status.code == SUCCESS  # another server: its own
        assert (len(one.calls), len(two.calls)) == (1, 1)


def test_wrap_channel_checks_the_target_it_is_given() -> None:
    raw = grpc.insecure_channel("localhost:1")
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        wrap_channel(raw, PAT_CREDS, target="https://api.clarifai.com")
    raw.close()


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


# -- helpers of the tests below --------------------------------------------------------------
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

AIO_FRESH_SCRIPT = """
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


# -- channel builders end to end -------------------------------------------------------------


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


@pytest.mark.parametrize("how", ["insecure_channel", "interceptors"])
def test_v2stub_works_in_a_fresh_interpreter_on_aio(fake: FakeClarifai, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARIFAI_")}
    done = subprocess.run(
        [sys.executable, "-c", AIO_FRESH_SCRIPT, fake.target, how],
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
