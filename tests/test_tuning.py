"""The per-machine plan (faked /proc, /sys, cgroups, instance types, IMDS), its overrides, and
that the engine runs with it; the bandwidth cap against SeaweedFS. The limiter that moves the
plan's concurrency at run time: tests/test_limiter.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from s3fast import S3, AsyncS3, TransferConfig, tuning
from s3fast._engine.budget import Bandwidth
from s3fast.limits import GiB, MiB
from s3fast.tuning import Machine, instance_gbps, plan, probe

from ._internals import engine_of

_RULES = {
    "GBPS_PER_PROCESS": tuning.GBPS_PER_PROCESS,
    "MAX_PROCESSES_UNKNOWN_NIC": tuning.MAX_PROCESSES_UNKNOWN_NIC,
}


@pytest.fixture(autouse=True)
def real_process_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's own process rules (conftest pins tests elsewhere to one process)."""
    for name, value in _RULES.items():
        monkeypatch.setattr(tuning, name, value)


def write(root: Path, path: str, text: str) -> None:
    full = root / path.lstrip("/")
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(text)


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning.os, "sched_getaffinity", lambda pid: set(range(16)))


@pytest.fixture
def no_imds(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Fails the test if the metadata service would be asked; a fresh cache."""
    monkeypatch.setattr(tuning, "_imds_cache", {})
    monkeypatch.setattr(tuning, "_imds_thread", None)

    def refuse(timeout: float = 0.0) -> str | None:
        raise AssertionError("the metadata service must not be asked")

    monkeypatch.setattr(tuning, "_imds_instance_type", refuse)
    return []


def machine(cpus: int = 2, memory: int | None = 16 * GiB, nic: float | None = None) -> Machine:
    return Machine(cpus, "test", memory, "test", nic, "test")


# --- probing ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_probe_cgroup_v2_and_nic(tmp_path: Path, cpus: None, no_imds: list[float]) -> None:
    write(tmp_path, "/proc/meminfo", "MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "400000 100000")
    write(tmp_path, "/sys/fs/cgroup/memory.max", str(8 * GiB))
    write(tmp_path, "/sys/fs/cgroup/memory.current", str(2 * GiB))
    write(tmp_path, "/sys/class/net/eth0/speed", "25000")
    write(tmp_path, "/sys/class/net/eth1/speed", "-1")  # virtio / ENA: no speed
    write(tmp_path, "/sys/class/net/lo/speed", "100000")  # skipped: loopback
    write(tmp_path, "/sys/class/net/veth9/speed", "100000")  # skipped: virtual
    m = probe(str(tmp_path))
    assert m.cpus == 4 and "quota" in m.cpus_from
    assert m.memory == 6 * GiB and "cgroup" in m.memory_from
    assert m.nic_gbps == 25 and "eth0" in m.nic_from
    assert m.instance_type is None and "not EC2" in m.instance_from


@pytest.mark.unit
def test_probe_cgroup_v1_and_no_limits(tmp_path: Path, cpus: None, no_imds: list[float]) -> None:
    write(tmp_path, "/proc/meminfo", "MemAvailable: 1048576 kB\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "150000")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    write(tmp_path, "/sys/fs/cgroup/memory/memory.limit_in_bytes", str(512 * MiB))
    write(tmp_path, "/sys/fs/cgroup/memory/memory.usage_in_bytes", str(128 * MiB))
    m = probe(str(tmp_path))
    assert m.cpus == 2  # 1.5 CPUs of quota round up
    assert m.memory == 384 * MiB
    assert m.nic_gbps is None

    bare = tmp_path / "bare"
    write(bare, "/proc/meminfo", "MemAvailable: 1048576 kB\n")
    write(bare, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1")
    write(bare, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")
    m = probe(str(bare))
    assert m.cpus == 16 and m.memory == GiB and m.memory_from == "MemAvailable"


@pytest.mark.unit
def test_instance_table() -> None:
    assert instance_gbps("c5n.18xlarge") == 100
    assert instance_gbps("C6IN.32XLARGE") == 200
    assert instance_gbps("m5.large") == 10
    assert instance_gbps("p4d.24xlarge") == 400
    assert instance_gbps("x9z.large") is None
    assert instance_gbps("m5") is None
    for family, sizes in tuning.INSTANCE_GBPS.items():
        assert family and all(gbps > 0 for gbps in sizes.values())


@pytest.mark.unit
def test_instance_type_from_env(
    tmp_path: Path, cpus: None, no_imds: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3FAST_INSTANCE_TYPE", "c5n.18xlarge")
    write(tmp_path, "/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2")
    m = probe(str(tmp_path))
    assert (m.instance_type, m.nic_gbps) == ("c5n.18xlarge", 100)
    assert m.instance_from == "S3FAST_INSTANCE_TYPE"
    monkeypatch.setenv("S3FAST_INSTANCE_TYPE", "zz9.huge")
    m = probe(str(tmp_path))
    assert m.nic_gbps is None and "not in" in m.instance_from


@pytest.mark.unit
def test_imds_not_asked_off_ec2_or_when_disabled(
    tmp_path: Path, cpus: None, no_imds: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    assert probe(str(tmp_path)).instance_type is None  # no DMI: not EC2
    write(tmp_path, "/sys/devices/virtual/dmi/id/sys_vendor", "QEMU")
    assert "not EC2" in probe(str(tmp_path)).instance_from
    write(tmp_path, "/sys/devices/virtual/dmi/id/board_vendor", "Amazon EC2")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert "AWS_EC2_METADATA_DISABLED" in probe(str(tmp_path)).instance_from
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    assert "imds=False" in probe(str(tmp_path), imds=False).instance_from


@pytest.mark.unit
def test_this_machine_sends_nothing(no_imds: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """This VM is not EC2: the plan is made without asking the metadata service."""
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    if "amazon" in (tuning._read("/", "/sys/devices/virtual/dmi/id/sys_vendor") or "").lower():
        pytest.skip("running on EC2")
    p = plan()
    assert p.machine.instance_type is None
    assert "metadata service not asked" in p.machine.instance_from
    assert p.reasons["max_concurrency"] and p.config.max_concurrency == p.max_concurrency


@pytest.mark.unit
def test_new_clients_share_one_probe(no_imds: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients made within MACHINE_TTL of each other share one probe; a later one, or one made
    after the CPU affinity or a variable the probe reads changed, probes again."""
    probes: list[Machine] = []

    def counting(root: str = "/", *, imds: bool = True) -> Machine:
        probes.append(probe(root, imds=imds))
        return probes[-1]

    now = [1000.0]
    monkeypatch.setattr(tuning, "probe", counting)
    monkeypatch.setattr(tuning, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tuning, "_machine_seen", [])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    first = plan(TransferConfig())
    now[0] += tuning.MACHINE_TTL / 2
    assert plan(TransferConfig()).machine is first.machine
    assert len(probes) == 1
    now[0] += tuning.MACHINE_TTL
    plan(TransferConfig())
    assert len(probes) == 2
    monkeypatch.setenv("S3FAST_INSTANCE_TYPE", "c5n.18xlarge")
    assert plan(TransferConfig()).machine.instance_type == "c5n.18xlarge"
    monkeypatch.setattr(tuning.os, "sched_getaffinity", lambda pid: set(range(3)))
    assert plan(TransferConfig()).machine.cpus <= 3
    assert len(probes) == 4
    plan(TransferConfig())
    assert len(probes) == 4


@pytest.mark.unit
def test_imds_asked_once_on_ec2(
    tmp_path: Path, cpus: None, no_imds: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    write(tmp_path, "/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2")
    calls: list[float] = []

    def fake(timeout: float = tuning.IMDS_TIMEOUT) -> str | None:
        calls.append(timeout)
        return "c6in.32xlarge"

    monkeypatch.setattr(tuning, "_imds_instance_type", fake)
    m = probe(str(tmp_path))
    assert (m.instance_type, m.nic_gbps) == ("c6in.32xlarge", 200)
    assert "IMDSv2" in m.instance_from
    probe(str(tmp_path))
    assert calls == [tuning.IMDS_TIMEOUT]  # cached for the process


@pytest.mark.unit
@pytest.mark.asyncio
async def test_imds_never_waited_on_from_an_event_loop(
    tmp_path: Path, cpus: None, no_imds: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    write(tmp_path, "/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2")

    answer = threading.Event()

    def slow(timeout: float = tuning.IMDS_TIMEOUT) -> str | None:
        answer.wait(10)
        return "m5.large"

    monkeypatch.setattr(tuning, "_imds_instance_type", slow)
    m = probe(str(tmp_path))  # returns while the lookup is held: it did not wait for it
    assert m.instance_type is None and "background" in m.instance_from
    thread = tuning._imds_thread
    assert thread is not None and thread.is_alive()
    answer.set()
    await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
    assert probe(str(tmp_path)).instance_type == "m5.large"  # later clients get it


# --- the rules -------------------------------------------------------------------------------


@pytest.mark.unit
def test_small_machine() -> None:
    p = plan(TransferConfig(), machine=machine(cpus=2, nic=10))
    assert (p.max_concurrency, p.range_size, p.part_size, p.processes) == (32, 8 * MiB, 8 * MiB, 1)
    assert p.memory_budget == 4 * GiB
    assert p.max_bandwidth is None
    assert 8 * MiB <= p.part_size <= 16 * MiB


@pytest.mark.unit
def test_fast_nic_many_cores() -> None:
    p = plan(TransferConfig(), machine=machine(cpus=72, memory=192 * GiB, nic=100))
    assert p.processes == 6  # ceil(100 / 18)
    assert p.range_size == p.part_size == 16 * MiB
    assert p.max_concurrency == 128  # 16 per CPU of its 12, capped
    assert p.memory_budget == 192 * GiB // 4 // 6
    few = plan(TransferConfig(), machine=machine(cpus=8, memory=32 * GiB, nic=100))
    assert few.processes == 4 and "capped" in few.reasons["processes"]
    unknown = plan(TransferConfig(), machine=machine(cpus=64, nic=None))
    assert unknown.processes == 8 and unknown.range_size == 8 * MiB  # one per 4 CPUs, at most 8
    assert plan(TransferConfig(), machine=machine(cpus=16, nic=None)).processes == 4
    assert plan(TransferConfig(), machine=machine(cpus=4, nic=None)).processes == 1


@pytest.mark.unit
def test_concurrency_ceiling() -> None:
    """The limiter may raise the plan's connections (4x at most, within the memory budget and
    the open-files limit); a given max_concurrency is fixed."""
    p = plan(TransferConfig(), machine=machine(cpus=2, nic=10))
    assert (p.max_concurrency, p.concurrency_ceiling) == (32, 128)
    tight = plan(TransferConfig(memory_budget=40 * 8 * MiB), machine=machine(cpus=2, nic=10))
    assert (tight.max_concurrency, tight.concurrency_ceiling) == (32, 40)
    assert "memory budget" in tight.reasons["concurrency_ceiling"]
    fixed = plan(TransferConfig(max_concurrency=7), machine=machine(cpus=2, nic=10))
    assert fixed.max_concurrency == fixed.concurrency_ceiling == 7


@pytest.mark.unit
def test_memory_budget_bounds_concurrency() -> None:
    p = plan(TransferConfig(), machine=machine(cpus=8, memory=256 * MiB, nic=10))
    assert p.memory_budget == 64 * MiB
    assert p.max_concurrency == 8  # 64 MiB / 8 MiB
    assert p.max_concurrency * max(p.range_size, p.part_size) <= p.memory_budget
    assert "memory budget" in p.reasons["max_concurrency"]
    capped = plan(
        TransferConfig(max_concurrency=64, memory_budget=32 * MiB, range_size=1 * MiB),
        machine=machine(),
    )
    assert capped.max_concurrency == 4  # 32 MiB / max(1 MiB range, 8 MiB part)


@pytest.mark.unit
def test_config_overrides_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FAST_RANGE_SIZE", "2M")  # not used: an explicit config wins
    cfg = TransferConfig(max_concurrency=7, range_size=1 * MiB, part_size=5 * MiB, max_bandwidth=10)
    p = plan(cfg, machine=machine(cpus=72, nic=100))
    assert (p.max_concurrency, p.range_size, p.part_size, p.max_bandwidth) == (7, MiB, 5 * MiB, 10)
    assert p.config.max_concurrency == 7 and p.config.max_bandwidth == 10
    assert p.reasons["range_size"] == "set by TransferConfig"


@pytest.mark.unit
def test_env_overrides_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FAST_MAX_CONCURRENCY", "5")
    monkeypatch.setenv("S3FAST_RANGE_SIZE", "1M")
    monkeypatch.setenv("S3FAST_MAX_BANDWIDTH", "100M")
    monkeypatch.setenv("S3FAST_MEMORY_BUDGET", "2G")
    p = plan(machine=machine())
    assert (p.max_concurrency, p.range_size, p.max_bandwidth) == (5, MiB, 100 * MiB)
    assert p.memory_budget == 2 * GiB
    assert "S3FAST_RANGE_SIZE" in p.reasons["range_size"]
    monkeypatch.setenv("S3FAST_PART_SIZE", "lots")
    with pytest.raises(ValueError, match="S3FAST_PART_SIZE"):
        TransferConfig.from_env()


@pytest.mark.unit
def test_explain_and_as_dict() -> None:
    p = plan(TransferConfig(), machine=machine(cpus=16, nic=50))
    text = p.explain()
    for name in (
        "max_concurrency",
        "concurrency_ceiling",
        "range_size",
        "part_size",
        "memory_budget",
        "processes",
    ):
        assert name in text and p.reasons[name] in text
        assert name in p.as_dict()
    assert "50 Gbit/s" in text
    assert p.as_dict()["machine"]["cpus"] == 16


@pytest.mark.unit
def test_python_m_s3fast_tuning() -> None:
    import subprocess
    import sys

    env = {**os.environ, "S3FAST_MAX_CONCURRENCY": "9"}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "s3fast.tuning"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "max_concurrency:" in out.stdout and " 9 " in out.stdout, out.stdout
    assert not out.stderr


@pytest.mark.unit
def test_bandwidth_bucket() -> None:
    bucket = Bandwidth(1000)
    assert bucket.reserve(500) == 0  # nothing before it
    wait = bucket.reserve(500)
    assert 0.45 < wait <= 0.5  # waits for the first 500 bytes to be paid
    assert 0.95 < bucket.reserve(1) <= 1.0


# --- the engine uses the plan ---------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.asyncio
async def test_engine_runs_with_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = machine(cpus=40, memory=64 * GiB, nic=50)
    monkeypatch.setattr(tuning, "probe", lambda *a, **k: fake)
    async with AsyncS3(s3root="s3://some-bucket", config=TransferConfig()) as s3:
        engine = engine_of(s3)
        expected = plan(TransferConfig(), machine=fake)
        assert engine.plan == expected
        assert engine.limiter.target == expected.max_concurrency == 128  # 16 x 13 CPUs, capped
        assert engine.concurrency == engine.limiter.maximum == expected.concurrency_ceiling
        assert expected.concurrency_ceiling > 128  # room to grow while throughput does
        assert engine.config.range_size == engine.config.part_size == 16 * MiB
        assert s3.config == TransferConfig()  # what the caller gave, unchanged
    cfg = TransferConfig(max_concurrency=3, range_size=1 * MiB)
    async with AsyncS3(s3root="s3://some-bucket", config=cfg) as s3:
        assert engine_of(s3).concurrency == engine_of(s3).limiter.maximum == 3  # given: fixed
        assert engine_of(s3).config.range_size == MiB
        assert engine_of(s3).config.part_size == 16 * MiB  # the rest still from the plan


def test_sync_facade_env_overrides(seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FAST_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("S3FAST_RANGE_SIZE", "256K")
    data = os.urandom(2 * MiB + 5)
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        engine = engine_of(s3)
        assert engine.concurrency == 3 and engine.config.range_size == 256 * 1024
        s3.put("k", data)
        assert s3.get("k", in_memory=True).blob == data
        assert engine.limiter.in_flight == 0 and engine.limiter.maximum == 3  # all returned


# --- the bandwidth cap, for real ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_max_bandwidth_caps_get_and_put(seaweed_bucket: str) -> None:
    """A capped transfer takes at least (size - one request) / cap seconds: every request
    waits until the bytes of those before it have been paid for."""
    cap, chunk = 4 * MiB, 256 * 1024
    data = os.urandom(6 * MiB)
    root = f"s3://{seaweed_bucket}"
    cfg = TransferConfig(
        max_bandwidth=cap, range_size=chunk, part_size=5 * MiB, multipart_threshold=5 * MiB
    )

    def timed(fn: Callable[[S3], object]) -> float:
        with S3(s3root=root, config=cfg) as s3:  # a fresh bucket of tokens each time
            t0 = time.perf_counter()
            fn(s3)
            return time.perf_counter() - t0

    with S3(s3root=root) as s3:
        s3.put("big", data)
        t0 = time.perf_counter()
        assert s3.get("big", in_memory=True).blob == data
        uncapped_s = time.perf_counter() - t0

    def get(s3: S3) -> None:
        assert hashlib.sha256(s3.get("big", in_memory=True).blob or b"").hexdigest() == (
            hashlib.sha256(data).hexdigest()
        )

    get_s = timed(get)  # 24 ranges of 256 KiB
    assert get_s >= 0.9 * (len(data) - chunk) / cap, get_s
    assert get_s > uncapped_s
    puts_s = timed(lambda s3: [s3.put(f"small{i}", data[: 2 * MiB]) for i in range(3)])
    assert puts_s >= 0.9 * (4 * MiB) / cap, puts_s  # three single PUTs of 2 MiB
    mpu_s = timed(lambda s3: s3.put("mpu", data + data[:MiB]))  # parts of 5 + 2 MiB
    assert mpu_s >= 0.9 * (5 * MiB) / cap, mpu_s
