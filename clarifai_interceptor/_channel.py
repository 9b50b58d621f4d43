"""The channel wrapper: the services' path, wrapping the multi-callables directly.

Cheaper per call than ``grpc.intercept_channel`` (no interceptor machinery). It serializes
each request itself, once, at the first attempt (filling ``user_app_id`` into the bytes instead
of copying the message), and every retry resends those bytes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from ._calls import Retried, response_stream, unary_response
from ._context import RETRY, CredentialsSource, below_us, outer
from ._core import DEFAULT_RETRY, Core
from ._drivers import drive
from ._metadata import Pairs, for_attempt
from ._policy import NO_RETRY, RetryPolicy, for_testing, time_left
from ._ratelimit import DEFAULT_RATE_LIMIT, Bucket, RateLimit
from ._request import byte_stream, to_bytes
from ._switch import TESTING
from ._target import CHANNEL_OPTIONS, DEFAULT_TARGET, channel_options, resolve_target
from ._target import check as check_target

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TARGET",
    "Delegating",
    "channel_options",
    "insecure_channel",
    "resolve_target",
    "secure_channel",
    "wrap_channel",
]

_NO_EXTRA: dict[str, Any] = {}


def _extra(credentials: Any, wait_for_ready: bool | None, compression: Any) -> dict[str, Any]:
    """The per-call options to pass on, as keywords, only those given."""
    if credentials is None and wait_for_ready is None and compression is None:
        return _NO_EXTRA
    return {
        "credentials": credentials,
        "wait_for_ready": wait_for_ready,
        "compression": compression,
    }


def _response_of(outcome: Any) -> object:
    return outcome if isinstance(outcome, grpc.RpcError) else outcome[0]


_VIEWS = {"__call__": None, "with_call": _response_of}


class _Callable:
    """What the four wrapped multi-callables share: resolve, serialize, start, retry.

    ``_mc`` is the underlying multi-callable made without a request serializer: it sends the
    bytes `to_bytes` made with the stub's serializer, so that every attempt sends the same.
    """

    __slots__ = ("_core", "_mc", "_method", "_policy", "_serialize")

    def __init__(self, mc: Any, serialize: Any, core: Core, method: str) -> None:
        self._mc = mc
        self._serialize = serialize
        self._core = core
        self._method = method  # the full name: the hooks' RetryDetails and CallSummary carry it
        self._policy = core.method_policy(method)  # resolved once: every call pays nothing

    def _begin(
        self, request: Any, streaming: bool, metadata: Any, call_credentials: Any
    ) -> tuple[Pairs, Callable[[], Any], RetryPolicy, Bucket | None]:
        pairs, credentials, limiter = self._core.resolve(metadata, call_credentials)
        policy = RETRY.get() or self._policy
        if TESTING.active:
            policy = for_testing(policy)
        if not streaming:
            data = to_bytes(self._serialize, credentials, request)
            return pairs, lambda: data, policy, limiter
        if not isinstance(request, list | tuple):
            policy = NO_RETRY  # an iterator cannot be replayed
        return pairs, byte_stream(self._serialize, credentials, request), policy, limiter

    def _unary(
        self,
        how: str,
        request: Any,
        streaming: bool,
        timeout: float | None,
        metadata: Any,
        kwargs: Any,
    ) -> Any:
        call = getattr(self._mc, how)
        if outer():
            return self._through(call, request, streaming, timeout, metadata, kwargs)
        pairs, requests, policy, limiter = self._begin(
            request, streaming, metadata, kwargs.get("credentials")
        )
        deadline = policy.deadline(timeout)
        attempts = self._core.attempts(policy, self._method, deadline, limiter)

        def start(number: int) -> Any:
            return call(
                requests(),
                timeout=time_left(deadline),
                metadata=for_attempt(pairs, number),
                **kwargs,
            )

        if how == "future":
            return unary_response(attempts, start)

        def attempt(number: int) -> Any:
            try:  # start(number), inlined: every blocking call with metadata goes this way
                return call(
                    requests(),
                    timeout=time_left(deadline),
                    metadata=for_attempt(pairs, number),
                    **kwargs,
                )
            except grpc.RpcError as exc:
                return exc

        outcome = drive(attempts, attempt, _VIEWS[how])
        if isinstance(outcome, grpc.RpcError):
            raise outcome
        if how == "with_call" and (attempts.sent > 1 or attempts.cut_by):
            response, last = outcome
            return response, Retried(last, attempts)
        return outcome

    def _stream(
        self, request: Any, streaming: bool, timeout: float | None, metadata: Any, kwargs: Any
    ) -> Any:
        mc = self._mc
        if outer():
            return self._through(mc, request, streaming, timeout, metadata, kwargs)
        pairs, requests, policy, limiter = self._begin(
            request, streaming, metadata, kwargs.get("credentials")
        )
        # A response stream may rightly outlast the policy's timeout: that bounds the retrying,
        # the caller's own timeout bounds the stream.
        call_deadline = None if timeout is None else time.monotonic() + timeout
        deadline = policy.deadline(timeout)
        attempts = self._core.attempts(policy, self._method, deadline, limiter)

        def start(number: int) -> Any:
            return mc(
                requests(),
                timeout=time_left(call_deadline),
                metadata=for_attempt(pairs, number),
                **kwargs,
            )

        return response_stream(attempts, start)

    def _through(
        self,
        call: Any,
        request: Any,
        streaming: bool,
        timeout: float | None,
        metadata: Any,
        kwargs: Any,
    ) -> Any:
        """The call as it comes, one attempt: a layer of ours above this one authenticates,
        retries and paces it (stacked layers would multiply attempts and headers)."""
        data: Any = (
            byte_stream(self._serialize, None, request)()
            if streaming
            else to_bytes(self._serialize, None, request)
        )
        return call(data, timeout=timeout, metadata=metadata, **kwargs)


class _UnaryResponse(_Callable):
    __slots__ = ()
    _streaming = False  # whether the request is a stream

    # gRPC's own signatures, positional arguments included (OpenTelemetry passes them so).
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        if (
            metadata is None
            and credentials is None
            and wait_for_ready is None
            and compression is None
            and not self._streaming
            and not outer()
        ):
            return self._plain(request, timeout)
        extra = _extra(credentials, wait_for_ready, compression)
        return self._unary("__call__", request, self._streaming, timeout, metadata, extra)

    def _plain(self, request: Any, timeout: float | None) -> Any:
        """The commonest call (a unary request, no metadata or options) in the fewest steps;
        `drive` sends it at once when nothing needs the flow."""
        core = self._core
        credentials = core.credentials_now()
        pairs = credentials.metadata
        policy = RETRY.get() or self._policy
        deadline = policy.deadline(timeout)
        data = to_bytes(self._serialize, credentials, request)
        mc = self._mc
        attempts = core.attempts(policy, self._method, deadline, core.limiter(credentials))

        def attempt(number: int) -> Any:
            try:
                return mc(data, timeout=time_left(deadline), metadata=for_attempt(pairs, number))
            except grpc.RpcError as exc:
                return exc

        outcome = drive(attempts, attempt)
        if isinstance(outcome, grpc.RpcError):
            raise outcome
        return outcome

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        extra = _extra(credentials, wait_for_ready, compression)
        return self._unary("with_call", request, self._streaming, timeout, metadata, extra)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        extra = _extra(credentials, wait_for_ready, compression)
        return self._unary("future", request, self._streaming, timeout, metadata, extra)


class _ResponseStream(_Callable):
    __slots__ = ()
    _streaming = False

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        extra = _extra(credentials, wait_for_ready, compression)
        return self._stream(request, self._streaming, timeout, metadata, extra)


class _UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _streaming = True


class _UnaryStream(_ResponseStream, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StreamStream(_ResponseStream, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _streaming = True


class _Marked:
    """An underlying multi-callable over a channel that may hold a layer of ours (an
    intercepted channel, another wrapper): its calls run with `OUTER` set, so that such a
    layer passes them through. Over gRPC's own channel there is none, and nothing to pay."""

    __slots__ = ("_mc",)

    def __init__(self, mc: Any) -> None:
        self._mc = mc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return below_us(self._mc, *args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return below_us(self._mc.with_call, *args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return below_us(self._mc.future, *args, **kwargs)


def _multi_callable(kind: str, cls: type[_Callable]) -> Callable[..., Any]:
    """One of the channel's four factories: the underlying channel's, wrapped."""

    def make(
        self: _Channel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        factory = getattr(self._channel, kind)
        extra: dict[str, Any] = {"response_deserializer": response_deserializer}
        if _registered_method:
            extra["_registered_method"] = True
        mc = factory(method, request_serializer=None, **extra)  # it sends our bytes
        if type(self._channel).__module__ != "grpc._channel":  # not gRPC's own channel:
            mc = _Marked(mc)  # a layer of ours may lie below
        return cls(mc, request_serializer, self._core, method)

    make.__name__ = kind
    make.__doc__ = "Not part of the API: gRPC's channel interface, used by stubs."
    return make


class Delegating(grpc.Channel):  # type: ignore[misc]
    """A ``grpc.Channel`` over another: connectivity, closing and ``with`` are the wrapped
    channel's (the channel wrapper and the SDK's channel both build on it)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        """Not part of the API: delegated to the wrapped channel."""
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        """Not part of the API: delegated to the wrapped channel."""
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        """Close the wrapped channel."""
        self._channel.close()

    def __enter__(self) -> Delegating:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Channel(Delegating):
    """A ``grpc.Channel`` whose calls carry Clarifai credentials and are retried."""

    def __init__(self, channel: grpc.Channel, core: Core) -> None:
        super().__init__(channel)
        self._core = core

    def close(self) -> None:
        """Close the wrapped channel; every call waiting to retry ends at once (``CANCELLED``)."""
        self._core.closing.close()
        super().close()

    def __repr__(self) -> str:
        return f"<clarifai_interceptor channel over {type(self._channel).__name__}>"

    unary_unary = _multi_callable("unary_unary", _UnaryUnary)
    unary_stream = _multi_callable("unary_stream", _UnaryStream)
    stream_unary = _multi_callable("stream_unary", _StreamUnary)
    stream_stream = _multi_callable("stream_stream", _StreamStream)


def _unnamed() -> str:
    """A name for a wrapped channel whose target nobody gave: its own, in this process and in
    any other (a fleet's Redis store sees it), and never a target gRPC could dial (``#``)."""
    return f"unnamed#{secrets.token_hex(6)}"


def wrap_channel(
    channel: grpc.Channel,
    credentials: CredentialsSource | None = None,
    *,
    target: str | None = None,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    policies: Mapping[str, RetryPolicy] | None = None,
) -> grpc.Channel:
    """A channel whose calls carry Clarifai credentials and retry transient failures.

    The services' path: it wraps the channel's multi-callables directly, so it costs less per
    call than ``grpc.intercept_channel`` with `ClarifaiInterceptor`. Closing it closes ``channel``.

    Args:
        channel: Any sync ``grpc.Channel``.
        credentials: A `Credentials`, a zero-argument callable returning one (consulted per
            call), or None to read `Credentials.from_env` now.
        target: The target ``channel`` dials (``HOST[:PORT]`` or a gRPC name), as given to
            gRPC: rate limits are shared per credential identity and target, so channels of
            ours to one server share one limit, and it labels metrics. None (unknown): this
            channel's limit is its own, shared with no other channel, and its metrics'
            target is ``unnamed#`` and a random suffix.
        retry: The default `RetryPolicy`; None for a single attempt.
        rate_limit: The client-side `RateLimit` (default: adaptive, dormant until the first
            throttle), shared per credential identity and target; None for none.
        policies: Per-method policies: method names or patterns (``"PostInputs"``, ``"Post*"``,
            ``"/clarifai.api.V2/*"``) to `RetryPolicy`; the most specific match wins, over
            ``retry``. With the default ``retry``, reads and writes already differ (see
            `READ_PATTERNS`).

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        TypeError: ``channel`` is a ``grpc.aio`` channel, or an argument has the wrong type.
        ValueError: ``target`` is malformed.
    """
    if isinstance(channel, grpc.aio.Channel):
        raise TypeError("wrap_channel takes a sync grpc.Channel; use clarifai_interceptor.aio")
    if not callable(getattr(channel, "unary_unary", None)):
        raise TypeError(f"wrap_channel takes a grpc.Channel, not {type(channel).__name__}")
    # Never "" for an unknown target: every channel wrapped without one would share a limit,
    # and throttles from one server would pace calls to another.
    name = _unnamed() if target is None else check_target(target)
    return _Channel(channel, Core(credentials, retry, rate_limit, name, policies))


def secure_channel(
    target: str | None = None,
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    policies: Mapping[str, RetryPolicy] | None = None,
    root_certificates: bytes | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A TLS channel to Clarifai whose calls carry credentials and retry transient failures.

    Args:
        target: ``HOST[:PORT]``; default ``CLARIFAI_GRPC_BASE``, else ``api.clarifai.com:443``.
        credentials: As for `wrap_channel`.
        retry: As for `wrap_channel`.
        root_certificates: PEM root certificates; None for the system's.
        options: Extra gRPC channel options; they override `CHANNEL_OPTIONS`.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        ValueError: The target is malformed.
    """
    target = resolve_target(target)
    core = Core(credentials, retry, rate_limit, target, policies)
    channel = grpc.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates),
        options=channel_options(options),
    )
    return _Channel(channel, core)


def insecure_channel(
    target: str,
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    policies: Mapping[str, RetryPolicy] | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A plain-TCP channel (local servers, tests), otherwise like `secure_channel`.

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        ValueError: The target is malformed.
    """
    if target is None:
        raise ValueError("insecure_channel needs a target (HOST:PORT)")
    target = resolve_target(target)
    core = Core(credentials, retry, rate_limit, target, policies)
    channel = grpc.insecure_channel(target, options=channel_options(options))
    return _Channel(channel, core)
