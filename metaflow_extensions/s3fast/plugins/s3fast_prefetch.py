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

Across the tasks of a step (the Client API reading a run, ``for task in step: task.data.x``,
a join reading its inputs), each task usually misses only a few blobs of its own (the rest are
shared with the step that started it, so already in the blob cache) and the per-task trigger
never fires. When a second task of a step misses, :class:`Prefetcher` lists the step's tasks
and fetches, for the next window of them (:data:`STEP_WINDOW` tasks, doubling each time the
reader goes past it, at most :data:`MAX_STEP_WINDOW`), their ``0.data.json`` and then the
artifacts of the names this reader has already read in that step (nothing else), in two
concurrent batches, under the same limits.
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
from dataclasses import dataclass, field
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
# A step's first prefetch covers this many of its tasks, each later one twice as many as the
# one before (up to MAX_STEP_WINDOW): a reader of a few tasks of a wide step pays for a window,
# not for the step.
STEP_WINDOW = 64
MAX_STEP_WINDOW = 1024
STACK_DEPTH = 8  # frames above load_bytes searched for the TaskDataStore

Loaded = tuple[bytes, dict[str, Any] | None]  # stored bytes, user metadata


@dataclass(frozen=True)
class TaskPlan:
    """Fetch the reading task's other small artifacts with the key being read."""

    task_path: str
    known: dict[str, Any] | None  # the task's data.json when its datastore holds it


@dataclass(frozen=True)
class StepPlan:
    """Fetch the artifacts named ``names`` of the next tasks of the step at ``step_path``
    with the key being read."""

    step_path: str
    task_id: str
    names: frozenset[str]


@dataclass
class _StepReads:
    """What one reader has missed in one step."""

    tasks: set[str] = field(default_factory=set)  # tasks with a miss
    names: set[str] = field(default_factory=set)  # the artifact names those misses were
    covered: set[str] = field(default_factory=set)  # tasks a step prefetch has fetched for
    listed: list[str] | None = None  # the step's task ids, once listed
    window: int = STEP_WINDOW
    busy: bool = False  # a step prefetch is running


class _Batch:
    """The keys of one prefetch batch, ``first`` (the artifact asked for) first: artifacts of
    at most :data:`MAX_OBJECT_BYTES`, :data:`MAX_BATCH_BYTES` in all, none in ``skip`` (held
    or served already) and none twice."""

    def __init__(self, first: str) -> None:
        self.keys = [first]
        self.skip: set[str] = set()
        self._total = 0

    def add(self, key_path: str, size: Any) -> None:
        if (
            not isinstance(size, int)
            or size > MAX_OBJECT_BYTES
            or self._total + size > MAX_BATCH_BYTES
            or key_path in self.skip
            or key_path in self.keys
        ):
            return
        self.keys.append(key_path)
        self._total += size


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
        self._steps: dict[str, _StepReads] = {}

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
        self, path: str, task: TaskDataStore | None, join: Callable[..., str], miss: bool = True
    ) -> TaskPlan | StepPlan | None:
        """Whether a single-key read of ``path`` by ``task`` starts a prefetch: of the task's
        other artifacts (:class:`TaskPlan`), of the same names in the step's other tasks
        (:class:`StepPlan`), or none. A read served from a prefetch (``miss`` false) only
        records which artifact the reader read."""
        if task is None:
            return None
        try:
            flow = task.parent_datastore.flow_name
            step_path = join(flow, task.run_id, task.step_name)
            task_id = str(task.task_id)
            task_path = join(step_path, task_id)
            known: dict[str, Any] | None = task.ds_metadata
            objects = (known or {}).get("objects", {})
            names = {name for name, key in objects.items() if path.endswith("/" + key)}
        except Exception:  # not the TaskDataStore this was written for: no prefetch
            return None
        if known is not None and len(objects) <= 1:
            known = None  # the Client API's: only the artifact asked for
        with self._lock:
            step = self._steps.setdefault(step_path, _StepReads())
            step.tasks.add(task_id)
            step.names |= names
            if not miss:
                return None
            if (
                len(step.tasks) >= 2
                and step.names
                and task_id not in step.covered
                and not step.busy
            ):
                step.busy = True
                return StepPlan(step_path, task_id, frozenset(step.names))
            if task_path in self._tried:
                return None
            misses = self._misses[task_path] = self._misses.get(task_path, 0) + 1
            if misses < (TRIGGER_UNKNOWN if known is None else TRIGGER_KNOWN):
                return None
            self._tried.add(task_path)
            self._misses.pop(task_path, None)
        return TaskPlan(task_path, known)

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
        batch = _Batch(path)
        if meta is not None:
            with self._lock:
                batch.skip = self._served | set(self._pending)
            info = meta.get("info", {})
            for name, key in meta.get("objects", {}).items():
                batch.add(join(*prefix, key[:2], key), info.get(name, {}).get("size"))
        wanted = batch.keys
        mine = self._get(s3, path, wanted)
        logger.debug("prefetched %d artifacts of %s", len(wanted) - 1, task_path)
        return mine

    def fetch_step(
        self,
        s3: S3,
        path: str,
        plan: StepPlan,
        split: Callable[[str], list[str]],
        join: Callable[..., str],
    ) -> Loaded | None:
        """Fetch ``path`` and, for the next window of the step's tasks, the artifacts named
        ``plan.names``; keep the others and return ``path``'s (None when it does not exist)."""
        step = self._steps[plan.step_path]
        try:
            if step.listed is None:
                listed = s3.list_paths([plan.step_path + "/"])
                found = {o.key.rstrip("/").rsplit("/", 1)[-1] for o in listed if not o.exists}
                step.listed = sorted(found, key=_task_order)
            with self._lock:
                done = step.covered | step.tasks  # prefetched for, or already read
                todo = [t for t in step.listed if t not in done]
                window = todo[: step.window]
                step.window = min(step.window * 2, MAX_STEP_WINDOW)
                step.covered.update(window)
                step.covered.add(plan.task_id)
            data = s3.get_many(
                [join(plan.step_path, t, "0.data.json") for t in window],
                return_missing=True,
                in_memory=True,
            )
            prefix = split(path)[:-2]
            batch = _Batch(path)
            with self._lock:
                batch.skip = self._served | set(self._pending)
            for got in data:
                if not got.exists or got.blob is None:
                    continue
                meta = json.loads(got.blob)
                info = meta.get("info", {})
                objects = meta.get("objects", {})
                for name in sorted(plan.names):
                    key = objects.get(name)
                    if isinstance(key, str):
                        batch.add(join(*prefix, key[:2], key), info.get(name, {}).get("size"))
            wanted = batch.keys
            mine = self._get(s3, path, wanted)
        finally:
            step.busy = False
        logger.debug(
            "prefetched %d artifacts of %d tasks of %s",
            len(wanted) - 1,
            len(window),
            plan.step_path,
        )
        return mine

    def _get(self, s3: S3, path: str, wanted: list[str]) -> Loaded | None:
        """``wanted`` (``path`` first) in one batch: ``path``'s bytes returned, the others
        kept for later reads."""
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


def _task_order(task_id: str) -> tuple[int, int | str]:
    """Numeric task ids (the local runtime's) in numeric order, then the others."""
    return (0, int(task_id)) if task_id.isdigit() else (1, task_id)


def _is_data_json(name: str) -> bool:
    attempt, _, rest = name.partition(".")
    return rest == "data.json" and attempt.isdigit()
