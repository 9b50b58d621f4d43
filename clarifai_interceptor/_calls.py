"""The call objects the sync front ends return when a call may be retried, and their drivers.

`unary_response` drives a unary-response call: in the caller's thread when it blocks anyway
(`drive`), else as a `RetryFuture` on callbacks and the scheduler's timers, so ``future()``
returns at once. `response_stream` paces the first attempt in the caller's thread and returns a
`RetryingStream`, retried only until its first message reaches the caller (gRFC A6's commit
rule), so no message is ever delivered twice. Every decision is the flow's (`_attempts`):
these only do the I/O.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

from ._attempts import END, MARK, Ask, Attempts, Done, Flow, Send, advance, drive
from ._closing import CancelledCall, closed
from ._limiter import RateLimitedError
from ._policy import time_left
from ._scheduler import Handle, call_later

__all__ = [
    "CallOutcome",
    "CancelledCall",
    "Raised",
    "RetryFuture",
    "RetryingStream",
    "call_outcome",
    "response_stream",
    "settled",
    "unary_response",
]

log = logging.getLogger("clarifai_interceptor")

Start = Callable[[int], Any]  # starts attempt number n (with the time left); returns its call


class CallOutcome(NamedTuple):
    """How many attempts a call used, and what cut its retrying short (see `call_outcome`).

    Attributes:
        attempts: Attempts sent, the first included (0: the rate limiter refused it, or its
            channel closed before it was sent).
        cut_by: What ended the retrying before a final outcome: ``"attempts"``,
            ``"deadline"``, ``"budget"``, ``"pushback"``, ``"limiter"``; None if none did.
        throttled: How many of the attempts were throttled.
    """

    attempts: int
    cut_by: str | None
    throttled: int


_SINGLE = CallOutcome(1, None, 0)
_GRPC_CALLS = (grpc.Call, grpc.Future, grpc.RpcError, grpc.aio.Call)


def call_outcome(call: object) -> CallOutcome:
    """The attempts behind a call of a channel of ours: ``with_call``'s call, a ``future()``,
    a response stream (sync or aio), or the ``grpc.RpcError`` a call raised.

    Free on the happy path: a call that was never retried is gRPC's own object, and reads as
    one attempt with nothing cut.

    Raises:
        TypeError: ``call`` is not a call, future or error of gRPC's or of ours.
    """
    attempts = getattr(call, "_attempts", None)
    if not isinstance(attempts, Attempts):
        attempts = getattr(call, MARK, None)
    if isinstance(attempts, Attempts):
        return CallOutcome(attempts.sent, attempts.cut_by, attempts.throttled)
    if isinstance(call, _GRPC_CALLS):
        return _SINGLE
    raise TypeError(
        "call_outcome takes a call, future, response stream or grpc.RpcError, "
        f"not {type(call).__name__}"
    )


class Retried(grpc.Call, grpc.Future):  # type: ignore[misc]
    """gRPC's call object of a retried call's last attempt, with the attempts behind it (what
    ``with_call`` returns after a retry, for `call_outcome`). Everything else is delegated."""

    def __init__(self, call: Any, attempts: Attempts) -> None:
        self._call = call
        self._attempts = attempts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __repr__(self) -> str:
        return f"<Retried {self._attempts.number} attempts: {self._call!r}>"

    def initial_metadata(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.initial_metadata(*args, **kwargs)

    def trailing_metadata(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.trailing_metadata(*args, **kwargs)

    def code(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.code(*args, **kwargs)

    def details(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.details(*args, **kwargs)

    def is_active(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.is_active(*args, **kwargs)

    def time_remaining(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.time_remaining(*args, **kwargs)

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.cancel(*args, **kwargs)

    def add_callback(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.add_callback(*args, **kwargs)

    def cancelled(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.cancelled(*args, **kwargs)

    def running(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.running(*args, **kwargs)

    def done(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.done(*args, **kwargs)

    def result(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.result(*args, **kwargs)

    def exception(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.exception(*args, **kwargs)

    def traceback(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.traceback(*args, **kwargs)

    def add_done_callback(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.add_done_callback(*args, **kwargs)


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
                        log.debug(
                            "a retry could not start; the last outcome stands", exc_info=True
                        )
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

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()


class RetryingStream(grpc.Call, Iterator[Any]):  # type: ignore[misc]
    """A response stream retried only until its first message reaches the caller.

    Lazy like gRPC's own: nothing is awaited until the caller reads the stream or asks for its
    status. Callbacks added before then are attached to the attempt that is kept.
    """

    def __init__(self, attempts: Attempts, start: Start, first: Any, flow: Flow) -> None:
        self._attempts = attempts
        self._start = start
        self._flow = flow
        self._call = first
        self._committed = False
        self._cancelled = False
        self._head: Any = END
        self._callbacks: list[Callable[[Any], None]] = []  # attached when the stream commits
        self._cond = threading.Condition()

    def __iter__(self) -> RetryingStream:
        return self

    def __next__(self) -> Any:
        if not self._committed:
            self._commit()
        head = self._head
        if head is not END:
            self._head = END
            return head
        return next(self._call)

    next = __next__  # grpc's own response iterators have it too

    def _commit(self) -> None:
        while True:
            outcome: Any
            try:
                outcome = next(self._call)
            except StopIteration:
                outcome = END
            except grpc.RpcError as exc:
                outcome = exc
            if self._cancelled:  # cancelled before the first read: it ends cancelled, however
                outcome = CancelledCall()  # the attempt itself ended
            step = advance(self._attempts, self._flow, outcome, self._sleep)
            if isinstance(step, Done):
                if step.outcome is not outcome:  # the wait ended (cancelled, closed)
                    self._call = outcome = step.outcome
                break
            self._call.cancel()  # a retryable first message: that attempt is abandoned
            self._call = self._start(step.number)
        self._committed = True
        for callback in self._callbacks:
            self._call.add_done_callback(callback)
        self._callbacks.clear()
        if isinstance(outcome, grpc.RpcError):
            raise outcome
        if outcome is not END:
            self._head = outcome

    def _sleep(self, seconds: float) -> CancelledCall | None:
        """A `Wait` step: the attempt judged is abandoned; the wait ends early when the stream
        is cancelled or its channel closes."""
        self._call.cancel()
        closing = self._attempts.closing
        unwatch = None if closing is None else closing.watch(self._wake)
        try:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._cancelled or bool(closing and closing.closed), seconds
                )
        finally:
            if unwatch is not None:
                unwatch()
        if self._cancelled:
            return CancelledCall()
        return closed() if closing is not None and closing.closed else None

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _settle(self) -> Any:
        if not self._committed:
            with contextlib.suppress(grpc.RpcError):  # the call object reports it
                self._commit()
        return self._call

    # grpc.Call / grpc.RpcContext
    def cancel(self) -> bool:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        # Between attempts there is no live call, but the cancel still takes effect.
        return bool(self._call.cancel()) or not self._committed

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> float | None:
        remaining = self._call.time_remaining()
        return None if remaining is None else float(remaining)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._committed:
            return bool(self._call.add_callback(callback))
        self._callbacks.append(lambda _call: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(self)`` when the kept attempt ends (at once if it has ended)."""
        if self._committed:
            self._call.add_done_callback(lambda _call: fn(self))
        else:
            self._callbacks.append(lambda _call: fn(self))

    def initial_metadata(self) -> Any:
        return self._settle().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._settle().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._settle().code()

    def details(self) -> str | None:
        details: str | None = self._settle().details()
        return details


def unary_response(attempts: Attempts, start: Start, blocking: bool = False) -> Any:
    """Start a unary-response call: a `RetryFuture`, or for a ``blocking`` caller the final
    call itself.

    A ``future()`` caller is never blocked: a first attempt the rate limiter paces starts on
    the scheduler's timer, retries too, and a refused one comes back as a done future holding
    `RateLimitedError`. A ``blocking`` call (the interceptor under ``__call__``/``with_call``,
    whose continuation blocks) waits and retries in its caller's own thread instead, so that
    nothing is sent once the caller is interrupted (Ctrl-C) and no thread is borrowed.
    """
    if not blocking:
        return RetryFuture(attempts, start)
    try:
        call = drive(attempts, start, settled)
    except RateLimitedError as exc:
        return Raised(exc)
    if type(call) is CancelledCall:  # its channel closed while it waited
        return Raised(call)
    return call if attempts.sent == 1 else Retried(call, attempts)


def response_stream(attempts: Attempts, start: Start) -> Any:
    """Start a response-streaming call, wrapped in a `RetryingStream` if it may be retried.

    Raises:
        RateLimitedError: The rate limiter refused the first attempt.
    """
    flow = attempts.flow()
    step = advance(attempts, flow, None)  # sync callers wait for the permit in their thread
    if isinstance(step, Done):
        raise step.outcome  # its channel closed while it waited
    first = start(step.number)
    if attempts.policy.max_attempts == 1:
        return first
    return RetryingStream(attempts, start, first, flow)
