"""Uploads: one object from memory, a local file or a file object.

Below ``multipart_threshold`` one PutObject; above, a multipart upload whose parts go out
concurrently (bounded by the engine's limiter) and which is aborted on any failure or
cancellation. ``overwrite=False`` is a conditional write (``If-None-Match: *``), atomic on the
server; servers that reject the header fall back to a HEAD check.

Integrity: every PutObject and UploadPart carries the CRC32 of its bytes, which the server
checks; a multipart upload is of checksum type ``FULL_OBJECT``, completed with the CRC32 of
the whole object (the parts' CRC32s combined), so the server checks the assembled object too
and later downloads can verify it (see ``get.py``).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from ..errors import MetaflowS3Exception, MetaflowS3NotFound, error_code, raise_translated
from ..limits import MAX_PUT_OBJECT_SIZE, part_size_for
from ..urls import S3Path
from .batch import bounded_map
from .checksums import CRC32, combined
from .engine import Engine
from .http import ProtocolSurprise
from .retry import retrying

ABORT_TIMEOUT = 15.0
_PRECONDITION = ("PreconditionFailed", "412", "ConditionalRequestConflict")
_UNSUPPORTED = ("NotImplemented", "501")


@dataclass
class Source:
    """Bytes to upload: exactly one of ``data``, ``path`` or ``fileobj``."""

    data: bytes | memoryview | None = None  # a memoryview: flat, of bytes (``"B"``)
    path: str | None = None
    fileobj: io.IOBase | None = None

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.path is not None:
            return os.stat(self.path).st_size
        assert self.fileobj is not None
        self.fileobj.seek(0, os.SEEK_END)
        size = self.fileobj.tell()
        self.fileobj.seek(0)
        return size


class _Reader:
    """Reads byte spans of a source off the event loop."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.fd: int | None = None
        self.lock = asyncio.Lock()  # file objects are not safe for concurrent seek+read

    async def __aenter__(self) -> _Reader:
        if self.source.path is not None:
            loop = asyncio.get_running_loop()
            self.fd = await loop.run_in_executor(
                None, os.open, self.source.path, os.O_RDONLY | os.O_CLOEXEC
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        src = self.source
        if src.data is not None:  # a view of the caller's bytes, never a copy
            if offset == 0 and size == len(src.data):
                return src.data
            return memoryview(src.data)[offset : offset + size]
        loop = asyncio.get_running_loop()
        if self.fd is not None:
            data = await loop.run_in_executor(None, _pread_all, self.fd, size, offset)
        else:
            assert src.fileobj is not None
            fobj = src.fileobj
            async with self.lock:
                data = await loop.run_in_executor(None, _seek_read, fobj, offset, size)
        if len(data) != size:
            raise MetaflowS3Exception(
                f"{src.path or 'file object'}: expected {size} bytes at offset {offset}, "
                f"read {len(data)} (the source changed during the upload?)"
            )
        return data


def _for_botocore(body: bytes | memoryview) -> bytes:
    """botocore takes ``bytes`` bodies, not views: the fallback transport copies a view once."""
    return body if isinstance(body, bytes) else bytes(body)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _seek_read(fobj: Any, offset: int, size: int) -> bytes:
    fobj.seek(offset)
    data = fobj.read(size)
    return bytes(data) if data is not None else b""


def _extra(
    content_type: str | None, metadata: dict[str, str] | None, encryption: str | None
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if content_type:
        extra["ContentType"] = content_type
    if metadata:
        extra["Metadata"] = metadata
    if encryption:
        extra["ServerSideEncryption"] = encryption
    return extra


def _http_headers(extra: dict[str, Any]) -> dict[str, str] | None:
    """``extra`` as PutObject headers for the lean path; None if a value is not ASCII
    (botocore then sends the request)."""
    headers = {}
    if extra.get("ContentType"):
        headers["content-type"] = extra["ContentType"]
    for name, value in (extra.get("Metadata") or {}).items():
        headers[f"x-amz-meta-{name}"] = value
    if extra.get("ServerSideEncryption"):
        headers["x-amz-server-side-encryption"] = extra["ServerSideEncryption"]
    if not all((k + v).isascii() and "\n" not in k + v for k, v in headers.items()):
        return None
    return headers


async def _exists(engine: Engine, path: S3Path, url: str) -> bool:
    try:
        async with engine.slot() as client:
            await client.head_object(Bucket=path.bucket, Key=path.key)
        return True
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise_translated(exc, url)


async def put(
    engine: Engine,
    path: S3Path,
    url: str,
    source: Source,
    *,
    overwrite: bool = True,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
    encryption: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> bool:
    """Upload; returns False when ``overwrite=False`` and the key already existed.
    ``on_bytes(n)`` is called as each part (or the single PUT) of ``n`` bytes completes."""
    try:
        loop = asyncio.get_running_loop()
        size = await loop.run_in_executor(None, source.size)
        extra = _extra(content_type, metadata, encryption)
        if not overwrite and not engine.conditional_put and await _exists(engine, path, url):
            return False
        async with _Reader(source) as reader:
            if size < engine.config.multipart_threshold and size <= MAX_PUT_OBJECT_SIZE:
                await engine.pace(size)  # max_bandwidth
                cost = await engine.upload_cost(size, path.bucket, "PutObject")
                async with engine.upload_budget.hold(cost):
                    sent = await _put_single(engine, path, url, reader, size, extra, overwrite)
                if sent and on_bytes is not None:
                    on_bytes(size)
                return sent
            if not overwrite and await _exists(engine, path, url):
                return False  # skip the big upload; the complete below is conditional too
            return await _put_multipart(engine, path, url, reader, size, extra, overwrite, on_bytes)
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) and not isinstance(exc, MetaflowS3Exception):
            raise MetaflowS3NotFound(f"Local file not found: {source.path}", source.path) from exc
        raise_translated(exc, url)


async def _put_single(
    engine: Engine,
    path: S3Path,
    url: str,
    reader: _Reader,
    size: int,
    extra: dict[str, Any],
    overwrite: bool,
) -> bool:
    body = await reader.read(0, size)
    conditional = not overwrite and engine.conditional_put
    try:
        headers = _http_headers(extra)  # None: headers the lean path does not send
        http = await engine.lean(path.bucket, "PutObject") if headers is not None else None
        if http is not None and headers is not None:
            if conditional:
                headers["if-none-match"] = "*"

            async def one() -> dict[str, Any]:
                async with engine.slot(len(body)):
                    return await http.put(path.bucket, path.key, body, headers)

            try:
                await retrying(engine, one)
                return True
            except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
                if not engine.transport.hand_over(exc, path.bucket, "PutObject"):
                    raise
        async with engine.slot(len(body)) as client:
            await client.put_object(
                Bucket=path.bucket,
                Key=path.key,
                Body=_for_botocore(body),
                ChecksumAlgorithm="CRC32",
                **extra,
                **({"IfNoneMatch": "*"} if conditional else {}),
            )
        return True
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if conditional and code in _PRECONDITION:
            return False
        if conditional and code in _UNSUPPORTED:
            engine.conditional_put = False
            if await _exists(engine, path, url):
                return False
            return await _put_single(engine, path, url, reader, size, extra, True)
        raise


async def _put_multipart(
    engine: Engine,
    path: S3Path,
    url: str,
    reader: _Reader,
    size: int,
    extra: dict[str, Any],
    overwrite: bool,
    on_bytes: Callable[[int], None] | None = None,
) -> bool:
    part = part_size_for(size, engine.config.part_size)
    spans = [(n + 1, off, min(part, size - off)) for n, off in enumerate(range(0, size, part))]

    async def create() -> str:
        started = time.monotonic()
        async with engine.slot() as client:
            created = await client.create_multipart_upload(
                Bucket=path.bucket,
                Key=path.key,
                ChecksumAlgorithm="CRC32",
                ChecksumType="FULL_OBJECT",
                **extra,
            )
        upload_id = str(created["UploadId"])
        if created.get("ResponseMetadata", {}).get("RetryAttempts"):
            await _abort_orphans(engine, path, upload_id, time.monotonic() - started)
        return upload_id

    creating = asyncio.ensure_future(create())
    try:
        upload_id = await asyncio.shield(creating)
    except asyncio.CancelledError:  # the server may have made the upload already
        await asyncio.shield(_abort_once_created(engine, path, creating))
        raise
    try:

        async def send(client: Any, number: int, data: bytes | memoryview) -> dict[str, Any]:
            """UploadPart over the lean path (retrying its transient failures; botocore
            retries its own), or through botocore."""
            http = await engine.lean(path.bucket, "UploadPart")
            if http is not None:
                try:
                    return await retrying(
                        engine,
                        lambda: http.upload_part(path.bucket, path.key, upload_id, number, data),
                    )
                except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
                    if not engine.transport.hand_over(exc, path.bucket, "UploadPart"):
                        raise
            resp: dict[str, Any] = await client.upload_part(
                Bucket=path.bucket,
                Key=path.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=_for_botocore(data),
                ChecksumAlgorithm="CRC32",
            )
            return resp

        async def upload(span: tuple[int, int, int]) -> dict[str, Any]:
            number, offset, length = span
            await engine.pace(length)  # max_bandwidth
            # The part's buffers (read from a file; over TLS, encrypted) count against the
            # memory budget from before the read until the part is sent: big parts, fewer
            # at once. Taken before the request slot, so no slot waits on memory.
            cost = await engine.upload_cost(length, path.bucket, "UploadPart")
            async with engine.upload_budget.hold(cost):
                async with engine.slot(length) as client:
                    data: bytes | memoryview | None = await reader.read(offset, length)
                    assert data is not None
                    resp = await send(client, number, data)
                    data = None  # the part's buffer goes before its budget does
            crc = CRC32.decode(resp.get("ChecksumCRC32") or "")
            if crc is None:
                raise MetaflowS3Exception(f"{url}: part {number} came back without its CRC32")
            crcs[number] = crc
            if on_bytes is not None:
                on_bytes(length)
            return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32": CRC32.encode(crc)}

        crcs: dict[int, int] = {}
        parts = await bounded_map(upload, spans, engine.concurrency)
        whole = combined(CRC32, ((crcs[number], length) for number, _, length in spans))
        conditional = not overwrite and engine.conditional_put
        async with engine.slot() as client:
            try:
                await client.complete_multipart_upload(
                    Bucket=path.bucket,
                    Key=path.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    ChecksumCRC32=CRC32.encode(whole),
                    ChecksumType="FULL_OBJECT",
                    **({"IfNoneMatch": "*"} if conditional else {}),
                )
            except botocore.exceptions.ClientError as exc:
                if conditional and error_code(exc) in _PRECONDITION:
                    await _abort(engine, path, upload_id)
                    return False
                raise
        return True
    except BaseException:
        await asyncio.shield(_abort(engine, path, upload_id))
        raise


async def _abort_orphans(engine: Engine, path: S3Path, upload_id: str, took: float) -> None:
    """botocore retried CreateMultipartUpload: a try whose answer was lost may have made an
    upload too. Abort this key's uploads made in the seconds before ours (while we were
    trying), never ours; best effort."""
    try:
        async with engine.slot() as client:
            listed = await client.list_multipart_uploads(Bucket=path.bucket, Prefix=path.key)
        uploads = [u for u in listed.get("Uploads", []) if u.get("Key") == path.key]
        ours = next((u for u in uploads if u.get("UploadId") == upload_id), None)
        if ours is None:
            return
        since = ours["Initiated"] - datetime.timedelta(seconds=took + 1.0)
        for upload in uploads:
            if (
                upload["UploadId"] != upload_id
                and since <= upload["Initiated"] <= ours["Initiated"]
            ):
                await _abort(engine, path, upload["UploadId"])
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "could not look for orphaned uploads of s3://%s/%s: %s", path.bucket, path.key, exc
        )


async def _abort_once_created(engine: Engine, path: S3Path, creating: asyncio.Future[str]) -> None:
    """A cancelled CreateMultipartUpload may still make the upload: wait (bounded) for its id
    and abort it."""
    try:
        async with asyncio.timeout(ABORT_TIMEOUT):
            upload_id = await creating
    except TimeoutError:
        creating.cancel()
        return
    except Exception:  # it failed: nothing to abort
        return
    await _abort(engine, path, upload_id)


async def _abort(engine: Engine, path: S3Path, upload_id: str) -> None:
    """Abort a multipart upload, bounded in time; never raises (the caller's error wins)."""
    try:
        client = await engine.client()
        async with asyncio.timeout(ABORT_TIMEOUT):
            await client.abort_multipart_upload(
                Bucket=path.bucket, Key=path.key, UploadId=upload_id
            )
    except Exception:  # best effort; S3 lifecycle rules are the backstop
        logging.getLogger(__name__).warning(
            "could not abort multipart upload %s of s3://%s/%s", upload_id, path.bucket, path.key
        )
