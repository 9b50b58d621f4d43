"""A channel's closing, as the waits between attempts see it: closing ends them all at once.

Every channel of ours (and every interceptor) has one `Closing`. A call waiting to retry waits on
it: a blocking caller in its own thread (`Closing.sleep`), a ``future()`` or a response stream by
a callback (`Closing.watch`). `Closing.close` wakes them all, and each ends with `closed()`, a
``CANCELLED`` error as gRPC gives the calls in flight when their channel closes; nothing more is
sent. (gRPC tells an interceptor nothing of its channel's closing: its own ``close()`` does it.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from .exceptions import EndedCall

__all__ = ["CLOSED_DETAILS", "CancelledCall", "Closing"]

#: The details of the error a call gets when its channel closes while it waits to retry.
CLOSED_DETAILS = "Channel closed while the call waited to retry (nothing more was sent)"


class CancelledCall(EndedCall):
    """The outcome of a call that ended while it waited to retry: no attempt was in flight."""

    def __init__(self, details: str = "Cancelled by the caller while waiting to retry") -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return self._details

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __next__(self) -> Any:
        raise self


class Closing:
    """Whether a channel was closed, and who to wake when it is."""

    __slots__ = ("_cond", "_watchers", "closed")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watchers: set[Callable[[], object]] = set()
        self.closed = False

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` in this thread; True if the channel was closed (at once, if so)."""
        if seconds <= 0 or self.closed:
            return self.closed
        with self._cond:
            return self._cond.wait_for(lambda: self.closed, seconds)

    def watch(self, wake: Callable[[], object]) -> Callable[[], None]:
        """Call ``wake()`` when the channel closes (at once if it has); returns the unwatch."""
        with self._cond:
            if not self.closed:
                self._watchers.add(wake)
                return lambda: self._watchers.discard(wake)
        wake()
        return _nothing

    def close(self) -> None:
        """Mark the channel closed and wake every wait; idempotent."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            watchers, self._watchers = self._watchers, set()
        for wake in watchers:
            wake()


def _nothing() -> None:
    return None


def closed() -> CancelledCall:
    """The outcome of a call whose channel closed while it waited."""
    return CancelledCall(CLOSED_DETAILS)
