"""Errors this package raises for misuse; gRPC errors from calls pass through untouched.

Exception tree::

    Exception
     +-- ValueError
     |    +-- MissingCredentialsError   no secret given and none in the environment
     +-- CredentialsProviderError       a credentials provider raised; the call was not sent

    UserWarning
     +-- NoUserIdWarning                a PAT without user_id: user_app_id is never filled

Errors that come back from Clarifai (a ``grpc.RpcError``, or a response whose ``status.code``
is not ``SUCCESS``) are never wrapped: the caller gets the very object gRPC produced.
"""

from __future__ import annotations

__all__ = ["CredentialsProviderError", "MissingCredentialsError", "NoUserIdWarning"]


class MissingCredentialsError(ValueError):
    """No secret was passed and the environment names none."""


class CredentialsProviderError(Exception):
    """A credentials provider raised; the call was not sent (the provider's error is chained)."""


class NoUserIdWarning(UserWarning):
    """A PAT was given without ``user_id``: ``user_app_id`` is never filled in (warned once).

    Each request that needs ``user_app_id`` must then set it itself. Silence it with
    ``warnings.filterwarnings("ignore", category=NoUserIdWarning)`` if that is what you do.
    """
