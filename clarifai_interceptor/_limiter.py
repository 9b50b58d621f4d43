"""Client-side rate limiting: pace attempts to the rate the server accepts, before sending.

A `RateLimit` (``_ratelimit``) says how; a bucket holds the state, one per identity and target,
shared by every channel of the process (or, through a `Store` such as
``clarifai_interceptor.redis.RedisStore``, by a fleet). Every attempt, first or retry, asks its
bucket for a `Permit` first: how long to wait before sending. A bucket that cannot give one
within the wait allowed refuses, and the call fails at once with `RateLimitedError`.

The schedule is a GCRA (`take`): one number, the end of the schedule (``tat``), and a rate. What
the rate is comes from `Rules`, pure functions of what the server said, in Python only (a
shared store holds the state and runs the schedule atomically, nothing else):

* Fixed (``per_second``): that rate from the first call, whatever the server says.
* Stated: Clarifai's throttle says its limit ("exceeded limit of 15 requests per second"):
  pace just below it (``MARGIN``) from then on. If throttles go on at it (another consumer
  shares the quota, or a fleet shares it without a shared store), cut by ``BETA`` (once a
  round), then, paced with no throttle for ``RISE_EVERY`` seconds, rise by ``RISE`` times the
  limit, never above it:
  additive increase, multiplicative decrease, so a fleet's processes converge on equal shares.
* Learnt: a server that states nothing starts the rate at the rate this process sent at while
  dormant (``initial_rate`` at least), doubling every ``STEP`` seconds until a throttle (a cut
  to the share that got through), then cuts as above and rises by ``RISE_LEARNT`` times
  itself, with no ceiling.

Adaptive buckets are dormant (one method call, no lock) until the first throttle. A cut is a
new round: throttles of attempts sent in an older round are answered already, and a permit of
an older round whose rate fell is given a new slot at the end of its wait (`recheck`). A
permit never used goes back when no permit after it is held (`release`).

After a quota status (`QUOTA_STATUSES`), the bucket refuses every permit with a `Quota` and lets
one probe through every ``quota_probe`` seconds, until an attempt succeeds.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ._ratelimit import DEFAULT_RATE_LIMIT, GO, OK, Bucket, Permit, Quota, RateLimit, Signal, Store
from .exceptions import EndedCall, RateLimitedError

__all__ = [
    "DEFAULT_RATE_LIMIT",
    "GO",
    "HORIZON",
    "OK",
    "Bucket",
    "EndedCall",
    "LocalBucket",
    "Permit",
    "Quota",
    "RateLimit",
    "RateLimitedError",
    "Rules",
    "Signal",
    "State",
    "Store",
    "bucket_for",
    "identity",
    "take",
]

#: A learnt rate doubles every STEP seconds until its first cut.
STEP = 1.0
#: Attempts of a round back (throttled or not) before it may cut: one cut a round.
SAMPLE = 4
#: A cut multiplies the rate by BETA: the same factor for every process of a fleet, so that
#: with equal rises their shares converge (a cut by each one's own share of successes favoured
#: the process whose slots happened to land just after the server's refill).
BETA = 0.8
#: A learnt rate's first cut goes to the share of its attempts that got through, less DIP
#: (room for the server's bucket to refill), if that is deeper: doubling, it offered more than
#: the server gave, so that share measures the server.
DIP = 0.05
#: A rate paced (some permit waited) with no throttle for RISE_EVERY seconds rises by RISE
#: times the stated limit (additive, so that a fleet's processes converge on equal shares), or,
#: with no limit stated, by RISE times itself.
RISE = 0.02
RISE_LEARNT = 0.05
RISE_EVERY = 2.0
_LARGEST_START = 1e4  # a learnt rate starts no higher (a burst of sends is not a rate)
_FIRST = 0.25  # the shortest time the send rate before a throttle is measured over
#: A stated limit is paced this far below it.
MARGIN = 0.01
_GONE = 256  # permits given back inside the schedule kept at most
#: A schedule further ahead than this (seconds) is corrupt, or from a clock stepped back: healed.
HORIZON = 3600.0


class State(NamedTuple):
    """A bucket's shared state: what a store keeps (one Redis hash), all numbers.

    ``rate``: 0 while dormant; ``round``: counts the cuts (a stated limit taken is one);
    ``stated``: the limit the server stated (0: none); ``rising``: 1 while a learnt rate
    doubles (no cut yet); ``changed``: when the rate last changed;
    ``quota``/``probe_at``: an exhausted quota's status and when its next probe may go."""

    rate: float = 0.0
    round: int = 0
    stated: float = 0.0
    rising: int = 0
    changed: float = 0.0
    quota: int = 0
    probe_at: float = 0.0


def take(
    tat: float, now: float, rate: float, burst: float, not_before: float, max_wait: float | None
) -> tuple[float, float] | None:
    """GCRA: the slot of the next permit (``at``) and the schedule's new end, or None if the
    slot is further than ``max_wait``. ``tat`` beyond `HORIZON` counts as now."""
    interval = 1.0 / rate
    if not tat <= now + HORIZON:  # corrupt (NaN too), or a clock stepped back
        tat = now
    at = max(now + not_before, tat - (burst - 1.0) * interval)
    if max_wait is not None and at - now > max_wait:
        return None
    return at, max(tat, at) + interval


class Rules:
    """The rate's rules (see the module's docstring): pure functions of a `State`."""

    __slots__ = ("limit",)

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit

    def rate(self, state: State, now: float) -> float:
        """The rate to pace at now; 0 while dormant."""
        fixed = self.limit.per_second
        if fixed is not None:
            return fixed
        if state.rising and state.rate:
            steps = min(max(0.0, now - state.changed) / STEP, 10.0)
            return float(state.rate * 2.0**steps)
        return state.rate

    def throttled(
        self,
        state: State,
        now: float,
        stated: float | None,
        ok: int,
        throttled: int,
        sending: float = 0.0,
    ) -> State | None:
        """The state after a throttle of an attempt of the current round, given this
        process's attempts of the round that went through (``ok``) and were throttled (this
        one included), and the rate it sent at while dormant (``sending``); None: no
        change."""
        if not self.limit.adaptive:
            return None
        changed = state._replace(round=state.round + 1, changed=now, rising=0)
        if stated is not None and (state.rate == 0 or stated != state.stated):
            # The server said its limit: pace just below it, so that its bucket, empty now,
            # refills to absorb the network's jitter instead of throttling it.
            return changed._replace(rate=stated * (1.0 - MARGIN), stated=stated)
        if state.rate == 0:  # no limit stated: learn it, from the rate it sent at, doubling
            start = min(max(self.limit.initial_rate, sending), _LARGEST_START)
            return changed._replace(rate=start, rising=1)
        if ok + throttled < SAMPLE:
            return None  # too few of this round's attempts back to say how far to cut
        cut = BETA
        if state.rising:  # it offered more than the server gave: the share measures the server
            cut = max(0.5, ok / (ok + throttled) * (1.0 - DIP))
        cut *= self.rate(state, now)
        return changed._replace(rate=max(self.limit.min_rate, cut))

    def rises(self, state: State, now: float) -> State | None:
        """The state after ``RISE_EVERY`` seconds of paced sends and no throttle; None if the
        rate stays (fixed, dormant, rising already, or at the stated limit)."""
        if not self.limit.adaptive or state.rate == 0 or state.rising:
            return None
        ceiling = state.stated * (1.0 - MARGIN)
        if now - state.changed < RISE_EVERY or (state.stated and state.rate >= ceiling):
            return None
        if state.stated:
            rate = min(state.rate + RISE * state.stated, ceiling)
        else:
            rate = state.rate * (1.0 + RISE_LEARNT)
        return state._replace(rate=rate, changed=now)  # the same round: no cut

    def quota(self, state: State, now: float, status: int) -> State | None:
        """The state after a quota status (None: the breaker is off)."""
        if self.limit.quota_probe is None:
            return None
        return state._replace(quota=status, probe_at=now + self.limit.quota_probe)

    def probe(self, state: State, now: float) -> Quota | State:
        """While a quota is exhausted: a `Quota` refusal, or (a probe's turn) the new state."""
        if now < state.probe_at:
            return Quota(state.quota, state.probe_at - now)
        return state._replace(probe_at=now + (self.limit.quota_probe or 0.0))


class LocalBucket:
    """A bucket in this process: a `State`, a schedule end and a lock."""

    __slots__ = (
        "_gone",
        "_lock",
        "_now",
        "_ok",
        "_paced",
        "_sent",
        "_since",
        "_throttled",
        "learning",
        "limit",
        "rules",
        "state",
        "tat",
    )

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.rules = Rules(limit)
        self._now = clock
        self._lock = threading.Lock()
        self.state = State(rate=limit.per_second or 0.0)
        self.tat = 0.0  # the schedule's end: the next permit's slot, less the burst
        self.learning = False  # a success teaches it: an adaptive rate, or a quota to clear
        self._ok = 0  # attempts of the current round that went through
        self._sent = 0  # permits given while dormant since `_since` (racy: an estimate)
        self._since = clock()
        self._paced = False  # a permit of the current round waited: the rate holds callers back
        self._throttled = 0  # attempts of the current round throttled
        self._gone: dict[
            float, float
        ] = {}  # permits given back inside the schedule: after -> before

    def rate(self) -> float | None:
        with self._lock:
            rate = self.rules.rate(self.state, self._now())
        return rate or None

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | Quota | None:
        state = self.state
        if not state.rate and not state.quota:
            self._sent += 1
            return GO  # dormant: no lock (the state is replaced whole, never changed in place)
        with self._lock:
            now = self._now()
            state = self.state
            if state.quota:
                probe = self.rules.probe(state, now)
                if isinstance(probe, Quota):
                    return probe
                self.state = state = probe
            rate = self.rules.rate(state, now)
            if not rate:
                return GO
            slot = take(self.tat, now, rate, self.limit.burst, not_before, max_wait)
            if slot is None:
                return None
            at, before, self.tat = slot[0], self.tat, slot[1]
            self._paced = self._paced or at > now
            return Permit(at - now, state.round, at, before, self.tat, rate)

    def feedback(self, permit: Permit, signal: Signal) -> None:
        if not signal.throttled and not signal.quota and not self.learning:
            return
        with self._lock:
            now, state = self._now(), self.state
            if signal.quota:
                self._set(self.rules.quota(state, now, signal.quota), now)
            elif signal.throttled:
                if permit.round != state.round:
                    return  # sent before the last change: that change answered it
                self._throttled += 1
                sending = self._sent / max(now - self._since, _FIRST) if not state.rate else 0.0
                new = self.rules.throttled(
                    state, now, signal.stated, self._ok, self._throttled, sending
                )
                self._set(new, now)
            else:
                if state.quota:
                    self._set(state._replace(quota=0, probe_at=0.0), now)
                if permit.round == self.state.round:
                    self._ok += 1
                if self._paced and not self._throttled:
                    self._set(self.rules.rises(self.state, now), now)

    def _set(self, state: State | None, now: float) -> None:
        """Take ``state`` (lock held); a new round (a cut) starts its counts afresh."""
        if state is None:
            return
        if state.round != self.state.round:
            self._paced, self._ok, self._throttled = False, 0, 0
            self._gone.clear()
            old = self.rules.rate(self.state, now)
            if state.rate and (not old or state.rate < old):  # slowed down (or woke): the
                # server's bucket is empty now; the queue is laid out anew from its next token
                self.tat = now + 1.0 / state.rate
        self.state = state
        self.learning = (bool(state.rate) and self.limit.adaptive) or bool(state.quota)

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        state = self.state
        if permit.round == state.round or permit == GO:
            return permit
        with self._lock:
            now = self._now()
            rate = self.rules.rate(self.state, now)
            if not rate or rate >= permit.rate:
                return permit  # not slower since: the slot stands
            slot = take(self.tat, now, rate, self.limit.burst, 0.0, max_wait)
            if slot is None:
                return permit  # none within the wait allowed: it goes at its old slot
            at, before, self.tat = slot[0], self.tat, slot[1]
            return Permit(at - now, self.state.round, at, before, self.tat, rate)

    def release(self, permit: Permit) -> None:
        """Undo ``permit`` (not due yet, of the current round): if it is the schedule's last,
        the schedule ends where it ended before it, and so on back through the permits given
        back before it (each permit's ``before`` is the ``after`` of the one before): as if
        none of them had been asked for. One inside the schedule is kept (at most `_GONE`)
        until the permits after it are all given back; if they are not, its slot is wasted:
        a release never grants a slot too many."""
        if permit == GO:
            return
        with self._lock:
            if permit.round != self.state.round or permit.at <= self._now():
                return
            gone = self._gone
            if self.tat != permit.after:
                if len(gone) < _GONE:
                    gone[permit.after] = permit.before
                return
            tat = permit.before
            while tat in gone:
                tat = gone.pop(tat)
            self.tat = tat

    async def acquire_async(
        self, not_before: float, max_wait: float | None
    ) -> Permit | Quota | None:
        return self.acquire(not_before, max_wait)

    async def feedback_async(self, permit: Permit, signal: Signal) -> None:
        self.feedback(permit, signal)

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        return self.recheck(permit, max_wait)

    async def release_async(self, permit: Permit) -> None:
        self.release(permit)

    def adopt(self, state: State) -> None:
        """Take over ``state`` (a shared store's, as last seen) if this bucket knows less: a
        store that fails hands its pace to the local bucket, not a dormant one."""
        with self._lock:
            if self.state.round < state.round:
                self._set(state._replace(changed=self._now()), self._now())

    def __repr__(self) -> str:
        rate = self.rate()
        return f"<LocalBucket {'dormant' if rate is None else f'{rate:.3g}/s'}>"


def identity(secret: str, target: str, limit: RateLimit) -> str:
    """The key a bucket is shared under: a digest of the limit's key (or the secret) and the
    target, so that no secret is ever kept in clear."""
    name = limit.key if limit.key is not None else secret
    digest = hashlib.blake2b(f"{target}\0{name}".encode(), digest_size=16, person=b"ci-limit")
    return digest.hexdigest()


_BUCKETS: dict[tuple[str, RateLimit], Bucket] = {}
_LOCK = threading.Lock()


def bucket_for(limit: RateLimit, key: str) -> Bucket:
    """The process's bucket for this limit and key (an `identity`), made at first use. Takes
    the digest, not the secret: a `Store` that raises has no secret in its traceback."""
    found = _BUCKETS.get((key, limit))
    if found is None:
        with _LOCK:
            found = _BUCKETS.get((key, limit))
            if found is None:
                store = limit.store
                found = LocalBucket(limit) if store is None else store.bucket(key, limit)
                _BUCKETS[key, limit] = found
    return found


def buckets() -> list[tuple[str, Bucket]]:
    """Every bucket of the process with its key (a digest), for gauges."""
    with _LOCK:
        return [(key, bucket) for (key, _limit), bucket in _BUCKETS.items()]


def _reset() -> Any:
    """Forget every bucket (tests)."""
    with _LOCK:
        _BUCKETS.clear()
