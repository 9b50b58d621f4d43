"""What the metric front ends share: bucket boundaries, and the live figures read by gauges."""

from __future__ import annotations

import contextlib

from .._budget import token_buckets
from .._limiter import buckets

__all__ = [
    "DELAY_BUCKETS",
    "RETRIES_BUCKETS",
    "budget_tokens",
    "limiter_rates",
    "method_attribute",
]

#: gRFC A96's recommended boundaries for ``grpc.client.call.retries``.
RETRIES_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5)
#: gRFC A66's latency boundaries (seconds), used for ``grpc.client.call.retry_delay``.
DELAY_BUCKETS: tuple[float, ...] = (
    0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13,
    0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100,
)  # fmt: skip


def method_attribute(method: str) -> str:
    """gRFC A66's ``grpc.method``: the full name without its leading slash."""
    return method[1:] if method.startswith("/") else method


def budget_tokens() -> dict[str, float]:
    """The tokens left in the retry budgets, per target: the emptiest bucket of each (several
    channels to one target each have one; the emptiest is the one holding retries back)."""

    found: dict[str, float] = {}
    for bucket in token_buckets():
        tokens = float(bucket.tokens)
        target = bucket.target
        if target not in found or tokens < found[target]:
            found[target] = tokens
    return found


def limiter_rates() -> dict[str, float]:
    """The rate each active rate-limit bucket paces to (attempts per second), per key digest;
    dormant buckets are left out. The slowest when one key has several limits."""
    found: dict[str, float] = {}
    for key, bucket in buckets():
        rate = None
        # A shared store's bucket may fail to answer (its server down): skip it, not the rest.
        with contextlib.suppress(Exception):
            rate = bucket.rate()
        if rate is None:
            continue
        if key not in found or rate < found[key]:
            found[key] = float(rate)
    return found
