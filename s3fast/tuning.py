"""The per-machine plan: what this machine offers, and the transfer settings that follow.

:func:`probe` reads what the machine offers (usable CPUs, memory, NIC speed, EC2 instance
type); :func:`plan` turns that into connections, range and part size, an in-flight memory
budget and a number of processes, each with a one-line reason. A :class:`~s3fast.TransferConfig`
field that is set (in code, or through its ``S3FAST_*`` variable for users of the sync facade)
wins over the plan. ``python -m s3fast.tuning`` prints the plan for this machine.

Inputs, and where they come from:

- CPUs: this process's affinity mask, lowered by a cgroup CPU quota (v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us``).
- Memory: ``MemAvailable`` (``/proc/meminfo``), lowered by the cgroup memory limit less its
  usage (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``).
- NIC: the fastest physical interface's ``/sys/class/net/*/speed`` (loopback and virtual
  interfaces skipped; virtio and ENA often report none). Else the instance type's bandwidth.
- Instance type: ``S3FAST_INSTANCE_TYPE``, else the EC2 instance metadata service (IMDSv2),
  asked only when DMI says the machine is made by Amazon and ``AWS_EC2_METADATA_DISABLED`` is
  not true, with a 0.3 s timeout, once per process, and never from a running event loop (a
  background thread asks instead, for clients made later). The type maps to its network
  bandwidth through :data:`INSTANCE_GBPS`, the one table of it.

The clients made within a second of each other share one probe (:func:`this_machine`): a new
``S3`` context reads no file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .config import ResolvedConfig, TransferConfig, _env_int, _env_size
from .limits import GiB, MiB

__all__ = [
    "INSTANCE_GBPS",
    "Machine",
    "Plan",
    "default_concurrency",
    "instance_gbps",
    "plan",
    "probe",
    "this_machine",
]

log = logging.getLogger(__name__)

# One event loop drives about 19 Gbit/s per core here (measured); plan with a little less.
GBPS_PER_PROCESS = 18.0
CPUS_PER_PROCESS_UNKNOWN_NIC, MAX_PROCESSES_UNKNOWN_NIC = 4, 8
# Connections per Gbit/s of NIC: one S3 connection carries roughly 0.5-0.7 Gbit/s.
CONNECTIONS_PER_GBPS = 2.0
CONNECTIONS_PER_CPU = 16
MIN_CONNECTIONS, MAX_CONNECTIONS = 16, 128
CEILING_FACTOR = 4  # the limiter may raise the planned connections up to this many times
FAST_NIC_GBPS = 25.0  # from here on, 16 MiB ranges and parts (fewer requests per byte)
MEMORY_FRACTION = 4  # the in-flight budget is at most 1/4 of the memory available
MIN_MEMORY_BUDGET = 32 * MiB
UNKNOWN_MEMORY_BUDGET = 2 * GiB
IMDS_TIMEOUT = 0.3
IMDS_HOST = "169.254.169.254"

# Network bandwidth in Gbit/s by EC2 instance family and size (the "up to" figure for burstable
# sizes). The one place s3fast keeps it; unknown types fall back to the NIC's speed.
INSTANCE_GBPS: dict[str, dict[str, float]] = {
    "c5": {"large": 10, "xlarge": 10, "2xlarge": 10, "4xlarge": 10, "9xlarge": 12,
           "12xlarge": 12, "18xlarge": 25, "24xlarge": 25, "metal": 25},
    "c5n": {"large": 25, "xlarge": 25, "2xlarge": 25, "4xlarge": 25, "9xlarge": 50,
            "18xlarge": 100, "metal": 100},
    "c6i": {"large": 12.5, "xlarge": 12.5, "2xlarge": 12.5, "4xlarge": 12.5, "8xlarge": 12.5,
            "12xlarge": 18.75, "16xlarge": 25, "24xlarge": 37.5, "32xlarge": 50, "metal": 50},
    "c6in": {"large": 25, "xlarge": 30, "2xlarge": 40, "4xlarge": 50, "8xlarge": 50,
             "12xlarge": 75, "16xlarge": 100, "24xlarge": 150, "32xlarge": 200, "metal": 200},
    "c6gn": {"medium": 16, "large": 25, "xlarge": 25, "2xlarge": 25, "4xlarge": 25,
             "8xlarge": 50, "12xlarge": 75, "16xlarge": 100},
    "c7gn": {"medium": 25, "large": 30, "xlarge": 40, "2xlarge": 50, "4xlarge": 50,
             "8xlarge": 100, "12xlarge": 150, "16xlarge": 200, "metal": 200},
    "m5": {"large": 10, "xlarge": 10, "2xlarge": 10, "4xlarge": 10, "8xlarge": 10,
           "12xlarge": 12, "16xlarge": 20, "24xlarge": 25, "metal": 25},
    "m5n": {"large": 25, "xlarge": 25, "2xlarge": 25, "4xlarge": 25, "8xlarge": 25,
            "12xlarge": 50, "16xlarge": 75, "24xlarge": 100, "metal": 100},
    "m6i": {"large": 12.5, "xlarge": 12.5, "2xlarge": 12.5, "4xlarge": 12.5, "8xlarge": 12.5,
            "12xlarge": 18.75, "16xlarge": 25, "24xlarge": 37.5, "32xlarge": 50, "metal": 50},
    "m7i": {"large": 12.5, "xlarge": 12.5, "2xlarge": 12.5, "4xlarge": 12.5, "8xlarge": 12.5,
            "12xlarge": 18.75, "16xlarge": 25, "24xlarge": 37.5, "48xlarge": 50},
    "r5": {"large": 10, "xlarge": 10, "2xlarge": 10, "4xlarge": 10, "8xlarge": 10,
           "12xlarge": 12, "16xlarge": 20, "24xlarge": 25, "metal": 25},
    "r6i": {"large": 12.5, "xlarge": 12.5, "2xlarge": 12.5, "4xlarge": 12.5, "8xlarge": 12.5,
            "12xlarge": 18.75, "16xlarge": 25, "24xlarge": 37.5, "32xlarge": 50, "metal": 50},
    "g4dn": {"xlarge": 25, "2xlarge": 25, "4xlarge": 25, "8xlarge": 50, "12xlarge": 50,
             "16xlarge": 50, "metal": 100},
    "g5": {"xlarge": 10, "2xlarge": 10, "4xlarge": 25, "8xlarge": 25, "12xlarge": 40,
           "16xlarge": 25, "24xlarge": 50, "48xlarge": 100},
    "p3": {"2xlarge": 10, "8xlarge": 10, "16xlarge": 25},
    "p3dn": {"24xlarge": 100},
    "p4d": {"24xlarge": 400},
    "p4de": {"24xlarge": 400},
    "p5": {"48xlarge": 3200},
    "trn1": {"2xlarge": 12.5, "32xlarge": 800},
    "trn1n": {"32xlarge": 1600},
}  # fmt: skip


def instance_gbps(instance_type: str) -> float | None:
    """Network bandwidth of an EC2 instance type (``"c5n.18xlarge"``), or None if unknown."""
    family, _, size = instance_type.strip().lower().partition(".")
    return INSTANCE_GBPS.get(family, {}).get(size)


# --- what the machine offers -------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What :func:`probe` found, each value with where it came from."""

    cpus: int
    cpus_from: str
    memory: int | None  # bytes available to this process
    memory_from: str
    nic_gbps: float | None  # the network's speed, from the NIC or the instance type
    nic_from: str
    instance_type: str | None = None
    instance_from: str = "unknown"


def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path.lstrip("/"))) as f:
            return f.read().strip()
    except (OSError, UnicodeError):
        return None


def usable_cpus(root: str = "/") -> int:
    """CPUs this process may run on (affinity and cgroup quota)."""
    return _cpus(root)[0]


def _cpus(root: str) -> tuple[int, str]:
    try:
        cpus = len(os.sched_getaffinity(0))
        source = f"{cpus} in this process's affinity mask"
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
        source = f"os.cpu_count() = {cpus}"
    quota: float | None = None
    v2 = _read(root, "/sys/fs/cgroup/cpu.max")
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota = int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                pass
    else:
        q, p = (_read(root, f"/sys/fs/cgroup/cpu/cpu.cfs_{n}_us") for n in ("quota", "period"))
        try:
            if q is not None and p is not None and int(q) > 0:
                quota = int(q) / int(p)
        except (ValueError, ZeroDivisionError):
            pass
    if quota is not None and math.ceil(quota) < cpus:
        cpus = max(1, math.ceil(quota))
        source += f", cgroup CPU quota {quota:g}"
    return max(1, cpus), source


def _memory(root: str) -> tuple[int | None, str]:
    avail: int | None = None
    source = "unknown"
    meminfo = _read(root, "/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            try:
                avail = int(line.split()[1]) * 1024
                source = "MemAvailable"
            except (IndexError, ValueError):
                pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        raw = _read(root, limit_file)
        if raw is None:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:
            break  # no limit
        limit = int(raw)
        usage = _read(root, usage_file)
        room = limit - int(usage) if usage and usage.isdigit() else limit
        room = max(0, room)
        if avail is None or room < avail:
            avail = room
            source = f"cgroup limit {_size(limit)} less usage ({limit_file})"
        break
    return avail, source


_VIRTUAL_PREFIXES = ("lo", "ifb", "veth", "docker", "br-", "virbr", "tun", "tap", "dummy")


def _nic(root: str) -> tuple[float | None, str]:
    base = os.path.join(root, "sys/class/net")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None, "no /sys/class/net"
    best: tuple[float, str] | None = None
    for name in names:
        if name.startswith(_VIRTUAL_PREFIXES):
            continue
        try:
            if "/virtual/" in os.path.realpath(os.path.join(base, name)):
                continue
        except OSError:
            continue
        raw = _read(root, f"/sys/class/net/{name}/speed")
        try:
            mbit = int(raw or "")
        except ValueError:
            continue
        if mbit > 0 and (best is None or mbit / 1000 > best[0]):
            best = (mbit / 1000, name)
    if best is None:
        return None, "no NIC reports a speed in /sys/class/net"
    return best[0], f"/sys/class/net/{best[1]}/speed"


_nic_found: list[tuple[float | None, str]] = []


def _machine_nic() -> tuple[float | None, str]:
    """This machine's NIC speed, looked up once per process (a directory scan that every new
    client would otherwise repeat; NICs do not change speed under a running process)."""
    if not _nic_found:
        _nic_found.append(_nic("/"))
    return _nic_found[0]


def _looks_like_ec2(root: str) -> bool:
    for path in (
        "/sys/devices/virtual/dmi/id/sys_vendor",
        "/sys/devices/virtual/dmi/id/board_vendor",
    ):
        if "amazon" in (_read(root, path) or "").lower():
            return True
    return (_read(root, "/sys/hypervisor/uuid") or "").lower().startswith("ec2")


def _imds_disabled() -> bool:
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() in ("true", "1", "yes")


def _imds_instance_type(timeout: float = IMDS_TIMEOUT) -> str | None:
    """Ask IMDSv2 for the instance type; None when it does not answer within ``timeout``."""
    import http.client

    conn = http.client.HTTPConnection(IMDS_HOST, 80, timeout=timeout)
    try:
        conn.request(
            "PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        resp = conn.getresponse()
        token = resp.read().decode()
        if resp.status != 200:
            return None
        conn.request(
            "GET", "/latest/meta-data/instance-type", headers={"X-aws-ec2-metadata-token": token}
        )
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        return body if resp.status == 200 and body else None
    except (OSError, http.client.HTTPException, UnicodeError):
        return None
    finally:
        conn.close()


# The metadata service is asked at most once per process.
_imds_lock = threading.Lock()
_imds_cache: dict[str, str | None] = {}
_imds_thread: threading.Thread | None = None


def _imds_lookup() -> str | None:
    with _imds_lock:
        if "type" not in _imds_cache:
            _imds_cache["type"] = _imds_instance_type()
        return _imds_cache["type"]


def _in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _instance_type(root: str, imds: bool) -> tuple[str | None, str]:
    named = os.environ.get("S3FAST_INSTANCE_TYPE", "").strip()
    if named:
        return named, "S3FAST_INSTANCE_TYPE"
    if not _looks_like_ec2(root):
        return None, "not EC2 (DMI vendor is not Amazon); metadata service not asked"
    if _imds_disabled():
        return None, "AWS_EC2_METADATA_DISABLED is set; metadata service not asked"
    if not imds:
        return None, "metadata service not asked (imds=False)"
    if "type" not in _imds_cache and _in_event_loop():
        global _imds_thread
        with _imds_lock:
            if _imds_thread is None:
                _imds_thread = threading.Thread(
                    target=_imds_lookup, name="s3fast-imds", daemon=True
                )
                _imds_thread.start()
        return None, "metadata service asked in the background (a running event loop never waits)"
    found = _imds_lookup()
    if found is None:
        return None, f"the metadata service did not answer within {IMDS_TIMEOUT:g} s"
    return found, "instance metadata service (IMDSv2)"


def probe(root: str = "/", *, imds: bool = True) -> Machine:
    """What this machine offers. ``root`` prefixes every ``/proc`` and ``/sys`` path (tests);
    ``imds=False`` never asks the metadata service."""
    cpus, cpus_from = _cpus(root)
    memory, memory_from = _memory(root)
    nic, nic_from = _machine_nic() if root == "/" else _nic(root)
    itype, itype_from = _instance_type(root, imds)
    if itype is not None:
        gbps = instance_gbps(itype)
        if gbps is None:
            itype_from += f" ({itype} is not in s3fast.tuning.INSTANCE_GBPS)"
        elif nic is None or gbps < nic:
            nic, nic_from = gbps, f"{itype} in s3fast.tuning.INSTANCE_GBPS"
    return Machine(cpus, cpus_from, memory, memory_from, nic, nic_from, itype, itype_from)


MACHINE_TTL = 1.0  # seconds: how long new clients reuse a probe of this machine

_machine_lock = threading.Lock()
_machine_seen: list[tuple[float, tuple[Any, ...], Machine]] = []  # (when, key, machine)


def this_machine() -> Machine:
    """:func:`probe` of this machine, shared by the clients made within :data:`MACHINE_TTL`
    of it, so that a new client reads no file. Probed again after that (memory in use and
    cgroup limits change under a running process), and at once when this process's CPU
    affinity or a variable that :func:`probe` reads has changed."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    env = os.environ
    key = (affinity, env.get("S3FAST_INSTANCE_TYPE"), env.get("AWS_EC2_METADATA_DISABLED"))
    now = time.monotonic()
    with _machine_lock:
        if _machine_seen:
            when, seen_key, seen = _machine_seen[0]
            if seen_key == key and now - when < MACHINE_TTL:
                return seen
    machine = probe()
    with _machine_lock:
        _machine_seen[:] = [(now, key, machine)]
    return machine


# --- the plan ------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Plan:
    """Transfer settings for this machine, each with the reason it was chosen.

    ``config`` is the :class:`~s3fast.config.ResolvedConfig` the engine runs with: the
    caller's settings, and the plan's for every field left as ``None``.
    """

    machine: Machine
    max_concurrency: int
    concurrency_ceiling: int
    range_size: int
    part_size: int
    memory_budget: int
    processes: int
    max_bandwidth: int | None
    reasons: dict[str, str] = field(compare=False, hash=False)
    config: ResolvedConfig = field(compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "concurrency_ceiling": self.concurrency_ceiling,
            "range_size": self.range_size,
            "part_size": self.part_size,
            "memory_budget": self.memory_budget,
            "processes": self.processes,
            "max_bandwidth": self.max_bandwidth,
            "reasons": dict(self.reasons),
            "machine": dataclasses.asdict(self.machine),
        }

    def explain(self) -> str:
        m = self.machine
        mem = _size(m.memory) if m.memory is not None else "unknown"
        nic = f"{m.nic_gbps:g} Gbit/s" if m.nic_gbps is not None else "unknown"
        lines = [
            "s3fast plan for this machine",
            f"  {'CPUs:':20}{m.cpus} ({m.cpus_from})",
            f"  {'memory:':20}{mem} available ({m.memory_from})",
            f"  {'network:':20}{nic} ({m.nic_from})",
            f"  {'instance type:':20}{m.instance_type or 'unknown'} ({m.instance_from})",
            "settings",
        ]
        bw = "unlimited" if self.max_bandwidth is None else f"{_size(self.max_bandwidth)}/s"
        for name, shown in (
            ("max_concurrency", str(self.max_concurrency)),
            ("concurrency_ceiling", str(self.concurrency_ceiling)),
            ("range_size", _size(self.range_size)),
            ("part_size", _size(self.part_size)),
            ("memory_budget", _size(self.memory_budget)),
            ("processes", str(self.processes)),
            ("max_bandwidth", bw),
        ):
            lines.append(f"  {name + ':':20}{shown:>10}  {self.reasons[name]}")
        return "\n".join(lines)


_ENV_NAMES = {
    "max_concurrency": "S3FAST_MAX_CONCURRENCY",
    "range_size": "S3FAST_RANGE_SIZE",
    "part_size": "S3FAST_PART_SIZE",
    "memory_budget": "S3FAST_MEMORY_BUDGET",
    "max_bandwidth": "S3FAST_MAX_BANDWIDTH",
    "processes": "S3FAST_PROCESSES",
}


def _given(name: str, value: object) -> str:
    """Where an explicit setting came from: its variable when that holds the same value."""
    env = _ENV_NAMES.get(name)
    if env and os.environ.get(env, "").strip():
        try:
            from_env = _env_size(env) if name != "max_concurrency" else _env_int(env)
        except ValueError:
            from_env = None
        if from_env == value:
            return f"set by {env}"
    return "set by TransferConfig"


def plan(config: TransferConfig | None = None, *, machine: Machine | None = None) -> Plan:
    """The settings for this machine. ``config`` (default ``TransferConfig.from_env()``)
    overrides any of them; ``machine`` (default :func:`this_machine`) is what the rules see."""
    cfg = config if config is not None else TransferConfig.from_env()
    m = machine if machine is not None else this_machine()
    why: dict[str, str] = {}
    nic = m.nic_gbps
    fast = nic is not None and nic >= FAST_NIC_GBPS

    # processes: one event loop drives about GBPS_PER_PROCESS; use more when the NIC is
    # faster than that and there are cores to spare (half of them: the rest serve the kernel).
    given_procs = cfg.processes
    if given_procs is not None:
        processes = int(given_procs)
        why["processes"] = _given("processes", processes)
    elif nic is None:
        # Cores without a known NIC: still more than one event loop's worth on big machines
        # (a server-class machine rarely has a NIC that one loop fills), but modestly.
        processes = max(1, min(m.cpus // CPUS_PER_PROCESS_UNKNOWN_NIC, MAX_PROCESSES_UNKNOWN_NIC))
        why["processes"] = (
            f"NIC speed unknown: one per {CPUS_PER_PROCESS_UNKNOWN_NIC} CPUs"
            f" (at most {MAX_PROCESSES_UNKNOWN_NIC})"
        )
    else:
        wanted = math.ceil(nic / GBPS_PER_PROCESS)
        processes = max(1, min(wanted, m.cpus // 2))
        if wanted <= 1:
            why["processes"] = (
                f"{nic:g} Gbit/s is within one event loop (~{GBPS_PER_PROCESS:g} Gbit/s)"
            )
        elif processes < wanted:
            why["processes"] = f"{nic:g} Gbit/s wants {wanted}, capped at half of {m.cpus} CPUs"
        else:
            why["processes"] = f"{nic:g} Gbit/s / ~{GBPS_PER_PROCESS:g} Gbit/s per event loop"

    def sized(name: str, given: int | None) -> int:
        if given is not None:
            why[name] = _given(name, given)
            return given
        if fast:
            why[name] = f"16 MiB: NIC >= {FAST_NIC_GBPS:g} Gbit/s, fewer requests per byte"
            return 16 * MiB
        what = "ranges" if name == "range_size" else "parts"
        why[name] = f"8 MiB: enough {what} to spread an object over the connections"
        return 8 * MiB

    range_size = sized("range_size", cfg.range_size)
    part_size = sized("part_size", cfg.part_size)

    if cfg.memory_budget is not None:
        budget = cfg.memory_budget
        why["memory_budget"] = _given("memory_budget", budget)
    elif m.memory is None:
        budget = UNKNOWN_MEMORY_BUDGET
        why["memory_budget"] = "available memory unknown: a fixed 2 GiB"
    else:
        budget = max(MIN_MEMORY_BUDGET, m.memory // MEMORY_FRACTION // processes)
        per = f" per process (of {processes})" if processes > 1 else ""
        why["memory_budget"] = f"1/{MEMORY_FRACTION} of {_size(m.memory)} available{per}"

    unit = max(range_size, part_size)
    fits = max(1, budget // unit)
    if cfg.max_concurrency is not None:
        wanted_conns = cfg.max_concurrency
        reason = _given("max_concurrency", wanted_conns)
    else:
        per_cpus = max(1, m.cpus // processes)
        by_cpu = CONNECTIONS_PER_CPU * per_cpus
        by_nic = math.ceil(CONNECTIONS_PER_GBPS * nic / processes) if nic is not None else 0
        wanted_conns = max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, max(by_cpu, by_nic)))
        if by_nic > by_cpu:
            reason = f"{CONNECTIONS_PER_GBPS:g} per Gbit/s of NIC per process"
        else:
            reason = f"{CONNECTIONS_PER_CPU} per CPU"
        reason += f", between {MIN_CONNECTIONS} and {MAX_CONNECTIONS}"
    concurrency = min(wanted_conns, fits)
    if concurrency < wanted_conns:
        reason += (
            f"; lowered from {wanted_conns} so {concurrency} x {_size(unit)} fits the memory budget"
        )
    why["max_concurrency"] = reason

    # The limiter may raise the number while that raises throughput, up to this ceiling.
    if cfg.max_concurrency is not None:
        ceiling = concurrency
        why["concurrency_ceiling"] = "max_concurrency was given: fixed (lowered only on throttling)"
    else:
        files = _open_files_limit()
        ceiling = max(concurrency, min(fits, CEILING_FACTOR * concurrency, files // 4))
        bound = {
            fits: f"what the memory budget holds ({fits} x {_size(unit)})",
            CEILING_FACTOR * concurrency: f"{CEILING_FACTOR} x the start",
            files // 4: f"a quarter of the open-files limit ({files})",
        }
        why["concurrency_ceiling"] = "raised while throughput grows, up to " + (
            bound[ceiling] if ceiling in bound else "the start"
        )

    if cfg.max_bandwidth is not None:
        why["max_bandwidth"] = _given("max_bandwidth", cfg.max_bandwidth)
    else:
        why["max_bandwidth"] = "no cap (S3FAST_MAX_BANDWIDTH or TransferConfig to set one)"

    filled = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    filled.update(
        max_concurrency=concurrency,
        range_size=range_size,
        part_size=part_size,
        memory_budget=budget,
    )
    if given_procs is None:
        filled["processes"] = processes
    resolved = ResolvedConfig(**filled)
    return Plan(
        machine=m,
        max_concurrency=concurrency,
        concurrency_ceiling=ceiling,
        range_size=range_size,
        part_size=part_size,
        memory_budget=budget,
        processes=processes,
        max_bandwidth=cfg.max_bandwidth,
        reasons=why,
        config=resolved,
    )


def _open_files_limit() -> int:
    """The soft limit on open files: every connection and every file being written is one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1024
    return soft if soft != resource.RLIM_INFINITY and soft > 0 else 1 << 20


def default_concurrency() -> int:
    """Requests in flight that the plan picks for this machine (no metadata lookup)."""
    return plan(TransferConfig(), machine=probe(imds=False)).max_concurrency


def main() -> int:
    """``python -m s3fast.tuning``: print the plan for this machine (the environment's
    ``S3FAST_*`` settings applied)."""
    import sys

    print(plan().explain(), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
