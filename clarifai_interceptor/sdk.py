"""The Clarifai Python SDK (``clarifai``) through this package's channels: one retry layer.

``install()`` once at start-up, and every SDK client (``Model``, ``App``, ``User``, ``Dataset``,
``Inputs``, ``Search``, ...), sync and async, made before or after the call, sends its gRPC calls
through this package's channels: our retries (one layer: no ``RetryStub`` waits, no
``ClarifaiChannel`` service-config retries underneath), our retry budget and rate limiting, our
credential precedence. ``uninstall()`` puts the SDK back as it was.

What is patched, each by name wherever the SDK imported it (see `PATCHED`):

- ``ClarifaiAuthHelper.get_stub_and_channel`` / ``get_async_stub``: the channels become ours, built
  from the helper's ``base`` (https, or plain http to ``host:port``), root certificates, PAT or
  session token, user and app.
- ``create_stub`` (in ``clarifai.client.auth.stub`` and every ``clarifai`` module that imported
  it): an ``AuthorizedStub`` without the ``RetryStub`` around it.
- ``RetryStub.__getattr__`` (stubs made before ``install()``): no retries; the SDK's call
  shape is kept.
- ``AuthorizedStub.__getattr__``: a stub made before ``install()`` is sent over a channel of ours.
- ``status_is_retryable`` (in ``clarifai.utils.misc`` and every module that imported it): the
  SDK's model-loading loops stop after one round; our policy retries those statuses.
- ``ModelClient._async_predict_by_proto``: the same request, without the SDK's loop that re-sends
  on *any* exception for 10 s.

Credentials: each client's PAT (or session token), user and app become its channel's default. The
SDK passes its own header on every call; that header is recognised (it equals the client's own)
and dropped, so a `use_credentials` block overrides it and a different header passed on the call
still wins. The SDK's ``x-clarifai-request-id-prefix`` header is sent as the SDK made it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import grpc

from . import aio as _aio
from ._channel import (
    CHANNEL_OPTIONS,
    Delegating,
    insecure_channel,
    resolve_target,
    secure_channel,
)
from ._channel import wrap_channel as _wrap_channel
from ._compat import slotted
from ._core import DEFAULT_RETRY
from ._credentials import AUTHORIZATION, SESSION_TOKEN, Credentials
from ._policy import RetryPolicy
from ._ratelimit import DEFAULT_RATE_LIMIT, RateLimit

__all__ = [
    "PATCHED",
    "SUPPORTED_VERSIONS",
    "Installation",
    "UnsupportedSDKError",
    "check_version",
    "install",
    "installed",
    "uninstall",
]

#: The ``clarifai`` versions this module was tested with, as a pip requirement.
SUPPORTED_VERSIONS = ">=12.5,<12.6"
_LOWEST, _BELOW = (12, 5), (12, 6)

#: What `install` replaces, as ``module:attribute`` (also every alias of a function by name).
PATCHED = (
    "clarifai.client.auth.helper:ClarifaiAuthHelper.get_stub_and_channel",
    "clarifai.client.auth.helper:ClarifaiAuthHelper.get_async_stub",
    "clarifai.client.auth.stub:create_stub",
    "clarifai.client.auth.stub:RetryStub.__getattr__",
    "clarifai.client.auth.stub:AuthorizedStub.__getattr__",
    "clarifai.utils.misc:status_is_retryable",
    "clarifai.client.model_client:ModelClient._async_predict_by_proto",
)

_log = logging.getLogger("clarifai_interceptor")


class UnsupportedSDKError(RuntimeError):
    """The installed ``clarifai`` SDK is missing or outside `SUPPORTED_VERSIONS`."""


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class _Config:
    retry: RetryPolicy | None
    rate_limit: RateLimit | None


class _State:
    """What is installed: the config, the originals to put back, the routes made."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.originals: list[tuple[Any, str, Any]] = []  # (owner, attribute, original value)
        self.functions: list[tuple[Any, Any]] = []  # (our function, the SDK's it replaces)
        # A stub made before install() -> the stub of ours its calls go through.
        self.routes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


_lock = threading.RLock()
_state: _State | None = None
# The V2Stubs built on channels of ours (an AuthorizedStub holding one needs no route).
_ours: weakref.WeakSet[Any] = weakref.WeakSet()


class Installation:
    """What `install` returns: a context manager that calls `uninstall` on exit."""

    __slots__ = ()

    def __enter__(self) -> Installation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        uninstall()

    def __repr__(self) -> str:
        return f"<clarifai_interceptor.sdk installation, installed={installed()}>"


def installed() -> bool:
    """Whether `install` is in effect."""
    return _state is not None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits or not piece[0].isdigit():
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version(version: str | None = None) -> str:
    """The installed ``clarifai`` version, if supported.

    Raises:
        UnsupportedSDKError: It is not installed, or outside `SUPPORTED_VERSIONS`.
    """
    if version is None:
        try:
            version = _metadata.version("clarifai")
        except _metadata.PackageNotFoundError:
            raise UnsupportedSDKError(
                "the Clarifai SDK is not installed: pip install 'clarifai-interceptor[sdk]' "
                f"(clarifai{SUPPORTED_VERSIONS})"
            ) from None
    if not _LOWEST <= _version_tuple(version) < _BELOW:
        raise UnsupportedSDKError(
            f"clarifai {version} is installed; clarifai_interceptor.sdk supports "
            f"clarifai{SUPPORTED_VERSIONS} only (pip install 'clarifai-interceptor[sdk]')"
        )
    return version


def install(
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
) -> Installation:
    """Send every Clarifai SDK client's gRPC calls through this package's channels.

    Clients made before and after the call, sync and async. Calling it again while installed
    changes the settings for channels built from then on, and patches nothing twice.

    Args:
        retry: The `RetryPolicy` of every SDK channel; None for a single attempt (and then no
            retries at all: the SDK's own are off too).
        rate_limit: The client-side `RateLimit`, passed to every channel; None for none.

    Returns:
        An `Installation`: ``with install(...):`` uninstalls on exit.

    Raises:
        UnsupportedSDKError: ``clarifai`` is missing or outside `SUPPORTED_VERSIONS`; nothing
            is patched then.
        TypeError: ``retry`` or ``rate_limit`` is of the wrong type.
    """
    global _state
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise TypeError(f"rate_limit must be a RateLimit or None, not {type(rate_limit).__name__}")
    check_version()
    config = _Config(retry=retry, rate_limit=rate_limit)
    with _lock:
        if _state is not None:
            _state.config = config
            return Installation()
        state = _State(config)
        _patch(state)
        _state = state
    return Installation()


def uninstall() -> None:
    """Put back everything `install` replaced; harmless when not installed.

    Clients made while installed keep the channels they were given (without ``RetryStub``);
    clients made before ``install()`` go back to the SDK's own channels and retries.
    """
    global _state
    with _lock:
        state, _state = _state, None
        if state is None:
            return
        for owner, name, original in reversed(state.originals):
            setattr(owner, name, original)
        # Modules imported while installed copied our functions by name: give them the SDK's.
        for ours, original in state.functions:
            for module in _sdk_modules():
                for attr, value in list(vars(module).items()):
                    if value is ours:
                        setattr(module, attr, original)


def _sdk_modules() -> Iterator[ModuleType]:
    for name, module in list(sys.modules.items()):
        if (name == "clarifai" or name.startswith("clarifai.")) and isinstance(module, ModuleType):
            yield module


def _set(state: _State, owner: Any, name: str, value: Any) -> None:
    state.originals.append((owner, name, vars(owner)[name]))
    setattr(owner, name, value)


def _set_everywhere(state: _State, original: Any, value: Any) -> None:
    """Replace a function in every loaded ``clarifai`` module that holds it by name."""
    for module in _sdk_modules():
        for attr, held in list(vars(module).items()):
            if held is original:
                state.originals.append((module, attr, original))
                setattr(module, attr, value)
    state.functions.append((value, original))


def _patch(state: _State) -> None:
    helper_mod = importlib.import_module("clarifai.client.auth.helper")
    stub_mod = importlib.import_module("clarifai.client.auth.stub")
    misc = importlib.import_module("clarifai.utils.misc")
    # Import the modules that copy names, so that their copies are replaced now.
    for name in (
        "clarifai.client",
        "clarifai.client.base",
        "clarifai.client.model_client",
        "clarifai.client.workflow",
    ):
        importlib.import_module(name)
    model_client = importlib.import_module("clarifai.client.model_client")
    helper_cls = helper_mod.ClarifaiAuthHelper
    original_create = stub_mod.create_stub
    original_retryable = misc.status_is_retryable
    authorized_cls, retry_cls = stub_mod.AuthorizedStub, stub_mod.RetryStub
    original_authorized_getattr = vars(authorized_cls)["__getattr__"]
    rpc_callable = importlib.import_module("clarifai.client.auth.register").RpcCallable

    def get_stub_and_channel(self: Any) -> tuple[Any, grpc.Channel]:
        channel = _sync_channel(self, helper_mod.base_https_cache)
        return _stub(channel), channel

    def get_async_stub(self: Any) -> Any:
        return _stub(_aio_channel(self, helper_mod.base_https_cache))

    def create_stub(
        auth_helper: Any = None, max_retry_attempts: int = 10, is_async: bool = False
    ) -> Any:
        # max_retry_attempts is the SDK's RetryStub's: our policy decides retries instead.
        del max_retry_attempts
        stub = authorized_cls(auth_helper, is_async=is_async)
        return _AwaitingStub(stub, rpc_callable) if is_async else stub

    def retry_getattr(self: Any, name: str) -> Any:
        value = getattr(self.stub, name)
        if self.is_async and isinstance(value, rpc_callable):
            return _Awaiting(value)  # the RetryStub's call shape, one attempt
        return value

    def authorized_getattr(self: Any, name: str) -> Any:
        inner = self.__dict__.get("stub")
        if inner is None or inner in _ours:
            return original_authorized_getattr(self, name)
        route = _route(self, helper_mod.base_https_cache)
        if route is None:
            return original_authorized_getattr(self, name)
        value = getattr(route, name)
        if isinstance(value, rpc_callable):
            value = stub_mod._AuthorizedRpcCallable(value, self.metadata, self.is_async)  # noqa: SLF001
        return value

    def status_is_retryable(status_code: int) -> bool:
        # Our policy retried these statuses already: the SDK's loop would multiply attempts.
        del status_code
        return False

    _set(state, helper_cls, "get_stub_and_channel", get_stub_and_channel)
    _set(state, helper_cls, "get_async_stub", get_async_stub)
    _set_everywhere(state, original_create, create_stub)
    _set(state, retry_cls, "__getattr__", retry_getattr)
    _set(state, authorized_cls, "__getattr__", authorized_getattr)
    _set_everywhere(state, original_retryable, status_is_retryable)
    _set(
        state,
        model_client.ModelClient,
        "_async_predict_by_proto",
        _async_predict_by_proto(model_client),
    )


def _config() -> _Config:
    state = _state
    return state.config if state is not None else _Config(retry=DEFAULT_RETRY, rate_limit=None)


def _stub(channel: Any) -> Any:
    from clarifai_grpc.grpc.api import service_pb2_grpc  # noqa: PLC0415 (after the quirk fix)

    stub = service_pb2_grpc.V2Stub(channel)
    with _lock:  # a WeakSet is not safe to change from several threads at once
        _ours.add(stub)
    return stub


# -- credentials: the client's own become the channel's default ---------------------------------


class _HelperCredentials:
    """A credentials provider reading a ``ClarifaiAuthHelper`` (its PAT may be set later)."""

    __slots__ = ("_cached", "_helper")

    def __init__(self, helper: Any) -> None:
        self._helper = helper
        self._cached: tuple[tuple[str, str, str, str], Credentials] | None = None

    def _key(self) -> tuple[str, str, str, str]:
        helper = self._helper
        return (
            helper.__dict__.get("_pat") or "",
            helper.__dict__.get("_token") or "",
            helper.__dict__.get("user_id") or "",
            helper.__dict__.get("app_id") or "",
        )

    def __call__(self) -> Credentials:
        key = self._key()
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        credentials = _credentials(*key)
        self._cached = (key, credentials)
        return credentials

    def own(self) -> frozenset[tuple[str, str]]:
        """The credential headers the SDK itself sends for this helper."""
        pat, token, _, _ = self._key()
        return _own_headers(pat, token)


def _own_headers(pat: str, token: str) -> frozenset[tuple[str, str]]:
    own = set()
    if pat:
        own.add((AUTHORIZATION, f"Key {pat}"))
    if token:
        own.add((SESSION_TOKEN, token))
    return frozenset(own)


class _NoSecretError(Exception):
    """The SDK client has neither a PAT nor a session token."""


def _credentials(pat: str, token: str, user_id: str, app_id: str) -> Credentials:
    user = user_id or None
    app = (app_id or None) if user else None
    if pat:
        return Credentials.from_pat(pat, user_id=user, app_id=app)
    if token:
        return Credentials.from_session_token(token, user_id=user, app_id=app)
    # The SDK's own message (ClarifaiAuthHelper.metadata), raised only if a call needs it.
    raise _NoSecretError("'token' or 'pat' needed to be provided in the query params or env vars.")


def _strip(metadata: Any, own: frozenset[tuple[str, str]]) -> Any:
    """The call's metadata without the SDK's own credential header (None if nothing is left)."""
    if not metadata or not own:
        return metadata
    kept = tuple(pair for pair in metadata if (pair[0], pair[1]) not in own)
    return kept or None


# -- sync channels ---------------------------------------------------------------------------------


class _StripCallable:
    __slots__ = ("_mc", "_own")

    def __init__(self, mc: Any, own: Callable[[], frozenset[tuple[str, str]]]) -> None:
        self._mc = mc
        self._own = own

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        metadata = _strip(metadata, self._own())
        return self._mc(request, timeout, metadata, credentials, wait_for_ready, compression)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        metadata = _strip(metadata, self._own())
        return self._mc.with_call(
            request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        metadata = _strip(metadata, self._own())
        return self._mc.future(request, timeout, metadata, credentials, wait_for_ready, compression)


class _StripUnaryUnary(_StripCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StripUnaryStream(_StripCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StripStreamUnary(_StripCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StripStreamStream(_StripCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


def _strip_factory(kind: str, cls: type[_StripCallable]) -> Callable[..., Any]:
    def make(self: _SdkChannel, method: str, *args: Any, **kwargs: Any) -> Any:
        return cls(getattr(self._channel, kind)(method, *args, **kwargs), self._own)

    make.__name__ = kind
    make.__doc__ = "Not part of the API: gRPC's channel interface, used by stubs."
    return make


class _SdkChannel(Delegating):
    """A channel of ours that drops the SDK's own credential header from each call."""

    def __init__(self, channel: grpc.Channel, own: Callable[[], frozenset[tuple[str, str]]]):
        super().__init__(channel)
        self._own = own

    def __repr__(self) -> str:
        return "<clarifai_interceptor.sdk channel>"

    unary_unary = _strip_factory("unary_unary", _StripUnaryUnary)
    unary_stream = _strip_factory("unary_stream", _StripUnaryStream)
    stream_unary = _strip_factory("stream_unary", _StripStreamUnary)
    stream_stream = _strip_factory("stream_stream", _StripStreamStream)


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class _Where:
    """Where an SDK client connects, decided as the SDK decides it."""

    target: str
    tls: bool
    root_certificates: bytes | None


def _where(base: str, https: bool, root_certificates_path: str | None) -> _Where:
    if https:
        certificates = Path(root_certificates_path).read_bytes() if root_certificates_path else None
        return _Where(target=base, tls=True, root_certificates=certificates)
    host, _, port = base.partition(":")
    return _Where(target=f"{host}:{port or 80}", tls=False, root_certificates=None)


def _helper_where(helper: Any, cache: Any) -> _Where:
    base = helper._base  # noqa: SLF001 (the SDK's own state: the base it resolved)
    if base not in cache:
        raise Exception("Cannot determine if base %s is https" % base)  # noqa: UP031 (the SDK's own)
    return _where(base, cache[base], helper._root_certificates_path)  # noqa: SLF001


def _sync_for(where: _Where, credentials: Any, config: _Config) -> grpc.Channel:
    kwargs: dict[str, Any] = {"retry": config.retry, "rate_limit": config.rate_limit}
    try:
        target = resolve_target(where.target)
    except ValueError:  # a base the SDK accepts and we would not: build it as the SDK does
        target = None
    if target is None:
        raw = (
            grpc.secure_channel(
                where.target,
                grpc.ssl_channel_credentials(where.root_certificates),
                options=list(CHANNEL_OPTIONS),
            )
            if where.tls
            else grpc.insecure_channel(where.target, options=list(CHANNEL_OPTIONS))
        )
        return _wrap_channel(raw, credentials, **kwargs)
    if where.tls:
        return secure_channel(
            target, credentials, root_certificates=where.root_certificates, **kwargs
        )
    return insecure_channel(target, credentials, **kwargs)


def _sync_channel(helper: Any, cache: Any) -> _SdkChannel:
    provider = _HelperCredentials(helper)
    channel = _sync_for(_helper_where(helper, cache), provider, _config())
    return _SdkChannel(channel, provider.own)


# -- aio channels ----------------------------------------------------------------------------------


class _StripDetails:
    def __init__(self, own: Callable[[], frozenset[tuple[str, str]]]) -> None:
        self._own = own

    def _details(self, details: Any) -> Any:
        metadata = details.metadata
        kept = _strip(tuple(metadata) if metadata else metadata, self._own())
        if kept is metadata or (metadata and kept is not None and len(kept) == len(metadata)):
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(kept or ())),
            details.credentials,
            details.wait_for_ready,
        )


class _StripUnaryUnaryAio(_StripDetails, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Not part of the API: grpc.aio's hook."""
        return await continuation(self._details(details), request)


class _StripUnaryStreamAio(_StripDetails, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Not part of the API: grpc.aio's hook."""
        return await continuation(self._details(details), request)


class _StripStreamUnaryAio(_StripDetails, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Not part of the API: grpc.aio's hook."""
        return await continuation(self._details(details), requests)


class _StripStreamStreamAio(_StripDetails, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Not part of the API: grpc.aio's hook."""
        return await continuation(self._details(details), requests)


def _aio_for(
    where: _Where,
    credentials: Any,
    own: Callable[[], frozenset[tuple[str, str]]],
    config: _Config,
) -> grpc.aio.Channel:
    strip: list[Any] = [
        kind(own)
        for kind in (
            _StripUnaryUnaryAio,
            _StripUnaryStreamAio,
            _StripStreamUnaryAio,
            _StripStreamStreamAio,
        )
    ]
    ours = _aio.interceptors(
        credentials, retry=config.retry, rate_limit=config.rate_limit, target=where.target
    )
    options = list(CHANNEL_OPTIONS)
    if where.tls:
        return grpc.aio.secure_channel(
            where.target,
            grpc.ssl_channel_credentials(where.root_certificates),
            options=options,
            interceptors=[*strip, *ours],
        )
    return grpc.aio.insecure_channel(where.target, options=options, interceptors=[*strip, *ours])


def _aio_channel(helper: Any, cache: Any) -> grpc.aio.Channel:
    provider = _HelperCredentials(helper)
    return _aio_for(_helper_where(helper, cache), provider, provider.own, _config())


class _Awaiting:
    """An async SDK callable as ``RetryStub`` shapes it (a coroutine), with a single attempt.

    ``ModelClient`` awaits what an async stub method returns: the response for a unary call,
    an async iterator for a response stream.
    """

    __slots__ = ("f",)

    def __init__(self, f: Any) -> None:
        self.f = f

    def __repr__(self) -> str:
        return repr(self.f)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    async def _call(self, *args: Any, **kwargs: Any) -> Any:
        call = self.f(*args, **kwargs)
        if hasattr(call, "__aiter__"):
            return call
        return await call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


class _AwaitingStub:
    """The async stub `create_stub` returns: ``AuthorizedStub`` in ``RetryStub``'s call shape."""

    def __init__(self, stub: Any, rpc_callable: type) -> None:
        self.stub = stub
        self.is_async = True
        self._rpc_callable = rpc_callable

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.stub, name)
        if isinstance(value, self._rpc_callable):
            return _Awaiting(value)
        return value


# -- stubs made before install() -------------------------------------------------------------------


def _route(authorized: Any, cache: Any) -> Any:
    """The stub of ours that a pre-install ``AuthorizedStub``'s calls go through, or None.

    Built once per stub, from what it holds: its header snapshot (the client's secret) and the
    address its channel dials (TLS as the SDK decided it for that base).
    """
    state = _state
    if state is None:
        return None
    with _lock:
        route = state.routes.get(authorized)
        if route is not None:
            return route
        route = _build_route(authorized, cache, state.config)
        if route is not None:
            state.routes[authorized] = route
        return route


def _build_route(authorized: Any, cache: Any, config: _Config) -> Any:
    snapshot = tuple(authorized.__dict__.get("metadata") or ())
    pat = token = ""
    for key, value in snapshot:
        if key == AUTHORIZATION and value.startswith("Key "):
            pat = value[4:]
        elif key == SESSION_TOKEN:
            token = value
    target = _dialled(authorized.stub)
    if target is None or not (pat or token):
        _log.warning("clarifai_interceptor.sdk: a stub made before install() kept its channel")
        return None
    https = cache.get(target)
    if https is None and target.endswith(":80"):
        https = cache.get(target[:-3])
    if https is None:
        https = target.endswith(":443") or ".clarifai.com" in target
    where = _Where(target=target, tls=bool(https), root_certificates=None)
    credentials = _credentials(pat, token, "", "")
    own = _own_headers(pat, token)
    if authorized.is_async:
        return _stub(_aio_for(where, credentials, lambda: own, config))
    return _stub(_SdkChannel(_sync_for(where, credentials, config), lambda: own))


def _dialled(stub: Any) -> str | None:
    """The target a pre-install stub's channel dials (grpc keeps it on each multi-callable)."""
    mc = getattr(stub, "ListApps", None)
    target = getattr(mc, "_target", None)  # sync
    if target is None:
        target = getattr(getattr(mc, "_channel", None), "target", None)  # grpc.aio
    if isinstance(target, bytes):
        target = target.decode("ascii", "replace")
    return target if isinstance(target, str) and target else None


# -- ModelClient's async predict ------------------------------------------------------------------


def _async_predict_by_proto(model_client: ModuleType) -> Any:
    """``ModelClient._async_predict_by_proto`` without its loop: one call through our retries.

    The SDK's loop re-sends on a model-loading status for 10 minutes and on *any* exception
    (a scope error included) for 10 s; our policy retries the transient outcomes instead. The
    request and the error message are the SDK's.
    """
    service_pb2 = model_client.service_pb2
    resources_pb2 = model_client.resources_pb2
    status_code_pb2 = model_client.status_code_pb2
    user_error = model_client.UserError
    most = model_client.MAX_MODEL_PREDICT_INPUTS

    async def _async_predict_by_proto(
        self: Any,
        inputs: list[Any],
        method_name: str | None = None,
        inference_params: dict[str, Any] | None = None,
        output_config: dict[str, Any] | None = None,
    ) -> Any:
        if not isinstance(inputs, list):
            raise user_error("Invalid inputs, inputs must be a list of Input objects.")
        if len(inputs) > most:
            raise user_error(f"Too many inputs. Max is {most}.")
        request = service_pb2.PostModelOutputsRequest()
        request.CopyFrom(self.request_template)
        request.inputs.extend(inputs)
        if method_name:
            for inp in request.inputs:
                inp.data.metadata["_method_name"] = method_name
        if inference_params:
            request.model.model_version.output_info.params.update(inference_params)
        if output_config:
            request.model.model_version.output_info.output_config.MergeFrom(
                resources_pb2.OutputConfig(**output_config)
            )
        response = await self.async_stub.PostModelOutputs(request)
        if response.status.code != status_code_pb2.SUCCESS:
            raise Exception(f"Model predict failed with response {response!r}")
        return response

    return _async_predict_by_proto
