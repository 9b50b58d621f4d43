"""The testing switch: it skips the rate limiter's waits without booking the slots it skips, and
``with set_testing(True)`` blocks that overlap (two threads, two asyncio tasks) or nest leave
the switch as it was before the first of them.

Secrets are the conftest's fake ones. Timing bounds are generous: they only tell "at once" from
the several seconds the booked slots would make a call wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, Path, T

from clarifai_interceptor import aio
from clarifai_interceptor._switch import TESTING
from clarifai_interceptor.testing import FakeClarifai, Status, set_testing

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


# -- testing mode and the rate limiter ---------------------------------------------------------


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


# -- overlapping and nested blocks --------------------------------------------------------------


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
