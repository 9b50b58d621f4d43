"""`call_outcome` answers for failed calls too: the error a call raised after its retries tells
how many attempts it made and what cut them short, and anything that is no call's outcome is
refused.

Every call goes to `FakeClarifai` over real gRPC, on both sync paths (the ``path`` fixture) and
on aio; each test builds its own channel, so each call starts with a full retry budget.
"""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import FAST, PAT_CREDS, Path, T

from clarifai_interceptor import CallOutcome, RetryBudget, aio, call_outcome
from clarifai_interceptor.testing import FakeClarifai

METHOD = "ListModels"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: A budget of 3 tokens: the first failure leaves 2 (more than half: retried), the second
#: leaves 1 (half or less): the budget stops the retrying after 2 attempts.
SMALL_BUDGET = dataclasses.replace(FAST, budget=RetryBudget(max_tokens=3))
EXHAUSTED = CallOutcome(attempts=FAST.max_attempts, cut_by="attempts", throttled=0)
BUDGET_CUT = CallOutcome(attempts=2, cut_by="budget", throttled=0)


def request() -> service_pb2.ListModelsRequest:
    return service_pb2.ListModelsRequest()


def assert_outcome(error: grpc.RpcError, expected: CallOutcome) -> None:
    said = call_outcome(error)
    assert said == expected, f"call_outcome said {said}, not {expected}"


def raised_by_call(stub: service_pb2_grpc.V2Stub) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListModels(request(), timeout=T)
    return raised.value


def raised_by_with_call(stub: service_pb2_grpc.V2Stub) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListModels.with_call(request(), timeout=T)
    return raised.value


def test_the_error_a_blocking_call_raised_after_every_attempt_tells_them(
    path: Path, fake: FakeClarifai
) -> None:
    """A blocking call that failed ``UNAVAILABLE`` 5 times under a 5-attempt policy raises an
    error for which `call_outcome` says 5 attempts, cut by ``"attempts"``."""
    fake.script(METHOD, *[UNAVAILABLE] * FAST.max_attempts)
    error = raised_by_call(path.stub(retry=FAST))
    assert error.code() is UNAVAILABLE
    assert len(fake.calls_to(METHOD)) == FAST.max_attempts
    assert_outcome(error, EXHAUSTED)


def test_the_error_with_call_raised_after_every_attempt_tells_them(
    path: Path, fake: FakeClarifai
) -> None:
    """``with_call`` that failed ``UNAVAILABLE`` 5 times under a 5-attempt policy raises an
    error for which `call_outcome` says 5 attempts, cut by ``"attempts"``."""
    fake.script(METHOD, *[UNAVAILABLE] * FAST.max_attempts)
    error = raised_by_with_call(path.stub(retry=FAST))
    assert error.code() is UNAVAILABLE
    assert len(fake.calls_to(METHOD)) == FAST.max_attempts
    assert_outcome(error, EXHAUSTED)


def test_the_error_of_a_call_the_retry_budget_cut_says_budget(
    path: Path, fake: FakeClarifai
) -> None:
    """A call whose retry budget ran out raises an error for which `call_outcome` says the
    attempts made and ``cut_by="budget"``, blocking or through ``with_call``."""
    fake.set_default(METHOD, UNAVAILABLE)
    error = raised_by_call(path.stub(retry=SMALL_BUDGET))
    assert len(fake.calls_to(METHOD)) == 2
    assert_outcome(error, BUDGET_CUT)
    error = raised_by_with_call(path.stub(retry=SMALL_BUDGET))  # a new channel: a full budget
    assert len(fake.calls_to(METHOD)) == 4
    assert_outcome(error, BUDGET_CUT)


def test_the_error_of_a_call_made_once_reads_as_one_attempt(path: Path, fake: FakeClarifai) -> None:
    """An error that is never retried (``NOT_FOUND``): `call_outcome` says one attempt,
    nothing cut."""
    fake.script(METHOD, grpc.StatusCode.NOT_FOUND)
    error = raised_by_call(path.stub(retry=FAST))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert call_outcome(error) == CallOutcome(1, None, 0)


@pytest.mark.asyncio
async def test_the_error_an_aio_call_raised_tells_its_attempts_and_what_cut_them(
    fake: FakeClarifai,
) -> None:
    """On aio, the error ``await stub.Method(...)`` raised after 5 ``UNAVAILABLE`` failures
    says 5 attempts cut by ``"attempts"``; one whose retry budget ran out says ``"budget"``."""
    fake.set_default(METHOD, UNAVAILABLE)
    async with aio.insecure_channel(fake.target, PAT_CREDS, retry=FAST) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await service_pb2_grpc.V2Stub(channel).ListModels(request(), timeout=T)
    assert len(fake.calls_to(METHOD)) == FAST.max_attempts
    assert_outcome(raised.value, EXHAUSTED)
    async with aio.insecure_channel(fake.target, PAT_CREDS, retry=SMALL_BUDGET) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            await service_pb2_grpc.V2Stub(channel).ListModels(request(), timeout=T)
    assert len(fake.calls_to(METHOD)) == FAST.max_attempts + 2
    assert_outcome(raised.value, BUDGET_CUT)


@pytest.mark.parametrize(
    "not_a_call", [None, "x", 42, object()], ids=["None", "str", "int", "object"]
)
def test_call_outcome_refuses_what_is_no_call(not_a_call: object) -> None:
    """`call_outcome` of something that is neither a call object nor a call's error raises
    TypeError (it does not answer "one attempt" for it)."""
    with pytest.raises(TypeError):
        call_outcome(not_a_call)
