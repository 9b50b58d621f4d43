"""A bucket whose `State` lives in Redis (one hash per credential identity), for `RedisStore`.

Python decides (`Rules`, as for `LocalBucket`); Redis holds the state and runs what must be
atomic, in four small scripts: the schedule (`take`'s GCRA, with the quota's probe), a rate
change (only if no other change came since: compare and set on the round), a quota, and a
release. Each op is written once, as a generator of script calls (`_acquire`, `_feedback`, ...)
that a sync and an async driver run. Times are Redis's (``TIME``): the state heals when that
clock steps back, and a schedule past `HORIZON` or a garbage field counts as empty.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from ._limiter import HORIZON, LocalBucket, Rules, State
from ._ratelimit import GO, Bucket, Permit, Quota, RateLimit, Signal

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["RedisBucket"]

# Every script: ARGV[1] now ("" for Redis's TIME), ARGV[2] the key's time to live (ms); the
# state's fields n(round) r(rate) s(stated) g(rising) c(changed) q(quota) p(probe at)
# t(schedule's end) w(last seen now). The reply: {kind, n, r, s, g, c, q, p, now, ...}.
_PRELUDE = """
local key = KEYS[1]
local now
if ARGV[1] == '' then
    local clock = redis.call('TIME')
    now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
else
    now = tonumber(ARGV[1])
end
local f = redis.call('HMGET', key, 'n', 'r', 's', 'g', 'c', 'q', 'p', 't', 'w')
local n, r = tonumber(f[1]) or 0, tonumber(f[2]) or 0
local s, g = tonumber(f[3]) or 0, tonumber(f[4]) or 0
local c, q, p = tonumber(f[5]) or 0, tonumber(f[6]) or 0, tonumber(f[7]) or 0
local t, w = tonumber(f[8]) or now, tonumber(f[9]) or now
if w > now then  -- the clock stepped back since: so does every time kept
    t, c, p = t - (w - now), c - (w - now), p - (w - now)
end
if not (c >= 0 and c <= now) then c = now end  -- compared as text by a change: keep it sane
-- A round or quota status that is not a whole number >= 0 (NaN, inf, a co-tenant's): none, as
-- the bucket reads it (else no round would ever match, or no success would lift the quota).
if not (n >= 0 and n < math.huge and n == math.floor(n)) then n = 0 end
-- A rate that is not a number up to 1e6 (NaN, -5): dormant, and of round 0 as a dormant
-- bucket's permits are (else the throttles that would wake it are of an older round).
if not (r > 0 and r <= 1e6) then r, n = 0, 0 end
if not (q > 0 and q < math.huge) then q = 0 end
local function num(x) return string.format('%.17g', x) end
local function save()
    redis.call('HSET', key, 'n', n, 'r', num(r), 's', num(s), 'g', g, 'c', num(c), 'q', q,
        'p', num(p), 't', num(t), 'w', num(now))
    redis.call('PEXPIRE', key, ARGV[2])
end
local function reply(kind, ...)
    return {kind, num(n), num(r), num(s), num(g), num(c), num(q), num(p), num(now), ...}
end
"""
#: ARGV[3] the round the rate was computed for, [4] the rate (0: dormant), [5] burst,
#: [6] not before (s), [7] max wait ("" none), [8] quota probe interval, [9] horizon.
_ACQUIRE = (
    _PRELUDE
    + """
if q ~= 0 and now < p and p <= now + tonumber(ARGV[9]) then save() return reply('quota') end
if tonumber(ARGV[3]) ~= n then return reply('stale') end
local rate = tonumber(ARGV[4])
if rate <= 0 then
    if q ~= 0 then p = now + tonumber(ARGV[8]) save() end
    return reply('go')
end
local interval = 1 / rate
if not (t <= now + tonumber(ARGV[9])) then t = now end
local at = math.max(now + tonumber(ARGV[6]), t - (tonumber(ARGV[5]) - 1) * interval)
if ARGV[7] ~= '' and at - now > tonumber(ARGV[7]) then save() return reply('refused') end
if q ~= 0 then p = now + tonumber(ARGV[8]) end
local before = t
t = math.max(t, at) + interval
save()
return reply('ok', num(at - now), num(at), num(before), num(t))
"""
)
#: ARGV[3] the round it was decided in, [4] the rate's last change as seen, [5] the new
#: round, [6] rate, [7] stated, [8] rising, [9] the slot the schedule restarts from ("": kept).
#: Nothing changes if another change came first (compare and set).
_CHANGE = (
    _PRELUDE
    + """
if tonumber(ARGV[3]) == n and num(c) == ARGV[4] then
    n, r, s, g, c = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), now
    if ARGV[9] ~= '' then t = now + tonumber(ARGV[9]) end
end
save()
return reply('changed')
"""
)
#: ARGV[3] the quota status (0: lift it), [4] seconds to the next probe.
_QUOTA = (
    _PRELUDE
    + """
q = tonumber(ARGV[3])
p = q ~= 0 and now + tonumber(ARGV[4]) or 0
save()
return reply('quota set')
"""
)
#: ARGV[3] the permit's round, [4] its slot, [5] the schedule's end before it, [6] after it.
_RELEASE = (
    _PRELUDE
    + """
if tonumber(ARGV[3]) == n and num(t) == ARGV[6] and tonumber(ARGV[4]) > now then
    t = tonumber(ARGV[5])
    save()
end
return reply('released')
"""
)

_Op = Generator[tuple[str, list[Any]], Any, Any]


def _num(value: float) -> str:
    return "%.17g" % value  # noqa: UP031 (as the scripts print it: compared as text)


def _field(value: Any, low: float = 0.0, high: float = 1e6) -> float:
    """A number of the state as read, or 0 if garbage (a co-tenant's writes, NaN, inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and low <= number <= high else 0.0


class RedisBucket:
    """A `Bucket` whose state is one Redis hash, shared by every process (not part of the API).

    Falls back to a `LocalBucket` of its own, at the pace last seen, (or refuses) while Redis
    fails.
    """

    __slots__ = (
        "_at",
        "_clock",
        "_ok",
        "_paced",
        "_redis_now",
        "_throttled",
        "key",
        "limit",
        "local",
        "rules",
        "store",
        "view",
    )

    def __init__(self, store: RedisStore, key: str, limit: RateLimit) -> None:
        self.store = store
        self.limit = limit
        self.key = store.prefix + "{" + key + "}"  # a hash tag: one slot on a Redis Cluster
        self.rules = Rules(limit)
        self.local = LocalBucket(limit)
        self.view = State(rate=limit.per_second or 0.0)  # the state as the last reply had it
        self._redis_now = 0.0  # Redis's clock in the last reply...
        self._at = time.monotonic()  # ...read at this time
        self._paced = False  # a permit of the current round waited
        self._ok = 0  # this process's attempts of the current round that went through...
        self._throttled = 0  # ...and that were throttled
        #: Tests only: a clock for the scripts instead of Redis's TIME.
        self._clock: Callable[[], float] | None = None

    def _now(self) -> float:
        """Redis's clock now, as the last reply tells it."""
        if self._clock is not None:
            return self._clock()
        return self._redis_now + (time.monotonic() - self._at)

    def _see(self, reply: list[Any]) -> str:
        """Take the state a reply carries; its kind."""
        n, r, s, g, c, q, p, now = (_field(x, high=math.inf) for x in reply[1:9])
        state = State(_field(r), int(n), _field(s), int(g == 1), c, int(q), p)
        if state.round != self.view.round:
            self._paced, self._ok, self._throttled = False, 0, 0
        self.view, self._redis_now, self._at = state, now, time.monotonic()
        kind = reply[0]
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    # The ops: generators of (script, args), sent each reply (None: Redis failed).

    def _acquire(self, not_before: float, max_wait: float | None) -> _Op:
        for _ in range(3):  # a change elsewhere between two of our calls: ask again
            rate = self.rules.rate(self.view, self._now())
            probe = self.limit.quota_probe or 0.0
            wait = "" if max_wait is None else _num(max_wait)
            args = [self.view.round, _num(rate), self.limit.burst, not_before, wait, probe]
            reply = yield _ACQUIRE, [*args, HORIZON]
            if reply is None:
                return self._fallback_acquire(not_before, max_wait)
            kind = self._see(reply)
            if kind == "ok":
                wait_s, at, before, after = (float(x) for x in reply[9:13])
                self._paced = self._paced or wait_s > 0
                return Permit(wait_s, self.view.round, at, before, after, rate)
            if kind != "stale":
                break
        else:
            return GO  # changes race ours: send, the throttle's feedback will tell
        if kind == "quota":
            return Quota(self.view.quota, max(0.0, self.view.probe_at - self._now()))
        return GO if kind == "go" else None

    def _fallback_acquire(self, not_before: float, max_wait: float | None) -> Any:
        if self.store.on_error == "fail":
            return None
        self.local.adopt(self.view)
        return self.local.acquire(not_before, max_wait)

    def _feedback(self, permit: Permit, signal: Signal) -> _Op:
        view, now = self.view, self._now()
        if signal.quota:
            if self.limit.quota_probe is None:
                return
            reply = yield _QUOTA, [signal.quota, self.limit.quota_probe]
        elif signal.throttled:
            if permit.round != view.round:
                return  # sent before the last change: that change answered it
            self._throttled += 1
            new = self.rules.throttled(view, now, signal.stated, self._ok, self._throttled)
            reply = yield from self._change(new)
        else:
            reply = False  # nothing asked of Redis (None: asked, and it failed)
            if permit.round == view.round:
                self._ok += 1
            if view.quota:
                reply = yield _QUOTA, [0, 0]
            elif self._paced and not self._throttled:
                reply = yield from self._change(self.rules.rises(view, now))
        if reply is None:
            if self.store.on_error == "local":
                self.local.feedback(permit, signal)
        elif reply is not False:
            self._see(reply)

    def _change(self, state: State | None) -> _Op:
        """Set ``state`` if no change came since the view's round; False: nothing to set."""
        if state is None:
            return False
        view, old = self.view, self.rules.rate(self.view, self._now())
        restart = _num(1.0 / state.rate) if state.rate and (not old or state.rate < old) else ""
        seen = [view.round, _num(view.changed), state.round]
        return (yield _CHANGE, [*seen, _num(state.rate), _num(state.stated), state.rising, restart])

    def _recheck(self, permit: Permit, max_wait: float | None) -> _Op:
        if permit.round == self.view.round or permit == GO:
            return permit
        rate = self.rules.rate(self.view, self._now())
        if not rate or rate >= permit.rate:
            return permit  # not slower since: the slot stands
        again = yield from self._acquire(0.0, max_wait)
        return again if isinstance(again, Permit) and again != GO else permit

    def _release(self, permit: Permit) -> _Op:
        self.local.release(permit)  # if the local bucket gave it (Redis down then)
        if permit != GO and permit.round == self.view.round:
            args = [permit.round, _num(permit.at), _num(permit.before), _num(permit.after)]
            yield _RELEASE, args

    # The drivers.

    def _args(self, args: list[Any]) -> list[Any]:
        now = "" if self._clock is None else repr(self._clock())
        return [now, max(1, round(self.store.ttl * 1000)), *args]

    def _run(self, op: _Op, *, quiet: bool = False) -> Any:
        try:
            step = next(op)
            while True:
                text, args = step
                reply = self.store.run(
                    text, self.key, self._args(args), count=not quiet, probe=not quiet
                )
                step = op.send(reply)
        except StopIteration as done:
            return done.value

    async def _run_async(self, op: _Op, *, quiet: bool = False) -> Any:
        try:
            step = next(op)
            while True:
                text, args = step
                reply = await self.store.run_async(
                    text, self.key, self._args(args), count=not quiet, probe=not quiet
                )
                step = op.send(reply)
        except StopIteration as done:
            return done.value

    def acquire(self, not_before: float, max_wait: float | None) -> Permit | Quota | None:
        return self._run(self._acquire(not_before, max_wait))  # type: ignore[no-any-return]

    async def acquire_async(
        self, not_before: float, max_wait: float | None
    ) -> Permit | Quota | None:
        return await self._run_async(self._acquire(not_before, max_wait))  # type: ignore[no-any-return]

    def feedback(self, permit: Permit, signal: Signal) -> None:
        self._run(self._feedback(permit, signal))

    async def feedback_async(self, permit: Permit, signal: Signal) -> None:
        await self._run_async(self._feedback(permit, signal))

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        return self._run(self._recheck(permit, max_wait))  # type: ignore[no-any-return]

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        return await self._run_async(self._recheck(permit, max_wait))  # type: ignore[no-any-return]

    def release(self, permit: Permit) -> None:
        """Undo ``permit`` (`LocalBucket.release` says when): best effort, one round trip,
        nothing while Redis is down, never raises."""
        with contextlib.suppress(Exception):  # a release must never fail the caller's call
            self._run(self._release(permit), quiet=True)

    async def release_async(self, permit: Permit) -> None:
        with contextlib.suppress(Exception):  # a release must never fail the caller's call
            await self._run_async(self._release(permit), quiet=True)

    def rate(self) -> float | None:
        """The shared rate as last seen (no round trip)."""
        return self.rules.rate(self.view, self._now()) or None

    @property
    def learning(self) -> bool:
        """A learnt rate, or a quota to lift, as the last reply said."""
        view = self.view
        return (bool(view.rate) and self.limit.adaptive) or bool(view.quota)

    def __repr__(self) -> str:
        return f"<RedisBucket {self.limit.per_second or 'adaptive'} {self.store!r}>"


# A check at import that the class meets the protocol it stands for.
_: type[Bucket] = RedisBucket
