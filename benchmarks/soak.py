"""``make soak``: a bounded run of mixed s3fast operations through the fault proxy, with random
faults (seeded), checking every object it reads by content.

    python -m benchmarks.soak [--seconds 180] [--rate 0.1] [--seed 1] [--workers 4]

A local SeaweedFS (auth on) sits behind the fault-injecting proxy of ``tests/proxy.py``. The
run goes in rounds; each round opens an ``AsyncS3`` (as a flow step opens ``S3``), runs
``--workers`` concurrent loops of random operations (get / get_many into memory and files,
ranges, put / put_many / put_files including multipart, list, info, and cancelled calls),
and closes it. Every object written has a fresh key and content derived from its key, so
every read is checked byte for byte. At the end, with faults off, every object is read back
directly (boto3) and compared.

It prints operations, faults injected, retries, objects lost or corrupted, and memory, file
descriptors and threads after the first round and at the end; it exits non-zero if an object
was lost or corrupted, an error was untyped, a multipart upload or a temp file was left, or
descriptors or threads grew. Byte flips (``--flip-rate``, 2% by default) go to whole-object
GETs only, which s3fast checks against the object's checksum; a flipped range or listing
could not be caught by anything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from s3fast import AsyncS3, MetaflowS3Exception, S3GetObject, TransferConfig
from s3fast._bridge import new_event_loop
from s3fast.limits import KiB, MiB
from s3fast.testing import ADMIN, SeaweedFS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.proxy import Chaos, FaultProxy, Faults

BUCKET = "s3fast-soak"
SIZES = (0, 1, 700, 4 * KiB, 64 * KiB, 300 * KiB, 1 * MiB + 17)
BIG = 11 * MiB + 5  # multipart with 5 MiB parts: three parts
CONFIG = dict(
    max_concurrency=16,
    range_size=256 * KiB,
    part_size=5 * MiB,
    multipart_threshold=5 * MiB,
    read_timeout=1.0,  # the proxy's stalls (2 s) must time out
    connect_timeout=2.0,
)


def payload(key: str) -> bytes:
    """The content of ``key``: its size is the key's last field, its bytes derive from it."""
    size = int(key.rsplit("-", 1)[1])
    return random.Random(key).randbytes(size)


def open_fds() -> dict[int, str]:
    """This process's file descriptors: what each points at (TCP sockets as their ports)."""
    sockets = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                for line in list(f)[1:]:
                    cols = line.split()
                    local, remote = (int(c.rsplit(":", 1)[1], 16) for c in cols[1:3])
                    sockets[cols[9]] = f"tcp :{local} -> :{remote} state {cols[3]}"
        except OSError:
            pass
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            target = sockets.get(target[8:-1], target)
        fds[int(name)] = target
    return fds


def process_snapshot() -> dict[str, int]:
    """RSS (after a garbage collection and ``malloc_trim``, so that memory the allocator only
    keeps cached does not count), open file descriptors and threads of this process."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {
        "rss": rss,
        "fds": len(open_fds()),
        "threads": threading.active_count(),
    }


def _write_files(keys: list[str], paths: list[str]) -> None:
    for key, path in zip(keys, paths, strict=True):
        Path(path).write_bytes(payload(key))


def _remove(paths: list[str]) -> None:
    for path in paths:
        os.unlink(path)


def _files(dirs: list[str]) -> set[str]:
    return {os.path.join(d, name) for d in dirs if os.path.isdir(d) for name in os.listdir(d)}


@dataclass
class Tally:
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    typed_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    untyped: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    checked: int = 0
    written_bytes: int = 0
    retries: int = 0
    gave_up: int = 0
    throttled: int = 0
    limit_cuts: int = 0
    lowest_limit: int = 1 << 30
    leftover_files: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, proxy: FaultProxy, workdir: str) -> None:
        self.args = args
        self.proxy = proxy
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.keys: list[str] = []  # written, confirmed
        self.uncertain: set[str] = set()  # a write that failed or was cancelled
        self.counter = 0
        self.tally = Tally()
        self.returned: set[str] = set()  # local files handed out by this round's client

    def new_key(self, size: int) -> str:
        self.counter += 1
        return f"soak/{self.counter:07d}-{size}"

    def check(self, key: str, data: bytes, start: int = 0, length: int | None = None) -> None:
        want = payload(key)
        want = want[start:] if length is None else want[start : start + length]
        self.tally.checked += 1
        if data != want:
            self.tally.corrupted.append(key)

    def pick(self, n: int) -> list[str]:
        return [self.rng.choice(self.keys) for _ in range(n)] if self.keys else []

    # --- operations ---------------------------------------------------------------------

    async def op_put(self, s3: AsyncS3) -> None:
        size = self.rng.choice((*SIZES, BIG) if self.rng.random() < 0.15 else SIZES)
        key = self.new_key(size)
        await self._write([key], s3.put(key, payload(key)))

    async def op_put_many(self, s3: AsyncS3) -> None:
        keys = [self.new_key(self.rng.choice(SIZES)) for _ in range(self.rng.randint(2, 20))]
        await self._write(keys, s3.put_many([(k, payload(k)) for k in keys]))

    async def op_put_files(self, s3: AsyncS3) -> None:
        sizes = [self.rng.choice(SIZES) for _ in range(self.rng.randint(1, 5))]
        if self.rng.random() < 0.3:
            sizes.append(BIG)
        keys = [self.new_key(size) for size in sizes]
        paths = [os.path.join(self.workdir, key.replace("/", "_")) for key in keys]
        await asyncio.to_thread(_write_files, keys, paths)
        try:
            await self._write(keys, s3.put_files(list(zip(keys, paths, strict=True))))
        finally:
            await asyncio.to_thread(_remove, paths)

    async def _write(self, keys: list[str], call: Any) -> None:
        self.uncertain.update(keys)
        await call
        self.uncertain.difference_update(keys)
        self.keys.extend(keys)
        self.tally.written_bytes += sum(int(k.rsplit("-", 1)[1]) for k in keys)

    async def op_get(self, s3: AsyncS3) -> None:
        for key in self.pick(1):
            obj = await s3.get(key, in_memory=self.rng.random() < 0.5)
            self.returned.add(obj.path or "")
            self.check(key, obj.blob or b"")

    async def op_get_many(self, s3: AsyncS3) -> None:
        keys = self.pick(self.rng.randint(2, 24))
        objs = await s3.get_many(keys, in_memory=self.rng.random() < 0.5)
        for key, obj in zip(keys, objs, strict=True):
            self.returned.add(obj.path or "")
            self.check(key, obj.blob or b"")

    async def op_ranges(self, s3: AsyncS3) -> None:
        wanted = []
        for key in self.pick(self.rng.randint(1, 8)):
            size = int(key.rsplit("-", 1)[1])
            if size < 2:
                continue
            start = self.rng.randrange(size - 1)
            length = self.rng.randint(1, size - start)
            wanted.append((key, start, length))
        objs = await s3.get_many([S3GetObject(k, s, n) for k, s, n in wanted], in_memory=True)
        for (key, start, length), obj in zip(wanted, objs, strict=True):
            self.check(key, obj.blob or b"", start, length)

    async def op_list(self, s3: AsyncS3) -> None:
        known = set(self.keys)
        listed = {o.url.split(f"{BUCKET}/", 1)[1] for o in await s3.list_recursive(["soak"])}
        missing = known - listed
        self.tally.checked += 1
        if missing:
            self.tally.corrupted.extend(sorted(missing)[:10])

    async def op_info(self, s3: AsyncS3) -> None:
        keys = self.pick(self.rng.randint(1, 24))
        for key, obj in zip(keys, await s3.info_many(keys), strict=True):
            self.tally.checked += 1
            if obj.size != int(key.rsplit("-", 1)[1]):
                self.tally.corrupted.append(key)

    async def op_cancel(self, s3: AsyncS3) -> None:
        """A call cancelled part-way (a timeout around it): it must leave nothing behind."""
        keys = self.pick(8)
        try:
            async with asyncio.timeout(self.rng.uniform(0.001, 0.05)):
                if self.rng.random() < 0.5:
                    for obj in await s3.get_many(keys):
                        self.returned.add(obj.path or "")
                else:
                    key = self.new_key(BIG)
                    await self._write([key], s3.put(key, payload(key)))
        except TimeoutError:
            pass

    OPS = {
        "get": 4,
        "get_many": 3,
        "ranges": 2,
        "put": 3,
        "put_many": 2,
        "put_files": 1,
        "list": 1,
        "info": 2,
        "cancel": 1,
    }

    async def worker(self, s3: AsyncS3, until: float) -> None:
        names, weights = list(self.OPS), list(self.OPS.values())
        while time.monotonic() < until:
            name = self.rng.choices(names, weights)[0]
            if not self.keys and name not in ("put", "put_many", "put_files"):
                name = "put_many"
            self.tally.ops[name] += 1
            try:
                await getattr(self, "op_" + name)(s3)
            except MetaflowS3Exception as exc:
                self.tally.typed_errors[type(exc).__name__] += 1
                self.tally.error_samples.append(f"{name}: {exc}"[:300])
            except Exception as exc:  # anything untyped is a failure of the soak
                self.tally.untyped.append(f"{name}: {type(exc).__name__}: {exc}")

    async def round(self, seconds: float) -> None:
        config = TransferConfig(**CONFIG)  # type: ignore[arg-type]
        s3 = AsyncS3(s3root=f"s3://{BUCKET}", endpoint_url=self.proxy.url, config=config)
        try:
            until = time.monotonic() + seconds
            await asyncio.gather(*(self.worker(s3, until) for _ in range(self.args.workers)))
        finally:
            stats = s3.stats
            dirs = s3.tmpdirs
            # every file in the temp dirs is one a call returned: none from failed calls
            files = await asyncio.to_thread(_files, dirs)
            self.tally.leftover_files += sorted(files - self.returned)
            self.returned.clear()
            await s3.close()
        t = self.tally
        t.retries += stats.retries
        t.gave_up += stats.gave_up
        t.throttled += stats.throttled
        t.limit_cuts += stats.limit_cuts
        t.lowest_limit = min(t.lowest_limit, stats.lowest_limit)
        t.leftover_files += sorted(await asyncio.to_thread(_files, dirs))  # close() removed them


def verify_all(soak: Soak, client: Any) -> tuple[int, int, int]:
    """Faults off: every confirmed key exists with its content; uncertain keys are absent or
    complete. Returns (checked, lost, corrupted)."""
    lost = corrupted = 0
    for key in soak.keys + sorted(soak.uncertain):
        try:
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            if key not in soak.uncertain:
                lost += 1
            continue
        if body != payload(key):
            corrupted += 1
    return len(soak.keys) + len(soak.uncertain), lost, corrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the run (180)")
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests faulted")
    parser.add_argument(
        "--flip-rate", type=float, default=0.02, help="share of whole-object GET bodies flipped"
    )
    parser.add_argument(
        "--burst-rate", type=float, default=0.0003, help="share of requests that start a storm"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="concurrent operation loops")
    parser.add_argument("--round", type=float, default=10.0, help="seconds per client")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="s3fast-soak-")
    os.environ.update({k: v for k, v in ADMIN.env().items()})
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    started = time.monotonic()
    with SeaweedFS() as server:
        os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint_url
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket=BUCKET)
        proxy = FaultProxy(int(server.endpoint_url.rsplit(":", 1)[1])).start()
        soak = Soak(args, proxy, workdir)
        chaos = Chaos(
            rate=args.rate, seed=args.seed, flip_rate=args.flip_rate, burst_rate=args.burst_rate
        )
        proxy.set(Faults(), chaos)
        loop = new_event_loop()
        try:
            rounds = max(2, round(args.seconds / args.round))
            loop.run_until_complete(soak.round(args.seconds / rounds))
            time.sleep(0.5)  # the proxy closes its side of the round's connections
            first = process_snapshot()
            first_fds = open_fds()
            trend = [first["rss"]]
            for _ in range(rounds - 1):
                loop.run_until_complete(soak.round(args.seconds / rounds))
                trend.append(process_snapshot()["rss"])
            requests, injected, counts = proxy.requests, proxy.injected, dict(proxy.counts)
            proxy.set(Faults())
            time.sleep(0.5)
            last = process_snapshot()
            new_fds = {fd: what for fd, what in open_fds().items() if first_fds.get(fd) != what}
        finally:
            loop.close()
            proxy.stop()
        # counters were reset by the last set(): take them from the chaos phase above
        checked, lost, corrupted = verify_all(soak, client)
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        client.delete_bucket(Bucket=BUCKET)
        client.close()
    shutil.rmtree(workdir, ignore_errors=True)
    t = soak.tally
    elapsed = time.monotonic() - started
    report = {
        "lost": lost,
        "corrupted": corrupted + len(t.corrupted),
        "untyped errors": len(t.untyped),
        "open multipart uploads": len(uploads),
        "leftover temp files": len(t.leftover_files),
        # after warming up (pools, caches, allocator arenas) memory must stay level
        "MiB RSS grew in the second half": max(
            0, (last["rss"] - trend[len(trend) // 2] - max(16 * MiB, trend[-1] // 10)) // MiB
        ),
        "fds grew": max(0, last["fds"] - first["fds"]),
        "threads grew": max(0, last["threads"] - first["threads"]),
    }
    print(
        f"s3fast soak: {args.seconds:.0f} s of operations ({elapsed:.0f} s in all), seed "
        f"{args.seed}, {args.workers} workers, fault rate {args.rate:.0%}, "
        f"byte flips {args.flip_rate:.0%}; {platform.node()}, {os.cpu_count()} cores"
    )
    print(
        f"  operations   {sum(t.ops.values())}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(t.ops.items()))
    )
    print(
        f"  objects      {len(soak.keys)} written ({t.written_bytes / MiB:.0f} MiB), "
        f"{t.checked} reads checked during the run, {checked} checked at the end"
    )
    print(
        f"  faults       {injected} injected in {requests} requests: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    print(
        f"  retries      {t.retries}; gave up {t.gave_up}; throttled {t.throttled}, "
        f"limit cut {t.limit_cuts} times, lowest {t.lowest_limit} of {CONFIG['max_concurrency']}"
    )
    print(
        f"  typed errors {sum(t.typed_errors.values())}"
        + (
            ": " + ", ".join(f"{k} {v}" for k, v in sorted(t.typed_errors.items()))
            if t.typed_errors
            else ""
        )
    )
    print(
        f"  memory       RSS {first['rss'] / MiB:.0f} MiB after round 1, {last['rss'] / MiB:.0f} MiB at the end"
    )
    print(
        "  RSS by round " + " ".join(f"{r / MiB:.0f}" for r in trend) + " MiB (level if the "
        "second half grows by at most 16 MiB or 10%)"
    )
    print(
        f"  fds          {first['fds']} -> {last['fds']}; threads {first['threads']} -> {last['threads']}"
    )
    for line in t.untyped[:10]:
        print(f"  untyped: {line}")
    if last["fds"] > first["fds"]:
        for fd, what in sorted(new_fds.items())[:20]:
            print(f"  new fd {fd}: {what}")
    for line in t.error_samples[:5]:
        print(f"  typed error: {line}")
    for line in (t.corrupted + t.leftover_files)[:10]:
        print(f"  wrong: {line}")
    for upload in uploads[:10]:
        key = upload["Key"]
        state = "uncertain" if key in soak.uncertain else "written" if key in soak.keys else "?"
        print(f"  open upload: {key} ({state}), initiated {upload['Initiated']}")
    print("  checks       " + ", ".join(f"{k} {v}" for k, v in report.items()))
    ok = not any(report.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
