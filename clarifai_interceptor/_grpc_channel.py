"""`clarifai_channel`: the drop-in for ``ClarifaiChannel.get_grpc_channel()``, one retry layer.

``ClarifaiChannel``'s channels carry a gRPC service config that retries ``UNAVAILABLE`` 5 times.
An interceptor on top of them multiplies attempts (5 x 5 = 25 on an outage with our default
policy), and one with ``NO_RETRY`` loses every body-status retry (``CONN_THROTTLED`` comes
straight back). No interceptor can switch the channel's own retries off, so this builds the same
channel (same base rules, TLS, message limits) without them, and wraps it with ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from ._channel import insecure_channel, secure_channel
from ._context import CredentialsSource
from ._core import DEFAULT_RETRY
from ._policy import RetryPolicy
from ._ratelimit import DEFAULT_RATE_LIMIT, RateLimit

__all__ = ["CLARIFAI_INSECURE_PORT", "clarifai_channel"]

#: ``ClarifaiChannel.get_insecure_grpc_channel``'s default port.
CLARIFAI_INSECURE_PORT = 18080


def clarifai_channel(
    base: str | None = None,
    credentials: CredentialsSource | None = None,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    root_certificates_path: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    port: int | None = None,
) -> grpc.Channel:
    """The channel ``ClarifaiChannel.get_grpc_channel()`` makes, with one retry layer: ours.

    gRPC's own retries are off underneath; our policy retries ``UNAVAILABLE`` and the transient
    body statuses (``CONN_THROTTLED``, ``MODEL_LOADING``, ...), so attempts never multiply.

    Args:
        base: ``HOST`` or ``HOST:PORT`` without a scheme; default ``CLARIFAI_GRPC_BASE``, else
            ``api.clarifai.com`` (port 443).
        credentials: As for `wrap_channel`.
        retry: As for `wrap_channel`.
        rate_limit: As for `wrap_channel`.
        root_certificates_path: A PEM file of root certificates, as ``ClarifaiChannel`` takes
            it; None for the system's.
        insecure: Plain TCP, as ``ClarifaiChannel.get_insecure_grpc_channel()``.
        port: For ``insecure``: the port when ``base`` names none (default 18080, as
            ``ClarifaiChannel``).

    Raises:
        MissingCredentialsError: ``credentials`` is None and the environment names no secret.
        ValueError: ``base`` has a scheme (as ``ClarifaiChannel`` refuses it) or is malformed.
    """
    if base is None:
        base = os.environ.get("CLARIFAI_GRPC_BASE") or "api.clarifai.com"
    if base.startswith(("http:", "https:")):
        raise ValueError(
            "base must be a bare endpoint such as 'api.clarifai.com' (no http:// or https://), "
            "as for ClarifaiChannel"
        )
    if insecure:
        if ":" not in base.rsplit("]", 1)[-1]:
            base = f"{base}:{CLARIFAI_INSECURE_PORT if port is None else port}"
        return insecure_channel(base, credentials, retry=retry, rate_limit=rate_limit)
    roots = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    return secure_channel(
        base, credentials, retry=retry, rate_limit=rate_limit, root_certificates=roots
    )
