"""Filling ``user_app_id`` into requests, without ever mutating the caller's message, and
fixing what a call's retries resend at its first attempt."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from clarifai_grpc.grpc.api import resources_pb2

from ._credentials import Credentials, user_app_id_field

__all__ = ["byte_stream", "fill_copy", "fill_field", "request_stream", "to_bytes"]

_UAI = resources_pb2.UserAppIDSet.DESCRIPTOR.full_name
# message class -> field number of its user_app_id (0: none). Read from the descriptor: the
# number is 1, 2 or 4 depending on the message.
_FIELD_NUMBERS: dict[type, int] = {}


def _field_number(cls: type) -> int:
    number = _FIELD_NUMBERS.get(cls)
    if number is None:
        descriptor = getattr(cls, "DESCRIPTOR", None)
        fields = getattr(descriptor, "fields_by_name", {})
        uai: Any = fields.get("user_app_id")
        kind = getattr(getattr(uai, "message_type", None), "full_name", None)
        number = uai.number if kind == _UAI else 0
        _FIELD_NUMBERS[cls] = number
    return number


def fill_field(credentials: Credentials | None, request: Any) -> int:
    """The field number to fill in ``request`` for these credentials, or 0 to send it as is."""
    if credentials is None or credentials.user_id is None or credentials.kind == "api_key":
        return 0
    number = _field_number(type(request))
    # HasField first: it is cheap, and most requests leave the field unset.
    if number and not (request.HasField("user_app_id") and request.user_app_id.ByteSize()):
        return number
    return 0


def fill_copy(credentials: Credentials | None, request: Any, snapshot: bool = False) -> Any:
    """``request``, or a copy of it with ``user_app_id`` filled in (the interceptors' path).

    ``snapshot``: always a copy (of a message), so that a caller changing ``request`` while its
    call may still be retried does not change what a retry sends.
    """
    number = fill_field(credentials, request)
    if not number and not (snapshot and hasattr(request, "CopyFrom")):
        return request
    copy = type(request)()
    copy.CopyFrom(request)
    if number:
        assert credentials is not None  # noqa: S101 (fill_field said so)
        copy.MergeFromString(user_app_id_field(credentials, number))  # cached bytes
    return copy


def to_bytes(
    serialize: Callable[[Any], bytes] | None, credentials: Credentials | None, request: Any
) -> bytes:
    """``request`` serialized (``serialize`` None: it is bytes already), with ``user_app_id``
    appended when the credentials fill it (no copy made: a field appended to a message's bytes
    is the same as set in it)."""
    data = request if serialize is None else serialize(request)
    number = fill_field(credentials, request)
    if number:
        assert credentials is not None  # noqa: S101 (fill_field said so)
        return bytes(data) + user_app_id_field(credentials, number)
    return data


def byte_stream(
    serialize: Callable[[Any], bytes] | None, credentials: Credentials | None, requests: Any
) -> Callable[[], Iterator[bytes]]:
    """The bytes of a request stream, a fresh iterator per attempt.

    Each message is serialized once, when it is first sent, as gRPC would; a retry of a list or
    tuple resends those same bytes, so a message changed after it was sent is not resent changed.
    An iterator is read once (its call is not retried).
    """
    if not isinstance(requests, list | tuple):
        return lambda: (to_bytes(serialize, credentials, request) for request in requests)
    return _replayed(requests, lambda request: to_bytes(serialize, credentials, request))


def _replayed(
    requests: list[Any] | tuple[Any, ...], prepare: Callable[[Any], Any]
) -> Callable[[], Iterator[Any]]:
    """Every attempt's iterator over ``requests``, each prepared once, when first sent: a retry
    resends what was prepared, whatever became of the message since."""
    sent: dict[int, Any] = {}  # by position: an attempt's sending thread may outlive it

    def replay() -> Iterator[Any]:
        for number, request in enumerate(requests):
            prepared = sent.get(number)
            if prepared is None:
                prepared = sent.setdefault(number, prepare(request))
            yield prepared

    return replay


def request_stream(
    credentials: Credentials | None, requests: Any, snapshot: bool = False
) -> Callable[[], Any]:
    """A fresh request stream per attempt, each message filled as it is sent.

    Only a list or tuple gives the same messages again; an iterator (sync or async) is read once.
    ``snapshot``: a list's messages are copied as first sent, and a retry resends the copies.
    """
    if snapshot and isinstance(requests, list | tuple):
        return _replayed(requests, lambda request: fill_copy(credentials, request, snapshot=True))
    if isinstance(requests, AsyncIterable):
        if credentials is None:
            return lambda: requests

        async def filled() -> AsyncIterator[Any]:
            async for request in requests:
                yield fill_copy(credentials, request)

        return filled
    if credentials is None:
        return lambda: iter(requests)
    return lambda: (fill_copy(credentials, request) for request in requests)
