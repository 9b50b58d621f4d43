"""`clarifai_channel`: ClarifaiChannel's channel without its retries, ours on top."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2
from conftest import FAST, PAT_CREDS, T

from clarifai_interceptor import ClarifaiInterceptor, clarifai_channel
from clarifai_interceptor.testing import FakeClarifai


def _split(fake: FakeClarifai) -> tuple[str, int]:
    host, port = fake.target.rsplit(":", 1)
    return host, int(port)


def test_an_outage_costs_the_policys_attempts_not_their_product(fake: FakeClarifai) -> None:
    fake.set_default("ListModels", grpc.StatusCode.UNAVAILABLE)
    host, port = _split(fake)
    channel = clarifai_channel(host, PAT_CREDS, retry=FAST, insecure=True, port=port)
    with channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls_to("ListModels")) == FAST.max_attempts


def test_the_old_recipe_multiplies_attempts(fake: FakeClarifai) -> None:
    """What the helper replaces: an interceptor over ClarifaiChannel's own retrying channel."""
    fake.set_default("ListModels", grpc.StatusCode.UNAVAILABLE)
    host, port = _split(fake)
    raw = ClarifaiChannel.get_insecure_grpc_channel(base=host, port=port)
    channel = grpc.intercept_channel(raw, ClarifaiInterceptor(PAT_CREDS, retry=FAST))
    with pytest.raises(grpc.RpcError):
        service_pb2_grpc.V2Stub(channel).ListModels(service_pb2.ListModelsRequest(), timeout=T)
    raw.close()
    assert len(fake.calls_to("ListModels")) > FAST.max_attempts


def test_body_statuses_are_still_retried(fake: FakeClarifai) -> None:
    fake.script("ListModels", status_code_pb2.CONN_THROTTLED, status_code_pb2.MODEL_LOADING)
    with clarifai_channel(fake.target, PAT_CREDS, retry=FAST, insecure=True) as channel:
        response = service_pb2_grpc.V2Stub(channel).ListModels(
            service_pb2.ListModelsRequest(), timeout=T
        )
    assert response.status.code == status_code_pb2.SUCCESS
    calls = fake.calls_to("ListModels")
    assert len(calls) == 3
    assert calls[0].headers("authorization") == [f"Key {PAT_CREDS.secret.reveal()}"]


def test_a_base_with_a_scheme_is_refused_as_clarifai_channel_does() -> None:
    with pytest.raises(ValueError, match="no http"):
        clarifai_channel("https://api.clarifai.com", PAT_CREDS)
    with pytest.raises(ValueError, match="should not start with http"):
        ClarifaiChannel.get_grpc_channel(base="https://api.clarifai.com")


def test_the_default_base_and_root_certificates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trustme  # noqa: PLC0415

    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(authority.cert_pem.bytes())
    with FakeClarifai(tls=(cert.private_key_pem.bytes(), chain)) as tls_fake:
        monkeypatch.setenv("CLARIFAI_GRPC_BASE", "localhost:" + str(_split(tls_fake)[1]))
        with clarifai_channel(None, PAT_CREDS, retry=FAST, root_certificates_path=roots) as ch:
            service_pb2_grpc.V2Stub(ch).ListModels(service_pb2.ListModelsRequest(), timeout=T)
        assert len(tls_fake.calls_to("ListModels")) == 1
