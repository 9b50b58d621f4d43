"""The call objects the sync front ends return when a call may be retried.

`RetryFuture` retries a unary-response call from callbacks and timers, so ``future()`` returns
at once; `RetryingStream` retries a response stream only until its first message reaches the
caller (gRFC A6's commit rule), so no message is ever delivered twice.
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

from ._closing import CancelledCall
from ._retry import Attempts, time_left
from ._scheduler import Handle, call_later
from .exceptions import RateLimitedError

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
        attempts: Attempts made, the first included.
        cut_by: What ended the retrying before a final outcome: ``"attempts"``,
            ``"deadline"``, ``"budget"``, ``"pushback"``, ``"limiter"``; None if none did.
        throttled: How many of the attempts were throttled.
    """

    attempts: int
    cut_by: str | None
    throttled: int


_SINGLE = CallOutcome(1, None, 0)


def call_outcome(call: object) -> CallOutcome:
    """The attempts behind a call object a channel of ours returned: ``with_call``'s call, a
    ``future()``, or a response stream (sync or aio).

    Free on the happy path: a call that was never retried is gRPC's own object, and reads as
    one attempt with nothing cut.
    """
    attempts = getattr(call, "_attempts", None)
    if not isinstance(attempts, Attempts):
        return _SINGLE
    return CallOutcome(attempts.number, attempts.cut_by, attempts.throttled)


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


class RetryFuture(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A ``grpc.Future`` and ``grpc.Call`` over the attempts of one unary-response call.

    Retries run from the attempts' done callbacks and timer threads; the caller's thread is never
    blocked. Resolves to the final attempt's outcome, unchanged.
    """

    def __init__(self, attempts: Attempts, start: Start, first: Any, wait: float | None) -> None:
        """Go on from ``first``: wait ``wait`` seconds and retry, or (None) await its outcome.

        With ``first`` None, attempt 1 itself starts after ``wait`` (the rate limiter's)."""
        self._attempts = attempts
        self._start = start
        self._context = contextvars.copy_context()
        self._cond = threading.Condition()
        self._call = first
        self._final: Any = None
        self._cancelled = False
        self._timer: Handle | None = None
        self._callbacks: list[_Callback] = []
        self._terminal: list[_Callback] = []  # add_callback's, run when the call ends
        self._unwatch: Callable[[], None] | None = None
        if wait is None:
            first.add_done_callback(self._on_done)
        else:
            self._schedule(wait, first)

    def _on_done(self, call: Any) -> None:
        wait = None
        if not self._cancelled and not call.cancelled():
            wait = self._attempts.after(settled(call))
        if wait is None:
            self._finish(call)
        else:
            self._schedule(wait, call)

    def _schedule(self, wait: float, call: Any) -> None:
        with self._cond:
            if not self._cancelled:
                # One scheduler thread runs every pending retry, in the caller's context.
                self._timer = call_later(wait, functools.partial(self._context.run, self._next))
                closing = self._attempts.closing
                if closing is not None and self._unwatch is None:
                    self._unwatch = closing.watch(self._on_close)
                return
        self._finish(CancelledCall() if call is None else call)

    def _on_close(self) -> None:
        """The channel closed: a pending wait ends now, with nothing more sent."""
        with self._cond:
            if self._final is not None or self._timer is None or self._timer.cancelled:
                return  # an attempt is in flight: gRPC itself ends it
            self._timer.cancel()
        self._finish(Raised(self._attempts.end_closed()))

    def _next(self) -> None:
        with self._cond:
            closing = self._attempts.closing
            if self._cancelled or self._final is not None or (closing and closing.closed):
                return  # cancelled, or closed (`_on_close` ends it)
            more = self._attempts.recheck()  # the limiter cut since the permit: wait longer
            if more:
                self._timer = call_later(more, functools.partial(self._context.run, self._next))
                return
            self._timer = None
            previous = self._call
            self._attempts.resume()
            try:
                self._call = call = self._start(self._attempts.number)
            except Exception as exc:  # e.g. the channel was closed during the wait
                log.debug("a retry could not start; the last outcome stands", exc_info=True)
                call = None
                if previous is None:  # nothing was sent: the caller gets the error
                    previous = Raised(exc)
        if call is None:
            self._finish(previous)
        else:
            call.add_done_callback(self._on_done)

    def _finish(self, call: Any) -> None:
        with self._cond:
            if self._final is not None:
                return
            self._final = call
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
        with self._cond:
            if self._final is not None:
                return False
            self._cancelled = True
            timer, call = self._timer, self._call
        if timer is not None:
            timer.cancel()
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


_END = object()


class Raised(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A call that failed before anything was sent (a provider raised, bad metadata).

    ``grpc.intercept_channel`` would hand ``future()`` callers its own stand-in, whose
    ``result(timeout=...)`` raises TypeError; this one raises the package's error.
    """

    def __init__(self, error: Exception) -> None:
        self._error = error

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

    def __init__(self, attempts: Attempts, start: Start, first: Any) -> None:
        self._attempts = attempts
        self._start = start
        self._call = first
        self._committed = False
        self._cancelled = False
        self._head: Any = _END
        self._callbacks: list[Callable[[Any], None]] = []  # attached when the stream commits
        self._cond = threading.Condition()

    def __iter__(self) -> RetryingStream:
        return self

    def __next__(self) -> Any:
        if not self._committed:
            self._commit()
        head = self._head
        if head is not _END:
            self._head = _END
            return head
        return next(self._call)

    next = __next__  # grpc's own response iterators have it too

    def _commit(self) -> None:
        while True:
            outcome: Any
            try:
                outcome = next(self._call)
            except StopIteration:
                outcome = _END
            except grpc.RpcError as exc:
                outcome = exc
            if self._cancelled:  # cancelled before the first read: it ends cancelled, however
                self._call = outcome = CancelledCall()  # the attempt itself ended
                break
            if outcome is _END:
                break
            wait = self._attempts.after(outcome)
            if wait is None:
                break
            self._call.cancel()  # a retryable first message: that attempt is abandoned
            if self._sleep(wait):
                self._call = outcome = CancelledCall()
                break
            closing = self._attempts.closing
            if closing is not None and closing.closed:
                self._call = outcome = self._attempts.end_closed()
                break
            self._attempts.resume()
            self._call = self._start(self._attempts.number)
        self._committed = True
        for callback in self._callbacks:
            self._call.add_done_callback(callback)
        self._callbacks.clear()
        if isinstance(outcome, grpc.RpcError):
            raise outcome
        if outcome is not _END:
            self._head = outcome

    def _sleep(self, seconds: float) -> bool:
        """Wait before the next attempt; True if the stream was cancelled meanwhile. Its
        channel's closing ends the wait too."""
        closing = self._attempts.closing
        unwatch = None if closing is None else closing.watch(self._wake)
        try:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._cancelled or bool(closing and closing.closed), seconds
                )
                return self._cancelled
        finally:
            if unwatch is not None:
                unwatch()

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
    """Start a unary-response call: its first attempt's call if final, else a `RetryFuture`.

    A ``future()`` caller is never blocked: a first attempt the rate limiter paces starts on
    the scheduler's timer, retries too, and a refused one comes back as a done future holding
    `RateLimitedError`. A ``blocking`` call (the interceptor under ``__call__``/``with_call``,
    whose continuation blocks) waits and retries in its caller's own thread instead, so that
    nothing is sent once the caller is interrupted (Ctrl-C) and no thread is borrowed.
    """
    try:
        pace = attempts.first()
    except RateLimitedError as exc:
        return Raised(exc)
    if blocking:
        return _blocking(attempts, start, pace)
    if pace:
        return RetryFuture(attempts, start, None, pace)
    first = start(1)
    if first.done():
        wait = attempts.after(settled(first))
        return first if wait is None else RetryFuture(attempts, start, first, wait)
    # Wrapped even when it cannot be retried: its done callbacks must run in their adder's
    # context, and a throttle still teaches the limiter.
    return RetryFuture(attempts, start, first, None)


def _blocking(attempts: Attempts, start: Start, pace: float) -> Any:
    """`unary_response` for a blocking caller: every wait and attempt in its thread."""
    if pace and attempts.sleep(pace):
        return Raised(attempts.end_closed())
    call = start(1)
    wait = attempts.after(settled(call))
    while wait is not None:
        if attempts.sleep(wait):
            return Raised(attempts.end_closed())
        attempts.resume()
        call = start(attempts.number)
        wait = attempts.after(settled(call))
    return call if attempts.number == 1 else Retried(call, attempts)


def response_stream(attempts: Attempts, start: Start) -> Any:
    """Start a response-streaming call, wrapped in a `RetryingStream` if it may be retried.

    Raises:
        RateLimitedError: The rate limiter refused the first attempt.
    """
    pace = attempts.first()
    if pace and attempts.sleep(pace):  # sync callers wait in their own thread
        raise attempts.end_closed()
    first = start(1)
    if attempts.policy.max_attempts == 1:
        return first
    return RetryingStream(attempts, start, first)
