"""The throttle benchmark keeps its books: the server's counts agree with the clients'. Tiny
cells, no performance asserted."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

from benchmarks import throttle
from benchmarks import variants as v

TINY = throttle.Settings(duration=1.0, drain=2.0, rounds=1)
FIELDS = {"goodput", "attempts_per_success", "failed", "failed_pct", "unfinished", "p50_ms"}
FIELDS |= {"p99_ms", "cpu_ms_per_success", "server_core", "throttled_per_s"}


@pytest.fixture(scope="module")
def server() -> Iterator[throttle.ThrottleServer]:
    with throttle.ThrottleServer() as running:
        yield running


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 threads (and 2 processes of 2 for the fleet), 50 tasks for aio."""
    workloads = dict(throttle.WORKLOADS)
    workloads["t4"] = ("4 threads", "threads", 1, 4, "body")
    workloads["pushback4"] = ("4 threads, pushback", "threads", 1, 4, "pushback")
    workloads["aio50"] = ("aio, 50 tasks", "aio", 1, 50, "body")
    workloads["fleet2"] = ("2 processes x 2 threads", "threads", 2, 2, "body")
    monkeypatch.setattr(throttle, "WORKLOADS", workloads)


def _throttled_status(server: throttle.ThrottleServer, **settings: object) -> object:
    """A real call's throttled status: a bucket of one token, and calls until one is refused."""
    server.configure(burst=1, work_ms=0, **settings)
    with grpc.insecure_channel(server.target) as channel:
        call = service_pb2_grpc.V2Stub(channel).PostModelOutputs
        for _ in range(20):
            response = call(v.PREDICT, metadata=v.METADATA, timeout=10)
            if response.status.code == status_code_pb2.CONN_THROTTLED:
                return response.status
    raise AssertionError("20 calls at once, none throttled by a bucket of one token")


@pytest.mark.parametrize("rate", [15.0, 12.5])
def test_server_states_its_limit_as_clarifai_does(
    server: throttle.ThrottleServer, rate: float
) -> None:
    status = _throttled_status(server, rate=rate)  # stated: the default
    assert status.description == "Making too many requests"
    found = re.fullmatch(r"exceeded limit of ([0-9.]+) requests per second", status.details)
    assert found, status.details
    assert float(found[1]) == rate


def test_server_can_leave_its_limit_unstated(server: throttle.ThrottleServer) -> None:
    status = _throttled_status(server, rate=15.0, stated=False)
    assert "limit of" not in status.details
    assert not re.search(r"[0-9]", status.details + status.description)


def _books(cell: dict) -> None:
    """Every success is one admitted attempt; every call ended or is counted unfinished."""
    assert set(cell["metrics"]) >= FIELDS
    for p in cell["processes"]:
        assert p["accepted"] == p["successes"], p["tag"]
        assert p["calls"] == p["successes"] + sum(p["failures"].values())
        assert p["unfinished"] == 0
        assert sum(p["successes_per_slice"]) == p["successes"]
        per_slice = [n for _, n in p["server_per_slice"]]
        assert sum(a for a, _ in per_slice) == p["accepted"]
        assert sum(t for _, t in per_slice) == p["throttled"]
    assert all(isinstance(x, int | float) for x in cell["metrics"].values())


@pytest.mark.usefixtures("small")
def test_bare_stub_cell_balances(server: throttle.ThrottleServer) -> None:
    cell = throttle.run_cell(server, TINY, "t4", "bare", "t-bare")
    _books(cell)
    (p,) = cell["processes"]
    # No retries: each throttled attempt is one failed call, each admitted one a success.
    assert p["throttled"] == p["failures"].get("CONN_THROTTLED", 0) == cell["metrics"]["failed"]
    assert cell["metrics"]["attempts_per_success"] == pytest.approx(
        (p["accepted"] + p["throttled"]) / p["successes"]
    )


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize(
    ("workload", "variant"),
    [
        ("t4", "tenacity"),
        ("t4", "ours"),
        ("t4", "ours-before"),  # the worker exits non-zero if the old limiter was not used
        ("t4", "ours-fixed"),
        ("pushback4", "ours-none"),
    ],
)
def test_retrying_cells_balance(
    server: throttle.ThrottleServer, workload: str, variant: str
) -> None:
    cell = throttle.run_cell(server, TINY, workload, variant, f"t-{workload}-{variant}")
    _books(cell)
    (p,) = cell["processes"]
    assert p["accepted"] + p["throttled"] >= p["calls"]


@pytest.mark.usefixtures("small")
def test_aio_cell_measures_the_loop(server: throttle.ThrottleServer) -> None:
    cell = throttle.run_cell(server, TINY, "aio50", "ours", "t-aio")
    _books(cell)
    assert cell["metrics"]["loop_lag_ms"] >= 0
    assert cell["metrics"]["longest_callback_ms"] > 0
    assert cell["metrics"]["limiter_block_ms"] > 0  # the limiter ran on the loop, and was timed


@pytest.mark.usefixtures("small")
def test_fleet_cell_counts_each_process(server: throttle.ThrottleServer) -> None:
    cell = throttle.run_cell(server, TINY, "fleet2", "bare", "t-fleet")
    _books(cell)
    assert [p["tag"] for p in cell["processes"]] == ["t-fleet-p0", "t-fleet-p1"]
    assert 0 < cell["metrics"]["jain"] <= 1


def test_rows_render_and_judge(tmp_path: Path) -> None:
    metrics = dict.fromkeys(FIELDS, 1.0) | {"failed": 0.0, "unfinished": 0.0}
    cells = [
        {"workload": "t64", "variant": name, "metrics": metrics | {"attempts_per_success": aps}}
        for name, aps in (("bare", 20.0), ("tenacity", 2.0), ("sdk", 1.1), ("ours", 1.01))
    ]
    rows = throttle.rows_of(cells, ["t64"], {"t64": ["bare", "tenacity", "sdk", "ours"]})
    ours = next(r for r in rows if r["variant"] == "ours")
    judged = {t["target"]: t["met"] for t in ours["targets"]}
    assert judged["ahead of every rival"]
    assert judged["goodput >= 0.98"]
    assert judged["p99_ms <= 356"]
    assert judged["failed == 0"]
    result = {
        "machine": throttle.machine(),
        "quick": True,
        "settings": {**vars(TINY), "rate": 200.0, "burst": 20.0, "work_ms": 5.0},
        "seconds": 1.0,
        "redis": False,
        "rows": rows,
    }
    text = throttle.dump(result)  # NaN != NaN: compare the texts
    assert throttle.dump(json.loads(text)) == text
    table = throttle.render(result)
    assert "| 64 threads, one process | ours, default |" in table
    assert "Targets:" in table


def test_jain_index() -> None:
    assert throttle.jain([1.0, 1.0, 1.0, 1.0]) == 1.0
    assert throttle.jain([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert math.isclose(throttle.jain([0.5, 0.25]), 0.9)


def _runs(*argv: str) -> list[tuple[str, throttle.Settings, list[str]]]:
    return throttle.runs_of(throttle.parser_of().parse_args(list(argv)))


def test_settings_are_bounded() -> None:
    variants = throttle.plan(redis=True)
    seconds = sum(
        len(variants[w]) * (settings.duration + 4) * settings.rounds
        for _name, settings, workloads in _runs()
        for w in workloads
    )
    assert seconds < 75 * 60  # both scenarios, one run
    quick = sum(len(variants[w]) * 8 for _n, _s, workloads in _runs("--quick") for w in workloads)
    assert quick < 10 * 60
    assert replace(throttle.QUICK).rounds == 1


def test_the_scenarios_parse() -> None:
    clarifai, at_200 = _runs()  # both, by default: Clarifai's limit first
    assert clarifai[0] == "clarifai"
    assert (clarifai[1].rate, clarifai[1].burst, clarifai[1].duration) == (15.0, 15.0, 40.0)
    assert clarifai[2] == ["t16", "t16-unstated", "fleet", "aio100"]
    assert throttle.WORKLOADS["fleet"][2:4] == (4, 16)
    assert throttle.WORKLOADS["aio100"][1:4] == ("aio", 1, 100)
    assert at_200[0] == "200"
    assert (at_200[1].rate, at_200[1].burst, at_200[1].duration) == (200.0, 20.0, 10.0)
    assert all(settings.stated for _n, settings, _w in (clarifai, at_200))
    (only,) = _runs("--scenario", "200", "--rate", "15", "--burst", "15", "--only", "t16,fleet")
    assert (only[1].rate, only[1].burst, only[2]) == (15.0, 15.0, ["t16", "fleet"])
    (quick,) = _runs("--scenario", "clarifai", "--quick", "--unstated", "--rounds", "3")
    assert (quick[1].duration, quick[1].rounds, quick[1].stated) == (1.5, 3, False)
    with pytest.raises(ValueError, match="unknown workloads: t5"):
        _runs("--only", "t5")
    with pytest.raises(ValueError, match="unknown variants: mine"):
        _runs("--variants", "ours,mine")
    assert set(throttle.plan(redis=False)["fleet"]) == set(throttle.DEFAULT_VARIANTS)
    assert throttle.plan(redis=True, chosen=("bare", "ours-none"))["fleet"] == ["bare", "ours-none"]


def test_the_targets_of_18() -> None:
    for rate in (15.0, 200.0):
        aio = throttle.targets("aio100", "ours", rate).split("; ")
        assert {"attempts_per_success <= 1.02", "settled_s <= 1", "limiter_block_ms <= 10"} <= set(
            aio
        )
        assert "jain >= 0.98" in throttle.targets("fleet", "ours", rate)
    assert throttle.targets("t16", "ours-before", 15.0) == ""
    assert "p99_ms" not in throttle.targets("t16", "ours-fixed", 15.0)
    assert "p99_ms <= 99" in throttle.targets("t16", "ours-fixed", 200.0)


def test_settled() -> None:
    at_15 = throttle.Settings(duration=4.0, rate=15.0)
    # the burst in the first slice, then 15/s: 4 slices of 4, 4, 4, 3 a second
    steady = [19, 4, 4, 3, 4, 4, 4, 3, 4, 4, 4, 3, 4, 4, 4, 3]
    assert throttle.settled(steady, at_15) == 0.25
    assert throttle.settled([0] * 8 + steady[8:], at_15) == 2.0
    assert throttle.settled([*steady[:12], 0, 0, 0, 0], at_15) == math.inf
