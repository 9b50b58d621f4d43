"""Interoperability: stacked with OpenTelemetry's gRPC client interceptor, in both orders."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import FAST, PAT, PAT_CREDS, T
from opentelemetry.instrumentation.grpc import aio_client_interceptors, client_interceptor, grpcext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from clarifai_interceptor import ClarifaiInterceptor, aio, wrap_channel
from clarifai_interceptor.testing import FakeClarifai


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


Build = Callable[[grpc.Channel, object], grpc.Channel]

#: name -> (how to stack the two on a raw channel, spans per call when one retry happens)
ORDERS: dict[str, tuple[Build, int]] = {
    # OpenTelemetry outermost: one span for the whole call, retries inside it.
    "otel-over-interceptor": (
        lambda raw, otel: grpcext.intercept_channel(
            grpc.intercept_channel(raw, ClarifaiInterceptor(PAT_CREDS, retry=FAST)), otel
        ),
        1,
    ),
    "otel-over-wrapper": (
        lambda raw, otel: grpcext.intercept_channel(wrap_channel(raw, PAT_CREDS, retry=FAST), otel),
        1,
    ),
    # Ours outermost: every attempt is a span of its own, so retries are visible.
    "interceptor-over-otel": (
        lambda raw, otel: grpc.intercept_channel(
            grpcext.intercept_channel(raw, otel), ClarifaiInterceptor(PAT_CREDS, retry=FAST)
        ),
        2,
    ),
    "wrapper-over-otel": (
        lambda raw, otel: wrap_channel(grpcext.intercept_channel(raw, otel), PAT_CREDS, retry=FAST),
        2,
    ),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_trace_context_and_credentials_both_arrive_and_retries_keep_tracing(
    order: str, fake: FakeClarifai, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    build, spans_per_call = ORDERS[order]
    raw = grpc.insecure_channel(fake.target)
    stub = service_pb2_grpc.V2Stub(build(raw, client_interceptor(tracer_provider=provider)))
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as parent:
        response = stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
    raw.close()
    assert response.status.code == 10000
    trace_id = format(parent.get_span_context().trace_id, "032x")

    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 2  # one retry
    for call in calls:
        assert call.headers("authorization") == [f"Key {PAT}"]
        traceparent = call.header("traceparent")
        assert traceparent is not None
        assert traceparent.split("-")[1] == trace_id  # every attempt in the caller's trace
        assert call.request.user_app_id.user_id == PAT_CREDS.user_id

    rpc_spans = [s for s in exporter.get_finished_spans() if s.name != "caller"]
    assert len(rpc_spans) == spans_per_call
    for span in rpc_spans:
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
    assert rpc_spans[-1].status.status_code is not StatusCode.ERROR
    if spans_per_call == 2:
        assert rpc_spans[0].status.status_code is StatusCode.ERROR  # the failed attempt


@pytest.mark.asyncio
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "otel-first"])
async def test_aio_stacked_with_opentelemetry_in_both_orders(
    ours_first: bool, fake: FakeClarifai, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    ours = aio.interceptors(PAT_CREDS, retry=FAST)
    otel = aio_client_interceptors(tracer_provider=provider)
    chain = [*ours, *otel] if ours_first else [*otel, *ours]
    fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
    async with grpc.aio.insecure_channel(fake.target, interceptors=chain) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with provider.get_tracer("test").start_as_current_span("caller") as parent:
            response = await stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
    assert response.status.code == 10000
    trace_id = format(parent.get_span_context().trace_id, "032x")
    calls = fake.calls_to("PostModelOutputs")
    assert len(calls) == 2
    for call in calls:
        assert call.headers("authorization") == [f"Key {PAT}"]
        traceparent = call.header("traceparent")
        assert traceparent is not None
        assert traceparent.split("-")[1] == trace_id
    rpc_spans = [s for s in exporter.get_finished_spans() if s.name != "caller"]
    assert rpc_spans  # tracing still works around or inside the retries
    assert rpc_spans[-1].status.status_code is not StatusCode.ERROR
