"""Filling ``user_app_id`` into requests, without ever mutating the caller's message."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from clarifai_grpc.grpc.api import resources_pb2

from ._credentials import Credentials, user_app_id_field

__all__ = ["Filled", "fill_copy", "fill_field", "fill_wrap", "filling_serializer", "request_stream"]

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


def fill_copy(credentials: Credentials | None, request: Any) -> Any:
    """``request``, or a copy of it with ``user_app_id`` filled in (the interceptor path)."""
    number = fill_field(credentials, request)
    if not number:
        return request
    assert credentials is not None  # noqa: S101 (fill_field said so)
    copy = type(request)()
    copy.CopyFrom(request)
    copy.MergeFromString(user_app_id_field(credentials, number))  # cached bytes: no new message
    return copy


class Filled:
    """A request paired with the ``user_app_id`` bytes `filling_serializer` appends to it."""

    __slots__ = ("request", "suffix")

    def __init__(self, request: Any, suffix: bytes) -> None:
        self.request = request
        self.suffix = suffix


def fill_wrap(credentials: Credentials | None, request: Any) -> Any:
    """``request``, or a `Filled` that serializes with ``user_app_id`` set (no copy made)."""
    number = fill_field(credentials, request)
    if not number:
        return request
    assert credentials is not None  # noqa: S101 (fill_field said so)
    return Filled(request, user_app_id_field(credentials, number))


def filling_serializer(serializer: Any) -> Any:
    """Wrap a request serializer so that it also serializes `Filled` requests."""
    if serializer is None:
        return None

    def serialize(request: Any) -> bytes:
        if type(request) is Filled:
            return bytes(serializer(request.request)) + request.suffix
        return bytes(serializer(request))

    return serialize


def request_stream(
    credentials: Credentials | None, requests: Any, fill: Callable[[Any, Any], Any] = fill_copy
) -> Callable[[], Any]:
    """A fresh request stream per attempt, each message filled as it is sent.

    Only a list or tuple gives the same messages again; an iterator (sync or async) is read once.
    """
    if isinstance(requests, AsyncIterable):
        if credentials is None:
            return lambda: requests

        async def filled() -> AsyncIterator[Any]:
            async for request in requests:
                yield fill(credentials, request)

        return filled
    if credentials is None:
        return lambda: iter(requests)
    return lambda: (fill(credentials, request) for request in requests)
