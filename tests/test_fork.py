"""Fork safety: an ``S3`` or ``AsyncS3`` used before ``fork()`` works in a child made by
multiprocessing's ``fork`` start method (as Metaflow's ``parallel_map`` makes them). The child
makes its own connections, loop threads, worker processes and temp dirs, leaves the parent's
alone, and leaves nothing behind when it ends; the parent keeps working."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from s3fast import S3, AsyncS3
from s3fast._engine import sinks
from s3fast._engine.fanout import MIN_BATCH
from s3fast.limits import MiB

from ._internals import loop_slots, worker_pids
from .test_api import SMALL_PARTS

# Python 3.12+ warns on every fork of a process with threads (s3fast's loop thread is one)
_FORK_WARNING = "ignore:This process:DeprecationWarning"
pytestmark = pytest.mark.filterwarnings(_FORK_WARNING)

FORK = multiprocessing.get_context("fork")
TIMEOUT = 120.0


def in_child(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child; what it returned. Its exception fails the test, with the
    child's traceback; so does a child that hangs or exits with an error."""
    recv, send = FORK.Pipe(duplex=False)

    def main() -> None:
        recv.close()
        try:
            send.send(("ok", work()))
        except BaseException:
            send.send(("error", traceback.format_exc()))
        finally:
            send.close()

    child = FORK.Process(target=main)
    child.start()
    send.close()
    try:
        assert recv.poll(TIMEOUT), "the child did not answer"
        kind, value = recv.recv()
        child.join(TIMEOUT)
        assert child.exitcode == 0, f"the child exited with {child.exitcode}"
    finally:
        recv.close()
        if child.is_alive():
            child.kill()
            child.join()
        child.close()
    assert kind == "ok", value
    return value


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(map(_alive, pids)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _contents(paths: list[str]) -> list[bytes]:
    return [pathlib.Path(p).read_bytes() for p in paths]


def test_sync_client_in_forked_child(bucket: str) -> None:
    """The same ``S3`` object, used in the parent, then in a child: get (into a file and into
    memory), put, get_many, list_recursive; then in the parent again."""
    s3 = S3(s3root=f"s3://{bucket}/fork")
    s3.put("a", b"A" * 1000)
    before = s3.get("a")  # a file in the parent's temp dir
    assert before.path is not None
    parent_dirs = s3.tmpdirs
    assert parent_dirs

    def child() -> dict[str, Any]:
        got = s3.get("a")
        assert got.path is not None
        s3.put("from-child", b"child")
        many = s3.get_many(["a", "from-child"])
        return {
            "pid": os.getpid(),
            "blob": s3.get("a", in_memory=True).blob,
            "file": pathlib.Path(got.path).read_bytes(),
            "many": _contents([o.path for o in many if o.path]),
            "listed": sorted(o.key for o in s3.list_recursive()),
            "dirs": s3.tmpdirs,
            "in_dirs": all(os.path.dirname(o.path) in s3.tmpdirs for o in [got, *many] if o.path),
            "before": pathlib.Path(before.path).read_bytes(),  # the parent's file, still there
        }

    seen = in_child(child)
    assert seen["blob"] == seen["file"] == seen["before"] == b"A" * 1000
    assert seen["many"] == [b"A" * 1000, b"child"]
    assert seen["listed"] == ["a", "from-child"]
    assert seen["in_dirs"] and seen["dirs"]
    # The child's downloads went to dirs of its own, removed when it ended ...
    assert not set(seen["dirs"]) & set(parent_dirs)
    assert all(f".{seen['pid']}." in os.path.basename(d) for d in seen["dirs"])
    assert not any(map(os.path.exists, seen["dirs"]))
    # ... and the parent's are untouched, and the parent keeps working.
    assert s3.tmpdirs == parent_dirs and pathlib.Path(before.path).read_bytes() == b"A" * 1000
    assert s3.get("from-child", in_memory=True).blob == b"child"
    s3.put("after", b"parent")
    assert sorted(o.key for o in s3.list_recursive()) == ["a", "after", "from-child"]
    s3.close()
    assert not any(map(os.path.exists, parent_dirs))


def test_child_that_closes_and_one_that_never_used_it(seaweed_bucket: str) -> None:
    """A child may close the client (its own state only); a child that never used it leaves
    the parent's temp dirs alone when it exits."""
    with S3(s3root=f"s3://{seaweed_bucket}/fork") as s3:
        s3.put("a", b"A")
        obj = s3.get("a")
        assert obj.path is not None

        def closes() -> list[str]:
            assert s3.get("a", in_memory=True).blob == b"A"
            assert s3.get("a").path
            dirs = s3.tmpdirs
            s3.close()
            return dirs

        child_dirs = in_child(closes)
        assert child_dirs and not any(map(os.path.exists, child_dirs))
        assert in_child(lambda: os.getpid()) > 0
        assert pathlib.Path(obj.path).read_bytes() == b"A"
        assert s3.get("a", in_memory=True).blob == b"A"


def test_forked_child_with_worker_processes_and_loop_threads(
    seaweed_bucket: str, tmp_path: pathlib.Path
) -> None:
    """With ``processes=2``: the parent's worker processes and loop threads exist before the
    fork; the child starts its own (never the parent's), they are gone when it ends, and the
    parent's still serve it."""
    config = dataclasses.replace(SMALL_PARTS, processes=2)
    small = {f"s/{i}": os.urandom(1000 + i) for i in range(MIN_BATCH + 2)}
    big = {f"b/{i}": os.urandom(300 * 1024 + i) for i in range(MIN_BATCH)}  # in memory: threads
    s3 = S3(s3root=f"s3://{seaweed_bucket}/fork", config=config)
    try:
        s3.put_many(list({**small, **big}.items()))
        got = s3.get_many(list(small))  # into files: worker processes
        assert _contents([o.path for o in got if o.path]) == list(small.values())
        assert [o.blob for o in s3.get_many(list(big), in_memory=True)] == list(big.values())
        workers = worker_pids(s3)
        threads = [slot.thread for slot in loop_slots(s3)]
        assert len(workers) == 2 and len(threads) == 2

        def child() -> dict[str, Any]:
            files = s3.get_many(list(small))
            blobs = [o.blob for o in s3.get_many(list(big), in_memory=True)]
            uploads = []
            for i in range(MIN_BATCH):
                path = tmp_path / f"upload-{i}"
                path.write_bytes(b"c%d" % i)
                uploads.append((f"c/{i}", str(path)))
            put = s3.put_files(uploads)
            return {
                "files": _contents([o.path for o in files if o.path]),
                "blobs": blobs,
                "put": put,
                "listed": sorted(o.url.split("/fork/", 1)[1] for o in s3.list_recursive(["c"])),
                "workers": worker_pids(s3),
                "threads": len(loop_slots(s3)),
                "dirs": s3.tmpdirs,
            }

        seen = in_child(child)
        assert seen["files"] == list(small.values()) and seen["blobs"] == list(big.values())
        assert [key for key, _ in seen["put"]] == [f"c/{i}" for i in range(MIN_BATCH)]
        assert seen["listed"] == sorted(f"c/{i}" for i in range(MIN_BATCH))
        assert len(seen["workers"]) == 2 and not set(seen["workers"]) & set(workers)
        assert seen["threads"] == 2
        assert _gone(seen["workers"]), "the child's worker processes outlived it"
        assert not any(map(os.path.exists, seen["dirs"]))
        # The parent's workers and threads were not touched, and still serve it.
        assert all(map(_alive, workers)) and all(t.is_alive() for t in threads)
        got = s3.get_many([f"c/{i}" for i in range(MIN_BATCH)])
        assert _contents([o.path for o in got if o.path]) == [b"c%d" % i for i in range(MIN_BATCH)]
        assert [o.blob for o in s3.get_many(list(big), in_memory=True)] == list(big.values())
        assert worker_pids(s3) == workers
    finally:
        s3.close()
    assert not any(map(_alive, workers))


def test_async_client_in_forked_child(seaweed_bucket: str) -> None:
    """An ``AsyncS3`` used on the parent's loop, then in a child by ``asyncio.run`` there."""
    loop = asyncio.new_event_loop()
    s3 = AsyncS3(s3root=f"s3://{seaweed_bucket}/fork")
    try:
        loop.run_until_complete(s3.put("a", b"A"))
        assert loop.run_until_complete(s3.get("a", in_memory=True)).blob == b"A"

        async def work() -> dict[str, Any]:
            got = await s3.get("a")
            assert got.path is not None
            await s3.put("b", b"B")
            many = await s3.get_many(["a", "b"], in_memory=True)
            listed = sorted(o.key for o in await s3.list_recursive())
            dirs = s3.tmpdirs
            data = await asyncio.to_thread(pathlib.Path(got.path).read_bytes)
            await s3.close()
            return {"data": data, "many": [o.blob for o in many], "listed": listed, "dirs": dirs}

        seen = in_child(lambda: asyncio.run(work()))
        assert seen["data"] == b"A" and seen["many"] == [b"A", b"B"]
        assert seen["listed"] == ["a", "b"]
        assert not any(map(os.path.exists, seen["dirs"]))
        assert loop.run_until_complete(s3.get("b", in_memory=True)).blob == b"B"
    finally:
        loop.run_until_complete(s3.close())
        loop.close()


def test_prefault_threads_in_forked_child(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threads that prefault big in-memory GETs (``S3FAST_PREFAULT=1``) are the parent's:
    a child gets its own, and the parent keeps using its own."""
    monkeypatch.setenv("S3FAST_PREFAULT", "1")
    body = os.urandom(2 * MiB)  # over PREFAULT_MIN
    s3 = S3(s3root=f"s3://{seaweed_bucket}/fork")
    try:
        s3.put("big", body)
        assert s3.get("big", in_memory=True).blob == body
        parent = sinks._prefaulter
        assert parent is not None and parent.submit(os.getpid).result(10) == os.getpid()

        def child() -> bool:
            assert s3.get("big", in_memory=True).blob == body
            mine = sinks._prefaulter
            assert mine is not None and mine is not parent
            return mine.submit(os.getpid).result(10) == os.getpid()  # its threads run

        assert in_child(child)
        assert s3.get("big", in_memory=True).blob == body
        assert sinks._prefaulter is parent and parent.submit(os.getpid).result(10)
    finally:
        s3.close()


def test_metaflow_parallel_map(seaweed_bucket: str) -> None:
    """Metaflow's ``parallel_map`` forks children that end with ``os._exit()`` (no cleanup of
    their own runs): their downloads land inside the parent's dir (made for it, as it had none
    yet), which the parent's close removes with everything in it."""
    from metaflow.multicore_utils import parallel_map

    s3 = S3(s3root=f"s3://{seaweed_bucket}/pmap")
    try:
        s3.put_many([(f"k{i}", b"%d" % i) for i in range(4)])

        def work(i: int) -> tuple[bytes, list[str]]:
            obj = s3.get(f"k{i}")
            assert obj.path is not None
            return pathlib.Path(obj.path).read_bytes(), s3.tmpdirs

        results = parallel_map(work, range(4), max_parallel=2)
        assert [data for data, _ in results] == [b"0", b"1", b"2", b"3"]
        left = [d for _, dirs in results for d in dirs]
        assert len(set(left)) == 4 and all(map(os.path.isdir, left))  # the children's, left
        containers = {os.path.dirname(d) for d in left}
        assert len(containers) == 1 and s3.tmpdirs == []  # the parent's, made by a child
        assert s3.get("k0").path  # the parent uses it too
        assert s3.tmpdirs == list(containers)
    finally:
        s3.close()
    assert not any(map(os.path.exists, [*left, *containers]))


_RAW_FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from s3fast import S3
    s3 = S3(s3root=sys.argv[1])
    s3.put("a", b"parent")
    assert s3.get("a", in_memory=True).blob == b"parent"  # its connection stays pooled
    pid = os.fork()
    if pid == 0:
        assert s3.get("a", in_memory=True).blob == b"parent"
        s3.put("child", b"child")
        # What the child set aside of the parent's (loop, client, connections) is never
        # collected, not even at exit: that would close the parent's sockets.
        from s3fast import _fork
        assert len(_fork._orphans) >= 3, _fork._orphans
        class Canary:
            def __del__(self):
                os.write(2, b"collected\\n")
        _fork.orphan(Canary())
        sys.exit(0)  # a normal exit: atexit, finalizers, the modules torn down
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), flush=True)
    for _ in range(3):  # on the connections the parent had before the fork
        assert s3.get("child", in_memory=True).blob == b"child"
    print("retries", s3.stats.retries, flush=True)  # none: no connection was broken
    s3.close()
    print("parent", flush=True)
    """
)


def test_os_fork_child_that_exits_normally(bucket: str) -> None:
    """A child of a bare ``os.fork()`` that ends through the interpreter's normal exit (module
    teardown collects what it holds): nothing of the parent's is closed or sent on from the
    child (a TLS close_notify, a socket taken out of the parent's epoll set), so the parent's
    pooled connections still work, and the child prints no warning."""
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-W",
            _FORK_WARNING,
            "-c",
            _RAW_FORK_SCRIPT,
            f"s3://{bucket}/raw",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (proc.returncode, proc.stdout.split(), proc.stderr) == (
        0,
        ["child", "0", "retries", "0", "parent"],
        "",
    )
