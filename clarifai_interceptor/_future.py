"""`RetryFuture`: the ``future()`` driver of the attempt flow, on callbacks and timers.

A unary-response call's flow runs from its attempts' done callbacks and the scheduler's timer
thread, so ``future()`` returns at once and the caller's thread is never blocked. `Raised` is
the done future of a call that failed before anything was sent.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from ._attempts import MARK, Attempts
from ._closing import CancelledCall, closed
from ._policy import time_left
from ._scheduler import Handle, call_later
from ._steps import Ask, Flow, Send
from .exceptions import debug_string

__all__ = ["Raised", "RetryFuture", "settled"]

log = logging.getLogger("clarifai_interceptor")

Start = Callable[[int], Any]  # starts attempt number n (with the time left); returns its call


def settled(call: Any) -> object:
    """A finished unary call's outcome as the policy judges it: its RpcError or its response."""
    exc = call.exception()
    return exc if exc is not None else call.result()


_Callback = tuple[contextvars.Context, Callable[[Any], object]]


def _run_callbacks(callbacks: list[_Callback], arg: Any) -> None:
    """Run each callback in the context of the code that added it, as asyncio does: never in
    whatever context gRPC's thread happened to copy (another tenant's `use_credentials`)."""
    for context, callback in callbacks:
        try:
            context.run(callback, arg)
        except Exception:  # noqa: PERF203 (as grpc does: one failing callback spares the rest)
            log.exception("a done callback raised")


_START = object()  # what a new future waits for: its first step


class RetryFuture(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A ``grpc.Future`` and ``grpc.Call`` over the attempts of one unary-response call.

    The flow runs from the attempts' done callbacks and the scheduler's timer; the caller's
    thread is never blocked. Resolves to the final attempt's outcome, unchanged.
    """

    def __init__(self, attempts: Attempts, start: Start) -> None:
        self._attempts = attempts
        self._start = start
        self._flow: Flow = attempts.flow()
        self._context = contextvars.copy_context()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._call: Any = None  # the attempt in flight, or the last one
        self._outcome: Any = None  # the flow's judgement of it
        self._waiting: object = _START  # what the flow waits for: a call, or a timer's token
        self._timer: Handle | None = None
        self._final: Any = None
        self._cancelled = False
        self._callbacks: list[_Callback] = []
        self._terminal: list[_Callback] = []  # add_callback's, run when the call ends
        self._unwatch: Callable[[], None] | None = None
        self._step(None, _START)

    def _step(self, value: Any, expected: object) -> None:
        """Go on with the flow from ``value`` if it still waits for ``expected`` (the first
        of the attempt's end, the timer, the channel's close, a cancel wins)."""
        with self._lock:
            if self._final is not None or self._waiting is not expected:
                return
            self._waiting = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            watch, final = self._advance(value)
        if watch is not None:
            watch.add_done_callback(self._on_done)  # at once, here, if it is done
        elif final is not None:
            self._finish(final)

    def _advance(self, value: Any) -> tuple[Any, Any]:
        """Run the flow until it waits (lock held): the call to watch, or the final one."""
        flow = self._flow
        try:
            while True:
                step = flow.send(value)
                if isinstance(step, Ask):
                    value = self._attempts.ask(step)
                elif isinstance(step, Send):
                    try:
                        call = self._start(step.number)
                    except Exception as exc:  # e.g. the channel was closed during the wait
                        log.debug("a retry could not start; the last outcome stands", exc_info=True)
                        flow.close()
                        return None, Raised(exc) if self._call is None else self._call
                    self._call = self._waiting = call
                    return call, None
                else:
                    token = self._waiting = object()
                    job = functools.partial(self._context.run, self._step, None, token)
                    self._timer = call_later(step.seconds, job)
                    closing = self._attempts.closing
                    if closing is not None and self._unwatch is None:
                        self._unwatch = closing.watch(self._on_close)
                    return None, None
        except StopIteration as stop:
            final = stop.value
            return None, self._call if final is self._outcome else Raised(final)
        except Exception as exc:  # noqa: BLE001 (the limiter refused, or its store raised)
            return None, Raised(exc)

    def _on_done(self, call: Any) -> None:
        outcome = CancelledCall() if call.cancelled() else settled(call)
        with self._lock:
            if self._waiting is not call:
                return
            self._outcome = outcome
        self._step(outcome, call)

    def _on_close(self) -> None:
        """The channel closed: a pending wait ends now, with nothing more sent (an attempt in
        flight: gRPC itself ends it)."""
        waiting = self._waiting
        if waiting is not None and waiting is not self._call:
            self._step(closed(), waiting)

    def _finish(self, call: Any) -> None:
        with self._cond:
            if self._final is not None:
                return
            self._final = call
            self._waiting = None
            self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            terminal, self._terminal = self._terminal, []
            unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()
        _run_callbacks(terminal, None)
        _run_callbacks(callbacks, self)

    def _wait(self, timeout: float | None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._final is not None, timeout):
                raise grpc.FutureTimeoutError
            return self._final

    # grpc.Future
    def cancel(self) -> bool:
        """Cancel the attempt in flight, or the wait for the next one; no attempt follows."""
        with self._lock:
            if self._final is not None:
                return False
            self._cancelled = True
            waiting, call, timer = self._waiting, self._call, self._timer
            self._waiting = self._timer = None
        if timer is not None:
            timer.cancel()
        if waiting is not call:  # between attempts: the permit it held goes back
            self._attempts.abandon()
        if call is None:  # still waiting for the first attempt's permit
            call = CancelledCall()
        call.cancel()
        self._finish(call)  # cancelled at once, as gRPC's own futures are
        return True

    def cancelled(self) -> bool:
        return self._cancelled and self._final is not None

    def running(self) -> bool:
        return self._final is None

    def done(self) -> bool:
        return self._final is not None

    def result(self, timeout: float | None = None) -> Any:
        final = self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError
        return final.result()

    def exception(self, timeout: float | None = None) -> Any:
        final = self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError
        return final.exception()

    def traceback(self, timeout: float | None = None) -> Any:
        final = self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError
        return final.traceback()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        context = contextvars.copy_context()
        with self._cond:
            if self._final is None:
                self._callbacks.append((context, fn))
                return
        _run_callbacks([(context, fn)], self)

    # grpc.Call
    def is_active(self) -> bool:
        return self._final is None

    def time_remaining(self) -> float | None:
        return time_left(self._attempts.deadline)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` when the whole call ends, its retries included (False if it
        has ended)."""
        context = contextvars.copy_context()
        with self._cond:
            if self._final is not None:
                return False
            self._terminal.append((context, lambda _arg: callback()))
            return True

    def code(self) -> grpc.StatusCode:
        final = self._wait(None)
        return grpc.StatusCode.CANCELLED if self._cancelled else final.code()

    def details(self) -> str | None:
        final = self._wait(None)
        return "Cancelled" if self._cancelled else final.details()

    def debug_error_string(self) -> str | None:
        """The final attempt's ``debug_error_string()`` (gRPC's, or one of ours)."""
        final = self._wait(None)
        if self._cancelled:
            return debug_string("cancelled by the caller", grpc.StatusCode.CANCELLED, "Cancelled")
        own = getattr(final, "debug_error_string", None)
        return str(own()) if callable(own) else None

    def initial_metadata(self) -> Any:
        return self._wait(None).initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._wait(None).trailing_metadata()


class Raised(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A call that failed before anything was sent (a provider raised, bad metadata).

    ``grpc.intercept_channel`` would hand ``future()`` callers its own stand-in, whose
    ``result(timeout=...)`` raises TypeError; this one raises the package's error.
    """

    def __init__(self, error: Exception) -> None:
        self._error = error

    @property
    def _attempts(self) -> object:
        return getattr(self._error, MARK, None)  # for call_outcome

    def result(self, timeout: float | None = None) -> Any:  # noqa: ARG002 (done already)
        raise self._error

    def exception(self, timeout: float | None = None) -> Exception:  # noqa: ARG002
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:  # noqa: ARG002
        return self._error.__traceback__

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:  # noqa: ARG002 (never runs)
        return False

    def code(self) -> grpc.StatusCode:
        error = self._error
        return error.code() if isinstance(error, grpc.RpcError) else grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        error = self._error
        if isinstance(error, grpc.RpcError):
            return str(error.details())
        return f"not sent: {type(error).__name__}"

    def debug_error_string(self) -> str:
        """The error's own ``debug_error_string()`` if it has one (a gRPC error, or one of
        ours); else one shaped as gRPC's, naming the error's type (never its message)."""
        own = getattr(self._error, "debug_error_string", None)
        if callable(own):
            return str(own())
        return debug_string(type(self._error).__name__, self.code(), self.details())

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()
