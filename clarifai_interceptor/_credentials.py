"""Credentials: which secret a call carries, and which user and app it acts on."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from clarifai_grpc.grpc.api import resources_pb2

from .exceptions import MissingCredentialsError

__all__ = ["ENV_VARS", "Credentials", "Kind"]

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

AUTHORIZATION = "authorization"
SESSION_TOKEN = "x-clarifai-session-token"
#: Metadata keys that carry a Clarifai secret: a call that has one is left as the caller made it.
CREDENTIAL_KEYS = frozenset({AUTHORIZATION, SESSION_TOKEN})


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A Clarifai secret and, for a PAT or session token, the user and app it acts on.

    Build one with `from_pat`, `from_api_key`, `from_session_token` or `from_env`. The secret
    never appears in a repr, str, log record or error message.
    """

    kind: Kind
    secret: str = field(repr=False)
    user_id: str | None = None
    app_id: str | None = None
    metadata: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    # field number -> wire bytes of user_app_id (see user_app_id_field); a cache, not state.
    _fields: dict[int, bytes] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        name = _NAMES.get(self.kind)
        if name is None:
            raise ValueError(f"kind must be one of {sorted(_NAMES)}, got {self.kind!r}")
        if not isinstance(self.secret, str) or not self.secret:
            raise ValueError(f"the {name} must be a non-empty string")
        if not _SECRET_RE.fullmatch(self.secret):
            hint = " (pass the secret alone, without 'Key ')" if " " in self.secret else ""
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
            metadata = ((SESSION_TOKEN, self.secret),)
        else:
            metadata = ((AUTHORIZATION, "Key " + self.secret),)
        object.__setattr__(self, "metadata", metadata)

    @classmethod
    def from_pat(
        cls, pat: str, *, user_id: str | None = None, app_id: str | None = None
    ) -> Credentials:
        """Credentials for a personal access token.

        Args:
            pat: The token, without the ``Key `` prefix.
            user_id: The user the calls act on; needed to fill ``user_app_id``.
            app_id: The app the calls act on; needs ``user_id``.

        Raises:
            ValueError: The token or an id is empty or not visible ASCII, or app_id lacks user_id.
        """
        return cls(kind="pat", secret=pat, user_id=user_id, app_id=app_id)

    @classmethod
    def from_api_key(cls, api_key: str) -> Credentials:
        """Credentials for an app-scoped API key (the key implies the user and app).

        Raises:
            ValueError: The key is empty or not visible ASCII.
        """
        return cls(kind="api_key", secret=api_key)

    @classmethod
    def from_session_token(
        cls, token: str, *, user_id: str | None = None, app_id: str | None = None
    ) -> Credentials:
        """Credentials for a session token, sent as ``x-clarifai-session-token``.

        Raises:
            ValueError: As for `from_pat`.
        """
        return cls(kind="session_token", secret=token, user_id=user_id, app_id=app_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Credentials from ``CLARIFAI_PAT``, ``CLARIFAI_API_KEY`` or ``CLARIFAI_SESSION_TOKEN``.

        ``CLARIFAI_USER_ID`` and ``CLARIFAI_APP_ID`` name the user and app for a PAT or session
        token. A variable set to the empty string counts as unset.

        Args:
            environ: Where to read the variables; ``os.environ`` by default.

        Raises:
            MissingCredentialsError: None of the secret variables is set.
            ValueError: More than one secret variable is set, or a value is malformed.
        """
        env = os.environ if environ is None else environ
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
        if kind == "api_key":
            # An API key implies its app; ids set for other tools are not an error here.
            return cls(kind=kind, secret=env[found[0]])
        try:
            return cls(kind=kind, secret=env[found[0]], user_id=user_id, app_id=app_id)
        except ValueError as exc:
            raise ValueError(f"{found[0]} and the ids beside it: {exc}") from None

    @property
    def user_app_id(self) -> resources_pb2.UserAppIDSet | None:
        """A new ``UserAppIDSet`` for the user and app, or None (API key, or no user known)."""
        if self.kind == "api_key" or self.user_id is None:
            return None
        return resources_pb2.UserAppIDSet(user_id=self.user_id, app_id=self.app_id or "")


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
