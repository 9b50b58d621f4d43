"""Run the benchmarks: ``python -m benchmarks [--quick] [--readme] [--no-write] [--only GROUPS]``.

Every client runs in this process against `server.py` in another, each pinned to its own CPU
where there are two, so the CPU time measured (``time.process_time``: all threads of this
process) is the client's. Rows compared with each
other run in many short interleaved rounds, the order rotated each round. A round during which
other processes used more than a tenth of a core (``/proc/stat``) is set aside, unless fewer
than a quarter of the rounds were quiet. A row's figures are medians over the rounds kept, and
its ratio to a baseline is the median of the per-round ratios (± half their interquartile range).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

from clarifai_interceptor import RetryPolicy

from . import variants as v

HERE = Path(__file__).resolve().parent
#: Where `--readme` writes the tables: the docs site's measurements page (a historical name).
README = HERE.parent / "docs" / "pages" / "measurements.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SUCCESS = status_code_pb2.SUCCESS
FAULTS = {"unavailable": 0.04, "throttled": 0.01, "seed": 13}
#: Row 11's policy: fixed waits of 0.05, 0.1 and 0.2 s.
SCRIPTED = RetryPolicy(initial_backoff=0.05, multiplier=2, jitter=0, budget=None)


@dataclass(frozen=True)
class Settings:
    rounds: int = 41  # unary, 5 MB and threads rows
    calls: int = 200  # unary calls per row per round
    stream_rounds: int = 15
    stream_messages: int = 10_000
    upload_calls: int = 8
    retry_reps: int = 5
    thread_calls: int = 50  # per thread, per round
    goodput_calls: int = 2000


QUICK = Settings(3, 50, 2, 2000, 2, 1, 10, 200)

# row, label, client kind, baselines, targets ("ratio-or-metric op limit", ";"-separated).
# The rows of one group run interleaved.
GROUPS: dict[str, list[tuple[str, str, str, tuple[str, ...], str]]] = {
    "unary": [
        ("1", "bare `V2Stub`, metadata by hand", "bare", (), ""),
        ("2", "minimal metadata interceptor (`intercept_channel`)", "minimal", ("1",), ""),
        ("3", "(2) + a new tenacity `Retrying` per call", "tenacity", ("1",), ""),
        ("4", "SDK-style stub proxy (auth + retry)", "sdk", ("1",), ""),
        ("5", "`grpc-interceptor` `ClientInterceptor`", "grpc-interceptor", ("1",), ""),
        ("6", "`ClarifaiInterceptor`", "interceptor", ("1", "2"), "cpu/2 <= 1.05"),
        ("7a", "`wrap_channel`", "wrap", ("1",), "cpu/1 <= 1.03"),
        ("7b", "`insecure_channel`", "insecure", ("1",), "cpu/1 <= 1.03"),
    ],
    "aio": [
        ("8a", "aio: bare stub, metadata by hand", "aio-bare", (), ""),
        ("8b", "aio: minimal interceptor", "aio-minimal", ("8a",), ""),
        ("8c", "aio: `aio.insecure_channel`", "aio-ours", ("8a", "8b"), "cpu/8b <= 1.05"),
        ("8d", "aio: `aio.interceptors`", "aio-interceptors", ("8a", "8b"), "cpu/8b <= 1.05"),
    ],
    "streams": [
        ("9a", "stream of 10k: bare", "bare", (), ""),
        ("9b", "stream: minimal interceptor", "minimal", ("9a",), ""),
        ("9c", "stream: `ClarifaiInterceptor`", "interceptor", ("9a",), "rate/9a >= 0.97"),
        ("9d", "stream: `wrap_channel`", "wrap", ("9a",), "rate/9a >= 0.97"),
        ("9e", "stream: aio bare", "aio-bare", (), ""),
        ("9f", "stream: `aio.insecure_channel`", "aio-ours", ("9e",), "rate/9e >= 0.97"),
    ],
    "upload": [
        ("10a", "5 MB `PostInputs`: bare, `user_app_id` by hand", "bare", (), ""),
        ("10b", "5 MB: `wrap_channel` fills it", "wrap", ("10a",), "cpu/10a <= 1.05"),
        ("10c", "5 MB: `ClarifaiInterceptor` fills it", "interceptor", ("10a",), "cpu/10a <= 1.05"),
    ],
    "retry": [
        ("11a", "3 retries, fixed waits: `wrap_channel`", "wrap", (), "abs_error_ms <= 10"),
        ("11b", "3 retries: `ClarifaiInterceptor`", "interceptor", (), "abs_error_ms <= 10"),
        ("11c", "3 retries: `aio.insecure_channel`", "aio-ours", (), "abs_error_ms <= 10"),
    ],
    "threads": [
        ("12a", "8 threads, one bare channel", "bare", (), ""),
        ("12b", "8 threads, one `wrap_channel`", "wrap", ("12a",), "rate/12a >= 0.95"),
    ],
    "goodput": [
        (
            "13a",
            "5% faults: ours (`wrap_channel`, default policy)",
            "wrap",
            (),
            "success_pct >= 99.95; attempts_per_call <= 1.06; p99/best <= 1",
        ),
        ("13b", "5% faults: tenacity interceptor (3), 0.1 s doubling", "tenacity", ("13a",), ""),
        ("13c", "5% faults: gRPC native retry, ClarifaiChannel's config", "native", ("13a",), ""),
        (
            "13d",
            f"5% faults: SDK-style proxy (4), fixed {v.SDK_WAIT} s wait (the real SDK: 5 s)",
            "sdk",
            ("13a",),
            "",
        ),
    ],
    # Where row 7a's time goes: each row adds one piece of the wrapper's lane to the row before,
    # measured between gRPC's own work (a microbenchmark understates it). No targets.
    "breakdown": [
        ("14a", "breakdown: bare, as (1)", "bare", (), ""),
        (
            "14b",
            "breakdown: (14a) with `timeout=30`, the policy's deadline",
            "bare-deadline",
            ("14a",),
            "",
        ),
        ("14c", "breakdown: pass-through wrapper, metadata added", "stage-pass", ("14a",), ""),
        (
            "14d",
            "breakdown: (14c) + credentials asked per call",
            "stage-credentials",
            ("14a", "14c"),
            "",
        ),
        ("14e", "breakdown: (14d) + `user_app_id` check", "stage-fill", ("14a", "14d"), ""),
        (
            "14f",
            "breakdown: (14e) + policy, outcome check, limiter: `wrap_channel`, as (7a)",
            "wrap",
            ("14a", "14e"),
            "",
        ),
        (
            "14g",
            "breakdown: (14f) + an explicit 30 s deadline: `RetryPolicy(total_timeout=30)`",
            "wrap-deadline",
            ("14a", "14f"),
            "",
        ),
    ],
}
ROWS = {spec[0]: spec for specs in GROUPS.values() for spec in specs}


def pin() -> tuple[int, ...]:
    """Pin this process (every thread) to one CPU, and choose another for the server: CPU time
    and stream rates vary much less so. Returns (client CPU, server CPU), or () if not done."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return ()
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[0]})
    return cpus[0], cpus[1]


class Server:
    """`server.py` in a child process (pinned to ``cpu`` if given), and its control RPC."""

    def __init__(self, cpu: int | None = None) -> None:
        self._args = [] if cpu is None else [str(cpu)]

    def __enter__(self) -> Server:
        self._proc = subprocess.Popen(  # noqa: S603 (our own script, no shell)
            [sys.executable, str(HERE / "server.py"), *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = self._proc.stdout.readline().strip() if self._proc.stdout else ""
        if not port.isdigit():
            self.__exit__()
            raise RuntimeError("the benchmark server did not start")
        self.target = f"127.0.0.1:{port}"
        self.pid = self._proc.pid
        self._channel = grpc.insecure_channel(self.target)
        self._configure = self._channel.unary_unary("/bench.Control/Configure")
        return self

    def configure(self, **settings: Any) -> dict[str, int]:
        """Apply new settings; return the counters since the previous call."""
        return json.loads(self._configure(json.dumps(settings).encode(), timeout=10))

    def __exit__(self, *exc_info: object) -> None:
        if hasattr(self, "_channel"):
            self._channel.close()
        if self._proc.stdin:
            self._proc.stdin.close()  # the server exits when its stdin closes
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _check(response: Any) -> None:
    if response.status.code != SUCCESS:
        raise RuntimeError(f"unexpected status {response.status.code}")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds used by the machine (all but idle and iowait) or by one process; 0 if the
    system does not say (``/proc`` is Linux's)."""
    try:
        if pid is None:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            used = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        else:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used = int(fields[11]) + int(fields[12])  # utime, stime
        return used / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def measure(batches: dict[str, Callable], rounds: int, n: int, per: int, others: Callable) -> Any:
    """Seconds of CPU and wall per unit (``n * per`` units a batch), per row and round; and per
    round, whether it was quiet: other processes used under a tenth of a core meanwhile."""
    for batch in batches.values():
        batch(1)  # warm up: connect, fill caches
    names = list(batches)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    quiet = []
    for r in range(rounds):
        busy, start = others(), time.perf_counter()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            batches[name](n)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            samples[name].append((cpu / n / per, wall / n / per))
        quiet.append(others() - busy < 0.1 * (time.perf_counter() - start))
    return samples, quiet


def _median_spread(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, (q3 - q1) / 2


def timed_rows(specs: list, samples: dict, quiet: list[bool], rate: bool) -> list[dict]:
    """Rows from `measure` samples: medians and paired ratios over the quiet rounds (over every
    round if fewer than a quarter were quiet)."""
    kept = [i for i, q in enumerate(quiet) if q]
    if len(kept) < max(1, len(quiet) // 4):
        kept = list(range(len(quiet)))
    samples = {row: [values[i] for i in kept] for row, values in samples.items()}
    rows = []
    for row, label, _, baselines, _ in specs:
        own = samples[row]
        cpu, wall = (statistics.median(s[i] for s in own) for i in (0, 1))
        metrics = {"cpu_us": cpu * 1e6, "wall_us": wall * 1e6}
        if rate:
            metrics["per_s"] = 1 / wall
        metrics["rounds"] = len(kept)
        ratios, spread = {}, {}
        for base in (b for b in baselines if b in samples):
            pairs = list(zip(own, samples[base], strict=True))
            found = {
                f"cpu/{base}": [x[0] / y[0] for x, y in pairs],
                f"rate/{base}" if rate else f"wall/{base}": [
                    y[1] / x[1] if rate else x[1] / y[1] for x, y in pairs
                ],
            }
            for key, values in found.items():
                ratios[key], spread[key] = _median_spread(values)
        rows.append(
            {"row": row, "label": label, "metrics": metrics, "ratios": ratios, "spread": spread}
        )
    return rows


class Bench:
    """The groups of rows, sharing one server, one set of clients and one event loop."""

    def __init__(self, settings: Settings, server: Server) -> None:
        self.s = settings
        self.server = server
        self.clients = v.Clients(server.target)
        self.loop = asyncio.new_event_loop()
        self.skipped: dict[str, str] = {}
        if v.lib_interceptor(()) is None:
            self.skipped["5"] = "grpc-interceptor is not installed (pip install grpc-interceptor)"
        aio, note = v.aio_module()
        if aio is None:
            self.skipped.update(dict.fromkeys(("8c", "8d", "9f", "11c"), note))

    def close(self) -> None:
        self.clients.close()
        self.loop.run_until_complete(self.clients.aclose())
        self.loop.close()

    def batch(self, kind: str, method: str, request: Any, retry: Any = None) -> Callable:
        """``batch(n)``: n calls through one client (n streams, each read to the end)."""
        stream = method == "GenerateModelOutputs"
        if not kind.startswith("aio-"):
            call = self.clients.caller(kind, method, retry)

            def calls(n: int) -> None:
                for _ in range(n):
                    if stream:
                        assert sum(1 for _ in call(request)) == self.s.stream_messages
                    else:
                        _check(call(request))

            return calls

        async def build() -> Any:  # aio channels are made inside their event loop
            return self.clients.caller(kind, method, retry)

        call = self.loop.run_until_complete(build())

        async def acalls(n: int) -> None:
            for _ in range(n):
                if stream:
                    assert len([m async for m in call(request)]) == self.s.stream_messages
                else:
                    _check(await call(request))

        return lambda n: self.loop.run_until_complete(acalls(n))

    def timed(self, group: str, batch: Callable[[str], Any], rounds: int, n: int, per: int = 1):
        specs = [spec for spec in GROUPS[group] if spec[0] not in self.skipped]
        batches = {spec[0]: batch(spec[2]) for spec in specs}
        samples, quiet = measure(batches, rounds, n, per, self.others)
        return timed_rows(specs, samples, quiet, rate=per > 1 or group == "threads")

    def others(self) -> float:
        """CPU seconds the machine spent on processes other than this one and the server."""
        return cpu_seconds() - time.process_time() - cpu_seconds(self.server.pid)

    def unary(self, group: str = "unary") -> list[dict]:
        batch = lambda kind: self.batch(kind, "PostModelOutputs", v.PREDICT)  # noqa: E731
        return self.timed(group, batch, self.s.rounds, self.s.calls)

    def streams(self) -> list[dict]:
        self.server.configure(stream=self.s.stream_messages)
        batch = lambda kind: self.batch(kind, "GenerateModelOutputs", v.GENERATE)  # noqa: E731
        rows = self.timed("streams", batch, self.s.stream_rounds, 1, self.s.stream_messages)
        self.server.configure()
        return rows

    def upload(self) -> list[dict]:
        big = v.big_upload(5)
        by_hand = type(big)(user_app_id=v.USER_APP_ID, inputs=big.inputs)

        def batch(kind: str) -> Callable[[int], None]:
            return self.batch(kind, "PostInputs", by_hand if kind == "bare" else big)

        return self.timed("upload", batch, self.s.rounds, self.s.upload_calls)

    def threads(self) -> list[dict]:
        with ThreadPoolExecutor(max_workers=8) as pool:

            def batch(kind: str) -> Callable[[int], None]:
                calls = self.batch(kind, "PostModelOutputs", v.PREDICT)
                return lambda n: list(pool.map(calls, [n // 8] * 8))

            return self.timed("threads", batch, self.s.rounds, 8 * self.s.thread_calls)

    def retry(self) -> list[dict]:
        waits = sum(SCRIPTED.backoff(k) for k in (1, 2, 3))
        rows = []
        for row, label, kind, _, _ in GROUPS["retry"]:
            if row in self.skipped:
                continue
            call = self.batch(kind, "PostModelOutputs", v.PREDICT, SCRIPTED)
            errors = []
            for _ in range(self.s.retry_reps):
                self.server.configure()
                wall = time.perf_counter()
                call(1)
                healthy = time.perf_counter() - wall
                self.server.configure(fail_next=3)
                wall = time.perf_counter()
                call(1)
                scripted = time.perf_counter() - wall
                if self.server.configure()["attempts"] != 4:
                    raise RuntimeError(f"row {row}: the scripted call did not make 4 attempts")
                errors.append((scripted - healthy - waits) / 3 * 1e3)
            error = statistics.median(errors)
            metrics = {
                "error_ms": error,
                "abs_error_ms": abs(error),
                "worst_ms": max(errors, key=abs),
            }
            rows.append({"row": row, "label": label, "metrics": metrics, "ratios": {}})
        return rows

    def goodput(self) -> list[dict]:
        rows = []
        for row, label, kind, _, _ in GROUPS["goodput"]:
            call = self.clients.caller(kind, "PostModelOutputs")
            _check(call(v.PREDICT))
            self.server.configure(**FAULTS)
            walls, ok = [], 0
            for _ in range(self.s.goodput_calls):
                wall = time.perf_counter()
                with contextlib.suppress(grpc.RpcError):  # a failed call counts as failed
                    ok += call(v.PREDICT).status.code == SUCCESS
                walls.append(time.perf_counter() - wall)
            metrics = {
                "success_pct": 100 * ok / len(walls),
                "attempts_per_call": self.server.configure()["attempts"] / len(walls),
                "p50_ms": statistics.median(walls) * 1e3,
                "p99_ms": statistics.quantiles(walls, n=100)[98] * 1e3,
            }
            rows.append({"row": row, "label": label, "metrics": metrics, "ratios": {}})
        ours = rows[0]["metrics"]
        for other in rows[1:]:
            other["ratios"]["p99/13a"] = other["metrics"]["p99_ms"] / ours["p99_ms"]
        rivals = [
            o["metrics"]["p99_ms"]
            for o in rows[1:]
            if o["metrics"]["success_pct"] >= ours["success_pct"]
        ]
        # 0: no alternative was as reliable as ours, so none has a p99 to compare with.
        rows[0]["ratios"]["p99/best"] = ours["p99_ms"] / min(rivals) if rivals else 0.0
        return rows


def judge(row: dict) -> None:
    """Add the row's targets, met or not."""
    values = {**row.get("metrics", {}), **row.get("ratios", {})}
    row["targets"] = []
    for target in filter(None, ROWS[row["row"]][4].split("; ")):
        key, op, limit = target.split()
        if key in values:
            met = values[key] <= float(limit) if op == "<=" else values[key] >= float(limit)
            row["targets"].append({"target": target, "value": values[key], "met": met})


RUNNERS: dict[str, Callable[[Bench], list[dict]]] = {
    "unary": Bench.unary,
    "aio": lambda bench: bench.unary("aio"),
    "breakdown": lambda bench: bench.unary("breakdown"),
    "streams": Bench.streams,
    "upload": Bench.upload,
    "retry": Bench.retry,
    "threads": Bench.threads,
    "goodput": Bench.goodput,
}
FORMATS = {
    "cpu_us": "CPU {:,.1f} us",
    "wall_us": "wall {:,.1f} us",
    "per_s": "{:,.0f}/s",
    "rounds": "{} rounds",
    "error_ms": "{:+.2f} ms per wait",
    "worst_ms": "worst {:+.2f} ms",
    "success_pct": "{:.2f}% succeed",
    "attempts_per_call": "{:.3f} attempts/call",
    "p50_ms": "p50 {:.1f} ms",
    "p99_ms": "p99 {:.1f} ms",
}


def _ratio(key: str, value: float, spread: float | None) -> str:
    what, base = key.split("/")
    if base == "best":
        return f"p99 {value:.3f}x the best as reliable" if value else "no rival as reliable"
    return f"{what} {value:.3f}x ({base})" + (f" ±{spread:.3f}" if spread else "")


def render(result: dict) -> str:
    """The result as a Markdown table, with the machine it ran on."""
    m = result["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in m["versions"].items() if version)
    lines = [
        (
            f"`python -m benchmarks{' --quick' if result['quick'] else ''}` on {m['date']},"
            f" {result['seconds']:.0f} s: {m['cpu']}, {m['cores']} cores"
            f" (pinned: {m.get('pinned', 'no')}), load {m.get('load', '?')},"
            f" {m['platform']}, Python {m['python']}; {versions}."
        ),
        "",
        (
            "CPU is this process's (all threads) per call, per message for streams. Ratios are"
            " medians of per-round ratios ± half their interquartile range."
        ),
        "",
        "| row | variant | measured | vs baseline | target |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['row']} | {row['label']} | skipped: {row['skipped']} | | |")
            continue
        measured = ", ".join(
            FORMATS[k].format(x) for k, x in row["metrics"].items() if k in FORMATS
        )
        spread = row.get("spread", {})
        ratios = ", ".join(_ratio(k, x, spread.get(k)) for k, x in row["ratios"].items())
        targets = ", ".join(
            f"{t['target']}: {'met' if t['met'] else '**not met**'}" for t in row["targets"]
        )
        lines.append(f"| {row['row']} | {row['label']} | {measured} | {ratios} | {targets} |")
    met = [t["met"] for row in result["rows"] for t in row.get("targets", ())]
    lines += ["", f"Targets: {sum(met)} met, {len(met) - sum(met)} not met."]
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the run ran on."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    names = ("grpcio", "clarifai-grpc", "protobuf", "tenacity", "grpc-interceptor")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "versions": {name: _version(name) for name in (*names, "clarifai-interceptor")},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run(settings: Settings, groups: list[str], quick: bool) -> dict[str, Any]:
    """Run the groups against a fresh server; the result, ready for JSON."""
    started = time.perf_counter()
    described = machine()  # the load before the run
    pinned = pin()
    described["pinned"] = "client CPU {}, server CPU {}".format(*pinned) if pinned else "no"
    rows: list[dict] = []
    with Server(pinned[1] if pinned else None) as server:
        bench = Bench(settings, server)
        try:
            for name in groups:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                rows += RUNNERS[name](bench)
        finally:
            bench.close()
    wanted = [spec[0] for name in groups for spec in GROUPS[name]]
    rows += [{"row": r, "label": ROWS[r][1], "skipped": why} for r, why in bench.skipped.items()]
    rows = sorted(
        (row for row in rows if row["row"] in wanted), key=lambda r: wanted.index(r["row"])
    )
    for row in rows:
        judge(row)
    return {
        "machine": described,
        "quick": quick,
        "settings": asdict(settings),
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }


def update_readme(path: Path, block: str, first: str = START, last: str = END) -> bool:
    """Replace the text between the markers (the bench ones unless given) in ``path``; False if
    they are absent."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(first)
    end = text.find(last, start + len(first)) if start >= 0 else -1
    if end < 0:
        print(f"note: {path.name} has no {first} ... {last} block; left unchanged")
        return False
    path.write_text(f"{text[: start + len(first)]}\n{block}\n{text[end:]}", encoding="utf-8")
    print(f"updated the benchmark block in {path.name}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small run, well under a minute")
    parser.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)}")
    parser.add_argument("--out", type=Path, help="the JSON file (default: results/<time>.json)")
    parser.add_argument("--no-write", action="store_true", help="write no JSON file")
    parser.add_argument(
        "--readme", action="store_true", help="put the table in docs/pages/measurements.md"
    )
    parser.add_argument("--from", dest="source", type=Path, help="show a saved JSON, do not run")
    args = parser.parse_args(argv)
    if args.source:
        result = json.loads(args.source.read_text(encoding="utf-8"))
    else:
        groups = args.only.split(",") if args.only else list(GROUPS)
        if set(groups) - set(GROUPS):
            parser.error(f"unknown groups: {', '.join(sorted(set(groups) - set(GROUPS)))}")
        result = run(QUICK if args.quick else Settings(), groups, args.quick)
        if not args.no_write:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            out = args.out or HERE / "results" / f"{stamp}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"wrote {out}", file=sys.stderr)
    table = render(result)
    print(table)
    if args.readme:
        update_readme(README, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
