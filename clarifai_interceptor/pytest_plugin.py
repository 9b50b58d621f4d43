"""pytest plugin of clarifai-interceptor: the ``clarifai_fake`` and ``clarifai_testing`` fixtures.

Installing the package registers this plugin (entry point ``pytest11``), so any test suite can
ask for the fixture by name and call a fake Clarifai API over real gRPC::

    def test_predict_retries(clarifai_fake):
        clarifai_fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE)
        channel = grpc.insecure_channel(clarifai_fake.target)
        ...  # call through service_pb2_grpc.V2Stub(channel)
        assert len(clarifai_fake.calls_to("PostModelOutputs")) == 2

See `clarifai_interceptor.testing.FakeClarifai` for scripts, recorded calls and auth checking.

With pytest-grpc, ``FakeClarifai().servicer()`` serves as its ``grpc_servicer`` (the guide's
"Testing your own code", ``docs/pages/testing.md``, has the whole recipe). Its
``--grpc-fake-server`` mode calls servicers directly, with no channel, so no client interceptor
ever runs: a test whose ``grpc_servicer`` is a FakeClarifai servicer fails at setup under that
option, saying so.

Loading the plugin imports neither gRPC nor clarifai_grpc (nor does importing the package):
every pytest run in an environment that has the package loads it, so it costs nothing until a
test asks for a fixture.

``clarifai_testing`` turns the testing switch on for one test (no retry waits at all)::

    def test_gives_up_fast(clarifai_fake, clarifai_testing):
        clarifai_testing(True, attempts=2)  # optional: exactly two attempts per call
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clarifai_interceptor.testing import FakeClarifai

#: pytest-grpc's ``--grpc-fake-server`` option, by its ``dest``.
_GRPC_FAKE_SERVER = "grpc-fake"
_NO_FAKE_SERVER = (
    "pytest-grpc's --grpc-fake-server calls servicers directly, without a gRPC channel, so no "
    "client interceptor runs (neither ClarifaiInterceptor nor wrap_channel: no credentials, no "
    "retries) and FakeClarifai's servicer gets no real ServicerContext. Run these tests "
    "without --grpc-fake-server."
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Fail the setup of a test served by a FakeClarifai servicer under ``--grpc-fake-server``.

    Checked once the test's fixtures are set up (pytest-grpc's ``grpc_servicer`` among them),
    so that they are cached and torn down as usual: every such test fails, each saying why.
    """
    yield
    if not item.config.getoption(_GRPC_FAKE_SERVER, default=False):
        return
    servicer = getattr(item, "funcargs", {}).get("grpc_servicer")
    if servicer is None:
        return
    from clarifai_interceptor.testing import FakeServicer  # noqa: PLC0415

    if isinstance(servicer, FakeServicer):
        pytest.fail(_NO_FAKE_SERVER, pytrace=False)


@pytest.fixture
def clarifai_fake() -> Iterator[FakeClarifai]:
    """A started `FakeClarifai` without auth checking, stopped after the test.

    Every V2 method answers SUCCESS until scripted; calls are recorded on ``clarifai_fake.calls``.
    The gRPC modules load on first use of the fixture, not when pytest loads the plugin.
    """
    from clarifai_interceptor.testing import FakeClarifai  # noqa: PLC0415

    with FakeClarifai() as fake:
        yield fake


@pytest.fixture
def clarifai_testing() -> Iterator[Callable[..., Any]]:
    """Testing mode on for the test: every retry wait (backoff, pushback, limiter) is 0.

    Yields `clarifai_interceptor.testing.set_testing`, to change the mode within the test
    (``clarifai_testing(True, attempts=3)``); the state from before the test is restored after
    it, whatever the test or its threads set meanwhile. The switch is process-wide: tests
    running at once in threads of one process share it, each ending only its own setting.
    """
    from clarifai_interceptor._switch import set_testing  # noqa: PLC0415

    with set_testing(True):
        yield set_testing
