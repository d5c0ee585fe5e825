"""The one concurrency limiter, adaptive: :class:`AdaptiveLimiter` (its docstring describes
the algorithm), and :func:`is_throttle`, which answers count as "slow down".

Every request of an engine holds one slot of its limiter. The number of slots starts at the
plan's ``max_concurrency``, is raised step by step while that raises throughput (up to the
ceiling the memory budget allows; a given ``max_concurrency`` is both start and ceiling),
halved when the server throttles, and grown back by one per window of successes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..errors import error_code
from .http import TransientHTTPError

# Answers that say the service is overloaded: too many requests, or a gateway with no
# capacity or time left (502, 504 from the proxies in front of S3-compatible stores).
THROTTLE_STATUS = (429, 502, 503, 504)
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)
CUT_INTERVAL = 0.2  # seconds: one cut per burst of throttled answers, not one per request


def is_throttle(exc: BaseException | None) -> bool:
    """Does ``exc`` say "too many requests" (503 SlowDown, 429, 502/504 from a gateway, a
    throttling code)? A 500 does not: it is one request's failure, retried, not a load
    signal."""
    if isinstance(exc, TransientHTTPError):
        return exc.status in THROTTLE_STATUS or exc.code in THROTTLE_CODES
    code = error_code(exc) if exc is not None else None
    return code is not None and (
        code in THROTTLE_CODES or code in {str(status) for status in THROTTLE_STATUS}
    )


PROBE_WINDOW = 0.1  # a measurement window lasts at least this many seconds, and until as
# many requests completed as the limit allows in flight (each slot turned over about once)
PROBE_STEP = 1.25  # a probe raises the target by a quarter (at least one slot) ...
PROBE_GAIN = 0.6  # ... and keeps it only if throughput rose by this share of the step
PROBE_HOLD = 20  # windows to wait after a probe that did not pay before probing again
COLLAPSE = 4.0  # latency this many times that measured at the current target, with less
# throughput: requests only queue (the server or the path is saturated), so step back
REQUEST_COST = 64 * 1024  # bytes a request counts as, so small objects measure by count


class AdaptiveLimiter:
    """At most ``limit`` holders at once, waiters served first come, first served. Lives on
    one event loop. ``await acquire()`` / ``release(exc, nbytes)`` around each request.

    - **Back off** (AIMD): a throttled answer halves ``limit`` (at most once per
      ``CUT_INTERVAL``); each success wins back ``1/limit``, up to ``target``.
    - **Grow while throughput grows**: when requests queue for a slot (demand exceeds the
      limit) the limiter measures throughput, bytes moved plus ``REQUEST_COST`` per request,
      over windows of at least ``PROBE_WINDOW`` seconds in which at least ``limit`` requests
      completed (so a window spans about one turn of every slot: a fraction of a second for
      small objects, longer for big ranges on a slow link). It then raises ``target`` by ``PROBE_STEP``
      (never above ``maximum``, the memory budget's bound), lets one window pass, and measures
      again. It keeps the step only if throughput rose by ``PROBE_GAIN`` of the step (60%:
      a quarter more requests in flight must bring 15% more throughput). Otherwise, when
      more requests in flight only made each slower, it returns to the previous target and
      waits ``PROBE_HOLD`` windows before it tries again. A throttled answer during a probe
      ends the probe the same way.
    - **Step back on latency collapse**: the time each request holds its slot is measured
      per window too (Little's law: time-weighted requests in flight over completions). If,
      above the start, it reaches ``COLLAPSE`` times what it was when the current target was
      reached, and throughput fell, the extra requests only queue: the target steps back by
      one probe step per window (not below the start) until latency is back in range.
    """

    def __init__(
        self,
        start: int,
        maximum: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # seconds; injectable so tests can drive time
        self.start = start
        self.maximum = max(start, maximum or start)
        self.target = start  # where the limit recovers to after a cut; probes move it
        self.limit = float(start)
        self.lowest = start
        self.highest = start
        self.in_flight = 0
        self.throttled = 0
        self.cuts = 0
        self.probes = 0  # targets raised
        self.reverted = 0  # probes that did not pay
        self.stepped_back = 0  # targets lowered on latency collapse
        self._last_cut = -CUT_INTERVAL
        self._waiters: deque[asyncio.Future[None]] = deque()
        # the current measurement window
        self._since = self._tick = self._clock()
        self._work = 0
        self._done = 0
        self._held = 0.0  # slot-seconds held in this window (requests in flight x time)
        self._queued = False  # a request waited for a slot in this window
        self._clean = True  # no throttling, limit at target, in this window
        # probing: a "settle" window after every change (ignored), then "measure" (the rate
        # at target; maybe raise it) or "probe" (the rate after raising: keep or take back)
        self._phase = "settle"
        self._next = "measure"
        self._base = 0.0  # the rate at the current target (before a probe)
        self._base_latency = 0.0  # and the time a request held its slot then
        self._before = start  # the target before the probe
        self._hold = 0

    def _count(self, change: int) -> None:
        """``in_flight`` changes by ``change`` now: account the slot-time held so far."""
        now = self._clock()
        self._held += self.in_flight * (now - self._tick)
        self._tick = now
        self.in_flight += change

    async def acquire(self) -> None:
        if not self.in_flight:
            self._restart()
        if not self._waiters and self.in_flight < int(self.limit):
            self._count(1)
            return
        self._queued = True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._count(-1)  # granted as we were cancelled: hand the slot on
                self._wake()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def admits(self, running: int) -> bool:
        """Objects in progress follow ``target``; one held back means demand exceeds it."""
        if running < self.target:
            return True
        self._queued = True
        return False

    def release(self, exc: BaseException | None = None, nbytes: int = 0) -> None:
        self._count(-1)
        if exc is None:
            if self.limit < self.target:
                self.limit = min(float(self.target), self.limit + 1.0 / self.limit)
                self._clean = False
            self._work += nbytes + REQUEST_COST
            self._done += 1
            now = self._tick
            if self._done >= self.limit and now - self._since >= PROBE_WINDOW:
                self._window(self._work / (now - self._since), self._held / self._done)
                self._since, self._work, self._done, self._held = now, 0, 0, 0.0
                self._queued, self._clean = False, True
        else:
            self.observe(exc)
        self._wake()

    def _restart(self) -> None:
        """Idle until now: the window starts afresh, and the first one (a batch warming up)
        is not measured."""
        self._since = self._tick = self._clock()
        self._work, self._done, self._held = 0, 0, 0.0
        self._queued, self._clean = False, True
        if self._phase != "settle":
            self._next, self._phase = self._phase, "settle"

    def _window(self, rate: float, latency: float) -> None:
        """One window ended with throughput ``rate`` and requests holding their slots
        ``latency`` seconds on average: move through the probe's phases."""
        if not (self._queued and self._clean):
            return  # not enough demand to learn from, or still recovering from a cut
        if self._phase == "settle":
            self._phase = self._next
        elif self._phase == "probe":
            step = self.target / self._before - 1
            if rate >= self._base * (1 + PROBE_GAIN * step):
                self._base, self._base_latency = rate, latency
                self._raise()  # it paid: try the next step from here
            else:
                self._revert()
        else:
            if not self._base_latency:  # the first look
                self._base, self._base_latency = rate, latency
            if (
                self.target > self.start
                and latency >= COLLAPSE * self._base_latency
                and rate < self._base
            ):
                self._step_back()
            elif self._hold > 0:
                self._hold -= 1
            elif self.target < self.maximum:
                self._base, self._base_latency = rate, latency
                self._raise()

    def _raise(self) -> None:
        if self.target >= self.maximum:
            self._phase = self._next = "measure"
            return
        self._phase, self._next = "settle", "probe"
        self._before = self.target
        self.target = min(self.maximum, max(self.target + 1, int(self.target * PROBE_STEP)))
        self.limit = float(self.target)
        self.highest = max(self.highest, self.target)
        self.probes += 1

    def _revert(self) -> None:
        self.target = self._before
        self.limit = min(self.limit, float(self.target))
        self.reverted += 1
        self._hold = PROBE_HOLD
        self._phase, self._next = "settle", "measure"

    def _step_back(self) -> None:
        """Latency collapsed: one probe step down (not below the start), then settle. The
        reference stays, so the next window steps again while latency stays that high."""
        self.target = max(self.start, int(self.target / PROBE_STEP))
        self.limit = min(self.limit, float(self.target))
        self.stepped_back += 1
        self._hold = PROBE_HOLD
        self._phase, self._next = "settle", "measure"

    def observe(self, exc: BaseException) -> None:
        """Count ``exc`` toward the limit if it is a throttled answer (once per exception)."""
        if is_throttle(exc) and not getattr(exc, "_s3fast_seen", False):
            setattr(exc, "_s3fast_seen", True)  # noqa: B010
            self.throttle()

    def throttle(self) -> None:
        """The server said "slow down": halve the limit, unless it was just halved."""
        self.throttled += 1
        self._clean = False
        if self._next == "probe":  # a probe in progress
            self._revert()
        now = self._clock()
        if now - self._last_cut >= CUT_INTERVAL and self.limit > 1:
            self._last_cut = now
            self.cuts += 1
            self.limit = max(1.0, self.limit / 2)
            self.lowest = min(self.lowest, int(self.limit))

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._count(1)
                waiter.set_result(None)
