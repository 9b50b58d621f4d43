"""One CLI call, made and observed: what was sent (secrets redacted), each attempt's wait, the
outcome, and the error a command reports (`CliError`). ``__main__`` runs the commands."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2

from . import NEVER_RETRIED_STATUSES
from ._cli_parser import EXIT_AUTH, EXIT_FAILURE
from ._secret import CREDENTIAL_KEYS
from ._target import redact

_V2 = service_pb2.DESCRIPTOR.services_by_name["V2"]

_AUTH_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_STATUS_CODES = frozenset(status_code_pb2.StatusCode.values())
# A PAT call that names no user (CLARIFAI_USER_ID unset) is refused as an invalid request.
_AUTH_STATUSES = frozenset(
    status_code_pb2.StatusCode.Name(s)
    for s in (*NEVER_RETRIED_STATUSES, status_code_pb2.CONN_INVALID_REQUEST)
)
_PAD = "      "
_SHOWN = 200  # characters of a target in a message
_SAID = 1000  # characters of a server's description in a message

Say = Callable[[str], None]


class CliError(Exception):
    """A failure reported as one line on stderr, with the exit status it maps to."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(_line(message))
        self.status = status


def _line(text: object, cut: int | None = None) -> str:
    """``text`` on one line; cut to ``cut`` characters (with "...") when it is unbounded text
    from elsewhere (a server's description): never cut the explanation of an error."""
    line = " ".join(str(text or "").split())
    return line if cut is None or len(line) <= cut else line[:cut] + "..."


def _where(target: str) -> str:
    """A target for a message: user info redacted (checked targets have none), cut."""
    text = redact(target)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


@dataclass(frozen=True)
class _Case:
    name: str
    method: str
    story: str
    request: Any
    script: tuple[Any, ...] = ()
    attempts: int | None = None
    status: str = "SUCCESS"
    messages: int | None = None
    narrow: bool = False  # made with the narrow API key, not the channel's PAT


class _Outcome(NamedTuple):
    code: str  # the gRPC status code's name
    status: str | None  # the Clarifai body status of the (last) response, if any
    description: str
    messages: int
    response: Any


class _Waits(logging.Handler):
    """Collects the waits the retry engine logs (one DEBUG record per retry), echoing each."""

    def __init__(self, say: Say) -> None:
        super().__init__(logging.DEBUG)
        self.say, self.waits = say, list[float]()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args  # (method, attempt, outcome, wait): see instrumentation._logging
        if str(record.msg).startswith("retrying") and isinstance(args, tuple) and len(args) == 4:
            _, n, got, wait = args
            if isinstance(n, int) and isinstance(wait, int | float):
                self.waits.append(round(float(wait), 3))
                self.say(
                    f"{_PAD}attempt {n} got {got}; waiting {wait:.2f} s before attempt {n + 1}"
                )


@contextlib.contextmanager
def _watching(say: Say) -> Iterator[_Waits]:
    logger = logging.getLogger("clarifai_interceptor")
    handler, level = _Waits(say), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _invoke(stub: Any, method: str, request: Any, timeout: float) -> _Outcome:
    call, last, count = getattr(stub, method), None, 0
    try:
        if _V2.methods_by_name[method].server_streaming:
            for last in call(request, timeout=timeout):  # noqa: B007 (the last one is kept)
                count += 1
        else:
            last, count = call(request, timeout=timeout), 1
    except grpc.RpcError as exc:
        return _Outcome(exc.code().name, None, _line(exc.details(), _SAID), count, None)
    if last is None:
        return _Outcome("OK", None, "", 0, None)
    code = last.status.code
    name = status_code_pb2.StatusCode.Name(code) if code in _STATUS_CODES else f"status {code}"
    return _Outcome("OK", name, _line(last.status.description, _SAID), count, last)


def _seen(metadata: Any, request: Any) -> dict[str, Any]:
    """One attempt's metadata (secrets redacted) and ``user_app_id``, as JSON values."""
    shown = []
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"  # noqa: PLW2901
        elif key in CREDENTIAL_KEYS:
            value = "Key <redacted>" if value.startswith("Key ") else "<redacted>"  # noqa: PLW2901
        shown.append([key, value])
    uai = getattr(request, "user_app_id", None)
    ids = {"user_id": uai.user_id, "app_id": uai.app_id} if uai and uai.ByteSize() else None
    return {"metadata": shown, "user_app_id": ids}


def _run(
    case: _Case, stub: Any, timeout: float, say: Say, observe: Callable[[], list[Any]], seen_as: str
) -> tuple[dict[str, Any], _Outcome]:
    """Make the case's call and report it; ``observe`` gives each attempt's metadata and request."""
    with _watching(say) as watch:
        outcome = _invoke(stub, case.method, case.request, timeout)
    attempts = observe()
    wanted = {"attempts": case.attempts, "grpc_code": "OK", "status": case.status}
    wanted = {k: v for k, v in {**wanted, "messages": case.messages}.items() if v is not None}
    result: dict[str, Any] = {
        "name": case.name,
        "method": case.method,
        "attempts": len(attempts),
        "waits": watch.waits,
        "grpc_code": outcome.code,
        "status": outcome.status,
        "description": outcome.description,
        "messages": outcome.messages,
        seen_as: _seen(*attempts[-1]) if attempts else None,
        "expected": wanted,
    }
    result["ok"] = len(watch.waits) == len(attempts) - 1 and all(
        result[key] == value for key, value in wanted.items()
    )
    waits = ", ".join(f"{wait:.2f} s" for wait in watch.waits) or "none"
    detail = f" ({outcome.description})" if outcome.description else ""
    say(f"{_PAD}final: gRPC {outcome.code}, status {outcome.status or '-'}{detail}")
    say(f"{_PAD}attempts: {len(attempts)}; waits: {waits}; messages: {outcome.messages}")
    if attempts:
        seen = result[seen_as]
        shown = [f"{key}: {value}" for key, value in seen["metadata"] if key != "user-agent"]
        ids = seen["user_app_id"]
        shown.append(f"user_app_id: {ids['user_id']}/{ids['app_id']}" if ids else "no user_app_id")
        say(f"{_PAD}{seen_as} (last attempt): {', '.join(shown)}")
    expected = ", ".join(f"{key} {value}" for key, value in wanted.items())
    say(f"{_PAD}{'as expected' if result['ok'] else 'NOT AS EXPECTED'} ({expected})")
    return result, outcome


def _failure(
    method: str, outcome: _Outcome, target: str, timeout: float, who: str
) -> CliError | None:
    """None for a success; else the one-line error that explains it, with its exit status."""
    if outcome.code == "OK" and outcome.status == "SUCCESS":
        return None
    said = outcome.status or outcome.code
    detail = f" ({outcome.description})" if outcome.description else ""
    if outcome.code in _AUTH_CODES or outcome.status in _AUTH_STATUSES:
        return CliError(f"Clarifai refused the {who}: {said}{detail}", EXIT_AUTH)
    if outcome.code == "UNAVAILABLE":
        return CliError(f"cannot reach {_where(target)}: UNAVAILABLE{detail}")
    if outcome.code == "DEADLINE_EXCEEDED":
        return CliError(f"no answer from {_where(target)} within {timeout:g} s (DEADLINE_EXCEEDED)")
    return CliError(f"{method} failed: {said}{detail}")
