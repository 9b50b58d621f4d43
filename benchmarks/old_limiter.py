"""The pre-#18 rate limiter, kept only as a baseline for the throttle benchmark.

This is ``clarifai_interceptor/_limiter.py`` as of commit 9e1d7ad (before issue #18 rewrote the
limiter), trimmed to what the benchmark's ``ours-before`` variant needs: the adaptive
`LocalBucket` and its maths, unchanged. Nothing in the package imports it; it is not part of
the package, and it is not maintained: it only lets the benchmark measure "today's adaptive
limiter" side by side with the new default, after the rewrite has landed.

What changed from the original, and only this:

* It reads its settings from `OLD_DEFAULT`, the pre-#18 default ``RateLimit()`` (adaptive,
  burst 1, ``min_rate`` 0.5/s, ``initial_rate`` 15/s) frozen here, whatever limit the channel
  asks for: the rewrite may change ``RateLimit``'s fields or defaults.
* It speaks the post-#18 `Bucket` protocol: ``feedback(permit, signal)`` (and
  ``feedback_async``) take a ``Signal`` and read only its ``throttled`` (a quota counts as
  neither: the old limiter knew no quotas); ``acquire`` (and
  ``acquire_async``) accept and ignore any further argument (the new code may ask for a quota
  refusal: this bucket never refuses on quota, only past ``max_wait``, with None).
* Identity, the store (Redis) and the package's registry are gone: `install` replaces the
  package's ``bucket_for`` in this process with one that hands out one `LocalBucket` per key.

The module docstring of the original follows.

Client-side rate limiting: pace attempts to the rate the server accepts, before sending.

Adaptive mode (the default) is dormant, and costs one method call, until the first throttle;
then it paces to the rate the server delivers (as BBR does), measured from every success it
is told of while active (of permits given while it was dormant too): a throttle says the
server's bucket is empty, so the successes between two throttles are all it delivered. A
throttle (at most one a round of attempts in flight, and a round lasts `_ROUND` at least) cuts
the rate to that delivered rate, never below half the rate then; a window with no throttle but
the one ending it was the client's own pace, and keeps the plateau. The rate dips `DIP` below
it and is back in `_K` (1.4) s, then probes above it slowly (cubic, `GROWTH`), never above
twice the measured send rate. The first throttle starts from the rate this process was
sending at, doubling every second until a throttle measures the server: straight to it if the
start was above it (that window offered more all along), else by ``1 - BETA`` at most.

A cut leaves nothing reserved at the old rate: each permit given before it is rechecked at the
end of its wait (`LocalBucket.recheck`) and gets the next slot at the new rate, in the order
the old slots come due, and a permit given after the cut queues behind as many slots as were
reserved. A retry whose backoff ends past the queue books its own slot then instead of pushing
the queue back, and a rising rate re-bases the slots reserved at the lower one. A permit that
is never used gives its slot back (`LocalBucket.release`).
"""

from __future__ import annotations

import bisect
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clarifai_interceptor._ratelimit import Permit  # kept by the rewrite

__all__ = ["OLD_DEFAULT", "LocalBucket", "buckets", "install", "made"]

#: The permit of a dormant bucket: go now.
GO = Permit(0.0, 0)


@dataclass(frozen=True)
class OldLimit:
    """The fields of the pre-#18 ``RateLimit`` that the bucket reads, at their defaults."""

    per_second: float | None = None
    burst: float = 1.0
    min_rate: float = 0.5
    initial_rate: float = 15.0

    @property
    def adaptive(self) -> bool:
        return self.per_second is None


#: The pre-#18 default ``RateLimit()``, as far as the bucket is concerned.
OLD_DEFAULT = OldLimit()


#: How far below the delivered rate a cut starts: the client's slack, so that the server's
#: bucket refills a little before the rate probes above again.
DIP = 0.05
#: CUBIC's growth constant, relative to the delivered rate before the cut: back at that rate
#: K = cbrt(DIP / GROWTH) seconds after the cut, then probing above it, slowly at first.
GROWTH = 0.02
_K: float = (DIP / GROWTH) ** (1 / 3)
#: The first cut after the slow start takes the rate to at least this fraction of the rate
#: then: the start's window may have begun below the server's rate, and undercount.
BETA = 0.7
#: Any other cut takes the rate to at least this fraction of the rate then.
HALF = 0.5
#: Before the first measured cut the rate doubles every `_DOUBLING` seconds (a slow start).
_DOUBLING = 1.0
_LATER = 256  # slots booked past the queue kept at most (then they join the queue)
_FREE = 256  # slots given back inside the queue kept at most (then a release gives none back)
_SAME = 1e-3  # slots closer than this fraction of an interval are one slot (float rounding)
_FIRST = 0.25  # the shortest window the first estimate of the send rate divides by
_ROUND = 0.25  # the shortest round between cuts, and window of the delivered rate
_SPAN = 2.0  # the longest window of the delivered rate: growth from below would undercount
_SUCCESSES = 16  # the fewest successes a window of the delivered rate counts
_WINDOW = 0.5  # seconds per bucket of the send-rate estimate
_SMOOTH = 0.8  # weight of the old estimate (botocore's)
_STALL = 0.25  # seconds without a send that count as a stall, not as a slow rate


def cubic_rate(w_max: float, since_cut: float) -> float:
    """The adaptive rate ``since_cut`` seconds after a cut to the delivered rate ``w_max``:
    ``(1 - DIP) * w_max`` at the cut, ``w_max`` after ``K`` seconds, then growing cubically."""
    lag = since_cut - _K
    return w_max * (1.0 + GROWTH * lag * lag * lag)


def start_rate(first: float, since: float) -> float:
    """The rate ``since`` seconds after the first throttle, from ``first``: doubling every
    `_DOUBLING` seconds until a throttle measures what the server delivers."""
    return first * math.pow(2.0, min(since / _DOUBLING, 64.0))  # capped: no overflow


def first_free(booked: list[float], earliest: float, interval: float) -> float:
    """The first time from ``earliest`` at least ``interval`` away from every time in the
    sorted list ``booked``."""
    at = earliest
    for slot in booked:
        if slot >= at + interval:
            break
        if slot > at - interval:
            at = slot + interval
    return at


class LocalBucket:
    """A `Bucket` in this process: GCRA reservations at the current rate, which follows the
    rate the server delivers (see the module's docstring)."""

    __slots__ = (
        "_count",
        "_cut_at",
        "_delivered",
        "_free",
        "_last",
        "_later",
        "_lock",
        "_measured",
        "_now",
        "_ok",
        "_ok_since",
        "_ok_throttles",
        "_paced",
        "_rate",
        "_redo",
        "_round",
        "_since",
        "_start",
        "_tat",
        "_w_max",
        "active",
        "learning",
        "limit",
    )

    def __init__(
        self, limit: OldLimit = OLD_DEFAULT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._now = clock
        self._lock = threading.Lock()
        self.active = not limit.adaptive
        self.learning = False  # active and adaptive
        self._rate = limit.per_second or 0.0
        self._w_max = self._rate  # the rate delivered before the last cut (the plateau)
        self._cut_at = 0.0
        self._round = 0
        self._start = False  # between the first throttle and the first measured cut
        self._ok = 0.0  # successes since `_ok_since`
        self._ok_since = 0.0  # a throttle: the server's bucket was empty then
        self._ok_throttles = 0  # throttles since `_ok_since`: one only, the client's own pace
        self._delivered = -1.0  # successes per second between the last two such throttles
        self._tat = clock()  # GCRA's theoretical arrival time of the next permit
        self._later: list[float] = []  # slots booked past `_tat` by retries, in order
        self._free: list[float] = []  # slots given back inside the queue (`release`), in order
        self._redo = 0.0  # after a cut: the next slot for a permit given before it
        self._paced = self._rate  # the rate `_tat` was laid out at
        self._since = self._last = self._tat  # start of the send-rate window, last send
        self._count = 0  # sends counted in the window
        self._measured = 0.0  # smoothed send rate; 0 until first measured

    def rate(self) -> float | None:
        if not self.active:
            return None
        with self._lock:
            return self._current(self._now())

    def _current(self, now: float) -> float:
        """The rate to pace at now (lock held)."""
        if not self.limit.adaptive:
            return self._rate
        if self._start:
            rate = start_rate(self._w_max, now - self._cut_at)
        else:
            rate = cubic_rate(self._w_max, now - self._cut_at)
        if self._measured > 0:
            rate = min(rate, 2.0 * self._measured)
        return max(self.limit.min_rate, rate)

    def _count_send(self, now: float) -> None:
        """Count one send in the send-rate estimate (lock held).

        A gap longer than `_STALL` (a client stall: a GC pause, a slow request) closes the
        window at the send before it: the stall itself says nothing about the rate.
        """
        if now - self._last > _STALL:
            self._sample(self._count, self._last - self._since)
            self._since, self._count = now, 0
        self._last = now
        self._count += 1
        elapsed = now - self._since
        if elapsed >= _WINDOW:
            self._sample(self._count, elapsed)
            self._since, self._count = now, 0

    def _sample(self, count: int, elapsed: float) -> None:
        if count and elapsed >= _WINDOW / 5:
            sample, old = count / elapsed, self._measured
            self._measured = sample if old == 0 else _SMOOTH * old + (1 - _SMOOTH) * sample

    def _measure(self, now: float) -> None:
        """A throttle says the server's bucket is empty now (lock held): if the last such
        moment is at least `_ROUND` ago, the successes since are what the server delivered,
        all of it (both ends empty), less only what overflowed its bucket in between (a
        window is at most `_SPAN` long, so that a climb from below undercounts little; one
        that did not start at a throttle overcounts by at most the server's burst). A window
        with no throttle but the one that ends it was paced by the client, not the server:
        the server gives that much at least, and the plateau stands if it is higher."""
        elapsed = now - self._ok_since
        if elapsed >= _ROUND and self._ok >= _SUCCESSES:
            rate = self._ok / elapsed
            if self._ok_throttles <= 1 and not self._start:
                rate = max(rate, self._w_max)
            self._delivered = rate
            self._ok_since, self._ok, self._ok_throttles = now, 0.0, 0

    def acquire(
        self, not_before: float, max_wait: float | None, *_more: Any, **_named: Any
    ) -> Permit | None:
        if not self.active:
            self._count += 1  # racy by design: an estimate, and the happy path stays lock-free
            return GO
        with self._lock:
            return self._acquire(self._now(), not_before, max_wait)

    def _acquire(self, now: float, not_before: float, max_wait: float | None) -> Permit | None:
        """`acquire`, active, at ``now`` (lock held)."""
        rate = self._current(now)
        tat = self._tat
        if tat > now and rate > self._paced:  # re-base what is reserved on the new rate
            tat = now + (tat - now) * self._paced / rate
        interval = 1.0 / rate
        earliest = now + not_before
        later = self._later
        if earliest > max(tat, now) + interval and len(later) < _LATER:
            # A retry's backoff ends past the queue: book its own slot then, and leave
            # the slots before it to others (the queue skips it when it gets there).
            at = first_free(later, earliest, interval)
            if max_wait is not None and at - now > max_wait:
                return None
            bisect.insort(later, at)
            self._tat = tat
        else:
            at = max(earliest, tat - (self.limit.burst - 1.0) * interval)
            passed = 0  # the booked slots this permit's slot moves past
            while passed < len(later) and later[passed] < at + interval:
                at = max(at, later[passed] + interval)
                passed += 1
            if max_wait is not None and at - now > max_wait:
                return None
            del later[:passed]
            self._tat = max(tat, at) + interval
        self._paced = rate
        self._count_send(now)
        return Permit(at - now, self._round, at)

    def feedback(self, permit: Permit, signal: Any) -> None:
        throttled = bool(signal.throttled)  # a Signal: the stated limit and quota are ignored
        if not throttled and not self.learning:
            return  # dormant (or fixed): successes teach nothing, and take no lock
        if not self.limit.adaptive:
            return
        with self._lock:
            if not throttled:
                self._ok += 1  # a success of any round: the rate delivered since a throttle
                now = self._now()
                elapsed = now - self._ok_since
                if elapsed > _SPAN:  # no throttle for long: keep the recent half, pro rata
                    self._ok *= _SPAN / 2 / elapsed
                    self._ok_since, self._ok_throttles = now - _SPAN / 2, 0
                return
            now = self._now()
            if self.active:
                self._ok_throttles += 1
                self._measure(now)
            if permit.round != self._round or (self.active and now - self._cut_at < _ROUND):
                return  # sent before the last cut, or just after: that cut answers it
            if not self.active:  # the first throttle: start from the rate we were sending at
                elapsed = max(now - self._since, _FIRST)
                rate = max(self.limit.initial_rate, self._count / elapsed)
                self._measured = rate
                self._since, self._count, self._last = now, 0, now
                self._tat = now
                self._paced = rate
                self._ok_since, self._ok, self._delivered = now, 0.0, -1.0
                self._ok_throttles = 0
                self.active = self._start = self.learning = True
            else:
                # Cut to what was delivered; with nothing measured (no successes at all),
                # back from a dip of DIP: only successes say how far to go.
                current = self._current(now)
                delivered = self._delivered
                rate = current if delivered < 0 else min(current, delivered)
                if not (self._start and 0 <= delivered <= self._w_max):
                    # At most halved at once (a window can undercount: its successes
                    # reported late), and after the slow start by BETA at most (its window
                    # began below the server's rate). A slow start that began at or above
                    # the delivered rate offered more than it all along: that measure is
                    # whole, and the rate goes straight to it.
                    rate = max(rate, (BETA if self._start else HALF) * current)
                self._start = False
            self._w_max = max(self.limit.min_rate, rate)
            self._cut_at = now
            self._round += 1
            self._respace(now)

    def _respace(self, now: float) -> None:
        """After a cut (lock held): nothing stays reserved at the old rate. Every permit given
        before it asks again at the end of its wait (`recheck`) and gets the next slot at the
        new rate from now (`_redo`), in the order the old slots come due; a permit given
        after it queues behind as many slots as were reserved (first come, first served), less
        the slots given back (`release`): nobody will come for them."""
        ahead = max(0.0, self._tat - now) * self._paced + sum(s > now for s in self._later)
        ahead = max(0.0, ahead - sum(s > now for s in self._free))
        rate = self._current(now)
        self._redo = now
        self._tat = now + ahead / rate
        self._paced = rate
        self._later.clear()
        self._free.clear()

    def recheck(self, permit: Permit, max_wait: float | None) -> Permit:
        if permit.round == self._round or permit.at <= self._cut_at:
            return permit  # no cut since the permit was given (or it was due before): go
        with self._lock:
            now = self._now()
            interval = 1.0 / self._current(now)
            at = max(now, self._redo)
            if at + interval > self._tat:  # the old queue is laid out: join the new one
                return self._acquire(now, 0.0, max_wait) or permit
            if max_wait is not None and at - now > max_wait:
                return permit
            self._redo = at + interval
            self._count_send(now)
            return Permit(at - now, self._round, at)

    def release(self, permit: Permit) -> None:
        """Give back the slot of ``permit``, never used (nothing was sent under it): see the
        original's docstring at 9e1d7ad for the cases and why the limit still holds."""
        if not self.active or permit == GO:
            return  # dormant: nothing was reserved (and this path takes no lock)
        with self._lock:
            self._release(self._now(), permit)

    def _release(self, now: float, permit: Permit) -> None:
        """`release`, active, at ``now`` (lock held)."""
        at = permit.at
        if at <= now or permit.round != self._round:
            return  # used (or about to be); or a cut since laid the queue out anew
        interval = 1.0 / self._paced
        end = self._tat - self.limit.burst * interval  # the slot of the queue's last permit
        near = interval * _SAME
        later, free = self._later, self._free
        if at in later:  # a retry's booked slot: unbooked
            later.remove(at)
        elif abs(at - end) <= near:  # the last slot: the queue ends one interval sooner...
            tat = self._tat - interval
            while free:  # ...and one more for each free slot it now ends on
                found = bisect.bisect_left(free, tat - self.limit.burst * interval - near)
                if found == len(free) or free[found] > tat - self.limit.burst * interval + near:
                    break
                del free[found]
                tat -= interval
            self._tat = max(now, tat)
        elif at < end - near:  # inside the queue: free until the end reaches it
            passed = bisect.bisect_right(free, now)  # no one can take those now
            found = bisect.bisect_left(free, at)
            if len(free) - passed >= _FREE or (found < len(free) and free[found] == at):
                return  # full, or given back already
            free.insert(found, at)
            del free[:passed]
        else:
            return  # past the end of the queue (a layout before a rise): nothing to give
        if self._count > 0 and at - permit.wait >= self._since:
            self._count -= 1  # counted in this window (given at `at - wait`): never sent

    async def acquire_async(
        self, not_before: float, max_wait: float | None, *_more: Any, **_named: Any
    ) -> Permit | None:
        return self.acquire(not_before, max_wait)

    async def feedback_async(self, permit: Permit, signal: Any) -> None:
        self.feedback(permit, signal)

    async def recheck_async(self, permit: Permit, max_wait: float | None) -> Permit:
        return self.recheck(permit, max_wait)

    async def release_async(self, permit: Permit) -> None:
        self.release(permit)

    def __repr__(self) -> str:
        state = "dormant" if not self.active else f"{self.rate():.3g}/s"
        return f"<old LocalBucket {state}>"


# --- the hook: this process's buckets are the old ones -------------------------------------

_BUCKETS: dict[Any, LocalBucket] = {}
_LOCK = threading.Lock()


def bucket_for(limit: Any, *key: Any, **named: Any) -> LocalBucket:
    """In place of the package's ``bucket_for``: one old bucket per key, whatever ``limit`` (the
    pre-#18 default's settings). Takes ``(limit, secret, target)`` (before #18) as well as
    ``(limit, key)`` (after)."""
    del limit  # the old default, always: see the module's docstring
    found_key = (key, tuple(sorted(named.items())))
    found = _BUCKETS.get(found_key)
    if found is None:
        with _LOCK:
            found = _BUCKETS.setdefault(found_key, LocalBucket())
    return found


def buckets() -> list[tuple[str, LocalBucket]]:
    """Every old bucket of the process, as ``clarifai_interceptor._limiter.buckets()``."""
    with _LOCK:
        return [(str(i), bucket) for i, bucket in enumerate(_BUCKETS.values())]


def made() -> int:
    """How many old buckets this process has handed out (0 after a cell: the hook missed)."""
    return len(_BUCKETS)


def install() -> list[str]:
    """Make every rate-limited channel of this process pace with the old bucket: replace the
    package's ``bucket_for`` wherever a loaded module of the package holds it (``_core`` looks it
    up as a module global at each call). Returns the modules patched.

    Raises:
        RuntimeError: No module holds it: the package changed, and this hook must follow.
    """
    import clarifai_interceptor._core  # noqa: F401, PLC0415 (loads the lanes' modules)
    import clarifai_interceptor._limiter as limiter  # noqa: PLC0415

    original = getattr(limiter, "bucket_for", None)
    patched = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("clarifai_interceptor") or module is None:
            continue
        if original is not None and getattr(module, "bucket_for", None) is original:
            module.bucket_for = bucket_for  # type: ignore[attr-defined]
            patched.append(name)
    if "clarifai_interceptor._core" not in patched:
        raise RuntimeError(
            "clarifai_interceptor._core.bucket_for is gone: benchmarks/old_limiter.py cannot"
            " install the pre-#18 limiter (update its hook)"
        )
    return patched
