"""The "floor" reference row: about the least CPU a Python S3 GET can cost.

Raw HTTP/1.1 over asyncio (uvloop when installed) ``BufferedProtocol`` connections, kept
alive, reading each body straight into a preallocated bytearray; each request signed with
botocore's ``S3SigV4Auth`` (credentials from the standard chain). No retries, no redirects,
no chunked encoding: a yardstick, not a client. Workloads: get_mem, get_big (8 MiB ranges),
small.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import quote, urlsplit

from .worker import Ctx

HEADER_MAX = 64 * 1024


class _Response(asyncio.BufferedProtocol):
    """One keep-alive connection; one request at a time, body into ``dest``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.header = bytearray(HEADER_MAX)
        self.closed = asyncio.get_running_loop().create_future()
        self._reset(memoryview(bytearray(0)))

    def _reset(self, dest: memoryview) -> None:
        self.dest = dest
        self.hlen = 0
        self.pos = 0
        self.length = -1  # unknown until the headers are in
        self.status = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("connection closed mid-response"))
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if 0 <= self.pos < self.length:
            return self.dest[self.pos : self.length]
        return memoryview(self.header)[self.hlen :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.done.done():  # bytes nobody asked for
            self._fail(ValueError("unexpected bytes on an idle connection"))
        elif self.length >= 0:
            self.pos += nbytes
        else:
            self.hlen += nbytes
            end = self.header.find(b"\r\n\r\n", 0, self.hlen)
            if end < 0:
                if self.hlen == HEADER_MAX:
                    self._fail(ValueError("response headers too large"))
                return
            self._headers(bytes(self.header[:end]))
            if self.done.done():
                return
            extra = self.header[end + 4 : self.hlen]
            if len(extra) > self.length:
                self._fail(ValueError("more bytes than Content-Length"))
                return
            self.dest[: len(extra)] = extra
            self.pos = len(extra)
        if self.length >= 0 and self.pos == self.length and not self.done.done():
            self.done.set_result(None)

    def _headers(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if self.status not in (200, 206):
            self._fail(ConnectionError(f"HTTP {self.status}: {lines[0]}"))
            return
        if "content-length" not in fields:
            self._fail(ValueError("no Content-Length"))
            return
        self.length = int(fields["content-length"])
        if self.length != len(self.dest):
            self._fail(ValueError(f"Content-Length {self.length}, expected {len(self.dest)}"))

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class Floor:
    def __init__(self, ctx: Ctx) -> None:
        import botocore.session
        from botocore.auth import S3SigV4Auth

        self.ctx = ctx
        endpoint = ctx.endpoint or f"https://s3.{ctx.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        self.base = endpoint.rstrip("/")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials found")
        self.auth = S3SigV4Auth(credentials, "s3", ctx.region)

    def request(self, key: str, rng: str | None) -> bytes:
        from botocore.awsrequest import AWSRequest

        path = f"/{self.ctx.bucket}/{quote(key, safe='/~')}"
        headers = {"Host": self.netloc}
        if rng:
            headers["Range"] = rng
        req = AWSRequest(method="GET", url=self.base + path, headers=headers)
        self.auth.add_auth(req)
        lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in req.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def connect(self) -> _Response:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Response, self.host, self.port, ssl=self.ssl)
        return proto

    async def fetch_all(self, jobs: list[tuple[str, str | None, memoryview]], conns: int) -> None:
        queue: asyncio.Queue[tuple[str, str | None, memoryview]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)

        async def worker() -> None:
            proto: _Response | None = None
            try:
                while not queue.empty():
                    key, rng, dest = queue.get_nowait()
                    if proto is None or proto.transport is None or proto.transport.is_closing():
                        proto = await self.connect()
                    proto._reset(dest)
                    assert proto.transport is not None
                    proto.transport.write(self.request(key, rng))
                    await proto.done
            finally:
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
                    await proto.closed

        await asyncio.gather(*(worker() for _ in range(min(conns, len(jobs)))))


def run_floor(ctx: Ctx) -> None:
    w = ctx.workload
    if w not in ("get_mem", "get_big", "small"):
        raise NotImplementedError(w)
    floor = Floor(ctx)
    objects = ctx.objects
    rs = ctx.range_size

    async def main() -> None:
        warm = memoryview(bytearray(ctx.spec["small"][0][1]))
        await floor.fetch_all([(ctx.warm_key, None, warm)], 1)
        bufs: dict[str, bytearray] = {}
        for _ in ctx.repeat():
            bufs = {}
            with ctx.timed():
                bufs = {key: bytearray(size) for key, size, _ in objects}
                jobs: list[tuple[str, str | None, memoryview]] = []
                for key, size, _ in objects:
                    view = memoryview(bufs[key])
                    if w == "get_big":
                        for start in range(0, size, rs):
                            end = min(start + rs, size)
                            jobs.append((key, f"bytes={start}-{end - 1}", view[start:end]))
                    else:
                        jobs.append((key, None, view))
                await floor.fetch_all(jobs, ctx.concurrency)
                del jobs, view
        ctx.check(bufs)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
