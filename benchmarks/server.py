"""The benchmark server: ``clarifai.api.V2`` on loopback, in its own process.

Run as ``python benchmarks/server.py [CPU]``: it pins itself to that CPU if given, prints its
port, then serves until its standard input closes. Requests are not parsed and responses are
pre-serialized bytes (every V2 response has ``status`` as field 1, so one encoding serves every
method), keeping the server's share of each call small and the same for every client variant.

Methods: ``PostModelOutputs`` and ``PostInputs`` (unary) and ``GenerateModelOutputs`` (a stream of
``stream`` messages). ``/bench.Control/Configure`` takes a JSON object, answers the counters since
the previous one as JSON, then applies it (missing keys mean healthy):

- ``unavailable``, ``throttled``: fractions of unary attempts failed at random with gRPC
  ``UNAVAILABLE`` or an OK response with body status ``CONN_THROTTLED``; ``seed`` seeds them.
- ``fail_next``: the next N unary attempts fail with ``UNAVAILABLE`` (scripted).
- ``stream``: messages per ``GenerateModelOutputs`` call (default 10,000).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2


def _response(code: int, text: str | None = None) -> bytes:
    response = service_pb2.MultiOutputResponse(status=status_pb2.Status(code=code))
    if text is not None:
        response.outputs.add().data.text.raw = text
    return response.SerializeToString()


OK = _response(status_code_pb2.SUCCESS)
THROTTLED = _response(status_code_pb2.CONN_THROTTLED)
TOKEN = _response(status_code_pb2.SUCCESS, "token ")


class State:
    """Counters and fault settings, shared by the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configure({})

    def configure(self, settings: dict[str, Any]) -> dict[str, int]:
        with self.lock:
            counters = {"attempts": getattr(self, "attempts", 0)}
            self.attempts = 0
            self.unavailable = float(settings.get("unavailable", 0.0))
            self.throttled = float(settings.get("throttled", 0.0))
            self.fail_next = int(settings.get("fail_next", 0))
            self.stream = int(settings.get("stream", 10_000))
            self.rng = random.Random(settings.get("seed", 0))
        return counters

    def unary(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.attempts += 1
            if self.fail_next:
                self.fail_next -= 1
                fault = "unavailable"
            elif self.unavailable or self.throttled:
                draw = self.rng.random()
                fault = "unavailable" if draw < self.unavailable else ""
                if not fault and draw < self.unavailable + self.throttled:
                    fault = "throttled"
            else:
                fault = ""
        if fault == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "benchmark fault")
        return THROTTLED if fault == "throttled" else OK

    def generate(self, _request: bytes, _context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.attempts += 1
            count = self.stream
        for _ in range(count):
            yield TOKEN

    def control(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        return json.dumps(self.configure(json.loads(request or b"{}"))).encode()


def serve() -> None:
    if len(sys.argv) > 1:  # before gRPC starts its threads, so that they are pinned too
        os.sched_setaffinity(0, {int(sys.argv[1])})
    state = State()
    unary = grpc.unary_unary_rpc_method_handler(state.unary)
    v2 = {
        "PostModelOutputs": unary,
        "PostInputs": unary,
        "GenerateModelOutputs": grpc.unary_stream_rpc_method_handler(state.generate),
    }
    control = {"Configure": grpc.unary_unary_rpc_method_handler(state.control)}
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
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
