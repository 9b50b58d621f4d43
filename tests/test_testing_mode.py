"""The testing switch's blocks: nested and overlapping, in threads and asyncio tasks.

Each block sets ``attempts`` of its own, so the state in force names the block it comes from.
Orderings are deterministic: a block in a thread or task is entered, left, and does things
inside on cue, each step finished before the next begins.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarifai_interceptor import _switch
from clarifai_interceptor._switch import TESTING, set_testing

#: Seconds any one step may take.
T = 10

State = tuple[bool, int | None, bool]
OFF: State = (False, None, False)
BASES = [pytest.param(OFF, id="off-before"), pytest.param((True, 9, False), id="plain-on-before")]


def now() -> State:
    """The state in force."""
    return (TESTING.active, TESTING.attempts, TESTING.cap)


def on(attempts: int) -> State:
    return (True, attempts, False)


def set_base(base: State) -> None:
    """Make ``base`` the state by a plain call (one that stays until replaced)."""
    set_testing(base[0], attempts=base[1], cap=base[2])


def layers() -> int:
    """How many layers the switch holds now."""
    return len(_switch._LAYERS)


@pytest.fixture(autouse=True)
def _off() -> Iterator[None]:
    """Every test starts and ends with the switch off and nothing left of earlier blocks."""
    _forget_everything()
    yield
    _forget_everything()


def _forget_everything() -> None:
    _switch._LAYERS = []
    set_testing(False)


class BlockThread:
    """``with set_testing(True, attempts=n):`` in a thread of its own, driven step by step."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self._cues: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._done: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._done.put(self._attempt(self._block))  # left, or failed

    def _block(self) -> None:
        with set_testing(True, attempts=self.attempts):
            self._done.put(None)  # entered
            while (cue := self._cues.get()) is not None:
                self._done.put(self._attempt(cue))

    @staticmethod
    def _attempt(step: Callable[[], object]) -> BaseException | None:
        """Run ``step``; return what it raised, for the test's thread to raise."""
        try:
            step()
        except BaseException as error:  # noqa: BLE001 (handed to the test)
            return error
        return None

    def _step(self) -> None:
        error = self._done.get(timeout=T)
        if error is not None:
            raise error

    def enter(self) -> None:
        self._thread.start()
        self._step()

    def inside(self, cue: Callable[[], object]) -> None:
        self._cues.put(cue)
        self._step()

    def leave(self) -> None:
        self._cues.put(None)
        self._step()
        self._thread.join(T)
        assert not self._thread.is_alive()


class BlockTask:
    """``with set_testing(True, attempts=n):`` in an asyncio task of its own, step by step."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self._cues: asyncio.Queue[Callable[[], object] | None] = asyncio.Queue()
        self._done: asyncio.Queue[None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        with set_testing(True, attempts=self.attempts):
            self._done.put_nowait(None)
            while (cue := await self._cues.get()) is not None:
                cue()
                self._done.put_nowait(None)
        self._done.put_nowait(None)

    async def _step(self) -> None:
        assert self._task is not None
        waiting = asyncio.ensure_future(self._done.get())
        await asyncio.wait([waiting, self._task], timeout=T, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            self._task.result()  # the task failed: raise its error
            raise AssertionError("the task did not answer")

    async def enter(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._step()

    async def inside(self, cue: Callable[[], object]) -> None:
        self._cues.put_nowait(cue)
        await self._step()

    async def leave(self) -> None:
        self._cues.put_nowait(None)
        await self._step()
        assert self._task is not None
        await asyncio.wait_for(self._task, T)


# -- threads ---------------------------------------------------------------------------------


def test_threads_with_literal_events_the_first_in_leaving_first_leaves_the_other_on() -> None:
    """The defect as reported: A enters, B enters, A leaves, B leaves: it stayed on."""
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    a_leave, b_leave = threading.Event(), threading.Event()

    def block(attempts: int, entered: threading.Event, leave: threading.Event) -> None:
        with set_testing(True, attempts=attempts):
            entered.set()
            leave.wait(T)

    a = threading.Thread(target=lambda: (block(2, a_in, a_leave), a_out.set()))
    b = threading.Thread(target=lambda: (block(5, b_in, b_leave), b_out.set()))
    a.start()
    assert a_in.wait(T)
    b.start()
    assert b_in.wait(T)
    assert now() == on(5)
    a_leave.set()
    assert a_out.wait(T)
    assert now() == on(5)  # B is still inside its block
    b_leave.set()
    assert b_out.wait(T)
    assert now() == OFF  # not stuck on
    a.join(T)
    b.join(T)


@pytest.mark.parametrize("base", BASES)
def test_threads_overlapping_blocks_left_first_in_first_out(base: State) -> None:
    set_base(base)
    a, b = BlockThread(2), BlockThread(5)
    a.enter()
    assert now() == on(2)
    b.enter()
    assert now() == on(5)
    a.leave()
    assert now() == on(5)
    b.leave()
    assert now() == base


@pytest.mark.parametrize("base", BASES)
def test_threads_overlapping_blocks_left_last_in_first_out(base: State) -> None:
    set_base(base)
    a, b = BlockThread(2), BlockThread(5)
    a.enter()
    b.enter()
    b.leave()
    assert now() == on(2)  # still on for A
    a.leave()
    assert now() == base


def test_threads_three_blocks_the_middle_one_left_first() -> None:
    a, b, c = BlockThread(2), BlockThread(3), BlockThread(4)
    for block in (a, b, c):
        block.enter()
    b.leave()
    assert now() == on(4)
    c.leave()
    assert now() == on(2)
    a.leave()
    assert now() == OFF


def test_a_plain_call_in_a_threads_block_survives_another_threads_leaving() -> None:
    a, b = BlockThread(2), BlockThread(5)
    a.enter()
    b.enter()
    a.inside(lambda: set_testing(True, attempts=7))
    assert now() == on(7)
    b.leave()
    assert now() == on(7)  # A's own setting, inside A's block: B's leaving keeps it
    a.leave()
    assert now() == OFF  # and it ends with A's block


def test_a_plain_call_from_outside_any_block_lasts_while_blocks_are_open() -> None:
    a, b = BlockThread(2), BlockThread(5)
    a.enter()
    b.enter()
    set_testing(True, attempts=7)  # this thread is in no block of its own
    assert now() == on(7)
    a.leave()
    assert now() == on(7)
    b.leave()
    assert now() == OFF  # nothing set during the blocks outlives them


def test_a_plain_off_in_one_threads_block_ends_with_that_block() -> None:
    set_testing(True, attempts=9)
    a = BlockThread(2)
    a.enter()
    a.inside(lambda: set_testing(False))
    assert now() == OFF
    a.leave()
    assert now() == on(9)


# -- asyncio tasks ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("base", BASES)
async def test_tasks_overlapping_blocks_left_first_in_first_out(base: State) -> None:
    set_base(base)
    a, b = BlockTask(2), BlockTask(5)
    await a.enter()
    assert now() == on(2)
    await b.enter()
    assert now() == on(5)
    await a.leave()
    assert now() == on(5)  # B is still inside its block
    await b.leave()
    assert now() == base


@pytest.mark.asyncio
@pytest.mark.parametrize("base", BASES)
async def test_tasks_overlapping_blocks_left_last_in_first_out(base: State) -> None:
    set_base(base)
    a, b = BlockTask(2), BlockTask(5)
    await a.enter()
    await b.enter()
    await b.leave()
    assert now() == on(2)
    await a.leave()
    assert now() == base


@pytest.mark.asyncio
async def test_a_plain_call_in_a_tasks_block_survives_another_tasks_leaving() -> None:
    a, b = BlockTask(2), BlockTask(5)
    await a.enter()
    await b.enter()
    await a.inside(lambda: set_testing(True, attempts=7))
    await b.leave()
    assert now() == on(7)
    await a.leave()
    assert now() == OFF


@pytest.mark.asyncio
async def test_a_plain_call_in_a_task_begun_inside_a_block_ends_with_that_block() -> None:
    async def child() -> None:
        set_testing(True, attempts=7)  # the task runs in a copy of the block's context

    other = BlockTask(5)
    with set_testing(True, attempts=2):
        await other.enter()
        await asyncio.create_task(child())
        await other.leave()
        assert now() == on(7)  # the other task's leaving keeps it: it is this block's
    assert now() == OFF


# -- one thread ------------------------------------------------------------------------------


def test_nested_blocks_in_one_thread_unwind_in_order() -> None:
    set_testing(True, attempts=9)
    with set_testing(False):
        assert now() == OFF
        with set_testing(True, attempts=2):
            with set_testing(True, attempts=3, cap=True):
                assert now() == (True, 3, True)
            assert now() == on(2)
        assert now() == OFF
    assert now() == on(9)


def test_blocks_left_out_of_order_in_one_thread() -> None:
    first, second = set_testing(True, attempts=2), set_testing(True, attempts=5)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert now() == on(5)
    second.__exit__(None, None, None)
    assert now() == OFF


def test_a_block_is_left_on_an_exception_too() -> None:
    set_testing(True, attempts=9)
    with pytest.raises(RuntimeError), set_testing(False):
        raise RuntimeError("left even so")
    assert now() == on(9)


def test_reentering_the_same_restore_leaves_on_the_outermost_exit() -> None:
    restore = set_testing(True, attempts=2)
    with restore:
        with restore:
            assert now() == on(2)
        assert now() == on(2)  # still inside the outer block
    assert now() == OFF


def test_entering_a_restore_after_its_block_ended_applies_it_again() -> None:
    restore = set_testing(True, attempts=2)
    with restore:
        assert now() == on(2)
    assert now() == OFF
    with restore:
        assert now() == on(2)
    assert now() == OFF


def test_a_block_left_by_the_garbage_collector_is_left() -> None:
    def inside() -> Iterator[None]:
        with set_testing(True, attempts=2):
            yield

    abandoned = inside()
    next(abandoned)
    cycle: list[object] = [abandoned]
    cycle.append(cycle)  # only the cycle collector frees it
    assert now() == on(2)
    del abandoned, cycle
    gc.collect()
    assert now() == OFF


def test_no_garbage_collection_starts_while_the_switch_is_locked() -> None:
    """A collection can finalize a generator or task inside a block, and leaving the block
    takes the lock: started while this thread held it, the collection would deadlock."""
    held: list[bool] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            held.append(_switch._LOCK.locked())

    threshold = gc.get_threshold()
    gc.callbacks.append(watch)
    gc.set_threshold(1)  # a collection at (nearly) every allocation of a container
    try:
        for attempts in range(1, 30):
            with set_testing(True, attempts=attempts):
                set_testing(False)
                repr(set_testing(True))
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(watch)
    assert held
    assert not any(held)


# -- plain calls -----------------------------------------------------------------------------


def test_a_plain_call_stays_in_force_until_replaced() -> None:
    set_testing(True, attempts=3)
    assert now() == on(3)
    set_testing(True, attempts=2, cap=True)
    assert now() == (True, 2, True)
    set_testing(False)
    assert now() == OFF


def test_plain_on_then_a_block_of_off_then_on_again() -> None:
    set_testing(True)
    with set_testing(False):
        assert now() == OFF
    assert now() == (True, None, False)


def test_a_plain_call_inside_nested_blocks_ends_with_the_innermost() -> None:
    with set_testing(False):
        with set_testing(True, attempts=1):
            set_testing(True, attempts=4)
            assert now() == on(4)
        assert now() == OFF
    assert now() == OFF
    with set_testing(True, attempts=1):
        set_testing(True, attempts=4)
    assert now() == OFF


def test_a_kept_restore_never_entered_stays_until_replaced() -> None:
    kept = set_testing(True, attempts=3)
    set_testing(True, attempts=4)
    assert now() == on(4)
    set_testing(False)
    assert now() == OFF
    assert kept is not None


def test_plain_calls_do_not_pile_up() -> None:
    # A call's layer is known to be plain (its result was dropped without being entered) at the
    # next change of the switch: the newest call's layer and the one below it stay till then.
    for attempts in range(1, 1001):
        set_testing(True, attempts=attempts)
    assert layers() == 2
    with set_testing(False):
        for attempts in range(1, 1001):
            set_testing(True, attempts=attempts)
        assert layers() == 4  # the block, and two plain calls below it and in it
        assert now() == on(1000)
    assert layers() == 1
    assert now() == on(1000)


def test_plain_calls_in_many_threads_do_not_pile_up() -> None:
    start = threading.Barrier(4)

    def switch(offset: int) -> None:
        start.wait()
        for i in range(300):
            set_testing(True, attempts=offset + i + 1)

    a = BlockThread(2)
    a.enter()
    threads = [threading.Thread(target=switch, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(T)
    set_testing(True, attempts=1)  # the threads' last calls are known to be plain now
    # The plain off from the start (A's block is above it), A's block, the threads' newest
    # call, and this one: none of the 1200 others.
    assert layers() == 4
    assert now() == on(1)
    a.leave()
    assert now() == OFF
    assert layers() == 1  # the plain off from the test's start


# -- repr ------------------------------------------------------------------------------------


def test_the_restores_repr_says_what_it_set_and_what_leaving_leaves() -> None:
    assert repr(set_testing(True, attempts=2, cap=True)) == (
        "<set_testing on, attempts=2 (cap): leaving restores off>"
    )
    set_testing(True)
    with set_testing(False) as switch:
        assert switch is TESTING
        inner = set_testing(True, attempts=3)
        assert repr(inner) == "<set_testing on, attempts=3: leaving restores off>"
        with inner:
            pass
        assert repr(inner) == "<set_testing on, attempts=3: ended>"
    outer = set_testing(False)
    assert repr(outer) == "<set_testing off: leaving restores on>"


# -- the pytest fixture ----------------------------------------------------------------------


@pytest.fixture
def switch_checked_after() -> Iterator[None]:
    """Set up before ``clarifai_testing``, so torn down after it: sees the state it restored."""
    set_testing(True, attempts=6)
    yield
    assert now() == on(6)
    assert layers() == 1


def test_the_fixture_ends_plain_calls_of_the_test_and_of_its_threads(
    switch_checked_after: None, clarifai_testing: Callable[..., Any]
) -> None:
    clarifai_testing(True, attempts=3)
    thread = threading.Thread(target=lambda: clarifai_testing(False))
    thread.start()
    thread.join(T)
    assert now() == OFF


# -- properties ------------------------------------------------------------------------------

#: Each block's number twice: its first place is where it is entered, its second where it is
#: left. Every permutation is a possible interleaving of entering and leaving.
INTERLEAVINGS = st.integers(1, 4).flatmap(lambda n: st.permutations([*range(n), *range(n)]))
SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60
)


def expected(base: State, opened: list[int]) -> State:
    """The newest open block's state (block ``i`` sets attempts ``i + 2``), else the base."""
    return on(opened[-1] + 2) if opened else base


@SETTINGS
@given(order=INTERLEAVINGS, base_on=st.booleans())
def test_property_blocks_in_any_order_in_one_thread_leave_nothing_behind(
    order: list[int], base_on: bool
) -> None:
    _forget_everything()
    base = on(9) if base_on else OFF
    set_base(base)
    restores: dict[int, Any] = {}
    opened: list[int] = []
    for block in order:
        if block not in restores:
            restores[block] = set_testing(True, attempts=block + 2)
            restores[block].__enter__()
            opened.append(block)
        else:
            restores[block].__exit__(None, None, None)
            opened.remove(block)
        assert now() == expected(base, opened)
    assert now() == base
    assert layers() == 1


@SETTINGS
@given(order=INTERLEAVINGS, plain_at=st.lists(st.integers(0, 7), max_size=4))
def test_property_plain_calls_inside_blocks_do_not_outlive_them(
    order: list[int], plain_at: list[int]
) -> None:
    _forget_everything()
    set_testing(True, attempts=9)
    restores: dict[int, Any] = {}
    opened: list[int] = []
    for step, block in enumerate(order):
        if block not in restores:
            restores[block] = set_testing(True, attempts=block + 2)
            restores[block].__enter__()
            opened.append(block)
        else:
            restores[block].__exit__(None, None, None)
            opened.remove(block)
        if step in plain_at and opened:
            set_testing(True, attempts=100 + step)
            assert now() == on(100 + step)
    assert now() == on(9)
    assert layers() == 1


@settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25
)
@given(order=INTERLEAVINGS)
def test_property_blocks_in_threads_in_any_order_leave_nothing_behind(order: list[int]) -> None:
    _forget_everything()
    threads: dict[int, BlockThread] = {}
    opened: list[int] = []
    for block in order:
        if block not in threads:
            threads[block] = BlockThread(block + 2)
            threads[block].enter()
            opened.append(block)
        else:
            threads[block].leave()
            opened.remove(block)
        assert now() == expected(OFF, opened)
    assert now() == OFF
    assert layers() == 1
