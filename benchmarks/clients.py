"""Synchronous clients: s3fast.S3, boto3 (threads + s3transfer), s3fs (fsspec), metaflow.S3.

Each ``run_<client>(ctx)`` sets its client up, makes one warm-up HEAD, times the transfer in
``ctx.timed()`` and hands what it got to ``ctx.check`` (inside the client's scope, so temp
files still exist). Imports happen here, in the worker, never in the parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .worker import Ctx


def _metaflow_shaped(ctx: Ctx, s3: Any, urls: list[str]) -> None:
    """The workloads that s3fast.S3 and metaflow.S3 run with the very same calls."""
    w = ctx.workload
    if w == "get_files":
        objs: Any = []
        for _ in ctx.repeat():
            ctx.drop_files(o.path for o in objs)  # the last iteration's files, untimed
            with ctx.timed():
                objs = s3.get_many(urls)
        ctx.check({ctx.key_of(o.url): Path(str(o.path)) for o in objs})
    elif w == "put_files":
        pairs = [(ctx.url(key), path) for path, key in ctx.put_files]
        for _ in ctx.repeat():
            with ctx.timed():
                s3.put_files(pairs)
    elif w == "list":
        for _ in ctx.repeat():
            objs = None
            with ctx.timed():
                objs = s3.list_recursive([ctx.url(ctx.list_prefix)])
        ctx.check_sizes({ctx.key_of(o.url): o.size for o in objs})
    elif w == "info":
        for _ in ctx.repeat():
            objs = None
            with ctx.timed():
                objs = s3.info_many(urls)
        ctx.check_sizes({ctx.key_of(o.url): o.size for o in objs})
    else:
        raise NotImplementedError(w)


def run_s3fast_sync(ctx: Ctx) -> None:
    import s3fast

    w = ctx.workload
    with s3fast.S3(tmproot=ctx.tmp, endpoint_url=ctx.endpoint) as s3:
        s3.info(ctx.url(ctx.warm_key))
        if s3._aio._procs.size > 1:  # start the workers and the loops before the clock
            from s3fast._engine.fanout import MIN_BATCH

            small = [ctx.url(k) for k, _, _ in ctx.spec["small"][:MIN_BATCH]]
            large = [ctx.url(k) for k, _, _ in ctx.spec["large"][:MIN_BATCH]]
            s3.get_many(small, in_memory=True)  # small bodies: worker processes
            s3.get_many(large, in_memory=True)  # big bodies: event loops in threads
            ctx.extra_pids = s3._aio._procs.pids
        urls = [ctx.url(k) for k in ctx.keys] if w != "put_files" else []
        if w in ("get_mem", "small"):
            for _ in ctx.repeat():
                objs: Any = None  # the last iteration's result is freed before the clock starts
                with ctx.timed():
                    objs = s3.get_many(urls, in_memory=True)
            ctx.check({ctx.key_of(o.url): o.blob for o in objs})
        elif w == "get_big":
            for _ in ctx.repeat():
                obj: Any = None
                with ctx.timed():
                    obj = s3.get(urls[0], in_memory=True)
            ctx.check({ctx.key_of(obj.url): obj.blob})
        else:
            _metaflow_shaped(ctx, s3, urls)


def run_boto3(ctx: Ctx) -> None:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    from .dataset import boto_client

    w = ctx.workload
    n = ctx.concurrency
    s3 = boto_client(ctx.endpoint, ctx.region, pool=n)
    s3.head_object(Bucket=ctx.bucket, Key=ctx.warm_key)
    config = TransferConfig(
        max_concurrency=n,
        multipart_threshold=ctx.range_size,
        multipart_chunksize=ctx.range_size,
        use_threads=True,
    )

    def threads(fn: Callable[[str], Any], keys: list[str]) -> list[Any]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(fn, keys))

    if w in ("get_mem", "small"):
        keys = ctx.keys
        for _ in ctx.repeat():
            blobs: Any = None
            with ctx.timed():
                blobs = threads(
                    lambda k: s3.get_object(Bucket=ctx.bucket, Key=k)["Body"].read(), keys
                )
        ctx.check(dict(zip(keys, blobs, strict=True)))
    elif w in ("get_files", "put_files"):
        with create_transfer_manager(s3, config) as tm:
            if w == "get_files":
                for _ in ctx.repeat():
                    with ctx.timed():
                        futures = [tm.download(ctx.bucket, k, ctx.local_path(k)) for k in ctx.keys]
                        for f in futures:
                            f.result()
                ctx.check({k: Path(ctx.local_path(k)) for k in ctx.keys})
            else:
                for _ in ctx.repeat():
                    with ctx.timed():
                        futures = [tm.upload(path, ctx.bucket, key) for path, key in ctx.put_files]
                        for f in futures:
                            f.result()
    elif w == "get_big":
        import io

        key = ctx.keys[0]
        for _ in ctx.repeat():
            buf: Any = None
            with ctx.timed():
                buf = io.BytesIO()
                s3.download_fileobj(ctx.bucket, key, buf, Config=config)
        ctx.check({key: buf.getbuffer()})
    elif w == "list":
        for _ in ctx.repeat():
            with ctx.timed():
                found = {
                    o["Key"]: o["Size"]
                    for page in s3.get_paginator("list_objects_v2").paginate(
                        Bucket=ctx.bucket, Prefix=ctx.list_prefix
                    )
                    for o in page.get("Contents", [])
                }
        ctx.check_sizes(found)
    elif w == "info":
        keys = ctx.keys
        for _ in ctx.repeat():
            with ctx.timed():
                sizes = threads(
                    lambda k: s3.head_object(Bucket=ctx.bucket, Key=k)["ContentLength"], keys
                )
        ctx.check_sizes(dict(zip(keys, sizes, strict=True)))
    else:
        raise NotImplementedError(w)
    s3.close()


def run_s3fs(ctx: Ctx) -> None:
    import s3fs
    from fsspec.asyn import sync

    w = ctx.workload
    fs = s3fs.S3FileSystem(
        key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        token=os.environ.get("AWS_SESSION_TOKEN"),
        endpoint_url=ctx.endpoint,
        client_kwargs={"region_name": ctx.region},
        config_kwargs={"max_pool_connections": ctx.concurrency},
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    b = ctx.bucket
    fs.info(f"{b}/{ctx.warm_key}")
    if w in ("get_mem", "small"):
        paths = [f"{b}/{k}" for k in ctx.keys]
        for _ in ctx.repeat():
            got: Any = None
            with ctx.timed():
                got = fs.cat(paths)
        ctx.check({p.removeprefix(f"{b}/"): v for p, v in got.items()})
    elif w == "get_files":
        keys = ctx.keys
        for _ in ctx.repeat():
            with ctx.timed():
                fs.get([f"{b}/{k}" for k in keys], [ctx.local_path(k) for k in keys])
        ctx.check({k: Path(ctx.local_path(k)) for k in keys})
    elif w == "get_big":
        key = ctx.objects[0][0]
        for _ in ctx.repeat():
            chunks = None
            with ctx.timed():
                # the size, as a caller given only the key learns it (not from s3fs's cache)
                size = fs.info(f"{b}/{key}", refresh=True)["size"]
                starts = list(range(0, size, ctx.range_size))
                ends = [min(s + ctx.range_size, size) for s in starts]
                chunks = fs.cat_ranges([f"{b}/{key}"] * len(starts), starts, ends)
        ctx.check({key: chunks})
    elif w == "put_files":
        pairs = ctx.put_files
        for _ in ctx.repeat():
            with ctx.timed():
                fs.put([p for p, _ in pairs], [f"{b}/{k}" for _, k in pairs])
    elif w == "list":
        for _ in ctx.repeat():
            with ctx.timed():
                found = fs.find(f"{b}/{ctx.list_prefix}", detail=True)
        ctx.check_sizes({p.removeprefix(f"{b}/"): i["size"] for p, i in found.items()})
    elif w == "info":
        keys = ctx.keys

        async def heads() -> list[Any]:
            import asyncio

            return await asyncio.gather(*(fs._info(f"{b}/{k}") for k in keys))

        for _ in ctx.repeat():
            with ctx.timed():
                infos = sync(fs.loop, heads)
        ctx.check_sizes({k: i["size"] for k, i in zip(keys, infos, strict=True)})
    else:
        raise NotImplementedError(w)


def run_metaflow(ctx: Ctx) -> None:
    # metaflow reads its configuration at import time.
    if ctx.endpoint:
        os.environ.setdefault("METAFLOW_S3_ENDPOINT_URL", ctx.endpoint)
    from metaflow import S3

    w = ctx.workload
    with S3(tmproot=ctx.tmp) as s3:
        s3.info(ctx.url(ctx.warm_key))
        urls = [ctx.url(k) for k in ctx.keys] if w != "put_files" else []
        if w in ("get_mem", "small"):
            ctx.note = "via temp files (metaflow has no in-memory GET), read inside the timing"
            objs: list[Any] = []
            for _ in ctx.repeat():
                ctx.drop_files(o.path for o in objs)
                got: Any = None
                with ctx.timed():
                    objs = s3.get_many(urls)
                    got = {ctx.key_of(o.url): o.blob for o in objs}
            ctx.check(got)
        elif w == "get_big":
            ctx.note = "one GET into a temp file, read inside the timing"
            obj: Any = None
            for _ in ctx.repeat():
                if obj is not None:
                    ctx.drop_files([obj.path])
                blob = None
                with ctx.timed():
                    obj = s3.get(urls[0])
                    blob = obj.blob
            ctx.check({ctx.key_of(obj.url): blob})
        else:
            _metaflow_shaped(ctx, s3, urls)


IMPLEMENTATIONS: dict[str, Callable[[Ctx], None]] = {
    "s3fast_sync": run_s3fast_sync,
    "boto3": run_boto3,
    "s3fs": run_s3fs,
    "metaflow": run_metaflow,
}
