"""Containers that hold a secret but never show it: in a repr, a diff, a pickle or frame locals.

gRPC needs the real header value, so the metadata we hand it holds the secret; these types keep
it out of what tools print: a failing ``assert`` under pytest, ``dataclasses.asdict``,
``traceback.TracebackException(capture_locals=True)``, a logging interceptor stacked below ours.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

__all__ = [
    "AUTHORIZATION",
    "CREDENTIAL_KEYS",
    "REDACTED",
    "SESSION_TOKEN",
    "CredentialPair",
    "Pairs",
    "SafeMetadata",
    "Secret",
]

AUTHORIZATION = "authorization"
SESSION_TOKEN = "x-clarifai-session-token"
#: Metadata keys that carry a Clarifai secret: a call that has one is left as the caller made it.
CREDENTIAL_KEYS = frozenset({AUTHORIZATION, SESSION_TOKEN})
#: What a repr shows in place of a secret.
REDACTED = "<redacted>"


class Secret:
    """A secret string whose repr and str are redacted; `reveal` gives the value.

    Two are equal when their values are (compared in constant time); the value is held in a
    closure, so ``vars``, ``inspect.getmembers`` and ``__slots__`` walks do not find it, and a
    ``Secret`` refuses to be pickled (the pickle would hold the value in clear).
    """

    __slots__ = ("_value",)
    _value: Callable[[], str]

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")

        def reveal() -> str:
            return value

        object.__setattr__(self, "_value", reveal)

    def reveal(self) -> str:
        """The secret itself: for the header, and nothing that prints."""
        return self._value()

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash((Secret, self.reveal()))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __copy__(self) -> Secret:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> Secret:
        return self

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(_NO_PICKLE)


_NO_PICKLE = (
    "Clarifai credentials cannot be pickled: the pickle would hold the secret in clear; "
    "build them again where they are needed (for example with Credentials.from_env())"
)


def _shown(pair: Any) -> Any:
    """``pair`` as a repr may show it: a credential header's value redacted."""
    if isinstance(pair, tuple) and len(pair) == 2 and pair[0] in CREDENTIAL_KEYS:
        return (pair[0], REDACTED)
    return pair


class CredentialPair(tuple[str, str]):
    """One credential header, ``(key, value)``, whose repr redacts the value.

    gRPC copies our metadata into tuples of its own (``tuple(metadata)``); the pairs stay ours,
    so those copies print redacted too, and none of them can be pickled.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr((self[0], REDACTED))

    __str__ = __repr__

    def __copy__(self) -> CredentialPair:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> CredentialPair:
        return self

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(_NO_PICKLE)


class Pairs(tuple[tuple[str, Any], ...]):
    """The metadata we send: a tuple of ``(key, value)`` pairs whose repr redacts credentials.

    gRPC takes it as any tuple of pairs and sends the real values.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(tuple(_shown(pair) for pair in self))

    __str__ = __repr__


class SafeMetadata(grpc.aio.Metadata):  # type: ignore[misc]
    """A ``grpc.aio.Metadata`` whose repr redacts credential values (for aio call details)."""

    def __repr__(self) -> str:
        return f"Metadata({tuple(_shown(pair) for pair in self)!r})"

    __str__ = __repr__
