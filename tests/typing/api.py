"""Type-checked only (mypy strict): the public API as a user would call it."""

from __future__ import annotations

import dataclasses

import grpc

import clarifai_interceptor as ci
from clarifai_interceptor import aio, exceptions

creds: ci.Credentials = ci.Credentials.from_pat("fake-pat", user_id="u", app_id="a")
key: ci.Credentials = ci.Credentials.from_api_key("fake-key")
token: ci.Credentials = ci.Credentials.from_session_token("fake-token", user_id="u")
env: ci.Credentials = ci.Credentials.from_env({"CLARIFAI_PAT": "fake-pat"})
pairs: tuple[tuple[str, str], ...] = creds.metadata

policy: ci.RetryPolicy = dataclasses.replace(ci.RetryPolicy(), max_attempts=3, jitter=0.0)
budget: ci.RetryBudget | None = policy.budget
single: ci.RetryPolicy = ci.NO_RETRY

interceptor = ci.ClarifaiInterceptor(creds, retry=policy)
rotating = ci.ClarifaiInterceptor(lambda: creds, retry=None)
channel: grpc.Channel = ci.wrap_channel(grpc.insecure_channel("localhost:1"), creds)
named: grpc.Channel = ci.wrap_channel(grpc.insecure_channel("h:1"), creds, target="h:1")
local: grpc.Channel = ci.insecure_channel("localhost:1", creds, retry=policy, options=())
remote: grpc.Channel = ci.secure_channel(credentials=creds, root_certificates=None)

with ci.use_credentials(key), ci.use_retry(None):
    pass

error: type[ValueError] = exceptions.MissingCredentialsError
provider_error: type[Exception] = ci.CredentialsProviderError


async def aio_api() -> None:
    """The aio front end, as a user would call it."""
    chain: list[grpc.aio.ClientInterceptor] = aio.interceptors(creds, retry=policy)
    alone = aio.UnaryUnaryInterceptor(creds, retry=None)
    async with aio.insecure_channel("localhost:1", creds, retry=policy) as aio_channel:
        assert aio_channel is not None
    tls: grpc.aio.Channel = aio.secure_channel(credentials=lambda: creds, options=())
    assert chain
    assert alone
    assert tls
