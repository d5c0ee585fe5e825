"""One (client, workload) run in a fresh process; prints one JSON line.

    python -m benchmarks.worker --client boto3 --workload get_mem --spec spec.json --tmp DIR

The CPU set is pinned (``--cpus``) before any client library is imported. The client sets up
(imports, client objects, one warm-up HEAD), then times only the transfer inside
``ctx.timed()``, repeated under ``ctx.repeat()`` until the timed sections add up to the spec's
``min_time``: per run, wall time, its own CPU (user+sys, with that of child processes), the
server's CPU (``/proc/<pid>/stat`` of ``S3FAST_BENCH_SERVER_PID`` when given), the shaping
proxy's (``S3FAST_BENCH_PROXY_PID``) and peak RSS. s3fast's
worker processes (``S3FAST_PROCESSES`` > 1) are started before the clock and their CPU counted
as the client's. What it got
is then checked byte-exact against the sha256 of every object (untimed). Anything a library
prints goes to stderr; stdout carries only the result line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024


class WrongData(Exception):
    pass


def server_ticks(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_mib() -> float:
    """Peak RSS of this process image (VmHWM). ``ru_maxrss`` would do, but Linux carries it
    across ``execve`` from the parent, so a big parent would show up in every worker."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu(ru: resource.struct_rusage) -> float:
    return ru.ru_utime + ru.ru_stime


def _digest(value: Any) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    if isinstance(value, Path):
        with open(value, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
    elif isinstance(value, list | tuple):
        for chunk in value:
            view = memoryview(chunk)
            h.update(view)
            n += view.nbytes
    else:
        view = memoryview(value)
        h.update(view)
        n = view.nbytes
    return n, h.hexdigest()


class Ctx:
    """What a client implementation sees: where the data is, and the stopwatch."""

    def __init__(self, spec: dict[str, Any], client: str, workload: str, tmp: str) -> None:
        self.spec = spec
        self.client = client
        self.workload = workload
        self.tmp = tmp
        self.bucket: str = spec["bucket"]
        self.endpoint: str | None = spec["endpoint"]
        self.region: str = spec["region"]
        # for the peers' own pools and semaphores (the sweep sets their library default, 10)
        self.concurrency = int(os.environ.get("S3FAST_BENCH_PEER_CONCURRENCY") or 32)
        self.range_size = 8 * 1024 * 1024
        self.warm_key: str = spec["small"][0][0]
        self.measured: dict[str, Any] | None = None
        self.note = ""
        self._server_pid = int(os.environ.get("S3FAST_BENCH_SERVER_PID") or 0) or None
        self._proxy_pid = int(os.environ.get("S3FAST_BENCH_PROXY_PID") or 0) or None
        # Repetition: the timed section runs again until its runs add up to min_time seconds.
        self.min_time = float(spec.get("min_time") or 0.0)
        self.max_iterations = int(spec.get("max_iterations") or 100_000)
        self.samples: list[dict[str, Any]] = []
        # Live helper processes (s3fast's workers) whose CPU counts as the client's: they are
        # not reaped inside the timed section, so RUSAGE_CHILDREN would miss them.
        self.extra_pids: list[int] = []

    # --- what to move ------------------------------------------------------------------

    @property
    def objects(self) -> list[tuple[str, int, str]]:
        """``(key, size, sha256)`` of what this workload reads."""
        w = self.workload
        if w in ("get_mem", "get_files"):
            return [tuple(x) for x in self.spec["large"]]  # type: ignore[misc]
        if w == "get_big":
            return [tuple(self.spec["big"])]  # type: ignore[list-item]
        if w in ("small", "info"):
            return [tuple(x) for x in self.spec["small"]]  # type: ignore[misc]
        if w == "list":
            return [tuple(x) for x in self.spec["list"]]  # type: ignore[misc]
        if w in ("context", "metadata"):
            return [tuple(x) for x in self.spec["tiny"]]  # type: ignore[misc]
        raise ValueError(w)

    @property
    def keys(self) -> list[str]:
        return [o[0] for o in self.objects]

    @property
    def list_prefix(self) -> str:
        return str(self.spec["list_prefix"])

    @property
    def put_files(self) -> list[tuple[str, str]]:
        """``(local path, key)`` pairs for the put workload."""
        prefix = f"{self.spec['root']}put/{self.client}/"
        return [(path, prefix + suffix) for path, suffix, _, _ in self.spec["put"]]

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, url: str) -> str:
        return url.removeprefix(f"s3://{self.bucket}/")

    def local_path(self, key: str) -> str:
        return os.path.join(self.tmp, key.replace("/", "_"))

    # --- measuring ---------------------------------------------------------------------

    def repeat(self) -> Iterator[int]:
        """The iterations of a timed section: ``for _ in ctx.repeat(): with ctx.timed(): ...``.

        At least one; then more until the timed sections add up to ``min_time`` seconds (or
        ``max_iterations``, or the untimed work between them takes too long). What happens
        outside ``timed()`` in the loop body (dropping the last result, removing its files)
        is not counted."""
        self.samples = []
        self.measured = None
        started = time.perf_counter()
        budget = 3 * self.min_time + 10
        i = 0
        while True:
            yield i
            i += 1
            if len(self.samples) < i:
                raise RuntimeError("an iteration of ctx.repeat() never entered ctx.timed()")
            timed = sum(s["wall_s"] for s in self.samples)
            if timed >= self.min_time or i >= self.max_iterations:
                break
            if time.perf_counter() - started > budget:
                self.note = self.note or "stopped repeating early: untimed work between runs"
                break

    @contextmanager
    def timed(self) -> Iterator[None]:
        """One timed section. Called repeatedly (under ``repeat()``), every call is a sample;
        ``measured`` holds the median wall time and the mean CPU per sample."""
        self_0 = resource.getrusage(resource.RUSAGE_SELF)
        kids_0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_0 = server_ticks(self._server_pid)
        proxy_0 = server_ticks(self._proxy_pid)
        extra_0 = [server_ticks(pid) or 0 for pid in self.extra_pids]
        t0 = time.perf_counter()
        yield
        wall = time.perf_counter() - t0
        self_1 = resource.getrusage(resource.RUSAGE_SELF)
        kids_1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_1 = server_ticks(self._server_pid)
        proxy_1 = server_ticks(self._proxy_pid)
        extra_1 = [server_ticks(pid) or 0 for pid in self.extra_pids]
        tck = os.sysconf("SC_CLK_TCK")
        sample: dict[str, Any] = {
            "wall_s": wall,
            "cpu_user_s": self_1.ru_utime - self_0.ru_utime,
            "cpu_sys_s": self_1.ru_stime - self_0.ru_stime,
            "children_cpu_s": _cpu(kids_1) - _cpu(kids_0) + (sum(extra_1) - sum(extra_0)) / tck,
            "server_cpu_s": (server_1 - server_0) / tck
            if server_0 is not None and server_1 is not None
            else None,
            "proxy_cpu_s": (proxy_1 - proxy_0) / tck
            if proxy_0 is not None and proxy_1 is not None
            else None,
        }
        self.samples.append(sample)
        self.measured = self._aggregate(peak_rss_mib(), kids_1.ru_maxrss / 1024)

    def _aggregate(self, rss_mib: float, children_rss_mib: float) -> dict[str, Any]:
        """Wall time: the median sample, with every sample kept (``walls_s``). CPU, the
        server's and the proxy's: the mean per sample (they are counted in clock ticks, too
        coarse for one short sample)."""
        samples = self.samples
        n = len(samples)

        def mean(field: str) -> float | None:
            values = [s[field] for s in samples]
            if any(v is None for v in values):
                return None
            return float(sum(values)) / n

        walls = [s["wall_s"] for s in samples]
        out: dict[str, Any] = {
            "wall_s": statistics.median(walls),
            "walls_s": [round(w, 7) for w in walls],
            "iterations": n,
            "timed_s": sum(walls),
            "cpu_user_s": mean("cpu_user_s"),
            "cpu_sys_s": mean("cpu_sys_s"),
            "children_cpu_s": mean("children_cpu_s"),
            "server_cpu_s": mean("server_cpu_s"),
            "proxy_cpu_s": mean("proxy_cpu_s"),
            "rss_mib": rss_mib,
            "children_rss_mib": children_rss_mib,
        }
        out["cpu_s"] = out["cpu_user_s"] + out["cpu_sys_s"] + out["children_cpu_s"]
        return out

    @staticmethod
    def drop_files(paths: Iterable[Any]) -> None:
        """Remove the files an iteration downloaded (between iterations, untimed), so that
        repeating a download does not fill tmpfs."""
        for path in paths:
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def check(self, got: Mapping[str, Any]) -> None:
        """``got`` maps key to bytes-like, a list of bytes-like chunks in order, or a Path."""
        expected = {k: (s, h) for k, s, h in self.objects}
        missing = sorted(set(expected) - set(got))
        if missing:
            raise WrongData(f"{len(missing)} objects missing, e.g. {missing[0]}")
        extra = sorted(set(got) - set(expected))
        if extra:
            raise WrongData(f"unexpected objects, e.g. {extra[0]}")
        # hashlib drops the GIL on big buffers: hash on every CPU we may use.
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            digests = dict(
                zip(expected, pool.map(lambda k: _digest(got[k]), expected), strict=True)
            )
        for key, (size, sha) in expected.items():
            n, digest = digests[key]
            if n != size:
                raise WrongData(f"{key}: {n} bytes, expected {size}")
            if digest != sha:
                raise WrongData(f"{key}: sha256 differs")

    def check_sizes(self, got: Mapping[str, int | None]) -> None:
        """For list and info: the same keys with the same sizes."""
        expected = {k: s for k, s, _ in self.objects}
        if set(got) != set(expected):
            missing = sorted(set(expected) - set(got))[:1]
            extra = sorted(set(got) - set(expected))[:1]
            raise WrongData(
                f"{len(got)} keys, expected {len(expected)} (missing {missing}, extra {extra})"
            )
        for key, size in expected.items():
            if got[key] != size:
                raise WrongData(f"{key}: size {got[key]}, expected {size}")


def volume(ctx: Ctx) -> tuple[int, int]:
    """(bytes, objects) a workload moves."""
    if ctx.workload == "put_files":
        return sum(f[2] for f in ctx.spec["put"]), len(ctx.spec["put"])
    if ctx.workload in ("context", "metadata"):
        return 0, 1  # per iteration: one context, or one round of the datastore's calls
    objs = ctx.objects
    if ctx.workload in ("list", "info"):
        return 0, len(objs)
    return sum(o[1] for o in objs), len(objs)


def run(client: str, workload: str, spec: dict[str, Any], tmp: str) -> dict[str, Any]:
    ctx = Ctx(spec, client, workload, tmp)
    result: dict[str, Any] = {"client": client, "workload": workload}
    if hasattr(os, "sched_getaffinity"):
        result["cpus"] = sorted(os.sched_getaffinity(0))
    try:
        impl = _implementation(client, workload)
    except ImportError as exc:
        return {**result, "status": "skipped (not installed)", "error": str(exc)}
    try:
        impl(ctx)
        status = "OK" if ctx.measured else "error: the client never timed a transfer"
    except WrongData as exc:
        status = "WRONG DATA"
        result["error"] = str(exc)
    except NotImplementedError:
        status = "n/a"
    except BaseException as exc:
        traceback.print_exc()
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        status = f"error: {text[:200]}"
    result["status"] = status
    result.update(ctx.measured or {})
    result["bytes"], result["objects"] = volume(ctx)
    if ctx.note:
        result["note"] = ctx.note
    return result


def _implementation(client: str, workload: str) -> Any:
    if workload in ("context", "metadata"):
        from . import contexts

        return contexts.IMPLEMENTATIONS[client]
    if client == "floor":
        from .floor import run_floor

        return run_floor
    if client in ("s3fast_async", "aiobotocore", "obstore"):
        from . import aclients

        return aclients.IMPLEMENTATIONS[client]
    from . import clients

    return clients.IMPLEMENTATIONS[client]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("--client", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument(
        "--tmp", required=True, help="a private scratch dir (removed by the parent)"
    )
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    # Keep stdout for the result line; anything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with open(args.spec) as f:
        spec = json.load(f)
    os.makedirs(args.tmp, exist_ok=True)
    result = run(args.client, args.workload, spec, args.tmp)
    out.write(json.dumps(result) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
