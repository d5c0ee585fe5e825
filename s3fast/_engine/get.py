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
only broken bodies, so the two never overlap; on the lean path (``http.py``), which has
no retries of its own, this layer also retries 5xx answers and failed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from ..urls import ByteRange, S3Path, parse_content_range
from .batch import bounded_map
from .checksums import CRC32, Checksum, combined, full_object
from .engine import FIRST_DOWNLOAD_WAIT, Engine
from .http import Digest, ProtocolSurprise
from .retry import RESUMABLE, RetryClock, backoff, retrying
from .sinks import Sink, Spool

READ_CHUNK = 1 * MiB


class _ShortBody(ConnectionError):
    pass


class _LengthUnknown(MetaflowS3TransferError):
    """A response that says neither its length (Content-Length) nor its span (Content-Range):
    a chunked or close-delimited answer to an unranged GET, whose size is known only at its
    end. :func:`fetch` then asks for ranges, which carry Content-Range."""


@dataclass
class ResponseMeta:
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
    def from_response(cls, resp: dict[str, Any], url: str) -> ResponseMeta:
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
    head: ResponseMeta
    offset: int
    length: int
    path: str | None
    blob: bytes | None


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


# Given a response's head: where its body goes, and maybe a digest to feed the body.
Prepare = Callable[[ResponseMeta], Awaitable[tuple[memoryview | Spool, Digest | None]]]


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

        async def prepare_fields(
            fields: dict[str, Any],
        ) -> tuple[memoryview | Spool, Digest | None]:
            return await prepare(ResponseMeta.from_response(fields, url))

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
            head = ResponseMeta.from_response(resp, url)
            dest, digest = await prepare(head)
            whole = len(dest) == head.end + 1 - head.start
            try:
                if isinstance(dest, Spool):

                    async def read(window: memoryview, last: bool, landed: list[int]) -> None:
                        await _drain(body, window, landed, digest, last)

                    await dest.receive(read, whole, progress)
                else:
                    await _drain(body, dest, progress, digest, whole)
            finally:
                dest.release()
        finally:
            body.close()


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
        pending: asyncio.Future[ResponseMeta] | None = None,
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
        that brought them, or compute it."""
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
                value = await self.sink.checksum(start - self.base, length, algorithm)
                self.pieces[start] = (value, length)

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


class _Range:
    """One ranged GET of a :class:`Download`'s absolute bytes up to ``end``, from
    ``progress[0]`` (where a broken body resumes): checks the response's span and hands its
    body the right place in the sink."""

    __slots__ = ("download", "end", "piece", "progress")

    def __init__(self, download: Download, start: int, end: int) -> None:
        self.download = download
        self.end = end
        self.progress = [start]
        self.piece: _Piece | None = None

    async def prepare(self, head: ResponseMeta) -> tuple[memoryview | Spool, Digest | None]:
        download, at, end = self.download, self.progress[0], self.end
        if (head.start, head.end) != (at, end):
            raise MetaflowS3TransferError(
                f"{download.url}: asked for bytes {at}-{end}, "
                f"the server sent {head.start}-{head.end}",
                download.url,
            )
        verifier = download.verifier
        self.piece = piece = verifier.piece(at) if verifier is not None else None
        digest = piece.update if piece is not None else None
        return download.sink.dest(at - download.base, end + 1 - at), digest


class Download:
    """Download ``brange`` (None: all) of ``path`` into ``sink`` (see :func:`fetch`).

    A whole object, checked against its checksum, which S3 sends only with an unranged GET
    or a HEAD. An object expected to span at most two ranges is read whole with one unranged
    GET. A bigger one (by ``size``, else by the sizes this engine saw lately) is read in
    ranges while a HEAD of the same version fetches its checksum. If a big one was read
    unranged after all, its first range is read and the connection dropped (what was in
    flight is lost), and the rest goes in parallel."""

    def __init__(
        self,
        engine: Engine,
        path: S3Path,
        url: str,
        brange: ByteRange | None,
        sink: Sink,
        on_bytes: Callable[[int], None] | None = None,
        size: int | None = None,
    ) -> None:
        self.engine = engine
        self.path = path
        self.url = url
        self.brange = brange
        self.sink = sink
        self.on_bytes = on_bytes  # None once ranges are fetched again: each counts once
        self.size = size
        self.range_size = engine.config.range_size
        self.verify = brange is None and engine.config.verify_checksums
        self.ranged = False  # read in ranges from the first request on
        # set when this is the engine's first download (see _wait_for_first_download)
        self.goes_first: asyncio.Future[None] | None = None
        self.progress = [0]  # the first response's body bytes received, absolute
        self.head: ResponseMeta | None = None  # the first response's, once its body starts
        self.base = 0  # where the sink starts, absolute
        self.last = 0  # the last byte wanted, absolute
        self.verifier: _Verifier | None = None
        self.checksum: asyncio.Task[ResponseMeta] | None = None  # the HEAD bringing the checksum
        self.piece: _Piece | None = None  # the first response's body checksum
        # the ranges after the first, started as soon as the first response's head tells
        # the size (while its body still arrives)
        self.later: asyncio.Future[None] | None = None

    async def run(self) -> Fetched:
        engine, url = self.engine, self.url
        if self.verify and self.size is None and not engine.knows_sizes:
            await self._wait_for_first_download()
        self.ranged = self.verify and engine.expects_big(self.size)
        try:
            head = await self._first()
            await self._rest(head)
            local, blob = await self.sink.commit()
        except BaseException as exc:
            if self.later is not None:  # nothing may write into the sink once it is discarded
                self.later.cancel()
                await asyncio.gather(self.later, return_exceptions=True)
            if self.goes_first is not None:
                engine.end_first_download(self.goes_first)
            if self.checksum is not None:  # stop the HEAD, or take its failure: none left unread
                self.checksum.cancel()
                await asyncio.gather(self.checksum, return_exceptions=True)
            await asyncio.shield(self.sink.discard())
            raise_translated(exc, url)
        length = max(0, self.last - head.start + 1)
        return Fetched(head=head, offset=head.start, length=length, path=local, blob=blob)

    async def _wait_for_first_download(self) -> None:
        """Nothing known of sizes yet (a new client): the first download goes alone until its
        response tells a size, so the others start the way that size says (a batch of big
        objects then drops no connection). One round trip, once per engine."""
        waiting, first = self.engine.first_download()
        if first:
            self.goes_first = waiting
        else:
            with contextlib.suppress(TimeoutError):  # a slow first one holds no one for long
                await asyncio.wait_for(asyncio.shield(waiting), FIRST_DOWNLOAD_WAIT)

    async def _prepare(self, head: ResponseMeta) -> tuple[memoryview | Spool, Digest | None]:
        """The first response's head: the size, the sink, and how its body is checked."""
        engine, brange = self.engine, self.brange
        self.last = final_end(brange, head.total)
        if brange is None:
            engine.saw_size(head.total)
        if self.ranged:
            self.checksum = asyncio.ensure_future(
                head_object(engine, self.path, self.url, head.etag, True)
            )
            self.verifier = _Verifier(None, head.start, self.sink, self.checksum)
        elif self.verify:
            self.verifier = _Verifier(head.checksum if head.whole else None, head.start, self.sink)
            if head.whole and head.total > 2 * self.range_size:
                head = dataclasses.replace(head, end=self.range_size - 1)
        verifier = self.verifier
        self.piece = piece = verifier.piece(head.start) if verifier is not None else None
        await self.sink.open(max(0, self.last - head.start + 1))
        self.head, self.base = head, head.start
        self.progress[0] = head.start
        rest = split(head.end + 1, self.last, self.range_size)
        if rest and self.later is None:
            self.later = asyncio.ensure_future(self._ranges([(a, b, True) for a, b in rest]))
        return self.sink.dest(0, head.end + 1 - head.start), piece.update if piece else None

    async def _first(self) -> ResponseMeta:
        """The first request, which learns the object's size (and the first range's bytes,
        resumed where its body broke off)."""
        engine, path, url, brange = self.engine, self.path, self.url, self.brange
        prepare, progress = self._prepare, self.progress
        range_header = (
            None if self.verify and not self.ranged else first_range(brange, self.range_size)
        )
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
                        self.verify and not self.ranged,
                    )
                    break
                except botocore.exceptions.ClientError as exc:
                    # A whole-object read of an empty object: S3 refuses "bytes=0-N" with 416.
                    if (
                        brange is None
                        and range_header
                        and error_code(exc) in ("InvalidRange", "416")
                    ):
                        range_header, self.ranged = None, False
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
                    asked_ranges, self.ranged = True, self.verify
                    range_header = first_range(brange, self.range_size)
                except RESUMABLE as exc:
                    if self.head is not None:  # the body broke off: resume below
                        break
                    if self.goes_first is not None:  # its first try failed: no more waiting
                        engine.end_first_download(self.goes_first)
                    attempt += 1
                    if not await backoff(attempt, engine, clock.started, exc):
                        raise
                finally:
                    if self.verifier is not None and self.piece is not None:
                        self.verifier.took(self.piece)
                        self.piece = None
        head = self.head
        assert head is not None
        await engine.pace(progress[0] - head.start)  # max_bandwidth: the first range
        if progress[0] <= head.end:
            await self._span(progress[0], head.end, 1)
        return head

    async def _rest(self, head: ResponseMeta) -> None:
        """The ranges after the first, in parallel, each settled (checked, written) as it
        completes; all of them fetched again once if the whole does not match its checksum."""
        rest = split(head.end + 1, self.last, self.range_size)
        await self._one((head.start, head.end, False))
        if self.later is not None:  # started when the first response's head came
            await self.later
        verifier = self.verifier
        if verifier is not None and verifier.mismatch(self.url):
            # corrupted in flight, or stored so: fetch it all again once, then give up
            verifier.pieces.clear()
            verifier.streamed.clear()
            self.on_bytes = None
            await self._ranges([(head.start, head.end, True)] + [(a, b, True) for a, b in rest])
            problem = verifier.mismatch(self.url)
            if problem:
                raise MetaflowS3TransferError(problem, self.url)

    async def _ranges(self, items: list[tuple[int, int, bool]]) -> None:
        if len(items) == 1:
            await self._one(items[0])
        else:
            await bounded_map(self._one, items, self.engine.concurrency)

    async def _one(self, item: tuple[int, int, bool]) -> None:
        """Absolute bytes ``start..end``: fetched (``again``: they are not in the sink yet),
        then settled."""
        start, end, again = item
        if again:
            await self._span(start, end)
        if self.verifier is not None:
            await self.verifier.settle(start, end)
        if self.on_bytes is not None:
            self.on_bytes(end + 1 - start)

    async def _span(self, start: int, end: int, attempt: int = 0) -> None:
        """Fetch absolute bytes ``start..end`` into the sink, resuming a broken body from the
        last byte received; the verifier checksums the bytes as they land."""
        engine, url, verifier = self.engine, self.url, self.verifier
        etag = self.head.etag if self.head is not None else None
        one = _Range(self, start, end)
        progress = one.progress
        await engine.pace(end + 1 - start)  # max_bandwidth
        with RetryClock() as clock:
            while True:
                one.piece = None
                try:
                    await _exchange(
                        engine,
                        self.path,
                        url,
                        f"bytes={progress[0]}-{end}",
                        etag,
                        one.prepare,
                        progress,
                    )
                    return
                except RESUMABLE as exc:
                    attempt += 1
                    if not await backoff(attempt, engine, clock.started, exc):
                        raise MetaflowS3TransferError(
                            f"{url}: gave up after {attempt} attempts at byte {progress[0]} "
                            f"({type(exc).__name__}: {exc})",
                            url,
                        ) from exc
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) in ("PreconditionFailed", "412"):
                        raise MetaflowS3TransferError(
                            f"{url}: the object changed during the download "
                            f"(ETag no longer {etag})",
                            url,
                        ) from exc
                    raise_translated(exc, url)
                finally:
                    if verifier is not None and one.piece is not None:
                        verifier.took(one.piece)


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
    return await Download(engine, path, url, brange, sink, on_bytes, size).run()


async def head_object(
    engine: Engine, path: S3Path, url: str, etag: str | None = None, checksum: bool = False
) -> ResponseMeta:
    """HEAD through the engine's transport; ``etag``: only of that version, ``checksum``:
    with the object's checksums."""
    try:
        http = await engine.lean(path.bucket, "HeadObject")
        if http is not None:

            async def one() -> dict[str, Any]:
                async with engine.slot():
                    return await http.head(path.bucket, path.key, etag, checksum)

            try:
                return ResponseMeta.from_response(await retrying(engine, one), url)
            except (botocore.exceptions.ClientError, ProtocolSurprise) as exc:
                if not engine.transport.hand_over(exc, path.bucket, "HeadObject"):
                    raise
        kwargs: dict[str, Any] = {"ChecksumMode": "ENABLED"} if checksum else {}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        async with engine.slot() as client:
            return ResponseMeta.from_response(
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
