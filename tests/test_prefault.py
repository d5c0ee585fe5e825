"""``S3FAST_PREFAULT=1``: the pages of a big download into memory are faulted in by s3fast's
prefault threads, not by the event loop's thread inside ``recv``; by default, by the loop."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from s3fast.limits import MiB

from .conftest import Server, thp_always
from .proxy import FaultProxy, Faults

# Above glibc's largest mmap threshold (32 MiB): every download of it is fresh memory from
# mmap, whose pages the kernel has not handed out yet.
SIZE = 48 * MiB
PAGES = SIZE // 4096
PAUSE = 2.0  # seconds each response of the object waits after its head and first byte

_CHILD = textwrap.dedent(
    """
    import asyncio, hashlib, resource, sys
    from s3fast import AsyncS3, TransferConfig

    root, endpoint = sys.argv[1], sys.argv[2]

    def faults():  # of this thread, the event loop's
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    async def main():
        config = TransferConfig(processes=1)
        async with AsyncS3(s3root=root, endpoint_url=endpoint, config=config) as s3:
            await s3.get("small", in_memory=True)  # a connection, credentials, imports
            before = faults()
            obj = await s3.get("big", in_memory=True)
            return faults() - before, hashlib.sha256(obj.blob).hexdigest()

    print(*asyncio.run(main()))
    """
)


def _loop_faults(server: Server, endpoint: str, bucket: str, prefault: bool) -> tuple[int, str]:
    env = {**os.environ, **server.env(), "S3FAST_HUGE_PAGES": "0"}  # 4 KiB pages either way
    env.pop("S3FAST_KEEP_FREED_MEMORY", None)
    env.pop("S3FAST_PREFAULT", None)  # off by default
    if prefault:
        env["S3FAST_PREFAULT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, f"s3://{bucket}", endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    faults, digest = proc.stdout.split()
    return int(faults), digest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE")
def test_the_event_loop_takes_few_of_a_big_download_s_page_faults(
    seaweed: Server, seaweed_bucket: str, proxy: FaultProxy
) -> None:
    # Each response for "big" pauses after its head and first body byte: by then the sink
    # is open (the object's memory allocated, prefaulting started), and no body has come.
    proxy.set(Faults(pause_at=1, stall=PAUSE, seconds=600, match="big"))
    body = os.urandom(SIZE)
    seaweed.seed(seaweed_bucket, {"big": body, "small": b"s"})
    want = hashlib.sha256(body).hexdigest()
    # Prefaulted during the pause: the loop faults in its own small allocations only.
    faults, digest = _loop_faults(seaweed, proxy.url, seaweed_bucket, prefault=True)
    assert digest == want
    assert faults < PAGES // 8, (faults, PAGES)
    assert proxy.counts["pause"] >= 1
    if not thp_always():  # with huge pages everywhere, few faults either way
        faults, digest = _loop_faults(seaweed, proxy.url, seaweed_bucket, prefault=False)
        assert digest == want
        assert faults > PAGES * 3 // 4, (faults, PAGES)
