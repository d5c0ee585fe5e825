"""Server-side copies: CopyObject, and UploadPartCopy ranges above the threshold, aborted on
cancellation (also while CreateMultipartUpload is out), against SeaweedFS and moto."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from s3fast import S3, AsyncS3, MetaflowS3NotFound, Progress, TransferConfig
from s3fast._engine.copy import _create, copy_object
from s3fast.limits import MiB
from s3fast.urls import parse

from ._internals import engine_of
from .conftest import Server, keys_in, open_uploads
from .proxy import FaultProxy, Faults


def test_copy_keeps_bytes_and_metadata(bucket: str) -> None:
    data = os.urandom(300_000)
    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put("src/a", data, content_type="application/x-test", metadata={"n": 1})
        assert s3.copy("src/a", "dst/a") == f"s3://{bucket}/dst/a"
        got = s3.get("dst/a")
        assert got.blob == data and got.metadata == {"n": 1}
        assert got.content_type == "application/x-test"
        with pytest.raises(MetaflowS3NotFound, match="src/missing"):
            s3.copy("src/missing", "dst/b")
        seen: list[Progress] = []
        pairs = s3.copy_many([("src/a", f"many/{i}") for i in range(3)], progress=seen.append)
        assert [d for _, d in pairs] == [f"s3://{bucket}/many/{i}" for i in range(3)]
        assert seen[-1] == Progress(3, 3, 3 * len(data), None)
        assert all(o.blob == data for o in s3.get_many([f"many/{i}" for i in range(3)]))


@pytest.mark.asyncio
async def test_multipart_copy_with_upload_part_copy(bucket: str) -> None:
    """Above the threshold (5 GiB in production; 6 MiB here) the copy is UploadPartCopy
    ranges; the copy reads back identical, with its metadata."""
    data = os.urandom(13 * MiB + 7)
    async with AsyncS3(s3root=f"s3://{bucket}") as s3:
        await s3.put("big", data, metadata={"kind": "big"}, content_type="application/x-big")
        done: list[int] = []
        await copy_object(
            engine_of(s3),
            parse(f"s3://{bucket}/big"),
            parse(f"s3://{bucket}/big-copy"),
            multipart_threshold=6 * MiB,
            part_size=5 * MiB,
            on_bytes=done.append,
        )
        assert sorted(done) == [3 * MiB + 7, 5 * MiB, 5 * MiB]
        got = await s3.get("big-copy", in_memory=True)
    assert got.blob is not None
    assert hashlib.sha256(got.blob).digest() == hashlib.sha256(data).digest()
    assert got.metadata == {"kind": "big"} and got.content_type == "application/x-big"


@pytest.mark.asyncio
async def test_multipart_copy_aborts_when_cancelled(bucket: str, boto: object) -> None:
    data = os.urandom(40 * MiB)
    async with AsyncS3(s3root=f"s3://{bucket}", config=TransferConfig(max_concurrency=1)) as s3:
        await s3.put("big", data)
        first_part = asyncio.Event()
        task = asyncio.ensure_future(
            copy_object(
                engine_of(s3),
                parse(f"s3://{bucket}/big"),
                parse(f"s3://{bucket}/copy"),
                multipart_threshold=6 * MiB,
                part_size=5 * MiB,
                on_bytes=lambda n: first_part.set(),
            )
        )
        await first_part.wait()  # one of 8 parts, one at a time: the upload is open
        assert not task.done(), "the copy finished before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_uploads(boto, bucket) == []
    assert "copy" not in keys_in(boto, bucket)


@pytest.mark.asyncio
async def test_cancel_while_creating_the_upload_still_aborts(
    seaweed_bucket: str, seaweed: Server
) -> None:
    """Cancelled while CreateMultipartUpload is out (the server has made the upload, its answer
    is held back by a proxy), the copy waits for the upload id and aborts it."""
    boto = seaweed.client()
    proxy = FaultProxy(int(seaweed.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set(Faults(stall=1.5, times=1))
        config = TransferConfig(transport="botocore", max_concurrency=1)
        async with AsyncS3(endpoint_url=proxy.url, config=config) as s3:
            task = asyncio.ensure_future(
                _create(engine_of(s3), parse(f"s3://{seaweed_bucket}/c"), {})
            )
            for _ in range(100):
                if await asyncio.to_thread(open_uploads, boto, seaweed_bucket):
                    break
                await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert proxy.injected == 1
        assert open_uploads(boto, seaweed_bucket) == []
    finally:
        proxy.stop()
        boto.close()  # type: ignore[attr-defined]
