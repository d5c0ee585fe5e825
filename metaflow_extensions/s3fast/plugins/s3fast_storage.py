"""Metaflow's ``s3`` datastore and IncludeFile client, moving bytes through s3fast.

Registered under core's names (see ``mfextinit_s3fast.py``) only while
``METAFLOW_S3FAST_ENABLED`` is on. :class:`S3FastStorage` is core's ``S3Storage`` with the
metaflow.S3 calls replaced by ``s3fast.S3`` calls: Metaflow's content-addressed store above it
chooses the keys, pickles, gzips and names the metadata, so what is written is byte for byte
what core writes, and runs written by either are read by the other.

What differs is how the calls are made:

- One ``s3fast.S3`` per process and datastore root serves every call (core makes a metaflow.S3
  per call); its connections stay open between calls. In a forked child (Metaflow's
  ``parallel_map``, multiprocessing) the same client works: s3fast gives the child its own
  loop and connections, and its temp files go inside the parent's temp dir.
- Every batch goes out as one concurrent ``*_many`` call (core uploads and downloads ten
  objects or fewer one at a time), and an upload batch is cut into slices of about
  :data:`PUT_SLICE_BYTES` so that a step's artifacts are not all held in memory at once.
- The files ``load_bytes`` downloads are deleted when its result is closed, as in core; the
  client's (by then empty) temp dir under ``ARTIFACT_LOCALROOT`` goes at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from metaflow.datastore.datastore_storage import CloseAfterUse, DataStoreStorage
from metaflow.metaflow_config import ARTIFACT_LOCALROOT, DATATOOLS_S3ROOT
from metaflow.plugins.datastores.s3_storage import S3Client, S3Storage

import s3fast
from s3fast import S3, S3Object, S3PutObject

from .s3fast_prefetch import Prefetcher, StepPlan, reading_task, write_temp

logger = logging.getLogger(__name__)

PUT_SLICE_BYTES = 256 * 1024 * 1024

_announced = False
_announce_lock = threading.Lock()

_clients: dict[tuple[str, ...], S3] = {}
_clients_lock = threading.Lock()


def announce() -> None:
    """Say once per process that Metaflow's S3 traffic goes through s3fast: at INFO to this
    module's logger, and to stderr (the task log) when logging is not configured."""
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    message = (
        f"s3fast {s3fast.__version__}: Metaflow's S3 datastore, IncludeFile and metaflow.S3 "
        "use s3fast (METAFLOW_S3FAST_ENABLED is on)"
    )
    if logger.hasHandlers():
        logger.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


def shared_client(s3root: str, external_client: Any = None) -> S3:
    """This process's ``s3fast.S3`` for ``s3root`` and Metaflow's client settings, made on
    first use and closed at exit."""
    key = (
        s3root,
        str(ARTIFACT_LOCALROOT),
        json.dumps(
            [getattr(external_client, name, None) for name in _CLIENT_SETTINGS],
            sort_keys=True,
            default=repr,
        ),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = S3(s3root=s3root, tmproot=ARTIFACT_LOCALROOT, external_client=external_client)
            _clients[key] = client
        return client


# What makes one metaflow S3Client differ from another (all None for the datastore's).
_CLIENT_SETTINGS = ("_s3_role", "_s3_session_vars", "_s3_client_params")


@atexit.register
def _close_clients() -> None:
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


class _RemoveFiles:
    """Closes a ``load_bytes`` result: deletes the files it downloaded."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def close(self) -> None:
        paths, self.paths = self.paths, []
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _size(value: Any) -> int:
    """Bytes in an upload value: a bytes-like object, a str, or a seekable file object
    (Metaflow passes ``BytesIO`` for metadata files)."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    try:
        here = value.tell()
        end = value.seek(0, 2)
        value.seek(here)
        return int(end - here)
    except (AttributeError, OSError, ValueError):
        return 0


def _slices(objs: Iterable[S3PutObject], limit: int) -> Iterator[list[S3PutObject]]:
    """Consecutive runs of ``objs`` of about ``limit`` bytes each (one object over the limit
    is a run of its own). A key seen again starts a new run, so a later value is written after
    an earlier one, as in a sequence of puts (s3fast refuses a key twice in one call;
    Metaflow's content-addressed store asks for that when two artifacts are equal)."""
    batch: list[S3PutObject] = []
    keys: set[str] = set()
    size = 0
    for obj in objs:
        n = _size(obj.value)
        if batch and (size + n > limit or obj.key in keys):
            yield batch
            batch, keys, size = [], set(), 0
        batch.append(obj)
        keys.add(obj.key)
        size += n
    if batch:
        yield batch


class S3FastStorage(S3Storage):
    """Core's S3 datastore (``TYPE = "s3"``, same root, same layout) over ``s3fast.S3``."""

    TYPE = "s3"

    def __init__(self, root: str | None = None) -> None:
        # core's S3Storage.__init__, less its check that boto3 imports (12-16 ms a process;
        # s3fast does not use boto3)
        DataStoreStorage.__init__(self, root)
        self.s3_client = S3Client()
        self._prefetch = Prefetcher()
        announce()

    def _s3(self) -> S3:
        return shared_client(str(self.datastore_root), self.s3_client)

    def is_file(self, paths: list[str]) -> list[bool]:
        return [o.exists for o in self._s3().info_many(paths, return_missing=True)]

    def info_file(self, path: str) -> tuple[bool, dict[str, Any] | None]:
        obj = self._s3().info(path, return_missing=True)
        return obj.exists, obj.metadata

    def size_file(self, path: str) -> int | None:
        return self._s3().info(path, return_missing=True).size

    def list_content(self, paths: Iterable[str]) -> list[Any]:
        strip_prefix_len = len(str(self.datastore_root).rstrip("/")) + 1
        return [
            self.list_content_result(path=o.url[strip_prefix_len:], is_file=o.exists)
            for o in self._s3().list_paths(paths)
        ]

    def save_bytes(
        self,
        path_and_bytes_iter: Iterable[tuple[str, Any]],
        overwrite: bool = False,
        len_hint: int = 0,
    ) -> None:
        def requests() -> Iterator[S3PutObject]:
            for path, obj in path_and_bytes_iter:
                if isinstance(obj, tuple):
                    yield S3PutObject(key=path, value=obj[0], metadata=obj[1])
                else:
                    yield S3PutObject(key=path, value=obj)

        s3 = self._s3()
        for batch in _slices(requests(), PUT_SLICE_BYTES):
            s3.put_many(batch, overwrite)

    def load_bytes(self, paths: list[str]) -> CloseAfterUse:
        if len(paths) == 0:
            return CloseAfterUse(iter([]))
        files = _RemoveFiles()
        # A single-key miss may start a prefetch (s3fast_prefetch) of the reading task's
        # other artifacts or of the step's other tasks'; the reader is looked up now, while
        # it is on the stack.
        task = reading_task(sys._getframe(1)) if len(paths) == 1 else None

        def iter_results() -> Iterator[tuple[str, str | None, dict[str, Any] | None]]:
            prefetched = {p: got for p in paths if (got := self._prefetch.take(p)) is not None}
            rest = [p for p in paths if p not in prefetched]
            if task is not None and rest:
                got = self._prefetched(rest[0], task)
                if got is not None:
                    prefetched[rest[0]] = got
                    rest = []
            elif task is not None:
                self._prefetch.plan(paths[0], task, self.path_join, miss=False)
            results: dict[str, S3Object] = {}
            if rest:
                got_many = self._s3().get_many(rest, return_missing=True, return_info=True)
                for p, r in zip(rest, got_many, strict=True):
                    results[p] = r
                    if r.path:
                        files.paths.append(r.path)
            self._prefetch.served(paths)
            for p in paths:
                if p in prefetched:
                    blob, metadata = prefetched[p]
                    files.paths.append(write_temp(blob))
                    yield p, files.paths[-1], metadata
                elif (found := results.get(p)) is not None and found.exists:
                    yield found.key, found.path, found.metadata
                else:
                    yield p, None, None

        # As in core: the downloads happen when the result is iterated, and the files stay
        # until the caller closes it.
        return CloseAfterUse(iter_results(), closer=files)

    def _prefetched(self, path: str, task: Any) -> tuple[bytes, dict[str, Any] | None] | None:
        """``path`` fetched in a prefetch batch when this miss starts one; None when it does
        not, when ``path`` does not exist, or when the batch failed (then it is fetched
        alone)."""
        plan = self._prefetch.plan(path, task, self.path_join)
        if plan is None:
            return None
        try:
            if isinstance(plan, StepPlan):
                return self._prefetch.fetch_step(
                    self._s3(), path, plan, self.path_split, self.path_join
                )
            return self._prefetch.fetch(
                self._s3(), path, plan.task_path, plan.known, self.path_split, self.path_join
            )
        except Exception:
            logger.debug("no prefetch for %s", plan, exc_info=True)
            return None


class S3FastDataClient(S3):
    """``IncludeFile``'s client for ``s3://`` paths: ``s3fast.S3`` with the two names
    Metaflow's data-client registry needs (``TYPE`` and the root uploads go under)."""

    TYPE = "s3"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        announce()

    @classmethod
    def get_root_from_config(cls, echo: Any, create_on_absent: bool = True) -> str | None:
        return DATATOOLS_S3ROOT
