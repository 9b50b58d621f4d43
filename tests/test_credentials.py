"""Unit tests of Credentials: construction, validation, environment, secrecy."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from conftest import API_KEY, FAST, KEY_CREDS, PAT, PAT_CREDS, SESSION_CREDS, SESSION_TOKEN
from hypothesis import given
from hypothesis import strategies as st

from clarifai_interceptor import (
    ClarifaiInterceptor,
    Credentials,
    MissingCredentialsError,
    aio,
    insecure_channel,
    wrap_channel,
)
from clarifai_interceptor._credentials import user_app_id_field
from clarifai_interceptor.testing import FakeClarifai

SECRET = "fake-secret-for-unit-tests"


def test_pat_sends_key_header_and_knows_its_app() -> None:
    creds = Credentials.from_pat(SECRET, user_id="u1", app_id="a1")
    assert creds.metadata == (("authorization", f"Key {SECRET}"),)
    assert creds.user_app_id == resources_pb2.UserAppIDSet(user_id="u1", app_id="a1")


def test_user_app_id_is_a_fresh_message_each_time() -> None:
    creds = Credentials.from_pat(SECRET, user_id="u1", app_id="a1")
    first = creds.user_app_id
    assert first is not None
    first.user_id = "changed"
    assert creds.user_app_id == resources_pb2.UserAppIDSet(user_id="u1", app_id="a1")


@pytest.mark.filterwarnings("ignore::clarifai_interceptor.NoUserIdWarning")
def test_pat_with_user_only_and_without_user() -> None:
    assert Credentials.from_pat(SECRET, user_id="u1").user_app_id == resources_pb2.UserAppIDSet(
        user_id="u1"
    )
    assert Credentials.from_pat(SECRET).user_app_id is None


def test_app_without_user_is_refused() -> None:
    with pytest.raises(ValueError, match="app_id needs a user_id"):
        Credentials.from_pat(SECRET, app_id="a1")


def test_api_key_never_has_user_app_id() -> None:
    creds = Credentials.from_api_key(SECRET)
    assert creds.metadata == (("authorization", f"Key {SECRET}"),)
    assert creds.user_app_id is None
    with pytest.raises(ValueError, match="API key implies its app"):
        Credentials(kind="api_key", secret=SECRET, user_id="u1")


def test_session_token_uses_its_own_header() -> None:
    creds = Credentials.from_session_token(SECRET, user_id="u1", app_id="a1")
    assert creds.metadata == (("x-clarifai-session-token", SECRET),)
    assert creds.user_app_id == resources_pb2.UserAppIDSet(user_id="u1", app_id="a1")


@pytest.mark.parametrize("bad", ["", "Key abc", "a b", "abc\n", "tab\there", "caf\u00e9", "\x00x"])
def test_malformed_secret_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError, match="PAT") as info:
        Credentials.from_pat(bad, user_id="u1")
    if bad:
        assert bad not in str(info.value)


def test_key_prefix_gets_a_hint() -> None:
    with pytest.raises(ValueError, match="without 'Key '"):
        Credentials.from_api_key("Key fake")


@pytest.mark.parametrize("field", ["user_id", "app_id"])
@pytest.mark.parametrize("bad", ["", "with space", 3])
def test_malformed_ids_are_refused(field: str, bad: object) -> None:
    kwargs: dict[str, object] = {"user_id": "u1", field: bad}
    with pytest.raises(ValueError, match=field):
        Credentials(kind="pat", secret=SECRET, **kwargs)  # type: ignore[arg-type]


def test_unknown_kind_and_non_string_secret() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        Credentials(kind="password", secret=SECRET)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        Credentials.from_pat(b"bytes")  # type: ignore[arg-type]


_BREAKING = st.characters(blacklist_categories=(), whitelist_categories=None).filter(
    lambda c: c.isspace() or not c.isascii() or not c.isprintable()
)


@given(st.text(max_size=8), _BREAKING, st.text(max_size=8))
def test_every_header_breaking_secret_is_refused(head: str, bad: str, tail: str) -> None:
    secret = f"fakesecret{head}{bad}{tail}"
    for build in (Credentials.from_pat, Credentials.from_api_key, Credentials.from_session_token):
        with pytest.raises(ValueError, match="visible ASCII") as info:
            build(secret)
        assert "fakesecret" not in str(info.value)


@given(st.from_regex(r"[!-~]{1,64}", fullmatch=True))
def test_every_visible_ascii_secret_is_accepted_and_sent_as_is(secret: str) -> None:
    assert Credentials.from_api_key(secret).metadata == (("authorization", f"Key {secret}"),)


def test_secret_never_in_repr_str_or_frozen_error() -> None:
    creds = Credentials.from_pat(SECRET, user_id="u1", app_id="a1")
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert "u1" in repr(creds)
    with pytest.raises(dataclasses.FrozenInstanceError) as info:
        creds.secret = "other"  # type: ignore[misc]
    assert SECRET not in str(info.value)


def test_equal_and_hashable_and_never_pickled() -> None:
    a = Credentials.from_pat(SECRET, user_id="u1")
    assert a == Credentials.from_pat(SECRET, user_id="u1")
    assert a != Credentials.from_pat(SECRET, user_id="u2")
    assert a != Credentials.from_pat(SECRET + "-other", user_id="u1")
    assert len({a, Credentials.from_pat(SECRET, user_id="u1")}) == 1
    with pytest.raises(TypeError, match="cannot be pickled") as info:
        pickle.dumps(a)
    assert SECRET not in str(info.value)


def test_from_env_pat_with_ids() -> None:
    env = {"CLARIFAI_PAT": SECRET, "CLARIFAI_USER_ID": "u1", "CLARIFAI_APP_ID": "a1"}
    assert Credentials.from_env(env) == Credentials.from_pat(SECRET, user_id="u1", app_id="a1")


def test_from_env_api_key_and_session_token() -> None:
    key_env = {"CLARIFAI_API_KEY": SECRET, "CLARIFAI_USER_ID": "u1"}
    assert Credentials.from_env(key_env) == Credentials.from_api_key(SECRET)
    token = Credentials.from_env({"CLARIFAI_SESSION_TOKEN": SECRET, "CLARIFAI_USER_ID": "u1"})
    assert token == Credentials.from_session_token(SECRET, user_id="u1")


@pytest.mark.filterwarnings("ignore::clarifai_interceptor.NoUserIdWarning")
def test_from_env_empty_strings_count_as_unset() -> None:
    env = {"CLARIFAI_PAT": "", "CLARIFAI_API_KEY": SECRET, "CLARIFAI_USER_ID": ""}
    assert Credentials.from_env(env) == Credentials.from_api_key(SECRET)
    pat = Credentials.from_env(
        {"CLARIFAI_PAT": SECRET, "CLARIFAI_USER_ID": "", "CLARIFAI_APP_ID": ""}
    )
    assert pat.user_app_id is None


def test_from_env_nothing_set_names_the_variables() -> None:
    with pytest.raises(MissingCredentialsError) as info:
        Credentials.from_env({"CLARIFAI_PAT": ""})
    assert isinstance(info.value, ValueError)
    for var in ("CLARIFAI_PAT", "CLARIFAI_API_KEY", "CLARIFAI_SESSION_TOKEN"):
        assert var in str(info.value)


def test_from_env_too_much_names_variables_not_values() -> None:
    env = {"CLARIFAI_PAT": SECRET, "CLARIFAI_API_KEY": "fake-other-secret"}
    with pytest.raises(ValueError, match="CLARIFAI_PAT, CLARIFAI_API_KEY") as info:
        Credentials.from_env(env)
    assert SECRET not in str(info.value)
    assert "fake-other-secret" not in str(info.value)


def test_from_env_app_without_user_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CLARIFAI_PAT") as info:
        Credentials.from_env({"CLARIFAI_PAT": SECRET, "CLARIFAI_APP_ID": "a1"})
    assert SECRET not in str(info.value)


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLARIFAI_PAT", "CLARIFAI_API_KEY", "CLARIFAI_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLARIFAI_API_KEY", SECRET)
    assert Credentials.from_env() == Credentials.from_api_key(SECRET)


@pytest.mark.parametrize(
    "message",
    [
        service_pb2.PostModelOutputsRequest(model_id="m1", version_id="v1"),  # field 1
        service_pb2.ListScopesRequest(),  # field 2
        service_pb2.ListLogEntriesRequest(page=3),  # field 4
    ],
    ids=lambda r: type(r).__name__,
)
def test_appended_field_equals_setting_it(message: Any) -> None:
    creds = Credentials.from_pat(SECRET, user_id="u1", app_id="a1")
    number = type(message).DESCRIPTOR.fields_by_name["user_app_id"].number
    wire = message.SerializeToString() + user_app_id_field(creds, number)
    expected = type(message)()
    expected.CopyFrom(message)
    expected.user_app_id.CopyFrom(creds.user_app_id)
    assert type(message).FromString(wire) == expected


# -- no secret in the reprs of interceptors and channels -------------------------------------


def test_no_secret_in_reprs(fake: FakeClarifai) -> None:
    interceptor = ClarifaiInterceptor(PAT_CREDS, retry=FAST)
    with (
        grpc.insecure_channel(fake.target) as raw,
        insecure_channel(fake.target, SESSION_CREDS) as own,
    ):
        wrapped = wrap_channel(raw, KEY_CREDS)
        texts = [repr(interceptor), str(interceptor), repr(wrapped), repr(own), str(own)]
        texts += [repr(PAT_CREDS), repr(KEY_CREDS), repr(SESSION_CREDS), str(PAT_CREDS)]
    for text in texts:
        for secret in (PAT, API_KEY, SESSION_TOKEN):
            assert secret not in text


def test_no_secret_in_reprs_on_aio() -> None:
    texts = [repr(i) for i in aio.interceptors(PAT_CREDS)]
    texts += [
        repr(aio.UnaryUnaryInterceptor(KEY_CREDS)),
        str(aio.StreamUnaryInterceptor(SESSION_CREDS)),
    ]
    assert "UnaryUnaryInterceptor(retry=RetryPolicy(" in texts[0]
    for text in texts:
        for secret in (PAT, API_KEY, SESSION_TOKEN):
            assert secret not in text
