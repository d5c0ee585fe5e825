"""Fork safety: state tied to event loops, threads, connections, worker processes and temp dirs
belongs to the process that made it.

A child made by ``os.fork()`` (multiprocessing's ``fork`` start method, Metaflow's
``parallel_map``) has copies of its parent's objects but none of its threads: event loops that
ran there never run again, and sockets, worker processes and temp dirs are the parent's. An
object holding such state records its owner (:class:`Owner`); the first use in another process
rebuilds that state afresh (``Owner.claim``). What it drops is handed to :func:`orphan`, which
keeps it alive for the life of the process, through interpreter exit, and never closes it:
closing would shut the parent's connections or send on them, terminate its workers, or delete
its temp dirs, and letting it be collected would run finalizers that do the same (or warn).
The child keeps its inherited copies of the parent's descriptors open until it exits; nothing
is sent on them. (Temp dirs: see :mod:`s3fast.tempdirs`.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

_orphans: list[Any] = []
_lock = threading.RLock()


def _keep_forever(obj: Any) -> None:
    """One reference to ``obj`` that is never dropped, not even when the interpreter clears
    the modules at exit: a child of a bare ``fork()`` that exits normally must not collect
    the parent's state either (uvloop's handles, collected, take their sockets out of the
    epoll set that the child shares with the parent)."""
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except Exception:  # not CPython: the module's own reference is all there is
        pass


_keep_forever(_orphans)


def orphan(*objs: Any) -> None:
    """Keep ``objs`` (a parent's state, seen in a forked child) alive and untouched."""
    _orphans.extend(obj for obj in objs if obj is not None)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Owner:
    """The process whose state an object holds."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def claim(self, rebuild: Callable[[], None]) -> bool:
        """In a process other than the owner's (a forked child): call ``rebuild`` (once, even
        if several threads get here together) and make this process the owner. Whether it
        rebuilt."""
        pid = os.getpid()
        if self.pid == pid:
            return False
        with _lock:
            if self.pid == pid:
                return False
            rebuild()
            self.pid = pid
            return True


__all__ = ["Owner", "orphan"]
