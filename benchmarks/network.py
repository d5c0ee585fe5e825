"""Network profiles: straight to the server (``loopback``), or through the shaping proxy
(``s3like``: S3's time to first byte and per-connection bandwidth, see ``shaper.py``).

Without ``--network`` the harness runs every client and workload on ``loopback`` and a subset
under ``s3like`` (``S3LIKE_CLIENTS`` x ``S3LIKE_WORKLOADS``), which keeps the default run
within a few minutes; ``--network loopback,s3like`` runs everything under both.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

NETWORKS = ("loopback", "s3like")
DIRECT = "direct"  # the label of a run against --endpoint (no loopback, no proxy)
# The default subset under s3like: where latency and a per-connection cap change the picture
# (one big object by ranges, many objects, many tiny objects), for s3fast and the two peers
# that are usually the best.
S3LIKE_CLIENTS = ("s3fast_sync", "s3fast_async", "boto3", "obstore")
S3LIKE_WORKLOADS = ("get_mem", "get_big", "small")


@dataclass
class Network:
    name: str
    endpoint: str | None
    describe: str
    env: dict[str, str] = field(default_factory=dict)  # for the workers
    spec_path: str = ""


def parse(raw: str | None, endpoint_given: bool) -> list[str] | None:
    """``--network``: None (the default plan) or the networks to run everything under."""
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}; known: {', '.join(NETWORKS)}")
    if endpoint_given and "s3like" in names:
        raise SystemExit("--network s3like shapes the embedded server only (not --endpoint)")
    return names


def default_plan(quick: bool, endpoint_given: bool) -> list[str]:
    if endpoint_given:
        return [DIRECT]
    return ["loopback"] if quick else list(NETWORKS)


def runs_under(network: str, client: str, workload: str, explicit: bool) -> bool:
    """Whether (client, workload) runs under ``network``."""
    if explicit or network != "s3like":
        return True
    return client in S3LIKE_CLIENTS and workload in S3LIKE_WORKLOADS


@contextmanager
def shaping_proxy(
    upstream: str, latency_ms: float, rate_mb_s: float, env: dict[str, str]
) -> Iterator[tuple[str, int]]:
    """``python -m benchmarks.shaper`` in front of ``upstream``; yields (its URL, its pid)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.shaper",
        "--upstream",
        upstream,
        "--latency-ms",
        str(latency_ms),
        "--rate-mb-s",
        str(rate_mb_s),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the shaping proxy did not start: {line!r}")
        yield f"http://{line.removeprefix('listening on ')}", proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def describe_s3like(latency_ms: float, rate_mb_s: float) -> str:
    rate = f"{rate_mb_s:g} MB/s" if rate_mb_s else "no bandwidth cap"
    return (
        f"s3like: through a shaping proxy on loopback ({latency_ms:g} ms to first byte per "
        f"request, {rate} per connection and direction; benchmarks/shaper.py)"
    )
