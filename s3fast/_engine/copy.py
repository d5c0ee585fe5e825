"""Server-side copies: one CopyObject up to 5 GiB; above it, a multipart upload whose parts
are UploadPartCopy ranges of the source (in parallel, bounded by the engine's limiter),
aborted on any failure or cancellation. Every request is pinned to the source's ETag, so a
source that changes during the copy is reported, never spliced. Content type and user metadata
go with the object, as CopyObject does by default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from ..errors import MetaflowS3TransferError, error_code, raise_translated
from ..limits import COPY_PART_SIZE, MAX_COPY_OBJECT_SIZE, part_size_for
from ..urls import S3Path
from .batch import bounded_map
from .engine import Engine
from .get import ResponseMeta, head_object
from .put import ABORT_TIMEOUT, _abort

_CHANGED = ("PreconditionFailed", "412")


async def copy_object(
    engine: Engine,
    src: S3Path,
    dst: S3Path,
    *,
    encryption: str | None = None,
    multipart_threshold: int = MAX_COPY_OBJECT_SIZE,
    part_size: int = COPY_PART_SIZE,
    on_bytes: Callable[[int], None] | None = None,
) -> ResponseMeta:
    """Copy ``src`` to ``dst`` inside S3; returns the source's head. ``on_bytes(n)`` is called
    as each part (or the whole object) is copied."""
    head = await head_object(engine, src, src.url)
    source: dict[str, Any] = {"Bucket": src.bucket, "Key": src.key}
    pin = {"CopySourceIfMatch": f'"{head.etag}"'} if head.etag else {}
    sse = {"ServerSideEncryption": encryption} if encryption else {}
    try:
        if head.total <= multipart_threshold:
            async with engine.slot() as client:
                await client.copy_object(
                    Bucket=dst.bucket, Key=dst.key, CopySource=source, **pin, **sse
                )
        else:
            await _copy_multipart(engine, source, pin, sse, dst, head, part_size, on_bytes)
            return head
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in _CHANGED:
            raise MetaflowS3TransferError(
                f"{src.url}: the object changed during the copy to {dst.url}", dst.url
            ) from exc
        raise_translated(exc, dst.url)
    except Exception as exc:
        raise_translated(exc, dst.url)
    if on_bytes is not None:
        on_bytes(head.total)
    return head


async def _copy_multipart(
    engine: Engine,
    source: dict[str, Any],
    pin: dict[str, str],
    sse: dict[str, str],
    dst: S3Path,
    head: ResponseMeta,
    preferred: int,
    on_bytes: Callable[[int], None] | None,
) -> None:
    size = head.total
    part = part_size_for(size, preferred)
    spans = [(n + 1, off, min(off + part, size) - 1) for n, off in enumerate(range(0, size, part))]
    extra: dict[str, Any] = {"Metadata": head.metadata, **sse}
    if head.content_type:
        extra["ContentType"] = head.content_type
    upload_id = await _create(engine, dst, extra)
    try:

        async def one(span: tuple[int, int, int]) -> dict[str, Any]:
            number, first, last = span
            async with engine.slot() as client:
                resp = await client.upload_part_copy(
                    Bucket=dst.bucket,
                    Key=dst.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={first}-{last}",
                    **pin,
                )
            if on_bytes is not None:
                on_bytes(last + 1 - first)
            return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        parts = await bounded_map(one, spans, engine.concurrency)
        async with engine.slot() as client:
            await client.complete_multipart_upload(
                Bucket=dst.bucket,
                Key=dst.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
    except BaseException:
        await asyncio.shield(_abort(engine, dst, upload_id))
        raise


async def _create(engine: Engine, dst: S3Path, extra: dict[str, Any]) -> str:
    """CreateMultipartUpload. Cancelled while the request is out, the upload may already
    exist on the server: wait (bounded) for the answer and abort it before re-raising."""

    async def call() -> str:
        async with engine.slot() as client:
            created = await client.create_multipart_upload(Bucket=dst.bucket, Key=dst.key, **extra)
        return str(created["UploadId"])

    task = asyncio.ensure_future(call())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError as cancelled:
        try:
            async with asyncio.timeout(ABORT_TIMEOUT):
                upload_id = await asyncio.shield(task)
        except BaseException:
            task.cancel()
        else:
            await asyncio.shield(_abort(engine, dst, upload_id))
        raise cancelled
