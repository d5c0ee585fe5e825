"""Where bytes land: tmproot order, tmpfs fallback, free-space checks, private dirs, and
cleanup on close, on errors, on KeyboardInterrupt and on cancellation."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

import s3fast.tempdirs
from s3fast import S3, AsyncS3, MetaflowS3InsufficientDiskSpace, TransferConfig
from s3fast.limits import MiB
from s3fast.tempdirs import local_name

from .conftest import open_uploads


@pytest.fixture
def small_tmpfs(tmp_path: pathlib.Path) -> Iterator[str]:
    """An 8 MiB tmpfs mount (needs root, as in CI)."""
    mnt = tmp_path / "small-tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.unit
def test_tmproot_order(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    a, b, c = (str(tmp_path / n) for n in "abc")
    monkeypatch.setenv("METAFLOW_TEMPDIR", c)
    assert s3fast.tempdirs.TempDirs(None)._roots[0].base == c
    monkeypatch.setenv("S3FAST_TMPDIR", b)
    assert s3fast.tempdirs.TempDirs(None)._roots[0].base == b
    assert s3fast.tempdirs.TempDirs(a)._roots[0].base == a
    monkeypatch.delenv("S3FAST_TMPDIR")
    monkeypatch.delenv("METAFLOW_TEMPDIR")
    auto = [r.base for r in s3fast.tempdirs.TempDirs(None)._roots]
    assert auto[-1] == __import__("tempfile").gettempdir()
    if os.access("/dev/shm", os.W_OK):
        assert auto[0] == "/dev/shm"


@pytest.mark.unit
def test_local_names_never_escape() -> None:
    for url in [
        "s3://b/../../etc/passwd",
        "s3://b/a/..",
        "s3://b//abs",
        "s3://b/" + "x" * 1000,
        "s3://b/.",
    ]:
        name = local_name(7, url)
        assert "/" not in name and not name.startswith(".") and len(name) < 120


def _seed(boto: object, bucket: str, sizes: dict[str, int]) -> None:
    for key, size in sizes.items():
        boto.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))  # type: ignore[attr-defined]


def test_tmpfs_falls_back_to_disk(
    bucket: str,
    boto: object,
    small_tmpfs: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _seed(boto, bucket, {"big": 4 * MiB})
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setattr(s3fast.tempdirs, "TMPFS_CANDIDATES", (small_tmpfs,))
    monkeypatch.setattr(s3fast.tempdirs.tempfile, "tempdir", str(disk))
    with S3(s3root=f"s3://{bucket}") as s3:
        obj = s3.get("big")
        assert obj.path is not None and obj.path.startswith(str(disk))
        assert os.listdir(small_tmpfs) == []
    assert os.listdir(disk) == []


def test_explicit_root_too_small_raises_before_writing(
    bucket: str, boto: object, small_tmpfs: str
) -> None:
    _seed(boto, bucket, {"a": 3 * MiB, "b": 3 * MiB, "c": 3 * MiB, "huge": 20 * MiB})
    with S3(
        s3root=f"s3://{bucket}", tmproot=small_tmpfs, config=TransferConfig(max_concurrency=1)
    ) as s3:
        with pytest.raises(MetaflowS3InsufficientDiskSpace, match=f"s3://{bucket}/huge"):
            s3.get("huge")
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)
        with pytest.raises(MetaflowS3InsufficientDiskSpace):
            s3.get_many(["a", "b", "c"])
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)  # what the batch wrote is gone
        assert s3.get("a").size == 3 * MiB  # and the client still works
    assert os.listdir(small_tmpfs) == []


def test_exception_in_with_block_cleans_up(bucket: str, boto: object) -> None:
    _seed(boto, bucket, {"x": 1000})
    with pytest.raises(ZeroDivisionError), S3(s3root=f"s3://{bucket}") as s3:
        path = s3.get("x").path
        assert path and os.path.exists(path)
        1 / 0  # noqa: B018
    assert not os.path.exists(path)


@pytest.mark.asyncio
async def test_task_cancel_leaves_nothing(bucket: str, boto: object, server: object) -> None:
    _seed(boto, bucket, {f"k{i}": 4 * MiB for i in range(40)})
    cfg = TransferConfig(max_concurrency=1, range_size=64 * 1024)  # 2,560 requests in a row
    async with AsyncS3(s3root=f"s3://{bucket}", config=cfg) as s3:
        task = asyncio.ensure_future(s3.get_many([f"k{i}" for i in range(40)]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)
        big = os.urandom(12 * MiB)
        cfg2 = TransferConfig(max_concurrency=1, part_size=5 * MiB, multipart_threshold=5 * MiB)
    async with AsyncS3(s3root=f"s3://{bucket}", config=cfg2) as s3:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await s3.put("mp", big)
        assert open_uploads(boto, bucket) == []
        assert (await s3.get_many(["k0"], in_memory=True))[0].size == 4 * MiB


_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    # A shell starts background jobs with Ctrl-C ignored, and children inherit that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from s3fast import S3, TransferConfig
    bucket, local = sys.argv[1], sys.argv[2]
    cfg = TransferConfig(max_concurrency=1, range_size=64 * 1024, part_size=5 * 2**20,
                         multipart_threshold=5 * 2**20)
    calls = {"get": lambda s3: s3.get_many(["k%d" % i for i in range(20)]),
             "put": lambda s3: s3.put_files([("mp", local)])}
    for name in ("get", "put"):
        print("go", flush=True)
        while True:  # until the interrupt lands inside the call
            inside = False
            try:
                s3 = S3(s3root="s3://" + bucket, config=cfg)
                inside = True
                calls[name](s3)
                inside = False
                s3.close()
            except KeyboardInterrupt:
                if not inside:  # in S3() or close(): the test interrupts again
                    print("missed", flush=True)
                    continue
                print("interrupted", sum(len(os.listdir(d)) for d in s3.tmpdirs), flush=True)
                break
    print("after", len(s3.get("k0").blob), flush=True)
    dirs = s3.tmpdirs
    s3.close()
    print("closed", [os.path.exists(d) for d in dirs], flush=True)
    """
)


def test_ctrl_c_in_sync_call(
    bucket: str, boto: object, server: object, tmp_path: pathlib.Path
) -> None:
    _seed(boto, bucket, {f"k{i}": 2 * MiB for i in range(20)})
    local = tmp_path / "big"
    local.write_bytes(os.urandom(40 * MiB))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_SCRIPT, bucket, str(local)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for _ in range(2):
        line = proc.stdout.readline()
        assert line.strip() == "go", (line, proc.stderr.read() if proc.stderr else "")
        for _attempt in range(20):  # an interrupt that lands between calls is sent again
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            got = proc.stdout.readline().strip()
            if got != "missed":
                break
        lines.append(got)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert lines == ["interrupted 0", "interrupted 0"], (lines, err)  # no files left
    assert out.splitlines() == ["after 2097152", "closed [False]"]
    assert open_uploads(boto, bucket) == []
