"""AsyncS3: the public async API, with metaflow.S3's methods as coroutines."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from . import _fork
from . import metaflow_settings as mfconfig
from ._engine.batch import bounded_map
from ._engine.copy import copy_object
from ._engine.delete import Failed, delete_object, delete_objects
from ._engine.engine import Engine, TransferStats
from ._engine.fanout import THREADS_ABOVE, processes_for
from ._engine.get import Fetched, fetch, head_object
from ._engine.listing import Entry, ListRequest, list_prefix
from ._engine.loops import Loops
from ._engine.pool import Pool
from ._engine.put import Source, put
from ._engine.session import ClientSpec, resolve_endpoint, spec_from
from ._engine.sinks import FileSink, MemorySink
from .config import TransferConfig
from .errors import (
    MetaflowS3Exception,
    MetaflowS3InvalidObject,
    MetaflowS3NotFound,
    MetaflowS3URLException,
    class_for,
)
from .limits import USER_METADATA_KEY
from .objects import RangeInfo, S3Object, S3PutObject, listed_objects
from .progress import ProgressCallback, Tracker, on_bytes
from .tempdirs import TempDirs
from .urls import ByteRange, S3Path, byte_range, join, parse, resolve_root

T = TypeVar("T")
SIZE_SAMPLE = 4  # objects asked with HEAD to tell big bodies from small when sizes are unknown
R = TypeVar("R")
PutValue = str | bytes | bytearray | memoryview | io.RawIOBase | io.BufferedIOBase


@dataclasses.dataclass(frozen=True, slots=True)
class _PutItem:
    """One object of a batch upload, checked."""

    key: Any  # as given
    url: str
    source: Source
    content_type: str | None
    metadata: dict[str, str] | None  # user metadata, encoded
    encryption: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _GetJob:
    """One object (or range) of a batch download; ``prefix``: what its key is relative to."""

    prefix: str | None
    url: str
    brange: ByteRange | None


def _in_flow() -> bool:
    if "metaflow" not in sys.modules:
        return False
    try:
        from metaflow import current  # type: ignore[import-not-found]

        return bool(current.is_running_flow)
    except Exception:
        return False


def _client_setup(
    endpoint_url: str | None,
    role: str | None,
    session_vars: dict[str, Any] | None,
    client_params: dict[str, Any] | None,
    external_client: Any,
    inject_failure_rate: int | None,
) -> tuple[ClientSpec, str | None]:
    """How this client's S3 client is built, and its endpoint (None: AWS's, from the region),
    from metaflow.S3's keywords and Metaflow's settings (see docs/configuration.md)."""
    rate = (
        inject_failure_rate if inject_failure_rate is not None else mfconfig.inject_failure_rate()
    )
    if _is_metaflow_s3_client(external_client):
        # What metaflow.S3 is given as ``external_client`` (its datastore passes one): a
        # wrapper of the role, session variables and client params that make its client,
        # which metaflow.S3's workers rebuild from those three. So does s3fast.
        role = external_client._s3_role
        session_vars = external_client._s3_session_vars
        client_params = external_client._s3_client_params
        external_client = None
    if external_client is None:
        # metaflow.S3: ``session_vars``/``client_params`` if given (and not empty), else
        # Metaflow's DATATOOLS_SESSION_VARS / DATATOOLS_CLIENT_PARAMS.
        session_vars = session_vars or mfconfig.metaflow_dict("DATATOOLS_SESSION_VARS")
        client_params = client_params or mfconfig.metaflow_client_params()
        provider = mfconfig.metaflow_setting("DEFAULT_AWS_CLIENT_PROVIDER", "boto3")
        if provider != "boto3":  # a Metaflow extension's AWS client provider makes the client
            from metaflow.plugins.aws.aws_client import (  # type: ignore[import-not-found]
                get_aws_client,
            )

            external_client = get_aws_client(
                "s3", role_arn=role, session_vars=session_vars, client_params=client_params
            )
    spec, given = spec_from(
        role=role,
        session_vars=session_vars,
        client_params=client_params,
        external_client=external_client,
        inject_failure_rate=rate,
    )
    if spec.verify is None:
        spec = dataclasses.replace(spec, verify=mfconfig.s3_verify())
    endpoint = endpoint_url or given or resolve_endpoint(None) or mfconfig.s3_endpoint()
    return spec, endpoint


def _is_metaflow_s3_client(client: Any) -> bool:
    """Is ``client`` metaflow's ``S3Client`` (a lazily made boto3 client and how to make it)?"""
    return client is not None and all(
        hasattr(client, name)
        for name in ("_s3_role", "_s3_session_vars", "_s3_client_params", "reset_client")
    )


class AsyncS3:
    """The s3fast client for asyncio code: the methods of ``S3`` as coroutines, with the same
    arguments and results. Use ``async with AsyncS3(...) as s3:`` on one event loop.

    Parameters
    ----------
    tmproot : str, optional
        Where downloads land. Default: ``S3FAST_TMPDIR``, ``METAFLOW_TEMPDIR``,
        ``current.tempdir`` in a running flow, else tmpfs (``/dev/shm``) while it has room,
        else the system temp dir.
    bucket, prefix : str, optional
        Override parts of ``DATATOOLS_S3ROOT`` when ``run`` is given.
    run : FlowSpec or Run, optional
        Address ``<DATATOOLS_S3ROOT>/<FlowName>/<run_id>/``.
    s3root : str, optional
        A root ``s3://bucket/prefix``; keys are then suffixes of it.
    encryption : str, optional
        Server-side encryption for uploads (default from
        ``S3FAST_S3_SERVER_SIDE_ENCRYPTION`` / ``METAFLOW_S3_SERVER_SIDE_ENCRYPTION``).
    role : str, optional
        An IAM role ARN to assume (through STS, with the credentials found as usual); the
        assumed credentials are refreshed before they expire.
    session_vars : dict, optional
        botocore session variables (default: Metaflow's ``DATATOOLS_SESSION_VARS``).
    client_params : dict, optional
        boto3 client arguments: ``endpoint_url``, ``region_name``, ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token``, ``verify``, ``config`` (a botocore
        ``Config``: its proxies, addressing style, signature version, ... are used; the
        connection pool, timeouts and retries come from ``config``). Default: Metaflow's
        ``DATATOOLS_CLIENT_PARAMS``.
    external_client : boto3 S3 client, optional
        Use this client's credentials, region, endpoint and certificate check (``role``,
        ``session_vars`` and ``client_params`` are then ignored, as in metaflow.S3).
    inject_failure_rate : int, optional
        Percentage of requests that fail with a transient error, for testing retry
        handling (see docs/configuration.md); 100 makes every request run out of retries.
        Default: ``METAFLOW_S3_TEST_RETRYABLE_FAILURES``, else 0.
    endpoint_url : str, optional
        S3 endpoint; default from ``client_params``, ``AWS_ENDPOINT_URL_S3``,
        ``AWS_ENDPOINT_URL``, Metaflow's ``S3_ENDPOINT_URL``.
    config : TransferConfig, optional
        Transfer settings; default ``TransferConfig.from_env()``.
    """

    def __init__(
        self,
        tmproot: str | None = None,
        bucket: str | None = None,
        prefix: str | None = None,
        run: Any = None,
        s3root: str | None = None,
        encryption: str | None = None,
        *,
        role: str | None = None,
        session_vars: dict[str, Any] | None = None,
        client_params: dict[str, Any] | None = None,
        external_client: Any = None,
        inject_failure_rate: int | None = None,
        endpoint_url: str | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        self._s3root = resolve_root(bucket, prefix, run, s3root)
        self._encryption = encryption or mfconfig.s3_encryption()
        if config is None:
            attempts = mfconfig.retry_attempts()  # Metaflow's S3_RETRY_COUNT, when set
            base = TransferConfig(max_attempts=attempts) if attempts is not None else None
            config = TransferConfig.from_env(base)
        self._config = config
        spec, endpoint = _client_setup(
            endpoint_url, role, session_vars, client_params, external_client, inject_failure_rate
        )
        self._engine = Engine(self._config, endpoint, spec=spec)
        self._temp_dirs = TempDirs(tmproot)
        self._procs = Pool(processes_for(self._engine), self._config, self._engine)
        self._loops = Loops(processes_for(self._engine), self._config, self._engine)
        self._closed = False
        self._owner = _fork.Owner()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncS3:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close connections and delete every file downloaded through this client."""
        self._fork_check()
        self._closed = True
        try:
            try:
                await self._procs.close()
                await self._loops.close()
            finally:
                await self._engine.close()
        finally:
            self._temp_dirs.close()

    @property
    def tmpdirs(self) -> list[str]:
        """The private temp dirs this client has made (removed by ``close``)."""
        self._fork_check()
        return self._temp_dirs.dirs

    @property
    def config(self) -> TransferConfig:
        return self._config

    @property
    def stats(self) -> TransferStats:
        """A snapshot of this client's counters: the adaptive concurrency limit (now, lowest,
        maximum), throttled answers, limit cuts, retries and requests given up."""
        self._fork_check()
        return self._engine.stats()

    async def transport_for(self, bucket: str | None = None) -> str:
        """The path this client's requests for ``bucket`` (default: the bucket of
        ``s3root``) take: ``"lean"``, s3fast's own HTTP/1.1 path, or ``"botocore"``.

        The lean path takes GET, HEAD, PUT, UploadPart and ListObjectsV2 requests when it can
        send exactly the request botocore would send (same endpoint, signing region and name,
        proxy and certificates); it is decided at a bucket's first use (now, if not yet
        used), and a redirect or other protocol surprise sends the bucket to botocore."""
        self._check_open()
        if bucket is None:
            if not self._s3root:
                raise ValueError("transport_for() needs a bucket: this client has no s3root")
            bucket = parse(self._s3root, need_key=False).bucket
        return await self._engine.transport_for(bucket)

    def _check_open(self) -> None:
        self._fork_check()
        if self._closed:
            raise RuntimeError("this S3 client is closed")

    def _fork_check(self) -> None:
        """Used for the first time in a forked child: make this process's own engine
        (client, connections, limiter), loop threads, worker processes and temp dirs, leaving
        the parent's untouched (see :mod:`s3fast._fork`). Files downloaded before the fork stay
        in the parent's temp dirs, which the parent removes."""
        self._owner.claim(self._after_fork)

    def _after_fork(self) -> None:
        self._engine.after_fork()
        self._procs.after_fork()
        self._loops.after_fork()
        self._temp_dirs = self._temp_dirs.for_child()

    # --- addressing --------------------------------------------------------------------

    def _url(self, key: Any) -> str:
        return join(self._s3root, getattr(key, "key", key), in_flow=_in_flow())

    def _request(self, key: Any) -> tuple[str, ByteRange | None]:
        url = self._url(key)
        parse(url)
        return url, byte_range(key, url)

    async def _map(
        self, fn: Callable[[T], Awaitable[R]], items: list[T], url_of: Callable[[T], str]
    ) -> list[R]:
        """``fn`` over a batch, in parallel, results in input order. The first failure stops
        the batch (the rest is cancelled and cleaned up) and is raised; if other keys failed
        too before the batch stopped, the error names them all."""
        failed: list[str] = []

        async def one(item: T) -> R:
            try:
                return await fn(item)
            except MetaflowS3Exception:
                failed.append(url_of(item))
                raise

        try:
            return await bounded_map(one, items, self._engine.concurrency, self._engine.admitted)
        except MetaflowS3Exception as exc:
            if len(failed) < 2:
                raise
            names = ", ".join(failed[:10]) + (
                f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            )
            raise type(exc)(f"{len(failed)} keys failed: {names}; first: {exc}", exc.url) from exc

    # --- downloads ----------------------------------------------------------------------

    async def _download(
        self,
        job: _GetJob,
        return_missing: bool,
        return_info: bool,
        in_memory: bool,
        tracker: Tracker | None = None,
        size: int | None = None,
    ) -> S3Object:
        url, brange = job.url, job.brange
        sink = (
            MemorySink()
            if in_memory
            else FileSink(self._temp_dirs, url, brange.tag() if brange else "")
        )
        try:
            got = await fetch(self._engine, parse(url), url, brange, sink, on_bytes(tracker), size)
        except MetaflowS3NotFound:
            if return_missing:
                if tracker is not None:
                    tracker.add_objects()
                return S3Object(self._s3root, url, None)
            raise
        if tracker is not None:
            tracker.add_objects()
        return _to_object(job.prefix, url, got, return_info)

    async def get(
        self,
        key: Any = None,
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
    ) -> S3Object:
        """Get a single object from S3.

        Parameters
        ----------
        key : Union[str, S3GetObject], optional, default None
            An S3 url, a path suffix, or an S3GetObject with a range. None gets the S3 root.
        return_missing : bool, default False
            Return a missing key as an S3Object with ``.exists == False`` instead of raising.
        return_info : bool, default True
            Include content-type, user metadata and range info (at no extra cost).
        in_memory : bool, default False
            Keep the bytes in memory (``.blob``); no temp file is written.

        Returns
        -------
        S3Object
        """
        self._check_open()
        job = _GetJob(self._s3root, *self._request(key))
        return await self._download(job, return_missing, return_info, in_memory)

    async def get_many(
        self,
        keys: Iterable[Any],
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get many objects from S3 in parallel; results in input order.

        Parameters
        ----------
        keys : Iterable[Union[str, S3GetObject]]
            S3 urls, path suffixes or S3GetObjects.
        return_missing, return_info, in_memory
            As in ``get``.
        progress : Callable[[Progress], None], optional
            Called as ranges and objects complete (``bytes_total`` is None: sizes are not
            known before the downloads start). See :mod:`s3fast.progress`.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        jobs = [_GetJob(self._s3root, *self._request(key)) for key in _as_list(keys, "keys")]
        tracker = Tracker.of(progress, len(jobs))
        return await self._download_batch(jobs, return_missing, return_info, in_memory, tracker)

    async def _download_batch(
        self,
        jobs: list[_GetJob],
        return_missing: bool,
        return_info: bool,
        in_memory: bool,
        tracker: Tracker | None = None,
        sizes: list[int | None] | None = None,
    ) -> list[S3Object]:
        """Download ``jobs`` in parallel (when the batch is big and ``processes > 1``: into
        memory on that many event loops in threads of this process, into files in worker
        processes). If one fails, the files the others already wrote
        are removed: a failed batch leaves nothing behind."""
        pairs = [(job.url, job.brange) for job in jobs]
        moved, finished = on_bytes(tracker), tracker.add_objects if tracker is not None else None
        fetched: list[Fetched | None] | None = None
        if (
            in_memory
            and self._loops.worth_fanning_out(len(jobs))
            and await self._bodies_are_big(jobs, sizes)
        ):
            fetched = await self._loops.get(
                pairs,
                return_missing=return_missing,
                sizes=sizes,
                on_bytes=moved,
                on_object=finished,
            )
        elif self._procs.worth_fanning_out(len(jobs)):
            fetched = await self._procs.get(
                pairs,
                self._temp_dirs,
                return_missing=return_missing,
                in_memory=in_memory,
                sizes=sizes,
                on_bytes=moved,
                on_object=finished,
            )
        if fetched is not None:
            return [
                S3Object(self._s3root, job.url, None)
                if got is None
                else _to_object(job.prefix, job.url, got, return_info)
                for job, got in zip(jobs, fetched, strict=True)
            ]
        written: list[str] = []
        known = sizes or [None] * len(jobs)

        async def one(job_size: tuple[_GetJob, int | None]) -> S3Object:
            job, size = job_size
            obj = await self._download(job, return_missing, return_info, in_memory, tracker, size)
            if obj.path:
                written.append(obj.path)
            return obj

        try:
            with_sizes = list(zip(jobs, known, strict=True))
            return await self._map(one, with_sizes, lambda job_size: job_size[0].url)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    async def _bodies_are_big(self, jobs: list[_GetJob], sizes: list[int | None] | None) -> bool:
        """Should an in-memory batch run on event loops in threads (big bodies: the copy from
        the socket, made outside the GIL, is the work) rather than in worker processes (small
        bodies: Python per request is the work, and the GIL would serialise it; their bodies
        come back inside the result messages)? By the median body size: the known sizes
        (listings, ranges with a length), else those of a few objects asked with HEAD at once
        (one round trip; a failed HEAD counts as unknown)."""
        known = [n for n in sizes or [] if n is not None]
        if not known:
            ranges = [job.brange for job in jobs]
            known = [b.length for b in ranges if b is not None and b.length and b.length > 0]
        if not known:
            urls = list(dict.fromkeys(j.url for j in jobs if j.brange is None))[:SIZE_SAMPLE]

            async def size_of(url: str) -> int | None:
                try:
                    return (await head_object(self._engine, parse(url), url)).total
                except MetaflowS3Exception:
                    return None

            known = [n for n in await asyncio.gather(*map(size_of, urls)) if n is not None]
        if not known:
            return False
        return sorted(known)[len(known) // 2] > THREADS_ABOVE

    async def iter_get_many(
        self,
        keys: Iterable[Any],
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AsyncGenerator[S3Object, None]:
        """Get many objects in parallel, yielding each as soon as it is complete.

        ``async for obj in s3.iter_get_many(keys): ...`` starts work on the first object
        without waiting for the last. Objects come in **completion order**, not input order
        (``obj.url`` / ``obj.key`` say which is which). At most ``max_concurrency`` downloads
        run at once and at most twice as many finished objects wait for the consumer (the
        downloads pause while they do), so memory stays bounded however many keys there are. If one download fails, the error is raised
        from the loop and the rest are cancelled.

        Leaving the loop early (``break`` or an exception) cancels the downloads still running
        and deletes the temp files of objects that were not yielded. That happens when the
        iterator is closed: at once inside ``async with contextlib.aclosing(...)``, otherwise
        as soon as the event loop finalizes the abandoned iterator. Objects already yielded
        stay valid until the client closes.

        Parameters
        ----------
        keys, return_missing, return_info, in_memory, progress
            As in ``get_many``.

        Yields
        ------
        S3Object
        """
        self._check_open()
        jobs = [_GetJob(self._s3root, *self._request(key)) for key in _as_list(keys, "keys")]
        tracker = Tracker.of(progress, len(jobs))
        window = min(self._engine.config.max_concurrency, max(1, len(jobs)))  # bounded memory
        ready: asyncio.Queue[S3Object] = asyncio.Queue(maxsize=window)
        feed = iter(jobs)

        async def worker() -> None:
            for job in feed:
                obj = await self._download(job, return_missing, return_info, in_memory, tracker)
                try:
                    await ready.put(obj)
                except BaseException:
                    _unlink(obj.path)
                    raise

        async def all_workers() -> None:
            await bounded_map(lambda _: worker(), range(window), window)

        pool = asyncio.ensure_future(all_workers())
        getter: asyncio.Future[S3Object] | None = None
        try:
            for _ in range(len(jobs)):
                getter = asyncio.ensure_future(ready.get())
                await asyncio.wait([getter, pool], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    await pool  # it failed (it cannot finish before every object is taken)
                obj, getter = getter.result(), None
                yield obj
            await pool
        finally:
            if getter is not None:
                if getter.done() and not getter.cancelled():
                    _unlink(getter.result().path)
                getter.cancel()
            pool.cancel()
            await asyncio.gather(pool, return_exceptions=True)
            while not ready.empty():
                _unlink(ready.get_nowait().path)

    async def _list_many(self, requests: list[ListRequest]) -> list[list[Entry]]:
        """Listings of ``requests`` (see ``list_prefix``), in input order, in parallel: in
        worker processes, which parse the pages, when there are many prefixes and
        ``processes > 1``."""
        if self._procs.worth_fanning_out(len(requests)):
            return await self._procs.list_many(requests)

        async def one(request: ListRequest) -> list[Entry]:
            return await list_prefix(
                self._engine,
                request.path,
                request.url,
                delimiter=request.delimiter,
                limit=request.limit,
            )

        return await bounded_map(one, requests, self._engine.concurrency)

    async def _list_trees(self, prefix_urls: list[str]) -> list[list[tuple[str, Entry]]]:
        """Everything under each prefix as a directory: the object named exactly so, if any,
        and keys below ``prefix/``; never siblings such as ``prefix_v2/...``."""
        paths = [parse(url, need_key=False) for url in prefix_urls]
        exact = [bool(p.key) and not p.key.endswith("/") for p in paths]
        requests: list[ListRequest] = []
        for url, path, named in zip(prefix_urls, paths, exact, strict=True):
            if named:
                # The exact object, if any, sorts first among keys starting with its name.
                requests.append(ListRequest(url, path, "", 1))
                requests.append(ListRequest(url, S3Path(path.bucket, path.key + "/"), "", None))
            else:
                requests.append(ListRequest(url, path, "", None))
        listed = iter(await self._list_many(requests))
        trees = []
        for path, named in zip(paths, exact, strict=True):
            entries = [e for e in next(listed) if e.key == path.key] if named else []
            entries += next(listed)
            trees.append([(f"s3://{path.bucket}/{e.key}", e) for e in entries])
        return trees

    async def get_recursive(
        self,
        keys: Iterable[str | None],
        return_info: bool = False,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get every object under the given prefixes, in parallel.

        Parameters
        ----------
        keys : Iterable[str]
            Prefixes (S3 urls or path suffixes) to download recursively.
        return_info : bool, default False
            Include content-type and user metadata.
        in_memory : bool, default False
            Keep the bytes in memory instead of temp files.
        progress : Callable[[Progress], None], optional
            Called as ranges and objects complete, with totals from the listing.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        prefixes = [self._url(key) for key in _as_list(keys, "keys")]
        trees = await self._list_trees(prefixes)
        jobs = [
            _GetJob(self._s3root if return_info else prefix, url, None)
            for prefix, tree in zip(prefixes, trees, strict=True)
            for url, _ in tree
        ]
        sizes = [entry.size for tree in trees for _, entry in tree]
        tracker = Tracker.of(progress, len(jobs), sum(size or 0 for size in sizes))
        return await self._download_batch(jobs, False, return_info, in_memory, tracker, sizes)

    async def get_all(
        self,
        return_info: bool = False,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get every object under the client's root (``run=`` or ``s3root=``).

        Returns
        -------
        List[S3Object]
        """
        if self._s3root is None:
            raise MetaflowS3URLException("Can't get_all() when S3 is initialized without a prefix")
        return await self.get_recursive([None], return_info, in_memory=in_memory, progress=progress)

    # --- listings and info ----------------------------------------------------------------

    async def list_paths(self, keys: Iterable[str | None] | None = None) -> list[S3Object]:
        """List the next level of paths under the given prefixes, in parallel.

        Prefixes (directories) come back with ``.exists == False``.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        prefixes = [
            self._url(key).rstrip("/") + "/"
            for key in ([None] if keys is None else _as_list(keys, "keys"))
        ]
        return await self._list_objects(prefixes, "/")

    async def list_recursive(self, keys: Iterable[str | None] | None = None) -> list[S3Object]:
        """List every object under the given prefixes, in parallel (``.exists == True``).

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        prefixes = [self._url(key) for key in ([None] if keys is None else _as_list(keys, "keys"))]
        return await self._list_objects(prefixes, "")

    async def _list_objects(self, prefixes: list[str], delimiter: str) -> list[S3Object]:
        """An S3Object for every entry under each prefix, taken as a directory."""
        paths = []
        for url in prefixes:
            path = parse(url, need_key=False)
            paths.append(
                path if path.key[-1:] in ("", "/") else S3Path(path.bucket, path.key + "/")
            )
        requests = [
            ListRequest(url, path, delimiter, None)
            for url, path in zip(prefixes, paths, strict=True)
        ]
        listed = await self._list_many(requests)
        out: list[S3Object] = []
        for url, path, entries in zip(prefixes, paths, listed, strict=True):
            out += listed_objects(url, path.bucket, entries)
        return out

    async def _info(self, key: Any, return_missing: bool) -> S3Object:
        url = self._url(key)
        try:
            head = await head_object(self._engine, parse(url), url)
        except MetaflowS3NotFound:
            if return_missing:
                return S3Object(self._s3root, url, None)
            raise
        return S3Object(
            self._s3root,
            url,
            None,
            size=head.total,
            content_type=head.content_type,
            metadata=head.metadata,
            last_modified=head.last_modified,
            encryption=head.encryption,
            etag=head.etag,
            version_id=head.version_id,
        )

    async def info(self, key: str | None = None, return_missing: bool = False) -> S3Object:
        """Metadata about one object (one HEAD request); ``.downloaded == False``.

        Returns
        -------
        S3Object
        """
        self._check_open()
        return await self._info(key, return_missing)

    async def info_many(
        self,
        keys: Iterable[str],
        return_missing: bool = False,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Metadata about many objects, in parallel, in input order.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        keys = _as_list(keys, "keys")
        for key in keys:
            parse(self._url(key))
        tracker = Tracker.of(progress, len(keys))

        async def one(key: str) -> S3Object:
            obj = await self._info(key, return_missing)
            if tracker is not None:
                tracker.add_objects()
            return obj

        return await self._map(one, keys, self._url)

    # --- uploads --------------------------------------------------------------------------

    def _user_metadata(self, metadata: Any, url: str) -> dict[str, str] | None:
        if not metadata:
            return None
        try:
            return {USER_METADATA_KEY: json.dumps(metadata)}
        except (TypeError, ValueError) as exc:
            raise MetaflowS3InvalidObject(
                f"{url}: metadata is not JSON-encodable ({exc})", url
            ) from exc

    def _target(self, key: Any) -> str:
        url = self._url(key)
        parse(url)
        return url

    def _checked_target(
        self, key: Any, value: Any, make_source: Callable[[Any, str | None, Any], Source]
    ) -> tuple[str, Source]:
        """``make_source(value, url, key)`` (which checks the object or local file), then the
        key's URL: metaflow.S3's order, so an entry with a bad object and a bad key is reported
        for its object. The object's error names the URL when the key makes one."""
        try:
            url: str | None = self._target(key)
            bad_key = None
        except Exception as exc:
            url, bad_key = None, exc
        source = make_source(value, url, key)
        if bad_key is not None:
            raise bad_key
        assert url is not None
        return url, source

    async def put(
        self,
        key: Any,
        obj: PutValue,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Upload one object.

        Parameters
        ----------
        key : Union[str, S3PutObject]
            An S3 url or a path suffix.
        obj : PutValue
            str (stored as UTF-8), bytes, or a readable, seekable binary file object.
        overwrite : bool, default True
            If False, the upload is conditional (``If-None-Match: *``): an existing object is
            left as it is.
        content_type : str, optional
            MIME type.
        metadata : Dict, optional
            JSON-encodable user metadata (stored under ``metaflow-user-attributes``).

        Returns
        -------
        str
            URL of the object.
        """
        self._check_open()
        url, source = self._checked_target(key, obj, _source)
        await put(
            self._engine,
            parse(url),
            url,
            source,
            overwrite=overwrite,
            content_type=content_type,
            metadata=self._user_metadata(metadata, url),
            encryption=self._encryption,
        )
        return url

    def _put_items(
        self, entries: Iterable[Any], name: str, field: str, make_source: Any
    ) -> list[_PutItem]:
        """Validate every entry of a batch upload before anything is sent."""
        items = []
        for entry in _as_list(entries, name):
            key, value, content_type, metadata, encryption = _unpack(entry, field)
            url, source = self._checked_target(key, value, make_source)
            items.append(
                _PutItem(
                    key,
                    url,
                    source,
                    content_type,
                    self._user_metadata(metadata, url),
                    encryption or self._encryption,
                )
            )
        return items

    async def _put_batch(
        self,
        items: list[_PutItem],
        overwrite: bool,
        progress: ProgressCallback | None = None,
        sizes: list[int] | None = None,
    ) -> list[tuple[str, str]]:
        # A key given more than once (metaflow.S3 accepts it): the last one is uploaded, as
        # one call after another would leave it, and every entry of it is reported.
        last = {item.url: i for i, item in enumerate(items)}
        if len(last) < len(items):
            sent = await self._put_batch(
                [items[i] for i in sorted(last.values())],
                overwrite,
                progress,
                [sizes[i] for i in sorted(last.values())] if sizes is not None else None,
            )
            uploaded = {url for _, url in sent}
            return [(item.key, item.url) for item in items if item.url in uploaded]
        tracker = None
        if progress is not None:
            if sizes is None:
                loop = asyncio.get_running_loop()
                sizes = await loop.run_in_executor(None, _sizes, [item.source for item in items])
            tracker = Tracker.of(progress, len(items), sum(sizes))
        if sizes is not None and self._procs.worth_fanning_out(len(items)):
            # Local files only (sizes known): uploaded by worker processes.
            done = await self._procs.put_files(
                [(i.url, i.source.path, i.content_type, i.metadata, i.encryption) for i in items],
                overwrite,
                list[int | None](sizes),
                on_bytes=on_bytes(tracker),
                on_object=tracker.add_objects if tracker is not None else None,
            )
            return [(item.key, item.url) for item, ok in zip(items, done, strict=True) if ok]

        async def one(item: _PutItem) -> bool:
            sent = await put(
                self._engine,
                parse(item.url),
                item.url,
                item.source,
                overwrite=overwrite,
                content_type=item.content_type,
                metadata=item.metadata,
                encryption=item.encryption,
                on_bytes=on_bytes(tracker),
            )
            if tracker is not None:
                tracker.add_objects()
            return sent

        done = await self._map(one, items, lambda item: item.url)
        return [(item.key, item.url) for item, ok in zip(items, done, strict=True) if ok]

    async def put_many(
        self,
        key_objs: Iterable[Any],
        overwrite: bool = True,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[str, str]]:
        """Upload many objects in parallel.

        Parameters
        ----------
        key_objs : List[Union[Tuple[str, PutValue], S3PutObject]]
            ``(key, value)`` pairs or S3PutObjects.
        overwrite : bool, default True
            If False, existing keys are left as they are and not returned.
        progress : Callable[[Progress], None], optional
            Called as parts and objects complete. See :mod:`s3fast.progress`.

        Returns
        -------
        List[Tuple[str, str]]
            ``(key, url)`` of each object uploaded, in input order.
        """
        self._check_open()
        items = self._put_items(key_objs, "key_objs", "value", _source)
        return await self._put_batch(items, overwrite, progress)

    async def put_files(
        self,
        key_paths: Iterable[Any],
        overwrite: bool = True,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[str, str]]:
        """Upload many local files in parallel.

        Parameters
        ----------
        key_paths : List[Union[Tuple[str, str], S3PutObject]]
            ``(key, local_path)`` pairs or S3PutObjects with ``path``.
        overwrite : bool, default True
            If False, existing keys are left as they are and not returned.
        progress : Callable[[Progress], None], optional
            Called as parts and files complete. See :mod:`s3fast.progress`.

        Returns
        -------
        List[Tuple[str, str]]
            ``(key, url)`` of each file uploaded, in input order.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        # Entry by entry, as metaflow.S3: the local file (off the loop: it is looked at on
        # disk), then the key.
        items, sizes = await loop.run_in_executor(None, self._file_items, key_paths)
        return await self._put_batch(items, overwrite, progress, sizes)

    def _file_items(self, key_paths: Iterable[Any]) -> tuple[list[_PutItem], list[int]]:
        """``put_files``' entries, checked, and the sizes of their files."""
        sizes: list[int] = []

        def local_file(local: Any, url: str | None, key: Any) -> Source:
            source = _file_source(local, url, key)
            assert source.path is not None
            sizes.append(_local_size(source.path, url, key))
            return source

        return self._put_items(key_paths, "key_paths", "path", local_file), sizes

    # --- deletes and copies -----------------------------------------------------------------

    async def delete(self, key: Any) -> str:
        """Delete one object. Deleting a key that does not exist is not an error (as in S3).

        Parameters
        ----------
        key : str
            An S3 url or a path suffix.

        Returns
        -------
        str
            URL of the object.
        """
        self._check_open()
        url = self._target(key)
        await delete_object(self._engine, parse(url), url)
        return url

    async def delete_many(
        self, keys: Iterable[Any], *, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Delete many objects: batched DeleteObjects requests (up to 1000 keys each), in
        parallel. Keys that do not exist count as deleted (as in S3).

        If the server refuses some keys, every other key is still deleted and the call raises
        one error naming each key that failed, with its S3 error code; its class follows the
        failures (``MetaflowS3AccessDenied`` when all were denied, for example), and its
        ``failed`` attribute maps each failed URL to its S3 error code.

        Parameters
        ----------
        keys : Iterable[str]
            S3 urls or path suffixes.
        progress : Callable[[Progress], None], optional
            Called as each batch completes (objects only).

        Returns
        -------
        List[str]
            URLs deleted, in input order (duplicates removed).
        """
        self._check_open()
        urls = list(dict.fromkeys(self._target(key) for key in _as_list(keys, "keys")))
        return await self._delete_urls(urls, progress)

    async def _delete_urls(self, urls: list[str], progress: ProgressCallback | None) -> list[str]:
        by_bucket: dict[str, list[str]] = {}
        for url in urls:
            path = parse(url)
            by_bucket.setdefault(path.bucket, []).append(path.key)
        tracker = Tracker.of(progress, len(urls))
        added = tracker.add_objects if tracker is not None else None

        async def one(bucket: str) -> list[tuple[str, Failed]]:
            failed = await delete_objects(self._engine, bucket, by_bucket[bucket], added)
            return [(f"s3://{bucket}/{f.key}", f) for f in failed]

        results = await bounded_map(one, list(by_bucket), self._engine.concurrency)
        failures = [failure for failed in results for failure in failed]
        if failures:
            raise _delete_error(failures, len(urls))
        return urls

    async def delete_recursive(
        self, keys: Iterable[str | None], *, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Delete every object under the given prefixes: the object named exactly so, if any,
        and everything below ``prefix/``; never a sibling such as ``prefix_v2/...``.

        Parameters
        ----------
        keys : Iterable[str]
            Prefixes (S3 urls or path suffixes); ``None`` is the client's root.
        progress : Callable[[Progress], None], optional
            Called as each batch completes, with the total from the listing.

        Returns
        -------
        List[str]
            URLs deleted.
        """
        self._check_open()
        prefixes = [self._url(key) for key in _as_list(keys, "keys")]
        trees = await self._list_trees(prefixes)
        urls = list(dict.fromkeys(url for tree in trees for url, _ in tree))
        return await self._delete_urls(urls, progress)

    async def copy(self, src: Any, dst: Any) -> str:
        """Copy one object inside S3 (server-side: no bytes pass through this machine), with
        its content type and user metadata. Objects above 5 GiB are copied as a multipart
        upload of UploadPartCopy ranges, aborted on any failure.

        Parameters
        ----------
        src, dst : str
            S3 urls or path suffixes (under the client's root).

        Returns
        -------
        str
            URL of the copy.
        """
        self._check_open()
        src_url, dst_url = self._target(src), self._target(dst)
        await copy_object(self._engine, parse(src_url), parse(dst_url), encryption=self._encryption)
        return dst_url

    async def copy_many(
        self, pairs: Iterable[tuple[Any, Any]], *, progress: ProgressCallback | None = None
    ) -> list[tuple[str, str]]:
        """Copy many objects inside S3, in parallel (see ``copy``).

        Parameters
        ----------
        pairs : Iterable[Tuple[str, str]]
            ``(src, dst)`` keys.
        progress : Callable[[Progress], None], optional
            Called as objects (and parts of large ones) are copied.

        Returns
        -------
        List[Tuple[str, str]]
            ``(src_url, dst_url)`` in input order.
        """
        self._check_open()
        jobs = []
        for pair in _as_list(pairs, "pairs"):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise MetaflowS3InvalidObject(f"{pair!r}: expected a (src, dst) pair")
            jobs.append((self._target(pair[0]), self._target(pair[1])))
        tracker = Tracker.of(progress, len(jobs))

        async def one(job: tuple[str, str]) -> tuple[str, str]:
            await copy_object(
                self._engine,
                parse(job[0]),
                parse(job[1]),
                encryption=self._encryption,
                on_bytes=on_bytes(tracker),
            )
            if tracker is not None:
                tracker.add_objects()
            return job

        return await bounded_map(one, jobs, self._engine.concurrency, self._engine.admitted)


def _named(url: str | None, key: Any) -> str:
    """What an error about an entry's object calls it: its URL, else (a bad key) its key."""
    return url if url is not None else f"key {getattr(key, 'key', key)!r}"


def _file_source(local: Any, url: str | None, key: Any) -> Source:
    if not isinstance(local, str | os.PathLike):
        raise MetaflowS3InvalidObject(
            f"{_named(url, key)}: local path must be a str, got {local!r}", url
        )
    return Source(path=os.fspath(local))


def _local_size(local: str, url: str | None, key: Any) -> int:
    """A local file to upload exists and is a regular file: its size."""
    if not os.path.exists(local):
        raise MetaflowS3NotFound(f"Local file not found: {local}", local)
    if not os.path.isfile(local):
        raise MetaflowS3InvalidObject(f"{local}: not a regular file ({_named(url, key)})", url)
    return os.path.getsize(local)


def _sizes(sources: list[Source]) -> list[int]:
    return [source.size() for source in sources]


def _unlink(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _delete_error(failures: list[tuple[str, Failed]], asked: int) -> MetaflowS3Exception:
    """One error naming every key a DeleteObjects batch did not delete."""
    classes = {class_for(f.code) for _, f in failures}
    cls = classes.pop() if len(classes) == 1 else MetaflowS3Exception
    listed = ", ".join(
        f"{url} ({f.code}{': ' + f.message if f.message else ''})" for url, f in failures[:20]
    )
    more = f" and {len(failures) - 20} more" if len(failures) > 20 else ""
    err = cls(f"{len(failures)} of {asked} keys were not deleted: {listed}{more}", failures[0][0])
    err.failed = {url: f.code for url, f in failures}  # type: ignore[attr-defined]
    return err


def _to_object(prefix: str | None, url: str, got: Fetched, return_info: bool) -> S3Object:
    head = got.head
    if not return_info:
        return S3Object(
            prefix,
            url,
            got.path,
            size=got.length,
            blob=got.blob,
            etag=head.etag,
            version_id=head.version_id,
        )
    return S3Object(
        prefix,
        url,
        got.path,
        size=got.length,
        content_type=head.content_type,
        metadata=head.metadata,
        range_info=RangeInfo(head.total, got.offset, got.length),
        last_modified=head.last_modified,
        encryption=head.encryption,
        blob=got.blob,
        etag=head.etag,
        version_id=head.version_id,
    )


def _as_list(values: Any, name: str) -> list[Any]:
    if isinstance(values, str | bytes) or values is None:
        raise MetaflowS3URLException(f"{name} must be an iterable of keys, got {values!r}")
    return list(values)


def _unpack(entry: Any, field: str) -> tuple[Any, Any, Any, Any, Any]:
    if isinstance(entry, S3PutObject):
        return (
            entry.key,
            getattr(entry, field),
            entry.content_type,
            entry.metadata,
            entry.encryption,
        )
    if isinstance(entry, tuple | list) and len(entry) == 2:
        return entry[0], entry[1], None, None, None
    raise MetaflowS3InvalidObject(f"{entry!r}: expected a (key, {field}) pair or an S3PutObject")


def _source(obj: Any, url: str | None, key: Any) -> Source:
    where = f" ({url})" if url is not None else ""
    if isinstance(obj, io.RawIOBase | io.BufferedIOBase):
        if not obj.readable() or not obj.seekable():
            raise MetaflowS3InvalidObject(
                f"Object corresponding to the key '{getattr(key, 'key', key)}' is not readable "
                f"or seekable{where}",
                url,
            )
        return Source(fileobj=obj)
    if isinstance(obj, str):
        return Source(data=obj.encode("utf-8"))
    if isinstance(obj, bytes):
        return Source(data=obj)
    if isinstance(obj, bytearray | memoryview):
        # Sent from the caller's memory, not copied. A view pins a bytearray's size (resizing
        # it raises BufferError until the upload ends); bytes changed in place mid-upload no
        # longer match the checksum sent with them, and the server refuses them.
        view = memoryview(obj)
        if not view.c_contiguous:
            return Source(data=view.tobytes())
        return Source(data=view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    raise MetaflowS3InvalidObject(
        f"Object corresponding to the key '{getattr(key, 'key', key)}' is not a string or a "
        f"bytes object{where}: got {type(obj).__name__}",
        url,
    )
