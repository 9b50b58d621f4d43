"""The one place that merges the caller's metadata with the credentials' headers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from ._credentials import CREDENTIAL_KEYS, Credentials
from ._policy import ATTEMPT_HEADER
from ._secret import CredentialPair, Pairs

__all__ = ["Pairs", "for_attempt", "merge", "validate"]

# What grpc-core accepts; anything else fails at call time as an opaque INTERNAL.
_KEY_RE = re.compile(r"[0-9a-z_.\-]+")
_VALUE_RE = re.compile(r"[ -~]*")
# Entries grpc itself puts in the caller's metadata (grpc.aio carries ``compression=`` so);
# grpcio 1.78 and older spell that key as bytes.
_GRPC_OWN = frozenset({"grpc-internal-encoding-request", b"grpc-internal-encoding-request"})
_NONE = Pairs(())


def validate(key: object, value: object) -> None:
    """Refuse a metadata entry gRPC would reject, naming its key (never its value)."""
    if key not in _GRPC_OWN and (
        not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key.startswith("grpc-")
    ):
        raise ValueError(
            f"invalid metadata key {key!r}: keys are lowercase ASCII letters, digits, '-', '_' "
            "or '.', and may not start with 'grpc-'"
        )
    if isinstance(key, str) and key.endswith("-bin"):
        if not isinstance(value, bytes):
            raise ValueError(f"metadata value for binary key {key!r} must be bytes")
    elif not isinstance(value, str) or not _VALUE_RE.fullmatch(value):
        raise ValueError(
            f"invalid metadata value for {key!r}: it must be a str of printable ASCII "
            "(no newline or control character); binary values need a key ending in '-bin'"
        )


def merge(
    metadata: Iterable[tuple[str, Any]] | None, credentials: Credentials | None
) -> tuple[Pairs, bool]:
    """The metadata to send, and whether the credentials' headers were added.

    A credential header the caller passed wins: then nothing is added (exactly one is sent);
    with ``credentials`` None (the call's own call credentials authenticate it), nothing either.
    Either way the result is `Pairs`, whose repr redacts credential values.

    Raises:
        ValueError: ``metadata`` is not a collection of ``(key, value)`` pairs, or an entry is
            one gRPC would refuse (named by its position or key, never its value).
    """
    if not metadata:  # None, or empty (grpc.aio passes an empty Metadata)
        return (_NONE, False) if credentials is None else (credentials.metadata, True)
    kind = type(metadata)
    if (
        kind is not tuple
        and kind is not list
        # grpc.aio's own, a Mapping (that iterates pairs) on grpcio 1.62 and older
        and not isinstance(metadata, grpc.aio.Metadata)
        and (isinstance(metadata, str | bytes | Mapping) or not isinstance(metadata, Iterable))
    ):
        raise ValueError(
            f"metadata must be a sequence of (key, value) pairs, not a {type(metadata).__name__}"
        )
    pairs = tuple(metadata)
    add = True
    for pair in pairs:
        if type(pair) is not tuple or len(pair) != 2:
            _check_pair(pairs, pair)
        key, value = pair
        validate(key, value)
        if key in CREDENTIAL_KEYS:
            add = False
    if add and credentials is not None:
        return Pairs((*pairs, *credentials.metadata)), True
    # The caller's own credential header: ours to carry, so it prints redacted too.
    return Pairs(CredentialPair(p) if p[0] in CREDENTIAL_KEYS else p for p in pairs), False


def _check_pair(pairs: tuple[Any, ...], pair: object) -> None:
    """Refuse an entry that is not a pair, naming its position and type (never its value)."""
    if isinstance(pair, list) and len(pair) == 2:
        return
    size = f" of length {len(pair)}" if isinstance(pair, tuple | list | str) else ""
    number = next(i for i, entry in enumerate(pairs) if entry is pair)
    raise ValueError(
        f"metadata entry {number} is not a (key, value) pair: a {type(pair).__name__}{size}"
    )


def for_attempt(pairs: Pairs, number: int) -> Pairs:
    """The metadata for attempt ``number``: retry k carries ``x-retry-attempt: k``."""
    if number == 1:
        return pairs
    kept = [pair for pair in pairs if pair[0] != ATTEMPT_HEADER]  # one, ours, on a retry
    kept.append((ATTEMPT_HEADER, str(number - 1)))
    return Pairs(kept)
