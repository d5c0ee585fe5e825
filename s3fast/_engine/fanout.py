"""What the two fan-outs share (worker processes, :mod:`.pool`; event loops in threads,
:mod:`.loops`): when a batch is worth fanning out, each worker's share of the client's
config, and how jobs are split between workers."""

from __future__ import annotations

import dataclasses
import heapq
import math
import os

from ..config import TransferConfig
from .creds import Handed
from .engine import Engine

MIN_BATCH = 8  # fewer objects than this stay in the calling process
INLINE_MAX = 256 * 1024  # in-memory bodies up to this size travel inside the result message
# An in-memory batch whose median body is bigger than this goes to event loops in threads
# (the copy from the socket is the work), a smaller one to worker processes (Python per
# request is the work): see AsyncS3._bodies_are_big.
THREADS_ABOVE = 256 * 1024
SIZE_OVERHEAD = 256 * 1024  # per-object cost, in bytes, when balancing workers by size

Credentials = Handed  # (access key, secret, token, expiry): see creds.py


def processes_for(engine: Engine) -> int:
    """The engine's plan's processes (``TransferConfig.processes``, else the machine's plan).
    Always 1 off POSIX (the workers talk over socketpairs handed down by ``pass_fds``)."""
    return engine.plan.processes if os.name == "posix" else 1


def share_of(config: TransferConfig, engine: Engine, size: int) -> tuple[TransferConfig, int]:
    """One of ``size`` workers' (processes' or loop threads') config and concurrency ceiling:
    one process each, a share of the client's concurrency (the plan's at least 16 each, a
    given one split exactly), its ceiling, its ``max_bandwidth`` (a cap for the client as a
    whole) and its memory budget (a given one is the client's, split; the plan's is already
    per process)."""
    start = math.ceil(engine.config.max_concurrency / size)
    budget = engine.config.memory_budget
    share = dataclasses.replace(
        config,
        processes=1,
        max_concurrency=max(1, start) if config.max_concurrency else max(16, start),
        max_bandwidth=max(1, config.max_bandwidth // size) if config.max_bandwidth else None,
        memory_budget=max(1, budget // size) if config.memory_budget else budget,
    )
    return share, math.ceil(engine.concurrency / size)


def assign(count: int, workers: int, sizes: list[int | None] | None = None) -> list[list[int]]:
    """Indices ``0..count-1`` split between ``workers``, each list in input order: balanced by
    size (largest first onto the least loaded) when sizes are known, else round-robin."""
    if sizes is None:
        return [list(range(w, count, workers)) for w in range(workers)]
    heap = [(0, w) for w in range(workers)]
    bins: list[list[int]] = [[] for _ in range(workers)]
    for idx in sorted(range(count), key=lambda i: -(sizes[i] or 0)):
        load, w = heapq.heappop(heap)
        bins[w].append(idx)
        heapq.heappush(heap, (load + (sizes[idx] or 0) + SIZE_OVERHEAD, w))
    return [sorted(b) for b in bins]
