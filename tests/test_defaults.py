"""Safe defaults: no deadline nobody asked for, and reads and writes retried differently.

The classification is tested over every method of the installed ``clarifai_grpc``; behaviour
against a real server on every front end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from importlib.metadata import version
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as sc
from conftest import FAST, PAT_CREDS, T

import clarifai_interceptor.aio as cia
from clarifai_interceptor import (
    NO_RETRY,
    READ_PATTERNS,
    READ_RETRY,
    WRITE_RETRY,
    ClarifaiInterceptor,
    RetryPolicy,
    insecure_channel,
    wrap_channel,
)
from clarifai_interceptor._methods import V2_METHODS, WRITES_NAMED_AS_READS, Policies, is_read
from clarifai_interceptor.testing import Fail, FakeClarifai

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
clarifai_grpc_version = version("clarifai-grpc")
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
QUICK = {"initial_backoff": 0, "throttle_backoff": 0, "jitter": 0}


# -- the classification -----------------------------------------------------------------------


def test_every_v2_method_is_a_read_or_a_write_and_the_counts_are_stable() -> None:
    reads = sorted(name for name in V2_METHODS if is_read(name))
    writes = sorted(name for name in V2_METHODS if not is_read(name))
    assert len(reads) + len(writes) == len(V2_METHODS)
    if clarifai_grpc_version == "12.6.0":  # the counts the README gives (CI's floor job differs)
        assert (len(reads), len(writes)) == (133, 140)
    for prefix in ("Patch", "Put", "Delete", "Cancel", "Process"):
        assert not any(name.startswith(prefix) for name in reads), prefix
    for prefix in ("Get", "List", "Stream"):
        named = {name for name in V2_METHODS if name.startswith(prefix)}
        assert {name for name in named if not is_read(name)} <= set(WRITES_NAMED_AS_READS), prefix


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("PostInputs", False),
        ("PostModels", False),
        ("PostModelVersionsUpload", False),
        ("PostModelVersionMetrics", False),  # starts an evaluation: a write
        ("DeleteInputs", False),
        ("PatchModels", False),
        ("PostModelOutputs", True),
        ("PostWorkflowResults", True),
        ("PostSearches", False),  # "optionally save it"
        ("ListNextTaskAssignments", False),  # "re-designed to serve a PUT logic"
        ("ListRunnerItems", False),  # hands out work items
        ("ListRunners", True),
        ("PostAnnotationsSearches", True),
        ("PostInputsSearches", True),
        ("PostSearchesByID", True),
        ("ListModels", True),
        ("GetModel", True),
        ("MyScopes", True),
        ("StreamModelOutputs", True),
        ("GenerateModelOutputs", True),
        ("/clarifai.api.V2/ListModels", True),
        (b"/clarifai.api.V2/PostInputs", False),
    ],
)
def test_methods_fall_where_the_readme_says(method: str | bytes, read: bool) -> None:
    assert is_read(method) is read


def test_every_read_pattern_matches_some_method() -> None:
    for pattern in READ_PATTERNS:
        assert Policies({pattern: READ_RETRY}).get(pattern.replace("*", "")) or any(
            Policies({pattern: READ_RETRY}).get(name) for name in V2_METHODS
        ), pattern


def test_the_most_specific_rule_wins() -> None:
    a, b, c, d = (RetryPolicy(max_attempts=n) for n in (2, 3, 4, 6))
    rules = Policies({"*": a, "Post*": b, "PostInputs": c, "/clarifai.api.V2/PostInputs": d})
    assert rules.get("/clarifai.api.V2/PostInputs") is d
    assert rules.get("PostInputs") is c
    assert rules.get("/clarifai.api.V2/PostModels") is b
    assert rules.get(b"/clarifai.api.V2/ListModels") is a
    assert Policies({"Post*": b}).get("ListModels") is None


def test_read_and_write_policies_differ_only_where_it_matters() -> None:
    assert DEADLINE_EXCEEDED in READ_RETRY.retryable_codes
    assert sc.RPC_REQUEST_TIMEOUT in READ_RETRY.retryable_statuses
    assert WRITE_RETRY.retryable_codes == frozenset()
    # A body status that says "not processed" is retried for writes too.
    for status in (sc.CONN_THROTTLED, sc.MODEL_LOADING, sc.RPC_REQUEST_QUEUE_FULL):
        assert WRITE_RETRY.transient(_response(status))


@pytest.mark.parametrize(
    ("policies", "error", "match"),
    [
        ("Post*", TypeError, "mapping"),
        ({"PostInput": FAST}, ValueError, "not a method of clarifai.api.V2"),
        ({"Post Inputs": FAST}, ValueError, "method name or pattern"),
        ({"": FAST}, ValueError, "method name or pattern"),
        ({7: FAST}, ValueError, "method name or pattern"),
        ({"Post*": 3}, TypeError, r"policies\['Post\*'\] must be a RetryPolicy"),
    ],
)
def test_bad_policies_are_refused_when_the_channel_is_built(
    policies: Any, error: type[Exception], match: str
) -> None:
    raw = grpc.insecure_channel("localhost:1")
    try:
        with pytest.raises(error, match=match):
            wrap_channel(raw, PAT_CREDS, policies=policies)
        with pytest.raises(error, match=match):
            ClarifaiInterceptor(PAT_CREDS, policies=policies)
        with pytest.raises(error, match=match):
            cia.interceptors(PAT_CREDS, policies=policies)
    finally:
        raw.close()


def _response(status: int) -> service_pb2.MultiInputResponse:
    response = service_pb2.MultiInputResponse()
    response.status.code = status
    return response


# -- writes are never resent when they may have reached the server ----------------------------


def sync_stubs(target: str, **kwargs: Any) -> Iterator[tuple[str, service_pb2_grpc.V2Stub]]:
    raw = grpc.insecure_channel(target)
    channel = grpc.intercept_channel(raw, ClarifaiInterceptor(PAT_CREDS, **kwargs))
    yield "interceptor", service_pb2_grpc.V2Stub(channel)
    raw.close()
    wrapped = insecure_channel(target, PAT_CREDS, **kwargs)
    yield "wrapper", service_pb2_grpc.V2Stub(wrapped)
    wrapped.close()


def test_a_dropped_write_is_sent_once_and_a_dropped_read_is_retried(fake: FakeClarifai) -> None:
    for name, stub in sync_stubs(fake.target):
        fake.clear()
        # The server stored the inputs, then the connection dropped: the client sees UNAVAILABLE.
        fake.script("PostInputs", Fail(UNAVAILABLE, "connection reset"))
        with pytest.raises(grpc.RpcError) as failure:
            stub.PostInputs(service_pb2.PostInputsRequest(), timeout=T)
        assert failure.value.code() is UNAVAILABLE
        assert len(fake.calls_to("PostInputs")) == 1, name
        fake.script("ListModels", Fail(UNAVAILABLE, "connection reset"))
        assert stub.ListModels(service_pb2.ListModelsRequest(), timeout=T).status.code == 10000
        assert len(fake.calls_to("ListModels")) == 2, name


def test_a_write_is_retried_on_statuses_that_say_it_was_not_processed(fake: FakeClarifai) -> None:
    for name, stub in sync_stubs(fake.target):
        fake.clear()
        fake.script("PostInputs", sc.CONN_THROTTLED)  # then the default: success
        response = stub.PostInputs(service_pb2.PostInputsRequest(), timeout=T)
        assert response.status.code == sc.SUCCESS
        assert len(fake.calls_to("PostInputs")) == 2, name


def test_a_read_is_retried_on_deadline_exceeded_from_the_server_and_a_write_is_not(
    fake: FakeClarifai,
) -> None:
    for name, stub in sync_stubs(fake.target):
        fake.clear()
        fake.script("GetModel", Fail(DEADLINE_EXCEEDED, "upstream timed out"))
        fake.script("PatchModels", Fail(DEADLINE_EXCEEDED, "upstream timed out"))
        assert stub.GetModel(service_pb2.GetModelRequest(), timeout=T).status.code == 10000
        with pytest.raises(grpc.RpcError):
            stub.PatchModels(service_pb2.PatchModelsRequest(), timeout=T)
        assert len(fake.calls_to("GetModel")) == 2, name
        assert len(fake.calls_to("PatchModels")) == 1, name


def test_a_user_opts_one_write_in_and_an_explicit_policy_applies_everywhere(
    fake: FakeClarifai,
) -> None:
    idempotent = RetryPolicy(**QUICK)
    for name, stub in sync_stubs(fake.target, policies={"PostInputs": idempotent}):
        fake.clear()
        fake.script("PostInputs", UNAVAILABLE)
        fake.script("PostModels", UNAVAILABLE)
        stub.PostInputs(service_pb2.PostInputsRequest(), timeout=T)
        with pytest.raises(grpc.RpcError):
            stub.PostModels(service_pb2.PostModelsRequest(), timeout=T)
        assert (len(fake.calls_to("PostInputs")), len(fake.calls_to("PostModels"))) == (2, 1), name
    for name, stub in sync_stubs(fake.target, retry=FAST):
        fake.clear()
        fake.script("PostModels", UNAVAILABLE)
        stub.PostModels(service_pb2.PostModelsRequest(), timeout=T)
        assert len(fake.calls_to("PostModels")) == 2, name


@pytest.mark.parametrize("method", WRITES_NAMED_AS_READS)
def test_reads_by_name_that_change_state_are_writes(fake: FakeClarifai, method: str) -> None:
    assert method in V2_METHODS
    request = getattr(service_pb2, f"{method}Request")()
    for name, stub in sync_stubs(fake.target):
        fake.clear()
        # The server handed out the work (or saved the search), then the answer was lost.
        fake.script(method, Fail(DEADLINE_EXCEEDED, "upstream timed out"))
        with pytest.raises(grpc.RpcError) as failure:
            getattr(stub, method)(request, timeout=T)
        assert failure.value.code() is DEADLINE_EXCEEDED
        fake.script(method, Fail(UNAVAILABLE, "connection reset"))
        with pytest.raises(grpc.RpcError):
            getattr(stub, method)(request, timeout=T)
        assert len(fake.calls_to(method)) == 2, name  # each sent once
        fake.script(method, sc.CONN_THROTTLED)  # not processed: retried, as any write
        assert getattr(stub, method)(request, timeout=T).status.code == sc.SUCCESS
        assert len(fake.calls_to(method)) == 4, name


@pytest.mark.asyncio
async def test_aio_writes_and_reads_differ_too(fake: FakeClarifai) -> None:
    fake.script("PostInputs", Fail(UNAVAILABLE, "connection reset"))
    fake.script("ListModels", Fail(UNAVAILABLE, "connection reset"))
    async with cia.insecure_channel(fake.target, PAT_CREDS) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(grpc.RpcError):
            await stub.PostInputs(service_pb2.PostInputsRequest(), timeout=T)
        await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
    assert len(fake.calls_to("PostInputs")) == 1
    assert len(fake.calls_to("ListModels")) == 2


# -- no deadline nobody asked for -------------------------------------------------------------


class _Remaining(service_pb2_grpc.V2Servicer):  # type: ignore[misc]
    """Records the deadline each ListModels call arrives with."""

    def __init__(self) -> None:
        self.seen: list[float | None] = []

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append(context.time_remaining())
        response = service_pb2.MultiModelResponse()
        response.status.code = sc.SUCCESS
        return response


@pytest.fixture
def remaining() -> Iterator[tuple[str, _Remaining]]:
    servicer = _Remaining()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_V2Servicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.mark.parametrize("retry", [None, NO_RETRY], ids=["default", "NO_RETRY"])
def test_a_call_nobody_bounded_reaches_the_server_with_no_deadline(
    remaining: tuple[str, _Remaining], retry: RetryPolicy | None
) -> None:
    target, servicer = remaining
    kwargs: dict[str, Any] = {} if retry is None else {"retry": retry}
    for _name, stub in sync_stubs(target, **kwargs):
        stub.ListModels(service_pb2.ListModelsRequest())
        stub.ListModels.future(service_pb2.ListModelsRequest()).result(timeout=T)

    async def aio() -> None:
        async with cia.insecure_channel(target, PAT_CREDS, **kwargs) as channel:
            await service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest())

    asyncio.run(aio())
    assert len(servicer.seen) == 5
    # A deadline gRPC could not represent would show as a huge number; none is sent at all.
    assert all(seen is None or seen > 10**6 for seen in servicer.seen), servicer.seen


def test_total_timeout_is_sent_as_the_deadline_when_asked_for(
    remaining: tuple[str, _Remaining],
) -> None:
    target, servicer = remaining
    for _name, stub in sync_stubs(target, retry=RetryPolicy(total_timeout=7)):
        stub.ListModels(service_pb2.ListModelsRequest())
    assert len(servicer.seen) == 2
    # The server's clock may show a little more than was sent (grpcio 1.83's rounds up to
    # about 10 ms): the policy's 7 s arrives as 6 to 7.05 s, never as no deadline.
    assert all(seen is not None and 6 < seen <= 7.05 for seen in servicer.seen), servicer.seen
