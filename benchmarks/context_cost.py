"""Per-context cost in a warm process: ``with S3(s3root=...) as s3: s3.get(1 KB)`` (and the
``AsyncS3`` form inside one event loop), against boto3's new client + ``get_object`` and
``get_object`` alone, on a SeaweedFS started here. 3 interleaved rounds of 20; medians.

    python -m benchmarks.context_cost
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable

import boto3

from s3fast import S3, AsyncS3
from s3fast.testing import ADMIN, SeaweedFS

ROUNDS, N = 3, 20


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


if __name__ == "__main__":
    main()
