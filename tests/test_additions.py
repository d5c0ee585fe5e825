"""Library additions: delete / delete_many / delete_recursive, server-side copy (CopyObject and
UploadPartCopy), progress callbacks and iter_get_many, against SeaweedFS and moto."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3AccessDenied,
    MetaflowS3Exception,
    MetaflowS3NotFound,
    Progress,
    TransferConfig,
)
from s3fast._engine.copy import _create, copy_object
from s3fast.limits import MiB
from s3fast.testing import READER
from s3fast.urls import parse

from .conftest import Server, open_uploads
from .proxy import FaultProxy, Faults

SMALL = TransferConfig(range_size=256 * 1024, part_size=5 * MiB, multipart_threshold=5 * MiB)


def _keys(boto: object, bucket: str) -> list[str]:
    pages = boto.get_paginator("list_objects_v2").paginate(Bucket=bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


# --- deletes ---------------------------------------------------------------------------------


def test_delete_one_and_many(bucket: str, boto: object) -> None:
    root = f"s3://{bucket}/d"
    with S3(s3root=root) as s3:
        s3.put_many([(f"k{i}", str(i)) for i in range(5)])
        assert s3.delete("k0") == f"{root}/k0"
        s3.delete("never-existed")  # S3 semantics: not an error
        seen: list[Progress] = []
        urls = s3.delete_many(["k1", "k2", "k2", "missing"], progress=seen.append)
    assert urls == [f"{root}/k1", f"{root}/k2", f"{root}/missing"]
    assert _keys(boto, bucket) == ["d/k3", "d/k4"]
    assert seen[0] == Progress(0, 3, 0, None) and seen[-1] == Progress(3, 3, 0, None)


def test_delete_many_batches_over_1000_keys(bucket: str, boto: object) -> None:
    keys = [f"many/{i:05d}" for i in range(1203)]
    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put_many([(k, b"x") for k in keys] + [("keep", b"y")])
        seen: list[Progress] = []
        assert len(s3.delete_many(keys, progress=seen.append)) == 1203
    assert _keys(boto, bucket) == ["keep"]
    # two requests (1000 + 203 keys): one report at the start, then one per request
    assert [p.objects_done for p in seen] in ([0, 1000, 1203], [0, 203, 1203])


def test_delete_recursive_spares_siblings(bucket: str, boto: object) -> None:
    for k in ["dir", "dir/a", "dir/b/c", "dir_v2/a", "dirt", "other/dir/a"]:  # one at a time:
        boto.put_object(Bucket=bucket, Key=k, Body=k.encode())  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}") as s3:  # (SeaweedFS can lose "dir" put beside "dir/a")
        deleted = s3.delete_recursive(["dir"])
    assert sorted(deleted) == [f"s3://{bucket}/{k}" for k in ["dir", "dir/a", "dir/b/c"]]
    assert _keys(boto, bucket) == ["dir_v2/a", "dirt", "other/dir/a"]


def test_delete_many_reports_per_key_errors(seaweed_bucket: str, seaweed: Server) -> None:
    """SeaweedFS answers DeleteObjects from a read-only identity with per-key AccessDenied
    (HTTP 200): each failed key is named; nothing is silently dropped."""
    root = f"s3://{seaweed_bucket}/p"
    with S3(s3root=root) as s3:
        s3.put_many([("a", "1"), ("b", "2")])
    os.environ.update(READER.env())
    with S3(s3root=root) as s3, pytest.raises(MetaflowS3AccessDenied) as info:
        s3.delete_many(["a", "b"])
    assert f"{root}/a" in str(info.value) and f"{root}/b" in str(info.value)
    assert "2 of 2 keys were not deleted" in str(info.value)
    assert info.value.failed == {f"{root}/a": "AccessDenied", f"{root}/b": "AccessDenied"}  # type: ignore[attr-defined]
    with S3(s3root=root) as s3:
        assert [o.key for o in s3.list_recursive()] == ["a", "b"]


def test_delete_many_mixed_batch(seaweed_bucket: str, seaweed: Server, boto: object) -> None:
    """A key the server refuses (SeaweedFS: InvalidRequest for '..') is reported; the others
    in the same request are deleted."""
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        s3.put_many([("a", "1"), ("b", "2")])
        with pytest.raises(MetaflowS3Exception, match=r"1 of 3 keys.*\.\./a \(InvalidRequest"):
            s3.delete_many(["a", "../a", "b"])
        assert s3.list_recursive() == []


# --- copies ----------------------------------------------------------------------------------


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
            s3._engine,
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
        task = asyncio.ensure_future(
            copy_object(
                s3._engine,
                parse(f"s3://{bucket}/big"),
                parse(f"s3://{bucket}/copy"),
                multipart_threshold=6 * MiB,
                part_size=5 * MiB,
            )
        )
        for _ in range(400):
            if await asyncio.to_thread(open_uploads, boto, bucket) or task.done():
                break
            await asyncio.sleep(0.005)
        assert not task.done(), "the copy finished before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_uploads(boto, bucket) == []
    assert "copy" not in _keys(boto, bucket)


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
            task = asyncio.ensure_future(_create(s3._engine, parse(f"s3://{seaweed_bucket}/c"), {}))
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


# --- progress --------------------------------------------------------------------------------


def test_progress_on_gets_and_puts(bucket: str, tmp_path: object) -> None:
    blobs = {f"p/{i}": os.urandom(n) for i, n in enumerate([0, 10, 300_000, 6 * MiB + 5])}
    total = sum(len(b) for b in blobs.values())
    with S3(s3root=f"s3://{bucket}", config=SMALL) as s3:
        up: list[Progress] = []
        s3.put_many(list(blobs.items()), progress=up.append)
        assert up[0] == Progress(0, 4, 0, total) and up[-1] == Progress(4, 4, total, total)
        assert len(up) <= 1 + 4 + 2 + 4  # at most once per part or object, never per read

        down: list[Progress] = []
        objs = s3.get_recursive(["p"], progress=down.append)
        assert down[0] == Progress(0, 4, 0, total) and down[-1] == Progress(4, 4, total, total)
        assert [p.bytes_done for p in down] == sorted(p.bytes_done for p in down)
        ranges = 1 + 2 + 25  # 256 KiB ranges of the two larger objects (empty/tiny: one each)
        assert len(down) <= 1 + 4 + ranges + 1
        assert sum(o.size for o in objs) == total

        many: list[Progress] = []
        s3.get_many(list(blobs), in_memory=True, progress=many.append)
        assert many[-1] == Progress(4, 4, total, None)

        files = []
        for i in range(3):
            path = os.path.join(str(tmp_path), f"f{i}")
            with open(path, "wb") as f:
                f.write(b"z" * (1000 * (i + 1)))
            files.append((f"files/{i}", path))
        seen: list[Progress] = []
        s3.put_files(files, progress=seen.append)
        assert seen[-1] == Progress(3, 3, 6000, 6000)
        seen = []
        s3.info_many([k for k, _ in files], progress=seen.append)
        assert seen[-1].objects_done == 3


def test_progress_callback_error_fails_the_call(bucket: str) -> None:
    def boom(p: Progress) -> None:
        if p.objects_done:
            raise RuntimeError("stop")

    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put("k", "v")
        with pytest.raises(RuntimeError, match="stop"):
            s3.get_many(["k"], progress=boom)
        with pytest.raises(TypeError):
            s3.get_many(["k"], progress=5)  # type: ignore[arg-type]


# --- streaming -------------------------------------------------------------------------------


def _files_in(dirs: list[str]) -> list[str]:
    return [os.path.join(d, f) for d in dirs if os.path.isdir(d) for f in os.listdir(d)]


@pytest.mark.asyncio
async def test_iter_get_many_yields_every_object(bucket: str) -> None:
    keys = [f"it/{i}" for i in range(50)]
    async with AsyncS3(s3root=f"s3://{bucket}", config=TransferConfig(max_concurrency=4)) as s3:
        await s3.put_many([(k, k * 3) for k in keys] + [("it/big", os.urandom(2 * MiB))])
        seen = {}
        async for obj in s3.iter_get_many([*keys, "it/big", "it/missing"], return_missing=True):
            seen[obj.key] = obj.text if obj.exists and obj.key != "it/big" else obj.size
        assert set(seen) == {*keys, "it/big", "it/missing"}
        assert all(seen[k] == k * 3 for k in keys)
        assert seen["it/big"] == 2 * MiB and seen["it/missing"] is None
        yielded = 0
        with pytest.raises(MetaflowS3NotFound, match="it/missing"):
            async for _ in s3.iter_get_many([*keys, "it/missing"]):
                yielded += 1
        # What was yielded stays the caller's; what was not is gone.
        assert len(_files_in(s3.tmpdirs)) == 51 + yielded, sorted(_files_in(s3.tmpdirs))


@pytest.mark.asyncio
async def test_iter_get_many_break_cancels_and_cleans_up(bucket: str) -> None:
    keys = [f"it/{i}" for i in range(200)]
    async with AsyncS3(s3root=f"s3://{bucket}", config=TransferConfig(max_concurrency=4)) as s3:
        await s3.put_many([(k, os.urandom(20_000)) for k in keys])
        async with contextlib.aclosing(s3.iter_get_many(keys)) as stream:
            first = await anext(stream)
            await asyncio.sleep(0.3)  # a slow consumer: downloads pause, they do not pile up
            assert len(_files_in(s3.tmpdirs)) <= 1 + 2 * 4 + 4  # yielded, waiting, in flight
        # Only the object that was handed out is left; nothing else keeps downloading.
        assert _files_in(s3.tmpdirs) == [first.path]
        await asyncio.sleep(0.2)
        assert _files_in(s3.tmpdirs) == [first.path]
        # Without aclosing: the abandoned iterator is finalized by the loop.
        async for second in s3.iter_get_many(keys):  # noqa: B007
            break
        for _ in range(100):
            if sorted(_files_in(s3.tmpdirs)) == sorted([first.path, second.path]):
                break
            await asyncio.sleep(0.02)
        assert sorted(_files_in(s3.tmpdirs)) == sorted([first.path, second.path])


def test_sync_iter_get_many(bucket: str) -> None:
    keys = [f"s/{i}" for i in range(30)]
    with S3(s3root=f"s3://{bucket}", config=TransferConfig(max_concurrency=4)) as s3:
        s3.put_many([(k, k) for k in keys])
        assert sorted(o.text for o in s3.iter_get_many(keys)) == sorted(keys)
        with contextlib.closing(s3.iter_get_many(keys)) as stream:
            first = next(stream)
        assert _files_in(s3.tmpdirs).count(first.path) == 1
        assert len(_files_in(s3.tmpdirs)) == 31
