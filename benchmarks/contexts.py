"""Short-lived clients: what a context costs, and Metaflow's datastore pattern.

``context``: one iteration opens a client, GETs one 1 KiB object and closes the client, in a
warm process (imports, credentials and one warm-up context come before the clock):

    with S3(...) as s3: s3.get(url).blob          # s3fast.S3 and metaflow.S3
    async with AsyncS3(...) as s3: ...             # s3fast.AsyncS3
    boto3.client("s3", ...).get_object(...)        # a new client, then closed
    S3Store(...) + obstore.get(...).bytes()        # a new store
    session.create_client("s3") (aiobotocore)      # a new client from one session

``metadata``: one iteration is one round of the calls Metaflow's S3 datastore makes
(``metaflow/plugins/datastores/s3_storage.py``), each in a context of its own: ``info``
(``info_file``), ``list_paths`` (``list_content``), ``put_many`` of 4 x 1 KiB (``save_bytes``),
``get_many`` of those 4 (``load_bytes``). boto3 and obstore do the same with a new client or
store per context and a thread pool made before the clock for the 4 PUTs and GETs.

Every iteration is timed on its own; the table shows milliseconds per context (``context``) or
per round of 4 contexts (``metadata``). The last iteration's results are checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .dataset import meta_prefix
from .worker import Ctx, WrongData, _digest

PUTS = 4  # objects per put_many / get_many in a metadata round


def _time_contexts(ctx: Ctx, one: Callable[[], bytes]) -> None:
    """Warm ``one`` (a context + 1 KiB GET) once, time it until ``min_time``, check its bytes."""
    one()
    blob = None
    for _ in ctx.repeat():
        with ctx.timed():
            blob = one()
    _check_one(ctx, blob)


def _check_one(ctx: Ctx, blob: Any) -> None:
    """A context GETs the first tiny object: check it alone."""
    key, size, sha = ctx.objects[0]
    if blob is None:
        raise WrongData(f"{key}: nothing returned")
    n, digest = _digest(blob)
    if n != size or digest != sha:
        raise WrongData(f"{key}: {n} bytes, sha256 {'matches' if digest == sha else 'differs'}")


class _Round:
    """What a metadata round touches, relative to ``s3root`` (``s3://bucket/<root>``)."""

    def __init__(self, ctx: Ctx) -> None:
        root = ctx.spec["root"]
        self.root = root
        self.s3root = ctx.url(root)
        tiny = ctx.objects
        self.info_key = tiny[0][0].removeprefix(root)
        self.info_size = tiny[0][1]
        self.list_prefix = self.info_key.rsplit("/", 1)[0] + "/"
        self.listed = {k.removeprefix(root) for k, _, _ in tiny}
        size = self.info_size
        prefix = meta_prefix(ctx.client).removeprefix(root)
        self.puts = [(f"{prefix}{i}", os.urandom(size)) for i in range(PUTS)]

    def check(self, size: int | None, listed: set[str], got: dict[str, bytes]) -> None:
        if size != self.info_size:
            raise WrongData(f"info: size {size}, expected {self.info_size}")
        if listed != self.listed:
            raise WrongData(f"list_paths: {len(listed)} keys, expected {len(self.listed)}")
        for key, value in self.puts:
            if got.get(key) != value:
                raise WrongData(f"{key}: read back differs from what was put")


# --- s3fast and metaflow: the very same calls --------------------------------------------


def _s3fast_sync_factory(ctx: Ctx) -> Callable[..., Any]:
    import s3fast

    return lambda **kw: s3fast.S3(tmproot=ctx.tmp, endpoint_url=ctx.endpoint, **kw)


def _metaflow_factory(ctx: Ctx) -> Callable[..., Any]:
    if ctx.endpoint:  # metaflow reads its configuration at import time
        os.environ.setdefault("METAFLOW_S3_ENDPOINT_URL", ctx.endpoint)
    from metaflow import S3

    return lambda **kw: S3(tmproot=ctx.tmp, **kw)


def _sync_context(ctx: Ctx, make: Callable[..., Any]) -> None:
    url = ctx.url(ctx.keys[0])
    with make() as s3:  # warm-up: imports and whatever is cached per process
        blob = s3.get(url).blob
    for _ in ctx.repeat():
        with ctx.timed():
            with make() as s3:
                blob = s3.get(url).blob
    _check_one(ctx, blob)


def _sync_metadata(ctx: Ctx, make: Callable[..., Any]) -> None:
    r = _Round(ctx)
    keys = [k for k, _ in r.puts]

    def one_round() -> tuple[int | None, set[str], dict[str, bytes]]:
        with make(s3root=r.s3root) as s3:
            size = s3.info(r.info_key, return_missing=True).size
        with make(s3root=r.s3root) as s3:
            listed = {
                ctx.key_of(o.url).removeprefix(r.root) for o in s3.list_paths([r.list_prefix])
            }
        with make(s3root=r.s3root) as s3:
            s3.put_many(r.puts, True)
        with make(s3root=r.s3root) as s3:
            got = {
                ctx.key_of(o.url).removeprefix(r.root): o.blob
                for o in s3.get_many(keys, return_missing=True, return_info=True)
            }
        return size, listed, got

    one_round()  # warm-up
    result = None
    for _ in ctx.repeat():
        with ctx.timed():
            result = one_round()
    assert result is not None
    r.check(*result)


def run_s3fast_sync(ctx: Ctx) -> None:
    make = _s3fast_sync_factory(ctx)
    if ctx.workload == "context":
        _sync_context(ctx, make)
    else:
        _sync_metadata(ctx, make)


def run_metaflow(ctx: Ctx) -> None:
    make = _metaflow_factory(ctx)
    if ctx.workload == "context":
        _sync_context(ctx, make)
    else:
        _sync_metadata(ctx, make)


def run_s3fast_async(ctx: Ctx) -> None:
    import s3fast

    from .aclients import _run

    def make(**kw: Any) -> Any:
        return s3fast.AsyncS3(tmproot=ctx.tmp, endpoint_url=ctx.endpoint, **kw)

    async def context() -> None:
        url = ctx.url(ctx.keys[0])
        async with make() as s3:  # warm-up
            blob = (await s3.get(url)).blob
        for _ in ctx.repeat():
            with ctx.timed():
                async with make() as s3:
                    blob = (await s3.get(url)).blob
        _check_one(ctx, blob)

    async def metadata() -> None:
        r = _Round(ctx)
        keys = [k for k, _ in r.puts]

        async def one_round() -> tuple[int | None, set[str], dict[str, bytes]]:
            async with make(s3root=r.s3root) as s3:
                size = (await s3.info(r.info_key, return_missing=True)).size
            async with make(s3root=r.s3root) as s3:
                listed = {
                    ctx.key_of(o.url).removeprefix(r.root)
                    for o in await s3.list_paths([r.list_prefix])
                }
            async with make(s3root=r.s3root) as s3:
                await s3.put_many(r.puts, True)
            async with make(s3root=r.s3root) as s3:
                got = {
                    ctx.key_of(o.url).removeprefix(r.root): o.blob
                    for o in await s3.get_many(keys, return_missing=True, return_info=True)
                }
            return size, listed, got

        await one_round()
        result = None
        for _ in ctx.repeat():
            with ctx.timed():
                result = await one_round()
        assert result is not None
        r.check(*result)

    _run(context() if ctx.workload == "context" else metadata())


# --- peers: a new client (or store) per context --------------------------------------------


def run_boto3(ctx: Ctx) -> None:
    from .dataset import boto_client

    def make() -> Any:
        return boto_client(ctx.endpoint, ctx.region)

    b = ctx.bucket
    if ctx.workload == "context":
        key = ctx.keys[0]

        def one() -> bytes:
            s3 = make()
            try:
                return bytes(s3.get_object(Bucket=b, Key=key)["Body"].read())
            finally:
                s3.close()

        _time_contexts(ctx, one)
        return

    r = _Round(ctx)
    root = r.root
    with ThreadPoolExecutor(PUTS) as pool:

        def one_round() -> tuple[int | None, set[str], dict[str, bytes]]:
            s3 = make()
            try:
                size = s3.head_object(Bucket=b, Key=root + r.info_key)["ContentLength"]
            finally:
                s3.close()
            s3 = make()
            try:
                page = s3.list_objects_v2(Bucket=b, Prefix=root + r.list_prefix, Delimiter="/")
                listed = {o["Key"].removeprefix(root) for o in page.get("Contents", [])}
            finally:
                s3.close()
            s3 = make()
            try:
                list(
                    pool.map(
                        lambda kv: s3.put_object(Bucket=b, Key=root + kv[0], Body=kv[1]), r.puts
                    )
                )
            finally:
                s3.close()
            s3 = make()
            try:
                bodies = pool.map(
                    lambda kv: s3.get_object(Bucket=b, Key=root + kv[0])["Body"].read(), r.puts
                )
                got = {k: v for (k, _), v in zip(r.puts, bodies, strict=True)}
            finally:
                s3.close()
            return size, listed, got

        one_round()
        result = None
        for _ in ctx.repeat():
            with ctx.timed():
                result = one_round()
    assert result is not None
    r.check(*result)


def run_obstore(ctx: Ctx) -> None:
    import obstore as obs

    from .aclients import obstore_store

    if ctx.workload == "context":
        key = ctx.keys[0]

        def one() -> bytes:
            return bytes(obs.get(obstore_store(ctx), key).bytes())

        _time_contexts(ctx, one)
        return

    r = _Round(ctx)
    root = r.root
    with ThreadPoolExecutor(PUTS) as pool:

        def one_round() -> tuple[int | None, set[str], dict[str, bytes]]:
            size = obs.head(obstore_store(ctx), root + r.info_key)["size"]
            listing = obs.list_with_delimiter(obstore_store(ctx), root + r.list_prefix)
            listed = {m["path"].removeprefix(root) for m in listing["objects"]}
            store = obstore_store(ctx)
            list(pool.map(lambda kv: obs.put(store, root + kv[0], kv[1]), r.puts))
            store = obstore_store(ctx)
            bodies = pool.map(lambda kv: bytes(obs.get(store, root + kv[0]).bytes()), r.puts)
            got = {k: v for (k, _), v in zip(r.puts, bodies, strict=True)}
            return size, listed, got

        one_round()
        result = None
        for _ in ctx.repeat():
            with ctx.timed():
                result = one_round()
    assert result is not None
    r.check(*result)


def run_aiobotocore(ctx: Ctx) -> None:
    if ctx.workload != "context":
        raise NotImplementedError(ctx.workload)
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from .aclients import _run

    key = ctx.keys[0]
    config = AioConfig(s3={"addressing_style": "path"} if ctx.endpoint else None)

    async def main() -> None:
        session = get_session()

        async def one() -> bytes:
            async with session.create_client(
                "s3", endpoint_url=ctx.endpoint, region_name=ctx.region, config=config
            ) as s3:
                resp = await s3.get_object(Bucket=ctx.bucket, Key=key)
                async with resp["Body"] as body:
                    return bytes(await body.read())

        await one()
        blob = None
        for _ in ctx.repeat():
            with ctx.timed():
                blob = await one()
        _check_one(ctx, blob)

    _run(main())


IMPLEMENTATIONS: dict[str, Callable[[Ctx], None]] = {
    "s3fast_sync": run_s3fast_sync,
    "s3fast_async": run_s3fast_async,
    "boto3": run_boto3,
    "obstore": run_obstore,
    "metaflow": run_metaflow,
    "aiobotocore": run_aiobotocore,
}
