"""Sinks: where the bytes of one download go.

A sink is one writable buffer the size of the download: a ``bytes`` written in place
(:func:`writable_bytes`) or a ``bytearray`` (:class:`MemorySink`), into which response bodies
are received (or copied, on the botocore transport) straight; or a temp file
(:class:`FileSink`), whose bodies are received a window at a time into reused buffers and
written with ``pwrite`` (:class:`Spool`). Every sink satisfies :class:`Sink`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import functools
import glob
import mmap
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import _fork
from ..errors import MetaflowS3TransferError
from ..limits import MiB
from ..tempdirs import TempDirs
from .checksums import Algorithm


class Sink(Protocol):
    """Where the bytes of one download go: :meth:`open` with the download's size, then
    :meth:`dest` for each range's body (a view to receive into, or a :class:`Spool`),
    :meth:`checksum` of completed bytes (computed after the fact), and :meth:`commit`
    (``(path, None)`` or ``(None, bytes)``) or :meth:`discard` at the end."""

    async def open(self, size: int) -> None: ...

    def dest(self, offset: int, length: int) -> memoryview | Spool: ...

    async def checksum(self, offset: int, length: int, algorithm: Algorithm) -> int: ...

    async def commit(self) -> tuple[str | None, bytes | None]: ...

    async def discard(self) -> None: ...


KILL_SWITCH = "S3FAST_NO_CTYPES"  # set (to anything but 0/false/no/off): never use ctypes
# Huge-page advice for in-memory GETs: 1/true/yes/on always, 0/false/no/off never; unset, unless
# the host takes back free memory (see host_takes_back_free_memory)
HUGE_PAGES = "S3FAST_HUGE_PAGES"
# 1/true/yes/on: big in-memory GETs' memory is prefaulted on threads of s3fast's own (_prefault)
PREFAULT = "S3FAST_PREFAULT"
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault pages in, writable, without writing to them
PREFAULT_MIN = 1 * MiB  # bytes: smaller objects are not prefaulted
PREFAULT_THREADS = min(4, os.cpu_count() or 1)  # per process
VIRTIO_BALLOON_F_REPORTING = 5  # the virtio balloon's free page reporting feature bit
# 1/true/yes/on: glibc keeps the memory freed by big in-memory batches (see keep_freed_memory)
KEEP_FREED_MEMORY = "S3FAST_KEEP_FREED_MEMORY"
# glibc's mallopt parameters, and what keep_freed_memory sets them to
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEPT = ((M_MMAP_THRESHOLD, 32 * MiB), (M_TOP_PAD, 64 * MiB), (M_TRIM_THRESHOLD, 2**31 - 1))


def writable_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``size`` bytes, not yet written, and a writable view of its storage,
    so a body can be received straight into the object handed to the caller, without a final
    copy; None where that is not available (the caller fills a ``bytearray`` and copies it).
    The caller writes every byte before anyone else sees the object: a download hands it out
    only once each of its ranges has arrived whole and matched its ``Content-Range``.

    The one place s3fast writes into a ``bytes`` through ctypes. The object comes from
    ``PyBytes_FromStringAndSize(NULL, n)`` (malloc: no bytes written). ``bytes(n)`` would
    be calloc'd, which glibc serves from memory it already holds once its mmap threshold has
    risen (after the first large free) and then clears with memset, faulting back in pages it
    had returned to the kernel: with the event loop on its own thread (``S3``), that made
    three times the page faults and 0.38 against 0.27 s of client CPU per GiB of GETs into
    memory (measured). Writing into a ``bytes`` is safe only while no one else holds
    it (it is not hashed or shared until the download completes), and only for objects too
    large for CPython's shared single-byte cache; CPython only, checked once, on first use.
    ``S3FAST_NO_CTYPES=1`` turns it off (a plain copy instead).
    """
    if size < 4096 or _killed():
        return None
    keep_freed_memory()
    if not _bytes_writable():
        return None
    blob = _new_bytes(size)
    start = id(blob) + _BYTES_OFFSET
    _huge_pages(start, size)
    _prefault(blob, start, size)
    array = (ctypes.c_ubyte * size).from_address(start)
    return blob, memoryview(array).cast("B")


def _huge_pages(address: int, size: int) -> None:
    """Ask Linux for transparent huge pages (``MADV_HUGEPAGE``) for the whole huge pages
    inside ``[address, address + size)``, before anything is written there: a large new
    ``bytes`` is usually fresh memory from ``mmap``, and filling it page by page costs one
    fault per 4 KiB (an eighth of the client's CPU on a GET into memory, measured); huge pages
    take one per 2 MiB. Where malloc served it from its heap instead, the advice stays on that
    part of the heap (as with THP set to ``always``). Nothing happens where the kernel has no
    THP or where it is set to ``never``, or with ``S3FAST_HUGE_PAGES=0``. In a VM whose host
    takes back the guest's free memory (free page reporting), a batch in fresh memory
    pays the host's faults on fresh huge pages, so there the advice is off unless
    ``S3FAST_HUGE_PAGES=1`` (see :func:`host_takes_back_free_memory`)."""
    if not _advise_huge_pages():
        return
    huge = _huge_page_size()
    if not huge or size < 2 * huge:
        return
    lo = (address + huge - 1) & ~(huge - 1)
    hi = (address + size) & ~(huge - 1)
    if hi > lo:
        _madvise(lo, hi - lo, mmap.MADV_HUGEPAGE)


_prefaulter: concurrent.futures.ThreadPoolExecutor | None = None
_prefault_works = True  # False once the kernel has refused MADV_POPULATE_WRITE
_prefault_lock = threading.Lock()


def _prefault(blob: bytes, address: int, size: int) -> None:
    """With ``S3FAST_PREFAULT=1``: fault in the pages of a new ``bytes`` (``[address, address
    + size)``) on a thread of s3fast's own, while the download receives into it. A large new
    ``bytes`` is mostly memory the kernel has not handed out yet: each 4 KiB page's first
    write is a page fault, which the event loop's thread otherwise takes inside ``recv``, a
    page at a time. ``MADV_POPULATE_WRITE`` (Linux 5.14+) takes them on another core, in one
    call, and writes nothing: whichever comes first to a page, the bytes received are what
    stays. The job holds ``blob``: its memory stays the object's until the call returns.

    Off by default: it pays where the event loop's core is the bottleneck and another core is
    free, and costs where the cores are shared. On the 2-core VM, GETs into memory were
    14-22% faster with SeaweedFS on loopback, and 4-11% slower behind the ``s3like`` shaping
    proxy, whose process shares the same cores (benchmarks/RESULTS.md)."""
    global _prefaulter
    if size < PREFAULT_MIN or _kept or not _prefault_works or not _prefault_on():
        return
    with _prefault_lock:
        if _prefaulter is None:
            _prefaulter = concurrent.futures.ThreadPoolExecutor(
                PREFAULT_THREADS, thread_name_prefix="s3fast-prefault"
            )
        with contextlib.suppress(RuntimeError):  # at interpreter exit: no new threads
            _prefaulter.submit(_populate, blob, address, size)


def _populate(blob: bytes, address: int, size: int) -> None:
    global _prefault_works
    start = address & ~(mmap.PAGESIZE - 1)
    if not _madvise(start, address + size - start, MADV_POPULATE_WRITE):
        if ctypes.get_errno() == errno.EINVAL:  # a kernel older than 5.14
            _prefault_works = False


def _prefault_on() -> bool:
    return sys.platform == "linux" and bool(_switch(PREFAULT))


def _prefault_after_fork() -> None:
    global _prefaulter, _prefault_lock
    _fork.orphan(_prefaulter)  # its threads are the parent's
    _prefaulter, _prefault_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_prefault_after_fork)


def _switch(name: str) -> bool | None:
    """An on/off setting: 1/true/yes/on, 0/false/no/off, else None (unset)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def _advise_huge_pages() -> bool:
    chosen = _switch(HUGE_PAGES)
    return not host_takes_back_free_memory() if chosen is None else chosen


_kept: bool | None = None  # None: not asked for yet; then whether glibc took the settings


def keep_freed_memory() -> bool:
    """With ``S3FAST_KEEP_FREED_MEMORY=1``, once per process (the first in-memory download
    does it): glibc keeps the memory that freed objects of up to 32 MiB leave behind, on the
    main thread's heap (up to 2 GiB) and on the threads' (their heaps whole), instead of
    handing it back to the kernel after every large free. The next batch into memory then
    reuses those pages rather than faulting every 4 KiB back in: 0.18-0.20 against 0.28-0.30
    s a batch (24 x 16 MiB), and half the client CPU, on the 2-core VM (benchmarks/RESULTS.md).
    The process's resident memory stays near the peak of its batches. The same as
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.top_pad=67108864:``
    ``glibc.malloc.trim_threshold=2147483647`` at process start; process-wide, off unless
    asked for (and with ``S3FAST_NO_CTYPES``). Returns whether glibc took the settings."""
    global _kept
    if _kept is None:
        if not _switch(KEEP_FREED_MEMORY):
            return False
        try:
            mallopt = _libc().mallopt
            _kept = all(mallopt(param, value) == 1 for param, value in KEPT)
        except (OSError, AttributeError):  # not glibc: nothing to set
            _kept = False
    return _kept


@functools.cache
def host_takes_back_free_memory(root: str = "/") -> bool:
    """Does this kernel report its free memory to the hypervisor (a virtio balloon with free
    page reporting)? The host then drops the pages of the guest's large free blocks, which
    are what a fresh huge page is taken from: each 2 MiB page's first write is hundreds of
    faults on the host. Measured on such a VM (``python -m benchmarks.batch_gaps``, 24 x 16
    MiB into memory, 4 batches 3 s apart in fresh processes): 0.51-0.95 s a batch with the
    advice, 0.21-0.32 s without; back to back, the advice wins only after a process's first
    batch. ``root`` prefixes the ``/sys`` path (tests)."""
    pattern = os.path.join(root, "sys/bus/virtio/drivers/virtio_balloon/*/features")
    for path in glob.glob(pattern):
        try:
            with open(path) as f:
                bits = f.read().strip()  # one character per feature bit, bit 0 first
        except OSError:
            continue
        if len(bits) > VIRTIO_BALLOON_F_REPORTING and bits[VIRTIO_BALLOON_F_REPORTING] == "1":
            return True
    return False


@functools.cache
def _huge_page_size() -> int:
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _madvise(address: int, length: int, advice: int) -> bool:
    """Whether the kernel took the advice (if not: ``ctypes.get_errno()`` says why)."""
    try:
        return _libc().madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), advice) == 0
    except (OSError, AttributeError):  # advice only: nothing changes without it
        return False


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _killed() -> bool:
    value = os.environ.get(KILL_SWITCH, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _new_bytes(size: int) -> bytes:
    """A new ``bytes`` of ``size`` bytes whose contents are not written (CPython's
    ``PyBytes_FromStringAndSize(NULL, size)``)."""
    made: bytes = _bytes_from_size()(None, size)
    return made


@functools.cache
def _bytes_from_size() -> Any:
    """A private prototype of the C API call (with the GIL held, raising what it raises, as
    ``ctypes.pythonapi``), leaving ``ctypes.pythonapi``'s shared attribute untouched."""
    prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)
    return prototype(("PyBytes_FromStringAndSize", ctypes.pythonapi))


@functools.cache
def _bytes_writable() -> bool:
    if sys.implementation.name != "cpython":
        return False
    try:
        probe = _new_bytes(4096)
        array = (ctypes.c_ubyte * 4096).from_address(id(probe) + _BYTES_OFFSET)
        view = memoryview(array).cast("B")
        view[:] = b"s3ft" * 1024
        return type(probe) is bytes and len(probe) == 4096 and probe == b"s3ft" * 1024
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

    def dest(self, offset: int, length: int) -> memoryview:
        return memoryview(self.buf)[offset : offset + length]

    async def checksum(self, offset: int, length: int, algorithm: Algorithm) -> int:
        """``algorithm``'s checksum of bytes already received (a few milliseconds at most,
        for a range, on the loop: the bytes are in memory)."""
        with memoryview(self.buf)[offset : offset + length] as view:
            return algorithm.of(view)

    async def commit(self) -> tuple[str | None, bytes | None]:
        blob = self.blob if self.blob is not None else bytes(self.buf)
        self.buf, self.blob = bytearray(), None
        return None, blob

    async def discard(self) -> None:
        self.buf, self.blob = bytearray(), None


# Filesystems where ``posix_fallocate`` is the kernel's own (not glibc's emulation, which
# writes every block) and reserves the blocks for good: a full disk then fails a download
# before any byte is written to its file, and the writes that follow allocate nothing (on ext4
# they are faster for it). Overlay (containers' filesystems) passes it to its upper layer,
# which Docker and containerd keep on ext4 or xfs. Elsewhere (ext2/ext3, copy-on-write
# filesystems such as btrfs or ZFS, network and FUSE filesystems) a full disk fails the write
# that finds it, with ENOSPC.
PREALLOCATING_FILESYSTEMS = frozenset({"tmpfs", "ext4", "xfs", "overlay"})

WINDOW = 2 * MiB  # bytes: a file download's receive buffer (two per range in flight)
SPARE_WINDOWS = 16  # receive buffers kept for reuse (32 MiB at most), per process
SMALL_WRITE = 64 * 1024  # bytes: a body this small is written on the loop, not on a thread
_spare: list[bytearray] = []  # list.append and list.pop are atomic: shared by every loop


def _window(want: int) -> bytearray:
    """A receive buffer for up to ``want`` bytes: a spare window, else a new one (only as
    big as ``want``, for a small body)."""
    try:
        return _spare.pop()
    except IndexError:
        return bytearray(min(want, WINDOW))


def _keep(buf: bytearray) -> None:
    if len(buf) == WINDOW and len(_spare) < SPARE_WINDOWS:
        _spare.append(buf)


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


def _preallocates(directory: str) -> bool:
    # ``directory`` is a client's private dir: look up the place it is in (once per place,
    # not once per client)
    place = os.path.dirname(directory)
    return hasattr(os, "posix_fallocate") and filesystem_of(place) in PREALLOCATING_FILESYSTEMS


# Fills a window from a response body: ``read(window, last, landed)``, where ``last`` says the
# window ends the body and ``landed[0]`` is set to the bytes that landed, also when it raises.
Read = Callable[[memoryview, bool, list[int]], Awaitable[Any]]


class Spool:
    """Where the body for bytes ``offset..offset+length`` of a :class:`FileSink` goes: it is
    received a window at a time into two reused buffers, and while one window is written to
    the file (``pwrite``, on a thread), the next lands in the other. Each byte is copied twice
    (socket to buffer, buffer to page cache), both times within the CPU's cache; this was
    measured faster than receiving through a memory map of the file, whose page faults cost
    more than the second copy, and it keeps resident memory to the buffers in flight."""

    __slots__ = ("length", "offset", "sink")

    def __init__(self, sink: FileSink, offset: int, length: int) -> None:
        self.sink = sink
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def release(self) -> None:
        """Nothing to release (as for a memoryview destination)."""

    async def receive(self, read: Read, whole: bool, progress: list[int]) -> None:
        """Receive the bytes window by window with ``read`` (``whole``: the body ends with
        them), each window written at its place; ``progress[0]`` advances by the bytes
        handed to the file. What landed in a window when a body broke off is written too,
        so the body can resume after it. Returns once every write is done; a failed write
        (ENOSPC) raises."""
        loop = asyncio.get_running_loop()
        at, end = self.offset, self.offset + self.length
        free = [_window(end - at) for _ in range(min(2, -(-self.length // WINDOW)))]
        writing: list[tuple[asyncio.Future[None], bytearray]] = []  # at most one, in flight

        async def hand_over(buf: bytearray, n: int) -> None:
            if writing:  # its buffer is needed again: wait for that write
                await self._done(writing, free)
            sink = self.sink
            if n <= SMALL_WRITE and (sink.allocated or sink.size <= SMALL_WRITE):
                sink.write(buf, n, at)  # a few microseconds: not worth a thread's hop
                free.append(buf)
            else:
                job = loop.run_in_executor(None, sink.write, buf, n, at)
                writing.append((job, buf))
            progress[0] += n

        while at < end:
            buf = free.pop()
            n = min(len(buf), end - at)
            landed = [0]
            try:
                await read(memoryview(buf)[:n], whole and at + n == end, landed)
            except Exception:
                if landed[0]:
                    await hand_over(buf, landed[0])
                if writing:
                    await self._done(writing, free)
                raise
            await hand_over(buf, n)
            at += n
        if writing:
            await self._done(writing, free)
        for buf in free:
            _keep(buf)

    @staticmethod
    async def _done(
        writing: list[tuple[asyncio.Future[None], bytearray]], free: list[bytearray]
    ) -> None:
        """Wait for the write in flight (its failure raises); its buffer is free again. A
        buffer whose write was cancelled is dropped (its thread may still read it)."""
        job, buf = writing[0]
        await job
        writing.clear()
        free.append(buf)


class FileSink:
    """A private temp file (``.part`` until complete, then renamed). Removed unless
    committed. A download that cannot get its space fails with ENOSPC (an
    ``MetaflowS3InsufficientDiskSpace``): bodies are received into small buffers
    (:class:`Spool`) and written with ``pwrite``. Where the filesystem really allocates what
    ``posix_fallocate`` asks for (:data:`PREALLOCATING_FILESYSTEMS`), the first write
    allocates the whole file first, so a full disk fails before any byte is written and
    another writer cannot take the space midway."""

    def __init__(self, temp_dirs: TempDirs, url: str, tag: str = "") -> None:
        self.temp_dirs = temp_dirs
        self.url = url
        self.tag = tag
        self.fd: int | None = None
        self.path: str | None = None
        self.token: int | None = None
        self.size = 0
        self.lock = threading.Lock()  # ``fd`` between the loop and the writing threads
        self.allocating = threading.Lock()  # the first write allocates; the others wait
        self.allocated = False

    async def open(self, size: int) -> None:
        directory, self.token = self.temp_dirs.reserve(size, self.url)
        self.size = size
        self.path = self.temp_dirs.new_path(directory, self.url, self.tag)
        self.allocated = not size or not _preallocates(directory)
        loop = asyncio.get_running_loop()
        part = self.path + ".part"
        making = loop.run_in_executor(None, _create, part)
        try:
            self.fd = await asyncio.shield(making)
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

    def dest(self, offset: int, length: int) -> Spool:
        return Spool(self, offset, length)

    async def checksum(self, offset: int, length: int, algorithm: Algorithm) -> int:
        """``algorithm``'s checksum of bytes already written, read back on a thread (through
        a descriptor of its own, as :meth:`write`; a read that may wait for the disk does
        not hold up the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._checksum, offset, length, algorithm)

    def _checksum(self, offset: int, length: int, algorithm: Algorithm) -> int:
        with self.lock:
            if self.fd is None:
                raise MetaflowS3TransferError(f"{self.url}: the local file was closed", self.url)
            fd = os.dup(self.fd)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise MetaflowS3TransferError(f"{self.url}: incomplete local file", self.url)
        return algorithm.of(data)

    def write(self, buf: bytearray, n: int, offset: int) -> None:
        """On a thread: the first ``n`` bytes of ``buf`` into the file at ``offset``, through
        a descriptor of its own (a discard may close the sink's meanwhile; a write it no
        longer wants is skipped). The first write allocates the file where that holds."""
        with self.lock:
            if self.fd is None:
                return
            fd = os.dup(self.fd)
        try:
            if not self.allocated:
                with self.allocating:
                    if not self.allocated:
                        self._allocate(fd)
                        self.allocated = True
            with memoryview(buf) as view:
                done = 0
                while done < n:
                    done += os.pwrite(fd, view[done:n], offset + done)
        finally:
            os.close(fd)

    def _allocate(self, fd: int) -> None:
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise  # ENOSPC, EDQUOT: no room, nothing written

    def _close(self) -> None:
        with self.lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    async def commit(self) -> tuple[str | None, bytes | None]:
        assert self.path is not None
        if self.fd is not None and self.size:
            # Every range was written: a short file (one not preallocated) means one was not.
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


def _create(part: str) -> int:
    return os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _drop_made(made: asyncio.Future[int], part: str) -> None:
    """Close and remove a temp file whose ``open`` was cancelled while it was being made."""
    if made.cancelled() or made.exception() is not None:
        return
    os.close(made.result())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
