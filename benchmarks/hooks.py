"""Happy-path cost of instrumentation: the wrapper with no hooks, with the default logging hook,
and with OpenTelemetry and Prometheus instruments installed, in interleaved rounds.

Run as ``python -m benchmarks.hooks [--calls N] [--rounds N]``. The server is
``benchmarks/server.py`` in its own process; every call succeeds (no retry ever happens), so the
instruments have nothing to record: the point is that they cost nothing until a retry. Prints a
markdown table of client CPU per call as a ratio to the no-hooks baseline of the same round
(medians over rounds); the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from clarifai_grpc.grpc.api import service_pb2_grpc

from clarifai_interceptor import insecure_channel
from clarifai_interceptor.instrumentation import (
    LoggingHook,
    OpenTelemetryInstruments,
    PrometheusInstruments,
    set_on_retry_hooks,
)

from .variants import CREDENTIALS, PREDICT

SERVER = Path(__file__).resolve().parent / "server.py"


def _otel() -> object:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 (the [otel] extra)
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    return OpenTelemetryInstruments(meter_provider=MeterProvider([InMemoryMetricReader()]))


def _prometheus() -> object:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 (the [prometheus] extra)

    return PrometheusInstruments(CollectorRegistry())


SETUPS: dict[str, Callable[[], list[object]]] = {
    "no hooks": list,
    "default (LoggingHook)": lambda: [LoggingHook()],
    "OpenTelemetry instruments": lambda: [LoggingHook(), _otel()],
    "Prometheus instruments": lambda: [LoggingHook(), _prometheus()],
}


def _cpu_per_call(stub: service_pb2_grpc.V2Stub, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        stub.PostModelOutputs(PREDICT, timeout=10)
    return (time.process_time() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    server = subprocess.Popen(  # noqa: S603 (our own script, no shell)
        [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        channel = insecure_channel(f"127.0.0.1:{port}", CREDENTIALS)
        stub = service_pb2_grpc.V2Stub(channel)
        _cpu_per_call(stub, 500)  # warm up
        ratios: dict[str, list[float]] = {name: [] for name in SETUPS}
        cpu: dict[str, list[float]] = {name: [] for name in SETUPS}
        names = list(SETUPS)
        built = {name: make() for name, make in SETUPS.items()}  # installed once, as in a service
        for number in range(args.rounds):
            # Each round in another order, so that no setup always runs first (or last).
            order = names[number % len(names) :] + names[: number % len(names)]
            spent: dict[str, float] = {}
            for name in order:
                set_on_retry_hooks(built[name])
                spent[name] = _cpu_per_call(stub, args.calls)
            for name in names:
                cpu[name].append(spent[name])
                ratios[name].append(spent[name] / spent["no hooks"])
        channel.close()
    finally:
        set_on_retry_hooks([LoggingHook()])
        if server.stdin is not None:
            server.stdin.close()
        server.wait(10)
    print(f"| setup (happy path, {args.calls} calls x {args.rounds} rounds) | CPU/call | ratio |")
    print("|---|---|---|")
    result = {}
    for name in SETUPS:
        ratio = statistics.median(ratios[name])
        micros = statistics.median(cpu[name]) * 1e6
        result[name] = {"cpu_us": round(micros, 1), "ratio": round(ratio, 3)}
        print(f"| {name} | {micros:.0f} us | {ratio:.3f}x |")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
