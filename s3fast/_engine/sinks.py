"""Sinks: where the bytes of one download go.

A sink is one writable buffer the size of the download: a ``bytes`` written in place
(:func:`writable_bytes`) or a ``bytearray`` (:class:`MemorySink`), or a memory-mapped or
``pwrite``-written temp file (:class:`FileSink`). Response bodies are received (or copied, on
the botocore transport) straight into it. Every sink satisfies :class:`Sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import re
import sys
import threading
from typing import Protocol

from ..errors import MetaflowS3TransferError
from ..tempdirs import TempDirs


class Sink(Protocol):
    """Where the bytes of one download go: :meth:`open` with the download's size, then
    :meth:`view` of each range to receive into, :meth:`settled` when a range is complete (a
    future to await, or None), and :meth:`commit` (``(path, None)`` or ``(None, bytes)``) or
    :meth:`discard` at the end."""

    async def open(self, size: int) -> None: ...

    def view(self, offset: int, length: int) -> memoryview: ...

    def settled(self, offset: int, length: int) -> asyncio.Future[None] | None: ...

    async def commit(self) -> tuple[str | None, bytes | None]: ...

    async def discard(self) -> None: ...


KILL_SWITCH = "S3FAST_NO_CTYPES"  # set (to anything but 0/false/no/off): never use ctypes
HUGE_PAGES = "S3FAST_HUGE_PAGES"  # 0/false/no/off: no huge-page advice for in-memory GETs


def writable_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``size`` zero bytes and a writable view of its storage, so a body
    can be received straight into the object handed to the caller, without a final copy;
    None where that is not available (the caller fills a ``bytearray`` and copies it).

    The one place s3fast writes into a ``bytes`` through ctypes. ``bytes(n)`` is allocated
    with calloc (zero pages, mapped lazily), unlike ``bytearray(n)`` which is zero-filled up
    front. Writing into a ``bytes`` is safe only while no one else holds it (it is not hashed
    or shared until the download completes), and only for objects too large for CPython's
    shared single-byte cache; CPython only, checked once, on first use. ``S3FAST_NO_CTYPES=1``
    turns it off (a plain copy instead).
    """
    if size < 4096 or _killed() or not _bytes_writable():
        return None
    blob = bytes(size)
    start = id(blob) + _BYTES_OFFSET
    _huge_pages(start, size)
    array = (ctypes.c_ubyte * size).from_address(start)
    return blob, memoryview(array).cast("B")


def _huge_pages(address: int, size: int) -> None:
    """Ask Linux for transparent huge pages (``MADV_HUGEPAGE``) for the whole huge pages
    inside ``[address, address + size)``, before anything is written there: a large new
    ``bytes`` is usually fresh memory from ``mmap``, and filling it page by page costs one
    fault per 4 KiB (an eighth of the client's CPU on a GET into memory, measured); huge pages
    take one per 2 MiB. Where malloc served it from its heap instead, the advice stays on that
    part of the heap (as with THP set to ``always``). Nothing happens where the kernel has no
    THP or where it is set to ``never``, or with ``S3FAST_HUGE_PAGES=0``: in a VM whose host
    takes back the guest's free memory (free page reporting), a process's first batch
    pays the host's faults on fresh huge pages (see docs/settings.md)."""
    if os.environ.get(HUGE_PAGES, "").strip().lower() in ("0", "false", "no", "off"):
        return
    huge = _huge_page_size()
    if not huge or size < 2 * huge:
        return
    lo = (address + huge - 1) & ~(huge - 1)
    hi = (address + size) & ~(huge - 1)
    if hi > lo:
        _madvise(lo, hi - lo, mmap.MADV_HUGEPAGE)


@functools.cache
def _huge_page_size() -> int:
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _madvise(address: int, length: int, advice: int) -> None:
    try:
        _libc().madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), advice)
    except (OSError, AttributeError):  # advice only: nothing changes without it
        pass


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _killed() -> bool:
    value = os.environ.get(KILL_SWITCH, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


@functools.cache
def _bytes_writable() -> bool:
    if sys.implementation.name != "cpython":
        return False
    try:
        probe = bytes(4096)
        array = (ctypes.c_ubyte * 4096).from_address(id(probe) + _BYTES_OFFSET)
        memoryview(array).cast("B")[:4] = b"s3ft"
        return probe[:4] == b"s3ft" and probe[4:] == bytes(4092)
    except Exception:
        return False


_BYTES_OFFSET = sys.getsizeof(b"") - 1  # where a bytes object's data starts (CPython)


class MemorySink:
    def __init__(self) -> None:
        self.buf: bytearray | memoryview = bytearray()
        self.blob: bytes | None = None

    async def open(self, size: int) -> None:
        direct = writable_bytes(size)
        if direct is None:
            self.buf = bytearray(size)
        else:
            self.blob, self.buf = direct

    def view(self, offset: int, length: int) -> memoryview:
        return memoryview(self.buf)[offset : offset + length]

    def settled(self, offset: int, length: int) -> None:
        return None

    async def commit(self) -> tuple[str | None, bytes | None]:
        blob = self.blob if self.blob is not None else bytes(self.buf)
        self.buf, self.blob = bytearray(), None
        return None, blob

    async def discard(self) -> None:
        self.buf, self.blob = bytearray(), None


# Filesystems where a successful ``posix_fallocate`` allocates every block for good, so that
# writing through a memory map of the file can never find the disk full (which would be
# SIGBUS, not an error): tmpfs reserves its pages, ext4/xfs allocate real (unwritten)
# extents, ext2/ext3 get glibc's emulation, which writes every block; overlay (containers'
# file systems) passes it to its upper layer, which Docker and containerd keep on ext4 or xfs.
# The blocks are checked after the call too (``st_blocks``). Elsewhere (copy-on-write
# filesystems such as btrfs or ZFS, where an overwrite needs new blocks; network and FUSE
# filesystems) a download is written with ``pwrite``, which reports a full disk as ENOSPC.
MMAP_FILESYSTEMS = frozenset({"tmpfs", "ext2", "ext3", "ext4", "xfs", "overlay"})


SPARE_BUFFERS = 4  # unmapped: range buffers a download keeps for reuse


@functools.lru_cache(maxsize=64)
def filesystem_of(directory: str) -> str | None:
    """The type of the filesystem ``directory`` is on (from ``/proc/self/mountinfo``), or
    None where that cannot be told."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(directory)
    best, kind = "", None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mounts is on top
            best, kind = point, rest.split()[0]
    return kind


def _can_map(directory: str) -> bool:
    return hasattr(os, "posix_fallocate") and filesystem_of(directory) in MMAP_FILESYSTEMS


class FileSink:
    """A private temp file (``.part`` until complete, then renamed). Removed unless
    committed. A download that cannot get its space fails with ENOSPC (an
    ``MetaflowS3InsufficientDiskSpace``), never with SIGBUS:

    - where the filesystem really allocates what ``posix_fallocate`` asks for
      (:data:`MMAP_FILESYSTEMS`), the file's blocks are allocated up front (a full disk fails
      before any byte is written) and the file is mapped into memory, so bodies land in the
      page cache with one copy;
    - elsewhere, each range is received into a buffer of its own and written with ``pwrite``
      when complete (one more copy; a full disk fails that write)."""

    def __init__(self, temp_dirs: TempDirs, url: str, tag: str = "") -> None:
        self.temp_dirs = temp_dirs
        self.url = url
        self.tag = tag
        self.fd: int | None = None
        self.map: mmap.mmap | None = None
        self.path: str | None = None
        self.token: int | None = None
        self.size = 0
        self.buffers: dict[int, bytearray] = {}  # unmapped: offset -> a range in flight
        self.lock = threading.Lock()  # unmapped: ``fd`` between the loop and the writes
        self.spare: list[bytearray] = []  # unmapped: written ranges' buffers, for reuse

    async def open(self, size: int) -> None:
        directory, self.token = self.temp_dirs.reserve(size, self.url)
        self.size = size
        self.path = self.temp_dirs.new_path(directory, self.url, self.tag)
        loop = asyncio.get_running_loop()
        part = self.path + ".part"
        making = loop.run_in_executor(None, self._create, part, size)
        try:
            self.fd, self.map = await asyncio.shield(making)
        except asyncio.CancelledError:
            # The thread still makes the file (a moment): wait for it and remove it, so that
            # nothing is left once the cancelled call returns (if cancelled again meanwhile,
            # it is removed when made).
            try:
                await asyncio.wait([making])
            finally:
                if making.done():
                    _drop_made(making, part)
                else:
                    making.add_done_callback(lambda done: _drop_made(done, part))
            raise

    @staticmethod
    def _create(part: str, size: int) -> tuple[int, mmap.mmap | None]:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if not size or not _can_map(os.path.dirname(part)):
                return fd, None
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise  # ENOSPC, EDQUOT: no room, nothing written
                return fd, None  # not supported after all: written with pwrite
            if os.fstat(fd).st_blocks * 512 < size:
                return fd, None  # reported, not allocated (compressed zeros, say): pwrite
            return fd, mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise

    def view(self, offset: int, length: int) -> memoryview:
        if not length:
            return memoryview(bytearray())
        if self.map is not None:
            return memoryview(self.map)[offset : offset + length]
        for start, buf in self.buffers.items():  # a resumed range: the rest of its buffer
            if start <= offset and offset + length <= start + len(buf):
                return memoryview(buf)[offset - start : offset - start + length]
        spare = next((i for i, b in enumerate(self.spare) if len(b) == length), None)
        buf = self.spare.pop(spare) if spare is not None else bytearray(length)
        self.buffers[offset] = buf
        return memoryview(buf)

    def settled(self, offset: int, length: int) -> asyncio.Future[None] | None:
        """Bytes ``offset..offset+length`` are complete. Mapped: drop them from this
        process's mapping (they stay in the file), so resident memory is bounded by what is
        in flight, not by what was downloaded. Unmapped: a future for writing them to the
        file on a thread (ENOSPC raises there), which the caller awaits."""
        if not length:
            return None
        if self.map is None:
            buf = self.buffers.pop(offset)
            assert len(buf) == length
            writing = asyncio.get_running_loop().run_in_executor(None, self._write, buf, offset)
            writing.add_done_callback(lambda done: self._spare(done, buf))
            return writing
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        end = offset + length
        if end < self.size:
            end = end // page * page
        if end > start:
            self.map.madvise(mmap.MADV_DONTNEED, start, min(end, self.size) - start)
        return None

    def _spare(self, written: asyncio.Future[None], buf: bytearray) -> None:
        """A written range's buffer, kept for the next range (its pages already faulted in);
        not one whose write was cancelled (its thread may still be reading it)."""
        if written.cancelled() or written.exception() is not None:
            return
        if len(self.spare) < SPARE_BUFFERS and self.fd is not None:
            self.spare.append(buf)

    def _write(self, buf: bytearray, offset: int) -> None:
        """On a thread: ``buf`` into the file at ``offset``, through a descriptor of its own
        (a discard may close the sink's meanwhile; a write it no longer wants is skipped)."""
        with self.lock:
            if self.fd is None:
                return
            fd = os.dup(self.fd)
        try:
            with memoryview(buf) as view:
                done = 0
                while done < len(buf):
                    done += os.pwrite(fd, view[done:], offset + done)
        finally:
            os.close(fd)

    def _close(self) -> None:
        self.buffers.clear()
        self.spare.clear()
        mapped, self.map = self.map, None
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a view is still alive; the map closes when it is collected
                pass
        with self.lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    async def commit(self) -> tuple[str | None, bytes | None]:
        assert self.path is not None
        if self.map is None and self.fd is not None and self.size:
            # Unmapped: every range was written; a short file means one was not.
            if os.fstat(self.fd).st_size != self.size:
                raise MetaflowS3TransferError(f"{self.url}: incomplete local file", self.url)
        self._close()
        await asyncio.get_running_loop().run_in_executor(
            None, os.rename, self.path + ".part", self.path
        )
        self._release()
        return self.path, None

    def _release(self) -> None:
        if self.token is not None:
            self.temp_dirs.release(self.token, self.size)
            self.token = None

    async def discard(self) -> None:
        try:
            self._close()
        finally:
            if self.path is not None:
                for name in (self.path + ".part", self.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
            self._release()


def _drop_made(made: asyncio.Future[tuple[int, mmap.mmap | None]], part: str) -> None:
    """Close and remove a temp file whose ``open`` was cancelled while it was being made."""
    if made.cancelled() or made.exception() is not None:
        return
    fd, mapped = made.result()
    if mapped is not None:
        mapped.close()
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
