"""Downloads: one object (or range) into memory or a private temp file.

The first request asks for the first ``range_size`` bytes of what the caller wants; its
``Content-Range`` gives the object's size, and the rest is fetched as parallel ranged GETs
pinned to the same version (``If-Match`` on the ETag), each received straight into its place
in the destination. A body that breaks mid-way is resumed from the last byte received.

Integrity: every response's length is checked against what was asked for, and a whole-object
download is checked against the full-object checksum the object carries (``checksums.py``):
each body is checksummed chunk by chunk as it lands, the pieces are combined in order, and the
result is compared with the checksum that the first, unranged, response carried, or (for an
object expected to span several ranges, read ranged from the start) that a HEAD of the same
version brought. A mismatch is fetched again once, then raised.

Retries: on the botocore transport, botocore retries whole requests and this layer retries
only broken bodies, so the two never overlap; on the lean transport (``http.py``), which has
no retries of its own, this layer also retries 5xx answers and failed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import functools
import mmap
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from ..errors import (
    MetaflowS3TransferError,
    error_code,
    raise_translated,
)
from ..limits import MiB, split
from ..targets import Targets
from ..urls import ByteRange, S3Path, parse_content_range
from .checksums import CRC32, Checksum, combined, full_object
from .client import RESUMABLE, SCOUT_WAIT, Engine, RetryClock, backoff, bounded_map, retrying
from .http import Digest, ProtocolSurprise

READ_CHUNK = 1 * MiB


class _ShortBody(ConnectionError):
    pass


class _LengthUnknown(MetaflowS3TransferError):
    """A response that says neither its length (Content-Length) nor its span (Content-Range):
    a chunked or close-delimited answer to an unranged GET, whose size is known only at its
    end. :func:`fetch` then asks for ranges, which carry Content-Range."""


@dataclass
class Head:
    """What a response says about the object, and the span (inclusive) it carries."""

    total: int
    start: int
    end: int
    content_type: str | None
    metadata: dict[str, str]
    last_modified: float | None
    encryption: str | None
    etag: str | None
    version_id: str | None
    checksum: Checksum | None = None  # the object's full-object checksum, if sent

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.total - 1

    @classmethod
    def from_response(cls, resp: dict[str, Any], url: str) -> Head:
        length = resp.get("ContentLength")  # None: a chunked or close-delimited body
        if resp.get("ContentRange"):
            start, end, total = parse_content_range(resp["ContentRange"], url)
            if length is not None and end - start + 1 != int(length):
                raise MetaflowS3TransferError(
                    f"{url}: Content-Length {length} does not match "
                    f"Content-Range {resp['ContentRange']}",
                    url,
                )
        elif length is None:
            raise _LengthUnknown(
                f"{url}: the server sent neither Content-Length nor Content-Range", url
            )
        else:
            start, end, total = 0, int(length) - 1, int(length)
        modified = resp.get("LastModified")
        return cls(
            total=total,
            start=start,
            end=end,
            content_type=resp.get("ContentType"),
            metadata=resp.get("Metadata") or {},
            last_modified=modified.timestamp() if modified is not None else None,
            encryption=resp.get("ServerSideEncryption"),
            etag=(resp.get("ETag") or "").strip('"') or None,
            version_id=resp.get("VersionId"),
            checksum=full_object(resp),
        )


@dataclass
class Fetched:
    head: Head
    offset: int
    length: int
    path: str | None
    blob: bytes | None


# --- sinks: where the bytes of one download go ---------------------------------------------
#
# A sink is one writable buffer the size of the download: a bytearray, or a memory-mapped temp
# file. Response bodies are received (or copied, on the botocore transport) straight into it.


def _writable_bytes(size: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``size`` zero bytes and a writable view of its storage, so a body
    can be received straight into the object handed to the caller, without a final copy.

    ``bytes(n)`` is allocated with calloc (zero pages, mapped lazily), unlike ``bytearray(n)``
    which is zero-filled up front. Writing into a ``bytes`` is safe only while no one else
    holds it (it is not hashed or shared until the download completes), and only for objects
    too large for CPython's shared single-byte cache; CPython only, checked at import.
    """
    if not _BYTES_WRITABLE or size < 4096:
        return None
    blob = bytes(size)
    array = (ctypes.c_ubyte * size).from_address(id(blob) + _BYTES_OFFSET)
    return blob, memoryview(array).cast("B")


def _bytes_self_check() -> bool:
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
_BYTES_WRITABLE = _bytes_self_check()


class MemorySink:
    def __init__(self) -> None:
        self.buf: bytearray | memoryview = bytearray()
        self.blob: bytes | None = None

    async def open(self, size: int) -> None:
        direct = _writable_bytes(size)
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

    def __init__(self, targets: Targets, url: str, tag: str = "") -> None:
        self.targets = targets
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
        directory, self.token = self.targets.reserve(size, self.url)
        self.size = size
        self.path = self.targets.new_path(directory, self.url, self.tag)
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
            self.targets.release(self.token, self.size)
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


def _pwrite_all(fd: int, buf: bytearray, offset: int) -> None:
    with memoryview(buf) as view:
        done = 0
        while done < len(buf):
            done += os.pwrite(fd, view[done:], offset + done)


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


Sink = MemorySink | FileSink


# --- the download ----------------------------------------------------------------------------


def first_range(brange: ByteRange | None, range_size: int) -> str:
    if brange is None:
        return f"bytes=0-{range_size - 1}"
    if brange.length is None:
        return f"bytes={brange.offset}-{brange.offset + range_size - 1}"
    if brange.length < 0:
        return brange.header()
    last = brange.offset + min(brange.length, range_size) - 1
    return f"bytes={brange.offset}-{last}"


def final_end(brange: ByteRange | None, total: int) -> int:
    if brange is not None and brange.length is not None and brange.length > 0:
        return min(brange.offset + brange.length - 1, total - 1)
    return total - 1


async def _drain(
    body: Any, dest: memoryview, progress: list[int], digest: Digest | None, whole: bool = True
) -> None:
    """Copy a botocore response body into ``dest``, advancing ``progress[0]`` and feeding
    ``digest`` each chunk: exactly ``len(dest)`` bytes, or (not ``whole``) its first
    ``len(dest)`` bytes. The end of a body with no Content-Length (chunked, or ended by the
    server closing) is known only when it comes, so a whole body is read to its end."""
    filled = 0
    while filled < len(dest):
        chunk = await body.read(min(READ_CHUNK, len(dest) - filled))
        if not chunk:
            break
        dest[filled : filled + len(chunk)] = chunk
        if digest is not None:
            digest(memoryview(chunk))
        filled += len(chunk)
        progress[0] += len(chunk)
    if filled != len(dest):
        raise _ShortBody(f"body ended after {filled} of {len(dest)} bytes")
    if whole and await body.read(1):
        raise ConnectionError(f"the server sent more than the {len(dest)} bytes expected")


# Given a response's head: the buffer for its body, and maybe a digest to feed the body.
Prepare = Callable[[Head], Awaitable[tuple[memoryview, Digest | None]]]


async def _exchange(
    engine: Engine,
    path: S3Path,
    url: str,
    range_header: str | None,
    etag: str | None,
    prepare: Prepare,
    progress: list[int],
    checksum: bool = False,
) -> None:
    """One GET through the engine's transport. ``prepare(head)`` returns the buffer for the
    body (and maybe a digest fed each chunk of it); ``progress[0]`` advances with every body
    byte that arrives, also on failure. ``checksum`` asks for the object's checksums in the
    response."""
    http = await engine.lean(path.bucket, "GetObject")
    if http is not None:

        async def prepare_fields(fields: dict[str, Any]) -> tuple[memoryview, Digest | None]:
            return await prepare(Head.from_response(fields, url))

        try:
            async with engine.slot(progress=progress):
                await http.get(
                    path.bucket, path.key, range_header, etag, prepare_fields, progress, checksum
                )
            return
        except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
            if not engine.transport.hand_over(exc, path.bucket, "GetObject"):
                raise
    kwargs: dict[str, Any] = {}
    if range_header:
        kwargs["Range"] = range_header
    if etag:
        kwargs["IfMatch"] = f'"{etag}"'
    if checksum:
        kwargs["ChecksumMode"] = "ENABLED"
    async with engine.slot(progress=progress) as client:
        resp = await client.get_object(Bucket=path.bucket, Key=path.key, **kwargs)
        body = resp["Body"]
        try:
            head = Head.from_response(resp, url)
            dest, digest = await prepare(head)
            try:
                await _drain(body, dest, progress, digest, len(dest) == head.end + 1 - head.start)
            finally:
                dest.release()
        finally:
            body.close()


async def _span(
    engine: Engine,
    path: S3Path,
    url: str,
    sink: Sink,
    base: int,
    start: int,
    end: int,
    etag: str | None,
    attempt: int = 0,
    verifier: _Verifier | None = None,
) -> None:
    """Fetch absolute bytes ``start..end`` into ``sink`` (at ``start - base``), resuming a
    broken body from the last byte received; the ``verifier`` checksums the bytes as they
    land."""
    progress = [start]
    piece: _Piece | None = None

    async def prepare(head: Head) -> tuple[memoryview, Digest | None]:
        nonlocal piece
        if (head.start, head.end) != (progress[0], end):
            raise MetaflowS3TransferError(
                f"{url}: asked for bytes {progress[0]}-{end}, "
                f"the server sent {head.start}-{head.end}",
                url,
            )
        piece = verifier.piece(progress[0]) if verifier is not None else None
        digest = piece.update if piece is not None else None
        return sink.view(progress[0] - base, end + 1 - progress[0]), digest

    await engine.throttle(end + 1 - start)  # max_bandwidth
    with RetryClock() as clock:
        while True:
            piece = None
            try:
                await _exchange(
                    engine, path, url, f"bytes={progress[0]}-{end}", etag, prepare, progress
                )
                return
            except RESUMABLE as exc:
                attempt += 1
                if not await backoff(attempt, engine, clock.started):
                    raise MetaflowS3TransferError(
                        f"{url}: gave up after {attempt} attempts at byte {progress[0]} "
                        f"({type(exc).__name__}: {exc})",
                        url,
                    ) from exc
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", "412"):
                    raise MetaflowS3TransferError(
                        f"{url}: the object changed during the download (ETag no longer {etag})",
                        url,
                    ) from exc
                raise_translated(exc, url)
            finally:
                if verifier is not None and piece is not None:
                    verifier.took(piece)


class _Piece:
    """The checksum of one response's body bytes from absolute offset ``start``, computed
    as they land (still in the CPU's cache: cheaper than a second pass over the range)."""

    __slots__ = ("algorithm", "length", "start", "value")

    def __init__(self, start: int, algorithm: Any) -> None:
        self.start = start
        self.algorithm = algorithm
        self.value = 0
        self.length = 0

    def update(self, chunk: memoryview) -> None:
        self.value = self.algorithm.of(chunk, self.value)
        self.length += len(chunk)


class _Verifier:
    """Collects the checksums of a whole-object download's bodies as they land (or of each
    range as it completes, where no body was fed), and compares their combination with the
    object's full-object checksum: the one the first (unranged) response carried, or the one
    ``pending`` (a HEAD) brings."""

    def __init__(
        self,
        expected: Checksum | None,
        base: int,
        sink: Sink,
        pending: asyncio.Future[Head] | None = None,
    ) -> None:
        self.expected = expected
        self.pending = pending
        self.base = base
        self.sink = sink
        self.pieces: dict[int, tuple[int, int]] = {}  # start: (checksum, length), settled
        # start: (checksum, length, algorithm), from bodies as they landed
        self.streamed: dict[int, tuple[int, int, Any]] = {}

    def piece(self, start: int) -> _Piece | None:
        """A checksum to feed a body landing at absolute offset ``start``, or None when there
        is nothing to check. While the HEAD has not answered, a guess: CRC32, the algorithm
        of s3fast's and botocore's uploads (a wrong guess is computed again at the end)."""
        pending = self.pending
        if pending is not None and pending.done() and not pending.cancelled():
            if pending.exception() is None:  # else settle raises it
                self.expected, self.pending = pending.result().checksum, None
        if self.pending is not None:
            return _Piece(start, CRC32)
        if self.expected is None:
            return None
        return _Piece(start, self.expected.algorithm)

    def took(self, piece: _Piece) -> None:
        """A response's body ended (complete or broken off) after ``piece.length`` bytes."""
        if piece.length:
            self.streamed[piece.start] = (piece.value, piece.length, piece.algorithm)

    async def settle(self, start: int, end: int) -> None:
        """Absolute bytes ``start..end`` are complete: take their checksum from the bodies
        that brought them, or compute it, then let the sink drop them from memory."""
        length = end + 1 - start
        if self.pending is not None:
            self.expected = (await asyncio.shield(self.pending)).checksum  # the HEAD says which
            self.pending = None
        if self.expected is not None:
            algorithm = self.expected.algorithm
            chain, at = [], start
            while at <= end and at in self.streamed and self.streamed[at][2] is algorithm:
                chain.append(at)
                at += self.streamed[at][1]
            if at == end + 1:
                for piece_start in chain:
                    value, piece_length, _ = self.streamed.pop(piece_start)
                    self.pieces[piece_start] = (value, piece_length)
            else:
                with self.sink.view(start - self.base, length) as view:
                    self.pieces[start] = (self.expected.algorithm.of(view), length)
        writing = self.sink.settled(start - self.base, length)
        if writing is not None:
            await writing

    def mismatch(self, url: str) -> str | None:
        """None if the bytes match (or there is nothing to compare with), else why not."""
        expected = self.expected
        if expected is None:
            return None
        got = combined(expected.algorithm, (self.pieces[k] for k in sorted(self.pieces)))
        if got == expected.value:
            return None
        return (
            f"{url}: checksum mismatch: the object carries {expected}, the bytes received "
            f"have {expected.algorithm.encode(got)}"
        )


async def fetch(
    engine: Engine,
    path: S3Path,
    url: str,
    brange: ByteRange | None,
    sink: Sink,
    on_bytes: Callable[[int], None] | None = None,
    size: int | None = None,
) -> Fetched:
    """Download ``brange`` (None: all) of ``path`` into ``sink``; ``on_bytes(n)`` is called as
    each range of ``n`` bytes completes. ``size``: the object's size, when known (a listing's)."""
    range_size = engine.config.range_size
    # A whole object, checked against its checksum, which S3 sends only with an unranged GET
    # or a HEAD. An object expected to span at most two ranges is read whole with one
    # unranged GET. A bigger one (by ``size``, else by the sizes this engine saw lately) is
    # read in ranges while a HEAD of the same version fetches its checksum. If a big one was
    # read unranged after all, its first range is read and the connection dropped (what was
    # in flight is lost), and the rest goes in parallel.
    verify = brange is None and engine.config.verify_checksums
    scout: asyncio.Future[None] | None = None  # set when this download is the scout
    if verify and size is None and not engine.sized:
        # Nothing known of sizes yet (a new client): the first download goes alone until its
        # response tells a size, so the others start the way that size says (a batch of big
        # objects then drops no connection). One round trip, once per engine.
        waiting, mine = engine.scout()
        if mine:
            scout = waiting
        else:
            with contextlib.suppress(TimeoutError):  # a slow scout holds no one for long
                await asyncio.wait_for(asyncio.shield(waiting), SCOUT_WAIT)
    ranged = verify and engine.expects_big(size)
    progress = [0]
    first: list[Head] = []
    last = 0
    verifier: _Verifier | None = None
    checksum: asyncio.Task[Head] | None = None
    piece: _Piece | None = None

    async def prepare(head: Head) -> tuple[memoryview, Digest | None]:
        nonlocal last, verifier, checksum, piece
        last = final_end(brange, head.total)
        if brange is None:
            engine.saw_size(head.total)
        if ranged:
            checksum = asyncio.ensure_future(head_object(engine, path, url, head.etag, True))
            verifier = _Verifier(None, head.start, sink, checksum)
        elif verify:
            verifier = _Verifier(head.checksum if head.whole else None, head.start, sink)
            if head.whole and head.total > 2 * range_size:
                head = dataclasses.replace(head, end=range_size - 1)
        piece = verifier.piece(head.start) if verifier is not None else None
        await sink.open(max(0, last - head.start + 1))
        first.append(head)
        progress[0] = head.start
        return sink.view(0, head.end + 1 - head.start), piece.update if piece else None

    try:
        range_header = None if verify and not ranged else first_range(brange, range_size)
        asked_ranges = False
        attempt = 0
        with RetryClock() as clock:
            while True:
                try:
                    await _exchange(
                        engine,
                        path,
                        url,
                        range_header,
                        None,
                        prepare,
                        progress,
                        verify and not ranged,
                    )
                    break
                except botocore.exceptions.ClientError as exc:
                    # A whole-object read of an empty object: S3 refuses "bytes=0-N" with 416.
                    if (
                        brange is None
                        and range_header
                        and error_code(exc) in ("InvalidRange", "416")
                    ):
                        range_header, ranged = None, False
                        if asked_ranges:  # and unranged, it came without a length: a HEAD's
                            empty = await head_object(engine, path, url)
                            if empty.total:
                                raise
                            (await prepare(empty))[0].release()
                            break
                        continue
                    raise
                except _LengthUnknown:
                    # An unranged answer of unknown length (chunked or close-delimited): ask for
                    # ranges instead, whose Content-Range tells the size (the checksum, if any,
                    # then comes from a HEAD). Once: a server that ignores Range fails here.
                    if range_header is not None or asked_ranges:
                        raise
                    asked_ranges, ranged = True, verify
                    range_header = first_range(brange, range_size)
                except RESUMABLE:
                    if first:  # the body broke off: resume below from the last byte received
                        break
                    if scout is not None:  # its first try failed: the others need not wait more
                        engine.scouted(scout)
                    attempt += 1
                    if not await backoff(attempt, engine, clock.started):
                        raise
                finally:
                    if verifier is not None and piece is not None:
                        verifier.took(piece)
                        piece = None
        head = first[0]
        await engine.throttle(progress[0] - head.start)  # max_bandwidth: the first range
        if progress[0] <= head.end:
            await _span(
                engine, path, url, sink, head.start, progress[0], head.end, head.etag, 1, verifier
            )

        counted = on_bytes  # progress counts each range once, not again when re-fetched

        async def one(item: tuple[int, int, bool]) -> None:
            start, end, again = item
            if again:
                await _span(engine, path, url, sink, head.start, start, end, head.etag, 0, verifier)
            if verifier is not None:
                await verifier.settle(start, end)
            else:
                writing = sink.settled(start - head.start, end + 1 - start)
                if writing is not None:
                    await writing
            if counted is not None:
                counted(end + 1 - start)

        async def run(items: list[tuple[int, int, bool]]) -> None:
            if len(items) == 1:
                await one(items[0])
            else:
                await bounded_map(one, items, engine.concurrency)

        rest = split(head.end + 1, last, range_size)
        await run([(head.start, head.end, False)] + [(a, b, True) for a, b in rest])
        if verifier is not None and verifier.mismatch(url):
            # corrupted in flight, or stored so: fetch it all again once, then give up
            verifier.pieces.clear()
            verifier.streamed.clear()
            counted = None
            await run([(head.start, head.end, True)] + [(a, b, True) for a, b in rest])
            problem = verifier.mismatch(url)
            if problem:
                raise MetaflowS3TransferError(problem, url)
        local, blob = await sink.commit()
    except BaseException as exc:
        if scout is not None:
            engine.scouted(scout)
        if checksum is not None:  # stop the HEAD, or take its failure: none left unread
            checksum.cancel()
            await asyncio.gather(checksum, return_exceptions=True)
        await asyncio.shield(sink.discard())
        raise_translated(exc, url)
    length = max(0, last - head.start + 1)
    return Fetched(head=head, offset=head.start, length=length, path=local, blob=blob)


async def head_object(
    engine: Engine, path: S3Path, url: str, etag: str | None = None, checksum: bool = False
) -> Head:
    """HEAD through the engine's transport; ``etag``: only of that version, ``checksum``:
    with the object's checksums."""
    try:
        http = await engine.lean(path.bucket, "HeadObject")
        if http is not None:

            async def one() -> dict[str, Any]:
                async with engine.slot():
                    return await http.head(path.bucket, path.key, etag, checksum)

            try:
                return Head.from_response(await retrying(engine, one), url)
            except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
                if not engine.transport.hand_over(exc, path.bucket, "HeadObject"):
                    raise
        kwargs: dict[str, Any] = {"ChecksumMode": "ENABLED"} if checksum else {}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        async with engine.slot() as client:
            return Head.from_response(
                await client.head_object(Bucket=path.bucket, Key=path.key, **kwargs), url
            )
    except botocore.exceptions.ClientError as exc:
        if etag and error_code(exc) in ("PreconditionFailed", "412"):
            raise MetaflowS3TransferError(
                f"{url}: the object changed during the download (ETag no longer {etag})", url
            ) from exc
        raise_translated(exc, url)
    except Exception as exc:
        raise_translated(exc, url)
