"""Authenticated, correctly scoped and resilient gRPC calls to the Clarifai API.

Every call made through this package carries Clarifai's ``authorization`` header; a PAT's
``user_app_id`` is filled in where the request leaves it empty; transient failures (gRPC
``UNAVAILABLE``, Clarifai body statuses such as ``CONN_THROTTLED`` or ``MODEL_LOADING``) are
retried through tenacity, and scope or auth errors never are. Sync and ``grpc.aio``, all four
call kinds. Callers get gRPC's own errors and responses, never a wrapper.

Main entry points:

* `secure_channel` / `insecure_channel`: a channel to Clarifai (or a local server) with all of
  the above built in, the cheapest path; `wrap_channel` does the same for a channel you built.
* `ClarifaiInterceptor`: the same behaviour as an interceptor for ``grpc.intercept_channel``.
* ``clarifai_interceptor.aio``: the ``grpc.aio`` channels and interceptors.
* `Credentials` (``from_pat``, ``from_api_key``, ``from_session_token``, ``from_env``),
  `RetryPolicy`, `RetryBudget` and `RateLimit`: frozen configuration objects.
* `use_credentials` / `use_retry`: overrides for one block of code (threads and asyncio tasks
  stay apart).
* ``clarifai_interceptor.testing.FakeClarifai``: a real gRPC server faking Clarifai's V2
  service, for your tests (the ``clarifai_fake`` pytest fixture serves one).

Status codes in the constants (`DEFAULT_RETRYABLE_STATUSES`, `NEVER_RETRIED_STATUSES`) are
Clarifai's ``status_code_pb2`` values: ``status_code_pb2.StatusCode.Name(code)`` names one.
The README (the package's long description) has the quick starts and the defaults; the guide,
the measurements, the known limits and the API reference (built from these docstrings) are in
``docs/`` (in the source distribution; ``mkdocs build -f docs/mkdocs.yml``).

Example:
    A channel with a PAT; ``credentials=None`` reads ``CLARIFAI_PAT`` and friends instead::

        from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
        import clarifai_interceptor as ci

        creds = ci.Credentials.from_pat("YOUR_PAT", user_id="me", app_id="my-app")
        with ci.secure_channel(credentials=creds) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            response = stub.ListModels(service_pb2.ListModelsRequest(per_page=1))
            print(response.status.code)  # 10000 (SUCCESS), or the error Clarifai gave
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Importing the package loads neither gRPC nor clarifai_grpc (its pytest plugin is loaded by
# every pytest run of an environment that has it): the names below load on first use.
if TYPE_CHECKING:
    from ._calls import CallOutcome, call_outcome
    from ._channel import insecure_channel, secure_channel, wrap_channel
    from ._context import use_credentials, use_retry
    from ._credentials import MAX_SECRET_LENGTH, Credentials, Secret
    from ._grpc_channel import clarifai_channel
    from ._interceptor import ClarifaiInterceptor
    from ._methods import READ_PATTERNS, READ_RETRY, WRITE_RETRY
    from ._policy import (
        DEFAULT_RETRYABLE_CODES,
        DEFAULT_RETRYABLE_STATUSES,
        DEFAULT_THROTTLE_STATUSES,
        NEVER_RETRIED_CODES,
        NEVER_RETRIED_STATUSES,
        NO_RETRY,
        RetryBudget,
        RetryPolicy,
    )
    from ._ratelimit import DEFAULT_RATE_LIMIT, RateLimit
    from .exceptions import (
        CredentialsProviderError,
        MissingCredentialsError,
        NoUserIdWarning,
        QuotaExceededError,
        RateLimitedError,
    )

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
    "QuotaExceededError",
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

#: Where each exported name lives (the imports above, for type checkers).
_HOMES = {
    "._calls": ("CallOutcome", "call_outcome"),
    "._channel": ("insecure_channel", "secure_channel", "wrap_channel"),
    "._context": ("use_credentials", "use_retry"),
    "._credentials": ("MAX_SECRET_LENGTH", "Credentials", "Secret"),
    "._grpc_channel": ("clarifai_channel",),
    "._interceptor": ("ClarifaiInterceptor",),
    "._methods": ("READ_PATTERNS", "READ_RETRY", "WRITE_RETRY"),
    "._policy": (
        "DEFAULT_RETRYABLE_CODES",
        "DEFAULT_RETRYABLE_STATUSES",
        "DEFAULT_THROTTLE_STATUSES",
        "NEVER_RETRIED_CODES",
        "NEVER_RETRIED_STATUSES",
        "NO_RETRY",
        "RetryBudget",
        "RetryPolicy",
    ),
    "._ratelimit": ("DEFAULT_RATE_LIMIT", "RateLimit"),
    ".exceptions": (
        "CredentialsProviderError",
        "MissingCredentialsError",
        "NoUserIdWarning",
        "QuotaExceededError",
        "RateLimitedError",
    ),
}


def _load() -> None:
    """Bind every exported name (it imports gRPC and clarifai_grpc)."""
    for home, names in _HOMES.items():
        module = importlib.import_module(home, __name__)
        globals().update({name: getattr(module, name) for name in names})


def __getattr__(name: str) -> Any:
    if name in __all__:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
