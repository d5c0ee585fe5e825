"""Byte budgets of one engine: :class:`ByteBudget` bounds the upload buffers held at once,
:class:`Bandwidth` paces transfers to ``max_bandwidth``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

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
