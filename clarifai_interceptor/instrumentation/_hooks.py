"""The process-wide hooks: who is told when a retry is scheduled and when a retried call ends.

The engine calls `retry_scheduled` and `call_ended`; both read one module global and return at
once when nothing is registered. A hook (or a context manager it returned) that raises is logged
on ``clarifai_interceptor`` and skipped: instrumentation never breaks a call.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._data import CallSummary, RetryDetails
from ._logging import LoggingHook

__all__ = [
    "CallEndHook",
    "RetryHook",
    "call_ended",
    "get_on_retry_hooks",
    "retry_scheduled",
    "set_on_retry_hooks",
]

log = logging.getLogger("clarifai_interceptor")


@runtime_checkable
class RetryHook(Protocol):
    """A callable told of each retry scheduled, before the wait.

    It may return a context manager: it is entered before the wait and left before the next
    attempt (or when the call ends instead). An object that also has an
    ``on_call_end(summary: CallSummary)`` method is told how each retried call ended.
    """

    def __call__(self, details: RetryDetails) -> AbstractContextManager[Any] | None:
        """Be told of a retry; optionally return a context manager spanning its wait."""


@runtime_checkable
class CallEndHook(Protocol):
    """A hook that also wants a `CallSummary` of each call that was retried, throttled or cut."""

    def on_call_end(self, summary: CallSummary) -> None:
        """Be told how a call that was retried, throttled or cut short ended."""


class _Hooks(NamedTuple):
    retry: tuple[RetryHook, ...]
    end: tuple[Callable[[CallSummary], object], ...]


def _build(hooks: tuple[RetryHook, ...]) -> _Hooks:
    ends = []
    for hook in hooks:
        end = getattr(hook, "on_call_end", None)
        if end is not None:
            ends.append(end)
    return _Hooks(hooks, tuple(ends))


_DEFAULT: tuple[RetryHook, ...] = (LoggingHook(),)
# One global, replaced whole: a reader sees the old set or the new one, never a mix.
_STATE: _Hooks = _build(_DEFAULT)
_LOCK = threading.Lock()
_REPORTED: set[int] = set()  # hooks whose failure was logged with a traceback already


def set_on_retry_hooks(hooks: Iterable[RetryHook] | None) -> None:
    """Set the hooks told of every retry, process-wide (every channel, interceptor and task).

    Args:
        hooks: Callables taking a `RetryDetails`; each may return a context manager spanning
            the wait, and may have an ``on_call_end(summary)`` method for `CallSummary`
            records. None restores the default (a `LoggingHook`); an empty iterable turns all
            hooks off.

    Raises:
        TypeError: ``hooks`` is not an iterable of callables (nothing is changed then).
    """
    global _STATE
    if hooks is None:
        new = _DEFAULT
    else:
        if isinstance(hooks, str | bytes) or not isinstance(hooks, Iterable):
            raise TypeError(f"hooks must be an iterable of callables, not {type(hooks).__name__}")
        new = tuple(hooks)
        for hook in new:
            if not callable(hook):
                raise TypeError(
                    f"hooks must be callables taking RetryDetails, got {type(hook).__name__}"
                )
            end = getattr(hook, "on_call_end", None)
            if end is not None and not callable(end):
                raise TypeError(f"{type(hook).__name__}.on_call_end must be callable")
    with _LOCK:
        _STATE = _build(new)
        _REPORTED.clear()


def get_on_retry_hooks() -> tuple[RetryHook, ...]:
    """The hooks told of every retry now (by default ``(LoggingHook(),)``)."""
    return _STATE.retry


def _name(hook: object) -> str:
    return str(getattr(hook, "__qualname__", None) or type(hook).__qualname__)


def _failed(hook: object, what: str, exc: Exception | None = None) -> None:
    # The first failure of a hook is logged with its traceback; later ones briefly, so that a
    # broken hook under an outage does not flood the logs.
    with _LOCK:
        first = id(hook) not in _REPORTED
        _REPORTED.add(id(hook))
    if exc is not None:
        what = f"{what} {type(exc).__name__}"
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "instrumentation hook %s %s; the call goes on",
        _name(hook),
        what,
        exc_info=exc if first else None,
    )


def _leave(entered: list[tuple[object, AbstractContextManager[Any]]]) -> None:
    for hook, manager in reversed(entered):
        try:
            manager.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001, PERF203 (instrumentation never breaks a call)
            _failed(hook, "left a context manager that raised", exc)


def retry_scheduled(details: RetryDetails) -> Callable[[], None] | None:
    """Tell every hook of a retry about to be waited for (engine-facing, not part of the API).

    Returns:
        A function to call before the next attempt (or when the call ends instead) that leaves
        the context managers the hooks returned, or None when there is nothing to leave.
    """
    hooks = _STATE.retry
    if not hooks:
        return None
    entered: list[tuple[object, AbstractContextManager[Any]]] = []
    for hook in hooks:
        try:
            result = hook(details)
        except Exception as exc:  # noqa: BLE001 (instrumentation never breaks a call)
            _failed(hook, "raised", exc)
            continue
        if result is None:
            continue
        if not (hasattr(result, "__enter__") and hasattr(result, "__exit__")):
            _failed(hook, f"returned a {type(result).__name__}, not a context manager")
            continue
        try:
            result.__enter__()
        except Exception as exc:  # noqa: BLE001 (instrumentation never breaks a call)
            _failed(hook, "returned a context manager that raised", exc)
            continue
        entered.append((hook, result))
    if not entered:
        return None
    return functools.partial(_leave, entered)


def call_ended(summary: CallSummary) -> None:
    """Give a retried, throttled or cut call's summary to every hook's ``on_call_end``
    (engine-facing, not part of the API)."""
    ends = _STATE.end
    if not ends:
        return
    for end in ends:
        try:
            end(summary)
        except Exception as exc:  # noqa: BLE001, PERF203 (instrumentation never breaks a call)
            _failed(getattr(end, "__self__", end), "raised in on_call_end", exc)
