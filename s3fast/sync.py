"""S3: a drop-in for ``metaflow.S3``. Each method is one call through the bridge onto the
shared event loop, where an :class:`~s3fast.aio.AsyncS3` does the work."""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Any

from . import _bridge
from ._engine.engine import TransferStats
from .aio import AsyncS3, PutValue
from .config import TransferConfig
from .objects import S3Object
from .progress import ProgressCallback


def _listify(values: Any) -> Any:
    # Materialize iterators here, in the caller's thread, not on the loop.
    if values is None or isinstance(values, str | bytes):
        return values
    return list(values)


class S3:
    """The s3fast client, with metaflow.S3's constructor, methods and results.

    ``with S3(s3root="s3://bucket/prefix") as s3: s3.get_many([...])`` — downloads live in a
    private temp dir until the ``with`` block ends (or ``close()``).

    Each call blocks the calling thread while the work runs on s3fast's own event loop thread,
    from any thread, also one whose event loop is running (a Jupyter cell; in other async code
    prefer :class:`~s3fast.AsyncS3`). A client made before ``fork()`` works in the child, which
    makes its own connections, workers and temp dirs and leaves the parent's alone.

    Parameters
    ----------
    tmproot : str, optional
        Where downloads land (see :class:`~s3fast.AsyncS3` for the default order).
    bucket : str, optional
        Override the bucket of ``DATATOOLS_S3ROOT`` when ``run`` is given.
    prefix : str, optional
        Override the path of ``DATATOOLS_S3ROOT`` when ``run`` is given.
    run : FlowSpec or Run, optional
        Derive the prefix from the current or a past run, e.g. ``S3(run=self)``.
    s3root : str, optional
        If ``run`` is not given, use this as the S3 prefix.
    encryption : str, optional
        Server-side encryption for uploads.
    role, session_vars, client_params, external_client, inject_failure_rate
        metaflow.S3's keywords (keyword only); see :class:`~s3fast.AsyncS3`.
    endpoint_url : str, optional
        S3 endpoint (keyword only).
    config : TransferConfig, optional
        Transfer settings (keyword only).
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
        self._aio = AsyncS3(
            tmproot,
            bucket,
            prefix,
            run,
            s3root,
            encryption,
            role=role,
            session_vars=session_vars,
            client_params=client_params,
            external_client=external_client,
            inject_failure_rate=inject_failure_rate,
            endpoint_url=endpoint_url,
            config=config,
        )
        # Temp files go even if close() is never called (those of this process only: after a
        # fork, the child's and the parent's each go with their own process).
        self._finalizer = weakref.finalize(self, _remove_temp_dirs, self._aio)

    def __enter__(self) -> S3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every file downloaded in this scope. Its keep-alive connections stay open
        for the next ``S3`` with the same settings in this process."""
        if not self._aio._closed:
            try:
                _bridge.run(self._aio.close())  # removes the temp dirs, whatever happens
            except BaseException:
                self._finalizer()  # also if the close was interrupted before it got there
                raise
            self._finalizer.detach()

    @property
    def tmpdirs(self) -> list[str]:
        return self._aio.tmpdirs

    @property
    def stats(self) -> TransferStats:
        """Counters of this client's engine. See :attr:`AsyncS3.stats`."""
        return self._aio.stats

    def transport_for(self, bucket: str | None = None) -> str:
        """``"lean"`` or ``"botocore"``: the path requests for ``bucket`` take. See
        :meth:`AsyncS3.transport_for`."""
        return _bridge.run(self._aio.transport_for(bucket))

    def get(
        self,
        key: Any = None,
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
    ) -> S3Object:
        """Get a single object from S3. See :meth:`AsyncS3.get`."""
        return _bridge.run(
            self._aio.get(key, return_missing, return_info, in_memory=in_memory),
            lambda obj: _remove_files([obj]),
        )

    def get_many(
        self,
        keys: Iterable[Any],
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get many objects from S3 in parallel. See :meth:`AsyncS3.get_many`."""
        return _bridge.run(
            self._aio.get_many(
                _listify(keys), return_missing, return_info, in_memory=in_memory, progress=progress
            ),
            _remove_files,
        )

    def iter_get_many(
        self,
        keys: Iterable[Any],
        return_missing: bool = False,
        return_info: bool = True,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Iterator[S3Object]:
        """Get many objects in parallel, yielding each as it completes (completion order).
        Downloads continue in the background while the caller works on an object. Leaving
        the loop early cancels the rest and deletes what was not yielded (at once when the
        generator is closed, e.g. by ``contextlib.closing``, else when it is collected).
        See :meth:`AsyncS3.iter_get_many`."""
        agen = self._aio.iter_get_many(
            _listify(keys), return_missing, return_info, in_memory=in_memory, progress=progress
        )
        try:
            while True:
                try:
                    obj = _bridge.run(_anext(agen))
                except StopAsyncIteration:
                    return
                yield obj
        finally:
            _bridge.run(agen.aclose())

    def get_recursive(
        self,
        keys: Iterable[str],
        return_info: bool = False,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get every object under the given prefixes. See :meth:`AsyncS3.get_recursive`."""
        return _bridge.run(
            self._aio.get_recursive(
                _listify(keys), return_info, in_memory=in_memory, progress=progress
            ),
            _remove_files,
        )

    def get_all(
        self,
        return_info: bool = False,
        *,
        in_memory: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Get every object under the client's root. See :meth:`AsyncS3.get_all`."""
        return _bridge.run(
            self._aio.get_all(return_info, in_memory=in_memory, progress=progress), _remove_files
        )

    def put(
        self,
        key: Any,
        obj: PutValue,
        overwrite: bool = True,
        content_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Upload one object. See :meth:`AsyncS3.put`."""
        return _bridge.run(self._aio.put(key, obj, overwrite, content_type, metadata))

    def put_many(
        self,
        key_objs: Iterable[Any],
        overwrite: bool = True,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[str, str]]:
        """Upload many objects. See :meth:`AsyncS3.put_many`."""
        return _bridge.run(self._aio.put_many(_listify(key_objs), overwrite, progress=progress))

    def put_files(
        self,
        key_paths: Iterable[Any],
        overwrite: bool = True,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[tuple[str, str]]:
        """Upload many local files. See :meth:`AsyncS3.put_files`."""
        return _bridge.run(self._aio.put_files(_listify(key_paths), overwrite, progress=progress))

    def delete(self, key: str) -> str:
        """Delete one object. See :meth:`AsyncS3.delete`."""
        return _bridge.run(self._aio.delete(key))

    def delete_many(
        self, keys: Iterable[str], *, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Delete many objects (batched DeleteObjects). See :meth:`AsyncS3.delete_many`."""
        return _bridge.run(self._aio.delete_many(_listify(keys), progress=progress))

    def delete_recursive(
        self, keys: Iterable[str | None], *, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Delete every object under the given prefixes. See :meth:`AsyncS3.delete_recursive`."""
        return _bridge.run(self._aio.delete_recursive(_listify(keys), progress=progress))

    def copy(self, src: str, dst: str) -> str:
        """Copy one object server-side. See :meth:`AsyncS3.copy`."""
        return _bridge.run(self._aio.copy(src, dst))

    def copy_many(
        self, pairs: Iterable[tuple[str, str]], *, progress: ProgressCallback | None = None
    ) -> list[tuple[str, str]]:
        """Copy many objects server-side. See :meth:`AsyncS3.copy_many`."""
        return _bridge.run(self._aio.copy_many(_listify(pairs), progress=progress))

    def list_paths(self, keys: Iterable[str] | None = None) -> list[S3Object]:
        """List the next level of paths. See :meth:`AsyncS3.list_paths`."""
        return _bridge.run(self._aio.list_paths(_listify(keys)))

    def list_recursive(self, keys: Iterable[str] | None = None) -> list[S3Object]:
        """List every object under the given prefixes. See :meth:`AsyncS3.list_recursive`."""
        return _bridge.run(self._aio.list_recursive(_listify(keys)))

    def info(self, key: str | None = None, return_missing: bool = False) -> S3Object:
        """Metadata about one object. See :meth:`AsyncS3.info`."""
        return _bridge.run(self._aio.info(key, return_missing))

    def info_many(
        self,
        keys: Iterable[str],
        return_missing: bool = False,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[S3Object]:
        """Metadata about many objects. See :meth:`AsyncS3.info_many`."""
        return _bridge.run(self._aio.info_many(_listify(keys), return_missing, progress=progress))


async def _anext(agen: AsyncGenerator[S3Object, None]) -> S3Object:
    return await agen.__anext__()


def _remove_temp_dirs(aio: AsyncS3) -> None:
    aio._temp_dirs.close()


def _remove_files(objs: list[S3Object]) -> None:
    """The files of downloads whose results were never handed over (Ctrl-C as they ended)."""
    for obj in objs:
        if obj.path:
            with contextlib.suppress(OSError):
                os.unlink(obj.path)
