"""`secure_channel` end to end: TLS to a FakeClarifai that serves a test certificate."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
import trustme
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from conftest import PAT, PAT_CREDS, T, localhost

from clarifai_interceptor import secure_channel
from clarifai_interceptor.testing import FakeClarifai


def test_secure_channel_carries_credentials_over_tls(
    tls_fake: FakeClarifai, authority: trustme.CA
) -> None:
    roots = authority.cert_pem.bytes()
    with secure_channel(localhost(tls_fake), PAT_CREDS, root_certificates=roots) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        response = stub.ListModels(service_pb2.ListModelsRequest(), timeout=T)
    assert response.status.code == 10000
    (call,) = tls_fake.calls_to("ListModels")
    assert call.headers("authorization") == [f"Key {PAT}"]
    assert call.request.user_app_id.user_id == PAT_CREDS.user_id


def test_secure_channel_target_from_the_environment(
    tls_fake: FakeClarifai, authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARIFAI_GRPC_BASE", localhost(tls_fake))
    roots = authority.cert_pem.bytes()
    with secure_channel(credentials=PAT_CREDS, root_certificates=roots) as channel:
        response = service_pb2_grpc.V2Stub(channel).ListModels(
            service_pb2.ListModelsRequest(), timeout=T
        )
    assert response.status.code == 10000
    assert len(tls_fake.calls_to("ListModels")) == 1


def test_secure_channel_refuses_an_untrusted_server(tls_fake: FakeClarifai) -> None:
    channel = secure_channel(localhost(tls_fake), PAT_CREDS, retry=None)
    with channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # the system roots don't know it
    assert tls_fake.calls == []


@pytest.mark.parametrize("bad", ["https://api.clarifai.com", "host with space", ""])
def test_secure_channel_refuses_a_malformed_target(bad: str) -> None:
    with pytest.raises(ValueError, match="target must be HOST or HOST:PORT"):
        secure_channel(bad, PAT_CREDS)


def test_v2stub_on_secure_channel_in_a_fresh_interpreter() -> None:
    code = (
        "from clarifai_interceptor import Credentials, secure_channel\n"
        "from clarifai_grpc.grpc.api import service_pb2_grpc\n"
        "from clarifai_grpc.channel import clarifai_channel\n"
        "ch = secure_channel('localhost:1', Credentials.from_api_key('fake-key-fresh'))\n"
        "service_pb2_grpc.V2Stub(ch)\n"
        "print(clarifai_channel.wrap_response_deserializer is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
