"""The adaptive limiter: AIMD back-off, probes that are kept only while throughput grows, steps
back when latency collapses. Driven on a virtual clock (each test takes milliseconds and
always sees the same sequence of events); one test against a real server far away."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
from collections.abc import Callable

import pytest

from s3fast import S3, S3GetObject, TransferConfig
from s3fast._engine.limiter import CUT_INTERVAL, AdaptiveLimiter

from ._internals import engine_of
from .proxy import FaultProxy, Faults


class Clock:
    """Virtual time in seconds, moved only by the simulation."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# A service model: given the virtual time a request is sent, when its answer arrives.
Service = Callable[[float], float]


def latency_bound(latency: float = 0.02) -> Service:
    """Every request takes ``latency``, however many are in flight (a far-away server)."""
    return lambda now: now + latency


def capacity_bound(slots: int = 8, latency: float = 0.02) -> Service:
    """``slots`` requests served at once, ``latency`` each, the rest queue (first come,
    first served): more in flight only makes each request wait longer."""
    free = [0.0] * slots

    def answer(now: float) -> float:
        start = max(now, heapq.heappop(free))
        heapq.heappush(free, start + latency)
        return start + latency

    return answer


async def simulate(
    limiter: AdaptiveLimiter, clock: Clock, service: Service, seconds: float
) -> None:
    """Keep twice as many requests waiting as the limiter may admit, for ``seconds`` of
    virtual time. Time moves to the next answer only when every client is blocked (on the
    limiter or on its answer), so the run is the same every time."""
    clients = limiter.maximum * 2
    answers: list[tuple[float, int, asyncio.Future[None]]] = []
    order = itertools.count()  # ties: answers in the order they were sent
    stop = clock.now + seconds
    loop = asyncio.get_running_loop()

    async def client() -> None:
        while clock.now < stop:
            await limiter.acquire()
            answer = loop.create_future()
            heapq.heappush(answers, (service(clock.now), next(order), answer))
            try:
                await answer
            finally:
                limiter.release(None, 0)

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    try:
        while not all(task.done() for task in tasks):
            blocked = len(answers) + len(limiter._waiters)
            if blocked < sum(not task.done() for task in tasks) or not answers:
                await asyncio.sleep(0)  # someone can still run at this instant
                continue
            when, _, answer = heapq.heappop(answers)
            clock.now = max(clock.now, when)
            answer.set_result(None)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def limiter_at(start: int, maximum: int) -> tuple[AdaptiveLimiter, Clock]:
    clock = Clock()
    return AdaptiveLimiter(start, maximum, clock=clock), clock


@pytest.mark.unit
@pytest.mark.asyncio
async def test_limiter_grows_while_throughput_grows() -> None:
    """A latency-bound service: each step up pays, so the limit climbs from its start to the
    ceiling and stays there."""
    limiter, clock = limiter_at(16, 64)
    await simulate(limiter, clock, latency_bound(), 2.5)
    assert limiter.target == limiter.maximum == 64 and int(limiter.limit) == 64
    assert limiter.probes >= 6 and limiter.reverted == 0 and limiter.in_flight == 0
    assert limiter.highest == 64 and limiter.stepped_back == 0


@pytest.mark.unit
@pytest.mark.asyncio
async def test_limiter_keeps_its_level_when_more_does_not_help() -> None:
    """A capacity-bound service (8 at once): a step up is taken back, and not tried again for
    a while (20 windows of at least 0.1 s)."""
    limiter, clock = limiter_at(16, 64)
    await simulate(limiter, clock, capacity_bound(), 1.5)
    assert limiter.target == 16 and int(limiter.limit) == 16
    assert limiter.probes == limiter.reverted == 1 and limiter.highest == 20


@pytest.mark.unit
@pytest.mark.asyncio
async def test_limiter_probes_again_after_its_hold() -> None:
    """Still capacity-bound after the hold: the limiter tries once more, and takes it back
    again; it never settles above its start."""
    limiter, clock = limiter_at(16, 64)
    await simulate(limiter, clock, capacity_bound(), 4.0)
    assert limiter.probes == limiter.reverted >= 2
    assert limiter.target == 16 and limiter.highest == 20


@pytest.mark.unit
@pytest.mark.asyncio
async def test_limiter_steps_back_when_latency_collapses() -> None:
    """Latency-bound at first (the limit climbs to the ceiling), then saturated: 8 served at
    once, so the other 56 only queue and each waits 8 times longer for no more throughput.
    The limiter steps back toward its start."""
    limiter, clock = limiter_at(16, 64)
    await simulate(limiter, clock, latency_bound(), 2.5)
    assert limiter.target == 64 and limiter.stepped_back == 0
    await simulate(limiter, clock, capacity_bound(), 2.0)
    # 64 -> 51 -> 40 -> 32 -> 25: at 25, each request waits about 3 times its time at 64
    assert limiter.target == int(limiter.limit) == 25, limiter.target
    assert limiter.stepped_back == 4 and limiter.reverted == 0 and limiter.in_flight == 0


@pytest.mark.unit
def test_limiter_throttling_ends_a_probe() -> None:
    limiter, _ = limiter_at(16, 64)
    limiter._queued = True
    limiter._window(90.0, 0.1)  # the first window: ignored
    limiter._window(100.0, 0.1)  # measured at 16: probe 20
    assert limiter.target == 20 and limiter._phase == "settle"
    limiter.throttle()  # SlowDown: back to 16, then halved
    assert limiter.target == 16 and limiter.limit == 8.0 and limiter.reverted == 1


@pytest.mark.unit
def test_throttling_halves_the_limit_at_most_once_per_interval() -> None:
    """AIMD: a burst of overload answers is one cut; successes win back 1/limit each, up to
    the target."""
    limiter, clock = limiter_at(16, 16)
    limiter.throttle()
    limiter.throttle()  # the same burst: not cut again
    assert limiter.limit == 8.0 and limiter.cuts == 1 and limiter.throttled == 2
    clock.now += CUT_INTERVAL
    limiter.throttle()
    assert limiter.limit == 4.0 and limiter.cuts == 2 and limiter.lowest == 4
    for _ in range(4):  # each success adds 1/limit
        limiter._count(1)
        limiter.release(None, 0)
    assert 4.9 < limiter.limit < 5.0
    for _ in range(200):
        limiter._count(1)
        limiter.release(None, 0)
    assert limiter.limit == 16.0 == limiter.target


@pytest.mark.timeout(120)
def test_concurrency_grows_against_a_slow_server(seaweed_bucket: str, proxy: FaultProxy) -> None:
    """Every answer held 100 ms by the proxy (a far-away server): the plan's start leaves
    throughput on the table, and the limiter raises the number of requests in flight."""
    data = os.urandom(64 * 1024)
    one = TransferConfig(processes=1)  # the rest from the plan: the limiter may grow
    with S3(s3root=f"s3://{seaweed_bucket}", endpoint_url=proxy.url, config=one) as s3:
        s3.put("k", data)
        proxy.set(Faults(stall=0.1, seconds=60))
        ranges = [S3GetObject("k", i * 16, 16) for i in range(1500)]
        got = s3.get_many(ranges)
        assert [o.blob for o in got] == [data[i * 16 : i * 16 + 16] for i in range(1500)]
        stats = s3.stats
        assert stats.start_limit == engine_of(s3).plan.max_concurrency
    proxy.set(Faults())
    assert stats.highest_limit >= stats.start_limit * 1.5, stats
    assert stats.limit > stats.start_limit and stats.in_flight == 0, stats
