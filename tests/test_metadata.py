"""Unit tests of metadata merging and validation, and of user_app_id filling."""

from __future__ import annotations

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from hypothesis import given
from hypothesis import strategies as st

from clarifai_interceptor import Credentials
from clarifai_interceptor._metadata import for_attempt, merge, validate
from clarifai_interceptor._request import byte_stream, fill_copy, request_stream, to_bytes

PAT = Credentials.from_pat("fake-pat-metadata", user_id="u1", app_id="a1")
API_KEY = Credentials.from_api_key("fake-key-metadata")
TOKEN = Credentials.from_session_token("fake-token-metadata", user_id="u1")
KEYS = st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,12}", fullmatch=True).filter(
    lambda k: not k.startswith("grpc-") and not k.endswith("-bin")
)
VALUES = st.from_regex(r"[ -~]{0,16}", fullmatch=True)
CALLER = st.lists(st.tuples(KEYS, VALUES), max_size=6)
CREDENTIAL_KEYS = ("authorization", "x-clarifai-session-token")


def credential_headers(pairs: tuple[tuple[str, object], ...]) -> list[str]:
    return [k for k, _ in pairs if k in CREDENTIAL_KEYS]


@given(CALLER, st.sampled_from([PAT, TOKEN]))
def test_merge_sends_exactly_one_credential_header_and_keeps_the_rest(
    caller: list[tuple[str, str]], creds: Credentials
) -> None:
    caller = [(k, v) for k, v in caller if k not in CREDENTIAL_KEYS]
    pairs, added = merge(caller, creds)
    assert pairs is not None
    assert added
    assert len(credential_headers(pairs)) == 1
    assert list(pairs[: len(caller)]) == caller
    assert pairs[len(caller) :] == creds.metadata


@given(CALLER, st.sampled_from(CREDENTIAL_KEYS), st.sampled_from([PAT, TOKEN]))
def test_a_credential_header_on_the_call_wins(
    caller: list[tuple[str, str]], key: str, creds: Credentials
) -> None:
    caller = [(k, v) for k, v in caller if k not in CREDENTIAL_KEYS]
    mine = [*caller, (key, "Key fake-callers-own")]
    pairs, added = merge(mine, creds)
    assert not added
    assert pairs == tuple(mine)
    assert credential_headers(pairs) == [key]


def test_merge_without_caller_metadata_uses_the_credentials_tuple() -> None:
    assert merge(None, PAT) == (PAT.metadata, True)
    assert merge(grpc.aio.Metadata(("x-a", "1")), PAT) == ((("x-a", "1"), *PAT.metadata), True)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("Authorization", "Key x", "'Authorization'"),
        ("x y", "1", "'x y'"),
        ("grpc-timeout", "1", "'grpc-timeout'"),
        ("x-ok", "line\nbreak", "'x-ok'"),
        ("x-ok", b"bytes", "'x-ok'"),
        ("x-ok-bin", 3, "'x-ok-bin'"),
    ],
)
def test_invalid_entries_are_refused_naming_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        merge([(key, value)], PAT)  # type: ignore[list-item]
    if isinstance(value, str) and len(value) > 3:
        assert value not in str(info.value)


def test_binary_values_pass_with_a_bin_key() -> None:
    validate("trace-bin", b"\x00\x01")
    validate("x-ok", "printable ascii ~")


@given(st.text(min_size=1).filter(lambda v: any(not (" " <= c <= "~") for c in v)))
def test_no_malformed_value_is_ever_sent(value: str) -> None:
    with pytest.raises(ValueError, match="x-custom"):
        merge([("x-custom", value)], PAT)


def test_attempt_header_only_on_retries() -> None:
    assert for_attempt(PAT.metadata, 1) is PAT.metadata
    assert for_attempt(PAT.metadata, 3) == (*PAT.metadata, ("x-retry-attempt", "2"))
    callers = (("x-retry-attempt", "7"), *PAT.metadata)
    assert for_attempt(callers, 1) is callers
    assert for_attempt(callers, 2) == (*PAT.metadata, ("x-retry-attempt", "1"))


def test_fill_copy_fills_a_copy_and_never_mutates() -> None:
    request = service_pb2.PostModelOutputsRequest(model_id="m1")
    filled = fill_copy(PAT, request)
    assert filled is not request
    assert filled.user_app_id == resources_pb2.UserAppIDSet(user_id="u1", app_id="a1")
    assert filled.model_id == "m1"
    assert not request.HasField("user_app_id")


@pytest.mark.filterwarnings("ignore::clarifai_interceptor.NoUserIdWarning")
def test_fill_leaves_set_fields_and_api_keys_and_other_messages_alone() -> None:
    theirs = service_pb2.PostModelOutputsRequest(
        user_app_id=resources_pb2.UserAppIDSet(user_id="other", app_id="app")
    )
    assert fill_copy(PAT, theirs) is theirs
    assert to_bytes(None, PAT, theirs.SerializeToString()) == theirs.SerializeToString()
    plain = service_pb2.PostModelOutputsRequest()
    assert fill_copy(Credentials.from_api_key("fake-key"), plain) is plain
    assert fill_copy(Credentials.from_pat("fake-pat"), plain) is plain  # no user known
    assert fill_copy(None, plain) is plain
    no_field = resources_pb2.Concept(id="c")
    assert fill_copy(PAT, no_field) is no_field


def test_to_bytes_serializes_as_if_set() -> None:
    request = service_pb2.ListLogEntriesRequest(page=2)  # user_app_id is field 4 here
    serialize = service_pb2.ListLogEntriesRequest.SerializeToString
    sent = service_pb2.ListLogEntriesRequest.FromString(to_bytes(serialize, PAT, request))
    assert sent == fill_copy(PAT, request)
    assert not request.HasField("user_app_id")
    assert to_bytes(serialize, API_KEY, request) == request.SerializeToString()
    assert to_bytes(None, PAT, b"raw") == b"raw"  # a stub that sends bytes: sent as they are


def wire(stream: object) -> list[bytes]:
    """What an attempt over ``stream`` sends, as bytes."""
    return [m if isinstance(m, bytes) else m.SerializeToString() for m in stream()]  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["bytes", "snapshot"])
def test_a_replayed_list_resends_what_its_first_attempt_sent(kind: str) -> None:
    first, second = service_pb2.PostInputsRequest(), service_pb2.PostInputsRequest()
    first.inputs.add(id="original")
    messages = [first, second]
    serialize = service_pb2.PostInputsRequest.SerializeToString
    if kind == "bytes":
        stream = byte_stream(serialize, PAT, messages)
    else:
        stream = request_stream(API_KEY, messages, snapshot=True)
    sent = wire(stream)
    first.inputs[0].id = "mutated-after-send"
    second.inputs.add(id="added-after-send")
    assert wire(stream) == sent
    assert b"original" in sent[0]
    assert not any(b"after-send" in data for data in sent)


def test_an_iterator_of_requests_is_serialized_as_it_is_read() -> None:
    messages = [service_pb2.PostInputsRequest(), service_pb2.ListLogEntriesRequest(page=3)]
    serialize = type(messages[0]).SerializeToString
    stream = byte_stream(lambda m: m.SerializeToString(), PAT, iter(messages))
    assert list(stream()) == [to_bytes(lambda m: m.SerializeToString(), PAT, m) for m in messages]
    assert serialize(messages[0]) == b""  # nothing was filled into the caller's messages


def test_merge_without_credentials_adds_nothing_and_still_checks() -> None:
    assert merge(None, None) == ((), False)
    pairs, added = merge([("x-request-id", "r1")], None)
    assert (pairs, added) == ((("x-request-id", "r1"),), False)
    with pytest.raises(ValueError, match="invalid metadata key"):
        merge([("Bad Key", "v")], None)
