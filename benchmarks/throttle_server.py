"""The throttle benchmark's server: ``clarifai.api.V2`` behind a token bucket, in its own process.

Run as ``python benchmarks/throttle_server.py [CPU]``: it pins itself to that CPU if given,
prints its port, then serves until its standard input closes.

``PostModelOutputs`` admits at most ``rate`` attempts per second (a token bucket of ``burst``
tokens, full at start): an admitted attempt sleeps ``work_ms`` (a wait, not CPU) and succeeds;
any other is answered at once, either with gRPC OK and body status ``CONN_THROTTLED`` (mode
``body``, as Clarifai does) or with gRPC ``UNAVAILABLE`` and trailing metadata
``grpc-retry-pushback-ms``: the milliseconds until the next token (mode ``pushback``). In mode
``body`` the status states the limit as Clarifai does when ``stated`` is true (the default):
description ``Making too many requests``, details ``exceeded limit of N requests per second``
with N the configured rate; with ``stated`` false its details name no limit.

Every attempt is counted under its ``x-bench-client`` metadata value (the client process's tag),
in total and per ``SLICE`` seconds of wall-clock time (``time.time() // SLICE``), so the harness
can draw each process's rate over time. ``/bench.Control/Configure`` takes a JSON object
(``rate``, ``burst``, ``work_ms``, ``mode``, ``stated``; missing keys keep their defaults),
answers the counts since the previous call as JSON, then resets them and refills the bucket.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

SLICE = 0.25  # seconds per bucket of the counts over time
TAG = "x-bench-client"
OK = service_pb2.MultiOutputResponse(
    status=status_pb2.Status(code=status_code_pb2.SUCCESS)
).SerializeToString()


def throttled(rate: float, stated: bool) -> bytes:
    """The body of a throttled attempt: Clarifai's words, the limit stated or not."""
    description, details = "exceeded the benchmark's rate limit", ""
    if stated:
        description = "Making too many requests"
        details = f"exceeded limit of {rate:g} requests per second"
    return service_pb2.MultiOutputResponse(
        status=status_pb2.Status(
            code=status_code_pb2.CONN_THROTTLED, description=description, details=details
        )
    ).SerializeToString()


class Limiter:
    """The token bucket and the counters, shared by the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configure({})

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            counts = {"clients": getattr(self, "clients", {}), "slice": SLICE}
            self.rate = float(settings.get("rate", 200.0))
            self.burst = float(settings.get("burst", 20.0))
            self.work = float(settings.get("work_ms", 5.0)) / 1e3
            self.pushback = settings.get("mode", "body") == "pushback"
            self.stated = bool(settings.get("stated", True))
            self.throttled = throttled(self.rate, self.stated)
            self.tokens = self.burst
            self.last = time.monotonic()
            # tag -> {"accepted": n, "throttled": n, "series": {slice: [accepted, throttled]}}
            self.clients: dict[str, dict[str, Any]] = {}
        return counts

    def admit(self, tag: str) -> float:
        """Take a token for one attempt: 0.0 if admitted, else seconds until the next token."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            admitted = self.tokens >= 1.0
            if admitted:
                self.tokens -= 1.0
            client = self.clients.get(tag)
            if client is None:
                client = self.clients[tag] = {"accepted": 0, "throttled": 0, "series": {}}
            client["accepted" if admitted else "throttled"] += 1
            series = client["series"].setdefault(int(time.time() // SLICE), [0, 0])
            series[0 if admitted else 1] += 1
            return 0.0 if admitted else (1.0 - self.tokens) / self.rate

    def unary(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        tag = next((value for key, value in context.invocation_metadata() if key == TAG), "")
        wait = self.admit(str(tag))
        if not wait:
            time.sleep(self.work)
            return OK
        if self.pushback:
            ms = max(1, math.ceil(wait * 1e3))
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(ms)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "over the benchmark's rate limit")
        return self.throttled

    def control(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        return json.dumps(self.configure(json.loads(request or b"{}"))).encode()


def serve() -> None:
    if len(sys.argv) > 1:  # before gRPC starts its threads, so that they are pinned too
        os.sched_setaffinity(0, {int(sys.argv[1])})
    limiter = Limiter()
    v2 = {"PostModelOutputs": grpc.unary_unary_rpc_method_handler(limiter.unary)}
    control = {"Configure": grpc.unary_unary_rpc_method_handler(limiter.control)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("clarifai.api.V2", v2),
            grpc.method_handlers_generic_handler("bench.Control", control),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # serve until the harness closes our stdin (or exits)
    server.stop(0).wait()


if __name__ == "__main__":
    serve()
