"""The engine's shared state: one aiobotocore client, one concurrency limiter, one config.

aiobotocore does credentials (the standard AWS chain), endpoint and region resolution, SigV4
signing, request retries for transient errors (``standard`` mode) and XML error parsing.

Retries: every request is retried by exactly one layer. botocore retries the calls it makes;
:func:`backoff` paces the engine's own (the lean transport, and bodies that broke off), with
exponential backoff and full jitter, bounded by ``max_attempts`` and by ``max_retry_time``
seconds since the request was first sent (:class:`RetryClock`: the time it queued for a
slot does not count; hooks on botocore's ``request-created`` and ``needs-retry`` events apply
the same bound to botocore's retries). No one sleeps after the last try.

Concurrency: :class:`AdaptiveLimiter` is the one limiter. Every request holds a slot. The
number of slots starts at the plan's ``max_concurrency``, is raised step by step while that
raises throughput (up to the ceiling the memory budget allows; a given ``max_concurrency`` is
both start and ceiling), halved when the server throttles (503 ``SlowDown``, 429) at most once
per ``CUT_INTERVAL``, and grown back by one per window of successes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session

from .. import _fork
from ..config import TransferConfig
from ..errors import error_code
from .creds import Ask, Handed, current, handed_on
from .http import HttpGetter, ProtocolSurprise, TransientHTTPError
from .transport import Transport

T = TypeVar("T")
R = TypeVar("R")

# Before CPython 3.12.8 / 3.13.1 (python/cpython#118960) a TLS connection closed while the
# server still talks (a cancelled request) can outlive its event loop, half closed. aiohttp's
# remedy is its connector's ``enable_cleanup_closed``, which aborts those on close; later
# versions warn that it is not needed. AioConfig refuses the argument, so a session class
# hands it to the connector.
_NEEDS_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


class _Session(AIOHTTPSession):
    def __init__(self, *args: Any, connector_args: dict[str, Any] | None = None, **kw: Any):
        if _NEEDS_CLEANUP_CLOSED:
            connector_args = {**(connector_args or {}), "enable_cleanup_closed": True}
        super().__init__(*args, connector_args=connector_args, **kw)


_SESSION: AioSession | None = None  # for engines given credentials: see Engine._start
_SESSION_LOCK = threading.Lock()


def _shared_session() -> AioSession:
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = get_session()
        return _SESSION


def _session_after_fork() -> None:
    # A loop thread of the parent may have held the lock (or been half-way through making a
    # client) at the fork: a forked child starts a session of its own.
    global _SESSION, _SESSION_LOCK
    _fork.orphan(_SESSION)
    _SESSION, _SESSION_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_session_after_fork)


ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL")


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` >
    ``METAFLOW_S3_ENDPOINT_URL``, read now."""
    if endpoint_url:
        return endpoint_url
    for name in ENDPOINT_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


# --- the one concurrency limiter, adaptive --------------------------------------------------

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


@dataclass(frozen=True)
class TransferStats:
    """A snapshot of one client's engine, for tests, the soak run and monitoring.

    ``limit`` is the number of requests currently allowed in flight. It starts at
    ``start_limit`` (the plan's or the given ``max_concurrency``) and moves between 1 and
    ``max_concurrency`` (the ceiling: the given ``max_concurrency``, else what the memory
    budget allows); ``lowest_limit`` and ``highest_limit`` are how far it went; ``probes``
    how often it was raised to test for more throughput, ``probes_reverted`` how many of those
    did not pay, ``stepped_back`` how often it was lowered because latency collapsed;
    ``throttled`` the overload answers seen (429, 502, 503, 504, throttling codes);
    ``limit_cuts`` how often the limit was halved; ``retries`` the requests retried (the
    engine's own, plus those botocore retried); ``gave_up`` the requests that ran out of
    attempts or time."""

    max_concurrency: int
    start_limit: int
    limit: int
    lowest_limit: int
    highest_limit: int
    probes: int
    probes_reverted: int
    stepped_back: int
    in_flight: int
    throttled: int
    limit_cuts: int
    retries: int
    gave_up: int


PROBE_WINDOW = 0.1  # a measurement window lasts at least this many seconds, and until as
# many requests completed as the limit allows in flight (each slot turned over about once)
PROBE_STEP = 1.25  # a probe raises the target by a quarter (at least one slot) ...
PROBE_GAIN = 0.6  # ... and keeps it only if throughput rose by this share of the step
PROBE_HOLD = 20  # windows to wait after a probe that did not pay before probing again
COLLAPSE = 4.0  # latency this many times that measured at the current target, with less
# throughput: requests only queue (the server or the path is saturated), so step back
SIZE_WEIGHT = 0.25  # weight of the newest object in Engine's moving share of big objects
SCOUT_WAIT = 1.0  # seconds the others wait at most for a new engine's first size
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


class _Slot:
    """``async with engine.slot(nbytes) as client``: one request in flight, moving ``nbytes``
    (or ``progress[0] - start`` of a ``progress`` counter, read at the end), which the
    limiter counts toward throughput."""

    __slots__ = ("_engine", "_nbytes", "_progress", "_start")

    def __init__(self, engine: Engine, nbytes: int, progress: list[int] | None) -> None:
        self._engine = engine
        self._nbytes = nbytes
        self._progress = progress
        self._start = progress[0] if progress is not None else 0

    async def __aenter__(self) -> Any:
        client = await self._engine.client()
        await self._engine.limiter.acquire()
        sent = _FIRST_SENT.get()
        if sent is not None and not sent:  # the retried request's first send
            sent.append(now())
        return client

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        moved = self._nbytes
        if self._progress is not None:
            moved += self._progress[0] - self._start
        self._engine.limiter.release(exc, moved)


# An upload body that botocore sends over TLS is held up to three times at once: the plain
# bytes, OpenSSL's buffer of them encrypted, and the encrypted bytes read out of it for the
# socket (aiohttp writes a body whole; the lean path writes slices under flow control).
TLS_COPIES = 3


class ByteBudget:
    """At most ``capacity`` bytes held at once (the upload buffers of one engine), granted
    first come, first served. A request larger than the whole capacity is granted once
    nothing else is held, so it proceeds alone and nothing deadlocks. Lives on one event
    loop. ``async with budget.hold(n)``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.held = 0
        self.peak = 0  # the most bytes held at once (for tests and monitoring)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, nbytes: int) -> bool:
        return self.held == 0 or self.held + nbytes <= self.capacity

    def _grant(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    async def acquire(self, nbytes: int) -> None:
        if not self._waiters and self._fits(nbytes):
            self._grant(nbytes)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (nbytes, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(nbytes)  # granted as we were cancelled: hand the bytes on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # a big request that left the head may unblock smaller ones
            raise

    def release(self, nbytes: int) -> None:
        self.held -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes, waiter = self._waiters.popleft()
            if not waiter.done():
                self._grant(nbytes)
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        await self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)


class Bandwidth:
    """A token bucket for ``max_bandwidth``: each transfer reserves its bytes and waits until
    the reservations before it have been paid for at ``rate`` bytes/s (first come, first
    served; no lock needed on one event loop). A burst is at most the transfer itself."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self._paid_until = 0.0  # monotonic time when all reserved bytes are paid for

    def reserve(self, nbytes: int) -> float:
        """Reserve ``nbytes``; returns how long to wait before sending them."""
        now = time.monotonic()
        start = max(now, self._paid_until)
        self._paid_until = start + nbytes / self.rate
        return start - now


class Engine:
    """Lives on one event loop. Made by AsyncS3; ``start()`` before use, ``close()`` after.

    ``config``'s fields left as ``None`` are filled from the machine's plan
    (:func:`s3fast.tuning.plan`), once, here; ``self.plan`` says why."""

    def __init__(
        self,
        config: TransferConfig,
        endpoint_url: str | None,
        *,
        credentials: Handed | None = None,
        region: str | None = None,
        ceiling: int | None = None,
        ask: Ask | None = None,
    ) -> None:
        from .. import tuning  # lazily: ``python -m s3fast.tuning`` stays a clean entry point

        self.plan = tuning.plan(config)
        self.config = self.plan.config
        self.endpoint_url = resolve_endpoint(endpoint_url)
        # Handed on by the caller (worker processes, loop threads): no credential chain here;
        # ``ask`` fetches the caller's current set when these come due (see creds.py).
        self._credentials = credentials
        self._ask = ask
        self._region = region
        # Requests in flight start at the plan's number and may grow to its ceiling (a worker
        # process is given its share of its parent's).
        self.concurrency = max(
            self.config.max_concurrency, ceiling or self.plan.concurrency_ceiling
        )
        rate = self.config.max_bandwidth
        self._bandwidth = Bandwidth(rate) if rate is not None else None
        # Upload buffers in flight (parts read from files, TLS copies): within the memory
        # budget whatever the part size, so big parts mean fewer of them at once.
        self.upload_budget = ByteBudget(self.config.memory_budget)
        self._client: Any = None
        self._client_cm: Any = None
        self.limiter = AdaptiveLimiter(self.config.max_concurrency, self.concurrency)
        self.retries = 0  # requests retried (the engine's, and botocore's)
        self.gave_up = 0  # requests that ran out of attempts or time
        self._start_lock: asyncio.Lock | None = None
        self.transport = Transport()  # which requests take the lean path
        self.conditional_put = True  # cleared if the server rejects If-None-Match
        # The share of whole objects seen lately that were bigger than two ranges (a moving
        # average, from the first size seen): how a checked download of unknown size starts
        # (see get.fetch). Until a size is seen, one download goes ahead as the scout.
        self._big_share = 0.0
        self.sized = False
        self._scouted: asyncio.Future[None] | None = None

    def expects_big(self, size: int | None) -> bool:
        """Will a whole object of ``size`` (None: unknown) be bigger than two ranges (too big
        to read in one stream)?"""
        if size is not None:
            return size > 2 * self.config.range_size
        return self._big_share >= 0.5

    def saw_size(self, total: int) -> None:
        """A whole object's size, as a response gave it."""
        big = 1.0 if total > 2 * self.config.range_size else 0.0
        self._big_share += (SIZE_WEIGHT if self.sized else 1.0) * (big - self._big_share)
        self.sized = True
        if self._scouted is not None:
            self.scouted(self._scouted)

    def scout(self) -> tuple[asyncio.Future[None], bool]:
        """No object size known yet: a future done when the scout's first response has told
        one (or the scout gave up waiting for it), and whether the caller is the scout."""
        if self._scouted is None:
            self._scouted = asyncio.get_running_loop().create_future()
            return self._scouted, True
        return self._scouted, False

    def scouted(self, scout: asyncio.Future[None]) -> None:
        """``scout`` saw a size, or failed a try: release those waiting for it."""
        if not scout.done():
            scout.set_result(None)
        if self._scouted is scout and not self.sized:
            self._scouted = None  # the next download scouts again

    async def client(self) -> Any:
        if self._client is None:
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                if self._client is None:
                    await self._start()
        return self._client

    async def _start(self) -> None:
        session: AioSession = _shared_session() if self._credentials is not None else get_session()
        cfg = self.config
        aio_cfg = AioConfig(
            max_pool_connections=self.concurrency,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else None,
            signature_version="s3v4",
            tcp_keepalive=True,
            http_session_cls=_Session,
        )
        region = self._region or session.get_config_variable("region") or "us-east-1"
        # None: botocore's own lookup (AWS_CA_BUNDLE, the profile's ca_bundle, certifi)
        verify: bool | str | None = cfg.ca_bundle or (None if cfg.verify_ssl else False)
        keys: dict[str, Any] = {}
        if self._credentials is not None:
            access, secret, token, _ = self._credentials
            keys = {
                "aws_access_key_id": access,
                "aws_secret_access_key": secret,
                "aws_session_token": token,
            }
        # Engines given credentials (worker processes, loop threads) share one session, so
        # botocore's models are loaded once per process, not once per loop (~40 ms each);
        # botocore sessions are not thread-safe, so clients are made from it one at a time.
        shared = session is _SESSION
        if shared:
            _SESSION_LOCK.acquire()
        try:
            cm = session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=region,
                config=aio_cfg,
                verify=verify,
                **keys,
            )
            self._client = await cm.__aenter__()
        finally:
            if shared:
                _SESSION_LOCK.release()
        self._client_cm = cm
        if self._credentials is not None and self._credentials[3] is not None:
            # Expiring credentials: refreshed through the caller before they expire. Both
            # transports sign with the signer's credentials object.
            self._client._request_signer._credentials = handed_on(self._credentials, self._ask)
        self._client.meta.events.register_first("needs-retry.s3", self._botocore_retry)
        self._client.meta.events.register_first("request-created.s3", _botocore_sent)
        await self.transport.start(
            self._client, cfg.transport == "http", (cfg.connect_timeout, cfg.read_timeout)
        )

    async def frozen_credentials(self) -> Handed | None:
        """The client's credentials as they are now ``(access key, secret, token, expiry)``,
        refreshed first when they are due, to hand on to worker processes and loop threads;
        None when there are none. Never logged."""
        return await current(await self.client())

    async def upload_cost(self, nbytes: int, bucket: str, operation: str) -> int:
        """Memory one upload body of ``nbytes`` takes while in flight, charged to
        :attr:`upload_budget`: the bytes themselves, and when botocore sends it over TLS their
        encrypted copies too (aiohttp encrypts a whole body into its write buffer at once; the
        lean path writes a slice at a time under flow control)."""
        client = await self.client()
        if not str(client.meta.endpoint_url).startswith("https:"):
            return nbytes
        lean = await self.lean(bucket, operation) is not None
        return nbytes if lean else nbytes * TLS_COPIES

    @property
    def region(self) -> str | None:
        """The region the started client signs for."""
        return self._client.meta.region_name if self._client is not None else self._region

    async def lean(self, bucket: str, operation: str) -> HttpGetter | None:
        """The lean HTTP path when it takes ``operation`` on ``bucket``, else None (botocore
        takes it). A failure of the lean path goes to ``self.transport.hand_over``."""
        await self.client()
        return await self.transport.lean(bucket, operation)

    async def transport_for(self, bucket: str) -> str:
        """``"lean"`` or ``"botocore"``: the path requests for ``bucket`` take (decided now if
        not yet)."""
        await self.client()
        await self.transport.lean(bucket, "GetObject")  # decides, if not yet
        return self.transport.path_for(bucket) or "botocore"

    def admitted(self, running: int) -> bool:
        """May a batch start one more object, with ``running`` in progress? Up to the
        limiter's target (the plan's start, as probes have moved it); one held back is demand
        the limiter counts as queued."""
        return self.limiter.admits(running)

    def slot(self, nbytes: int = 0, progress: list[int] | None = None) -> _Slot:
        """``async with engine.slot() as client``: one request in flight, through the engine's
        single (adaptive) concurrency limiter, which also learns from the outcome and from
        the bytes moved (``nbytes``, or what a ``progress`` counter advanced)."""
        return _Slot(self, nbytes, progress)

    def _botocore_retry(
        self,
        attempts: int = 1,
        response: Any = None,
        caught_exception: BaseException | None = None,
        request_dict: Any = None,
        **_: Any,
    ) -> bool | None:
        """botocore's ``needs-retry`` hook, called after every attempt of its requests before
        its own retry handler: counts throttling toward the limiter, vetoes a retry once
        ``max_attempts`` or ``max_retry_time`` is spent, else lets botocore decide."""
        context = request_dict.get("context", {}) if isinstance(request_dict, dict) else {}
        now = time.monotonic()
        started = context.setdefault("s3fast_started", now)  # set when first sent
        failed = caught_exception is not None
        if response is not None:
            http_response, parsed = response
            status = getattr(http_response, "status_code", 200)
            code = (parsed or {}).get("Error", {}).get("Code")
            failed = status >= 500 or status == 429 or code in THROTTLE_CODES
            if status in THROTTLE_STATUS or code in THROTTLE_CODES:
                self.limiter.throttle()
        if not failed:
            return None
        if attempts >= self.config.max_attempts or now - started >= self.config.max_retry_time:
            self.gave_up += 1
            return False
        self.retries += 1
        return None

    def stats(self) -> TransferStats:
        lim = self.limiter
        return TransferStats(
            max_concurrency=lim.maximum,
            start_limit=self.config.max_concurrency,
            limit=int(lim.limit),
            lowest_limit=lim.lowest,
            highest_limit=lim.highest,
            probes=lim.probes,
            probes_reverted=lim.reverted,
            stepped_back=lim.stepped_back,
            in_flight=lim.in_flight,
            throttled=lim.throttled,
            limit_cuts=lim.cuts,
            retries=self.retries,
            gave_up=self.gave_up,
        )

    async def throttle(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of the ``max_bandwidth`` budget; returns at once when unset."""
        if self._bandwidth is not None and nbytes > 0:
            delay = self._bandwidth.reserve(nbytes)
            if delay > 0:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self.transport.close()
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's client, connections and limiter (bound to
        its event loop; never closed here, see :mod:`s3fast._fork`), keeping the plan and
        what was learned about the server. The next request starts a client of our own."""
        _fork.orphan(self._client_cm, self._client, self.transport, self.limiter, self._scouted)
        self._client = self._client_cm = None
        self.transport = Transport()
        self._start_lock = None
        self._scouted = None
        self.limiter = AdaptiveLimiter(self.config.max_concurrency, self.concurrency)


# Failures that a (ranged) re-request can resume: broken bodies, 5xx answers, timeouts.
RESUMABLE: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


BACKOFF_BASE = 0.1  # seconds: the first retry waits up to this long
BACKOFF_MAX = 5.0  # seconds: no wait is longer


def backoff_delay(attempt: int) -> float:
    """Full jitter: uniform in ``[0, min(BACKOFF_MAX, BACKOFF_BASE * 2**(attempt - 1))]``."""
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempt - 1, 32)))


def now() -> float:
    """The clock of retry deadlines (monotonic seconds)."""
    return time.monotonic()


def _botocore_sent(request: Any = None, **_: Any) -> None:
    """botocore's ``request-created`` hook (each attempt, after its slot is taken): the
    request's retry clock starts at its first attempt (see ``Engine._botocore_retry``)."""
    context = getattr(request, "context", None)
    if isinstance(context, dict):
        context.setdefault("s3fast_started", now())


# The retried request's first send, once it happened: a list that a :class:`RetryClock` sets
# for its task and the first slot taken under it fills.
_FIRST_SENT: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "s3fast_first_sent", default=None
)


class RetryClock:
    """``max_retry_time``'s clock for one request and its retries: ``with RetryClock() as
    clock:`` around the retry loop; :attr:`started` is when the request first took a slot
    (was sent), so waiting in the limiter's queue (long while the server throttles) or for
    bandwidth does not use up the time to retry."""

    def __enter__(self) -> RetryClock:
        self._sent: list[float] = []
        self._entered = now()  # the start if no slot is taken under the clock (one held)
        self._token = _FIRST_SENT.set(self._sent)
        return self

    def __exit__(self, *exc: object) -> None:
        _FIRST_SENT.reset(self._token)

    @property
    def started(self) -> float:
        return self._sent[0] if self._sent else self._entered


async def backoff(attempt: int, engine: Engine | None = None, started: float | None = None) -> bool:
    """After failed try number ``attempt`` (1-based) of a request first tried at ``started``
    (:func:`now`): if another try may start, sleep (full jitter) and return True; if the
    attempts (``max_attempts``) or the time (``max_retry_time``) are spent, or the sleep would
    end past that time, return False at once: no sleep after the last try.

    Without ``engine``: just the sleep (the caller bounds the attempts)."""
    delay = backoff_delay(attempt)
    if engine is not None:
        cfg = engine.config
        elapsed = now() - (started if started is not None else now())
        if attempt >= cfg.max_attempts or elapsed + delay >= cfg.max_retry_time:
            engine.gave_up += 1
            return False
        engine.retries += 1
    await asyncio.sleep(delay)
    return True


async def retrying(engine: Engine, call: Callable[[], Awaitable[R]]) -> R:
    """``await call()``, retried with :func:`backoff` on transient failures. For the lean
    transport only: botocore retries its own requests. A :class:`ProtocolSurprise` is not
    retried: the request belongs to botocore."""
    attempt = 0
    with RetryClock() as clock:
        while True:
            try:
                return await call()
            except ProtocolSurprise:
                raise
            except RESUMABLE as exc:
                engine.limiter.observe(exc)  # a retry inside a held slot (UploadPart)
                attempt += 1
                if not await backoff(attempt, engine, clock.started):
                    raise


async def bounded_map(
    fn: Callable[[T], Awaitable[R]],
    items: Sequence[T] | Iterable[T],
    window: int,
    admit: Callable[[int], bool] | None = None,
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``window`` running at once, and each
    started only when ``admit(running)`` allows it (the engine's: objects in progress follow
    the request limit as probes move it), results in input order. The first failure cancels
    the rest, waits for their cleanup, and is raised."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    feed = iter(enumerate(items))
    running = 0
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal running
        for idx, item in feed:
            while admit is not None and running and not admit(running):
                finished.clear()
                await finished.wait()
            running += 1
            try:
                results[idx] = await fn(item)
            finally:
                running -= 1
                finished.set()

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(window, len(items)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            # Once each: a second cancel would interrupt a task's own cleanup (removing its
            # temp file, aborting its upload) half-way. A cancelled gather has already
            # cancelled them.
            if not task.done() and not task.cancelling():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results
