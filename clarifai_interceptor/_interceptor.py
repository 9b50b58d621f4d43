"""The sync interceptor, for ``grpc.intercept_channel`` on any existing channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import grpc

from ._calls import Raised, response_stream, unary_response
from ._context import CredentialsSource, below_us, outer
from ._core import DEFAULT_RETRY, Core
from ._credentials import Credentials
from ._metadata import for_attempt
from ._policy import NO_RETRY, RetryPolicy, time_left
from ._ratelimit import DEFAULT_RATE_LIMIT, Bucket, RateLimit
from ._request import fill_copy, request_stream

__all__ = ["ClarifaiInterceptor"]


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", bool | None),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """``grpc.ClientCallDetails`` has no constructor; this one does."""


_Details = Callable[[int, float | None], Any]  # (attempt number, timeout) -> call details


def _blocks(continuation: Any) -> bool:
    """Whether gRPC's continuation is its blocking one (``__call__``/``with_call``): then the
    caller's thread is waiting anyway, and waits and retries run there."""
    return "._with_call." in getattr(continuation, "__qualname__", "")


class ClarifaiInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds Clarifai credentials to every call and retries transient failures.

    Use with ``grpc.intercept_channel(channel, ClarifaiInterceptor(...))``. For a channel you
    build yourself, `wrap_channel` does the same at less cost per call.

    Args:
        credentials: A `Credentials`, a zero-argument callable returning one (consulted per
            call, for rotation), or None to read `Credentials.from_env` now.
        retry: The default `RetryPolicy`; None for a single attempt.
        rate_limit: The client-side `RateLimit` (default: adaptive, dormant until the first
            throttle), shared per credential identity and target; None for none.
        policies: Per-method policies: method names or patterns (``"PostInputs"``, ``"Post*"``,
            ``"/clarifai.api.V2/*"``) to `RetryPolicy`; the most specific match wins, over
            ``retry``. With the default ``retry``, reads and writes already differ (see
            `READ_PATTERNS`).
        target: The channel's target, if known: rate limits are shared per credential
            identity and target. It labels metrics, with any user info (``USER:PASSWORD@``)
            shown as ``***@``.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        TypeError: ``credentials`` or ``retry`` is of the wrong type.
    """

    def __init__(
        self,
        credentials: CredentialsSource | None = None,
        *,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        target: str = "",
        policies: Mapping[str, RetryPolicy] | None = None,
    ) -> None:
        self._core = Core(credentials, retry, rate_limit, target, policies)

    def __repr__(self) -> str:
        return f"ClarifaiInterceptor(retry={self._core.retry!r})"

    def close(self) -> None:
        """End every call of this interceptor that waits to retry, at once: each gets a
        ``CANCELLED`` `grpc.RpcError` and nothing more is sent.

        Call it with the channel's ``close()``: gRPC tells an interceptor nothing of that.
        Calls made through it afterwards get one attempt, never a retry.
        """
        self._core.closing.close()

    def _prepare(self, details: Any) -> tuple[_Details, Credentials | None, Bucket | None]:
        metadata, credentials, limiter = self._core.resolve(details.metadata, details.credentials)

        def for_call(number: int, timeout: float | None) -> _CallDetails:
            return _CallDetails(
                details.method,
                timeout,
                for_attempt(metadata, number),
                details.credentials,
                details.wait_for_ready,
                details.compression,
            )

        return for_call, credentials, limiter

    # The four hooks below are gRPC's interface, not part of this package's API.

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Not part of the API: gRPC's hook for unary-unary calls."""
        if outer():  # a layer of ours above this one does it all
            return continuation(client_call_details, request)
        try:
            details, credentials, limiter = self._prepare(client_call_details)
        except Exception as exc:  # noqa: BLE001 (handed to the caller, unchanged)
            return Raised(exc)
        # A future or a response stream gives the caller its message back while a retry may
        # still send it: the retries send a copy made now (a blocking caller is still waiting).
        request = fill_copy(credentials, request, snapshot=not _blocks(continuation))
        return self._unary(continuation, client_call_details, details, limiter, lambda: request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Not part of the API: gRPC's hook for unary-stream calls."""
        if outer():
            return continuation(client_call_details, request)
        details, credentials, limiter = self._prepare(client_call_details)
        request = fill_copy(credentials, request, snapshot=True)
        return self._stream(continuation, client_call_details, details, limiter, lambda: request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Not part of the API: gRPC's hook for stream-unary calls."""
        if outer():
            return continuation(client_call_details, request_iterator)
        try:
            details, credentials, limiter = self._prepare(client_call_details)
        except Exception as exc:  # noqa: BLE001 (handed to the caller, unchanged)
            return Raised(exc)
        requests = request_stream(credentials, request_iterator, snapshot=True)
        replayable = isinstance(request_iterator, list | tuple)
        return self._unary(
            continuation, client_call_details, details, limiter, requests, replayable
        )

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Not part of the API: gRPC's hook for stream-stream calls."""
        if outer():
            return continuation(client_call_details, request_iterator)
        details, credentials, limiter = self._prepare(client_call_details)
        requests = request_stream(credentials, request_iterator, snapshot=True)
        replayable = isinstance(request_iterator, list | tuple)
        return self._stream(
            continuation, client_call_details, details, limiter, requests, replayable
        )

    def _unary(
        self,
        continuation: Any,
        call_details: Any,
        details: _Details,
        limiter: Bucket | None,
        request: Callable[[], Any],
        replayable: bool = True,
    ) -> Any:
        policy = self._core.policy(call_details.method) if replayable else NO_RETRY
        deadline = policy.deadline(call_details.timeout)
        attempts = self._core.attempts(policy, call_details.method, deadline, limiter)

        def start(number: int) -> Any:
            return below_us(continuation, details(number, time_left(deadline)), request())

        return unary_response(attempts, start, _blocks(continuation))

    def _stream(
        self,
        continuation: Any,
        call_details: Any,
        details: _Details,
        limiter: Bucket | None,
        request: Callable[[], Any],
        replayable: bool = True,
    ) -> Any:
        policy = self._core.policy(call_details.method) if replayable else NO_RETRY
        # A response stream may rightly outlast the policy's timeout: that bounds the retrying,
        # the caller's own timeout bounds the stream.
        timeout = call_details.timeout
        call_deadline = None if timeout is None else time.monotonic() + timeout
        deadline = policy.deadline(timeout)
        attempts = self._core.attempts(policy, call_details.method, deadline, limiter)

        def start(number: int) -> Any:
            return below_us(continuation, details(number, time_left(call_deadline)), request())

        return response_stream(attempts, start)
