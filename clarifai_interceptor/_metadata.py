"""The one place that merges the caller's metadata with the credentials' headers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._credentials import CREDENTIAL_KEYS, Credentials
from ._retry import ATTEMPT_HEADER

__all__ = ["Pairs", "for_attempt", "merge", "validate"]

Pairs = tuple[tuple[str, Any], ...]

# What grpc-core accepts; anything else fails at call time as an opaque INTERNAL.
_KEY_RE = re.compile(r"[0-9a-z_.\-]+")
_VALUE_RE = re.compile(r"[ -~]*")
# Entries grpc itself puts in the caller's metadata (grpc.aio carries ``compression=`` so).
_GRPC_OWN = frozenset({"grpc-internal-encoding-request"})


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
    metadata: Iterable[tuple[str, Any]] | None, credentials: Credentials
) -> tuple[Pairs, bool]:
    """The metadata to send, and whether the credentials' headers were added.

    A credential header the caller passed wins: then nothing is added (exactly one is sent).
    """
    if not metadata:  # None, or empty (grpc.aio passes an empty Metadata)
        return credentials.metadata, True
    pairs = tuple(metadata)
    add = True
    for key, value in pairs:
        validate(key, value)
        if key in CREDENTIAL_KEYS:
            add = False
    return (pairs + credentials.metadata if add else pairs), add


def for_attempt(pairs: Pairs, number: int) -> Pairs:
    """The metadata for attempt ``number``: retry k carries ``x-retry-attempt: k``."""
    if number == 1:
        return pairs
    kept = tuple(pair for pair in pairs if pair[0] != ATTEMPT_HEADER)  # one, ours, on a retry
    return (*kept, (ATTEMPT_HEADER, str(number - 1)))
