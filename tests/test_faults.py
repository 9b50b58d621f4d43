"""Faults survived against a server in another process: restarts on the same port, a connection
dropped mid-stream, a server sleeping past the deadline; and the soak script (no fd growth)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import Path, T
from helpers import (
    AIO_PATHS,
    ROOT,
    SUCCESS,
    UNAVAILABLE,
    UNLIMITED,
    aio_stub,
    bare_predict_request,
    call_style,
    list_models,
    report,
)

from clarifai_interceptor import RetryPolicy
from clarifai_interceptor.testing import FakeClarifai

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED

#: A server in a child process: it imports everything, waits for "go" on stdin, serves on
#: 127.0.0.1:PORT (0: a free one), prints "port N", and answers "calls" with the arrivals
#: (monotonic time, x-retry-attempt) as JSON. Modes: "fake" (FakeClarifai), "slow" (FakeClarifai
#: whose ListModels sleeps 60 s), "stall" (GenerateModelOutputs sends m0, m1, then stalls).
SERVER = textwrap.dedent(
    """
    import json, sys, time
    from concurrent import futures

    import grpc
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2
    from clarifai_grpc.grpc.api.status import status_code_pb2

    from clarifai_interceptor.testing import Delay, FakeClarifai

    mode, port = sys.argv[1], int(sys.argv[2])
    if sys.stdin.readline().strip() != "go":
        sys.exit(1)
    if mode == "stall":
        arrivals = []

        def generate(request, context):
            metadata = dict(context.invocation_metadata())
            arrivals.append([time.monotonic(), metadata.get("x-retry-attempt")])
            for n in range(2):
                response = service_pb2.MultiOutputResponse(
                    outputs=[resources_pb2.Output(id=f"m{n}")]
                )
                response.status.code = status_code_pb2.SUCCESS
                yield response
            print("stalled", flush=True)
            time.sleep(60)

        handler = grpc.unary_stream_rpc_method_handler(
            generate,
            request_deserializer=service_pb2.PostModelOutputsRequest.FromString,
            response_serializer=service_pb2.MultiOutputResponse.SerializeToString,
        )
        server = grpc.server(futures.ThreadPoolExecutor(4))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "clarifai.api.V2", {"GenerateModelOutputs": handler}
            ),)
        )
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        calls = lambda: arrivals
    else:
        fake = FakeClarifai(port=port)
        if mode == "slow":
            fake.set_default("ListModels", Delay(60, status_code_pb2.SUCCESS))
        fake.start()
        port = int(fake.target.rsplit(":", 1)[1])
        calls = lambda: [
            [c.time, c.header("x-retry-attempt")]
            for c in fake.calls
            if c.method != "ListStatusCodes"
        ]
    print("port", port, flush=True)
    for line in sys.stdin:
        if line.strip() == "calls":
            print(json.dumps(calls()), flush=True)
    """
)


class ServerProcess:
    """A server in a child process (see `SERVER`), started ready to bind but not yet bound."""

    def __init__(self, mode: str, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, mode, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = port

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def line(self, timeout: float = 30) -> str:
        return self._lines.get(timeout=timeout)

    def go(self) -> int:
        """Bind and serve; return the port."""
        self._send("go")
        words = self.line().split()
        assert words[0] == "port", words
        self.port = int(words[1])
        return self.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self) -> list[tuple[float, str | None]]:
        """The calls received so far: (monotonic arrival time, x-retry-attempt)."""
        self._send("calls")
        return [(at, attempt) for at, attempt in json.loads(self.line())]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=T)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start child-process servers; every one is killed after the test."""
    started: list[ServerProcess] = []

    def start(mode: str, port: int = 0) -> ServerProcess:
        server = ServerProcess(mode, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


#: Retries that ride out a server restart: the policy's timeout (5 s) bounds every call. No
#: budget: under a real outage the budget would rightly stop the retries of most calls.
RIDE_OUT = RetryPolicy(
    max_attempts=100, initial_backoff=0.05, max_backoff=0.25, jitter=0, timeout=5, budget=None
)


def test_fake_restarts_on_the_same_port_and_survives_a_taken_one() -> None:
    first = FakeClarifai().start()
    target = first.target
    first.stop()
    port = int(target.rsplit(":", 1)[1])
    with FakeClarifai(port=port) as second, grpc.insecure_channel(target) as channel:
        assert second.target == target
        assert list_models(service_pb2_grpc.V2Stub(channel)).status.code == SUCCESS
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake = FakeClarifai(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError):
            fake.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.target
    fake.start()  # still startable (on that port, now free)
    fake.stop()


def test_calls_survive_a_server_restart_on_the_same_port(
    servers: Callable[..., ServerProcess],
) -> None:
    first = servers("fake")
    port = first.go()
    second = servers("fake", port)  # imported and waiting: it binds the moment it is told
    paths = [Path(kind, first.target) for kind in ("interceptor", "wrapper")]
    stubs = [built.stub(retry=RIDE_OUT) for built in paths]
    done: list[tuple[float, float, object]] = []  # (start, end, True or the RpcError)
    stop = threading.Event()

    def one(stub: Any) -> None:
        started = time.monotonic()
        try:
            list_models(stub, timeout=10)
            outcome: object = True
        except grpc.RpcError as exc:
            outcome = exc
        done.append((started, time.monotonic(), outcome))

    def caller(stub: Any) -> None:
        while not stop.is_set():
            one(stub)

    callers = [threading.Thread(target=caller, args=(stubs[n % 2],)) for n in range(4)]
    for thread in callers:
        thread.start()
    time.sleep(0.5)
    first.kill()
    killed = time.monotonic()
    time.sleep(0.25)
    late = [threading.Thread(target=one, args=(stub,)) for stub in stubs]  # begun in the gap
    for thread in late:
        thread.start()
    time.sleep(0.25)
    restarting = time.monotonic()  # nothing can succeed between `killed` and this
    second.go()
    back = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for thread in callers + late:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in callers + late)
    for built in paths:
        built.close()

    failures = [outcome for _, _, outcome in done if outcome is not True]
    assert failures == []  # every call, those the outage caught included, succeeded
    # Pending when the server came back: each of the 4 callers' call, and the 2 begun in the
    # gap (nothing can succeed while no server listens).
    pending = [(start, end) for start, end, _ in done if start < restarting < end]
    begun_in_gap = [(start, end) for start, end, _ in done if killed < start < restarting]
    assert len(pending) >= 4 + 2
    assert len(begun_in_gap) >= 2
    assert all(end > restarting for _, end in begun_in_gap)
    slowest = max(end - start for start, end, _ in done)
    assert slowest <= 5 + 0.5  # within the policy's timeout
    retried = [attempt for _, attempt in second.calls() if attempt is not None]
    assert retried
    report(
        f"restart: server down {back - killed:.2f} s; {len(done)} calls, 0 failed; "
        f"{len(pending)} pending when it came back (begun in the gap: {len(begun_in_gap)}), "
        f"first back {min(end for _, end in pending) - back:.2f} s after the restart; slowest "
        f"call {slowest:.2f} s (policy timeout 5 s); {len(retried)} retries reached the new server"
    )


@pytest.mark.parametrize("kind", ["interceptor", "wrapper", *AIO_PATHS])
def test_connection_dropped_mid_stream_gives_the_messages_then_the_error(
    servers: Callable[..., ServerProcess], kind: str
) -> None:
    first = servers("stall")
    port = first.go()
    second = servers("stall", port)
    received: list[str] = []

    def drop() -> None:
        assert first.line() == "stalled"  # m0 and m1 are sent; the server hangs
        assert len(first.calls()) == 1
        first.kill()
        second.go()  # a retry after the drop would now reach a server and duplicate m0, m1

    if kind in AIO_PATHS:

        async def read() -> grpc.RpcError:
            async with aio_stub(kind, first.target) as stub:
                stream = stub.GenerateModelOutputs(bare_predict_request(), timeout=T)
                try:
                    async for response in stream:
                        received.append(response.outputs[0].id)
                        if len(received) == 2:
                            await asyncio.to_thread(drop)
                except grpc.RpcError as exc:
                    return exc
            raise AssertionError("the stream ended without an error")

        error = asyncio.run(read())
    else:
        built = Path(kind, first.target)

        def read(stream: Any) -> None:
            for response in stream:
                received.append(response.outputs[0].id)
                if len(received) == 2:
                    drop()

        with pytest.raises(grpc.RpcError) as info:
            read(built.stub().GenerateModelOutputs(bare_predict_request(), timeout=T))
        error = info.value
        built.close()
    assert received == ["m0", "m1"]
    assert error.code() is UNAVAILABLE
    time.sleep(0.5)
    assert second.calls() == []  # not re-issued after the first message


@pytest.mark.parametrize("kind", ["interceptor", "wrapper", *AIO_PATHS])
def test_server_sleeping_past_the_deadline_fails_on_time(
    servers: Callable[..., ServerProcess], kind: str
) -> None:
    server = servers("slow")
    server.go()
    # Even DEADLINE_EXCEEDED is retryable here: only the shared deadline can stop the attempts.
    policy = dataclasses.replace(
        UNLIMITED, retryable_codes=frozenset({UNAVAILABLE, DEADLINE_EXCEEDED})
    )
    deadline = 1.0
    elapsed: list[float] = []
    codes: list[grpc.StatusCode] = []
    if kind in AIO_PATHS:

        async def calls() -> None:
            async with aio_stub(kind, server.target, retry=policy) as stub:
                await stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
                started = time.monotonic()
                try:
                    await list_models(stub, timeout=deadline)
                except grpc.RpcError as exc:
                    elapsed.append(time.monotonic() - started)
                    codes.append(exc.code())

        asyncio.run(calls())
    else:
        built = Path(kind, server.target)
        stub = built.stub(retry=policy)
        stub.ListStatusCodes(service_pb2.ListStatusCodesRequest(), timeout=T)
        for style in ("call", "future"):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                call_style(stub, style, timeout=deadline)
            elapsed.append(time.monotonic() - started)
            codes.append(info.value.code())
        built.close()
    assert codes
    assert set(codes) == {DEADLINE_EXCEEDED}
    assert all(deadline - 0.01 <= e <= deadline + 0.5 for e in elapsed)
    arrivals = server.calls()
    # One attempt per call (a second one could only start in the last instant before the
    # deadline); with the timeout re-applied per attempt it would be 5 attempts and 5 s.
    assert len(codes) <= len(arrivals) <= 2 * len(codes)
    shown = ", ".join(f"{e:.3f}" for e in elapsed)
    report(
        f"slow server ({kind}): DEADLINE_EXCEEDED after {shown} s (deadline {deadline} s), "
        f"{len(arrivals)} attempt(s)"
    )


def test_soak_script_runs_and_reports_without_fd_growth() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--calls",
            "3000",
            "--warmup",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert figures["calls"] == 3000
    assert figures["errors"] == 0
    for key in ("rss_before_kb", "rss_after_kb", "rss_growth_kb", "fds_before", "fds_after"):
        assert isinstance(figures[key], int), key
    assert figures["rss_growth_kb"] == figures["rss_after_kb"] - figures["rss_before_kb"]
    assert figures["fds_after"] <= figures["fds_before"]
    report(f"soak (3,000 calls): {result.stdout.strip().splitlines()[-1]}")
