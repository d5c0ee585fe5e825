"""asyncio clients: s3fast.AsyncS3, aiobotocore (gather + semaphore), obstore (Rust).

Each runs under uvloop when it is installed; the event loop and the client are made before
the clock starts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .worker import Ctx

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


async def bounded(n: int, fn: Callable[[T], Awaitable[Any]], items: Iterable[T]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))


def run_s3fast_async(ctx: Ctx) -> None:
    import s3fast

    async def main() -> None:
        w = ctx.workload
        async with s3fast.AsyncS3(tmproot=ctx.tmp, endpoint_url=ctx.endpoint) as s3:
            await s3.info(ctx.url(ctx.warm_key))
            if s3._procs.size > 1:  # start the workers and the loops before the clock
                from s3fast._engine.fanout import MIN_BATCH

                small = [ctx.url(k) for k, _, _ in ctx.spec["small"][:MIN_BATCH]]
                large = [ctx.url(k) for k, _, _ in ctx.spec["large"][:MIN_BATCH]]
                await s3.get_many(small, in_memory=True)  # small bodies: worker processes
                await s3.get_many(large, in_memory=True)  # big bodies: event loops in threads
                ctx.extra_pids = s3._procs.pids
            urls = [ctx.url(k) for k in ctx.keys] if w != "put_files" else []
            if w in ("get_mem", "small"):
                for _ in ctx.repeat():
                    objs: Any = None  # the last iteration's result is freed before the clock starts
                    with ctx.timed():
                        objs = await s3.get_many(urls, in_memory=True)
                ctx.check({ctx.key_of(o.url): o.blob for o in objs})
            elif w == "get_files":
                objs = []
                for _ in ctx.repeat():
                    ctx.drop_files(o.path for o in objs)  # the last iteration's files, untimed
                    with ctx.timed():
                        objs = await s3.get_many(urls)
                ctx.check({ctx.key_of(o.url): Path(str(o.path)) for o in objs})
            elif w == "get_big":
                for _ in ctx.repeat():
                    obj: Any = None
                    with ctx.timed():
                        obj = await s3.get(urls[0], in_memory=True)
                ctx.check({ctx.key_of(obj.url): obj.blob})
            elif w == "put_files":
                pairs = [(ctx.url(key), path) for path, key in ctx.put_files]
                for _ in ctx.repeat():
                    with ctx.timed():
                        await s3.put_files(pairs)
            elif w == "list":
                for _ in ctx.repeat():
                    objs = None
                    with ctx.timed():
                        objs = await s3.list_recursive([ctx.url(ctx.list_prefix)])
                ctx.check_sizes({ctx.key_of(o.url): o.size for o in objs})
            elif w == "info":
                for _ in ctx.repeat():
                    objs = None
                    with ctx.timed():
                        objs = await s3.info_many(urls)
                ctx.check_sizes({ctx.key_of(o.url): o.size for o in objs})
            else:
                raise NotImplementedError(w)

    _run(main())


def run_aiobotocore(ctx: Ctx) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    n, b, rs = ctx.concurrency, ctx.bucket, ctx.range_size

    async def main() -> None:
        w = ctx.workload
        config = AioConfig(
            max_pool_connections=n,
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if ctx.endpoint else None,
        )
        async with get_session().create_client(
            "s3", endpoint_url=ctx.endpoint, region_name=ctx.region, config=config
        ) as s3:
            await s3.head_object(Bucket=b, Key=ctx.warm_key)

            async def read(key: str, rng: str | None = None) -> bytes:
                extra = {"Range": rng} if rng else {}
                resp = await s3.get_object(Bucket=b, Key=key, **extra)
                async with resp["Body"] as body:
                    return await body.read()

            async def to_file(key: str) -> None:
                resp = await s3.get_object(Bucket=b, Key=key)
                async with resp["Body"] as body:
                    with open(ctx.local_path(key), "wb") as f:  # noqa: ASYNC230 (tmpfs)
                        while chunk := await body.read(1024 * 1024):
                            f.write(chunk)

            async def upload(pair: tuple[str, str], sem: asyncio.Semaphore) -> None:
                path, key = pair
                size = os.path.getsize(path)  # noqa: ASYNC240
                mpu = await s3.create_multipart_upload(Bucket=b, Key=key)
                uid = mpu["UploadId"]

                async def part(num_off: tuple[int, int]) -> dict[str, Any]:
                    num, off = num_off
                    async with sem:
                        with open(path, "rb") as f:  # noqa: ASYNC230 (tmpfs)
                            f.seek(off)
                            data = f.read(rs)
                        r = await s3.upload_part(
                            Bucket=b, Key=key, UploadId=uid, PartNumber=num, Body=data
                        )
                    return {"ETag": r["ETag"], "PartNumber": num}

                try:
                    parts = await asyncio.gather(
                        *(part(p) for p in enumerate(range(0, max(size, 1), rs), 1))
                    )
                    await s3.complete_multipart_upload(
                        Bucket=b, Key=key, UploadId=uid, MultipartUpload={"Parts": list(parts)}
                    )
                except BaseException:
                    await s3.abort_multipart_upload(Bucket=b, Key=key, UploadId=uid)
                    raise

            if w in ("get_mem", "small"):
                keys = ctx.keys
                for _ in ctx.repeat():
                    blobs: Any = None
                    with ctx.timed():
                        blobs = await bounded(n, read, keys)
                ctx.check(dict(zip(keys, blobs, strict=True)))
            elif w == "get_files":
                for _ in ctx.repeat():
                    with ctx.timed():
                        await bounded(n, to_file, ctx.keys)
                ctx.check({k: Path(ctx.local_path(k)) for k in ctx.keys})
            elif w == "get_big":
                key = ctx.objects[0][0]
                buf = bytearray()

                async def span(se: tuple[int, int]) -> None:
                    buf[se[0] : se[1] + 1] = await read(key, f"bytes={se[0]}-{se[1]}")

                for _ in ctx.repeat():
                    del buf[:]
                    with ctx.timed():
                        # the size, as a caller given only the key learns it
                        size = (await s3.head_object(Bucket=b, Key=key))["ContentLength"]
                        buf = bytearray(size)
                        spans = [(s, min(s + rs, size) - 1) for s in range(0, size, rs)]
                        await bounded(n, span, spans)
                ctx.check({key: buf})
            elif w == "put_files":
                sem = asyncio.Semaphore(n)
                for _ in ctx.repeat():
                    with ctx.timed():
                        await asyncio.gather(*(upload(p, sem) for p in ctx.put_files))
            elif w == "list":
                found: dict[str, int] = {}
                for _ in ctx.repeat():
                    found = {}
                    with ctx.timed():
                        pages = s3.get_paginator("list_objects_v2").paginate(
                            Bucket=b, Prefix=ctx.list_prefix
                        )
                        async for page in pages:
                            for o in page.get("Contents", []):
                                found[o["Key"]] = o["Size"]
                ctx.check_sizes(found)
            elif w == "info":
                keys = ctx.keys

                async def head(k: str) -> int:
                    return int((await s3.head_object(Bucket=b, Key=k))["ContentLength"])

                for _ in ctx.repeat():
                    with ctx.timed():
                        sizes = await bounded(n, head, keys)
                ctx.check_sizes(dict(zip(keys, sizes, strict=True)))
            else:
                raise NotImplementedError(w)

    _run(main())


def obstore_store(ctx: Ctx) -> Any:
    """An ``S3Store`` for the bench bucket (path style, plain HTTP allowed)."""
    from obstore.store import S3Store

    config: dict[str, Any] = {
        "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "region": ctx.region,
    }
    if os.environ.get("AWS_SESSION_TOKEN"):
        config["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    if ctx.endpoint:
        config["endpoint"] = ctx.endpoint
        config["virtual_hosted_style_request"] = False
    return S3Store(ctx.bucket, config=config, client_options={"allow_http": True})  # type: ignore[arg-type]


def run_obstore(ctx: Ctx) -> None:
    import obstore as obs

    n, rs = ctx.concurrency, ctx.range_size
    store = obstore_store(ctx)

    async def main() -> None:
        w = ctx.workload
        await obs.head_async(store, ctx.warm_key)

        async def read(key: str) -> Any:
            return await (await obs.get_async(store, key)).bytes_async()

        async def to_file(key: str) -> None:
            result = await obs.get_async(store, key)
            with open(ctx.local_path(key), "wb") as f:  # noqa: ASYNC230 (tmpfs)
                async for chunk in result.stream(min_chunk_size=1024 * 1024):
                    f.write(chunk)

        if w in ("get_mem", "small"):
            keys = ctx.keys
            for _ in ctx.repeat():
                blobs: Any = None
                with ctx.timed():
                    blobs = await bounded(n, read, keys)
            ctx.check(dict(zip(keys, blobs, strict=True)))
        elif w == "get_files":
            for _ in ctx.repeat():
                with ctx.timed():
                    await bounded(n, to_file, ctx.keys)
            ctx.check({k: Path(ctx.local_path(k)) for k in ctx.keys})
        elif w == "get_big":
            key = ctx.objects[0][0]
            size = 0

            async def span(start: int) -> Any:
                return await obs.get_range_async(store, key, start=start, end=min(start + rs, size))

            for _ in ctx.repeat():
                chunks = None
                with ctx.timed():
                    # the size, as a caller given only the key learns it
                    size = int((await obs.head_async(store, key))["size"])
                    chunks = await bounded(n, span, list(range(0, size, rs)))
            ctx.check({key: chunks})
        elif w == "put_files":
            pairs = ctx.put_files

            async def put(pair: tuple[str, str]) -> None:
                await obs.put_async(store, pair[1], Path(pair[0]), chunk_size=rs)

            for _ in ctx.repeat():
                with ctx.timed():
                    await bounded(max(1, n // 4), put, pairs)  # obstore runs parts 12-wide itself
        elif w == "list":
            found: dict[str, int] = {}
            for _ in ctx.repeat():
                found = {}
                with ctx.timed():
                    async for batch in obs.list(store, ctx.list_prefix, chunk_size=1000):
                        for meta in batch:
                            found[meta["path"]] = meta["size"]
            ctx.check_sizes(found)
        elif w == "info":
            keys = ctx.keys

            async def head(k: str) -> int:
                return int((await obs.head_async(store, k))["size"])

            for _ in ctx.repeat():
                with ctx.timed():
                    sizes = await bounded(n, head, keys)
            ctx.check_sizes(dict(zip(keys, sizes, strict=True)))
        else:
            raise NotImplementedError(w)

    _run(main())


IMPLEMENTATIONS: dict[str, Callable[[Ctx], None]] = {
    "s3fast_async": run_s3fast_async,
    "aiobotocore": run_aiobotocore,
    "obstore": run_obstore,
}
