"""One background event loop for the process, and ``run(coro)`` to call into it from sync code.

Knows nothing about S3. The loop (uvloop when installed) runs on a daemon thread started on
first use. ``run`` waits for the coroutine; if the waiting thread is interrupted (Ctrl-C, or
any ``BaseException``), the task on the loop is cancelled and ``run`` waits, bounded, for its
cleanup (``finally`` blocks that abort uploads or delete temp files) before re-raising.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CLEANUP_TIMEOUT = 30.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = new_event_loop()
            ready = threading.Event()

            def _main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=_main, name="s3fast-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def _reset_after_fork() -> None:
    # The loop thread does not exist in a forked child; start a fresh one on next use.
    global _loop, _thread, _lock
    _loop, _thread, _lock = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run(coro: Coroutine[Any, Any, T], discard: Callable[[T], None] | None = None) -> T:
    """Run ``coro`` on the shared loop and return its result (or raise its exception).

    Interrupted (Ctrl-C) after ``coro`` finished but before its result reached the caller,
    the result is handed to ``discard`` (downloads: their files are removed), since no one
    will see it."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("s3fast's sync API cannot be called from its own event loop")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "s3fast.S3 is the synchronous API; inside a running event loop use s3fast.AsyncS3"
        )
    loop = get_loop()
    done = threading.Event()
    finished: list[T] = []

    async def _wrapped() -> T:
        try:
            result = await coro
            finished.append(result)
            return result
        finally:
            done.set()

    fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(_wrapped(), loop)
    try:
        # Short waits keep the calling thread responsive to Ctrl-C on every platform.
        while not fut.done():
            concurrent.futures.wait([fut], timeout=0.25)
        return fut.result()
    except BaseException:
        if not fut.done():
            fut.cancel()  # cancels the task on the loop
            done.wait(CLEANUP_TIMEOUT)
        if finished and discard is not None:
            discard(finished[0])
        raise
