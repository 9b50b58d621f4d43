"""Authenticated, correctly scoped and resilient gRPC calls to the Clarifai API."""

from __future__ import annotations

from clarifai_grpc.channel import clarifai_channel as _clarifai_channel

from ._calls import CallOutcome, call_outcome
from ._channel import insecure_channel, secure_channel, wrap_channel
from ._context import use_credentials, use_retry
from ._credentials import MAX_SECRET_LENGTH, Credentials, Secret
from ._grpc_channel import clarifai_channel
from ._interceptor import ClarifaiInterceptor
from ._limiter import DEFAULT_RATE_LIMIT, RateLimit, RateLimitedError
from ._methods import READ_PATTERNS, READ_RETRY, WRITE_RETRY
from ._retry import (
    DEFAULT_RETRYABLE_CODES,
    DEFAULT_RETRYABLE_STATUSES,
    DEFAULT_THROTTLE_STATUSES,
    NEVER_RETRIED_CODES,
    NEVER_RETRIED_STATUSES,
    NO_RETRY,
    RetryBudget,
    RetryPolicy,
)
from .exceptions import CredentialsProviderError, MissingCredentialsError, NoUserIdWarning

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RETRYABLE_CODES",
    "DEFAULT_RETRYABLE_STATUSES",
    "DEFAULT_THROTTLE_STATUSES",
    "MAX_SECRET_LENGTH",
    "NEVER_RETRIED_CODES",
    "NEVER_RETRIED_STATUSES",
    "NO_RETRY",
    "READ_PATTERNS",
    "READ_RETRY",
    "WRITE_RETRY",
    "CallOutcome",
    "ClarifaiInterceptor",
    "Credentials",
    "CredentialsProviderError",
    "MissingCredentialsError",
    "NoUserIdWarning",
    "RateLimit",
    "RateLimitedError",
    "RetryBudget",
    "RetryPolicy",
    "Secret",
    "__version__",
    "call_outcome",
    "clarifai_channel",
    "insecure_channel",
    "secure_channel",
    "use_credentials",
    "use_retry",
    "wrap_channel",
]

# V2Stub(channel) reads this module global, which only ClarifaiChannel's getters set: without
# it every stub on a channel of ours fails with "'NoneType' object is not callable".
if _clarifai_channel.wrap_response_deserializer is None:
    _clarifai_channel.wrap_response_deserializer = _clarifai_channel._response_deserializer_for_grpc  # noqa: SLF001
