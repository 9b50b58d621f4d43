"""Per-block overrides, carried in contextvars so threads and asyncio tasks stay apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._credentials import Credentials
from ._retry import NO_RETRY, RetryPolicy

__all__ = [
    "CREDENTIALS",
    "RETRY",
    "CredentialsSource",
    "check_source",
    "use_credentials",
    "use_retry",
]

#: A fixed `Credentials`, or a zero-argument provider consulted on every call (rotation).
CredentialsSource = Credentials | Callable[[], Credentials]

CREDENTIALS: ContextVar[CredentialsSource | None] = ContextVar(
    "clarifai_interceptor.credentials", default=None
)
RETRY: ContextVar[RetryPolicy | None] = ContextVar("clarifai_interceptor.retry", default=None)


def check_source(credentials: object) -> None:
    if not (isinstance(credentials, Credentials) or callable(credentials)):
        raise TypeError(
            "credentials must be a Credentials or a zero-argument callable returning one, "
            f"not {type(credentials).__name__}"
        )


@contextmanager
def use_credentials(credentials: CredentialsSource) -> Iterator[None]:
    """Use these credentials for the calls made inside the block, on every channel of ours.

    They override the interceptor's or channel's default; a credential header passed on the call
    itself still wins. Nestable; the previous value comes back on exit. Each thread and asyncio
    task sees only its own override (contextvars).

    Args:
        credentials: A `Credentials`, or a zero-argument callable returning one.

    Raises:
        TypeError: ``credentials`` is neither.
    """
    check_source(credentials)
    token = CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        CREDENTIALS.reset(token)


@contextmanager
def use_retry(policy: RetryPolicy | None) -> Iterator[None]:
    """Use this retry policy for the calls made inside the block (None: no retries).

    Raises:
        TypeError: ``policy`` is not a `RetryPolicy` or None.
    """
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a RetryPolicy or None, not {type(policy).__name__}")
    token = RETRY.set(NO_RETRY if policy is None else policy)
    try:
        yield
    finally:
        RETRY.reset(token)
