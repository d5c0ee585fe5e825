"""One background event loop for the process, and ``run(coro)`` to call into it from sync code.

Knows nothing about S3. The loop (uvloop when installed) runs on a daemon thread started on
first use. ``run`` waits for the coroutine; if the waiting thread is interrupted (Ctrl-C, or
any ``BaseException``), the task on the loop is cancelled and ``run`` waits, bounded, for its
cleanup (``finally`` blocks that abort uploads or delete temp files) before re-raising.

``run`` works from any thread but the loop's own: also from one whose own event loop is running
(a Jupyter kernel runs cells inside one; an async web handler may call sync code), which is
blocked for the call, as any sync I/O blocks it. The first such call outside IPython warns once
(:class:`BlockingCallWarning`): async code is better served by ``AsyncS3``. A forked child
starts a loop of its own on first use.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import _fork

T = TypeVar("T")

CLEANUP_TIMEOUT = 30.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_warned = False  # BlockingCallWarning was given (once per process)


class BlockingCallWarning(RuntimeWarning):
    """The sync ``S3`` API was called from a thread whose event loop is running (not in
    IPython/Jupyter, where that is the normal case): that loop waits for the call."""


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
    # The loop thread does not exist in a forked child; start a fresh one on next use. The
    # parent's loop is kept, never closed or collected (see s3fast._fork).
    global _loop, _thread, _lock
    _fork.orphan(_loop, _thread)
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
        raise RuntimeError(
            "s3fast's sync API (s3fast.S3) was called from s3fast's own event loop thread "
            "(from a progress callback?), where it would wait forever; use s3fast.AsyncS3 there"
        )
    if not _warned and _caller_loop_running():
        try:
            _warn_blocking()
        except BaseException:  # the warning made an error by the caller's filters
            coro.close()
            raise
    loop = get_loop()
    call = _Call(coro)
    try:
        loop.call_soon_threadsafe(call.start)
        call.scheduled = True
        # Short waits keep the calling thread responsive to Ctrl-C on every platform.
        while not call.ended.acquire(timeout=0.25):
            pass
        return call.task.result()  # type: ignore[union-attr]
    except BaseException:
        if not call.scheduled:
            coro.close()
            raise
        task = call.wait_for_cleanup(loop)
        if task is not None and task.done() and not task.cancelled():
            if task.exception() is None and discard is not None:
                discard(task.result())
        raise


class _Call:
    """One ``run``: ``start`` makes the task on the loop, whose end releases ``ended``.

    A plain lock and a done callback, rather than ``run_coroutine_threadsafe`` and a
    ``concurrent.futures`` wait: 20-40 us less a call on the 2-core VM (measured), which a
    short-lived ``S3`` pays twice (its call, its close)."""

    __slots__ = ("coro", "ended", "scheduled", "task")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.ended = threading.Lock()
        self.ended.acquire()
        self.scheduled = False  # call_soon_threadsafe(start) returned
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:  # on the loop
        self.task = asyncio.ensure_future(self.coro)
        self.task.add_done_callback(self._end)

    def _end(self, _task: asyncio.Task[Any]) -> None:  # on the loop
        self.ended.release()

    def _cancel(self) -> None:  # on the loop, after start (the loop runs callbacks in order)
        if self.task is not None:
            self.task.cancel()

    def wait_for_cleanup(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        """Interrupted: cancel the task (if it has not ended) and wait, bounded, for its
        cleanup. The task, once started."""
        task = self.task
        if task is None or not task.done():
            loop.call_soon_threadsafe(self._cancel)
            self.ended.acquire(timeout=CLEANUP_TIMEOUT)
        return self.task


def _caller_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    try:
        return get is not None and get() is not None
    except Exception:
        return False


def _warn_blocking() -> None:
    global _warned
    _warned = True
    if not _in_ipython():
        warnings.warn(
            "s3fast.S3 was called in a thread whose event loop is running: the loop waits "
            "until the call returns. In async code, use s3fast.AsyncS3 (same methods, awaited). "
            "This warning is given once.",
            BlockingCallWarning,
            stacklevel=4,  # the caller of the S3 method
        )
