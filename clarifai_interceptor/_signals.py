"""What an attempt's outcome tells the rate limiter (`Signal`): a throttle and the limit the
server states with it, or a quota status. Pure reading, no state."""

from __future__ import annotations

import re

from clarifai_grpc.grpc.api.status import status_code_pb2 as _sc

from ._ratelimit import OK, Signal

__all__ = ["QUOTA_STATUSES", "read", "stated_limit"]

#: Clarifai statuses that say a quota is exhausted: seconds of waiting cannot help.
QUOTA_STATUSES: frozenset[int] = frozenset(
    {_sc.CONN_EXCEED_HOURLY_LIMIT, _sc.CONN_EXCEED_MONTHLY_LIMIT, _sc.CONN_EXCEEDS_LIMITS}
)
#: "exceeded limit of 15 requests per second", as Clarifai states it (case and spacing free;
#: "request", "req", "/s" and "a second" too).
_STATED = re.compile(
    r"limit\s+(?:of\s+)?(\d{1,7}(?:\.\d{1,6})?)\s*(?:requests?|reqs?)?\s*(?:per|/|a)\s*(?:second|sec|s)\b",
    re.IGNORECASE,
)
_READ = 512  # characters of a status's text read at most: a hostile server's megabyte is not
_LOWEST, _HIGHEST = 0.001, 1e6  # a stated limit outside is ignored (RateLimit's own bounds)


def stated_limit(text: object) -> float | None:
    """The limit ``text`` states, in requests per second, or None (nothing that matches, or a
    number out of range)."""
    if not isinstance(text, str):
        return None
    found = _STATED.search(text[:_READ])
    if found is None:
        return None
    value = float(found.group(1))
    return value if _LOWEST <= value <= _HIGHEST else None


def read(outcome: object, throttled: bool) -> Signal:
    """The `Signal` of ``outcome`` (a response or a ``grpc.RpcError``), ``throttled`` as the
    retry policy judged it."""
    status = getattr(outcome, "status", None)
    code = getattr(status, "code", None)
    if code in QUOTA_STATUSES:
        return Signal(quota=code)
    if not throttled:
        return OK
    if status is not None:
        stated = stated_limit(getattr(status, "details", None))
        if stated is None:
            stated = stated_limit(getattr(status, "description", None))
    else:
        details = getattr(outcome, "details", None)
        stated = stated_limit(details() if callable(details) else None)
    return Signal(throttled=True, stated=stated)
