"""Downloads: one object (or range) into memory or a private temp file.

The first request asks for the first ``range_size`` bytes of what the caller wants; its
``Content-Range`` gives the object's size, and the rest is fetched as parallel ranged GETs
pinned to the same version (``If-Match`` on the ETag), each written at its offset. A body that
breaks mid-way is resumed from the last byte received (the SDK retries whole requests; this
layer retries only broken bodies, so the two never overlap).
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
import botocore.exceptions

from ..errors import (
    MetaflowS3TransferError,
    error_code,
    raise_translated,
)
from ..limits import MiB, split
from ..targets import Targets
from ..urls import ByteRange, S3Path, parse_content_range
from .client import Engine, bounded_map

WRITE_CHUNK = 1 * MiB

# Failures of a body stream that a ranged re-request can resume.
RESUMABLE: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


class _ShortBody(ConnectionError):
    pass


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

    @classmethod
    def from_response(cls, resp: dict[str, Any], url: str) -> Head:
        length = int(resp.get("ContentLength", 0))
        if resp.get("ContentRange"):
            start, end, total = parse_content_range(resp["ContentRange"], url)
            if end - start + 1 != length:
                raise MetaflowS3TransferError(
                    f"{url}: Content-Length {length} does not match "
                    f"Content-Range {resp['ContentRange']}",
                    url,
                )
        else:
            start, end, total = 0, length - 1, length
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
        )


@dataclass
class Fetched:
    head: Head
    offset: int
    length: int
    path: str | None
    blob: bytes | None


# --- sinks: where the bytes of one download go ---------------------------------------------


class MemorySink:
    direct = True

    def __init__(self) -> None:
        self.buf = bytearray()

    async def open(self, size: int) -> None:
        self.buf = bytearray(size)

    def put(self, offset: int, data: bytes | bytearray) -> None:
        self.buf[offset : offset + len(data)] = data

    async def write(self, offset: int, data: bytes | bytearray) -> None:  # pragma: no cover
        self.put(offset, data)

    async def commit(self) -> tuple[str | None, bytes | None]:
        return None, bytes(self.buf)

    async def discard(self) -> None:
        self.buf = bytearray()


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class FileSink:
    """A private temp file, written at offsets off the event loop, renamed into place when
    complete and removed otherwise. Space is reserved before the first byte is written."""

    direct = False

    def __init__(self, targets: Targets, url: str, tag: str = "") -> None:
        self.targets = targets
        self.url = url
        self.tag = tag
        self.fd: int | None = None
        self.path: str | None = None
        self.token: int | None = None
        self.size = 0

    async def open(self, size: int) -> None:
        directory, self.token = self.targets.reserve(size, self.url)
        self.size = size
        self.path = self.targets.new_path(directory, self.url, self.tag)
        loop = asyncio.get_running_loop()
        self.fd = await loop.run_in_executor(None, self._create, self.path + ".part", size)

    @staticmethod
    def _create(part: str, size: int) -> int:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if size:
                os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise
        return fd

    def put(self, offset: int, data: bytes | bytearray) -> None:  # pragma: no cover
        raise NotImplementedError

    async def write(self, offset: int, data: bytes | bytearray) -> None:
        assert self.fd is not None
        await asyncio.get_running_loop().run_in_executor(None, _pwrite_all, self.fd, data, offset)

    async def commit(self) -> tuple[str | None, bytes | None]:
        assert self.path is not None and self.fd is not None
        fd, self.fd = self.fd, None
        path = self.path

        def _finish() -> None:
            os.close(fd)
            os.rename(path + ".part", path)

        await asyncio.get_running_loop().run_in_executor(None, _finish)
        self._release()
        return path, None

    def _release(self) -> None:
        if self.token is not None:
            self.targets.release(self.token, self.size)
            self.token = None

    async def discard(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        if self.path is not None:
            for name in (self.path + ".part", self.path):
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
        self._release()


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


async def _drain(body: Any, sink: Sink, progress: list[int], base: int, end: int) -> None:
    """Copy a response body into ``sink``; ``progress[0]`` is the next absolute offset owed."""
    pending = bytearray()
    try:
        while progress[0] + len(pending) <= end:
            want = min(WRITE_CHUNK, end + 1 - progress[0] - len(pending))
            chunk = await body.read(want)
            if not chunk:
                break
            if sink.direct:
                sink.put(progress[0] - base, chunk)
                progress[0] += len(chunk)
                continue
            pending += chunk
            if len(pending) >= WRITE_CHUNK:
                await sink.write(progress[0] - base, pending)
                progress[0] += len(pending)
                pending = bytearray()
    except RESUMABLE:
        if pending:  # keep what did arrive; the resume starts after it
            await sink.write(progress[0] - base, pending)
            progress[0] += len(pending)
        raise
    if pending:
        await sink.write(progress[0] - base, pending)
        progress[0] += len(pending)
    if progress[0] != end + 1:
        raise _ShortBody(f"body ended at byte {progress[0]}, expected {end + 1}")


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))


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
) -> None:
    """Fetch absolute bytes ``start..end`` into ``sink`` (at ``start - base``), resuming a
    broken body from the last byte received."""
    progress = [start]
    while True:
        try:
            async with engine.slot() as client:
                kwargs: dict[str, Any] = {"Range": f"bytes={progress[0]}-{end}"}
                if etag:
                    kwargs["IfMatch"] = f'"{etag}"'
                resp = await client.get_object(Bucket=path.bucket, Key=path.key, **kwargs)
                body = resp["Body"]
                try:
                    got = Head.from_response(resp, url)
                    if (got.start, got.end) != (progress[0], end):
                        raise MetaflowS3TransferError(
                            f"{url}: asked for bytes {progress[0]}-{end}, "
                            f"the server sent {got.start}-{got.end}",
                            url,
                        )
                    await _drain(body, sink, progress, base, end)
                finally:
                    body.close()
            return
        except RESUMABLE as exc:
            attempt += 1
            if attempt >= engine.config.max_attempts:
                raise MetaflowS3TransferError(
                    f"{url}: body broke off {attempt} times; last at byte {progress[0]} "
                    f"({type(exc).__name__}: {exc})",
                    url,
                ) from exc
            await _backoff(attempt)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise MetaflowS3TransferError(
                    f"{url}: the object changed during the download (ETag no longer {etag})",
                    url,
                ) from exc
            raise_translated(exc, url)


async def fetch(
    engine: Engine, path: S3Path, url: str, brange: ByteRange | None, sink: Sink
) -> Fetched:
    """Download ``brange`` (None: all) of ``path`` into ``sink``."""
    range_size = engine.config.range_size
    progress = [0]
    broken = False
    try:
        async with engine.slot() as client:
            try:
                resp = await client.get_object(
                    Bucket=path.bucket, Key=path.key, Range=first_range(brange, range_size)
                )
            except botocore.exceptions.ClientError as exc:
                # A whole-object read of an empty object: S3 refuses "bytes=0-N" with 416.
                if brange is None and error_code(exc) in ("InvalidRange", "416"):
                    resp = await client.get_object(Bucket=path.bucket, Key=path.key)
                else:
                    raise
            body = resp["Body"]
            try:
                head = Head.from_response(resp, url)
                last = final_end(brange, head.total)
                await sink.open(max(0, last - head.start + 1))
                progress[0] = head.start
                try:
                    await _drain(body, sink, progress, head.start, head.end)
                except RESUMABLE:
                    broken = True
            finally:
                body.close()
        if broken:
            await _span(engine, path, url, sink, head.start, progress[0], head.end, head.etag, 1)
        rest = split(head.end + 1, last, range_size)
        if rest:

            async def one(span: tuple[int, int]) -> None:
                await _span(engine, path, url, sink, head.start, span[0], span[1], head.etag)

            await bounded_map(one, rest, engine.concurrency)
        local, blob = await sink.commit()
    except BaseException as exc:
        await asyncio.shield(sink.discard())
        raise_translated(exc, url)
    length = max(0, last - head.start + 1)
    return Fetched(head=head, offset=head.start, length=length, path=local, blob=blob)


async def head_object(engine: Engine, path: S3Path, url: str) -> Head:
    try:
        async with engine.slot() as client:
            resp = await client.head_object(Bucket=path.bucket, Key=path.key)
    except Exception as exc:
        raise_translated(exc, url)
    return Head.from_response(resp, url)
