"""What every front end asks before a call: which credentials, which metadata, which policy."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from clarifai_grpc.channel import clarifai_channel as _clarifai_channel

from ._attempts import Attempts
from ._budget import TokenBucket
from ._closing import Closing
from ._context import CREDENTIALS, RETRY, CredentialsSource, check_source
from ._credentials import CREDENTIAL_KEYS, Credentials
from ._limiter import bucket_for, identity
from ._metadata import Pairs, merge
from ._methods import Policies, default_rules
from ._methods import check as check_policies
from ._policy import NO_RETRY, RetryBudget, RetryPolicy, for_testing
from ._ratelimit import DEFAULT_RATE_LIMIT, Bucket, Permit, RateLimit
from ._switch import TESTING
from ._target import redact
from .exceptions import CredentialsProviderError

__all__ = ["DEFAULT_RETRY", "Core"]

# V2Stub(channel) reads this module global, which only ClarifaiChannel's getters set: without
# it every stub on a channel of ours fails with "'NoneType' object is not callable". Every
# front end builds a Core, so the first use of the package fixes it (importing the package
# alone loads no gRPC: its pytest plugin is loaded by every pytest run).
if _clarifai_channel.wrap_response_deserializer is None:
    _clarifai_channel.wrap_response_deserializer = _clarifai_channel._response_deserializer_for_grpc  # noqa: SLF001

#: The policy used when none is given.
DEFAULT_RETRY = RetryPolicy()


class Core:
    """The defaults one interceptor or channel was built with, resolved per call."""

    __slots__ = (
        "_buckets",
        "_last",
        "_limited",
        "_lock",
        "_policies",
        "closing",
        "credentials",
        "limit_wait",
        "rate_limit",
        "retry",
        "target",
    )

    def __init__(
        self,
        credentials: CredentialsSource | None,
        retry: RetryPolicy | None,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        target: str = "",
        policies: Mapping[str, RetryPolicy] | None = None,
    ) -> None:
        # Built now, not at the first call: a missing secret fails where the channel is made.
        if credentials is None:
            credentials = Credentials.from_env()
        check_source(credentials)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        self.credentials: CredentialsSource = credentials
        self.retry = NO_RETRY if retry is None else retry
        # The default policy means the default classification: reads and writes differ. A
        # policy given explicitly applies to every method; ``policies`` refine either.
        rules = dict(default_rules()) if retry is DEFAULT_RETRY else {"*": self.retry}
        if policies is not None:
            rules.update(check_policies(policies))
        self._policies = Policies(rules)
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(
                f"rate_limit must be a RateLimit or None, not {type(rate_limit).__name__}"
            )
        self.rate_limit = rate_limit
        self.limit_wait = None if rate_limit is None else rate_limit.max_wait
        # A label (metrics, logs) and a part of the rate limiter's key: user info never goes
        # there (`USER:PASSWORD@host` shows as `***@host`).
        self.target = redact(target) if isinstance(target, str) else target
        # The last credentials asked for a bucket, and that bucket: the usual case, unhashed.
        self._limited: tuple[Credentials | None, Bucket | None] = (None, None)
        self._buckets: dict[RetryBudget, TokenBucket] = {}
        self._last: TokenBucket | None = None
        self._lock = threading.Lock()
        #: The channel's closing: a channel of ours closes it, an interceptor its ``close()``.
        self.closing = Closing()

    def policy(self, method: str | bytes) -> RetryPolicy:
        """The retry policy for a call of ``method`` made now: a `use_retry` override, else the
        most specific of this channel's per-method policies."""
        policy = RETRY.get() or self.method_policy(method)
        return for_testing(policy) if TESTING.active else policy

    def method_policy(self, method: str | bytes) -> RetryPolicy:
        """This channel's policy for ``method``, overrides aside."""
        return self._policies.get(method) or self.retry

    def attempts(
        self,
        policy: RetryPolicy,
        method: str | bytes,
        deadline: float | None,
        limiter: Bucket | None = None,
        permit: Permit | None = None,
        started: float | None = None,
    ) -> Attempts:
        """A call's `Attempts`, sharing this channel's token bucket for the policy's budget and
        the rate limiter's bucket for the call's credentials."""
        bucket = self.bucket(policy)
        return Attempts(
            policy,
            method,
            deadline,
            bucket,
            limiter,
            permit,
            self.limit_wait,
            started,
            self.target,
            self.closing,
        )

    def bucket(self, policy: RetryPolicy) -> TokenBucket | None:
        """This channel's token bucket for the policy's budget (None: no budget)."""
        budget = policy.budget
        if budget is None:
            return None
        last = self._last
        if last is not None and last.budget is budget:  # the usual case, without hashing
            return last
        bucket = self._buckets.get(budget)
        if bucket is None:
            with self._lock:
                bucket = self._buckets.setdefault(budget, TokenBucket(budget, self.target))
        self._last = bucket
        return bucket

    def limiter(self, credentials: Credentials) -> Bucket | None:
        """The rate-limit bucket for calls under ``credentials`` (None: no limit)."""
        limit = self.rate_limit
        if limit is None:
            return None
        last, bucket = self._limited
        if last is not credentials or bucket is None:
            bucket = bucket_for(limit, identity(credentials.secret.reveal(), self.target, limit))
            self._limited = (credentials, bucket)
        return bucket

    def _limiter_for(self, pairs: Pairs) -> Bucket | None:
        """The bucket for a call whose caller passed its own credential header."""
        limit = self.rate_limit
        if limit is None:
            return None
        for name, value in pairs:
            if name in CREDENTIAL_KEYS:
                key = identity(_secret_of(value), self.target, limit)
                return bucket_for(limit, key)  # no secret in this frame: a Store may raise
        return None  # the call's own call credentials authenticate it: their secret is unseen

    def credentials_now(self) -> Credentials:
        """The credentials for a call made now: an override, else the default (asked if a
        provider).

        Raises:
            CredentialsProviderError: A credentials provider raised or returned something else.
        """
        source = CREDENTIALS.get() or self.credentials
        return source if type(source) is Credentials else _provide(source)

    def resolve(
        self, metadata: Iterable[tuple[str, Any]] | None, call_credentials: object = None
    ) -> tuple[Pairs, Credentials | None, Bucket | None]:
        """The metadata to send, the credentials whose ``user_app_id`` may be filled in, and
        the rate limiter's bucket for the secret the call carries.

        A credential header in the caller's metadata, or gRPC call credentials passed with the
        call (``credentials=``), authenticate the call instead of ours: then ours are neither
        sent (one ``authorization`` header) nor asked for.

        Raises:
            CredentialsProviderError: A credentials provider raised or returned something else.
            ValueError: The caller's metadata has an entry gRPC would refuse.
        """
        credentials = None if call_credentials is not None else self.credentials_now()
        pairs, added = merge(metadata, credentials)
        if added:
            assert credentials is not None  # noqa: S101 (merge adds only what it is given)
            return pairs, credentials, self.limiter(credentials)
        return pairs, None, self._limiter_for(pairs)


def _provide(source: CredentialsSource) -> Credentials:
    if isinstance(source, Credentials):
        return source
    try:
        credentials = source()
    except Exception as exc:
        raise CredentialsProviderError(
            f"the credentials provider raised {type(exc).__name__}; the call was not sent"
        ) from exc
    if not isinstance(credentials, Credentials):
        raise CredentialsProviderError(
            f"the credentials provider returned {type(credentials).__name__}, not Credentials"
        )
    return credentials


def _secret_of(value: object) -> str:
    """The secret of a caller's own credential header's value."""
    return value.removeprefix("Key ") if isinstance(value, str) else repr(value)
