"""Listings: ListObjectsV2, paginated; one prefix per call, many prefixes run in parallel."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import raise_translated
from ..urls import S3Path
from .client import Engine


@dataclass(frozen=True)
class Entry:
    key: str
    size: int | None  # None for a common prefix ("directory")


async def list_prefix(
    engine: Engine, path: S3Path, url: str, *, delimiter: str = "", limit: int | None = None
) -> list[Entry]:
    """Every key under ``path.key`` (objects first, then common prefixes, page by page), or
    only the first ``limit`` of them."""
    entries: list[Entry] = []
    try:
        async with engine.slot() as client:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=path.bucket,
                Prefix=path.key,
                Delimiter=delimiter,
                PaginationConfig={"MaxItems": limit} if limit else {},
            ):
                for item in page.get("Contents", ()):
                    entries.append(Entry(item["Key"], int(item["Size"])))
                for item in page.get("CommonPrefixes", ()):
                    entries.append(Entry(item["Prefix"], None))
    except Exception as exc:
        raise_translated(exc, url)
    return entries
