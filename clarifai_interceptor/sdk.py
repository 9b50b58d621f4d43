"""The Clarifai Python SDK (``clarifai``) through this package's channels: one retry layer.

Call ``install()`` once at start-up, before making SDK clients: every client made after it
(``Model``, ``App``, ``User``, ``Dataset``, ...), sync and async, sends its gRPC calls through
this package's channels: our retries (no ``RetryStub`` waits, no ``ClarifaiChannel`` retries
underneath), retry budget, rate limiting and credential precedence. Like OpenTelemetry's gRPC
instrumentation, it patches the SDK's factories and chases nothing made earlier: a client made
before ``install()`` keeps the SDK's channel and ``RetryStub``. ``uninstall()`` puts them back.

What is patched (`PATCHED`), each under every name the SDK imported it by:

- ``ClarifaiAuthHelper.get_stub_and_channel`` / ``get_async_stub``: channels of ours, built from
  the helper's base (https, or plain http to ``host:port``), root certificates and secret.
- ``create_stub``: ``AuthorizedStub`` without ``RetryStub``; its calls drop the SDK's own
  credential header, so a `use_credentials` block overrides the client's secret.
- ``status_is_retryable``: the SDK's model-loading loops make one round (module-wide: clients
  made before ``install()`` too); our policy retries those statuses.
- ``ModelClient._async_predict_by_proto``: without the loop that re-sends on *any* exception.

``install()`` checks each of these, and what the replacements use, for the expected parameters
(`check_version`): it refuses, patching nothing, only when they moved.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
import threading
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import grpc

from . import aio as _aio
from ._channel import CHANNEL_OPTIONS, resolve_target
from ._channel import wrap_channel as _wrap_channel
from ._compat import slotted
from ._core import DEFAULT_RETRY
from ._policy import RetryPolicy
from ._ratelimit import DEFAULT_RATE_LIMIT, RateLimit
from ._sdk_credentials import _HelperCredentials, _Stub

__all__ = [
    "NEWEST_TESTED",
    "OLDEST_TESTED",
    "PATCHED",
    "Installation",
    "UnsupportedSDKError",
    "check_version",
    "install",
    "installed",
    "uninstall",
]

#: The oldest ``clarifai`` release CI runs this module's tests with (the sdk extra's floor).
OLDEST_TESTED = "11.8.4"
#: The newest ``clarifai`` release CI runs this module's tests with; a newer one that passes
#: the check of what is patched is installed with one logged warning.
NEWEST_TESTED = "12.5.0"

#: What `install` replaces, as ``module:attribute``, with the parameters it must have.
PATCHED: dict[str, str] = {
    "clarifai.client.auth.helper:ClarifaiAuthHelper.get_stub_and_channel": "self",
    "clarifai.client.auth.helper:ClarifaiAuthHelper.get_async_stub": "self",
    "clarifai.client.auth.stub:create_stub": "auth_helper max_retry_attempts is_async",
    "clarifai.utils.misc:status_is_retryable": "status_code",
    "clarifai.client.model_client:ModelClient._async_predict_by_proto": (
        "self inputs method_name inference_params output_config"
    ),
}
# What the replacements use: a callable's parameters, or None (only that it exists).
_USED: dict[str, str | None] = {
    "clarifai.client.auth.stub:AuthorizedStub.__init__": "self auth_helper is_async",
    "clarifai.client.auth.helper:ClarifaiAuthHelper.from_env": None,
    "clarifai.client.auth.helper:base_https_cache": None,
    "clarifai.client.auth.register:RpcCallable": None,
    **dict.fromkeys(
        f"clarifai.client.model_client:{name}"
        for name in ("MAX_MODEL_PREDICT_INPUTS", "UserError", "service_pb2", "resources_pb2")
    ),
    "clarifai.client.model_client:status_code_pb2": None,
}
# The modules that import the patched functions by name (imported first, so that theirs change).
_COPIERS = (
    "clarifai.client",
    "clarifai.client.base",
    "clarifai.client.model_client",
    "clarifai.client.workflow",
)

_log = logging.getLogger("clarifai_interceptor")


class UnsupportedSDKError(RuntimeError):
    """The ``clarifai`` SDK is missing, or what `install` patches moved (see `PATCHED`)."""


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class _Config:
    retry: RetryPolicy | None
    rate_limit: RateLimit | None


class _State:
    """What is installed: the config, and the originals to put back."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.originals: list[tuple[Any, str, Any]] = []  # (owner, attribute, original value)
        self.functions: list[tuple[Any, Any]] = []  # (our function, the SDK's it replaces)


_lock = threading.RLock()
_state: _State | None = None
_warned_newer = False


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


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _resolve(target: str) -> Any:
    module, _, path = target.partition(":")
    value: Any = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _moved() -> list[str]:
    """What `install` needs and does not find as expected, one line each."""
    moved = []
    for target, expected in {**PATCHED, **_USED}.items():
        try:
            value = _resolve(target)
        except (AttributeError, ImportError):
            moved.append(f"{target} is gone")
            continue
        if expected is None:
            continue
        try:
            found = " ".join(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            found = "?"
        if found != expected:
            moved.append(f"{target} takes ({found}), not ({expected})")
    return moved


def check_version() -> str:
    """The installed ``clarifai`` version, once what `install` patches is checked.

    Each target of `PATCHED` (and what the replacements use) must exist with the expected
    parameters. A version newer than `NEWEST_TESTED` that passes is logged as a warning, once.

    Raises:
        UnsupportedSDKError: ``clarifai`` is not installed, does not import, or moved a target.
    """
    global _warned_newer
    try:
        version = _metadata.version("clarifai")
        for name in _COPIERS:
            importlib.import_module(name)
    except _metadata.PackageNotFoundError:
        raise UnsupportedSDKError(
            "the Clarifai SDK is not installed: pip install 'clarifai-interceptor[sdk]'"
        ) from None
    except ImportError as exc:
        raise UnsupportedSDKError(f"clarifai {version} does not import: {exc}") from exc
    moved = _moved()
    if moved:
        raise UnsupportedSDKError(
            f"clarifai {version} changed what clarifai_interceptor.sdk patches (tested: "
            f"{OLDEST_TESTED} to {NEWEST_TESTED}): " + "; ".join(moved)
        )
    if _minor(version) > _minor(NEWEST_TESTED) and not _warned_newer:
        _warned_newer = True
        _log.warning(
            "clarifai_interceptor.sdk: clarifai %s is newer than the newest tested (%s); "
            "what it patches is where it expects",
            version,
            NEWEST_TESTED,
        )
    return version


def install(
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
) -> Installation:
    """Send the gRPC calls of every Clarifai SDK client made from now on through our channels.

    Call it before making clients: one made earlier keeps the SDK's channel and retries.
    Calling it again while installed changes the settings for channels built from then on,
    and patches nothing twice.

    Args:
        retry: The `RetryPolicy` of every SDK channel; None for a single attempt (and then no
            retries at all: the SDK's own are off too).
        rate_limit: The client-side `RateLimit`, passed to every channel; None for none.

    Returns:
        An `Installation`: ``with install(...):`` uninstalls on exit.

    Raises:
        UnsupportedSDKError: ``clarifai`` is missing, or what is patched moved (`check_version`);
            nothing is patched then. A step that fails while patching undoes the others.
        TypeError: ``retry`` or ``rate_limit`` is of the wrong type.
    """
    global _state
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise TypeError(f"rate_limit must be a RateLimit or None, not {type(rate_limit).__name__}")
    config = _Config(retry=retry, rate_limit=rate_limit)
    with _lock:
        check_version()
        if _state is not None:
            _state.config = config
            return Installation()
        state = _State(config)
        try:
            _patch(state)
        except BaseException:
            _restore(state)
            raise
        _state = state
    return Installation()


def uninstall() -> None:
    """Put back everything `install` replaced; harmless when not installed.

    Clients made while installed keep the channels they were given (without ``RetryStub``).
    """
    global _state
    with _lock:
        state, _state = _state, None
        if state is not None:
            _restore(state)


def _restore(state: _State) -> None:
    for owner, name, original in reversed(state.originals):
        setattr(owner, name, original)
    # Modules imported while installed copied our functions by name: give them the SDK's.
    for ours, original in state.functions:
        for module in _sdk_modules():
            for attr, value in list(vars(module).items()):
                if value is ours:
                    setattr(module, attr, original)


def _sdk_modules() -> list[ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "clarifai" or name.startswith("clarifai.")) and isinstance(module, ModuleType)
    ]


def _set(state: _State, owner: Any, name: str, value: Any) -> None:
    original = vars(owner)[name]
    setattr(owner, name, value)
    state.originals.append((owner, name, original))


def _set_everywhere(state: _State, original: Any, value: Any) -> None:
    """Replace a function in every loaded ``clarifai`` module that holds it by name."""
    state.functions.append((value, original))
    for module in _sdk_modules():
        for attr, held in list(vars(module).items()):
            if held is original:
                setattr(module, attr, value)
                state.originals.append((module, attr, original))


def _patch(state: _State) -> None:
    helper_mod = importlib.import_module("clarifai.client.auth.helper")
    stub_mod = importlib.import_module("clarifai.client.auth.stub")
    misc = importlib.import_module("clarifai.utils.misc")
    model_client = importlib.import_module("clarifai.client.model_client")
    rpc_callable = importlib.import_module("clarifai.client.auth.register").RpcCallable
    helper_cls, authorized_cls = helper_mod.ClarifaiAuthHelper, stub_mod.AuthorizedStub

    def get_stub_and_channel(self: Any) -> tuple[Any, grpc.Channel]:
        channel = _sync_channel(self, helper_mod.base_https_cache)
        return _v2_stub(channel), channel

    def get_async_stub(self: Any) -> Any:
        return _v2_stub(_aio_channel(self, helper_mod.base_https_cache))

    def create_stub(
        auth_helper: Any = None, max_retry_attempts: int = 10, is_async: bool = False
    ) -> Any:
        # max_retry_attempts is the SDK's RetryStub's: our policy decides retries instead.
        del max_retry_attempts
        if auth_helper is None:
            auth_helper = helper_cls.from_env()
        return _Stub(authorized_cls(auth_helper, is_async=is_async), auth_helper, rpc_callable)

    def status_is_retryable(status_code: int) -> bool:
        # Our policy retried these statuses already: the SDK's loop would multiply attempts.
        del status_code
        return False

    _set(state, helper_cls, "get_stub_and_channel", get_stub_and_channel)
    _set(state, helper_cls, "get_async_stub", get_async_stub)
    _set_everywhere(state, stub_mod.create_stub, create_stub)
    _set_everywhere(state, misc.status_is_retryable, status_is_retryable)
    _set(
        state,
        model_client.ModelClient,
        "_async_predict_by_proto",
        _async_predict_by_proto(model_client),
    )


def _config() -> _Config:
    state = _state
    return state.config if state is not None else _Config(retry=DEFAULT_RETRY, rate_limit=None)


def _v2_stub(channel: Any) -> Any:
    from clarifai_grpc.grpc.api import service_pb2_grpc  # noqa: PLC0415 (after the quirk fix)

    return service_pb2_grpc.V2Stub(channel)


# -- channels --------------------------------------------------------------------------------------


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


def _dial(where: _Where, grpc_module: Any, **kwargs: Any) -> Any:
    """A channel of ``grpc`` or ``grpc.aio`` to where the SDK would connect, with our options."""
    options = list(CHANNEL_OPTIONS)
    if where.tls:
        credentials = grpc.ssl_channel_credentials(where.root_certificates)
        return grpc_module.secure_channel(where.target, credentials, options=options, **kwargs)
    return grpc_module.insecure_channel(where.target, options=options, **kwargs)


def _limit_target(where: _Where) -> str | None:
    """The target the rate limit is shared under, named as every channel of ours names it
    (``api.clarifai.com:443``), for sync and async clients alike; None for a base the SDK
    accepts and we would not."""
    try:
        return resolve_target(where.target)
    except ValueError:
        return None


def _sync_channel(helper: Any, cache: Any) -> grpc.Channel:
    where, config = _helper_where(helper, cache), _config()
    return _wrap_channel(
        _dial(where, grpc),
        _HelperCredentials(helper),
        target=_limit_target(where),  # None: its rate limit is its own
        retry=config.retry,
        rate_limit=config.rate_limit,
    )


def _aio_channel(helper: Any, cache: Any) -> grpc.aio.Channel:
    where, config = _helper_where(helper, cache), _config()
    interceptors = _aio.interceptors(
        _HelperCredentials(helper),
        retry=config.retry,
        rate_limit=config.rate_limit,
        target=_limit_target(where) or where.target,
    )
    return _dial(where, grpc.aio, interceptors=interceptors)


# -- ModelClient's async predict ------------------------------------------------------------------


def _async_predict_by_proto(m: ModuleType) -> Any:
    """``ModelClient._async_predict_by_proto`` without its loop: one call through our retries.

    The SDK's loop re-sends on a model-loading status for 10 minutes and on *any* exception
    (a scope error included) for 10 s; our policy retries the transient outcomes instead. The
    request and the error message are the SDK's.
    """

    async def _async_predict_by_proto(
        self: Any,
        inputs: list[Any],
        method_name: str | None = None,
        inference_params: dict[str, Any] | None = None,
        output_config: dict[str, Any] | None = None,
    ) -> Any:
        if not isinstance(inputs, list):
            raise m.UserError("Invalid inputs, inputs must be a list of Input objects.")
        if len(inputs) > m.MAX_MODEL_PREDICT_INPUTS:
            raise m.UserError(f"Too many inputs. Max is {m.MAX_MODEL_PREDICT_INPUTS}.")
        request = m.service_pb2.PostModelOutputsRequest()
        request.CopyFrom(self.request_template)
        request.inputs.extend(inputs)
        if method_name:
            for inp in request.inputs:
                inp.data.metadata["_method_name"] = method_name
        if inference_params:
            request.model.model_version.output_info.params.update(inference_params)
        if output_config:
            request.model.model_version.output_info.output_config.MergeFrom(
                m.resources_pb2.OutputConfig(**output_config)
            )
        response = await self.async_stub.PostModelOutputs(request)
        if response.status.code != m.status_code_pb2.SUCCESS:
            raise Exception(f"Model predict failed with response {response!r}")
        return response

    return _async_predict_by_proto
