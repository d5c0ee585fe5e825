"""Progress reports for batch calls: a small typed record and the counter that emits it.

Every batch method of ``S3`` and ``AsyncS3`` takes a keyword-only ``progress=`` callable. It is
called with a :class:`Progress` once when the call starts, then after each completed byte range,
multipart part or object (never per socket read), on s3fast's event loop thread: keep it quick,
and hand heavy work to another thread. An exception it raises fails the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Progress",
    "ProgressCallback",
]


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a batch call stands.

    Attributes
    ----------
    objects_done : int
        Objects completed (downloaded, uploaded, deleted or copied).
    objects_total : int or None
        Objects in the call, when known.
    bytes_done : int
        Bytes transferred by completed ranges and parts (0 for deletes).
    bytes_total : int or None
        Bytes in the call, when known before transferring (listings and local files give
        sizes; a ``get_many`` of keys does not).
    """

    objects_done: int
    objects_total: int | None
    bytes_done: int
    bytes_total: int | None


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """Counts one call's progress and reports it to the callback."""

    __slots__ = ("bytes_done", "bytes_total", "callback", "objects_done", "objects_total")

    def __init__(
        self, callback: ProgressCallback, objects_total: int | None, bytes_total: int | None
    ) -> None:
        self.callback = callback
        self.objects_done = 0
        self.objects_total = objects_total
        self.bytes_done = 0
        self.bytes_total = bytes_total
        self.emit()

    @classmethod
    def of(
        cls,
        callback: ProgressCallback | None,
        objects_total: int | None,
        bytes_total: int | None = None,
    ) -> Tracker | None:
        """A tracker, or None (no cost at all) when there is no callback."""
        if callback is None:
            return None
        if not callable(callback):
            raise TypeError(f"progress must be callable, got {callback!r}")
        return cls(callback, objects_total, bytes_total)

    def emit(self) -> None:
        self.callback(
            Progress(self.objects_done, self.objects_total, self.bytes_done, self.bytes_total)
        )

    def add_bytes(self, n: int) -> None:
        """A range or part of ``n`` bytes completed."""
        if n:
            self.bytes_done += n
            self.emit()

    def add_objects(self, n: int = 1) -> None:
        """``n`` objects completed."""
        if n:
            self.objects_done += n
            self.emit()


def on_bytes(tracker: Tracker | None) -> Callable[[int], None] | None:
    """The per-range/part hook the engine calls, or None."""
    return tracker.add_bytes if tracker is not None else None
