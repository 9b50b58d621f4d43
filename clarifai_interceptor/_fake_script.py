"""What a `FakeClarifai` plays: the outcomes a test scripts (`Fail`, `Status`, `Reply`,
`Stream`, `Delay`), the calls it records (`RecordedCall`), and the readers of both. Public
through ``clarifai_interceptor.testing``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias, cast

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2
from clarifai_grpc.grpc.auth.scope import scope_pb2
from clarifai_grpc.grpc.auth.util import extension_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ._secret import AUTHORIZATION, CREDENTIAL_KEYS, SESSION_TOKEN

_SERVICE = service_pb2.DESCRIPTOR.services_by_name["V2"]
_METHODS: Mapping[str, MethodDescriptor] = _SERVICE.methods_by_name
_ALL_SCOPES = frozenset(name for name in scope_pb2.S.keys() if name != "undef")  # noqa: SIM118
#: Scopes each method needs: Clarifai's own ``cl_depending_scopes`` method option.
_REQUIRED_SCOPES: Mapping[str, frozenset[str]] = {
    name: frozenset(
        scope_pb2.S.Name(value)
        for value in method.GetOptions().Extensions[extension_pb2.cl_depending_scopes]
    )
    for name, method in _METHODS.items()
}
_DEFAULT_STREAM_LENGTH = 3
_NO_USER = (
    "Invalid request: a PAT acts for a user, so the request must name the user (and app) in "
    "user_app_id"
)


@dataclass(frozen=True)
class Fail:
    """Abort the call with a gRPC status code (a `grpc.RpcError` for the caller).

    Attributes:
        code: The gRPC status code.
        details: The status details string.
        trailing_metadata: Trailing metadata set before aborting.
    """

    code: grpc.StatusCode
    details: str = ""
    trailing_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Status:
    """Reply gRPC OK with an empty response whose in-body Clarifai status is set.

    Attributes:
        code: The Clarifai status code (``status_code_pb2``), e.g. 11005 ``CONN_THROTTLED``.
        description: The status description.
    """

    code: int
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """Reply with exactly this message (one message for a server-streaming method).

    Attributes:
        message: A message of the method's response type.
    """

    message: Message


@dataclass(frozen=True)
class Stream:
    """For server-streaming methods: send messages, then end OK or fail mid-stream.

    Attributes:
        messages: Messages of the method's response type, sent in order.
        error: If set, the call aborts with it after the messages.
    """

    messages: Sequence[Message]
    error: Fail | None = None


@dataclass(frozen=True)
class Delay:
    """Wait, then behave as `then`. The wait ends early if the call is cancelled or times out.

    Attributes:
        seconds: How long to wait.
        then: The outcome after the wait (not played if the call ended meanwhile).
    """

    seconds: float
    then: Outcome


#: One scripted answer. A bare `grpc.StatusCode` means `Fail(code)`, a bare `int` means
#: `Status(code)`, a bare `Message` means `Reply(message)`.
Outcome: TypeAlias = Fail | Status | Reply | Stream | Delay | grpc.StatusCode | int | Message
_Played: TypeAlias = Fail | Status | Reply | Stream | Delay


@dataclass(frozen=True, repr=False)
class RecordedCall:
    """One call the fake received.

    Attributes:
        method: Short method name, e.g. ``"PostModelOutputs"``.
        metadata: Invocation metadata as ``(key, value)`` pairs in order. Values are `str`,
            except for binary ``-bin`` keys, whose values are `bytes`.
        requests: The request message(s): one for unary requests, all of them for client streams.
        time: `time.monotonic()` when the call arrived.
    """

    method: str
    metadata: tuple[tuple[str, str | bytes], ...]
    requests: tuple[Message, ...]
    time: float

    @property
    def request(self) -> Message:
        """The first request message."""
        return self.requests[0]

    def header(self, key: str) -> str | None:
        """Return the value of the first text metadata entry with this key, or None."""
        values = self.headers(key)
        return values[0] if values else None

    def headers(self, key: str) -> list[str]:
        """Return every text value sent under this key, in order (``-bin`` values are skipped)."""
        return [value for k, value in self.metadata if k == key and isinstance(value, str)]

    def __repr__(self) -> str:
        """Describe the call with secret header values redacted."""
        shown = tuple((k, "<redacted>" if k in CREDENTIAL_KEYS else v) for k, v in self.metadata)
        kinds = [type(request).__name__ for request in self.requests]
        return (
            f"RecordedCall(method={self.method!r}, metadata={shown!r}, "
            f"requests={kinds!r}, time={self.time!r})"
        )


def _method(name: str) -> MethodDescriptor:
    try:
        return _METHODS[name]
    except KeyError:
        msg = f"unknown clarifai.api.V2 method: {name!r}"
        raise ValueError(msg) from None


def _normalize(method: MethodDescriptor, outcome: Outcome) -> _Played:
    """Turn a shorthand outcome into its dataclass and check it fits the method."""
    if isinstance(outcome, grpc.StatusCode):
        return Fail(outcome)
    if isinstance(outcome, int):
        return Status(outcome)
    if isinstance(outcome, Message):
        outcome = Reply(outcome)
    if isinstance(outcome, Delay):
        return Delay(outcome.seconds, _normalize(method, outcome.then))
    if isinstance(outcome, Stream) and not method.server_streaming:
        msg = f"Stream outcome for {method.name}, which is not server-streaming"
        raise ValueError(msg)
    messages = [outcome.message] if isinstance(outcome, Reply) else []
    messages += list(outcome.messages) if isinstance(outcome, Stream) else []
    for message in messages:
        if message.DESCRIPTOR.full_name != method.output_type.full_name:
            msg = f"{method.name} replies {method.output_type.name}, not {message.DESCRIPTOR.name}"
            raise ValueError(msg)
    if not isinstance(outcome, Fail | Status | Reply | Stream):
        msg = f"not an outcome: {type(outcome).__name__}"
        raise TypeError(msg)
    return outcome


def _secret_of(call: RecordedCall) -> tuple[str, Status | None]:
    """The call's secret, from ``authorization: Key <secret>`` or the session token header."""
    authorization = call.header(AUTHORIZATION)
    invalid = status_code_pb2.CONN_KEY_INVALID
    if authorization is not None:
        scheme, _, secret = authorization.partition(" ")
        if scheme != "Key" or not secret:
            return "", Status(invalid, "Invalid request: authorization is not 'Key <secret>'")
        return secret, None
    token = call.header(SESSION_TOKEN)
    if token is None:
        return "", Status(invalid, "Invalid request: no authorization header")
    return token, None


def _names_a_user(request: Message) -> bool:
    """Whether a request names the user a PAT acts for (True where it has no such field)."""
    if "user_app_id" not in request.DESCRIPTOR.fields_by_name:
        return True
    return bool(cast("Any", request).user_app_id.user_id)


def _status_message(method: MethodDescriptor, code: int, description: str = "") -> Message:
    message = GetMessageClass(method.output_type)()
    response: Any = message
    response.status.code = code
    response.status.description = description
    return message


def _abort(context: grpc.ServicerContext, fail: Fail) -> NoReturn:
    if fail.trailing_metadata:
        context.set_trailing_metadata(fail.trailing_metadata)
    context.abort(fail.code, fail.details)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
