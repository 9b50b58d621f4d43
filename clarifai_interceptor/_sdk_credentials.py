"""The Clarifai SDK's credentials as a channel's default (for ``clarifai_interceptor.sdk``):
the client's own secret, user and app become its channel's `Credentials`, and the header the
SDK passes on every call, equal to the client's own, is dropped so that ``use_credentials``
wins."""

from __future__ import annotations

from typing import Any

from ._credentials import AUTHORIZATION, SESSION_TOKEN, Credentials


class _HelperCredentials:
    """A credentials provider reading a ``ClarifaiAuthHelper`` (its PAT may be set later)."""

    __slots__ = ("_cached", "_helper")

    def __init__(self, helper: Any) -> None:
        self._helper = helper
        self._cached: tuple[tuple[str, str, str, str], Credentials] | None = None

    def __call__(self) -> Credentials:
        helper = vars(self._helper)
        key = tuple(helper.get(name) or "" for name in ("_pat", "_token", "user_id", "app_id"))
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        credentials = _credentials(*key)
        self._cached = (key, credentials)  # type: ignore[assignment]
        return credentials


def _own(helper: Any) -> tuple[str, str] | None:
    """The credential header the SDK itself sends for this helper."""
    pat, token = vars(helper).get("_pat"), vars(helper).get("_token")
    return (AUTHORIZATION, f"Key {pat}") if pat else (SESSION_TOKEN, token) if token else None


def _credentials(pat: str, token: str, user_id: str, app_id: str) -> Credentials:
    user = user_id or None
    app = (app_id or None) if user else None
    if pat:
        return Credentials.from_pat(pat, user_id=user, app_id=app)
    if token:
        return Credentials.from_session_token(token, user_id=user, app_id=app)
    # The SDK's own error (ClarifaiAuthHelper.metadata), raised only if a call needs it.
    raise Exception("'token' or 'pat' needed to be provided in the query params or env vars.")


def _strip(metadata: Any, own: tuple[str, str] | None) -> Any:
    """The call's metadata without the SDK's own credential header (None if nothing is left)."""
    if not metadata or not own:
        return metadata
    return tuple(pair for pair in metadata if (pair[0], pair[1]) != own) or None


class _Stub:
    """What `create_stub` returns: ``AuthorizedStub``, one attempt, its own header dropped.

    An async stub's methods keep ``RetryStub``'s call shape (``ModelClient`` awaits what they
    return: the response for a unary call, an async iterator for a response stream).
    """

    def __init__(self, stub: Any, helper: Any, rpc_callable: type) -> None:
        stub.metadata = _strip(stub.metadata, _own(helper)) or ()
        self.stub, self.is_async = stub, stub.is_async
        self._helper, self._rpc_callable = helper, rpc_callable

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.stub, name)
        if isinstance(value, self._rpc_callable):
            return _Call(value, self._helper, self.is_async)
        return value


class _Call:
    __slots__ = ("_async", "_helper", "f")

    def __init__(self, f: Any, helper: Any, is_async: bool) -> None:
        self.f, self._helper, self._async = f, helper, is_async

    def __repr__(self) -> str:
        return repr(self.f)

    def _strip(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "metadata" in kwargs:
            kwargs["metadata"] = _strip(kwargs["metadata"], _own(self._helper))
        return kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._async:
            return self._awaited(*args, **self._strip(kwargs))
        return self.f(*args, **self._strip(kwargs))

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self.f.future(*args, **self._strip(kwargs))

    async def _awaited(self, *args: Any, **kwargs: Any) -> Any:
        call = self.f(*args, **kwargs)
        return call if hasattr(call, "__aiter__") else await call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)
