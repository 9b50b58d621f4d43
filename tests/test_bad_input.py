"""Bad input fails when objects are built, with a message naming the problem; valid targets
(gRPC's naming doc) are accepted and dialled for real."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path as FsPath
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2
from conftest import PAT_CREDS, T

import clarifai_interceptor._credentials as credentials_module
from clarifai_interceptor import (
    MAX_SECRET_LENGTH,
    ClarifaiInterceptor,
    Credentials,
    MissingCredentialsError,
    NoUserIdWarning,
    RetryPolicy,
    aio,
    insecure_channel,
    secure_channel,
    use_credentials,
    wrap_channel,
)
from clarifai_interceptor._channel import channel_options, resolve_target
from clarifai_interceptor._credentials import ENV_VARS
from clarifai_interceptor.instrumentation import set_on_retry_hooks
from clarifai_interceptor.testing import FakeClarifai

PAT = "fake-pat-for-bad-input-tests"
CREDS = Credentials.from_pat(PAT, user_id="fake-user", app_id="fake-app")


# -- targets ---------------------------------------------------------------------------------


class _Scopes(service_pb2_grpc.V2Servicer):  # type: ignore[misc]
    """The real V2 service, answering MyScopes and recording the authorization it saw."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def MyScopes(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append(dict(context.invocation_metadata()).get("authorization"))  # type: ignore[arg-type]
        return service_pb2.MultiScopeResponse(
            status=status_pb2.Status(code=status_code_pb2.SUCCESS)
        )


class _Server:
    """One server listening on TCP (IPv4, and IPv6 if the host has it), a Unix socket and an
    abstract Unix socket."""

    def __init__(self) -> None:
        self.servicer = _Scopes()
        self.dir = tempfile.mkdtemp(prefix="ci-", dir="/tmp")
        self.socket = os.path.join(self.dir, "s.sock")  # noqa: PTH118
        self.abstract = f"clarifai-interceptor-test-{os.getpid()}-{time.monotonic_ns()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_pb2_grpc.add_V2Servicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        try:
            self.port6 = self.server.add_insecure_port("[::1]:0")
        except RuntimeError:
            self.port6 = 0
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.add_insecure_port(f"unix-abstract:{self.abstract}")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None).wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    built = _Server()
    yield built
    built.close()


# Each form of gRPC's naming doc (grpc/grpc doc/naming.md), as a template over the server.
VALID = [
    "127.0.0.1:{port}",
    "localhost:{port}",
    "dns:///127.0.0.1:{port}",
    "dns:127.0.0.1:{port}",
    "dns:///localhost:{port}",
    "ipv4:127.0.0.1:{port}",
    "ipv4:127.0.0.1:{port},127.0.0.1:{port}",
    "unix:{socket}",
    "unix://{socket}",  # the socket path is absolute: unix:///tmp/...
    "unix-abstract:{abstract}",
    "[::1]:{port6}",
    "ipv6:[::1]:{port6}",
]


@pytest.mark.parametrize("template", VALID)
def test_every_valid_target_form_is_accepted_and_dialled(server: _Server, template: str) -> None:
    if "port6" in template and not server.port6:
        pytest.skip("no IPv6 loopback here")
    target = template.format(
        port=server.port, port6=server.port6, socket=server.socket, abstract=server.abstract
    )
    assert resolve_target(target, {}) == target
    before = len(server.servicer.seen)
    with insecure_channel(target, CREDS, retry=RetryPolicy(max_attempts=1)) as channel:
        response = service_pb2_grpc.V2Stub(channel).MyScopes(
            service_pb2.MyScopesRequest(), timeout=T
        )
    assert response.status.code == status_code_pb2.SUCCESS
    assert server.servicer.seen[before:] == [f"Key {PAT}"]


@pytest.mark.asyncio
async def test_an_aio_channel_dials_a_unix_socket(server: _Server) -> None:
    async with aio.insecure_channel(f"unix:{server.socket}", CREDS) as channel:
        response = await service_pb2_grpc.V2Stub(channel).MyScopes(
            service_pb2.MyScopesRequest(), timeout=T
        )
    assert response.status.code == status_code_pb2.SUCCESS


def test_targets_are_kept_or_get_port_443() -> None:
    assert resolve_target("unix:relative.sock", {}) == "unix:relative.sock"
    assert resolve_target("dns://8.8.8.8:53/api.clarifai.com", {}) == (
        "dns://8.8.8.8:53/api.clarifai.com"
    )
    assert resolve_target("ipv4:127.0.0.1", {}) == "ipv4:127.0.0.1"  # gRPC's default: 443
    assert resolve_target("ipv6:::1", {}) == "ipv6:::1"
    assert resolve_target("api.clarifai.com.", {}) == "api.clarifai.com.:443"
    assert resolve_target(None, {"CLARIFAI_GRPC_BASE": "unix:/run/x.sock"}) == "unix:/run/x.sock"


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("localhost:abc", "port must be a number from 1 to 65535, not 'abc'"),
        ("localhost:0", "port must be a number from 1 to 65535"),
        ("localhost:65536", "port must be a number from 1 to 65535"),
        ("localhost:", "port must be a number"),
        (":50051", "the host is empty"),
        ("::1", "an IPv6 address needs brackets"),
        ("::1:50051", "an IPv6 address needs brackets"),
        ("[::1", "lacks its ']'"),
        ("[::1]50051", "only ':PORT' may follow ']'"),
        ("[nope]:1", "'nope' is not an IPv6 address"),
        ("https://api.clarifai.com", "'https://' is not a scheme gRPC knows"),
        ("grpc://host:1", "'grpc://' is not a scheme gRPC knows"),
        ("host/path", "HOST[:PORT] has no path"),
        ("a b", "whitespace or a control character"),
        ("host\x00:1", "whitespace or a control character"),
        ("", "it is empty"),
        ("-host:1", "is not a host name"),
        ("unix:", "the socket path is empty"),
        ("unix://relative.sock", "needs an absolute path"),
        ("unix-abstract:", "the abstract socket name is empty"),
        ("dns://8.8.8.8", "needs '/HOST[:PORT]' after it"),
        ("dns:///", "the host is empty"),
        ("dns:///host:abc", "port must be a number"),
        ("ipv4:1.2.3", "'1.2.3' is not an IPv4 address"),
        ("ipv4:127.0.0.1:x", "port must be a number"),
        ("ipv6:[::1]:", "port must be a number"),
        ("ipv6:nope", "'nope' is not an IPv6 address"),
    ],
)
def test_invalid_targets_are_refused_naming_the_problem(target: str, problem: str) -> None:
    for build in (
        lambda: resolve_target(target, {}),
        lambda: insecure_channel(target, CREDS),
        lambda: secure_channel(target, CREDS),
        lambda: aio.insecure_channel(target, CREDS),
    ):
        with pytest.raises(ValueError, match="target must be HOST or HOST:PORT") as info:
            build()
        assert problem in str(info.value)


def test_a_bad_target_fails_at_once_not_after_retries() -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="not 'abc'"):
        insecure_channel("localhost:abc", CREDS)
    assert time.monotonic() - started < 1  # generous: no call, no retry was made


def test_a_bad_target_from_the_environment_says_so() -> None:
    with pytest.raises(ValueError, match="from CLARIFAI_GRPC_BASE: the port must be"):
        resolve_target(None, {"CLARIFAI_GRPC_BASE": "eu.example.test:https"})
    with pytest.raises(ValueError, match="got a int"):
        resolve_target(443, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'x{200}'\.\.\.: "):
        resolve_target("x" * 10_000 + ":abc", {})  # a huge target is cut in the message


USERINFO_PASSWORD = "fake-target-password"  # obviously fake: what a userinfo would carry


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (f"fake-user:{USERINFO_PASSWORD}@api.example.test:443", "'***@api.example.test:443'"),
        (f"fake-user:{USERINFO_PASSWORD}@localhost", "'***@localhost'"),
        (f"{USERINFO_PASSWORD}@[::1]:50051", "'***@[::1]:50051'"),
        (f"https://fake-user:{USERINFO_PASSWORD}@api.example.test", "'https://***@api.example"),
        (f"dns:///fake-user:{USERINFO_PASSWORD}@api.example.test:443", "'dns://***@api.example"),
        (f"dns://fake-user:{USERINFO_PASSWORD}@8.8.8.8/api.example.test", "'dns://***@8.8.8.8/"),
        (f"ipv4:fake-user:{USERINFO_PASSWORD}@127.0.0.1:1", "'ipv4:***@127.0.0.1:1'"),
        (f"fake-user:{USERINFO_PASSWORD}/x@api.example.test", "'***@api.example.test'"),
    ],
)
def test_a_target_with_user_info_is_refused_without_echoing_it(target: str, shown: str) -> None:
    for build in (
        lambda: resolve_target(target, {}),
        lambda: resolve_target(None, {"CLARIFAI_GRPC_BASE": target}),
        lambda: insecure_channel(target, CREDS),
        lambda: secure_channel(target, CREDS),
        lambda: aio.insecure_channel(target, CREDS),
        lambda: aio.secure_channel(target, CREDS),
    ):
        with pytest.raises(ValueError, match="target must be HOST or HOST:PORT") as info:
            build()
        message = str(info.value)
        assert "it carries user info (USER:PASSWORD@, shown as ***@)" in message
        assert shown in message
        assert USERINFO_PASSWORD not in message
        assert "fake-user" not in message
    # An '@' in a unix socket's path or abstract name is no user info.
    assert resolve_target("unix:/run/fake@1.sock", {}) == "unix:/run/fake@1.sock"
    assert resolve_target("unix-abstract:fake@1", {}) == "unix-abstract:fake@1"


def test_the_part_of_a_bad_target_named_in_the_message_is_cut_too() -> None:
    with pytest.raises(ValueError, match="got ") as info:
        resolve_target("-" + "h" * 10_000 + ":1", {})
    assert len(str(info.value)) < 800
    assert f"'-{'h' * 199}'... is not a host name" in str(info.value)
    with pytest.raises(ValueError, match="got ") as info:
        resolve_target("host:" + "9" * 10_000, {})
    assert len(str(info.value)) < 800
    assert "the port must be a number from 1 to 65535, not '999" in str(info.value)


def test_an_interceptor_target_with_user_info_never_labels_a_retry(fake: FakeClarifai) -> None:
    seen: list[str] = []
    set_on_retry_hooks([lambda details: seen.append(details.target)])
    try:
        interceptor = ClarifaiInterceptor(
            CREDS,
            retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, jitter=0),
            target=f"fake-user:{USERINFO_PASSWORD}@{fake.target}",
        )
        fake.script("ListModels", grpc.StatusCode.UNAVAILABLE)
        with grpc.insecure_channel(fake.target) as raw:
            stub = service_pb2_grpc.V2Stub(grpc.intercept_channel(raw, interceptor))
            stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
    finally:
        set_on_retry_hooks(None)
    assert seen == [f"***@{fake.target}"]
    for each in (repr(interceptor), str(interceptor)):
        assert USERINFO_PASSWORD not in each


# -- channel options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "problem"),
    [
        (
            "abc",
            TypeError,
            "sequence of (name, value) pairs, such as [('grpc.enable_retries', 0)], not a str",
        ),
        (b"abc", TypeError, "not a bytes"),
        (3, TypeError, "not a int"),
        (["abc"], ValueError, "options entry 0 is not a (name, value) pair with a str name: 'abc'"),
        ([("grpc.a", 1), ("grpc.b", 2, 3)], ValueError, "options entry 1 is not a (name, value)"),
        ([(1, 2)], ValueError, "options entry 0 is not a (name, value) pair with a str name"),
    ],
)
def test_bad_options_are_refused_naming_the_problem(
    options: Any, error: type[Exception], problem: str
) -> None:
    for build in (
        lambda: channel_options(options),
        lambda: insecure_channel("localhost:1", CREDS, options=options),
        lambda: aio.secure_channel("localhost:1", CREDS, options=options),
    ):
        with pytest.raises(error) as info:
            build()
        assert problem in str(info.value)


def test_options_none_or_a_mapping_mean_what_grpc_means() -> None:
    assert channel_options(None) == channel_options(())  # type: ignore[arg-type]
    merged = dict(channel_options({"grpc.enable_retries": 1}))  # type: ignore[arg-type]
    assert merged["grpc.enable_retries"] == 1
    with insecure_channel("localhost:1", CREDS, options=None) as channel:  # type: ignore[arg-type]
        assert channel is not None


# -- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [[], "CLARIFAI_PAT=x", 3, [("CLARIFAI_PAT", "x")]])
def test_from_env_needs_a_mapping(environ: Any) -> None:
    with pytest.raises(
        TypeError,
        match=f"environ must be a mapping such as os.environ, not {type(environ).__name__}",
    ):
        Credentials.from_env(environ)


def test_a_huge_secret_is_refused_naming_the_bound_never_the_value() -> None:
    huge = "fake-huge-secret-" + "x" * 1_000_000
    for build in (Credentials.from_pat, Credentials.from_api_key, Credentials.from_session_token):
        with pytest.raises(ValueError, match=f"at most {MAX_SECRET_LENGTH} are accepted") as info:
            build(huge)
        assert "fake-huge-secret" not in str(info.value)
        assert f"is {len(huge)} characters long" in str(info.value)
    with pytest.raises(ValueError, match="CLARIFAI_API_KEY"):
        Credentials.from_env({"CLARIFAI_API_KEY": "a" * (MAX_SECRET_LENGTH + 1)})
    longest = "f" * MAX_SECRET_LENGTH
    assert Credentials.from_api_key(longest).metadata == (("authorization", f"Key {longest}"),)


def _two_args(a: int, b: int) -> Credentials:
    return CREDS


async def _async_provider() -> Credentials:
    return CREDS


class _NeedsArgument:
    def __call__(self, tenant: str) -> Credentials:
        return CREDS


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        (_two_args, "_two_args is called with no arguments, but it requires a, b"),
        (lambda user: CREDS, "<lambda> is called with no arguments, but it requires user"),
        (_NeedsArgument(), "_NeedsArgument is called with no arguments, but it requires tenant"),
        (Credentials, "Credentials is called with no arguments, but it requires kind, secret"),
        (_async_provider, "_async_provider is a coroutine function"),
    ],
)
def test_providers_that_cannot_be_called_bare_are_refused_when_built(
    provider: Any, problem: str
) -> None:
    for build in (
        lambda: ClarifaiInterceptor(provider),
        lambda: wrap_channel(grpc.insecure_channel("localhost:1"), provider),
        lambda: aio.interceptors(provider),
        lambda: use_credentials(provider).__enter__(),
    ):
        with pytest.raises(TypeError) as info:
            build()
        assert problem in str(info.value)


def test_a_provider_whose_signature_is_unknown_is_judged_when_called() -> None:
    ClarifaiInterceptor(dict)  # a builtin without a signature: accepted when built


class _AsyncCall:
    async def __call__(self) -> Credentials:
        return CREDS


def test_an_object_with_an_async_call_is_refused() -> None:
    with pytest.raises(TypeError, match="_AsyncCall is a coroutine function"):
        ClarifaiInterceptor(_AsyncCall())


def test_providers_with_defaults_or_varargs_are_accepted(fake: FakeClarifai) -> None:
    def with_default(tenant: str = "t") -> Credentials:
        return CREDS

    def varargs(*args: Any, **kwargs: Any) -> Credentials:
        return CREDS

    for provider in (with_default, varargs, lambda: CREDS):
        with insecure_channel(fake.target, provider) as channel:
            response = service_pb2_grpc.V2Stub(channel).ListModels(
                service_pb2.ListModelsRequest(), timeout=T
            )
        assert response.status.code == status_code_pb2.SUCCESS
    assert [call.header("authorization") for call in fake.calls] == [f"Key {PAT}"] * 3


# -- metadata --------------------------------------------------------------------------------


def _settle(outcome: Any) -> None:
    """A future hands the error on when asked for its result."""
    outcome.result(timeout=T)


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (
            (("x-a", "1"), ("x-b",)),
            "metadata entry 1 is not a (key, value) pair: a tuple of length 1",
        ),
        ((("x-a", "1", "2"),), "metadata entry 0 is not a (key, value) pair: a tuple of length 3"),
        (("x-a",), "metadata entry 0 is not a (key, value) pair: a str of length 3"),
        ((3,), "metadata entry 0 is not a (key, value) pair: a int"),
        (
            [["x-a", "1"], ["x-b"]],
            "metadata entry 1 is not a (key, value) pair: a list of length 1",
        ),
        ("x-a", "metadata must be a sequence of (key, value) pairs, not a str"),
        ({"x-a": "1"}, "metadata must be a sequence of (key, value) pairs, not a dict"),
        (7, "metadata must be a sequence of (key, value) pairs, not a int"),
    ],
)
def test_metadata_that_is_not_pairs_fails_at_once_naming_the_entry(
    fake: FakeClarifai, metadata: Any, problem: str
) -> None:
    raw = grpc.insecure_channel(fake.target)
    channels = [
        wrap_channel(raw, CREDS),
        grpc.intercept_channel(raw, ClarifaiInterceptor(CREDS)),
    ]
    for channel in channels:
        stub = service_pb2_grpc.V2Stub(channel)
        for call in (stub.ListModels, stub.ListModels.with_call, stub.ListModels.future):
            with pytest.raises(ValueError, match="metadata") as info:
                _settle(call(service_pb2.ListModelsRequest(), timeout=T, metadata=metadata))
            assert problem in str(info.value)
    raw.close()
    assert fake.calls == []  # nothing was sent


def test_metadata_pairs_as_lists_are_sent(fake: FakeClarifai) -> None:
    with insecure_channel(fake.target, CREDS) as channel:
        service_pb2_grpc.V2Stub(channel).ListModels(
            service_pb2.ListModelsRequest(), timeout=T, metadata=[["x-a", "1"]]
        )
    (call,) = fake.calls
    assert call.header("x-a") == "1"
    assert call.header("authorization") == f"Key {PAT}"


def test_a_secret_passed_as_a_bad_entry_is_not_echoed(fake: FakeClarifai) -> None:
    with insecure_channel(fake.target, CREDS) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(ValueError, match="metadata entry 0") as info:
            stub.ListModels(
                service_pb2.ListModelsRequest(),
                timeout=T,
                metadata=[("authorization", f"Key {PAT}", "x")],
            )
    assert PAT not in str(info.value)


# -- retry policies --------------------------------------------------------------------------


@pytest.mark.parametrize("unknown", [123456789, -1, 99999])
def test_unknown_clarifai_statuses_are_refused_when_the_policy_is_built(unknown: int) -> None:
    statuses = {status_code_pb2.CONN_THROTTLED, unknown}
    with pytest.raises(
        ValueError,
        match=rf"retryable_statuses holds codes that are not Clarifai statuses: \[{unknown}\]",
    ):
        RetryPolicy(retryable_statuses=frozenset(statuses))
    # Every status clarifai_grpc knows (bar the auth ones and SUCCESS) is accepted.
    assert (
        status_code_pb2.MODEL_LOADING
        in RetryPolicy(
            retryable_statuses=frozenset({status_code_pb2.MODEL_LOADING})
        ).retryable_statuses
    )


# -- a PAT without a user --------------------------------------------------------------------


def test_a_pat_without_user_warns_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading  # noqa: PLC0415

    monkeypatch.setattr(credentials_module, "_no_user_warning", threading.Lock())
    with pytest.warns(NoUserIdWarning, match="user_app_id will not be filled in") as record:
        Credentials.from_pat("fake-pat-without-a-user-1")
    # It points at the line that built them, outside the package (here, or the secrets guard's
    # wrapper of __post_init__, which the suite installs).
    assert not record[0].filename.startswith(str(FsPath(credentials_module.__file__).parent))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second one would raise
        Credentials.from_pat("fake-pat-without-a-user-2")
        Credentials.from_env({"CLARIFAI_PAT": "fake-pat-without-a-user-3"})
    assert "fake-pat-without-a-user" not in str(record[0].message)


def test_no_warning_when_the_user_is_known_or_the_secret_is_no_pat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading  # noqa: PLC0415

    monkeypatch.setattr(credentials_module, "_no_user_warning", threading.Lock())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Credentials.from_pat("fake-pat-with-a-user", user_id="u")
        Credentials.from_api_key("fake-key-without-a-user")
        Credentials.from_session_token("fake-token-without-a-user")
        Credentials.from_env({"CLARIFAI_PAT": "fake-pat-with-a-user", "CLARIFAI_USER_ID": "u"})
    with pytest.warns(NoUserIdWarning):  # still the first: none was given above
        Credentials.from_env({"CLARIFAI_PAT": "fake-pat-from-env-no-user"})


def test_a_pat_without_user_still_works_for_requests_that_set_user_app_id(
    fake: FakeClarifai,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoUserIdWarning)
        creds = Credentials.from_pat(PAT)
    request = service_pb2.ListModelsRequest()
    request.user_app_id.user_id, request.user_app_id.app_id = "clarifai", "main"
    with insecure_channel(fake.target, creds) as channel:
        service_pb2_grpc.V2Stub(channel).ListModels(request, timeout=T)
    (call,) = fake.calls
    assert call.request.user_app_id.user_id == "clarifai"  # type: ignore[attr-defined]
    assert call.header("authorization") == f"Key {PAT}"


def test_bad_arguments_fail_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="credentials must be"):
        aio.interceptors("fake-pat-as-a-string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry must be"):
        aio.UnaryStreamInterceptor(PAT_CREDS, retry="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a target"):
        aio.insecure_channel(None, PAT_CREDS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HOST"):
        aio.insecure_channel("http://localhost:1", PAT_CREDS)
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    created: list[object] = []
    monkeypatch.setattr(grpc.aio, "insecure_channel", lambda *a, **k: created.append(a))
    monkeypatch.setattr(grpc.aio, "secure_channel", lambda *a, **k: created.append(a))
    for build in (
        aio.interceptors,
        aio.UnaryUnaryInterceptor,
        lambda: aio.insecure_channel("localhost:1"),
        aio.secure_channel,
    ):
        with pytest.raises(MissingCredentialsError, match="CLARIFAI_PAT"):
            build()
    assert created == []  # no channel was made, so none is left open
