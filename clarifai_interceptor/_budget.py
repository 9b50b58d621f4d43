"""A retry budget's shared tokens (gRFC A6 "retryThrottling"): one bucket per channel."""

from __future__ import annotations

import threading
import weakref

import grpc

from ._policy import RetryBudget

__all__ = ["TokenBucket", "token_buckets"]

_TOKEN_BUCKETS: weakref.WeakSet[TokenBucket] = weakref.WeakSet()


def token_buckets() -> list[TokenBucket]:
    """Every retry budget's bucket alive in the process (each has ``target`` and ``tokens``),
    for gauges."""
    return list(_TOKEN_BUCKETS)


class TokenBucket:
    """The shared state of a `RetryBudget`: thread-safe, and safe across asyncio tasks."""

    __slots__ = ("__weakref__", "_lock", "budget", "target", "tokens")

    def __init__(self, budget: RetryBudget, target: str = "") -> None:
        self.budget = budget
        self.target = target
        self.tokens = float(budget.max_tokens)
        self._lock = threading.Lock()
        _TOKEN_BUCKETS.add(self)

    def record(self, transient: bool, outcome: object, throttled: bool = False) -> None:
        """Take a token for a transient failure; give some back for a successful response."""
        if transient:
            cost = self.budget.throttle_cost if throttled else 1.0
            if cost:
                with self._lock:
                    self.tokens = max(0.0, self.tokens - cost)
        elif self.tokens < self.budget.max_tokens and not isinstance(outcome, grpc.RpcError):
            with self._lock:
                self.tokens = min(self.budget.max_tokens, self.tokens + self.budget.token_ratio)

    def full(self) -> bool:
        """Whether a success would change nothing."""
        return self.tokens >= self.budget.max_tokens

    def allows_retry(self) -> bool:
        """Whether the bucket holds more than half its size."""
        return self.tokens > self.budget.max_tokens / 2
