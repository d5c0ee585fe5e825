"""Scale-out for downloads into memory: N event loops in threads of this process.

Worker processes (``pool.py``) suit downloads into files and uploads: their bytes go between
the disk and the network without passing through the parent. A download into memory must end
in the caller's process, and from a worker process that costs a second copy of every byte and
its page faults (about 0.8 s of CPU per GiB more, measured on the 2-core VM). Threads avoid
that: the copy from the socket into the object's memory is made by libuv's ``read()`` with the
GIL released (uvloop runs its loop without the GIL and takes it only for callbacks), so N
loops copy on N cores, and the bodies land straight in the ``bytes`` handed to the caller.
What needs the GIL per request (signing, headers, scheduling) is small next to the copy.

- **Loops** are started on the first big batch (daemon threads, one uvloop each) and reused
  until the client closes. Each runs its own :class:`Engine` (connection pool and adaptive
  limiter, with its share of the client's concurrency), handed the caller's credentials with
  their expiry; expiring ones are refreshed before they expire by asking the caller's engine,
  on the caller's loop (each loop keeps its own refreshable copy: botocore's refresh lock
  belongs to one event loop), so a long batch never signs with expired keys.
- **Splitting** is as for worker processes: by size when sizes are known, else round-robin.
  Results come back in input order.
- **Progress** is reported per range on the caller's loop.
- **Failure and cancellation**: the first error cancels the other loops' shares, which are
  waited for, then it is raised. Cancelling the caller (Ctrl-C through the sync bridge, a
  timeout) cancels every share and waits for them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

from .. import _fork
from ..config import TransferConfig
from ..errors import MetaflowS3NotFound
from ..urls import ByteRange, parse
from . import fanout
from .batch import bounded_map
from .engine import Engine
from .fanout import Credentials, assign, share_of
from .get import Fetched, fetch
from .sinks import MemorySink


class _Share:
    """One loop's part of a batch, as a task on that loop that can be cancelled from the
    caller's thread (the cancel is run on the loop, so it cannot race the task's start)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False

    async def run(self, work: Callable[[], Any]) -> Any:
        if self.cancelled:
            raise asyncio.CancelledError
        self.task = asyncio.current_task()
        return await work()

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


@dataclasses.dataclass
class _Loop:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    engine: Engine | None = None
    creds: Credentials | None = None


class Loops:
    """``size`` event loops in threads, for in-memory batches of at least ``fanout.MIN_BATCH``."""

    def __init__(self, size: int, config: TransferConfig, engine: Engine) -> None:
        self.size = size
        self.config = config  # what the caller gave (None fields: each loop's engine plans)
        self.engine = engine  # the caller's: its endpoint, region, credentials and plan
        self._loops: list[_Loop] = []
        self._lock: asyncio.Lock | None = None

    def worth_fanning_out(self, count: int) -> bool:
        """Is a batch of ``count`` objects worth fanning out?"""
        return self.size > 1 and count >= fanout.MIN_BATCH

    async def _ensure(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._loops:
                return
            from .._bridge import new_event_loop

            for n in range(self.size):
                loop = new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"s3fast-io-{n}", daemon=True
                )
                thread.start()
                self._loops.append(_Loop(loop, thread))

    async def _engine_for(
        self, slot: _Loop, creds: Credentials | None, caller: asyncio.AbstractEventLoop
    ) -> Engine:
        """Run on ``slot``'s loop: its engine for these credentials (expiring ones refresh
        themselves through the caller's engine, so the engine stays)."""
        refreshing = (
            creds is not None and slot.creds is not None and bool(creds[3] and slot.creds[3])
        )
        if slot.engine is None or (creds != slot.creds and not refreshing):
            old, slot.engine = slot.engine, None
            if old is not None:
                await old.close()
            config, ceiling = share_of(self.config, self.engine, self.size)
            slot.engine = Engine(
                config,
                self.engine.endpoint_url,
                credentials=creds,
                region=self.engine.region,
                ceiling=ceiling,
                spec=self.engine.spec.portable(self.engine.region),
                ask=functools.partial(self._ask, caller),
            )
            slot.creds = creds
        return slot.engine

    async def _ask(self, caller: asyncio.AbstractEventLoop) -> Credentials | None:
        """Run on a loop thread: the caller's current credentials, fetched on its loop
        (refreshed there when due)."""
        asking = asyncio.run_coroutine_threadsafe(self.engine.frozen_credentials(), caller)
        return await asyncio.wrap_future(asking)

    async def get(
        self,
        jobs: list[tuple[str, ByteRange | None]],
        *,
        return_missing: bool,
        sizes: list[int | None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_object: Callable[[], None] | None = None,
    ) -> list[Fetched | None]:
        """Download ``(url, range)`` jobs into memory; results in input order (None: missing)."""
        await self._ensure()
        await self.engine.client()  # resolves region (and credentials) once, here
        creds = await self.engine.frozen_credentials()
        caller = asyncio.get_running_loop()

        def on_caller(fn: Callable[..., None] | None) -> Callable[..., None] | None:
            if fn is None:
                return None

            def call(*args: Any) -> None:
                caller.call_soon_threadsafe(fn, *args)

            return call

        report_bytes, report_object = on_caller(on_bytes), on_caller(on_object)
        results: list[Fetched | None] = [None] * len(jobs)
        parts = assign(len(jobs), self.size, sizes)

        def work(slot: _Loop, idxs: list[int]) -> Callable[[], Any]:
            async def share() -> None:
                engine = await self._engine_for(slot, creds, caller)

                async def one(idx: int) -> None:
                    url, brange = jobs[idx]
                    try:
                        got = await fetch(
                            engine,
                            parse(url),
                            url,
                            brange,
                            MemorySink(),
                            report_bytes,
                            sizes[idx] if sizes else None,
                        )
                    except MetaflowS3NotFound:
                        if not return_missing:
                            raise
                        got = None
                    results[idx] = got
                    if report_object is not None:
                        report_object()

                await bounded_map(one, idxs, engine.concurrency, engine.admitted)

            return share

        shares: list[tuple[_Loop, _Share]] = []
        waits: list[asyncio.Future[Any]] = []
        for slot, idxs in zip(self._loops, parts, strict=True):
            if idxs:
                share = _Share()
                done = asyncio.run_coroutine_threadsafe(share.run(work(slot, idxs)), slot.loop)
                shares.append((slot, share))
                waits.append(asyncio.wrap_future(done))
        try:
            for first in asyncio.as_completed(waits):
                await first  # the first failure (or our cancellation) ends the batch
        except BaseException:
            for slot, share in shares:
                slot.loop.call_soon_threadsafe(share.cancel)
            await asyncio.shield(asyncio.wait(waits))  # every share has stopped
            raise
        return results

    def after_fork(self) -> None:
        """In a forked child: the loop threads did not come along (their loops, engines and
        connections are the parent's; see :mod:`s3fast._fork`). The next big batch starts
        loops of our own."""
        _fork.orphan(self._loops, self._lock)
        self._loops, self._lock = [], None

    async def close(self) -> None:
        loops, self._loops = self._loops, []
        for slot in loops:
            if slot.engine is not None:
                done = asyncio.run_coroutine_threadsafe(slot.engine.close(), slot.loop)
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(done)
            slot.loop.call_soon_threadsafe(slot.loop.stop)
        for slot in loops:
            await asyncio.get_running_loop().run_in_executor(None, slot.thread.join)
            slot.loop.close()


__all__ = ["Loops"]
