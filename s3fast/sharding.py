"""``shard(objects, n)``: split objects into ``n`` groups balanced by bytes, for fan-out
(one Metaflow ``foreach`` branch, one process or one machine per group)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = [
    "shard",
]

T = TypeVar("T")


def _size_of(obj: Any) -> int:
    size = obj.size if hasattr(obj, "size") else obj[1]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{obj!r}: no size to shard by (got {size!r})")
    return size


def shard(objects: Iterable[T], n: int, *, size: Callable[[T], int] | None = None) -> list[list[T]]:
    """Split ``objects`` into ``n`` shards balanced by bytes.

    Greedy, largest first: each object goes to the shard with the fewest bytes so far (the
    lowest-numbered such shard on ties). The result is deterministic for the same input, every
    object lands in exactly one shard, and within a shard objects keep their input order. No
    shard holds more than the lightest one plus the largest object. There are always ``n``
    shards; some are empty when there are fewer than ``n`` objects.

    Parameters
    ----------
    objects : Iterable
        Objects with a ``size`` (such as the ``S3Object`` results of ``list_recursive`` or
        ``info_many``), or ``(anything, size)`` pairs.
    n : int
        Number of shards (at least 1).
    size : Callable, optional
        How to read an object's size in bytes, instead of ``.size`` / ``[1]``.

    Returns
    -------
    List[List]
        ``n`` lists of the input objects.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of shards must be an int >= 1, got {n!r}")
    items = list(objects)
    measure = size or _size_of
    sizes = [measure(obj) for obj in items]
    order = sorted(range(len(items)), key=lambda i: (-sizes[i], i))
    heap = [(0, shard_no) for shard_no in range(n)]
    members: list[list[int]] = [[] for _ in range(n)]
    for i in order:
        total, shard_no = heapq.heappop(heap)
        members[shard_no].append(i)
        heapq.heappush(heap, (total + sizes[i], shard_no))
    return [[items[i] for i in sorted(group)] for group in members]
