"""Machine profiles: run a client as if on a smaller (or named EC2) machine.

A profile pins each worker to a CPU set (``os.sched_setaffinity`` before any client import)
and sets ``S3FAST_MAX_CONCURRENCY`` to what s3fast would choose on that many vCPUs. Memory
and network figures are descriptive only: nothing here throttles them. A profile asking for
more CPUs than this machine has runs on all of them, and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    vcpus: int | None  # None: every CPU of this machine, s3fast's own defaults
    memory_gib: float | None = None
    network_gbit: float | None = None
    note: str = ""


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("all", None, note="every CPU of this machine, no overrides"),
        Profile("1cpu", 1),
        Profile("2cpu", 2),
        Profile("4cpu", 4),
        Profile("m5.large", 2, 8, 10, "network up to 10 Gbit/s"),
        Profile("m5.2xlarge", 8, 32, 10, "network up to 10 Gbit/s"),
        Profile("m6i.4xlarge", 16, 64, 12.5, "network up to 12.5 Gbit/s"),
        Profile("m7i.8xlarge", 32, 128, 12.5),
        Profile("c5n.9xlarge", 36, 96, 50),
        Profile("c5n.18xlarge", 72, 192, 100),
        Profile("c6in.8xlarge", 32, 64, 50),
        Profile("c6in.32xlarge", 128, 256, 200),
        Profile("p4d.24xlarge", 96, 1152, 400),
    ]
}


def available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def s3fast_concurrency(vcpus: int) -> int:
    """The same rule as ``s3fast.tuning.default_concurrency`` (not imported: the parent stays
    free of client imports), applied to the profile's nominal vCPUs."""
    return max(16, min(128, 16 * vcpus))


@dataclass(frozen=True)
class Resolved:
    profile: Profile
    cpus: list[int] | None  # None: no pinning
    env: dict[str, str]
    warning: str = ""

    def describe(self) -> str:
        p = self.profile
        bits = [p.name]
        if self.cpus is not None:
            bits.append(f"cpus={','.join(map(str, self.cpus))}")
        if "S3FAST_MAX_CONCURRENCY" in self.env:
            bits.append(f"S3FAST_MAX_CONCURRENCY={self.env['S3FAST_MAX_CONCURRENCY']}")
        if p.memory_gib:
            bits.append(f"{p.memory_gib:g} GiB (not enforced)")
        if p.network_gbit:
            bits.append(f"{p.network_gbit:g} Gbit/s (not enforced)")
        if self.warning:
            bits.append(self.warning)
        return ", ".join(bits)


def resolve(name: str, exclude: frozenset[int] = frozenset()) -> Resolved:
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return _resolve(PROFILES[name], exclude)


def pinned(vcpus: int, exclude: frozenset[int] = frozenset()) -> Resolved:
    """``<n>cpu``: the client pinned to ``vcpus`` CPUs (not those in ``exclude``)."""
    return _resolve(PROFILES.get(f"{vcpus}cpu") or Profile(f"{vcpus}cpu", vcpus), exclude)


def parse_cpus(raw: str) -> frozenset[int]:
    """``0-7,12`` -> {0..7, 12}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in raw.split(","))):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def _resolve(profile: Profile, exclude: frozenset[int]) -> Resolved:
    if profile.vcpus is None:
        if exclude:
            rest = [c for c in available_cpus() if c not in exclude]
            return Resolved(profile, rest or None, {})
        return Resolved(profile, None, {})
    have = [c for c in available_cpus() if c not in exclude] or available_cpus()
    warning = ""
    if profile.vcpus > len(have):
        warning = f"wants {profile.vcpus} CPUs, this machine has {len(have)}: using all of them"
    cpus = have[: profile.vcpus]
    env = {"S3FAST_MAX_CONCURRENCY": str(s3fast_concurrency(profile.vcpus))}
    return Resolved(profile, cpus, env, warning)
