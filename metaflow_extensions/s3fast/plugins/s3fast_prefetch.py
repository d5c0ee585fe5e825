"""A task's small artifacts fetched in one batch when it is read one artifact at a time.

Metaflow's Client API (``for a in task: a.data``, ``task.data.x``) and a step reading a
parent's artifacts lazily ask the datastore for one content-addressed blob per call. When the
same task has asked for a few blobs (:data:`TRIGGER_KNOWN`, :data:`TRIGGER_UNKNOWN`),
:class:`Prefetcher` fetches the task's other small artifacts with one concurrent ``get_many``
into memory, and later calls for them are served from there without a request.

- Which task is reading: the ``TaskDataStore`` that called ``load_bytes`` (found on the call
  stack; when it is not found, nothing is prefetched). Its keys come from what that datastore
  already loaded (``ds_metadata``), or, in the Client API where it holds only the artifact
  asked for, from the task's ``<attempt>.data.json``: the attempt whose artifacts include the
  key being read.
- Nothing is stale: the keys are content addresses, so the bytes under a key never change.
  What is served is what a GET returns (the stored, gzip-packed bytes and their metadata);
  Metaflow unpacks them and fills its own blob cache as it does after a GET.
- Bounded: only artifacts of at most :data:`MAX_OBJECT_BYTES` (as recorded by Metaflow),
  at most :data:`MAX_BATCH_BYTES` a batch, at most :data:`MAX_PENDING_BYTES` held (the
  oldest go first); keys this storage already served (so in Metaflow's blob cache) are skipped.
- A reader of one artifact (or of a few) pays no extra request; a prefetch that fails is logged at DEBUG and
  the reads go on one at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from metaflow.datastore.task_datastore import TaskDataStore
from metaflow.metaflow_config import ARTIFACT_LOCALROOT

from s3fast import S3

logger = logging.getLogger(__name__)

MAX_OBJECT_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_PENDING_BYTES = 256 * 1024 * 1024
MAX_SERVED_KEYS = 1_000_000
# The single-key miss of a task that starts its prefetch: the second when the reading
# TaskDataStore already knows the task's keys; the fourth when they must be read from the
# task's data.json first (one more request, which a task read for two or three new blobs,
# such as a foreach task whose other artifacts its parent already stored, would not repay).
TRIGGER_KNOWN = 2
TRIGGER_UNKNOWN = 4
STACK_DEPTH = 8  # frames above load_bytes searched for the TaskDataStore

Loaded = tuple[bytes, dict[str, Any] | None]  # stored bytes, user metadata


def reading_task(frame: FrameType | None) -> TaskDataStore | None:
    """The ``TaskDataStore`` on the call stack at or above ``frame``, if any."""
    for _ in range(STACK_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, TaskDataStore):
            return owner
        frame = frame.f_back
    return None


def write_temp(blob: bytes) -> str:
    """``blob`` in a new file under ``ARTIFACT_LOCALROOT`` (where core's downloads go)."""
    fd, path = tempfile.mkstemp(prefix="s3fast.prefetched.", dir=ARTIFACT_LOCALROOT)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


class Prefetcher:
    """One storage instance's prefetched blobs and what it knows of each task's reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, Loaded] = OrderedDict()
        self._pending_bytes = 0
        self._served: set[str] = set()
        self._misses: dict[str, int] = {}
        self._tried: set[str] = set()

    def take(self, path: str) -> Loaded | None:
        """The prefetched bytes of ``path`` (removed from the store), or None."""
        with self._lock:
            got = self._pending.pop(path, None)
            if got is not None:
                self._pending_bytes -= len(got[0])
            return got

    def served(self, paths: Iterable[str]) -> None:
        with self._lock:
            if len(self._served) > MAX_SERVED_KEYS:
                self._served.clear()
            self._served.update(paths)

    def plan(
        self, path: str, task: TaskDataStore | None, join: Callable[..., str]
    ) -> tuple[str, dict[str, Any] | None] | None:
        """Whether a single-key miss of ``path`` by ``task`` starts a prefetch: the task's
        path and what its datastore already knows (its ``ds_metadata`` when that names more
        than this key), or None."""
        if task is None:
            return None
        try:
            flow = task.parent_datastore.flow_name
            task_path = join(flow, task.run_id, task.step_name, task.task_id)
            known: dict[str, Any] | None = task.ds_metadata
        except Exception:  # not the TaskDataStore this was written for: no prefetch
            return None
        if known is not None and len(known.get("objects", {})) <= 1:
            known = None  # the Client API's: only the artifact asked for
        with self._lock:
            if task_path in self._tried:
                return None
            misses = self._misses[task_path] = self._misses.get(task_path, 0) + 1
            if misses < (TRIGGER_UNKNOWN if known is None else TRIGGER_KNOWN):
                return None
            self._tried.add(task_path)
            self._misses.pop(task_path, None)
        return task_path, known

    def fetch(
        self,
        s3: S3,
        path: str,
        task_path: str,
        known: dict[str, Any] | None,
        split: Callable[[str], list[str]],
        join: Callable[..., str],
    ) -> Loaded | None:
        """Fetch ``path`` and the small artifacts of the task at ``task_path`` in one batch;
        keep the others and return ``path``'s (None when ``path`` does not exist)."""
        sha = split(path)[-1]
        prefix = split(path)[:-2]
        meta = known or self._task_metadata(s3, task_path, sha, join)
        wanted = [path]
        if meta is not None:
            with self._lock:
                skip = self._served | set(self._pending)
            total = 0
            info = meta.get("info", {})
            for name, key in meta.get("objects", {}).items():
                size = info.get(name, {}).get("size")
                key_path = join(*prefix, key[:2], key)
                if (
                    not isinstance(size, int)
                    or size > MAX_OBJECT_BYTES
                    or total + size > MAX_BATCH_BYTES
                    or key_path in skip
                    or key_path in wanted
                ):
                    continue
                wanted.append(key_path)
                total += size
        results = s3.get_many(wanted, return_missing=True, return_info=True, in_memory=True)
        mine: Loaded | None = None
        with self._lock:
            for r in results:
                if not r.exists or r.blob is None:
                    continue
                got = (r.blob, r.metadata)
                if r.key == path:
                    mine = got
                elif r.key not in self._pending:
                    self._pending[r.key] = got
                    self._pending_bytes += len(r.blob)
            while self._pending_bytes > MAX_PENDING_BYTES and self._pending:
                _, (blob, _meta) = self._pending.popitem(last=False)
                self._pending_bytes -= len(blob)
        logger.debug("prefetched %d artifacts of %s", len(wanted) - 1, task_path)
        return mine

    @staticmethod
    def _task_metadata(
        s3: S3, task_path: str, sha: str, join: Callable[..., str]
    ) -> dict[str, Any] | None:
        """The ``data.json`` of the task's attempt that stored ``sha`` (attempt 0 first, then
        any other the task has), or None."""

        def read(name: str) -> dict[str, Any] | None:
            got = s3.get(join(task_path, name), return_missing=True, in_memory=True)
            if got.exists and got.blob is not None:
                meta = json.loads(got.blob)
                if sha in meta.get("objects", {}).values():
                    return dict(meta)
            return None

        found = read("0.data.json")
        if found is not None:
            return found
        listed = [o.key.rsplit("/", 1)[-1] for o in s3.list_paths([task_path + "/"]) if o.exists]
        attempts = sorted(
            (int(name.split(".", 1)[0]) for name in listed if _is_data_json(name)), reverse=True
        )
        for attempt in attempts:
            if attempt != 0 and (found := read(f"{attempt}.data.json")) is not None:
                return found
        return None


def _is_data_json(name: str) -> bool:
    attempt, _, rest = name.partition(".")
    return rest == "data.json" and attempt.isdigit()
