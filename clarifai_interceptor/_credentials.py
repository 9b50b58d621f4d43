"""Credentials: which secret a call carries, and which user and app it acts on."""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from clarifai_grpc.grpc.api import resources_pb2

from ._compat import slotted
from ._secret import (
    _NO_PICKLE,
    AUTHORIZATION,
    CREDENTIAL_KEYS,
    SESSION_TOKEN,
    CredentialPair,
    Pairs,
    Secret,
)
from .exceptions import MissingCredentialsError, NoUserIdWarning

__all__ = [
    "AUTHORIZATION",
    "CREDENTIAL_KEYS",
    "ENV_VARS",
    "MAX_SECRET_LENGTH",
    "SESSION_TOKEN",
    "Credentials",
    "Kind",
    "Secret",
]

Kind = Literal["pat", "api_key", "session_token"]

#: The environment variables ``Credentials.from_env`` reads, in the order it reports them.
ENV_VARS = (
    "CLARIFAI_PAT",
    "CLARIFAI_API_KEY",
    "CLARIFAI_SESSION_TOKEN",
    "CLARIFAI_USER_ID",
    "CLARIFAI_APP_ID",
)
_SECRET_VARS: dict[str, Kind] = {
    "CLARIFAI_PAT": "pat",
    "CLARIFAI_API_KEY": "api_key",
    "CLARIFAI_SESSION_TOKEN": "session_token",
}
_NAMES = {"pat": "PAT", "api_key": "API key", "session_token": "session token"}
# A header value must be visible ASCII; a space or "Key " prefix would make a second token.
_SECRET_RE = re.compile(r"[!-~]+")
_ID_RE = re.compile(r"[!-~]+")
#: The longest secret accepted, in characters. Clarifai's PATs and keys have 32; a value far
#: longer is a mistake (a file read by accident) and would exceed gRPC's 8 KiB header limit.
MAX_SECRET_LENGTH = 1024

# A PAT without a user is warned about once per process: the first to take this lock warns.
_no_user_warning = threading.Lock()


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A Clarifai secret and, for a PAT or session token, the user and app it acts on.

    Build one with `from_pat`, `from_api_key`, `from_session_token` or `from_env`. The secret
    never appears in a repr, str, log record or error message: ``secret`` is a `Secret`
    (``secret.reveal()`` gives the value), so comparison output (a failing ``assert a == b``
    under pytest), ``dataclasses.asdict`` and ``inspect.getmembers`` show it redacted, and
    `Credentials` refuse to be pickled. ``metadata`` necessarily holds the real header gRPC
    sends; its repr redacts the value.

    Attributes:
        kind: ``"pat"``, ``"api_key"`` or ``"session_token"``.
        secret: The secret; a str given here is wrapped in a `Secret`.
        user_id: The user the calls act on (PAT or session token), or None.
        app_id: The app the calls act on; needs ``user_id``.
        metadata: The header to send, as `Pairs` (a tuple of pairs with a redacting repr).
    """

    kind: Kind
    secret: Secret = field(repr=False)
    user_id: str | None = None
    app_id: str | None = None
    metadata: Pairs = field(init=False, repr=False, compare=False)
    # field number -> wire bytes of user_app_id (see user_app_id_field); a cache, not state.
    _fields: dict[int, bytes] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        name = _NAMES.get(self.kind)
        if name is None:
            raise ValueError(f"kind must be one of {sorted(_NAMES)}, got {self.kind!r}")
        # The value is never bound to a local name: a traceback's locals show only `Secret`s.
        secret = _wrap(self.secret)
        if not isinstance(secret, Secret) or not secret.reveal():
            raise ValueError(f"the {name} must be a non-empty string")
        object.__setattr__(self, "secret", secret)
        if len(secret.reveal()) > MAX_SECRET_LENGTH:
            raise ValueError(
                f"the {name} is {len(secret.reveal())} characters long; at most "
                f"{MAX_SECRET_LENGTH} are accepted (Clarifai's have 32)"
            )
        if not _SECRET_RE.fullmatch(secret.reveal()):
            hint = " (pass the secret alone, without 'Key ')" if " " in secret.reveal() else ""
            raise ValueError(
                f"the {name} may hold only visible ASCII characters: no whitespace, control "
                f"or non-ASCII characters{hint}"
            )
        for attr in ("user_id", "app_id"):
            value = getattr(self, attr)
            if value is not None and not (isinstance(value, str) and _ID_RE.fullmatch(value)):
                raise ValueError(f"{attr} must be a non-empty string of visible ASCII, or None")
        if self.kind == "api_key" and (self.user_id or self.app_id):
            raise ValueError("an API key implies its app: user_id and app_id must be None")
        if self.app_id is not None and self.user_id is None:
            raise ValueError("app_id needs a user_id: give both, or only user_id")
        if self.kind == "session_token":
            header = CredentialPair((SESSION_TOKEN, secret.reveal()))
        else:
            header = CredentialPair((AUTHORIZATION, "Key " + secret.reveal()))
        object.__setattr__(self, "metadata", Pairs((header,)))
        if self.kind == "pat" and self.user_id is None:
            _warn_no_user()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(_NO_PICKLE)

    def __copy__(self) -> Credentials:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> Credentials:
        return self

    @classmethod
    def from_pat(
        cls, pat: str, *, user_id: str | None = None, app_id: str | None = None
    ) -> Credentials:
        """Credentials for a personal access token.

        Without ``user_id``, ``user_app_id`` is never filled in: each request that needs it
        must set it itself (as when calling a model of another user's app). The first such
        PAT of a process warns (`NoUserIdWarning`), since most app calls fail without it.

        Args:
            pat: The token, without the ``Key `` prefix.
            user_id: The user the calls act on; needed to fill ``user_app_id``.
            app_id: The app the calls act on; needs ``user_id``.

        Raises:
            ValueError: The token or an id is empty or not visible ASCII, the token is longer
                than `MAX_SECRET_LENGTH`, or app_id lacks user_id.
        """
        return cls(kind="pat", secret=_wrap(pat), user_id=user_id, app_id=app_id)

    @classmethod
    def from_api_key(cls, api_key: str) -> Credentials:
        """Credentials for an app-scoped API key (the key implies the user and app).

        Raises:
            ValueError: The key is empty or not visible ASCII.
        """
        return cls(kind="api_key", secret=_wrap(api_key))

    @classmethod
    def from_session_token(
        cls, token: str, *, user_id: str | None = None, app_id: str | None = None
    ) -> Credentials:
        """Credentials for a session token, sent as ``x-clarifai-session-token``.

        Raises:
            ValueError: As for `from_pat`.
        """
        return cls(kind="session_token", secret=_wrap(token), user_id=user_id, app_id=app_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from ``CLARIFAI_PAT``, ``CLARIFAI_API_KEY`` or ``CLARIFAI_SESSION_TOKEN``.

        ``CLARIFAI_USER_ID`` and ``CLARIFAI_APP_ID`` name the user and app for a PAT or session
        token. A variable set to the empty string counts as unset.

        Args:
            environ: Where to read the variables (a mapping); ``os.environ`` by default.

        Raises:
            MissingCredentialsError: None of the secret variables is set.
            TypeError: ``environ`` is not a mapping.
            ValueError: More than one secret variable is set, or a value is malformed.
        """
        env = os.environ if environ is None else environ
        if not isinstance(env, Mapping):
            raise TypeError(
                f"environ must be a mapping such as os.environ, not {type(env).__name__}"
            )
        found = [var for var in _SECRET_VARS if env.get(var)]
        if not found:
            raise MissingCredentialsError(
                "no Clarifai credentials: set one of "
                + ", ".join(_SECRET_VARS)
                + " (or pass credentials explicitly)"
            )
        if len(found) > 1:
            raise ValueError(f"more than one Clarifai secret is set ({', '.join(found)}): set one")
        kind = _SECRET_VARS[found[0]]
        user_id = env.get("CLARIFAI_USER_ID") or None
        app_id = env.get("CLARIFAI_APP_ID") or None
        try:
            if kind == "api_key":
                # An API key implies its app; ids set for other tools are not an error here.
                return cls(kind=kind, secret=_wrap(env[found[0]]))
            return cls(kind=kind, secret=_wrap(env[found[0]]), user_id=user_id, app_id=app_id)
        except ValueError as exc:
            beside = "" if kind == "api_key" else " and the ids beside it"
            raise ValueError(f"{found[0]}{beside}: {exc}") from None

    @property
    def user_app_id(self) -> resources_pb2.UserAppIDSet | None:
        """A new ``UserAppIDSet`` for the user and app, or None (API key, or no user known)."""
        if self.kind == "api_key" or self.user_id is None:
            return None
        return resources_pb2.UserAppIDSet(user_id=self.user_id, app_id=self.app_id or "")


def _wrap(value: str | Secret) -> Secret:
    """A str as a `Secret`; anything else as is (``__post_init__`` judges it)."""
    return Secret(value) if isinstance(value, str) else value


def _warn_no_user() -> None:
    if not _no_user_warning.acquire(blocking=False):
        return  # warned already (the lock is never released)
    warnings.warn(
        "a PAT without user_id: user_app_id will not be filled in, so each request that needs "
        "it must set it itself; pass user_id= (and app_id=) to Credentials.from_pat, or set "
        "CLARIFAI_USER_ID, to have it filled. Warned once per process.",
        NoUserIdWarning,
        stacklevel=_outside(),
    )


_HERE = os.path.dirname(os.path.abspath(__file__))  # noqa: PTH100, PTH120


def _outside() -> int:
    """The ``stacklevel`` of the first frame outside this package: the line that built them."""
    level, frame = 2, sys._getframe(2)  # noqa: SLF001 (the caller of _warn_no_user's caller)
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_HERE) or frame.f_code.co_filename == "<string>"
    ):  # "<string>": the __init__ that dataclasses generate
        frame, level = frame.f_back, level + 1
    return level


def user_app_id_field(credentials: Credentials, field_number: int) -> bytes:
    """The wire bytes of ``user_app_id`` as field ``field_number``, to append to a request.

    Protobuf merges a repeated embedded-message field into one, so appending these bytes to a
    request whose ``user_app_id`` is empty is the same as setting it, without copying the request.
    """
    cached = credentials._fields.get(field_number)
    if cached is None:
        uai = credentials.user_app_id
        body = b"" if uai is None else uai.SerializeToString()
        cached = _varint(field_number << 3 | 2) + _varint(len(body)) + body
        credentials._fields[field_number] = cached
    return cached


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
