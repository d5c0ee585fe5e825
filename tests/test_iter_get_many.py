"""iter_get_many: objects in completion order, downloads bounded while the consumer is slow,
and leaving early cancels the rest and removes what was not handed out."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest

from s3fast import S3, AsyncS3, MetaflowS3NotFound, TransferConfig
from s3fast.limits import MiB


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
        # Without aclosing: the abandoned iterator is finalized by the loop. Its downloads
        # still in flight may create a temp file after the break; the check waits until the
        # loop has closed the iterator: every task started since (its downloads, the
        # finalizer's aclose) has ended.
        before = asyncio.all_tasks()
        async for second in s3.iter_get_many(keys):  # noqa: B007
            break
        assert await _tasks_end(before)
        assert sorted(_files_in(s3.tmpdirs)) == sorted([first.path, second.path])


async def _tasks_end(before: set[asyncio.Task[Any]]) -> bool:
    """Whether every task but those in ``before`` (and this one) ends within 10 s; tasks
    they start meanwhile included."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 10
    while others := asyncio.all_tasks() - before - {asyncio.current_task()}:
        _, pending = await asyncio.wait(others, timeout=max(0.0, until - loop.time()))
        if pending:
            return False
    return True


def test_sync_iter_get_many(bucket: str) -> None:
    keys = [f"s/{i}" for i in range(30)]
    with S3(s3root=f"s3://{bucket}", config=TransferConfig(max_concurrency=4)) as s3:
        s3.put_many([(k, k) for k in keys])
        assert sorted(o.text for o in s3.iter_get_many(keys)) == sorted(keys)
        with contextlib.closing(s3.iter_get_many(keys)) as stream:
            first = next(stream)
        assert _files_in(s3.tmpdirs).count(first.path) == 1
        assert len(_files_in(s3.tmpdirs)) == 31
