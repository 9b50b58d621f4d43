"""The testing switch: no waits and a fixed number of attempts, process-wide, for test suites.

The engine reads `TESTING` (one attribute read when off); users turn it on with
``clarifai_interceptor.testing.set_testing`` or the ``clarifai_testing`` pytest fixture.
"""

from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from types import TracebackType
from typing import Final, NamedTuple

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


class _Epoch:
    """The owner of a call made while blocks were open, but none of its own thread or task."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<while any block below is open>"


_EPOCH: Final = _Epoch()


class _Layer:
    """One `set_testing` call's state, in `_LAYERS` while it may be in force.

    A layer is a block while its `_Restore` is entered (``entered > 0``): only leaving it removes
    the layer. Otherwise it lasts as long as its owner: forever (None), the block it was made in
    (a `_Layer`), or while any block below it is open (`_EPOCH`). Once its `_Restore` is gone
    without having been entered, it is settled: nothing can enter it, so a settled layer that
    outlives it makes a settled layer below it redundant.
    """

    __slots__ = ("entered", "owner", "restore", "state")

    def __init__(self, state: _State, owner: _Layer | _Epoch | None) -> None:
        self.state = state
        self.owner = owner
        self.entered = 0
        self.restore: weakref.ref[_Restore] | None = None

    @property
    def settled(self) -> bool:
        return not self.entered and (self.restore is None or self.restore() is None)


#: The layers, oldest first; the newest is in force (off when there is none). A list is never
#: changed once it is here: each change puts a new one in its place (see `_swap`).
_LAYERS: list[_Layer] = []
#: The blocks the current thread or task is inside, innermost last (some may have ended
#: elsewhere: a block left in another context stays listed here, and is skipped).
_OPEN: ContextVar[tuple[_Layer, ...]] = ContextVar("clarifai_testing_blocks", default=())


def _swap(before: list[_Layer], after: list[_Layer], layer: _Layer | None, entered: int) -> bool:
    """Put ``after`` in place of the layers if they are still ``before``; False if they changed.

    Changes are computed outside the lock and swapped in here, where nothing is allocated: a
    garbage collection can then never run while the lock is held, so a finalizer that leaves a
    block (an abandoned generator or task that was inside one) cannot deadlock on it. A change
    made meanwhile by another thread, or by such a finalizer, fails the swap and is recomputed.
    """
    global _LAYERS  # rebound whole, never changed in place: readers need no lock
    with _LOCK:
        if _LAYERS is not before:
            return False
        if layer is not None:
            layer.entered = entered
        _LAYERS = after
        # Inline, not `TESTING._set`: on Python 3.12 a collection due since an earlier
        # allocation starts at the next call of a Python function, which must not be here.
        state = after[-1].state if after else _OFF
        TESTING._state = state  # noqa: SLF001 (this module owns it)
        TESTING.active = state.active
        return True


def _outlives(high: _Layer, low: _Layer) -> bool:
    """Whether ``high`` (newer) certainly lasts at least as long as ``low`` (both not blocks)."""
    if high.owner is None or high.owner is low.owner:
        return True
    # Under `_EPOCH`, `high` lasts while any block below it is open, and `low`'s owner, a block
    # entered before `low` was made, is below it.
    return high.owner is _EPOCH and low.owner is not None


def _pruned(layers: list[_Layer]) -> list[_Layer]:
    """``layers`` without the ones whose owner has ended and the redundant settled ones."""
    kept: list[_Layer] = []
    blocks: set[int] = set()  # ids of the blocks kept so far: the open blocks below
    for layer in layers:
        owner = layer.owner
        if layer.entered:
            blocks.add(id(layer))
        elif owner is _EPOCH:
            if not blocks:
                continue
        elif owner is not None and id(owner) not in blocks:
            continue
        kept.append(layer)
    above: list[_Layer] = []  # the settled layers kept, newest first
    newest_first: list[_Layer] = []
    for layer in reversed(kept):
        if layer.settled:
            if any(_outlives(high, layer) for high in above):
                continue
            above.append(layer)
        newest_first.append(layer)
    newest_first.reverse()
    return newest_first


def _holds(layers: list[_Layer], layer: _Layer) -> bool:
    return any(kept is layer for kept in layers)


def _is_open(layers: list[_Layer], layer: _Layer) -> bool:
    return layer.entered > 0 and _holds(layers, layer)


def _describe(state: _State) -> str:
    if not state.active:
        return "off"
    if state.attempts is None:
        return "on"
    return f"on, attempts={state.attempts}{' (cap)' if state.cap else ''}"


class _Restore:
    """What `set_testing` returns: leaving it as a context manager ends that call's state."""

    __slots__ = ("__weakref__", "_layer")

    def __init__(self, layer: _Layer) -> None:
        self._layer = layer
        layer.restore = weakref.ref(self)

    def __enter__(self) -> Testing:
        layer = self._layer
        while True:
            before = _LAYERS
            if _holds(before, layer):
                after = list(before)
            else:
                # Its state ended (the block it was made in ended, or it was entered and left):
                # it applies again, for this block.
                layer.owner = None
                after = _pruned([*before, layer])
            if _swap(before, after, layer, layer.entered + 1):
                break
        blocks = tuple(block for block in _OPEN.get() if _is_open(after, block))
        _OPEN.set((*blocks, layer))
        return TESTING

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        layer = self._layer
        while True:
            before = _LAYERS
            entered = max(layer.entered - 1, 0)
            if entered:  # entered again and not left yet: the block goes on
                after = list(before)
            else:
                after = _pruned([kept for kept in before if kept is not layer])
            if _swap(before, after, layer, entered):
                break
        blocks = _OPEN.get()
        for index in range(len(blocks) - 1, -1, -1):
            if blocks[index] is layer:
                _OPEN.set(blocks[:index] + blocks[index + 1 :])
                break

    def __repr__(self) -> str:
        layer, layers = self._layer, _LAYERS
        if not _holds(layers, layer):
            return f"<set_testing {_describe(layer.state)}: ended>"
        after = _pruned([kept for kept in layers if kept is not layer])
        restores = "on" if after and after[-1].state.active else "off"
        return f"<set_testing {_describe(layer.state)}: leaving restores {restores}>"


def set_testing(on: bool, *, attempts: int | None = None, cap: bool = False) -> _Restore:
    """Turn testing mode on or off for the whole process: retries in milliseconds.

    While on, every wait (backoff, server pushback, rate limiter) is 0, and with ``attempts``
    every call makes exactly that many attempts at most (the policy's ``max_attempts`` is
    replaced; with ``cap=True`` only lowered). Budgets, deadlines and which outcomes are retried
    are unchanged. The call takes effect at once; used as a context manager, leaving the block
    takes back exactly this call's state::

        with set_testing(True, attempts=2):
            ...  # a transient failure is retried once, at once

    Each call's state stands until it ends, and the newest one standing is in force (off when
    none is). Leaving a block ends its call's state, wherever that is among the others: the
    state from before the block comes back, unless a newer one still stands (a block begun
    meanwhile in another thread or task and still open), which then stays. Nested and
    overlapping blocks, in threads or asyncio tasks and left in any order, so unwind correctly,
    and once every block has ended the state is the one from before the first began.

    A call not used as a context manager stands until replaced: made outside any block, until a
    later call (whose block, once left, brings it back); made inside a block of its own thread
    or task, until the innermost such block ends, as if part of it; made while only other
    threads' or tasks' blocks are open, until none of those is. So nothing set during a block
    outlives it.

    Args:
        on: Turn testing mode on (True) or off (False).
        attempts: Attempts per call while on, the first included; None keeps each policy's.
        cap: Use ``attempts`` as a cap on the policy's ``max_attempts`` rather than a value.

    Returns:
        A context manager whose block ends this call's state when left (nothing happens if it
        is not used as one). Entered after its state has ended (its block was left, or the
        block the call was made in ended), it applies the state again for the block.

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
    layer = _Layer(_State(True, attempts, cap) if on else _OFF, None)
    restore = _Restore(layer)
    mine = _OPEN.get()
    while True:
        before = _LAYERS
        # It ends with the innermost block this thread or task is in, or, made outside its own
        # blocks while others are open, once none of those is open.
        owner: _Layer | _Epoch | None = next(
            (block for block in reversed(mine) if _is_open(before, block)), None
        )
        if owner is None and any(kept.entered for kept in before):
            owner = _EPOCH
        layer.owner = owner
        if _swap(before, _pruned([*before, layer]), None, 0):
            return restore
