"""``bounded_map``: the engine's one way to run many coroutines, bounded and admitted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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
