"""The lean path's cost per exchange (``s3fast._engine.http._Conn``), with no S3 server:
a loopback server answers every GET on one keep-alive connection with a canned S3-like
response (15 headers) and a 4 KiB or 16 MiB body. Prints microseconds per exchange, wall and
CPU (client and server share the process, so compare runs, not absolute figures).

    python benchmarks/conn_micro.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from s3fast._engine.http import _Conn

with contextlib.suppress(ImportError):
    import uvloop

    uvloop.install()

HEAD = (
    b"HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nContent-Length: %d\r\n"
    b'Content-Type: application/octet-stream\r\nEtag: "0123456789abcdef0123456789abcdef"\r\n'
    b"Last-Modified: Sun, 29 Nov 2026 09:00:00 GMT\r\nServer: SeaweedFS\r\n"
    b"X-Amz-Request-Id: 1234567890abcdef\r\nX-Amz-Checksum-Crc32: AAAAAA==\r\n"
    b"X-Amz-Checksum-Type: FULL_OBJECT\r\nX-Amz-Meta-Metaflow-User-Attributes: {}\r\n"
    b"X-Amz-Server-Side-Encryption: AES256\r\nX-Amz-Version-Id: null\r\n"
    b"Vary: Origin\r\nDate: Sun, 29 Nov 2026 09:00:00 GMT\r\n\r\n"
)
REQUEST = b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n"


async def exchanges(size: int, n: int) -> tuple[float, float]:
    body = os.urandom(size)
    answer = HEAD % size + body

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(30.0), "127.0.0.1", port)
    dest = bytearray(size)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await conn.head(REQUEST)
        await conn.body_into(memoryview(dest))
        conn.park()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert dest == body
    conn.close()
    server.close()
    return wall / n * 1e6, cpu / n * 1e6


def main() -> None:
    for size, n in ((4096, 20000), (16 * 2**20, 100)):
        wall, cpu = asyncio.run(exchanges(size, n))
        print(f"{size:>9} B x {n}: {wall:8.1f} us wall, {cpu:8.1f} us CPU per exchange")


if __name__ == "__main__":
    main()
