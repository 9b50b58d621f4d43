"""The call objects the sync front ends return when a call may be retried, and their drivers.

`unary_response` drives a unary-response call: in the caller's thread when it blocks anyway
(`drive`), else as a `RetryFuture` (``_future``), so ``future()`` returns at once.
`response_stream` paces the first attempt in the caller's thread and returns a `RetryingStream`,
retried only until its first message reaches the caller (gRFC A6's commit rule), so no message
is ever delivered twice. Every decision is the flow's (`_attempts`):
these only do the I/O.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

from ._attempts import MARK, Attempts
from ._closing import CancelledCall, closed
from ._drivers import Done, advance, drive
from ._future import Raised, RetryFuture, settled
from ._steps import END, Flow
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

    def debug_error_string(self) -> str | None:
        """The kept attempt's ``debug_error_string()`` (gRPC's, or one of ours)."""
        own = getattr(self._settle(), "debug_error_string", None)
        return str(own()) if callable(own) else None


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
