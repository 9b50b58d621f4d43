"""One timer thread for every pending retry of the process (``future()`` calls).

``threading.Timer`` costs a thread per wait: 300 futures waiting to retry were 300 threads. Here
one daemon thread keeps a heap of due times and runs each job when it is due. Jobs must be short
and never block (they start the next attempt of a ``future()``, which returns at once); blocking
calls wait in their caller's own thread instead.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["Handle", "call_later"]

log = logging.getLogger("clarifai_interceptor")


#: The longest the thread sleeps at once (it wakes and looks again).
_LONGEST = 3600.0


class Handle:
    """A scheduled job; `cancel` makes it never run (if it has not run yet)."""

    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def call_later(self, delay: float, fn: Callable[[], object]) -> Handle:
        handle = Handle(fn)
        due = time.monotonic() + max(0.0, delay)
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), handle))
            thread = self._thread
            if thread is None or self._pid != os.getpid() or not thread.is_alive():
                self._pid = os.getpid()  # after a fork the parent's thread is not ours
                self._thread = thread = threading.Thread(
                    target=self._run, name="clarifai_interceptor-retries", daemon=True
                )
                thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()  # sooner than what the thread waits for
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                due, _, handle = self._heap[0]
                delay = due - time.monotonic()
                if delay > 0:  # in steps: a far-off wait must not overflow the lock's timeout
                    self._cond.wait(min(delay, _LONGEST))
                    continue
                heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.fn()
            except Exception:  # a job's failure must not stop every other retry
                log.exception("a scheduled retry raised")

    def pending(self) -> int:
        with self._cond:
            return sum(not handle.cancelled for _, _, handle in self._heap)


_SCHEDULER = _Scheduler()
call_later = _SCHEDULER.call_later
