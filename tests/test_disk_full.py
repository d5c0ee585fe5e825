"""A download that cannot get its space fails as MetaflowS3InsufficientDiskSpace, naming the
URL, with nothing left behind, and never kills the process with SIGBUS.

Each case downloads into a 20 MiB tmpfs mounted for the test (skipped where the test cannot
mount one) from a fresh Python process, so that a SIGBUS would show as a signal exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from s3fast.limits import MiB

from .conftest import Server

SMALL = 20 * MiB


@pytest.fixture
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 20 MiB tmpfs, mounted for this test and unmounted after it."""
    where = str(tmp_path_factory.mktemp("small-fs"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL},mode=0700", "tmpfs", where],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'no mount'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def _files(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from s3fast import S3, TransferConfig, MetaflowS3InsufficientDiskSpace
    from s3fast._engine import sinks as sinks_module

    how, root, s3root, keys, options = sys.argv[1:6]
    keys, options = json.loads(keys), json.loads(options)
    if options.pop("unallocated", False):  # as on a filesystem that does not preallocate
        sinks_module.PREALLOCATING_FILESYSTEMS = frozenset()
    hog = options.pop("hog", None)
    hogged = []

    def fill(progress):
        # After the first range lands: something else takes every free byte.
        if hog and not hogged and progress.bytes_done:
            hogged.append(0)
            with open(hog, "wb") as f:
                try:
                    while True:
                        f.write(bytes(256 * 1024))
                        f.flush()
                        hogged[0] += 256 * 1024
                except OSError:
                    pass

    def files():
        return sorted(f for d, _, fs in os.walk(root) for f in fs if not f == "hog")

    report = {}
    with S3(tmproot=root, s3root=s3root, config=TransferConfig(**options)) as s3:
        try:
            if how == "get":
                obj = s3.get(keys[0])
                got = [obj]
            else:
                got = s3.get_many(keys, progress=fill)
            report["ok"] = [open(o.path, "rb").read().hex()[:64] for o in got]
            report["sizes"] = [o.size for o in got]
        except MetaflowS3InsufficientDiskSpace as exc:
            report["error"] = type(exc).__name__
            report["message"] = str(exc)
        report["files_after_error"] = files() if "error" in report else None
        report["hogged"] = hogged[0] if hogged else None
    report["files_after_close"] = files()
    print(json.dumps(report))
    """
)


def _run(how: str, root: str, s3root: str, keys: list[str], **options: object) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, how, root, s3root, json.dumps(keys), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert out.returncode >= 0, f"killed by {signal.Signals(-out.returncode).name}"
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_object_bigger_than_the_free_space(
    small_fs: str, seaweed: Server, seaweed_bucket: str
) -> None:
    seaweed.seed(seaweed_bucket, {"big": os.urandom(24 * MiB)})
    report = _run("get", small_fs, f"s3://{seaweed_bucket}", ["big"])
    assert report["error"] == "MetaflowS3InsufficientDiskSpace"
    assert f"s3://{seaweed_bucket}/big" in report["message"]
    assert report["files_after_error"] == []
    assert report["files_after_close"] == []
    assert _files(small_fs) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_get_many_more_than_the_free_space(
    small_fs: str, seaweed: Server, seaweed_bucket: str, processes: int
) -> None:
    keys = [f"k{i}" for i in range(8)]  # 8 x 4 MiB into 20 MiB
    seaweed.seed(seaweed_bucket, {k: os.urandom(4 * MiB) for k in keys})
    report = _run("get_many", small_fs, f"s3://{seaweed_bucket}", keys, processes=processes)
    assert report["error"] == "MetaflowS3InsufficientDiskSpace"
    assert any(f"s3://{seaweed_bucket}/{k}" in report["message"] for k in keys)
    assert not [f for f in report["files_after_error"] if f.endswith(".part")]
    assert report["files_after_close"] == []
    assert _files(small_fs) == []


@pytest.mark.parametrize("unallocated", [False, True], ids=["preallocated", "unallocated"])
def test_the_disk_fills_up_mid_download(
    small_fs: str, seaweed: Server, seaweed_bucket: str, unallocated: bool
) -> None:
    """After the first range lands, another writer takes all the free space. Preallocated
    (tmpfs, ext4, xfs: the space was allocated before the first byte was written): the
    download completes, the other writer gets ENOSPC. Elsewhere (written as it comes): the
    download fails, typed, and removes its file."""
    blob = os.urandom(12 * MiB)
    seaweed.seed(seaweed_bucket, {"obj": blob})
    hog = os.path.join(small_fs, "hog")
    report = _run(
        "get_many",
        small_fs,
        f"s3://{seaweed_bucket}",
        ["obj"],
        range_size=1 * MiB,
        max_concurrency=1,
        unallocated=unallocated,
        hog=hog,
    )
    assert report["hogged"] is not None  # the space ran out during the download
    if unallocated:
        assert report["error"] == "MetaflowS3InsufficientDiskSpace", report
        assert f"s3://{seaweed_bucket}/obj" in report["message"]
        assert report["files_after_error"] == []
    else:
        assert "error" not in report, report
        assert report["sizes"] == [len(blob)]
        assert report["ok"] == [blob.hex()[:64]]
        assert report["hogged"] <= SMALL - len(blob)  # the download's space was kept
    assert report["files_after_close"] == []
    os.unlink(hog)
    assert _files(small_fs) == []


_UNRESERVED = textwrap.dedent(
    """
    import mmap, os, sys
    root = sys.argv[1]
    fd = os.open(os.path.join(root, "mapped"), os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 8 << 20)  # sized, not allocated
    mapped = mmap.mmap(fd, 8 << 20)
    with open(os.path.join(root, "hog"), "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError:
            pass
    mapped[:] = bytes(8 << 20)
    """
)


def test_the_hazard_is_real_here(small_fs: str) -> None:
    """Why s3fast writes temp files with ``pwrite`` and never through a memory map: writing
    through a map of space that was never allocated, on a full filesystem, is SIGBUS (so the
    exits checked above would show one)."""
    out = subprocess.run([sys.executable, "-c", _UNRESERVED, small_fs], capture_output=True)
    assert out.returncode == -signal.SIGBUS
    for name in ("mapped", "hog"):
        os.unlink(os.path.join(small_fs, name))


def test_filesystem_types_are_read_from_mountinfo(small_fs: str) -> None:
    from s3fast._engine.sinks import PREALLOCATING_FILESYSTEMS, filesystem_of

    inside = os.path.join(small_fs, f"d-{uuid.uuid4().hex[:6]}")
    os.mkdir(inside)
    try:
        assert filesystem_of(inside) == "tmpfs"
        assert filesystem_of("/proc/self") == "proc"
        assert "proc" not in PREALLOCATING_FILESYSTEMS and "tmpfs" in PREALLOCATING_FILESYSTEMS
    finally:
        os.rmdir(inside)
