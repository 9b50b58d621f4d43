"""Errors this package raises: for misuse, and for a call it ended itself without sending it.

Exception tree::

    Exception
     +-- ValueError
     |    +-- MissingCredentialsError   no secret given and none in the environment
     +-- CredentialsProviderError       a credentials provider raised; the call was not sent
     +-- grpc.RpcError (and grpc.Call)
          +-- EndedCall                 (internal) an outcome of ours: no attempt in flight
               +-- RateLimitedError     the client-side rate limiter refused the call (code
               |                        RESOURCE_EXHAUSTED; nothing was sent)
               +-- QuotaExceededError   a Clarifai quota is exhausted: calls fail fast until a
                                        probe call succeeds (RESOURCE_EXHAUSTED; nothing sent)

    UserWarning
     +-- NoUserIdWarning                a PAT without user_id: user_app_id is never filled

Errors that come back from Clarifai (a ``grpc.RpcError``, or a response whose ``status.code``
is not ``SUCCESS``) are never wrapped: the caller gets the very object gRPC produced. The
`EndedCall` errors are the package's own ``grpc.RpcError``: a call that the package ended before
anything went out, so ``except grpc.RpcError`` catches them too. `EndedCall` itself is not
exported (a call whose channel closed while it waited to retry ends with another of its kinds,
code ``CANCELLED``).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

__all__ = [
    "CredentialsProviderError",
    "MissingCredentialsError",
    "NoUserIdWarning",
    "QuotaExceededError",
    "RateLimitedError",
]


class MissingCredentialsError(ValueError):
    """No secret was passed and the environment names none."""


class CredentialsProviderError(Exception):
    """A credentials provider raised; the call was not sent (the provider's error is chained)."""


class NoUserIdWarning(UserWarning):
    """A PAT was given without ``user_id``: ``user_app_id`` is never filled in (warned once).

    Each request that needs ``user_app_id`` must then set it itself. Silence it with
    ``warnings.filterwarnings("ignore", category=NoUserIdWarning)`` if that is what you do.
    """


class EndedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """An outcome of ours for a call with no attempt in flight: a finished ``grpc.Call`` with
    no metadata (its subclasses say which code and why)."""

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:  # noqa: ARG002 (never runs)
        return False

    def debug_error_string(self) -> str:
        """What happened, in one short line shaped as gRPC's own errors give it (never a
        secret): ``CODE:details (ended by clarifai_interceptor: KIND)``."""
        return debug_string(type(self).__name__, self.code(), self.details())

    def __str__(self) -> str:
        return f"<{type(self).__name__} {self.code()}: {self.details()}>"


class RateLimitedError(EndedCall):
    """The client-side rate limiter refused a call: no permit within the wait allowed.

    A ``grpc.RpcError`` with code ``RESOURCE_EXHAUSTED``, so ``except grpc.RpcError`` keeps
    working; nothing was sent for the attempt it refused.
    """

    def __init__(self, wait: float | None) -> None:
        self._wait = wait

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        bound = "" if self._wait is None else f" within {self._wait:.3f} s"
        return (
            f"the client-side rate limiter refused the call: no permit{bound} (nothing sent); "
            "more callers wait than the limit serves in that time: lower concurrency to at most "
            "rate x max_wait, or raise RateLimit.max_wait"
        )


class QuotaExceededError(EndedCall):
    """A Clarifai quota is exhausted (``CONN_EXCEED_HOURLY_LIMIT``, ``CONN_EXCEED_MONTHLY_LIMIT``
    or ``CONN_EXCEEDS_LIMITS`` came back for this credential and target): the call failed fast,
    nothing was sent. One probe call goes through every ``RateLimit.quota_probe`` seconds; the
    first success lifts it.

    A ``grpc.RpcError`` with code ``RESOURCE_EXHAUSTED``.

    Attributes:
        status: The Clarifai status code that reported the quota.
        probe_in: Seconds until the next probe call may go.
    """

    def __init__(self, status: int, probe_in: float) -> None:
        self.status = status
        self.probe_in = probe_in

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        from clarifai_grpc.grpc.api.status import status_code_pb2  # noqa: PLC0415 (kept light)

        try:
            name = status_code_pb2.StatusCode.Name(self.status)
        except ValueError:
            name = f"status {self.status}"
        return (
            f"Clarifai quota exhausted ({name}): failing fast, nothing sent; the next probe "
            f"call goes in {self.probe_in:.0f} s"
        )


def debug_string(kind: str, code: grpc.StatusCode, details: str) -> str:
    """A ``debug_error_string()`` for an error of ours, shaped as grpcio's own (``CODE`` or
    ``CODE:details``), saying who ended the call and as what; secret-free, as the details are."""
    said = f"{code.name}:{details}" if details else code.name
    return f"{said} (ended by clarifai_interceptor: {kind})"
