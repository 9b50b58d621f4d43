"""The clients compared: ours, and what people would otherwise use.

Every client sends the same bytes: the ``authorization`` header and a request whose
``user_app_id`` is already set (only the 5 MB rows leave it to be filled).
"""

from __future__ import annotations

import collections
import functools
import importlib
import time
from dataclasses import replace
from typing import Any

import grpc
import tenacity
from clarifai_grpc.channel.clarifai_channel import grpc_json_config
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    insecure_channel,
    wrap_channel,
)
from clarifai_interceptor._channel import _Channel, _multi_callable, _UnaryUnary
from clarifai_interceptor._core import Core
from clarifai_interceptor._request import to_bytes

PAT = "bench-pat-not-a-secret"
USER_APP_ID = resources_pb2.UserAppIDSet(user_id="bench-user", app_id="bench-app")
CREDENTIALS = Credentials.from_pat(PAT, user_id="bench-user", app_id="bench-app")
METADATA = (("authorization", "Key " + PAT),)
_IMAGE = resources_pb2.Image(url="https://samples.clarifai.com/metro-north.jpg")
PREDICT = service_pb2.PostModelOutputsRequest(
    user_app_id=USER_APP_ID,
    model_id="general-image-recognition",
    inputs=[resources_pb2.Input(data=resources_pb2.Data(image=_IMAGE))],
)
GENERATE = service_pb2.PostModelOutputsRequest(user_app_id=USER_APP_ID, model_id="llm")
#: The SDK-style proxy's fixed wait and attempts. Clarifai's SDK (``RetryStub``) waits a fixed
#: 5 s (`SDK_REAL_WAIT`), which would make the goodput row last many minutes; that row waits as
#: long as our default first backoff, and says so. The throttle group waits the real 5 s.
SDK_WAIT, SDK_ATTEMPTS = 0.1, 10
SDK_REAL_WAIT = 5.0
THROTTLED = status_code_pb2.CONN_THROTTLED
Pairs = tuple[tuple[str, str], ...]


def big_upload(megabytes: int = 5) -> service_pb2.PostInputsRequest:
    """A ``PostInputs`` request carrying an image of this size, ``user_app_id`` left empty."""
    image = resources_pb2.Image(base64=bytes(megabytes * 1024 * 1024))
    return service_pb2.PostInputsRequest(
        inputs=[resources_pb2.Input(data=resources_pb2.Data(image=image))]
    )


_Fields = collections.namedtuple(
    "_Fields", "method timeout metadata credentials wait_for_ready compression"
)


class _Details(_Fields, grpc.ClientCallDetails):
    """``grpc.ClientCallDetails`` has no constructor; this one does."""


def _with(details: Any, metadata: Pairs) -> _Details:
    return _Details(*details)._replace(metadata=(*(details.metadata or ()), *metadata))


class MinimalInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Row 2: adds the metadata, nothing else."""

    def __init__(self, metadata: Pairs) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with(details, self._metadata), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with(details, self._metadata), request)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


class TenacityInterceptor(MinimalInterceptor):
    """Row 3: (2) plus a fresh tenacity ``Retrying`` per call: 5 attempts, 0.1 s doubling
    (our default without jitter), on ``UNAVAILABLE`` and body ``CONN_THROTTLED``."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = _with(details, self._metadata)

        def attempt() -> Any:
            call = continuation(details, request)
            call.result()  # continuation returns a failed call rather than raising it
            return call

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(5),
            wait=tenacity.wait_exponential(multiplier=0.1, max=5),
            retry=tenacity.retry_if_exception(_unavailable)
            | tenacity.retry_if_result(lambda call: call.result().status.code == THROTTLED),
            retry_error_callback=lambda state: state.outcome.result(),  # the last call, as is
            reraise=True,
        )(attempt)


def lib_interceptor(metadata: Pairs) -> Any:
    """Row 5: ``grpc_interceptor.ClientInterceptor`` adding the metadata; None if not installed."""
    try:
        lib = importlib.import_module("grpc_interceptor")
    except ImportError:
        return None

    class LibInterceptor(lib.ClientInterceptor):  # type: ignore[name-defined,misc]
        def intercept(self, method: Any, request_or_iterator: Any, call_details: Any) -> Any:
            return method(request_or_iterator, _with(call_details, metadata))

    return LibInterceptor()


class SdkStyleStub:
    """Row 4: a stub proxy in the style of Clarifai's SDK (``AuthorizedStub`` + ``RetryStub``).

    Each method looked up on it is wrapped afresh: the wrapper sends the proxy's metadata in place
    of the caller's, and retries ``UNAVAILABLE`` and body ``CONN_THROTTLED`` after a fixed wait.
    """

    def __init__(self, stub: Any, metadata: Pairs, wait: float = SDK_WAIT) -> None:
        self._stub = stub
        self._metadata = metadata
        self._wait = wait

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, metadata: Any = None, **kwargs: Any) -> Any:  # noqa: ARG001
            for attempt in range(1, SDK_ATTEMPTS + 1):
                try:
                    response = method(request, metadata=self._metadata, **kwargs)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == SDK_ATTEMPTS:
                        raise
                else:
                    if response.status.code != THROTTLED or attempt == SDK_ATTEMPTS:
                        return response
                time.sleep(self._wait)
            raise AssertionError("unreachable")

        return call


class AioMinimalInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Row 8b: the minimal interceptor for ``grpc.aio``."""

    def __init__(self, metadata: Pairs) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return await continuation(details._replace(metadata=metadata), request)


class _PassThrough(_UnaryUnary):
    """Row 14c: the wrapper's classes, adding the credentials' metadata and nothing else."""

    __slots__ = ()

    def _plain(self, request: Any, timeout: float | None) -> Any:
        data = self._serialize(request)
        return self._mc(data, timeout=timeout, metadata=self._core.credentials.metadata)


class _WithCredentials(_UnaryUnary):
    """Row 14d: (14c), the credentials asked per call (override, provider) as the lane does."""

    __slots__ = ()

    def _plain(self, request: Any, timeout: float | None) -> Any:
        credentials = self._core.credentials_now()
        data = self._serialize(request)
        return self._mc(data, timeout=timeout, metadata=credentials.metadata)


class _WithFill(_UnaryUnary):
    """Row 14e: (14d), and the ``user_app_id`` check (and fill, had it been unset)."""

    __slots__ = ()

    def _plain(self, request: Any, timeout: float | None) -> Any:
        credentials = self._core.credentials_now()
        data = to_bytes(self._serialize, credentials, request)
        return self._mc(data, timeout=timeout, metadata=credentials.metadata)


#: The breakdown's stages: each adds one piece of `_UnaryResponse._plain` to the one before.
STAGES = {
    "stage-pass": _PassThrough,
    "stage-credentials": _WithCredentials,
    "stage-fill": _WithFill,
}


def stage_channel(kind: str, channel: grpc.Channel) -> grpc.Channel:
    """A wrapper over ``channel`` whose unary-unary calls run only one stage of the lane."""

    class Staged(_Channel):
        unary_unary = _multi_callable("unary_unary", STAGES[kind])

    return Staged(channel, Core(CREDENTIALS, RetryPolicy(timeout=None)))


def aio_module() -> tuple[Any, str]:
    """``clarifai_interceptor.aio``, or None and why it cannot be imported."""
    try:
        return importlib.import_module("clarifai_interceptor.aio"), ""
    except ImportError as exc:
        return None, f"clarifai_interceptor.aio is not importable yet ({exc})"


class Clients:
    """Builds each kind of client to ``target``, and closes every channel it built."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channels: list[Any] = []
        self._aio_channels: list[Any] = []

    def _raw(self, *options: tuple[str, Any]) -> grpc.Channel:
        self._channels.append(grpc.insecure_channel(self.target, options=options))
        return self._channels[-1]

    def _sync(self, kind: str, retry: RetryPolicy) -> Any:
        interceptors = {
            "minimal": lambda: MinimalInterceptor(METADATA),
            "tenacity": lambda: TenacityInterceptor(METADATA),
            "grpc-interceptor": lambda: lib_interceptor(METADATA),
            "interceptor": lambda: ClarifaiInterceptor(CREDENTIALS, retry=retry),
        }
        wrappers = {
            "wrap": lambda raw: wrap_channel(raw, CREDENTIALS, retry=retry),
            # The default sends no deadline; this is the explicit setting (row 14g).
            "wrap-deadline": lambda raw: wrap_channel(
                raw, CREDENTIALS, retry=replace(retry, total_timeout=30.0)
            ),
            **{stage: functools.partial(stage_channel, stage) for stage in STAGES},
        }
        if kind in interceptors:
            return grpc.intercept_channel(self._raw(), interceptors[kind]())
        if kind in wrappers:
            return wrappers[kind](self._raw())
        if kind == "insecure":
            self._channels.append(insecure_channel(self.target, CREDENTIALS, retry=retry))
            return self._channels[-1]
        if kind == "native":
            return self._raw(("grpc.service_config", grpc_json_config), ("grpc.enable_retries", 1))
        return self._raw()  # bare, sdk

    def _aio(self, kind: str, retry: RetryPolicy) -> Any:
        aio, _ = aio_module()
        if kind == "aio-ours":
            channel = aio.insecure_channel(self.target, CREDENTIALS, retry=retry)
        else:
            interceptors = None
            if kind == "aio-minimal":
                interceptors = [AioMinimalInterceptor(METADATA)]
            elif kind == "aio-interceptors":
                interceptors = aio.interceptors(CREDENTIALS, retry=retry)
            channel = grpc.aio.insecure_channel(self.target, interceptors=interceptors)
        self._aio_channels.append(channel)
        return channel

    def caller(self, kind: str, method: str, retry: RetryPolicy | None = None) -> Any:
        """``call(request)`` through one kind of client: sync, or async for ``aio-*`` kinds,
        which must be built inside a running event loop."""
        retry = RetryPolicy() if retry is None else retry
        aio = kind.startswith("aio-")
        stub = service_pb2_grpc.V2Stub(self._aio(kind, retry) if aio else self._sync(kind, retry))
        if kind == "sdk":
            proxy = SdkStyleStub(stub, METADATA)
            return lambda request: getattr(proxy, method)(request)  # noqa: PLW0108 (per call)
        call = getattr(stub, method)
        if kind == "bare-deadline":
            return functools.partial(call, metadata=METADATA, timeout=30.0)
        by_hand = kind in {"bare", "native", "aio-bare"}
        return functools.partial(call, metadata=METADATA) if by_hand else call

    async def aclose(self) -> None:
        """Close the aio channels, inside their event loop."""
        for channel in self._aio_channels:
            await channel.close()
        self._aio_channels.clear()

    def close(self) -> None:
        """Close the sync channels."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
