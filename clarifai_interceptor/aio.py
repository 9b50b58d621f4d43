"""The ``grpc.aio`` front end: one interceptor per call kind, and aio channel builders.

``grpc.aio`` files an interceptor that implements several call kinds under unary-unary only
(it sorts them with if/elif), so each kind has its own class; `interceptors` builds the four
around one shared engine (one retry budget). Every retry decision is the engine's
(`Attempts.after`); the waits are ``await asyncio.sleep``, never blocking the event loop.

The interceptors run in the task ``grpc.aio`` creates when the call is made, which copies the
caller's context: `use_credentials` / `use_retry` apply to the calls made inside their block.
Cancelling that task (the caller's ``call.cancel()``, or cancelling the task that awaits the
call) cancels the attempt in flight and ends the retrying.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from . import _aio_fixes
from ._attempts import Attempts
from ._context import CredentialsSource, Marking, outer
from ._core import DEFAULT_RETRY, Core
from ._drivers import Done, advance_async, go_now_async, told_async
from ._metadata import for_attempt
from ._policy import NO_RETRY, RetryPolicy, time_left
from ._ratelimit import DEFAULT_RATE_LIMIT, Bucket, RateLimit
from ._request import fill_copy, request_stream
from ._secret import SafeMetadata
from ._steps import END, Send
from ._target import channel_options, resolve_target

__all__ = [
    "StreamStreamInterceptor",
    "StreamUnaryInterceptor",
    "UnaryStreamInterceptor",
    "UnaryUnaryInterceptor",
    "insecure_channel",
    "interceptors",
    "secure_channel",
]

_Start = Callable[[int, float | None], Awaitable[Any]]  # (attempt, timeout) -> the attempt's call
_I = TypeVar("_I", bound="_Interceptor")

_aio_fixes.apply()  # older grpcio's aio bugs that the caller of a call would see


async def _outcome(call: Any) -> object:
    """A unary attempt's outcome, as the policy judges it: its response or its RpcError."""
    try:
        return await call
    except grpc.RpcError as exc:
        return exc


async def _first(messages: AsyncIterator[Any]) -> object:
    """A response stream's first outcome: a message, an RpcError, or `END`."""
    try:
        return await messages.__anext__()
    except StopAsyncIteration:
        return END
    except grpc.RpcError as exc:
        return exc


class _Interceptor:
    """What the four interceptors share: resolve the call, then run its attempts."""

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

    @classmethod
    def _sharing(cls: type[_I], core: Core) -> _I:
        interceptor = cls.__new__(cls)
        interceptor._core = core  # noqa: SLF001 (its own class)
        return interceptor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(retry={self._core.retry!r})"

    def _prepare(
        self, continuation: Any, details: Any, request: Any, streaming: bool
    ) -> tuple[_Start, RetryPolicy, Bucket | None]:
        pairs, credentials, limiter = self._core.resolve(details.metadata, details.credentials)
        policy = self._core.policy(details.method)
        if not streaming:
            filled = fill_copy(credentials, request)
            requests: Callable[[], Any] = lambda: filled  # noqa: E731 (one line reads best)
        else:
            requests = request_stream(credentials, request)
            if not isinstance(request, list | tuple):
                policy = NO_RETRY  # an iterator cannot be replayed

        async def start(number: int, timeout: float | None) -> Any:
            sent = SafeMetadata(*for_attempt(pairs, number))  # its repr redacts credentials
            call_details = grpc.aio.ClientCallDetails(
                details.method, timeout, sent, details.credentials, details.wait_for_ready
            )
            with Marking():  # an interceptor of ours further down passes it through
                return await continuation(call_details, requests())

        return start, policy, limiter

    async def _unary(self, continuation: Any, details: Any, request: Any, streaming: bool) -> Any:
        if outer():  # an interceptor of ours above this one does it all
            return await continuation(details, request)
        start, policy, limiter = self._prepare(continuation, details, request, streaming)
        deadline = policy.deadline(details.timeout)
        attempts = self._core.attempts(policy, details.method, deadline, limiter)
        # Nothing to judge: the caller awaits (or writes to) gRPC's own call.
        single = policy.max_attempts == 1 and (attempts.limiter is None or streaming)
        call = None
        try:
            if await go_now_async(attempts):  # the happy path: no flow unless it must
                attempts.sending()
                call = await start(1, time_left(deadline))
                if single:
                    return call
                outcome = await _outcome(call)
                if await told_async(attempts, outcome):
                    step: Send | Done = Done(outcome)
                else:
                    flow = attempts.flow(outcome)
                    step = await advance_async(attempts, flow, None)
            else:
                flow = attempts.flow()
                step = await advance_async(attempts, flow, None)
            while isinstance(step, Send):
                call = await start(step.number, time_left(deadline))
                if single:
                    return call
                step = await advance_async(attempts, flow, await _outcome(call))
        except BaseException:
            if call is not None:
                call.cancel()  # cancelled mid-attempt or mid-wait: no attempt follows
            raise
        if isinstance(step.outcome, grpc.RpcError):
            raise step.outcome  # the very error of the last attempt
        return call

    async def _stream(
        self, continuation: Any, details: Any, request: Any, streaming: bool, kept: type[_Kept]
    ) -> Any:
        if outer():
            return await continuation(details, request)
        start, policy, limiter = self._prepare(continuation, details, request, streaming)
        # A response stream may rightly outlast the policy's timeout: that bounds the retrying,
        # the caller's own timeout bounds the stream.
        timeout = details.timeout
        call_deadline = None if timeout is None else time.monotonic() + timeout
        deadline = policy.deadline(timeout)
        attempts = self._core.attempts(policy, details.method, deadline, limiter)
        flow = attempts.flow()
        call: Any = None
        head: object = END

        def abandon() -> None:  # an error or a retryable first message: that attempt is over
            call.cancel()

        try:
            step = await advance_async(attempts, flow, None)
            while isinstance(step, Send):
                if call is not None:
                    call.cancel()
                call = await start(step.number, time_left(call_deadline))
                if policy.max_attempts == 1:
                    return call
                messages = call.__aiter__()
                head = await _first(messages)
                step = await advance_async(attempts, flow, head, abandon)
        except BaseException:
            if call is not None:
                call.cancel()
            raise
        if step.outcome is not head:  # the flow ended it between attempts
            raise step.outcome
        return kept(call, messages, head, attempts)


class UnaryUnaryInterceptor(_Interceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Credentials, ``user_app_id`` and retries for unary-unary calls on a ``grpc.aio`` channel.

    Prefer `interceptors`, which covers every call kind with one shared retry budget.

    Args:
        credentials: A `Credentials`, a zero-argument callable returning one (consulted per
            call), or None to read `Credentials.from_env` now.
        retry: The default `RetryPolicy`; None for a single attempt.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        TypeError: ``credentials`` or ``retry`` is of the wrong type.
    """

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Not part of the API: grpc.aio's hook for unary-unary calls."""
        return await self._unary(continuation, client_call_details, request, False)


class StreamUnaryInterceptor(_Interceptor, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """As `UnaryUnaryInterceptor`, for stream-unary calls (retried for list or tuple requests)."""

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Not part of the API: grpc.aio's hook for stream-unary calls."""
        return await self._unary(continuation, client_call_details, request_iterator, True)


class UnaryStreamInterceptor(_Interceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """As `UnaryUnaryInterceptor`, for unary-stream calls (retried until the first message)."""

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Not part of the API: grpc.aio's hook for unary-stream calls."""
        return await self._stream(continuation, client_call_details, request, False, _UnaryStream)


class StreamStreamInterceptor(_Interceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """As `UnaryStreamInterceptor`, for stream-stream calls (list or tuple requests only)."""

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Not part of the API: grpc.aio's hook for stream-stream calls."""
        return await self._stream(
            continuation, client_call_details, request_iterator, True, _StreamStream
        )


class _Kept:
    """The attempt kept for the caller, its first message (or error) already read.

    A ``grpc.aio`` call object, so that ``grpc.aio`` hands it on as it is: the caller's call
    reads it and asks it for status and metadata, which come from the kept attempt.
    """

    def __init__(
        self, call: Any, messages: AsyncIterator[Any], head: object, attempts: Attempts
    ) -> None:
        self._call = call
        self._messages = messages
        self._head = head
        self._attempts = attempts  # for call_outcome()

    async def read(self) -> Any:
        head, self._head = self._head, END
        if head is END:
            try:
                return await self._messages.__anext__()
            except StopAsyncIteration:
                return grpc.aio.EOF
        if isinstance(head, grpc.RpcError):
            raise head  # the very error of the last attempt
        return head

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: callback(self))

    def time_remaining(self) -> float | None:
        remaining = self._call.time_remaining()
        return None if remaining is None else float(remaining)

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()

    async def details(self) -> str:
        return str(await self._call.details())

    async def debug_error_string(self) -> str | None:
        return await self._call.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()


class _UnaryStream(_Kept, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    pass


class _StreamStream(_Kept, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()


def interceptors(
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    target: str = "",
    policies: Mapping[str, RetryPolicy] | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors to pass as ``grpc.aio.*_channel(..., interceptors=...)``.

    One per call kind, sharing the credentials, the policy and one retry budget.

    Args:
        credentials: A `Credentials`, a zero-argument callable returning one (consulted per
            call), or None to read `Credentials.from_env` now.
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

    Returns:
        A `UnaryUnaryInterceptor`, `UnaryStreamInterceptor`, `StreamUnaryInterceptor` and
        `StreamStreamInterceptor`.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        TypeError: ``credentials`` or ``retry`` is of the wrong type.
    """
    core = Core(credentials, retry, rate_limit, target, policies)
    kinds: tuple[type[_Interceptor], ...] = (
        UnaryUnaryInterceptor,
        UnaryStreamInterceptor,
        StreamUnaryInterceptor,
        StreamStreamInterceptor,
    )
    return [kind._sharing(core) for kind in kinds]  # noqa: SLF001 (this module's classes)


def secure_channel(
    target: str | None = None,
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    policies: Mapping[str, RetryPolicy] | None = None,
    root_certificates: bytes | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` TLS channel to Clarifai whose calls carry credentials and retry.

    Use it as ``async with``, or close it with ``await channel.close()``.

    Args:
        target: ``HOST[:PORT]``; default ``CLARIFAI_GRPC_BASE``, else ``api.clarifai.com:443``.
        credentials: As for `interceptors`.
        retry: As for `interceptors`.
        root_certificates: PEM root certificates; None for the system's.
        options: Extra gRPC channel options; they override `CHANNEL_OPTIONS` (which turn
            gRPC's own retries off, so that attempts never multiply).

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        ValueError: The target is malformed.
    """
    target = resolve_target(target)
    chain = interceptors(
        credentials, retry=retry, rate_limit=rate_limit, target=target, policies=policies
    )
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates),
        options=channel_options(options),
        interceptors=chain,
    )


def insecure_channel(
    target: str,
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    policies: Mapping[str, RetryPolicy] | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` plain-TCP channel (local servers, tests), otherwise like `secure_channel`.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        ValueError: The target is malformed.
    """
    if target is None:
        raise ValueError("insecure_channel needs a target (HOST:PORT)")
    target = resolve_target(target)
    chain = interceptors(
        credentials, retry=retry, rate_limit=rate_limit, target=target, policies=policies
    )
    return grpc.aio.insecure_channel(target, options=channel_options(options), interceptors=chain)
