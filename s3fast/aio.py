"""AsyncS3: the public async API, with metaflow.S3's methods as coroutines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ._engine.client import Engine, TransferStats, bounded_map
from ._engine.get import FileSink, MemorySink, fetch, head_object
from ._engine.listing import Entry, list_prefix
from ._engine.put import Source, put
from .config import TransferConfig
from .errors import (
    MetaflowS3Exception,
    MetaflowS3InvalidObject,
    MetaflowS3NotFound,
    MetaflowS3URLException,
)
from .limits import USER_METADATA_KEY
from .objects import RangeInfo, S3Object, S3PutObject
from .targets import Targets
from .urls import ByteRange, S3Path, byte_range, join, parse, resolve_root

T = TypeVar("T")
R = TypeVar("R")
PutValue = str | bytes | bytearray | memoryview | io.RawIOBase | io.BufferedIOBase
# (key as given, url, source, content type, user metadata, encryption)
_PutItem = tuple[Any, str, Source, str | None, dict[str, str] | None, str | None]


def _in_flow() -> bool:
    if "metaflow" not in sys.modules:
        return False
    try:
        from metaflow import current  # type: ignore[import-not-found]

        return bool(current.is_running_flow)
    except Exception:
        return False


def _env_encryption() -> str | None:
    return os.environ.get("S3FAST_S3_SERVER_SIDE_ENCRYPTION") or os.environ.get(
        "METAFLOW_S3_SERVER_SIDE_ENCRYPTION"
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
    endpoint_url : str, optional
        S3 endpoint; default from ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
        ``METAFLOW_S3_ENDPOINT_URL``.
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
        endpoint_url: str | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        self._s3root = resolve_root(bucket, prefix, run, s3root)
        self._encryption = encryption or _env_encryption()
        self._config = config if config is not None else TransferConfig.from_env()
        self._engine = Engine(self._config, endpoint_url)
        self._targets = Targets(tmproot)
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncS3:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close connections and delete every file downloaded through this client."""
        self._closed = True
        try:
            await self._engine.close()
        finally:
            self._targets.close()

    @property
    def tmpdirs(self) -> list[str]:
        """The private temp dirs this client has made (removed by ``close``)."""
        return self._targets.dirs

    @property
    def config(self) -> TransferConfig:
        return self._config

    @property
    def stats(self) -> TransferStats:
        """A snapshot of this client's counters: the adaptive concurrency limit (now, lowest,
        maximum), throttled answers, limit cuts, retries and requests given up."""
        return self._engine.stats()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this S3 client is closed")

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
            return await bounded_map(one, items, self._engine.concurrency)
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
        prefix: str | None,
        url: str,
        brange: ByteRange | None,
        return_missing: bool,
        return_info: bool,
        in_memory: bool,
    ) -> S3Object:
        sink = (
            MemorySink()
            if in_memory
            else FileSink(self._targets, url, brange.tag() if brange else "")
        )
        try:
            got = await fetch(self._engine, parse(url), url, brange, sink)
        except MetaflowS3NotFound:
            if return_missing:
                return S3Object(self._s3root, url, None)
            raise
        head = got.head
        if not return_info:
            return S3Object(
                prefix,
                url,
                got.path,
                got.length,
                blob=got.blob,
                etag=head.etag,
                version_id=head.version_id,
            )
        return S3Object(
            prefix,
            url,
            got.path,
            got.length,
            head.content_type,
            head.metadata,
            RangeInfo(head.total, got.offset, got.length),
            head.last_modified,
            head.encryption,
            blob=got.blob,
            etag=head.etag,
            version_id=head.version_id,
        )

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
        url, brange = self._request(key)
        return await self._download(
            self._s3root, url, brange, return_missing, return_info, in_memory
        )

    async def get_many(
        self,
        keys: Iterable[Any],
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
    ) -> list[S3Object]:
        """Get many objects from S3 in parallel; results in input order.

        Parameters
        ----------
        keys : Iterable[Union[str, S3GetObject]]
            S3 urls, path suffixes or S3GetObjects.
        return_missing, return_info, in_memory
            As in ``get``.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        jobs = [(self._s3root, *self._request(key)) for key in _as_list(keys, "keys")]
        return await self._download_batch(jobs, return_missing, return_info, in_memory)

    async def _download_batch(
        self,
        jobs: list[tuple[str | None, str, ByteRange | None]],
        return_missing: bool,
        return_info: bool,
        in_memory: bool,
    ) -> list[S3Object]:
        """Download ``(prefix, url, range)`` jobs in parallel. If one fails, the files the
        others already wrote are removed: a failed batch leaves nothing behind."""
        written: list[str] = []

        async def one(job: tuple[str | None, str, ByteRange | None]) -> S3Object:
            obj = await self._download(*job, return_missing, return_info, in_memory)
            if obj.path:
                written.append(obj.path)
            return obj

        try:
            return await self._map(one, jobs, lambda job: job[1])
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    async def _list_tree(self, prefix_url: str) -> list[tuple[str, Entry]]:
        """Everything under ``prefix_url`` as a directory: the object named exactly so, if any,
        and keys below ``prefix/``; never siblings such as ``prefix_v2/...``."""
        path = parse(prefix_url, need_key=False)
        entries = []
        if path.key and not path.key.endswith("/"):
            # The exact object, if any, sorts first among keys starting with its name.
            first = await list_prefix(self._engine, path, prefix_url, limit=1)
            entries = [e for e in first if e.key == path.key]
            path = S3Path(path.bucket, path.key + "/")
        entries += await list_prefix(self._engine, path, prefix_url)
        return [(f"s3://{path.bucket}/{e.key}", e) for e in entries]

    async def get_recursive(
        self, keys: Iterable[str | None], return_info: bool = False, *, in_memory: bool = False
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

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        prefixes = [self._url(key) for key in _as_list(keys, "keys")]
        trees = await bounded_map(self._list_tree, prefixes, self._engine.concurrency)
        jobs: list[tuple[str | None, str, ByteRange | None]] = [
            (self._s3root if return_info else prefix, url, None)
            for prefix, tree in zip(prefixes, trees, strict=True)
            for url, _ in tree
        ]
        return await self._download_batch(jobs, False, return_info, in_memory)

    async def get_all(
        self, return_info: bool = False, *, in_memory: bool = False
    ) -> list[S3Object]:
        """Get every object under the client's root (``run=`` or ``s3root=``).

        Returns
        -------
        List[S3Object]
        """
        if self._s3root is None:
            raise MetaflowS3URLException("Can't get_all() when S3 is initialized without a prefix")
        return await self.get_recursive([None], return_info, in_memory=in_memory)

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

        async def one(prefix_url: str) -> list[S3Object]:
            path = parse(prefix_url, need_key=False)
            entries = await list_prefix(self._engine, path, prefix_url, delimiter="/")
            return [
                S3Object(prefix_url, f"s3://{path.bucket}/{e.key}", None, e.size) for e in entries
            ]

        listed = await bounded_map(one, prefixes, self._engine.concurrency)
        return [obj for objs in listed for obj in objs]

    async def list_recursive(self, keys: Iterable[str | None] | None = None) -> list[S3Object]:
        """List every object under the given prefixes, in parallel (``.exists == True``).

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        prefixes = [self._url(key) for key in ([None] if keys is None else _as_list(keys, "keys"))]

        async def one(prefix_url: str) -> list[S3Object]:
            path = parse(prefix_url, need_key=False)
            if path.key and not path.key.endswith("/"):
                path = S3Path(path.bucket, path.key + "/")
            entries = await list_prefix(self._engine, path, prefix_url)
            return [
                S3Object(prefix_url, f"s3://{path.bucket}/{e.key}", None, e.size) for e in entries
            ]

        listed = await bounded_map(one, prefixes, self._engine.concurrency)
        return [obj for objs in listed for obj in objs]

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
            head.total,
            head.content_type,
            head.metadata,
            None,
            head.last_modified,
            head.encryption,
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

    async def info_many(self, keys: Iterable[str], return_missing: bool = False) -> list[S3Object]:
        """Metadata about many objects, in parallel, in input order.

        Returns
        -------
        List[S3Object]
        """
        self._check_open()
        keys = _as_list(keys, "keys")
        for key in keys:
            parse(self._url(key))

        async def one(key: str) -> S3Object:
            return await self._info(key, return_missing)

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
        url = self._target(key)
        source = _source(obj, url, key)
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
            url = self._target(key)
            items.append(
                (
                    key,
                    url,
                    make_source(value, url, key),
                    content_type,
                    self._user_metadata(metadata, url),
                    encryption or self._encryption,
                )
            )
        return items

    async def _put_batch(self, items: list[_PutItem], overwrite: bool) -> list[tuple[str, str]]:
        seen: set[str] = set()
        for _, url, _, _, _, _ in items:
            if url in seen:
                raise MetaflowS3URLException(f"{url}: the same key appears twice in one call", url)
            seen.add(url)

        async def one(item: _PutItem) -> bool:
            _, url, source, content_type, metadata, encryption = item
            return await put(
                self._engine,
                parse(url),
                url,
                source,
                overwrite=overwrite,
                content_type=content_type,
                metadata=metadata,
                encryption=encryption,
            )

        done = await self._map(one, items, lambda item: item[1])
        return [(item[0], item[1]) for item, ok in zip(items, done, strict=True) if ok]

    async def put_many(
        self, key_objs: Iterable[Any], overwrite: bool = True
    ) -> list[tuple[str, str]]:
        """Upload many objects in parallel.

        Parameters
        ----------
        key_objs : List[Union[Tuple[str, PutValue], S3PutObject]]
            ``(key, value)`` pairs or S3PutObjects.
        overwrite : bool, default True
            If False, existing keys are left as they are and not returned.

        Returns
        -------
        List[Tuple[str, str]]
            ``(key, url)`` of each object uploaded, in input order.
        """
        self._check_open()
        items = self._put_items(key_objs, "key_objs", "value", _source)
        return await self._put_batch(items, overwrite)

    async def put_files(
        self, key_paths: Iterable[Any], overwrite: bool = True
    ) -> list[tuple[str, str]]:
        """Upload many local files in parallel.

        Parameters
        ----------
        key_paths : List[Union[Tuple[str, str], S3PutObject]]
            ``(key, local_path)`` pairs or S3PutObjects with ``path``.
        overwrite : bool, default True
            If False, existing keys are left as they are and not returned.

        Returns
        -------
        List[Tuple[str, str]]
            ``(key, url)`` of each file uploaded, in input order.
        """
        self._check_open()
        items = self._put_items(key_paths, "key_paths", "path", _file_source)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _check_local_files, [(i[1], i[2].path) for i in items])
        return await self._put_batch(items, overwrite)


def _file_source(local: Any, url: str, key: Any) -> Source:
    if not isinstance(local, str | os.PathLike):
        raise MetaflowS3InvalidObject(f"{url}: local path must be a str, got {local!r}", url)
    return Source(path=os.fspath(local))


def _check_local_files(pairs: list[tuple[str, str | None]]) -> None:
    for url, local in pairs:
        assert local is not None
        if not os.path.exists(local):
            raise MetaflowS3NotFound(f"Local file not found: {local}", local)
        if not os.path.isfile(local):
            raise MetaflowS3InvalidObject(f"{local}: not a regular file (key {url})", url)


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


def _source(obj: Any, url: str, key: Any) -> Source:
    if isinstance(obj, io.RawIOBase | io.BufferedIOBase):
        if not obj.readable() or not obj.seekable():
            raise MetaflowS3InvalidObject(
                f"Object corresponding to the key '{getattr(key, 'key', key)}' is not readable "
                f"or seekable ({url})",
                url,
            )
        return Source(fileobj=obj)
    if isinstance(obj, str):
        return Source(data=obj.encode("utf-8"))
    if isinstance(obj, bytes):
        return Source(data=obj)
    if isinstance(obj, bytearray | memoryview):
        return Source(data=bytes(obj))
    raise MetaflowS3InvalidObject(
        f"Object corresponding to the key '{getattr(key, 'key', key)}' is not a string or a "
        f"bytes object ({url}): got {type(obj).__name__}",
        url,
    )
