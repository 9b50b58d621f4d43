"""What a hook is given: one record per retry scheduled, one summary per call that retried.

Both are plain, frozen records of secret-free facts: names, numbers and the target. Never the
credentials, the request, the response or the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from .._compat import slotted

__all__ = ["CallSummary", "CutBy", "Reason", "RetryDetails"]

#: Why a wait lasts what it does: the policy's backoff, the server's pushback, or the limiter.
Reason: TypeAlias = Literal["backoff", "pushback", "limiter"]
#: What ended the retrying before an outcome that was simply final.
CutBy: TypeAlias = Literal["budget", "limiter", "attempts", "deadline", "pushback"]


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDetails:
    """A retry that is about to be waited for: given to each on-retry hook, before the wait.

    Attributes:
        method: The method's full name, e.g. ``/clarifai.api.V2/PostInputs``.
        target: The channel's target (``host:port``), or ``""`` when unknown (an interceptor
            built without one); a channel `wrap_channel` wrapped without one: ``unnamed#``
            and a random suffix, its own.
        attempt: The number of the attempt that failed (1 for the first).
        outcome: What that attempt got: a gRPC code name (``UNAVAILABLE``) or a Clarifai status
            name (``CONN_THROTTLED``); ``UNKNOWN_STATUS`` for a status the installed
            ``clarifai_grpc`` has no name for (one value for all: it labels metrics).
        throttle: Whether that outcome was the server throttling the caller.
        wait: The seconds chosen to wait before the next attempt.
        reason: Why the wait is that long: ``"backoff"`` (the policy), ``"pushback"`` (the
            server's ``grpc-retry-pushback-ms``) or ``"limiter"`` (the client-side rate limiter
            made it longer).
        elapsed: Seconds since the call began.
        deadline_left: Seconds left before the call's deadline, or None for no deadline.
    """

    method: str
    target: str
    attempt: int
    outcome: str
    throttle: bool
    wait: float
    reason: Reason
    elapsed: float
    deadline_left: float | None


@slotted
@dataclass(frozen=True, slots=True, kw_only=True)
class CallSummary:
    """How a call that was retried, throttled or cut short ended: given to each hook's
    ``on_call_end`` (never for calls whose first attempt was simply final).

    Attributes:
        method: The method's full name, e.g. ``/clarifai.api.V2/PostInputs``.
        target: The channel's target, named as in `RetryDetails.target`.
        attempts: Attempts made, the first included.
        outcome: The final outcome, named as in `RetryDetails.outcome` (``SUCCESS`` for a
            successful response).
        throttled: How many of the attempts were throttled.
        waited: Seconds spent waiting between attempts, all reasons together (gRFC A96's
            retry delay: the sum of the call's `RetryDetails.wait`).
        cut_by: What ended the retrying while the outcome was still worth a retry:
            ``"budget"`` (the retry budget was spent), ``"limiter"`` (the rate limiter gave no
            permit in time), ``"attempts"`` (``max_attempts`` was reached), ``"deadline"`` (the
            next wait would pass it) or ``"pushback"`` (the server said not to retry); None when
            the final outcome was simply final (a success, or an error never retried).
        elapsed: Seconds from the call's start to its end.
    """

    method: str
    target: str
    attempts: int
    outcome: str
    throttled: int
    waited: float
    cut_by: CutBy | None
    elapsed: float
