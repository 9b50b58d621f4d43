"""No secret in comparison output, introspection, pickles, frame locals or call details.

Each exposure is tried for real: pytest runs in a subprocess on a generated failing test, calls
fail against a real `FakeClarifai` on every path, locals are captured with the standard
library's ``traceback.TracebackException(capture_locals=True)``, and logging interceptors are
stacked below ours.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import T
from helpers import ROOT, bucket_of

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    RetryPolicy,
    Secret,
    aio,
    use_credentials,
    wrap_channel,
)
from clarifai_interceptor._closing import CLOSED_DETAILS
from clarifai_interceptor._metadata import for_attempt, merge
from clarifai_interceptor._secret import REDACTED, CredentialPair, Pairs, SafeMetadata
from clarifai_interceptor.testing import Fail, FakeClarifai

PAT = "fake-pat-for-secrecy-tests"
TOKEN = "fake-token-for-secrecy-tests"
OTHER = "fake-other-pat-for-secrecy-tests"
CREDS = Credentials.from_pat(PAT, user_id="fake-user", app_id="fake-app")
TOKEN_CREDS = Credentials.from_session_token(TOKEN, user_id="fake-user")
OTHER_CREDS = Credentials.from_pat(OTHER, user_id="fake-user", app_id="fake-app")
SECRETS = (PAT, TOKEN, OTHER)
#: Fails every attempt fast: UNAVAILABLE is retried (with no wait) until attempts run out.
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0, jitter=0, budget=None)
SYNC_PATHS = ("wrapper", "interceptor")
STYLES = ("call", "with_call", "future", "stream")


def assert_hidden(text: str, what: str) -> None:
    """Fail, without echoing it, if any secret is in ``text``."""
    found = [number for number, secret in enumerate(SECRETS) if secret in text]
    if found:
        pytest.fail(f"secret(s) #{found} appeared in {what}", pytrace=False)


def with_locals(exc: BaseException) -> str:
    """The traceback of ``exc`` (its chain included) with every frame's locals, as text."""
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


# -- comparison output, introspection, pickles (item 2) --------------------------------------


_FAILING_TESTS = """
import os

from clarifai_interceptor import Credentials

A = Credentials.from_pat(os.environ["SECRET_A"], user_id="u1")
B = Credentials.from_pat(os.environ["SECRET_B"], user_id="u1")


def test_credentials_differ():
    a, b = A, B
    assert a == b


def test_secrets_differ():
    assert A.secret == B.secret


def test_metadata_differs():
    assert A.metadata == B.metadata


def test_listed_credentials_differ():
    assert [A] == [B]
"""


@pytest.mark.parametrize("flags", [[], ["-vv"], ["-vv", "--showlocals"]], ids=str)
def test_a_failing_pytest_comparison_shows_no_secret(tmp_path: FsPath, flags: list[str]) -> None:
    (tmp_path / "test_generated.py").write_text(_FAILING_TESTS)
    env = {**os.environ, "SECRET_A": PAT, "SECRET_B": OTHER, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
    done = subprocess.run(
        [*argv, *flags, "test_generated.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-2000:] if not any(s in out for s in SECRETS) else ""
    assert "4 failed" in out
    assert "Secret('<redacted>')" in out  # the diff was rendered, with the secret redacted
    assert_hidden(out, f"pytest {' '.join(flags)} output")


def test_introspection_shows_no_secret() -> None:
    for creds in (CREDS, TOKEN_CREDS):
        shown = {
            "repr": repr(creds),
            "str": str(creds),
            "asdict": repr(dataclasses.asdict(creds)),
            "astuple": repr(dataclasses.astuple(creds)),
            "getmembers": repr(inspect.getmembers(creds)),
            "getmembers of the secret": repr(inspect.getmembers(creds.secret)),
            "the secret": f"{creds.secret} {creds.secret!r} {creds.secret!s} %s" % creds.secret,
            "metadata": f"{creds.metadata} {creds.metadata!r} {list(creds.metadata)}",
            "a copy of metadata": repr(tuple(creds.metadata)),  # as gRPC copies it
            "deepcopy": repr(copy.deepcopy(creds)),
        }
        for what, text in shown.items():
            assert_hidden(text, what)
        assert "<redacted>" in shown["asdict"]
        assert "<redacted>" in shown["a copy of metadata"]
        for obj in (creds, creds.secret):
            with pytest.raises(TypeError):
                vars(obj)  # slots: there is no __dict__ to show


def test_nothing_pickles_a_secret() -> None:
    header = CREDS.metadata[0]
    for obj in (CREDS, CREDS.secret, CREDS.metadata, header, tuple(CREDS.metadata), [CREDS]):
        with pytest.raises(TypeError, match="cannot be pickled") as info:
            pickle.dumps(obj)
        assert_hidden(str(info.value), "the pickling error")


def test_secrets_compare_by_value_and_stay_usable() -> None:
    assert Credentials.from_pat(PAT, user_id="fake-user", app_id="fake-app") == CREDS
    assert CREDS != OTHER_CREDS
    assert Secret(PAT) == CREDS.secret
    assert Secret(PAT) != Secret(OTHER)
    assert Secret(PAT) != PAT  # a Secret is not a str: nothing compares it by accident
    assert hash(Secret(PAT)) == hash(CREDS.secret)
    assert CREDS.secret.reveal() == PAT
    assert CREDS.metadata == (("authorization", f"Key {PAT}"),)  # what gRPC sends
    assert TOKEN_CREDS.metadata == (("x-clarifai-session-token", TOKEN),)
    assert dataclasses.replace(CREDS, user_id="u2").secret == CREDS.secret
    assert Credentials(kind="pat", secret=Secret(PAT), user_id="u").secret == CREDS.secret
    assert copy.copy(CREDS) is CREDS
    with pytest.raises(AttributeError):
        CREDS.secret._value = lambda: OTHER  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="holds a str"):
        Secret(b"bytes")  # type: ignore[arg-type]


# -- the metadata we pass around (item 3) ----------------------------------------------------


def test_metadata_we_build_redacts_credentials_in_its_repr() -> None:
    caller = (("x-request-id", "r1"),)
    pairs, added = merge(caller, CREDS)
    assert added
    retry = for_attempt(pairs, 2)
    own, _ = merge((("authorization", f"Key {OTHER}"), ("x-request-id", "r1")), CREDS)
    for built in (CREDS.metadata, pairs, retry, own):
        assert isinstance(built, Pairs)
        assert_hidden(f"{built!r} {built!s} {tuple(built)!r} {[*built]!r}", "Pairs")
    assert repr(pairs) == repr((("x-request-id", "r1"), ("authorization", REDACTED)))
    assert retry == (*pairs, ("x-retry-attempt", "1"))
    assert own == (("authorization", f"Key {OTHER}"), ("x-request-id", "r1"))
    assert isinstance(own[0], CredentialPair)
    sent = SafeMetadata(*retry)
    assert_hidden(f"{sent!r} {sent!s}", "aio metadata")
    assert list(sent) == list(retry)


# -- calls that fail, locals captured, on every path -----------------------------------------


def sync_channel(kind: str, target: str, *below: Any) -> grpc.Channel:
    raw = grpc.insecure_channel(target)
    if kind == "wrapper":
        return wrap_channel(
            grpc.intercept_channel(raw, *below) if below else raw, CREDS, retry=RETRY
        )
    return grpc.intercept_channel(raw, ClarifaiInterceptor(CREDS, retry=RETRY), *below)


def call(stub: service_pb2_grpc.V2Stub, style: str) -> Any:
    request = service_pb2.ListModelsRequest()
    if style == "call":
        return stub.ListModels(request, timeout=T)
    if style == "with_call":
        return stub.ListModels.with_call(request, timeout=T)
    if style == "future":
        return stub.ListModels.future(request, timeout=T).result(timeout=T)
    return list(stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T))


@pytest.fixture
def failing() -> Iterator[FakeClarifai]:
    """A fake whose every call fails UNAVAILABLE (retried until the attempts run out)."""
    with FakeClarifai() as fake:
        for method in ("ListModels", "GenerateModelOutputs"):
            fake.set_default(method, Fail(grpc.StatusCode.UNAVAILABLE, "down"))
        yield fake


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", SYNC_PATHS)
def test_locals_of_a_failed_sync_call_show_no_secret(
    failing: FakeClarifai, kind: str, style: str
) -> None:
    with sync_channel(kind, failing.target) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            call(stub, style)
        # Under an override too: its credentials are the ones in flight.
        with use_credentials(OTHER_CREDS), pytest.raises(grpc.RpcError) as other:
            call(stub, style)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(failing.calls) == 2 * RETRY.max_attempts
    assert {call.header("authorization") for call in failing.calls} == {
        f"Key {PAT}",
        f"Key {OTHER}",
    }
    for exc in (info.value, other.value):
        text = with_locals(exc)
        assert "ListModels" in text or "GenerateModelOutputs" in text  # frames were captured
        assert_hidden(text, f"the locals of a failed {kind} {style}")


@pytest.mark.parametrize("style", ["call", "stream"])
@pytest.mark.parametrize("kind", ["aio-channel", "aio-interceptors"])
def test_locals_of_a_failed_aio_call_show_no_secret(
    failing: FakeClarifai, kind: str, style: str
) -> None:
    async def run() -> BaseException:
        if kind == "aio-channel":
            channel = aio.insecure_channel(failing.target, CREDS, retry=RETRY)
        else:
            chain = aio.interceptors(CREDS, retry=RETRY)
            channel = grpc.aio.insecure_channel(failing.target, interceptors=chain)
        async with channel:
            stub = service_pb2_grpc.V2Stub(channel)
            try:
                if style == "call":
                    await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
                else:
                    request = service_pb2.PostModelOutputsRequest()
                    [m async for m in stub.GenerateModelOutputs(request, timeout=T)]
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("the call did not fail")

    exc = asyncio.run(run())
    assert len(failing.calls) == RETRY.max_attempts
    assert_hidden(with_locals(exc), f"the locals of a failed {kind} {style}")


class _Recorder(logging.Handler):
    """Keeps each record's exception rendered with every frame's locals."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.texts.append(record.getMessage() + with_locals(record.exc_info[1]))


@pytest.mark.parametrize("kind", SYNC_PATHS)
def test_a_retry_that_could_not_start_shows_no_secret_in_locals(kind: str) -> None:
    recorder = _Recorder()
    logger = logging.getLogger("clarifai_interceptor")
    logger.addHandler(recorder)
    slow = RetryPolicy(max_attempts=3, initial_backoff=0.3, jitter=0, budget=None)
    try:
        with FakeClarifai() as fake:
            fake.set_default("ListModels", Fail(grpc.StatusCode.UNAVAILABLE, "down"))
            raw = grpc.insecure_channel(fake.target)
            if kind == "wrapper":
                channel = wrap_channel(raw, CREDS, retry=slow)
            else:
                channel = grpc.intercept_channel(raw, ClarifaiInterceptor(CREDS, retry=slow))
            stub = service_pb2_grpc.V2Stub(channel)
            future = stub.ListModels.future(service_pb2.ListModelsRequest(), timeout=T)
            deadline = time.monotonic() + T
            while not recorder.messages and time.monotonic() < deadline:
                time.sleep(0.005)  # until "retrying ...": attempt 1 failed, a retry is pending
            channel.close()  # the retry then cannot start
            error = future.exception(timeout=T)
    finally:
        logger.removeHandler(recorder)
    assert isinstance(error, grpc.RpcError)
    assert_hidden(with_locals(error), f"the locals of the {kind} future's error")
    assert recorder.messages[0].startswith("retrying ListModels")
    texts = [text for text in recorder.texts if "a retry could not start" in text]
    if kind == "wrapper":  # a channel of ours ends the wait at its close: no retry is tried
        assert error.details() == CLOSED_DETAILS
        assert texts == []
    else:  # an interceptor is not told of the close: its retry tries, and fails to start
        assert len(texts) == 1
    for text in texts:
        assert "Traceback" in text
        assert_hidden(text, f"the locals of the {kind}'s 'a retry could not start' record")


# -- call details handed to an interceptor stacked below ours --------------------------------


class _LoggingInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Logs what a careless interceptor would: the call details it is handed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _log(self, details: Any) -> None:
        self.lines.append(f"{details!r} | {details!s} | {details.metadata!r}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._log(details)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._log(details)
        return continuation(details, request)


def _auth_fake() -> FakeClarifai:
    return FakeClarifai(secrets={PAT: None, TOKEN: None})


@pytest.mark.parametrize("creds", [CREDS, TOKEN_CREDS], ids=["pat", "session_token"])
def test_sync_call_details_below_ours_show_no_secret(creds: Credentials) -> None:
    below = _LoggingInterceptor()
    with _auth_fake() as fake:
        raw = grpc.insecure_channel(fake.target)
        stacked = grpc.intercept_channel(raw, ClarifaiInterceptor(creds, retry=RETRY), below)
        with stacked:
            stub = service_pb2_grpc.V2Stub(stacked)
            response = stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
            messages = list(
                stub.GenerateModelOutputs(service_pb2.PostModelOutputsRequest(), timeout=T)
            )
        calls = fake.calls
    assert response.status.code == status_code_pb2.SUCCESS  # the server saw the right secret
    assert [m.status.code for m in messages] == [status_code_pb2.SUCCESS] * 3
    key = creds.metadata[0][0]
    assert [call.header(key) for call in calls] == [creds.metadata[0][1]] * 2
    assert len(below.lines) == 2
    for line in below.lines:
        assert f"'{key}', '<redacted>'" in line
        assert_hidden(line, "the call details a stacked interceptor logged")


class _AioLogging:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _log(self, details: Any) -> None:
        self.lines.append(f"{details!r} | {details!s} | {details.metadata!r}")


class _AioUnaryLogging(_AioLogging, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._log(details)
        return await continuation(details, request)


class _AioStreamLogging(_AioLogging, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._log(details)
        return await continuation(details, request)


@pytest.mark.parametrize("creds", [CREDS, TOKEN_CREDS], ids=["pat", "session_token"])
def test_aio_call_details_below_ours_show_no_secret(creds: Credentials) -> None:
    unary, stream = _AioUnaryLogging(), _AioStreamLogging()

    async def run(target: str) -> tuple[Any, list[Any]]:
        chain = [*aio.interceptors(creds, retry=RETRY), unary, stream]
        async with grpc.aio.insecure_channel(target, interceptors=chain) as channel:
            stub = service_pb2_grpc.V2Stub(channel)
            response = await stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
            request = service_pb2.PostModelOutputsRequest()
            messages = [m async for m in stub.GenerateModelOutputs(request, timeout=T)]
        return response, messages

    with _auth_fake() as fake:
        response, messages = asyncio.run(run(fake.target))
        calls = fake.calls
    assert response.status.code == status_code_pb2.SUCCESS  # the server saw the right secret
    assert [m.status.code for m in messages] == [status_code_pb2.SUCCESS] * 3
    key = creds.metadata[0][0]
    assert [call.header(key) for call in calls] == [creds.metadata[0][1]] * 2
    lines = unary.lines + stream.lines
    assert len(lines) == 2
    for line in lines:
        assert f"'{key}', '<redacted>'" in line
        assert_hidden(line, "the aio call details a stacked interceptor logged")


def test_wrapper_over_a_logging_channel_sends_redacting_metadata() -> None:
    below = _LoggingInterceptor()
    with _auth_fake() as fake, sync_channel("wrapper", fake.target, below) as channel:
        response = service_pb2_grpc.V2Stub(channel).ListModels(
            service_pb2.ListModelsRequest(), timeout=T
        )
        assert response.status.code == status_code_pb2.SUCCESS
    (line,) = below.lines
    assert "'authorization', '<redacted>'" in line
    assert_hidden(line, "what a logging interceptor under wrap_channel logged")


def test_secret_holders_are_immutable_and_copied_as_themselves() -> None:
    header = CREDS.metadata[0]
    assert isinstance(header, CredentialPair)
    for obj in (CREDS, CREDS.secret, header):
        assert copy.copy(obj) is obj
        assert copy.deepcopy(obj) is obj
    with pytest.raises(AttributeError, match="immutable"):
        del CREDS.secret._value
    assert_hidden(f"{header} {header!r}", "a credential header")


def test_the_rate_limiter_keys_by_the_revealed_secret() -> None:
    from clarifai_interceptor._core import Core  # noqa: PLC0415
    from clarifai_interceptor._limiter import DEFAULT_RATE_LIMIT  # noqa: PLC0415

    core = Core(CREDS, None, DEFAULT_RATE_LIMIT, "fake-target:443")
    bucket = core.limiter(CREDS)
    assert bucket is bucket_of(DEFAULT_RATE_LIMIT, PAT, "fake-target:443")
    assert core.limiter(OTHER_CREDS) is not bucket  # another secret, another bucket
    assert core.limiter(Credentials.from_pat(PAT, user_id="fake-user")) is bucket


# -- helpers of the tests below --------------------------------------------------------------
GUARD_PROBE = textwrap.dedent(
    """
    import logging
    import warnings

    import pytest

    from clarifai_interceptor import Credentials

    # Built from parts: the secrets must never appear in pytest's output, not even as source.
    SECRET = "-".join(["fake", "guard", "probe", "pat"])
    OTHER = "-".join(["fake", "guard", "other", "pat"])
    SHORT = "-".join(["f", "k"])


    def test_clean():
        creds = Credentials.from_pat(SECRET, user_id="u")
        logging.getLogger("clarifai_interceptor").debug("built %r", creds)
        assert repr(creds)


    def test_debug_record():
        Credentials.from_pat(SECRET, user_id="u")
        logging.getLogger("clarifai_interceptor").debug("retrying with %s", SECRET)


    def test_warning():
        with pytest.warns(UserWarning):
            warnings.warn("token " + SECRET, UserWarning, stacklevel=1)


    def test_caught_exception():
        with pytest.raises(ValueError):
            raise ValueError("bad " + SECRET)


    def test_secret_of_a_later_test():
        logging.getLogger("elsewhere").warning("%s", OTHER)  # not a secret yet: passes


    def test_builds_other():
        Credentials.from_api_key(OTHER)


    def test_secret_of_an_earlier_test():
        logging.getLogger("elsewhere").warning("%s", OTHER)


    def test_short_secrets_are_not_tracked():
        Credentials.from_api_key(SHORT + "x")
        logging.getLogger("elsewhere").warning("x%sx", SHORT)
    """
)


# -- the secrets guard itself ----------------------------------------------------------------


def test_secrets_guard_fails_a_test_that_leaks_and_never_prints_the_secret(
    tmp_path: FsPath,
) -> None:
    (tmp_path / "test_probe.py").write_text(GUARD_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.secrets_guard",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-rfp",
            str(tmp_path / "test_probe.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    output = result.stdout + result.stderr
    outcomes = {
        name: outcome
        for outcome, name in re.findall(r"^(PASSED|FAILED) \S+::(\w+)", output, re.MULTILINE)
    }
    assert outcomes == {
        "test_clean": "PASSED",
        "test_debug_record": "FAILED",
        "test_warning": "FAILED",
        "test_caught_exception": "FAILED",
        # The guard tracks a secret from when it is built, then for the rest of the session.
        "test_secret_of_a_later_test": "PASSED",
        "test_builds_other": "PASSED",
        "test_secret_of_an_earlier_test": "FAILED",
        "test_short_secrets_are_not_tracked": "PASSED",
    }, output
    assert "a log record of logger 'clarifai_interceptor'" in output
    assert "a warning" in output
    assert "caught by pytest.raises" in output
    assert "first seen in test_probe.py::test_builds_other" in output
    assert "fake-guard-probe-pat" not in output
    assert "fake-guard-other-pat" not in output
