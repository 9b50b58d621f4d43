"""Shared fixtures: a fake Clarifai server, the two sync paths, fake credentials, fast policies.

Secrets here are obviously fake. Retry waits are zero (``FAST``): tests never sleep for a backoff.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import trustme
from clarifai_grpc.grpc.api import service_pb2_grpc

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    NoUserIdWarning,
    RetryPolicy,
    _limiter,
    aio,
    wrap_channel,
)
from clarifai_interceptor._attempts import Attempts
from clarifai_interceptor._context import CREDENTIALS, RETRY
from clarifai_interceptor._steps import Ask, Flow, Send, Wait
from clarifai_interceptor.testing import FakeClarifai

# The package's pytest plugin (the `clarifai_fake` fixture), loaded here rather than through its
# entry point (pyproject's addopts say `-p no:clarifai_interceptor`), so that coverage starts
# before the package is first imported; and the suite-wide check that no secret leaks.
pytest_plugins = ["clarifai_interceptor.pytest_plugin", "secrets_guard"]

#: Seconds: every call in the tests has a timeout, so nothing can hang.
T = 10

PAT = "fake-pat-for-tests"
USER = "fake-user"
APP = "fake-app"
API_KEY = "fake-api-key-for-tests"
SESSION_TOKEN = "fake-session-token-for-tests"

PAT_CREDS = Credentials.from_pat(PAT, user_id=USER, app_id=APP)
KEY_CREDS = Credentials.from_api_key(API_KEY)
SESSION_CREDS = Credentials.from_session_token(SESSION_TOKEN, user_id=USER, app_id=APP)
with warnings.catch_warnings():  # a PAT without a user warns once per process; not here
    warnings.simplefilter("ignore", NoUserIdWarning)
    PAT_NO_USER = Credentials.from_pat(PAT)

#: The default policy with zero waits: retries happen at once.
FAST = RetryPolicy(initial_backoff=0, throttle_backoff=0, jitter=0)

PATHS = ("interceptor", "wrapper")


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    """Each test starts with no rate-limit state: buckets are process-wide by design (two
    channels with one secret share one), so one test's throttles would pace the next."""
    _limiter._reset()
    yield
    _limiter._reset()


@pytest.fixture(autouse=True)
def _no_override_leaks() -> Iterator[None]:
    """Fail a test that leaves a `use_credentials` / `use_retry` override set behind it."""
    assert CREDENTIALS.get() is None, "a credentials override leaked into this test"
    assert RETRY.get() is None, "a retry override leaked into this test"
    yield
    leaked = [name for name, var in (("credentials", CREDENTIALS), ("retry", RETRY)) if var.get()]
    # Reset so one leak fails one test, not every test after it.
    CREDENTIALS.set(None)
    RETRY.set(None)
    assert not leaked, f"override(s) leaked out of the test: {leaked}"


@pytest.fixture
def fake() -> Iterator[FakeClarifai]:
    """A started `FakeClarifai` without auth checking; stopped after the test."""
    with FakeClarifai() as server:
        yield server


@dataclass
class Path:
    """Builds channels and stubs to ``fake`` through one of the two sync paths.

    ``interceptor``: ``grpc.intercept_channel(grpc.insecure_channel(...), ClarifaiInterceptor())``;
    ``wrapper``: ``wrap_channel(grpc.insecure_channel(...))``. Every channel built is closed
    after the test.
    """

    kind: str
    target: str
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def channel(
        self, credentials: Credentials | None = PAT_CREDS, *, retry: RetryPolicy | None = FAST
    ) -> grpc.Channel:
        raw = grpc.insecure_channel(self.target)
        self._closers.append(raw.close)
        if self.kind == "interceptor":
            return grpc.intercept_channel(raw, ClarifaiInterceptor(credentials, retry=retry))
        return wrap_channel(raw, credentials, retry=retry)

    def stub(
        self, credentials: Credentials | None = PAT_CREDS, *, retry: RetryPolicy | None = FAST
    ) -> service_pb2_grpc.V2Stub:
        return service_pb2_grpc.V2Stub(self.channel(credentials, retry=retry))

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, fake: FakeClarifai) -> Iterator[Path]:
    """One of the two sync paths to ``fake``; tests using it run once per path."""
    built = Path(request.param, fake.target)
    yield built
    built.close()


@pytest.fixture
def stub(path: Path) -> service_pb2_grpc.V2Stub:
    """A `V2Stub` on ``path`` with `PAT_CREDS` and the `FAST` policy."""
    return path.stub()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    """A test certificate authority."""
    return trustme.CA()


@pytest.fixture
def tls_fake(authority: trustme.CA) -> Iterator[FakeClarifai]:
    """A `FakeClarifai` serving TLS with a certificate for ``localhost`` from `authority`."""
    cert = authority.issue_cert("localhost")
    key_pem = cert.private_key_pem.bytes()
    chain_pem = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with FakeClarifai(tls=(key_pem, chain_pem)) as fake:
        yield fake


def localhost(fake: FakeClarifai) -> str:
    """The fake's target under the name its certificate is for."""
    return "localhost:" + fake.target.rsplit(":", 1)[1]


class Judge:
    """Feeds outcomes to one call's flow as a driver would, without I/O: `after` gives the
    seconds it waits before the next attempt (0 for none), or None when the outcome is final.
    Limiter steps are answered by the call's own bucket, in this thread."""

    def __init__(self, attempts: Attempts) -> None:
        self.attempts = attempts
        self._flow: Flow | None = None

    def first(self) -> float:
        """Start the flow: the seconds it waits before the first attempt (the limiter's)."""
        self._flow = self.attempts.flow()
        return self._until_send(None)

    def after(self, outcome: object) -> float | None:
        if self._flow is None:
            self._flow = self.attempts.flow(outcome)
            value: object = None
            first = True
        else:
            value, first = outcome, False
        try:
            return self._until_send(None if first else value, prime=first)
        except StopIteration:
            return None

    def _until_send(self, value: object, *, prime: bool = False) -> float:
        assert self._flow is not None
        waited = 0.0
        step = next(self._flow) if prime else self._flow.send(value)
        while not isinstance(step, Send):
            if isinstance(step, Ask):
                step = self._flow.send(self.attempts.ask(step))
            else:
                assert isinstance(step, Wait)
                waited += step.seconds
                step = self._flow.send(None)
        return waited


# -- aio paths (shared fixtures) -------------------------------------------------------------
@dataclass
class AioPath:
    """Builds aio channels to a server through one of the two aio paths.

    ``channel``: `aio.insecure_channel`; ``interceptors``: ``grpc.aio.insecure_channel`` with
    `aio.interceptors` (and any ``inner`` interceptors after ours).
    """

    kind: str
    target: str

    def channel(
        self,
        credentials: Credentials | None = PAT_CREDS,
        *,
        retry: RetryPolicy | None = FAST,
        inner: Iterable[Any] = (),
    ) -> Any:
        if self.kind == "channel":
            assert not inner, "the channel path takes no extra interceptors"
            return aio.insecure_channel(self.target, credentials, retry=retry)
        chain = [*aio.interceptors(credentials, retry=retry), *inner]
        return grpc.aio.insecure_channel(self.target, interceptors=chain)

    @asynccontextmanager
    async def stub(
        self, credentials: Credentials | None = PAT_CREDS, *, retry: RetryPolicy | None = FAST
    ) -> AsyncIterator[service_pb2_grpc.V2Stub]:
        async with self.channel(credentials, retry=retry) as channel:
            yield service_pb2_grpc.V2Stub(channel)


@pytest.fixture(params=("channel", "interceptors"))
def aio_path(request: pytest.FixtureRequest, fake: FakeClarifai) -> AioPath:
    """One of the two aio paths to ``fake``; tests using it run once per path."""
    return AioPath(request.param, fake.target)
