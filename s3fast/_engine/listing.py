"""Listings: ListObjectsV2, paginated; one prefix per call, many prefixes run in parallel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

import botocore.exceptions

from ..errors import raise_translated
from ..urls import S3Path
from .engine import Engine
from .http import LeanHttp, ProtocolSurprise, parse_listing, peek_token
from .retry import retrying


class Entry(NamedTuple):
    key: str
    size: int | None  # None for a common prefix ("directory")


@dataclass(frozen=True, slots=True)
class ListRequest:
    """One listing to make, as :func:`list_prefix` takes it (``url``: named in errors)."""

    url: str
    path: S3Path
    delimiter: str
    limit: int | None


async def _list_http(
    engine: Engine,
    http: LeanHttp,
    path: S3Path,
    delimiter: str,
    limit: int | None,
    entries: list[Entry],
) -> None:
    """Page through a listing on the lean path, retrying each page's transient
    failures (a page is idempotent: same token, same answer). The next page is asked for
    before this one is parsed (its token is found in the raw page first), so the parsing
    here overlaps the server's work on the next page."""

    def page(token: str | None) -> asyncio.Task[bytes]:
        async def one_page() -> bytes:
            async with engine.slot():
                return await http.list_page(path.bucket, path.key, delimiter, token, limit)

        return asyncio.ensure_future(retrying(engine, one_page))

    fetching = page(None)
    try:
        while True:
            body = await fetching
            ahead = None if limit else peek_token(body)
            if ahead:
                fetching = page(ahead)
                await asyncio.sleep(0)  # let it send its request before the parse below
            got, token = parse_listing(body)
            entries.extend(map(Entry._make, got))
            if token is None or (limit and len(entries) >= limit):
                del entries[limit or len(entries) :]
                return
            if token != ahead:  # not the page asked for ahead (or none was)
                fetching.cancel()
                await asyncio.gather(fetching, return_exceptions=True)
                fetching = page(token)
    finally:
        if not fetching.done():  # failed, cancelled, or a page asked for and not needed
            fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)


async def list_prefix(
    engine: Engine, path: S3Path, url: str, *, delimiter: str = "", limit: int | None = None
) -> list[Entry]:
    """Every key under ``path.key`` (objects first, then common prefixes, page by page), or
    only the first ``limit`` of them."""
    entries: list[Entry] = []
    try:
        http = await engine.lean(path.bucket, "ListObjectsV2")
        if http is not None:
            try:
                await _list_http(engine, http, path, delimiter, limit, entries)
                return entries
            except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
                if not engine.transport.hand_over(exc, path.bucket, "ListObjectsV2"):
                    raise
                entries.clear()
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
