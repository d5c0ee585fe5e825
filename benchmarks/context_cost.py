"""Per-context cost in a warm process: ``with S3(s3root=...) as s3: s3.get(1 KB)`` (and the
``AsyncS3`` form inside one event loop), against boto3's new client + ``get_object`` and
``get_object`` alone, on a SeaweedFS started here. 3 interleaved rounds of 20; medians.

Then a fresh process's cost (what a Metaflow task, a CLI call or a worker process pays):
the import, and the first client with its first 1 KiB GET, for ``s3fast.S3``, boto3 and
obstore, timed inside ``FRESH`` interleaved child processes each; medians with the
interquartile range.

    python -m benchmarks.context_cost
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import boto3

from s3fast import S3, AsyncS3
from s3fast.testing import ADMIN, SeaweedFS

ROUNDS, N = 3, 20
FRESH = 15

# Each child prints {"import": ms, "first": ms}: the import, then a client and one GET.
_CHILDREN = {
    "s3fast S3": (
        "from s3fast import S3",
        "with S3(s3root=root) as s3:\n    assert len(s3.get('k').blob) == 1024",
    ),
    "boto3": (
        "import boto3",
        "c = boto3.client('s3')\nassert len(c.get_object(Bucket=bucket, Key='k')['Body'].read()) == 1024",
    ),
    "obstore": (
        "import obstore\nfrom obstore.store import S3Store",
        "store = S3Store(bucket, config={'endpoint': os.environ['AWS_ENDPOINT_URL_S3'], "
        "'region': 'us-east-1', 'virtual_hosted_style_request': False}, "
        "client_options={'allow_http': True})\n"
        "assert len(obstore.get(store, 'k').bytes()) == 1024",
    ),
}
_CHILD = """
import os, sys, time, json
bucket = sys.argv[1]
root = "s3://" + bucket
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{first}
t2 = time.perf_counter()
print(json.dumps({{"import": (t1 - t0) * 1000, "first": (t2 - t1) * 1000}}))
"""


def _quartiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=4)
    return f"{statistics.median(ms):7.1f} ms (IQR {q[0]:.1f}-{q[2]:.1f})"


def fresh_processes(bucket: str) -> None:
    """The import and the first client + GET of a new process, per client."""
    got: dict[str, dict[str, list[float]]] = {}
    for _ in range(FRESH):
        for name, (imports, first) in _CHILDREN.items():
            code = _CHILD.format(imports=imports, first=first)
            out = subprocess.run(
                [sys.executable, "-c", code, bucket],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
            row = json.loads(out.splitlines()[-1])
            for part, ms in row.items():
                got.setdefault(name, {}).setdefault(part, []).append(ms)
    print(f"a fresh process ({FRESH} each, interleaved):")
    for name, parts in got.items():
        total = [a + b for a, b in zip(parts["import"], parts["first"], strict=True)]
        print(
            f"  {name:10s} import {_quartiles(parts['import'])}, first client + GET "
            f"{_quartiles(parts['first'])}, both {_quartiles(total)}"
        )


def main() -> None:
    with SeaweedFS() as srv:
        os.environ.update(srv.env())
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        bucket = f"ctx-{uuid.uuid4().hex[:8]}"
        client = boto3.client(
            "s3",
            endpoint_url=srv.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ADMIN.access_key,
            aws_secret_access_key=ADMIN.secret_key,
        )
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1024)
        root = f"s3://{bucket}"

        def sync_context() -> None:
            with S3(s3root=root) as s3:
                assert len(s3.get("k").blob) == 1024

        async def async_context() -> None:
            async with AsyncS3(s3root=root) as s3:
                assert len((await s3.get("k", in_memory=True)).blob) == 1024

        def boto3_new_client() -> None:
            new = boto3.client("s3", region_name="us-east-1")
            assert len(new.get_object(Bucket=bucket, Key="k")["Body"].read()) == 1024
            new.close()

        def boto3_get() -> None:
            assert len(client.get_object(Bucket=bucket, Key="k")["Body"].read()) == 1024

        times: dict[str, list[float]] = {}

        def timed(name: str, fn: Callable[[], None]) -> None:
            fn()
            for _ in range(N):
                start = time.perf_counter()
                fn()
                times.setdefault(name, []).append((time.perf_counter() - start) * 1000)

        async def timed_async() -> None:
            await async_context()
            for _ in range(N):
                start = time.perf_counter()
                await async_context()
                times.setdefault("AsyncS3 context", []).append((time.perf_counter() - start) * 1000)

        for _ in range(ROUNDS):
            timed("S3 context", sync_context)
            asyncio.run(timed_async())
            timed("boto3 new client + GET", boto3_new_client)
            timed("boto3 GET only", boto3_get)
        client.close()
        for name, ms in times.items():
            ms.sort()
            print(
                f"{name:24s} median {statistics.median(ms):7.2f} ms"
                f"  p10 {ms[len(ms) // 10]:6.2f}  p90 {ms[len(ms) * 9 // 10]:6.2f}"
            )
        fresh_processes(bucket)


if __name__ == "__main__":
    main()
