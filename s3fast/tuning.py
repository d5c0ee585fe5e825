"""Per-machine defaults: how many requests to keep in flight."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup quota)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = max(1, min(cpus, int(int(quota) / int(period) + 0.999)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_concurrency() -> int:
    """Requests in flight: enough to hide latency on a small machine, more with more cores,
    bounded so one process does not open thousands of sockets."""
    return max(16, min(128, 16 * usable_cpus()))
