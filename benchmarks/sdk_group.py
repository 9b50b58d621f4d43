"""The SDK group: the real Clarifai SDK alone vs after ``clarifai_interceptor.sdk.install()``.

``PYTHONPATH=$PWD python -m benchmarks.sdk_group [--outage] [--no-write]``

Each scenario scripts the same faults on a `FakeClarifai` (in this process: the figures are
waits and attempts, not CPU), makes one SDK call with a fresh client, and records the attempts
the server saw for that method and the wall time. Installed means the default `RetryPolicy`.
The SDK alone waits a fixed 5 s per ``RetryStub`` retry, so the scenarios are short; ``--outage``
adds a persistent ``UNAVAILABLE`` (the SDK alone: about 50 attempts over about 47 s).
Prints a markdown table; saves JSON to ``benchmarks/results/sdk-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import grpc
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

from clarifai_interceptor import sdk
from clarifai_interceptor.testing import FakeClarifai, Status, Stream

from .__main__ import HERE, machine

PAT = "fake-bench-pat-0001"
URL = "https://clarifai.com/bench-user/bench-app/models/bench-model"
SCOPES = Status(codes.CONN_INSUFFICIENT_SCOPES, "Missing scopes: Predict")


def _inputs() -> list[resources_pb2.Input]:
    return [resources_pb2.Input(data=resources_pb2.Data(text=resources_pb2.Text(raw="hi")))]


def _outputs() -> service_pb2.MultiOutputResponse:
    message = service_pb2.MultiOutputResponse()
    message.status.code = codes.SUCCESS
    return message


@dataclass(frozen=True)
class Scenario:
    name: str
    call: str
    method: str
    faults: tuple[Any, ...]
    run: Callable[[str], Any]  # base_url -> outcome
    persistent: Any = None  # a default outcome after the faults


def _model(base: str) -> Any:
    from clarifai.client.model import Model  # noqa: PLC0415 (the SDK is the extra)

    return Model(url=URL, pat=PAT, base_url=base)


def _list_apps(base: str) -> Any:
    from clarifai.client.user import User  # noqa: PLC0415

    return list(User(user_id="bench-user", pat=PAT, base_url=base).list_apps())


def _list_models(base: str) -> Any:
    from clarifai.client.app import App  # noqa: PLC0415

    app = App(user_id="bench-user", app_id="bench-app", pat=PAT, base_url=base)
    return list(app.list_models())


def _predict(base: str) -> Any:
    return _model(base).predict_by_bytes(b"hi", input_type="text")


def _generate(base: str) -> Any:
    return list(_model(base).generate(inputs=_inputs()))


def _async_predict(base: str) -> Any:
    async def go() -> Any:
        return await _model(base).async_predict(inputs=_inputs())

    return asyncio.run(go())


SCENARIOS = [
    Scenario(
        "throttled, then success", "User.list_apps", "ListApps", (codes.CONN_THROTTLED,), _list_apps
    ),
    Scenario(
        "model loading, then success",
        "Model.predict_by_bytes",
        "PostModelOutputs",
        (codes.MODEL_LOADING,),
        _predict,
    ),
    Scenario(
        "throttled, model loading, then success",
        "Model.predict_by_bytes",
        "PostModelOutputs",
        (codes.CONN_THROTTLED, codes.MODEL_LOADING),
        _predict,
    ),
    Scenario(
        "throttled first message, then a stream",
        "Model.generate",
        "GenerateModelOutputs",
        (codes.CONN_THROTTLED, Stream([_outputs()] * 3)),
        _generate,
    ),
    Scenario(
        "throttled, then success (async)",
        "Model.async_predict",
        "PostModelOutputs",
        (codes.CONN_THROTTLED,),
        _async_predict,
    ),
    Scenario("scope error", "Model.predict_by_bytes", "PostModelOutputs", (), _predict, SCOPES),
    Scenario(
        "scope error (async)", "Model.async_predict", "PostModelOutputs", (), _async_predict, SCOPES
    ),
]
OUTAGE = Scenario(
    "persistent UNAVAILABLE",
    "App.list_models",
    "ListModels",
    (),
    _list_models,
    persistent=grpc.StatusCode.UNAVAILABLE,
)


def _outcome(value: Any) -> str:
    if isinstance(value, grpc.RpcError):
        return f"RpcError {value.code().name}"
    if isinstance(value, Exception):
        return f"{type(value).__name__} (the SDK's)"
    return "success"


def measure(fake: FakeClarifai, scenario: Scenario, installed: bool) -> dict[str, Any]:
    """One scenario once: attempts on the server for its method, wall time, outcome."""
    fake.clear()
    fake.set_default(scenario.method, scenario.persistent or codes.SUCCESS)
    fake.script(scenario.method, *scenario.faults)
    base = f"http://{fake.target}"
    started = time.monotonic()
    try:
        if installed:
            with sdk.install():
                outcome: Any = scenario.run(base)
        else:
            outcome = scenario.run(base)
    except Exception as exc:  # noqa: BLE001 (the outcome is reported, not raised)
        outcome = exc
    elapsed = time.monotonic() - started
    return {
        "attempts": len(fake.calls_to(scenario.method)),
        "wall_s": round(elapsed, 3),
        "outcome": _outcome(outcome),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table, SDK alone and installed side by side."""
    lines = [
        (
            "| scenario | SDK call | SDK alone: attempts | wall | outcome "
            "| after `install()`: attempts | wall | outcome |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        alone, ours = row["sdk_alone"], row["installed"]
        lines.append(
            f"| {row['scenario']} | `{row['call']}` | {alone['attempts']} | "
            f"{alone['wall_s']:.2f} s | {alone['outcome']} | {ours['attempts']} | "
            f"{ours['wall_s']:.2f} s | {ours['outcome']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the group, print the table, save the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_group")
    parser.add_argument("--outage", action="store_true", help="add the ~50 s outage scenario")
    parser.add_argument("--no-write", action="store_true", help="do not save the JSON")
    args = parser.parse_args(argv)
    logging.getLogger("clarifai").disabled = True  # the SDK logs each failure and wait
    sdk.check_version()
    scenarios = [*SCENARIOS, OUTAGE] if args.outage else SCENARIOS
    described = machine()
    described["versions"]["clarifai"] = sdk.check_version()
    started = time.monotonic()
    with FakeClarifai(secrets={PAT: None}) as fake:
        rows = [
            {
                "scenario": scenario.name,
                "call": scenario.call,
                "sdk_alone": measure(fake, scenario, installed=False),
                "installed": measure(fake, scenario, installed=True),
            }
            for scenario in scenarios
        ]
    result = {"machine": described, "seconds": round(time.monotonic() - started, 1), "rows": rows}
    print(
        f"`python -m benchmarks.sdk_group` on {described['date']}, {result['seconds']} s, "
        f"clarifai {described['versions']['clarifai']}; installed = default RetryPolicy\n"
    )
    print(table(rows))
    if not args.no_write:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = HERE / "results" / f"sdk-{stamp}.json"
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nsaved {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
