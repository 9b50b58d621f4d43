"""The testing switch: no waits and a fixed number of attempts, process-wide, for test suites.

The engine reads `TESTING` (one attribute read when off); users turn it on with
``clarifai_interceptor.testing.set_testing`` or the ``clarifai_testing`` pytest fixture.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import NamedTuple

__all__ = ["TESTING", "Testing", "set_testing"]


class _State(NamedTuple):
    active: bool
    attempts: int | None
    cap: bool


_OFF = _State(False, None, False)


class Testing:
    """The switch's current state (read by the engine; change it with `set_testing`).

    One immutable state is swapped in whole, so a reader never sees half of a change; `active`
    mirrors it as a plain attribute, the one read the engine makes while testing is off.

    Attributes:
        active: Whether testing mode is on: every wait (backoff, pushback, limiter) is 0.
    """

    __slots__ = ("_state", "active")

    def __init__(self) -> None:
        self._state = _OFF
        self.active = False

    def _set(self, state: _State) -> None:
        self._state = state
        self.active = state.active

    @property
    def attempts(self) -> int | None:
        """The attempts every call makes while on (None: the policy's ``max_attempts``)."""
        return self._state.attempts

    @property
    def cap(self) -> bool:
        """Whether `attempts` only caps the policy's ``max_attempts`` instead of replacing it."""
        return self._state.cap

    def max_attempts(self, policy_attempts: int) -> int:
        """The attempts a call whose policy allows ``policy_attempts`` makes now."""
        state = self._state
        if not state.active or state.attempts is None:
            return policy_attempts
        return min(state.attempts, policy_attempts) if state.cap else state.attempts

    def wait(self, seconds: float) -> float:
        """``seconds``, or 0 while testing mode is on."""
        return 0.0 if self._state.active else seconds

    def __repr__(self) -> str:
        state = self._state
        if not state.active:
            return "<Testing off>"
        attempts = "policy's" if state.attempts is None else state.attempts
        return f"<Testing on: attempts={attempts}{' (cap)' if state.cap else ''}>"


#: The process-wide switch the engine reads.
TESTING = Testing()
_LOCK = threading.Lock()


class _Restore:
    """What `set_testing` returns: leaving it as a context manager restores the state before."""

    __slots__ = ("_before",)

    def __init__(self, before: _State) -> None:
        self._before = before

    def __enter__(self) -> Testing:
        return TESTING

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _LOCK:
            TESTING._set(self._before)  # noqa: SLF001 (this module owns the switch)

    def __repr__(self) -> str:
        return f"<set_testing: restores {'on' if self._before.active else 'off'}>"


def set_testing(on: bool, *, attempts: int | None = None, cap: bool = False) -> _Restore:
    """Turn testing mode on or off for the whole process: retries in milliseconds.

    While on, every wait (backoff, server pushback, rate limiter) is 0, and with ``attempts``
    every call makes exactly that many attempts at most (the policy's ``max_attempts`` is
    replaced; with ``cap=True`` only lowered). Budgets, deadlines and which outcomes are retried
    are unchanged. Usable as a context manager, which restores the previous state on exit::

        with set_testing(True, attempts=2):
            ...  # a transient failure is retried once, at once

    Args:
        on: Turn testing mode on (True) or off (False).
        attempts: Attempts per call while on, the first included; None keeps each policy's.
        cap: Use ``attempts`` as a cap on the policy's ``max_attempts`` rather than a value.

    Returns:
        A context manager that restores the state before this call when left (doing nothing
        if not used as one).

    Raises:
        ValueError: ``attempts`` is not an int >= 1, or is given while turning testing off.
    """
    if not isinstance(on, bool):
        raise ValueError(f"on must be a bool, got {type(on).__name__}")
    if attempts is not None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1 or None, got {attempts!r}")
        if not on:
            raise ValueError("attempts applies only while testing is on (on=True)")
    if not isinstance(cap, bool):
        raise ValueError(f"cap must be a bool, got {type(cap).__name__}")
    state = _State(True, attempts, cap) if on else _OFF
    with _LOCK:
        before = TESTING._state  # noqa: SLF001 (this module owns the switch)
        TESTING._set(state)  # noqa: SLF001
    return _Restore(before)
