"""pytest-grpc with FakeClarifai's servicer, and the interceptor on pytest-grpc's channel.

pytest-grpc (a plugin loaded by its entry point) serves ``grpc_servicer`` on a real gRPC server
per module; these tests give it `FakeClarifai.servicer` and wrap its ``grpc_create_channel`` on
both sync paths (``wrap_channel`` and ``grpc.intercept_channel`` + `ClarifaiInterceptor`), as
the README's recipe does. The last tests run pytest in a subprocess: pytest-grpc's socket leak
and its ``--grpc-fake-server`` mode.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import APP, FAST, PAT, PAT_CREDS, PATHS, USER, T

from clarifai_interceptor import ClarifaiInterceptor, wrap_channel
from clarifai_interceptor.testing import FakeClarifai, FakeServicer


@pytest.fixture(scope="module")
def served() -> FakeClarifai:
    """The fake whose servicer pytest-grpc serves: checks the PAT, never started itself."""
    return FakeClarifai(secrets={PAT: None}, pats=[PAT])


@pytest.fixture(autouse=True)
def _fresh(served: FakeClarifai) -> None:
    served.clear()


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[[Any, grpc.Server], None]:
    return service_pb2_grpc.add_V2Servicer_to_server  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def grpc_servicer(served: FakeClarifai) -> FakeServicer:
    return served.servicer()


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type:
    return service_pb2_grpc.V2Stub  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def grpc_addr() -> str:
    """pytest-grpc's ``grpc_addr`` binds a socket to find a free port and never closes it:
    collected at the module's end, it warns ``ResourceWarning: unclosed <socket ...>``, an
    error under ``filterwarnings = error``. This one closes it before the server binds."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return f"localhost:{sock.getsockname()[1]}"


@pytest.fixture(scope="module", params=PATHS)
def grpc_create_channel(
    request: pytest.FixtureRequest, grpc_create_channel: Callable[..., grpc.Channel]
) -> Callable[..., grpc.Channel]:
    """pytest-grpc's channel factory with the interceptor on top, once per sync path."""

    def create_channel(credentials: Any = None, options: Any = None) -> grpc.Channel:
        channel = grpc_create_channel(credentials, options)
        if request.param == "interceptor":
            return grpc.intercept_channel(channel, ClarifaiInterceptor(PAT_CREDS, retry=FAST))
        return wrap_channel(channel, PAT_CREDS, retry=FAST)

    return create_channel


def predict(stub: service_pb2_grpc.V2Stub) -> Any:
    return stub.PostModelOutputs(service_pb2.PostModelOutputsRequest(model_id="m"), timeout=T)


def test_credentials_reach_the_server_and_user_app_id_is_filled(
    grpc_stub: service_pb2_grpc.V2Stub, served: FakeClarifai
) -> None:
    response = predict(grpc_stub)
    assert response.status.code == status_code_pb2.SUCCESS  # the fake checked the PAT
    (call,) = served.calls_to("PostModelOutputs")
    assert call.header("authorization") == f"Key {PAT}"
    assert call.request.user_app_id.user_id == USER
    assert call.request.user_app_id.app_id == APP


def test_a_scripted_unavailable_is_retried(
    grpc_stub: service_pb2_grpc.V2Stub, served: FakeClarifai
) -> None:
    served.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert predict(grpc_stub).status.code == status_code_pb2.SUCCESS
    calls = served.calls_to("PostModelOutputs")
    assert len(calls) == 3
    assert all(call.header("authorization") == f"Key {PAT}" for call in calls)


def test_a_scripted_status_and_streams_play_as_on_the_fakes_own_server(
    grpc_stub: service_pb2_grpc.V2Stub, served: FakeClarifai
) -> None:
    served.script("GetModel", status_code_pb2.MODEL_DOES_NOT_EXIST)
    got = grpc_stub.GetModel(service_pb2.GetModelRequest(model_id="m"), timeout=T)
    assert got.status.code == status_code_pb2.MODEL_DOES_NOT_EXIST
    request = service_pb2.PostModelOutputsRequest(model_id="m")
    assert len(list(grpc_stub.GenerateModelOutputs(request, timeout=T))) == 3  # the default
    both_ways = grpc_stub.StreamModelOutputs(iter([request, request]), timeout=T)
    assert len(list(both_ways)) == 3
    methods = ["GetModel", "GenerateModelOutputs", "StreamModelOutputs"]
    assert [call.method for call in served.calls] == methods
    assert len(served.calls[-1].requests) == 2  # a client stream is read and recorded whole


def test_the_servicer_has_every_v2_method_and_refuses_other_names() -> None:
    servicer = FakeClarifai().servicer()
    methods = service_pb2.DESCRIPTOR.services_by_name["V2"].methods_by_name
    assert all(callable(getattr(servicer, name)) for name in methods)
    assert servicer.PostModelOutputs.__name__ == "PostModelOutputs"
    with pytest.raises(AttributeError, match=r"not a clarifai\.api\.V2 method"):
        _ = servicer.NoSuchMethod


# -- pytest-grpc's own modes, in a pytest subprocess ------------------------------------------

MODULE = """
import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc

import clarifai_interceptor as ci
from clarifai_interceptor.testing import FakeClarifai


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return service_pb2_grpc.add_V2Servicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer():
    return FakeClarifai().servicer()


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return service_pb2_grpc.V2Stub


@pytest.fixture(scope="module")
def grpc_create_channel(grpc_create_channel):
    creds = ci.Credentials.from_api_key("fake-key-for-subprocess")
    return lambda credentials=None, options=None: ci.wrap_channel(
        grpc_create_channel(credentials, options), creds
    )


def test_one(grpc_stub):
    grpc_stub.GetModel(service_pb2.GetModelRequest(model_id="m"), timeout=10)


def test_two(grpc_stub):
    grpc_stub.GetModel(service_pb2.GetModelRequest(model_id="m"), timeout=10)
"""

CLOSED_ADDR = """
import socket


@pytest.fixture(scope="module")
def grpc_addr():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return f"localhost:{sock.getsockname()[1]}"
"""


def run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on one test module, as a project with ``filterwarnings = error`` would."""
    module = tmp_path / "test_module.py"
    module.write_text(source, encoding="utf-8")
    command = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider", "-W", "error"]
    # pytest-asyncio (this suite's, not these modules') warns that its loop scope is unset.
    return subprocess.run(
        [*command, "-p", "no:asyncio", "--rootdir", str(tmp_path), "-rA", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pytest_grpcs_own_grpc_addr_leaks_a_socket_and_the_recipes_does_not(
    tmp_path: Path,
) -> None:
    leaky = run_pytest(tmp_path, MODULE)
    assert leaky.returncode != 0, leaky.stdout
    # At the first test's setup, as pytest-grpc's grpc_addr returns and drops its socket.
    assert "ERROR at setup of test_one" in leaky.stdout
    assert "ResourceWarning: unclosed <socket.socket" in leaky.stdout
    assert "1 passed, 1 error" in leaky.stdout  # the calls themselves work
    fixed = run_pytest(tmp_path, MODULE + CLOSED_ADDR)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "2 passed" in fixed.stdout


def test_fake_server_mode_fails_each_test_serving_a_fake_clarifai_saying_why(
    tmp_path: Path,
) -> None:
    done = run_pytest(tmp_path, MODULE + CLOSED_ADDR, "--grpc-fake-server")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ERROR at setup of test_one" in done.stdout
    assert "ERROR at setup of test_two" in done.stdout
    # Once per test in its error, and again in the short summary where pytest's width allows.
    assert done.stdout.count("--grpc-fake-server calls servicers directly") >= 2
    # pytest-grpc's own teardown then fails too: its FakeChannel, which the wrapper closes,
    # has no close(). The message above comes first, for each test.
    assert "Run these tests without --grpc-fake-server." in done.stdout
