"""The multi-process mode (``processes=2``) keeps the single-process semantics: the same results
in input order, byte for byte, the same errors, temp files in the client's dirs and cleaned up,
cancellation reaching every worker, and no worker left running after close."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import s3fast._engine.fanout
from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3InvalidRange,
    MetaflowS3NotFound,
    MetaflowS3TransferError,
    Progress,
    RangeInfo,
    S3GetObject,
    S3PutObject,
    TransferConfig,
)
from s3fast._engine.fanout import MIN_BATCH, assign
from s3fast._engine.session import close_idle_clients
from s3fast.limits import MiB

from ._internals import engine_of, loop_slots, restart_workers, worker_pids
from .conftest import Server, open_uploads
from .test_api import AWKWARD, SMALL_PARTS, sha
from .test_metaflow_conformance import _fields

TWO = dataclasses.replace(SMALL_PARTS, processes=2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running; workers are reaped by close()
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def seeded(bucket: str, boto: object) -> str:
    for key, data in AWKWARD.items():
        boto.put_object(Bucket=bucket, Key=f"root/{key}", Body=data)  # type: ignore[attr-defined]
    return f"s3://{bucket}/root"


@pytest.fixture
def seaweed_seeded(seaweed_bucket: str, seaweed: Server) -> str:
    """AWKWARD on SeaweedFS only, for checks that are about processes, not servers. Put one
    at a time: SeaweedFS can lose the object "dir" when "dir/child" is created at once."""
    seaweed.seed(seaweed_bucket, {f"root/{key}": data for key, data in AWKWARD.items()})
    return f"s3://{seaweed_bucket}/root"


@pytest.mark.unit
def test_assign() -> None:
    assert assign(5, 2) == [[0, 2, 4], [1, 3]]
    parts = assign(6, 2, [100 * MiB, 1, 1, 1, 1, 100 * MiB])
    assert sorted(i for p in parts for i in p) == list(range(6))
    assert [0 in p for p in parts] != [5 in p for p in parts]  # the two big ones split
    assert all(p == sorted(p) for p in parts)


def _snapshot(s3: S3, keys: list[object], in_memory: bool) -> list[object]:
    objs = s3.get_many(keys, return_missing=True, in_memory=in_memory)
    out: list[object] = []
    for o in objs:
        local = None
        if o.path is not None:
            assert os.path.dirname(o.path) in s3.tmpdirs
            assert stat.S_IMODE(os.stat(o.path).st_mode) == 0o600
            local = os.path.basename(o.path).split("-", 1)[1]  # the name after its number
        out.append(
            (
                o.key,
                o.url,
                o.exists,
                o.downloaded,
                o.size,
                o.range_info,
                o.metadata,
                o.content_type,
                o.etag,
                sha(o.blob) if o.exists else None,
                o.path is None,
                local,
            )
        )
    return out


@pytest.mark.parametrize("in_memory", [False, True])
def test_get_many_same_as_one_process(seeded: str, in_memory: bool) -> None:
    n = len(AWKWARD["big.bin"])
    keys: list[object] = [
        *AWKWARD,
        S3GetObject("big.bin", 1000, 3 * MiB),
        S3GetObject("big.bin", None, -77),
        S3GetObject("big.bin", n - 5, 1000),
        S3GetObject("plain.txt", 6, 100),
        "nope",
        "plain.txt",  # twice
    ]
    assert len(keys) >= MIN_BATCH
    with S3(s3root=seeded, config=SMALL_PARTS) as s3:
        want = _snapshot(s3, keys, in_memory)
    with S3(s3root=seeded, config=TWO) as s3:
        got = _snapshot(s3, keys, in_memory)
        # worker processes (files; small bodies into memory) or loops in threads (big bodies)
        pids = worker_pids(s3)
        threads = [slot.thread for slot in loop_slots(s3)]
        assert len(pids) + len(threads) == 2
        assert all(map(_alive, pids)) and all(t.is_alive() for t in threads)
        assert _snapshot(s3, keys, in_memory) == want  # the pool is reused
        assert worker_pids(s3) == pids
        assert [slot.thread for slot in loop_slots(s3)] == threads
        dirs = s3.tmpdirs
    assert got == want
    assert not any(map(_alive, pids)) and not any(t.is_alive() for t in threads)
    assert not any(map(os.path.exists, dirs))
    assert want[-2][2] is False and want[len(AWKWARD)][5] == RangeInfo(n, 1000, 3 * MiB)


def test_recursive_calls_same_as_one_process(seeded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_recursive / get_all / get_many with every option, every field but the local path
    (test_metaflow_conformance holds one process to metaflow.S3's results)."""
    monkeypatch.setattr(engine_of(s3fast).fanout, "MIN_BATCH", 1)  # fan out even tiny batches

    def run(config: TransferConfig) -> list[object]:
        out: list[object] = []
        with S3(s3root=seeded, config=config) as s3:
            for return_info in (True, False):
                for in_memory in (False, True):
                    kw = {"return_info": return_info, "in_memory": in_memory}
                    for objs in (
                        s3.get_recursive(["dir", "with space", "nothing"], **kw),
                        s3.get_all(**kw),
                        s3.get_many(["dir/child", "nope"], return_missing=True, **kw),
                    ):
                        out += [(_fields(o), o.path is None) for o in objs]
            assert len(worker_pids(s3)) == (2 if config.processes == 2 else 0)
        return out

    assert run(TWO) == run(SMALL_PARTS)


def test_listings_same_as_one_process(seeded: str) -> None:
    """Listings of many prefixes are parsed in the workers: list_paths, list_recursive and
    delete_recursive give what one process gives, in the same order, with the same errors."""
    prefixes = ["", "dir", "dir/", "d", "with space", "ünïcödé", "hash#1", "quote'\"", "nothing"]
    assert len(prefixes) >= MIN_BATCH

    def run(config: TransferConfig) -> list[object]:
        with S3(s3root=seeded, config=config) as s3:
            out: list[object] = [
                [(o.url, o.key, o.prefix, o.exists, o.size) for o in objs]
                for objs in (s3.list_paths(prefixes), s3.list_recursive(prefixes))
            ]
            assert len(worker_pids(s3)) == (2 if config.processes == 2 else 0)
        with S3(config=config) as s3:
            urls = [f"{seeded}/{p}" for p in prefixes[1:]]
            with pytest.raises(MetaflowS3NotFound) as err:
                s3.list_recursive([*urls, "s3://no-such-bucket-s3fast/x"])
            out.append((type(err.value), str(err.value).split("\n")[0], err.value.url))
        return out

    one, two = run(SMALL_PARTS), run(TWO)
    assert one == two
    assert len(one[1]) > len(AWKWARD)  # prefixes overlap: "", "d", "dir" and "dir/"

    scratch = [f"{seeded}-del{i}/k{j}" for i in range(MIN_BATCH) for j in range(3)]
    with S3(config=TWO) as s3:
        s3.put_many([(url, b"x") for url in scratch])
        deleted = s3.delete_recursive([f"{seeded}-del{i}" for i in range(MIN_BATCH)])
        assert sorted(deleted) == sorted(scratch) and len(worker_pids(s3)) == 2
        assert s3.list_recursive([f"{seeded}-del{i}" for i in range(MIN_BATCH)]) == []


@pytest.mark.parametrize("in_memory", [False, True])
def test_workers_report_progress_as_they_go(
    seaweed_bucket: str, tmp_path: pathlib.Path, in_memory: bool
) -> None:
    """With worker processes, progress comes per range or part and per object as they
    complete (not once at the end), adding up to the totals."""
    size = 100_000 if in_memory else MiB  # small bodies in memory go to processes, not loops
    data = {f"w{int(in_memory)}/{i}": os.urandom(size + 1000 * i) for i in range(10)}
    pairs = []
    for key, body in data.items():
        path = tmp_path / key.replace("/", "_")
        path.write_bytes(body)
        pairs.append((key, str(path)))
    total = sum(map(len, data.values()))

    def check(seen: list[Progress], total_bytes: int | None) -> None:
        assert seen[0] == Progress(0, 10, 0, total_bytes)
        assert seen[-1] == Progress(10, 10, total, total_bytes)
        assert [p.objects_done for p in seen] == sorted(p.objects_done for p in seen)
        assert [p.bytes_done for p in seen] == sorted(p.bytes_done for p in seen)
        assert len({p.objects_done for p in seen}) == 11  # each object, as it completes
        assert len({p.bytes_done for p in seen}) >= 4  # bytes as they move, not all at the end

    with S3(s3root=f"s3://{seaweed_bucket}", config=TWO) as s3:
        seen: list[Progress] = []
        s3.put_files(pairs, progress=seen.append)
        assert len(worker_pids(s3)) == 2
        check(seen, total)
        seen = []
        objs = s3.get_many(list(data), in_memory=in_memory, progress=seen.append)
        assert [o.blob for o in objs] == list(data.values())
        assert loop_slots(s3) == []  # all of it went through the worker processes
        check(seen, None)


def test_errors_are_typed_and_leave_nothing(seeded: str) -> None:
    keys = list(AWKWARD)
    with S3(s3root=seeded, config=TWO) as s3:
        with pytest.raises(MetaflowS3NotFound, match=f"{seeded}/nope") as err:
            s3.get_many([*keys, "nope"])
        assert isinstance(err.value, FileNotFoundError) and err.value.url == f"{seeded}/nope"
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)
        with pytest.raises(MetaflowS3InvalidRange, match=r"plain\.txt"):
            s3.get_many([*keys, S3GetObject("plain.txt", 100, 10)], in_memory=True)
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)
        objs = s3.get_many(keys)  # still works, same workers
        assert [sha(o.blob) for o in objs] == [sha(v) for v in AWKWARD.values()]


def test_put_files_then_get_back(bucket: str, tmp_path: pathlib.Path) -> None:
    files = {}
    for i in range(10):
        data = os.urandom([0, 10, 6 * MiB + 1, 1000][i % 4])
        p = tmp_path / f"f{i}"
        p.write_bytes(data)
        files[f"up/{i}"] = (str(p), data)
    root = f"s3://{bucket}"
    with S3(s3root=root, config=TWO) as s3:
        pairs: list[object] = [(k, p) for k, (p, _) in files.items()]
        pairs[3] = S3PutObject("up/3", path=files["up/3"][0], metadata={"a": 1}, content_type="x/y")
        res = s3.put_files(pairs)
        assert res == [(k, f"{root}/{k}") for k in files]
        assert len(worker_pids(s3)) == 2
        assert s3.put_files(pairs, overwrite=False) == []  # all there already
        info = s3.info("up/3")
        assert info.metadata == {"a": 1} and info.content_type == "x/y"
        got = s3.get_recursive(["up"], in_memory=True)
        assert {o.key: sha(o.blob) for o in got} == {
            k.split("/")[1]: sha(d) for k, (_, d) in files.items()
        }
        everything = s3.get_all(return_info=True)
        assert sorted(o.key for o in everything) == sorted(files)
        assert all(o.path and os.path.dirname(o.path) in s3.tmpdirs for o in everything)
        with pytest.raises(MetaflowS3NotFound, match="Local file not found"):
            s3.put_files([*pairs[1:], ("x", str(tmp_path / "missing"))])


@pytest.mark.unit
def test_processes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TransferConfig.from_env().processes is None
    monkeypatch.setenv("S3FAST_PROCESSES", "3")
    assert TransferConfig.from_env().processes == 3
    with pytest.raises(ValueError):
        TransferConfig(processes=0)


@pytest.mark.asyncio
async def test_async_pool_lifecycle(seaweed_seeded: str) -> None:
    seeded = seaweed_seeded
    async with AsyncS3(s3root=seeded) as s3:
        await s3.put_many([(f"c/{i}", os.urandom(4 * MiB)) for i in range(12)])
    cfg = TransferConfig(processes=2, max_concurrency=2, range_size=64 * 1024)
    async with AsyncS3(s3root=seeded, config=cfg) as s3:
        assert (
            await s3.get_many(["plain.txt"], in_memory=True) and worker_pids(s3) == []
        )  # small: in-process
        objs = await s3.get_many(list(AWKWARD))
        assert [sha(o.blob) for o in objs] == [sha(v) for v in AWKWARD.values()]
        pids = worker_pids(s3)
        assert len(pids) == 2
        # a cancelled batch is cleaned up everywhere; the pool keeps working
        kept = [sorted(os.listdir(d)) for d in s3.tmpdirs]  # the files of the call above
        task = asyncio.ensure_future(s3.get_many([f"c/{i}" for i in range(12)]))
        await asyncio.sleep(0.1)  # 384 requests in a row for each worker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [sorted(os.listdir(d)) for d in s3.tmpdirs] == kept
        assert worker_pids(s3) == pids
        assert len(await s3.get_many(list(AWKWARD))) == len(AWKWARD)
    assert not any(map(_alive, pids))
    assert worker_pids(s3) == []


@pytest.mark.asyncio
async def test_a_dead_worker_fails_the_batch_and_the_pool_restarts(
    seaweed_bucket: str, seaweed: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_of(s3fast).fanout, "MIN_BATCH", 2)
    keys = list(seaweed.seed(seaweed_bucket, {f"k{i}": os.urandom(8 * MiB) for i in range(8)}))
    cfg = TransferConfig(processes=2, max_concurrency=2, range_size=64 * 1024)
    async with AsyncS3(s3root=f"s3://{seaweed_bucket}", config=cfg) as s3:
        await s3.get_many(keys[:2])
        pids = worker_pids(s3)
        moving = asyncio.Event()
        task = asyncio.ensure_future(
            s3.get_many(keys, progress=lambda p: p.bytes_done and moving.set())
        )
        await moving.wait()  # the workers have the batch: 512 requests in a row for each
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(MetaflowS3TransferError, match="exited unexpectedly"):
            await task
        objs = await s3.get_many(keys[:2])  # a fresh pool
        assert [o.size for o in objs] == [8 * MiB] * 2
        assert len(worker_pids(s3)) == 2 and not set(worker_pids(s3)) & set(pids)
        dirs = s3.tmpdirs
    assert not any(map(_alive, pids)) and not any(map(os.path.exists, dirs))


@pytest.mark.asyncio
async def test_a_worker_that_dies_before_the_batch_is_registered_fails_it(
    seaweed_bucket: str, seaweed: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies after the batch found the pool running but before the batch was
    registered (while the credentials are fetched): the batch fails at once, not hangs."""
    monkeypatch.setattr(engine_of(s3fast).fanout, "MIN_BATCH", 2)
    keys = list(seaweed.seed(seaweed_bucket, {f"k{i}": os.urandom(1 * MiB) for i in range(4)}))
    cfg = TransferConfig(processes=2, max_concurrency=2)
    async with AsyncS3(s3root=f"s3://{seaweed_bucket}", config=cfg) as s3:
        await s3.get_many(keys[:2])
        pids = worker_pids(s3)
        engine = engine_of(s3)
        fetch = engine.frozen_credentials

        async def dying_meanwhile() -> Any:
            os.kill(pids[0], signal.SIGKILL)
            pump = s3._procs._procs[0].pump
            await asyncio.wait_for(asyncio.shield(pump), 30)  # it has seen the worker go
            return await fetch()

        monkeypatch.setattr(engine, "frozen_credentials", dying_meanwhile)
        async with asyncio.timeout(60):
            with pytest.raises(MetaflowS3TransferError, match="exited unexpectedly"):
                await s3.get_many(keys)
        monkeypatch.setattr(engine, "frozen_credentials", fetch)
        assert [o.size for o in await s3.get_many(keys)] == [1 * MiB] * 4  # a fresh pool
        assert not set(worker_pids(s3)) & set(pids)


_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    # A shell starts background jobs with Ctrl-C ignored, and children inherit that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from s3fast import S3, TransferConfig
    bucket, src = sys.argv[1], sys.argv[2]
    cfg = TransferConfig(processes=2, max_concurrency=2, range_size=64 * 1024,
                         part_size=5 * 2**20, multipart_threshold=5 * 2**20)
    s3 = S3(s3root="s3://" + bucket, config=cfg)
    keys = ["k%d" % i for i in range(12)]
    files = [("up/%d" % i, os.path.join(src, str(i))) for i in range(8)]
    for obj in s3.get_many(keys[:8]):  # starts the workers
        os.unlink(obj.path)
    print("pids", *s3._aio._procs.pids, flush=True)
    def get():  # the files of a call that completed are removed: count only what is left
        objs = s3.get_many(keys)
        try:
            for obj in objs:
                os.unlink(obj.path)
        except KeyboardInterrupt:  # Ctrl-C after the call returned: its files are ours
            for obj in objs:
                if os.path.exists(obj.path):
                    os.unlink(obj.path)
            raise

    for call in (get, lambda: s3.put_files(files)):
        print("go", flush=True)
        try:
            while True:
                call()
        except KeyboardInterrupt:
            print("interrupted", sum(len(os.listdir(d)) for d in s3.tmpdirs), flush=True)
    print("after", len(s3.get_many(keys, in_memory=True)), *s3._aio._procs.pids, flush=True)
    s3.close()
    print("closed", flush=True)
    """
)


def test_ctrl_c_reaches_every_worker(
    seaweed_bucket: str, seaweed: Server, tmp_path: pathlib.Path
) -> None:
    bucket, boto = seaweed_bucket, seaweed.client()
    for i in range(12):
        boto.put_object(Bucket=bucket, Key=f"k{i}", Body=os.urandom(2 * MiB))  # type: ignore[attr-defined]
    for i in range(8):
        (tmp_path / str(i)).write_bytes(os.urandom(11 * MiB))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_SCRIPT, bucket, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline().split()
        assert first[:1] == ["pids"], (first, proc.stderr.read() if proc.stderr else "")
        pids = [int(p) for p in first[1:]]
        lines = []
        for _ in range(2):
            assert proc.stdout.readline().strip() == "go"
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGINT)  # to its process group, as a terminal does
            lines.append(proc.stdout.readline().strip())
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert lines == ["interrupted 0", "interrupted 0"], (lines, err)
    assert out.splitlines() == [f"after 12 {pids[0]} {pids[1]}", "closed"], err
    assert not any(map(_alive, pids))
    assert open_uploads(boto, bucket) == []
    boto.close()  # type: ignore[attr-defined]


def test_workers_get_the_parents_credentials(
    seaweed_seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers sign with the credentials the parent resolved, not their environment."""
    with S3(s3root=seaweed_seeded, config=TWO) as s3:
        s3.get_many(list(AWKWARD)[:MIN_BATCH])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown")
        restart_workers(s3)  # restart the workers, with this environment
        for in_memory in (False, True):  # worker processes; event loops in threads
            objs = s3.get_many(list(AWKWARD), in_memory=in_memory)
            assert [hashlib.sha256(o.blob or b"").hexdigest() for o in objs] == [
                sha(v) for v in AWKWARD.values()
            ]


_DIE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from s3fast import S3, TransferConfig
    s3 = S3(s3root=sys.argv[1], tmproot=sys.argv[2], config=TransferConfig(processes=2))
    s3.get_many(sys.argv[3:])
    print(*s3._aio._procs.pids, flush=True)
    os._exit(0)  # no close, no finalizers: the workers must notice and go
    """
)


def test_workers_exit_with_their_parent(seaweed_bucket: str, tmp_path: pathlib.Path) -> None:
    seeded = f"s3://{seaweed_bucket}/root"
    with S3(s3root=seeded) as s3:
        s3.put_many(list(AWKWARD.items()))
    done = subprocess.run(
        [sys.executable, "-c", _DIE_SCRIPT, seeded, str(tmp_path), *list(AWKWARD)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2, (done.returncode, done.stdout, done.stderr[-3000:])
    deadline = time.monotonic() + 15
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, pids)), [_where(pid) for pid in pids if _alive(pid)]


def _where(pid: int) -> str:
    """What a process that should have gone is doing: its state, its kernel wait channel and
    its threads' names (for the assertion's message)."""
    seen = []
    for name in ("stat", "wchan"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                text = f.read().strip()
            seen.append("state " + text.rsplit(")", 1)[1].split()[0] if name == "stat" else text)
        except (OSError, IndexError) as exc:
            seen.append(repr(exc))
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                seen.append(f"thread {tid}: {f.read().strip()}")
    return f"{pid}: " + " | ".join(seen)


def test_no_fds_left_after_close(seaweed_bucket: str, seaweed: object) -> None:
    """(SeaweedFS only: moto's server runs in this process, with sockets of its own.)"""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    seeded = f"s3://{seaweed_bucket}/root"
    with S3(s3root=seeded) as s3:
        s3.put_many(list(AWKWARD.items()))

    with S3(s3root=seeded, config=TWO) as s3:
        s3.info("plain.txt")  # the bridge loop and its executor exist before we count
    close_idle_clients()  # (the keep-alive connections that contexts share)
    before = fds()
    with S3(s3root=seeded, config=TWO) as s3:
        s3.get_many(list(AWKWARD), in_memory=True)  # event loops in threads
        s3.get_many(list(AWKWARD))  # worker processes
        assert fds() > before
    close_idle_clients()
    assert fds() <= before


# --- into memory: event loops in threads of this process -------------------------------------


@pytest.mark.asyncio
async def test_loops_cancel_and_fail_together(seaweed_bucket: str, seaweed: Server) -> None:
    """A cancelled in-memory batch stops on every loop before the call returns; the first
    error (a missing key) cancels the other loops' work and is raised, typed, with its URL;
    the loops keep working afterwards, and stop with the client."""
    seaweed.seed(seaweed_bucket, {f"m/{i}": os.urandom(3 * MiB + i) for i in range(12)})
    keys = [f"m/{i}" for i in range(12)]
    cfg = TransferConfig(processes=2, max_concurrency=2, range_size=64 * 1024)
    async with AsyncS3(s3root=f"s3://{seaweed_bucket}", config=cfg) as s3:
        objs = await s3.get_many(keys, in_memory=True)
        assert [o.size for o in objs] == [3 * MiB + i for i in range(12)]
        assert worker_pids(s3) == [] and len(loop_slots(s3)) == 2
        loops = [slot.loop for slot in loop_slots(s3)]

        def busy() -> int:  # tasks still running on the loops
            return sum(len(asyncio.all_tasks(loop)) for loop in loops)

        task = asyncio.ensure_future(s3.get_many(keys, in_memory=True))
        await asyncio.sleep(0.1)  # 48 requests in a row on each loop: mid-batch
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert busy() == 0
        with pytest.raises(MetaflowS3NotFound, match=f"s3://{seaweed_bucket}/m/nope") as err:
            await s3.get_many([*keys, "m/nope"], in_memory=True)
        assert err.value.url == f"s3://{seaweed_bucket}/m/nope"
        assert busy() == 0
        got = await s3.get_many([*keys, "m/nope"], in_memory=True, return_missing=True)
        assert [o.exists for o in got] == [True] * 12 + [False]
        threads = [slot.thread for slot in loop_slots(s3)]
    assert not any(t.is_alive() for t in threads) and all(loop.is_closed() for loop in loops)


def test_loops_report_progress_on_the_callers_thread(seaweed_bucket: str, seaweed: Server) -> None:
    data = seaweed.seed(seaweed_bucket, {f"p/{i}": os.urandom(2 * MiB + i) for i in range(10)})
    seen: list[tuple[Progress, str]] = []
    with S3(s3root=f"s3://{seaweed_bucket}", config=TWO) as s3:
        objs = s3.get_many(
            list(data),
            in_memory=True,
            progress=lambda p: seen.append((p, threading.current_thread().name)),
        )
        assert [o.blob for o in objs] == list(data.values())
        assert len(loop_slots(s3)) == 2
    assert seen[-1][0] == Progress(10, 10, sum(map(len, data.values())), None)
    assert {name for _, name in seen} == {"s3fast-loop"}  # the sync facade's loop, not s3fast-io-N
    done = [p.bytes_done for p, _ in seen]
    assert done == sorted(done) and len(seen) > 20  # per range, as they complete


def test_in_memory_batches_go_where_their_bodies_are_cheapest(
    seaweed_bucket: str, seaweed: Server
) -> None:
    """Into memory, big bodies go to event loops in threads (the copy runs outside the GIL),
    small ones to worker processes (Python per request is the work): by the sizes a listing
    or the ranges give, else by the median of a few HEADs."""
    root = f"s3://{seaweed_bucket}"
    seaweed.seed(seaweed_bucket, {f"big/{i}": os.urandom(1 * MiB) for i in range(8)})
    seaweed.seed(seaweed_bucket, {f"small/{i}": os.urandom(1000) for i in range(8)})
    with S3(s3root=root, config=TWO) as s3:
        s3.get_many([f"small/{i}" for i in range(8)], in_memory=True)
        assert len(worker_pids(s3)) == 2 and loop_slots(s3) == []
    with S3(s3root=root, config=TWO) as s3:
        s3.get_many([f"big/{i}" for i in range(8)], in_memory=True)
        assert worker_pids(s3) == [] and len(loop_slots(s3)) == 2
    with S3(s3root=root, config=TWO) as s3:
        s3.get_many([S3GetObject(f"big/{i}", 0, 100) for i in range(8)], in_memory=True)
        assert len(worker_pids(s3)) == 2 and loop_slots(s3) == []
        objs = s3.get_recursive(["big"], in_memory=True)  # sizes from the listing
        assert len(loop_slots(s3)) == 2 and all(o.size == MiB for o in objs)
