"""Per-block overrides, carried in contextvars so threads and asyncio tasks stay apart."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from ._credentials import Credentials
from ._policy import NO_RETRY, RetryPolicy

__all__ = [
    "CREDENTIALS",
    "OUTER",
    "RETRY",
    "CredentialsSource",
    "Marking",
    "below_us",
    "check_source",
    "outer",
    "use_credentials",
    "use_retry",
]

#: A fixed `Credentials`, or a zero-argument provider consulted on every call (rotation).
CredentialsSource = Credentials | Callable[[], Credentials]

CREDENTIALS: ContextVar[CredentialsSource | None] = ContextVar(
    "clarifai_interceptor.credentials", default=None
)
RETRY: ContextVar[RetryPolicy | None] = ContextVar("clarifai_interceptor.retry", default=None)
#: The mark of a layer of ours starting an attempt (`below_us`): a layer of ours below it (our
#: interceptor under our channel, or the reverse) passes that call through as it comes, so that
#: the outer layer alone authenticates, retries and paces it. Read it with `outer`.
OUTER: ContextVar[Marking | None] = ContextVar("clarifai_interceptor.outer", default=None)

_T = TypeVar("_T")


class Marking:
    """Marks the start of an attempt by a layer of ours, as a context manager: a layer of ours
    it reaches on this thread and task passes the call through (`outer`), and nothing else
    does. gRPC copies the context into its own threads (which run done-callbacks for a
    channel's life) and ``grpc.aio`` into callback contexts: there the mark is another
    thread's or task's, or no longer live, and a call made there gets everything of ours."""

    __slots__ = ("_token", "live", "task", "thread")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.task = _task()
        self.live = True

    def __enter__(self) -> None:
        self._token = OUTER.set(self)

    def __exit__(self, *exc_info: object) -> None:
        self.live = False
        OUTER.reset(self._token)


def _task() -> object:
    loop = asyncio._get_running_loop()  # noqa: SLF001 (asyncio's cheap "is there a loop")
    return None if loop is None else asyncio.current_task(loop)


def outer() -> bool:
    """Whether a layer of ours is starting this very call, on this thread and task."""
    mark = OUTER.get()
    return (
        mark is not None
        and mark.live
        and mark.thread == threading.get_ident()
        and mark.task is _task()
    )


def below_us(start: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``start(*args, **kwargs)`` marked (`Marking`)."""
    with Marking():
        return start(*args, **kwargs)


def check_source(credentials: object) -> None:
    """Refuse what cannot give credentials: not `Credentials`, nor callable with no arguments.

    Raises:
        TypeError: ``credentials`` is neither, takes required arguments, or is a coroutine
            function (a provider is called synchronously, on every call).
    """
    if isinstance(credentials, Credentials):
        return
    if not callable(credentials):
        raise TypeError(
            "credentials must be a Credentials or a zero-argument callable returning one, "
            f"not {type(credentials).__name__}"
        )
    name = getattr(credentials, "__qualname__", type(credentials).__name__)
    if inspect.iscoroutinefunction(credentials) or inspect.iscoroutinefunction(
        getattr(credentials, "__call__", None)  # noqa: B004 (its __call__ method, not callable())
    ):
        raise TypeError(
            f"the credentials provider {name} is a coroutine function: providers are called "
            "synchronously on every call and must return Credentials"
        )
    try:
        signature = inspect.signature(credentials)
    except (TypeError, ValueError):  # a builtin without a signature: judged when called
        return
    try:
        signature.bind()
    except TypeError:
        required = [
            parameter.name
            for parameter in signature.parameters.values()
            if parameter.default is parameter.empty
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        raise TypeError(
            f"the credentials provider {name} is called with no arguments, but it requires "
            f"{', '.join(required)}"
        ) from None


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
