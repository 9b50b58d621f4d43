"""The real Clarifai SDK (``clarifai``) through `clarifai_interceptor.sdk`, against FakeClarifai.

Each SDK call runs under each scripted fault; the server counts the attempts. Clients reach the
fake with ``base_url="http://127.0.0.1:PORT"``, as the SDK allows.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2 as codes
from conftest import T

import clarifai_interceptor as ci
from clarifai_interceptor import _sdk_credentials, sdk
from clarifai_interceptor.testing import Fail, FakeClarifai, Reply, Status, Stream

pytest.importorskip("clarifai")

from clarifai.client.app import App
from clarifai.client.auth import helper as sdk_helper
from clarifai.client.auth import stub as sdk_stub
from clarifai.client.model import Model
from clarifai.client.user import User
from clarifai.errors import UserError

SDK_PAT = "fake-sdk-pat-for-tests"
OTHER_PAT = "fake-other-pat-for-tests"
SCOPELESS_PAT = "fake-scopeless-pat-for-tests"
SDK_TOKEN = "fake-sdk-session-token"
#: Small waits, so that a persistent failure's five attempts take milliseconds.
QUICK = ci.RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter=0, timeout=T)
MODEL_URL = "https://clarifai.com/fake-user/fake-app/models/fake-model"


@pytest.fixture(autouse=True)
def _sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No Clarifai environment or CLI config leaks in; nothing stays installed after a test."""
    for name in (
        "CLARIFAI_PAT",
        "CLARIFAI_SESSION_TOKEN",
        "CLARIFAI_USER_ID",
        "CLARIFAI_APP_ID",
        "CLARIFAI_API_BASE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    yield
    assert not sdk.installed(), "a test left clarifai_interceptor.sdk installed"


@pytest.fixture
def fake() -> Iterator[FakeClarifai]:
    secrets: dict[str, list[str] | None] = {
        SDK_PAT: None,
        OTHER_PAT: None,
        SDK_TOKEN: None,
        SCOPELESS_PAT: [],
    }
    with FakeClarifai(secrets=secrets) as server:
        yield server


def _inputs() -> list[resources_pb2.Input]:
    return [resources_pb2.Input(data=resources_pb2.Data(text=resources_pb2.Text(raw="hi")))]


def _outputs(code: int = codes.SUCCESS) -> service_pb2.MultiOutputResponse:
    message = service_pb2.MultiOutputResponse()
    message.status.code = code
    return message


@dataclass(frozen=True)
class Call:
    """One SDK call: the server method it reaches, the client it needs, how to make it."""

    method: str
    make: Callable[[str, str], Any]  # (base_url, pat) -> client
    run: Callable[[Any], Any]


def _model(base: str, pat: str) -> Model:
    return Model(url=MODEL_URL, pat=pat, base_url=base)


async def _async_predict(model: Model) -> Any:
    return await model.async_predict(inputs=_inputs())


CALLS = {
    "predict_by_bytes": Call(
        "PostModelOutputs", _model, lambda m: m.predict_by_bytes(b"hi", input_type="text")
    ),
    "list_models": Call(
        "ListModels",
        lambda base, pat: App(user_id="fake-user", app_id="fake-app", pat=pat, base_url=base),
        lambda app: list(app.list_models()),
    ),
    "list_apps": Call(
        "ListApps",
        lambda base, pat: User(user_id="fake-user", pat=pat, base_url=base),
        lambda user: list(user.list_apps()),
    ),
    "generate": Call("GenerateModelOutputs", _model, lambda m: list(m.generate(inputs=_inputs()))),
    "async_predict": Call("PostModelOutputs", _model, lambda m: asyncio.run(_async_predict(m))),
}


def _base(fake: FakeClarifai) -> str:
    return f"http://{fake.target}"


def _timed(call: Call, client: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        return call.run(client), time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 (the test looks at what the SDK raised)
        return exc, time.monotonic() - started


@pytest.mark.parametrize("name", CALLS)
def test_throttled_then_success_is_retried_once_and_fast(name: str, fake: FakeClarifai) -> None:
    call = CALLS[name]
    with sdk.install():  # the default policy: its first wait is what the caller feels
        client = call.make(_base(fake), SDK_PAT)
        fake.script(call.method, codes.CONN_THROTTLED)
        outcome, elapsed = _timed(call, client)
    assert not isinstance(outcome, Exception), outcome
    assert len(fake.calls_to(call.method)) == 2
    assert elapsed < 4.0  # the SDK alone waits 5 s (a busy machine may take a while, not 5 s)


@pytest.mark.parametrize("name", CALLS)
def test_model_loading_then_success(name: str, fake: FakeClarifai) -> None:
    call = CALLS[name]
    with sdk.install(retry=QUICK):
        client = call.make(_base(fake), SDK_PAT)
        fake.script(call.method, codes.MODEL_LOADING)
        outcome, _ = _timed(call, client)
    assert not isinstance(outcome, Exception), outcome
    assert len(fake.calls_to(call.method)) == 2  # ours only: the SDK's loop did not add a round


@pytest.mark.parametrize("name", CALLS)
def test_persistent_unavailable_costs_the_policys_attempts(name: str, fake: FakeClarifai) -> None:
    call = CALLS[name]
    with sdk.install(retry=QUICK):
        client = call.make(_base(fake), SDK_PAT)
        fake.set_default(call.method, grpc.StatusCode.UNAVAILABLE)
        outcome, elapsed = _timed(call, client)
    assert isinstance(outcome, grpc.RpcError)
    assert outcome.code() == grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls_to(call.method)) == QUICK.max_attempts
    assert elapsed < T


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize(
    "status",
    [
        Status(codes.CONN_INSUFFICIENT_SCOPES, "Missing scopes: Predict"),
        Status(codes.CONN_KEY_INVALID, "API key not found"),
    ],
    ids=["CONN_INSUFFICIENT_SCOPES", "CONN_KEY_INVALID"],
)
def test_scope_and_key_errors_reach_the_caller_at_once(
    name: str, status: Status, fake: FakeClarifai
) -> None:
    call = CALLS[name]
    with sdk.install(retry=QUICK):
        client = call.make(_base(fake), SDK_PAT)
        fake.script(call.method, status)
        outcome, _ = _timed(call, client)
    assert isinstance(outcome, Exception)
    assert not isinstance(outcome, grpc.RpcError)  # the SDK's own error, from the body status
    assert (
        status.description in str(outcome)
        or str(status.code) in str(outcome)
        or (codes.StatusCode.Name(status.code) in str(outcome))
    )
    assert len(fake.calls_to(call.method)) == 1


def test_a_secret_without_the_scopes_is_told_so_after_one_attempt(fake: FakeClarifai) -> None:
    with sdk.install(retry=QUICK):
        user = User(user_id="fake-user", pat=SCOPELESS_PAT, base_url=_base(fake))
        with pytest.raises(Exception, match="Missing scopes") as raised:
            list(user.list_apps())
    assert not isinstance(raised.value, grpc.RpcError)
    assert len(fake.calls_to("ListApps")) == 1


def test_list_models_pages_through_retries_without_repeating_a_page(fake: FakeClarifai) -> None:
    model = resources_pb2.Model(id="m1", app_id="fake-app", user_id="fake-user")
    model.model_version.id = "v1"
    page = service_pb2.MultiModelResponse(models=[model])
    page.status.code = codes.SUCCESS
    fake.script("ListModels", Reply(page), codes.CONN_THROTTLED)  # page 2 throttled, then empty
    with sdk.install(retry=QUICK):
        app = App(user_id="fake-user", app_id="fake-app", pat=SDK_PAT, base_url=_base(fake))
        models = list(app.list_models())
    assert [model.id for model in models] == ["m1"]
    pages = [call.request.page for call in fake.calls_to("ListModels")]
    assert pages == [1, 2, 2]


def test_generate_delivers_each_message_once(fake: FakeClarifai) -> None:
    messages = [_outputs(), _outputs(), _outputs()]
    for index, message in enumerate(messages):
        message.outputs.add().id = f"out-{index}"
    broken = Stream(messages[:1], error=Fail(grpc.StatusCode.UNAVAILABLE))
    fake.script("GenerateModelOutputs", codes.CONN_THROTTLED, Stream(messages), broken)
    with sdk.install(retry=QUICK):
        model = _model(_base(fake), SDK_PAT)
        got = list(model.generate(inputs=_inputs()))
        assert [response.outputs[0].id for response in got] == ["out-0", "out-1", "out-2"]
        assert len(fake.calls_to("GenerateModelOutputs")) == 2
        # An error after a message was delivered is not retried: nothing is sent twice.
        with pytest.raises(grpc.RpcError):
            list(model.generate(inputs=_inputs()))
    assert len(fake.calls_to("GenerateModelOutputs")) == 3


def test_async_generate_and_stream_shape(fake: FakeClarifai) -> None:
    fake.script("GenerateModelOutputs", codes.MODEL_LOADING, Stream([_outputs(), _outputs()]))

    async def scenario(model: Model) -> int:
        return len([item async for item in await model.async_generate(inputs=_inputs())])

    with sdk.install(retry=QUICK):
        model = _model(_base(fake), SDK_PAT)
        assert asyncio.run(scenario(model)) == 2
    assert len(fake.calls_to("GenerateModelOutputs")) == 2


# -- credentials --------------------------------------------------------------------------------


def _auth(fake: FakeClarifai, method: str) -> list[list[str]]:
    return [call.headers("authorization") for call in fake.calls_to(method)]


def test_the_clients_own_secret_and_request_id_prefix_are_sent(fake: FakeClarifai) -> None:
    with sdk.install(retry=QUICK):
        list(User(user_id="fake-user", pat=SDK_PAT, base_url=_base(fake)).list_apps())
    (call,) = fake.calls_to("ListApps")
    assert call.headers("authorization") == [f"Key {SDK_PAT}"]
    assert call.header("x-clarifai-request-id-prefix") == sdk_helper.REQUEST_ID_PREFIX


def test_use_credentials_overrides_the_client_and_a_call_header_wins(fake: FakeClarifai) -> None:
    other = ci.Credentials.from_pat(OTHER_PAT, user_id="fake-user")
    with sdk.install(retry=QUICK):
        user = User(user_id="fake-user", pat=SDK_PAT, base_url=_base(fake))
        with ci.use_credentials(other):
            list(user.list_apps())
            request = service_pb2.ListAppsRequest(user_app_id=user.user_app_id)
            user.STUB.ListApps(request, metadata=(("authorization", f"Key {SDK_TOKEN}"),))
        list(user.list_apps())
    assert _auth(fake, "ListApps") == [
        [f"Key {OTHER_PAT}"],
        [f"Key {SDK_TOKEN}"],
        [f"Key {SDK_PAT}"],
    ]


def test_a_session_token_client_sends_its_token(fake: FakeClarifai) -> None:
    with sdk.install(retry=QUICK):
        list(User(user_id="fake-user", token=SDK_TOKEN, base_url=_base(fake)).list_apps())
    (call,) = fake.calls_to("ListApps")
    assert call.headers("x-clarifai-session-token") == [SDK_TOKEN]
    assert call.headers("authorization") == []


def test_a_client_without_a_secret_gets_the_sdks_own_error(fake: FakeClarifai) -> None:
    with pytest.raises(UserError) as alone:
        User(user_id="fake-user", base_url=_base(fake))
    with sdk.install(), pytest.raises(UserError) as installed:
        User(user_id="fake-user", base_url=_base(fake))
    assert str(installed.value) == str(alone.value)
    helper = sdk_helper.ClarifaiAuthHelper(user_id="fake-user", base=_base(fake), validate=False)
    with pytest.raises(Exception, match="'token' or 'pat' needed") as alone_helper:
        sdk_stub.create_stub(helper)
    with sdk.install(), pytest.raises(Exception, match="'token' or 'pat' needed") as ours:
        sdk_stub.create_stub(helper)
    assert type(ours.value) is type(alone_helper.value)
    assert fake.calls == []


def test_a_changed_pat_on_the_helper_is_followed(fake: FakeClarifai) -> None:
    if getattr(getattr(sdk_helper.ClarifaiAuthHelper, "pat", None), "fset", None) is None:
        pytest.skip("this clarifai's helper has no pat setter (older releases)")
    with sdk.install(retry=QUICK):
        user = User(user_id="fake-user", pat=SDK_PAT, base_url=_base(fake))
        user.auth_helper.pat = OTHER_PAT
        list(user.list_apps())
    assert _auth(fake, "ListApps") == [[f"Key {OTHER_PAT}"]]


# -- clients made before install() ----------------------------------------------------------------


def test_a_client_made_before_install_keeps_the_sdks_channel_without_a_warning(
    fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch
) -> None:
    # install() chases nothing made earlier (as OpenTelemetry's gRPC instrumentation): such a
    # client was given user_id, and is not told "a PAT without user_id".
    monkeypatch.setattr(ci._credentials, "_no_user_warning", threading.Lock())
    user = User(user_id="fake-user", pat=SDK_PAT, base_url=_base(fake))
    with warnings.catch_warnings(record=True) as seen, sdk.install(retry=QUICK):
        warnings.simplefilter("always")
        assert isinstance(user.STUB, sdk_stub.RetryStub)  # the SDK's, as it was made
        list(user.list_apps())
    assert [str(w.message) for w in seen if issubclass(w.category, ci.NoUserIdWarning)] == []
    (call,) = fake.calls_to("ListApps")
    assert call.headers("authorization") == [f"Key {SDK_PAT}"]


def test_from_local_grpc_bypasses_install(fake: FakeClarifai) -> None:
    from clarifai.client.model_client import ModelClient  # noqa: PLC0415

    if not hasattr(ModelClient, "from_local_grpc"):
        pytest.skip("this clarifai has no ModelClient.from_local_grpc")
    with sdk.install():
        client = ModelClient.from_local_grpc(port=int(fake.target.rsplit(":", 1)[1]))
        assert type(client.STUB).__module__ == "clarifai.client.model_client"  # its own stub


# -- install, uninstall ---------------------------------------------------------------------------


def _patched_now() -> dict[str, Any]:
    import clarifai.client  # noqa: PLC0415
    import clarifai.client.base  # noqa: PLC0415
    import clarifai.client.model_client  # noqa: PLC0415
    import clarifai.client.workflow  # noqa: PLC0415
    import clarifai.utils.misc  # noqa: PLC0415

    helper = sdk_helper.ClarifaiAuthHelper
    return {
        "get_stub_and_channel": vars(helper)["get_stub_and_channel"],
        "get_async_stub": vars(helper)["get_async_stub"],
        "stub.create_stub": sdk_stub.create_stub,
        "client.create_stub": clarifai.client.create_stub,
        "base.create_stub": clarifai.client.base.create_stub,
        "auth.create_stub": importlib_module("clarifai.client.auth").create_stub,
        "misc.status_is_retryable": clarifai.utils.misc.status_is_retryable,
        "model_client.status_is_retryable": clarifai.client.model_client.status_is_retryable,
        "workflow.status_is_retryable": clarifai.client.workflow.status_is_retryable,
        "_async_predict_by_proto": vars(clarifai.client.model_client.ModelClient)[
            "_async_predict_by_proto"
        ],
    }


def importlib_module(name: str) -> Any:
    import importlib  # noqa: PLC0415

    return importlib.import_module(name)


def test_install_patches_every_alias_and_uninstall_restores_exactly() -> None:
    before = _patched_now()
    first = sdk.install(retry=QUICK)
    during = _patched_now()
    assert all(during[name] is not before[name] for name in before), [
        name for name in before if during[name] is before[name]
    ]
    sdk.install()  # twice: harmless, nothing patched over our own patches
    assert _patched_now() == during
    assert sdk.installed()
    sdk.uninstall()
    assert _patched_now() == before
    assert not sdk.installed()
    sdk.uninstall()  # harmless too
    with first:
        pass  # an Installation used late only uninstalls (nothing is installed)
    assert _patched_now() == before


def test_a_module_imported_while_installed_gets_the_sdks_function_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys  # noqa: PLC0415
    import types  # noqa: PLC0415

    original = sdk_stub.create_stub
    with sdk.install():
        late = types.ModuleType("clarifai.fake_late_module")
        late.create_stub = importlib_module("clarifai.client").create_stub  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "clarifai.fake_late_module", late)
        assert late.create_stub is not original  # type: ignore[attr-defined]
    assert late.create_stub is original  # type: ignore[attr-defined]


def test_install_is_atomic(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module holding create_stub by name that refuses the new value: a step fails midway.
    class Frozen(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            raise AttributeError(f"{name} is read-only")

    before = _patched_now()
    frozen = Frozen("clarifai.fake_frozen_module")
    vars(frozen)["create_stub"] = sdk_stub.create_stub
    monkeypatch.setitem(sys.modules, "clarifai.fake_frozen_module", frozen)
    with pytest.raises(AttributeError, match="read-only"):
        sdk.install()
    assert not sdk.installed()
    assert _patched_now() == before  # nothing is left half-installed


def test_the_installed_sdk_passes_the_check() -> None:
    import clarifai  # noqa: PLC0415

    assert sdk._moved() == []  # every target of PATCHED where install expects it
    assert sdk.check_version() == importlib_module("importlib.metadata").version("clarifai")
    assert clarifai.__version__ == sdk.check_version()


@pytest.mark.parametrize(
    ("target", "replace"),
    [
        ("clarifai.client.auth.stub:create_stub", lambda auth_helper, retries=3: None),
        ("clarifai.utils.misc:status_is_retryable", None),
        ("clarifai.client.model_client:ModelClient._async_predict_by_proto", None),
        ("clarifai.client.auth.stub:AuthorizedStub.__init__", lambda self, helper: None),
        ("clarifai.client.model_client:MAX_MODEL_PREDICT_INPUTS", None),
    ],
    ids=["create_stub-signature", "gone", "method-gone", "used-signature", "used-gone"],
)
def test_moved_internals_are_refused_before_patching(
    target: str, replace: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _patched_now()
    module, _, path = target.partition(":")
    *owners, name = path.split(".")
    owner: Any = importlib_module(module)
    for part in owners:
        owner = getattr(owner, part)
    if replace is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replace)
    with pytest.raises(sdk.UnsupportedSDKError, match=re.escape(target)):
        sdk.install()
    assert not sdk.installed()
    monkeypatch.undo()
    assert _patched_now() == before


@pytest.mark.parametrize("version", ["12.5.9", "12.4.1", "11.12.2", "11.8.4"])
def test_a_tested_version_passes_silently(
    version: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sdk._metadata, "version", lambda name: version)
    assert sdk.check_version() == version
    assert caplog.records == []


def test_the_sdk_extra_names_the_oldest_tested_sdk() -> None:
    setup_cfg = (Path(__file__).parents[1] / "setup.cfg").read_text(encoding="utf-8")
    assert f"\n    clarifai>={sdk.OLDEST_TESTED}\n" in setup_cfg  # .ci/run tests that one


def test_a_newer_sdk_that_passes_the_check_is_installed_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sdk, "_warned_newer", False)
    monkeypatch.setattr(sdk._metadata, "version", lambda name: "13.0.0")
    with sdk.install():
        sdk.install()
    with sdk.install():
        pass
    warned = [r.getMessage() for r in caplog.records if "newer than" in r.getMessage()]
    assert len(warned) == 1
    assert "clarifai 13.0.0" in warned[0]
    assert sdk.NEWEST_TESTED in warned[0]


def test_a_missing_sdk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib_module("importlib.metadata").PackageNotFoundError(name)

    monkeypatch.setattr(sdk._metadata, "version", missing)
    with pytest.raises(sdk.UnsupportedSDKError, match="not installed"):
        sdk.install()


def test_install_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="retry must be"):
        sdk.install(retry=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rate_limit must be"):
        sdk.install(rate_limit="fast")  # type: ignore[arg-type]


def test_a_second_install_applies_to_channels_built_after_it(fake: FakeClarifai) -> None:
    with sdk.install(retry=QUICK):
        sdk.install(retry=None)
        user = User(user_id="fake-user", pat=SDK_PAT, base_url=_base(fake))
        fake.script("ListApps", codes.CONN_THROTTLED)
        with pytest.raises(Exception, match="Listing failed"):
            list(user.list_apps())
    assert len(fake.calls_to("ListApps")) == 1  # one attempt, and no SDK retry under it


# -- base_url -------------------------------------------------------------------------------------


def test_https_base_with_root_certificates(tmp_path: Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(authority.cert_pem.bytes())
    with FakeClarifai(tls=(cert.private_key_pem.bytes(), chain)) as tls_fake:
        port = tls_fake.target.rsplit(":", 1)[1]
        with sdk.install(retry=QUICK):
            user = User(
                user_id="fake-user",
                pat=SDK_PAT,
                base_url=f"https://localhost:{port}",
                root_certificates_path=str(roots),
            )
            tls_fake.script("ListApps", codes.CONN_THROTTLED)
            list(user.list_apps())
        assert len(tls_fake.calls_to("ListApps")) == 2


def test_where_follows_the_sdks_base_rules() -> None:
    assert sdk._where("127.0.0.1:8080", False, None) == sdk._Where(
        target="127.0.0.1:8080", tls=False, root_certificates=None
    )
    assert sdk._where("localhost", False, None).target == "localhost:80"
    assert sdk._where("api.clarifai.com", True, None).tls


def test_stream_sends_a_request_stream_once(fake: FakeClarifai) -> None:
    fake.script("StreamModelOutputs", Stream([_outputs(), _outputs()]), codes.CONN_THROTTLED)
    with sdk.install(retry=QUICK):
        model = _model(_base(fake), SDK_PAT)
        assert len(list(model.stream(inputs=iter([_inputs()])))) == 2
        # A request iterator cannot be replayed: a throttled stream comes back, as the SDK says.
        with pytest.raises(Exception, match="Model Predict failed"):
            list(model.stream(inputs=iter([_inputs()])))
    first, second = fake.calls_to("StreamModelOutputs")
    assert len(first.requests) == len(second.requests) == 1
    assert first.headers("authorization") == [f"Key {SDK_PAT}"]


def test_credentials_from_a_helper_follow_the_sdks_fields() -> None:
    pat = _sdk_credentials._credentials(SDK_PAT, "", "fake-user", "fake-app")
    assert (pat.kind, pat.user_id, pat.app_id) == ("pat", "fake-user", "fake-app")
    assert _sdk_credentials._credentials(SDK_PAT, "", "", "fake-app").app_id is None  # no user
    token = _sdk_credentials._credentials("", SDK_TOKEN, "fake-user", "")
    assert (token.kind, token.app_id) == ("session_token", None)
    with pytest.raises(Exception, match="'token' or 'pat' needed"):
        _sdk_credentials._credentials("", "", "fake-user", "")


def test_strip_drops_only_the_clients_own_header() -> None:
    own = ("authorization", f"Key {SDK_PAT}")
    prefix = ("x-clarifai-request-id-prefix", "sdk-python-12.5.0")
    mine = ("authorization", f"Key {SDK_PAT}")
    theirs = ("authorization", f"Key {OTHER_PAT}")
    assert _sdk_credentials._strip((mine, prefix), own) == (prefix,)
    assert _sdk_credentials._strip((theirs, prefix), own) == (theirs, prefix)
    assert _sdk_credentials._strip((mine,), own) is None
    assert _sdk_credentials._strip(None, own) is None
    assert _sdk_credentials._strip((mine,), None) == (mine,)


def test_a_helpers_own_stub_and_channel_for_hand_made_calls(fake: FakeClarifai) -> None:
    helper = sdk_helper.ClarifaiAuthHelper(user_id="fake-user", pat=SDK_PAT, base=_base(fake))
    with sdk.install(retry=QUICK):
        stub, channel = helper.get_stub_and_channel()
    request = service_pb2.ListAppsRequest(user_app_id=helper.get_user_app_id_proto())
    fake.script("ListApps", codes.CONN_THROTTLED, codes.CONN_THROTTLED)
    response, call = stub.ListApps.with_call(request, metadata=helper.metadata, timeout=T)
    assert response.status.code == codes.SUCCESS
    assert call.code() == grpc.StatusCode.OK
    assert stub.ListApps.future(request, metadata=helper.metadata).result(
        timeout=T
    ).status.code == (codes.SUCCESS)
    seen: list[object] = []
    threads_before = set(threading.enumerate())
    channel.subscribe(seen.append)
    channel.unsubscribe(seen.append)
    # gRPC's connectivity poller raises in its thread if the channel closes while it runs
    # (grpc/grpc#18995); it stops within 0.2 s of the last unsubscribe.
    deadline = time.monotonic() + T
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    with channel:
        pass
    assert len(fake.calls_to("ListApps")) == 4
    assert {call.header("authorization") for call in fake.calls} == {f"Key {SDK_PAT}"}


def test_async_predict_builds_the_sdks_request(fake: FakeClarifai) -> None:
    async def scenario(model: Model) -> None:
        await model.async_client._async_predict_by_proto(
            _inputs(),
            method_name="predict",
            inference_params={"temperature": 0.5},
            output_config={"max_concepts": 3},
        )
        with pytest.raises(UserError, match="Invalid inputs"):
            await model.async_client._async_predict_by_proto("not a list")  # type: ignore[arg-type]
        with pytest.raises(UserError, match="Too many inputs"):
            await model.async_client._async_predict_by_proto(_inputs() * 1000)

    with sdk.install(retry=QUICK):
        model = _model(_base(fake), SDK_PAT)
        asyncio.run(scenario(model))
    (call,) = fake.calls_to("PostModelOutputs")
    request = call.request
    assert request.inputs[0].data.metadata["_method_name"] == "predict"
    assert request.model.model_version.output_info.params["temperature"] == 0.5
    assert request.model.model_version.output_info.output_config.max_concepts == 3
    assert request.model_id == "fake-model"


def test_an_async_client_over_https(tmp_path: Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(authority.cert_pem.bytes())
    with FakeClarifai(tls=(cert.private_key_pem.bytes(), chain)) as tls_fake:
        base = "https://localhost:" + tls_fake.target.rsplit(":", 1)[1]

        async def scenario() -> int:
            model = Model(url=MODEL_URL, pat=SDK_PAT, base_url=base, root_certificates_path=roots)
            response = await model.async_predict(inputs=_inputs())
            return int(response.status.code)

        with sdk.install(retry=QUICK):
            tls_fake.script("PostModelOutputs", codes.CONN_THROTTLED)
            assert asyncio.run(scenario()) == codes.SUCCESS
        assert len(tls_fake.calls_to("PostModelOutputs")) == 2


def test_sync_and_async_clients_share_one_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's sync and async channels to its default base name it as `ci.secure_channel()`
    does (``api.clarifai.com:443``): one rate limit per PAT for both kinds of client, not one
    each (the async one named it without the port). Nothing is dialled: gRPC connects lazily."""
    helper = types.SimpleNamespace(_base="api.clarifai.com", _root_certificates_path=None)
    cache = {"api.clarifai.com": True}
    aio_targets: list[str] = []
    interceptors = sdk._aio.interceptors

    def recorded(*args: Any, **kwargs: Any) -> Any:
        aio_targets.append(kwargs["target"])
        return interceptors(*args, **kwargs)

    monkeypatch.setattr(sdk._aio, "interceptors", recorded)
    channel = sdk._sync_channel(helper, cache)
    try:
        sync_target = channel._core.target
    finally:
        channel.close()

    async def aio_channel() -> None:
        await sdk._aio_channel(helper, cache).close()

    asyncio.run(aio_channel())
    with ci.secure_channel(credentials=ci.Credentials.from_pat(SDK_PAT)) as ours:
        assert sync_target == aio_targets[0] == ours._core.target == "api.clarifai.com:443"
