"""Testing mode (`set_testing`): its values, the pytest fixture, the state left by nested and
overlapping blocks in one thread, in threads and in asyncio tasks, and that testing mode books no
rate-limiter slots.

Each block of the switch tests sets ``attempts`` of its own, so the state in force names the block
it comes from. Orderings are deterministic: a block in a thread or task is entered, left, and does
things inside on cue, each step finished before the next begins.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, Path, T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clarifai_interceptor.testing
from clarifai_interceptor import _switch, aio
from clarifai_interceptor._switch import TESTING, set_testing
from clarifai_interceptor.testing import FakeClarifai, Status

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


# -- helpers of the tests below --------------------------------------------------------------
METHOD = "ListModels"

#: A call's timeout that bounds its wait for a rate-limit permit to 5 s: at the rate the
#: limiter starts from after a throttle (about 15/s), 75 booked slots fill it.
BOUNDED = 5.0

#: Calls made in testing mode: twice what fits in `BOUNDED` at that rate.
CALLS = 150

#: Calls that fit in `T` at that rate (about 5 s of slots): all succeed even if booked.
FEW = 75

#: "At once": well under the 5 s the booked slots would make the next call wait. The call after
#: the block has this timeout, so that the limiter refuses it at once rather than wait 5 s.
PROMPT = 2.5


@pytest.fixture(autouse=True)
def _testing_off() -> Iterator[None]:
    """Each test starts and ends with testing mode off (a test that fails may leave it on)."""
    set_testing(False)
    yield
    set_testing(False)


def list_models(stub: service_pb2_grpc.V2Stub, timeout: float) -> service_pb2.MultiModelResponse:
    return stub.ListModels(service_pb2.ListModelsRequest(), timeout=timeout)


def throttle_once(fake: FakeClarifai) -> None:
    """The next call is throttled once (then retried): the adaptive limiter wakes and paces."""
    fake.script(METHOD, Status(status_code_pb2.CONN_THROTTLED))


def timed_call(stub: service_pb2_grpc.V2Stub) -> tuple[float, object]:
    """One call with a `PROMPT` timeout (the limiter refuses at once a permit it cannot give
    within it): the seconds it took, and its response or its error."""
    started = time.monotonic()
    try:
        outcome: object = list_models(stub, PROMPT)
    except grpc.RpcError as exc:
        outcome = exc
    return time.monotonic() - started, outcome


def refusal(stub: service_pb2_grpc.V2Stub) -> grpc.RpcError | None:
    """One call with the `BOUNDED` timeout: its error, or None if it succeeded."""
    try:
        list_models(stub, BOUNDED)
    except grpc.RpcError as exc:
        return exc
    return None


async def aio_refusal(stub: service_pb2_grpc.V2Stub) -> grpc.RpcError | None:
    """`refusal` on an aio channel."""
    try:
        await stub.ListModels(service_pb2.ListModelsRequest(), timeout=BOUNDED)
    except grpc.RpcError as exc:
        return exc
    return None


def refusals(refused: list[tuple[int, grpc.RpcError]]) -> str:
    number, error = refused[0]
    return f"{len(refused)} of {CALLS} calls refused in testing mode, from call {number}: {error!r}"


def assert_prompt_success(took: float, outcome: object) -> None:
    assert not isinstance(outcome, grpc.RpcError), (
        f"the call after the block found no permit within {PROMPT} s: {outcome!r}"
    )
    assert outcome.status.code == status_code_pb2.SUCCESS  # type: ignore[attr-defined]
    assert took < PROMPT, f"the call after the block waited {took:.2f} s for the limiter"


class Block(threading.Thread):
    """A thread inside ``with set_testing(True)`` from `enter` until `leave`; it notes
    whether testing mode is on just before it leaves."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._entered = threading.Event()
        self._leave = threading.Event()
        self.on_before_leaving: bool | None = None

    def run(self) -> None:
        with set_testing(True):
            self._entered.set()
            self._leave.wait(T)
            self.on_before_leaving = TESTING.active

    def enter(self) -> None:
        self.start()
        assert self._entered.wait(T)

    def leave(self) -> None:
        self._leave.set()
        self.join(T)
        assert not self.is_alive()


@pytest.fixture
def switch_on_before() -> Iterator[None]:
    """Set up before ``clarifai_testing``, so torn down after it: sees the state it restored."""
    set_testing(True, attempts=6)
    yield
    assert (TESTING.active, TESTING.attempts) == (True, 6)


# -- set_testing: the switch's values and the pytest fixture ---------------------------------


def test_the_switch_is_off_by_default_and_changes_nothing_then() -> None:
    assert not TESTING.active
    assert TESTING.attempts is None
    assert TESTING.wait(1.5) == 1.5
    assert TESTING.max_attempts(5) == 5
    assert repr(TESTING) == "<Testing off>"


def test_set_testing_zeroes_waits_and_forces_or_caps_attempts() -> None:
    set_testing(True)
    assert TESTING.active
    assert TESTING.wait(1.5) == 0.0
    assert TESTING.max_attempts(5) == 5  # no attempts given: the policy's
    assert repr(TESTING) == "<Testing on: attempts=policy's>"
    set_testing(True, attempts=7)
    assert TESTING.max_attempts(5) == 7  # forced, above the policy too
    assert TESTING.max_attempts(1) == 7
    set_testing(True, attempts=2, cap=True)
    assert (TESTING.attempts, TESTING.cap) == (2, True)
    assert TESTING.max_attempts(5) == 2
    assert TESTING.max_attempts(1) == 1  # only lowered
    assert repr(TESTING) == "<Testing on: attempts=2 (cap)>"
    set_testing(False)
    assert not TESTING.active
    assert TESTING.max_attempts(5) == 5


def test_set_testing_as_a_context_manager_restores_the_state_before() -> None:
    set_testing(True, attempts=3)
    with set_testing(False) as switch:
        assert switch is TESTING
        assert not TESTING.active
        with set_testing(True, attempts=1):
            assert TESTING.max_attempts(5) == 1
        assert not TESTING.active
    assert (TESTING.active, TESTING.attempts) == (True, 3)
    with pytest.raises(RuntimeError), set_testing(True, attempts=9):
        raise RuntimeError("restored even so")
    assert TESTING.attempts == 3
    assert repr(set_testing(True)) == "<set_testing on: leaving restores on>"


@pytest.mark.parametrize(
    ("on", "kwargs", "message"),
    [
        (True, {"attempts": 0}, "attempts must be an int >= 1"),
        (True, {"attempts": -1}, "attempts must be an int >= 1"),
        (True, {"attempts": True}, "attempts must be an int >= 1"),
        (True, {"attempts": 1.5}, "attempts must be an int >= 1"),
        (True, {"attempts": "2"}, "attempts must be an int >= 1"),
        (False, {"attempts": 2}, "attempts applies only while testing is on"),
        ("yes", {}, "on must be a bool"),
        (1, {}, "on must be a bool"),
        (True, {"cap": 1}, "cap must be a bool"),
    ],
)
def test_set_testing_refuses_bad_values_and_changes_nothing(
    on: Any, kwargs: dict[str, Any], message: str
) -> None:
    set_testing(True, attempts=4)
    with pytest.raises(ValueError, match=message):
        set_testing(on, **kwargs)
    assert (TESTING.active, TESTING.attempts) == (True, 4)


def test_the_switch_is_process_wide_across_threads_and_tasks() -> None:
    seen: list[int] = []

    def in_thread() -> None:
        seen.append(TESTING.max_attempts(5))

    async def in_task() -> int:
        return TESTING.max_attempts(5)

    with set_testing(True, attempts=2):
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(timeout=10)
        seen.append(asyncio.run(in_task()))
    assert seen == [2, 2]


def test_concurrent_switching_never_shows_half_a_state() -> None:
    states = [(True, 2, False), (True, 9, True), (False, None, False)]
    problems: list[object] = []
    start = threading.Barrier(6)

    def write(offset: int) -> None:
        start.wait()
        for i in range(2000):
            on, attempts, cap = states[(i + offset) % 3]
            set_testing(on, attempts=attempts, cap=cap)

    def read() -> None:
        start.wait()
        for _ in range(4000):
            # 2 (forced), min(9, 3) = 3 (capped), 3 (off: the policy's): never 9.
            seen = TESTING.max_attempts(3)
            if seen not in (2, 3):
                problems.append(seen)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert problems == []


def test_set_testing_is_reexported_from_testing() -> None:
    assert clarifai_interceptor.testing.set_testing is _switch.set_testing
    assert "set_testing" in clarifai_interceptor.testing.__all__


def test_the_pytest_fixture_turns_testing_on_and_restores_after(
    switch_on_before: None, clarifai_testing: Callable[..., Any]
) -> None:
    assert TESTING.active
    assert TESTING.attempts is None  # on, with each policy's attempts
    clarifai_testing(True, attempts=3)
    assert TESTING.max_attempts(5) == 3


# -- testing mode and the rate limiter -------------------------------------------------------


def test_testing_mode_skips_the_limiters_waits_without_booking_its_slots(
    path: Path, fake: FakeClarifai
) -> None:
    """After a throttle wakes the limiter, 150 calls in a row in testing mode all succeed (none
    is refused for the waits testing mode skipped), and after the block a call on a new channel
    with the same PAT goes at once."""
    throttle_once(fake)
    refused: list[tuple[int, grpc.RpcError]] = []
    with set_testing(True):
        stub = path.stub()
        for number in range(1, CALLS + 1):
            error = refusal(stub)
            if error is not None:
                refused.append((number, error))
    assert not refused, refusals(refused)
    assert len(fake.calls_to(METHOD)) == CALLS + 1  # the throttled attempt, then one each
    assert_prompt_success(*timed_call(path.stub()))


@pytest.mark.asyncio
async def test_testing_mode_books_no_limiter_slots_on_aio(fake: FakeClarifai) -> None:
    """On an aio channel, after a throttle, 150 calls in a row in testing mode all succeed,
    and after the block a call on a new aio channel with the same PAT goes at once."""
    throttle_once(fake)
    refused: list[tuple[int, grpc.RpcError]] = []
    with set_testing(True):
        async with aio.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            for number in range(1, CALLS + 1):
                error = await aio_refusal(stub)
                if error is not None:
                    refused.append((number, error))
    assert not refused, refusals(refused)
    async with aio.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        started = time.monotonic()
        try:
            outcome: object = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=PROMPT)
        except grpc.RpcError as exc:
            outcome = exc
        took = time.monotonic() - started
    assert_prompt_success(took, outcome)


def test_limiter_slots_skipped_in_testing_mode_do_not_outlive_the_block(
    path: Path, fake: FakeClarifai
) -> None:
    """Calls made in testing mode after a throttle leave no slots booked behind them: once the
    block ends, a call on a new channel with the same PAT goes at once (not after the seconds
    of slots the block's calls would have waited for)."""
    throttle_once(fake)
    with set_testing(True):
        stub = path.stub()
        for _ in range(FEW):
            list_models(stub, T)
    assert_prompt_success(*timed_call(path.stub()))


# -- overlapping blocks (end to end) ---------------------------------------------------------


def test_blocks_overlapping_in_two_threads_leave_testing_off() -> None:
    """A enters, B enters, A leaves, B leaves: testing mode is off after both (and B, still
    inside when A left, still had it on)."""
    a, b = Block(), Block()
    a.enter()
    b.enter()
    a.leave()
    b.leave()
    assert not TESTING.active, "testing mode stayed on after both blocks ended"
    assert b.on_before_leaving, "A leaving turned testing mode off while B was still inside"


@pytest.mark.asyncio
async def test_blocks_overlapping_in_two_tasks_leave_testing_off() -> None:
    """Two asyncio tasks: A enters, B enters, A leaves, B leaves; testing mode is off after
    both (and B, still inside when A left, still had it on)."""
    entered = {"a": asyncio.Event(), "b": asyncio.Event()}
    leave = {"a": asyncio.Event(), "b": asyncio.Event()}
    on_before_leaving: dict[str, bool] = {}

    async def block(name: str) -> None:
        with set_testing(True):
            entered[name].set()
            await leave[name].wait()
            on_before_leaving[name] = TESTING.active

    a = asyncio.ensure_future(block("a"))
    await asyncio.wait_for(entered["a"].wait(), T)
    b = asyncio.ensure_future(block("b"))
    await asyncio.wait_for(entered["b"].wait(), T)
    leave["a"].set()
    await asyncio.wait_for(a, T)
    leave["b"].set()
    await asyncio.wait_for(b, T)
    assert not TESTING.active, "testing mode stayed on after both blocks ended"
    assert on_before_leaving["b"], "A leaving turned testing mode off while B was still inside"


def test_a_block_left_in_another_thread_keeps_testing_on_for_the_one_inside() -> None:
    """A enters, B enters, B leaves: testing mode is still on for A; A leaves: it is off."""
    a, b = Block(), Block()
    a.enter()
    b.enter()
    b.leave()
    a.leave()
    assert a.on_before_leaving, "B leaving turned testing mode off while A was still inside"
    assert not TESTING.active, "testing mode stayed on after both blocks ended"


def test_nested_blocks_in_one_thread_restore_each_state() -> None:
    """Nested blocks in one thread: each one's exit restores the state before it."""
    with set_testing(True):
        assert TESTING.active
        assert TESTING.attempts is None
        with set_testing(True, attempts=2):
            assert TESTING.attempts == 2
            with set_testing(False):
                assert not TESTING.active
            assert TESTING.active
            assert TESTING.attempts == 2
        assert TESTING.active
        assert TESTING.attempts is None
    assert not TESTING.active
