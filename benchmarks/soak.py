"""Soak: many calls through one wrapped channel; memory and file descriptors before and after.

    python benchmarks/soak.py [--calls 100000] [--warmup 2000] [--path wrapper|interceptor]

The server is a `FakeClarifai` in a child process (its recorded calls, cleared every 0.2 s, and
its threads do not count here); every 0.2 s it is also scripted to fail a few attempts
(``UNAVAILABLE``, ``CONN_THROTTLED``), so the retry path runs too. The client mixes the call
shapes: blocking unary calls, ``with_call``, ``future()``, response streams, per-block
``use_credentials`` overrides, and a credentials provider consulted per call.

After ``--warmup`` calls it reads this process's resident memory (``VmRSS`` in
``/proc/self/status``) and its open file descriptors (``/proc/self/fd``), runs ``--calls``
calls, and reads them again (after a garbage collection each time). Targets: RSS growth under
5 MB, no descriptor growth. The last line is ``RESULT {json}``. Exit status 1 if a call failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RateLimit,
    RetryPolicy,
    use_credentials,
    wrap_channel,
)

RSS_TARGET_KB = 5 * 1024
TIMEOUT = 10.0

SERVER = textwrap.dedent(
    """
    import sys, threading, time

    import grpc
    from clarifai_grpc.grpc.api.status import status_code_pb2

    from clarifai_interceptor.testing import FakeClarifai

    fake = FakeClarifai().start()
    print(fake.target, flush=True)
    stop = threading.Event()

    def refresh():
        while not stop.wait(0.2):
            fake.clear()  # recorded calls would grow without end
            fake.script("ListModels", grpc.StatusCode.UNAVAILABLE, status_code_pb2.CONN_THROTTLED)
            fake.script("GenerateModelOutputs", grpc.StatusCode.UNAVAILABLE)

    threading.Thread(target=refresh, daemon=True).start()
    sys.stdin.read()  # serve until the client closes our stdin
    stop.set()
    fake.stop()
    """
)

CREDENTIALS = (
    Credentials.from_pat("fake-soak-pat-one", user_id="soak-user", app_id="soak-app"),
    Credentials.from_pat("fake-soak-pat-two", user_id="soak-user", app_id="soak-app"),
)
OVERRIDE = Credentials.from_pat("fake-soak-pat-override", user_id="other-user", app_id="app")
#: The default policy with zero waits: the soak measures the client, not its sleeps.
POLICY = RetryPolicy(initial_backoff=0, throttle_backoff=0, jitter=0)
#: A fixed limit far above what the soak sends: every attempt takes a permit, none waits. (The
#: adaptive default would, rightly, slow to a crawl: the fake throttles every 0.2 s whatever
#: the rate.)
LIMIT = RateLimit(per_second=1e6, burst=1000)


def rss_kb() -> int:
    """This process's resident set size in kB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    """This process's open file descriptors."""
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


class Rotation:
    """A credentials provider alternating between two secrets, one per call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Credentials:
        self.calls += 1
        return CREDENTIALS[self.calls % 2]


def call_mix(stub: service_pb2_grpc.V2Stub) -> Callable[[int], None]:
    """Call number ``n`` of the mix: one of ten shapes, by ``n % 10``."""
    request = service_pb2.ListModelsRequest()
    predict = service_pb2.PostModelOutputsRequest(model_id="soak-model")

    def one(n: int) -> None:
        shape = n % 10
        if shape <= 4:
            stub.ListModels(request, timeout=TIMEOUT)
        elif shape == 5:
            stub.ListModels.with_call(request, timeout=TIMEOUT)
        elif shape == 6:
            stub.ListModels.future(request, timeout=TIMEOUT).result(timeout=TIMEOUT)
        elif shape == 7:
            for _ in stub.GenerateModelOutputs(predict, timeout=TIMEOUT):
                pass
        elif shape == 8:
            with use_credentials(OVERRIDE):
                stub.ListModels(request, metadata=[("x-soak", str(n))], timeout=TIMEOUT)
        else:
            stub.PostModelOutputs(predict, timeout=TIMEOUT)

    return one


def run(one: Callable[[int], None], start: int, count: int) -> int:
    """Make ``count`` calls; return how many failed."""
    errors = 0
    for n in range(start, start + count):
        try:
            one(n)
        except grpc.RpcError:  # noqa: PERF203 (a failure is counted, the soak goes on)
            errors += 1
    return errors


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls measured")
    parser.add_argument("--warmup", type=int, default=2_000, help="calls before measuring")
    parser.add_argument("--path", choices=("wrapper", "interceptor"), default="wrapper")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be >= 1 and --warmup >= 0")

    server = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        target = server.stdout.readline().strip()
        raw = grpc.insecure_channel(target)
        channel: Any
        if args.path == "wrapper":
            channel = wrap_channel(raw, Rotation(), retry=POLICY, rate_limit=LIMIT)
        else:
            channel = grpc.intercept_channel(
                raw, ClarifaiInterceptor(Rotation(), retry=POLICY, rate_limit=LIMIT)
            )
        one = call_mix(service_pb2_grpc.V2Stub(channel))

        errors = run(one, 0, args.warmup)
        gc.collect()
        rss_before, fds_before = rss_kb(), open_fds()
        started = time.perf_counter()
        errors += run(one, args.warmup, args.calls)
        elapsed = time.perf_counter() - started
        gc.collect()
        rss_after, fds_after = rss_kb(), open_fds()
        channel.close()
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()

    growth = rss_after - rss_before
    figures = {
        "path": args.path,
        "calls": args.calls,
        "warmup": args.warmup,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "calls_per_second": round(args.calls / elapsed),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_growth_kb": growth,
        "fds_before": fds_before,
        "fds_after": fds_after,
    }
    print(f"soak: {args.calls:,} calls through the {args.path} path after {args.warmup:,} warm-up")
    print(f"  time      {elapsed:.1f} s ({args.calls / elapsed:,.0f} calls/s), {errors} failed")
    print(f"  RSS       {rss_before:,} kB -> {rss_after:,} kB ({growth:+,} kB; target < 5 MB)")
    print(f"  open fds  {fds_before} -> {fds_after} (target: no growth)")
    met = growth < RSS_TARGET_KB and fds_after <= fds_before
    print(f"  targets   {'met' if met else 'MISSED'}")
    print("RESULT " + json.dumps(figures))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
