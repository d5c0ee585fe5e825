"""The s3like network's shaping proxy (benchmarks/shaper.py) over real loopback sockets: every
request on a keep-alive connection waits out the latency, the bandwidth cap holds, bytes pass
through unchanged both ways, and closing either end closes the other.

Timing is asserted only as a lower bound (a loaded machine makes things slower, never faster).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from benchmarks.shaper import Config, serve

BIG = os.urandom(1_000_000)


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny HTTP/1.1 keep-alive server: ``GET /big`` answers BIG, ``PUT`` echoes the body's
    length and sha-free checksum (its sum), anything else answers ``ok``."""
    try:
        while line := await reader.readline():
            method, path = line.split()[:2]
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            if method == b"PUT":
                answer = f"{len(body)} {sum(body)}".encode()
            else:
                answer = BIG if path == b"/big" else b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[float, bytes]:
    """One request; returns (seconds to the first byte of the answer, the answer's body)."""
    t0 = time.monotonic()
    writer.write(request)
    await writer.drain()
    status = await reader.readline()
    first = time.monotonic() - t0
    assert status.startswith(b"HTTP/1.1 200"), status
    length = 0
    while (header := await reader.readline()) != b"\r\n":
        if header.lower().startswith(b"content-length:"):
            length = int(header.split(b":")[1])
    return first, await reader.readexactly(length)


async def _setup(cfg_latency: float, rate: float) -> tuple[asyncio.Server, asyncio.Server, int]:
    origin = await asyncio.start_server(_origin, "127.0.0.1", 0)
    upstream = origin.sockets[0].getsockname()[:2]
    proxy = await serve(Config(upstream, cfg_latency, rate))
    return origin, proxy, proxy.sockets[0].getsockname()[1]


async def _teardown(origin: asyncio.Server, proxy: asyncio.Server) -> None:
    proxy.close()
    await proxy.wait_closed()
    origin.close()
    await origin.wait_closed()
    await asyncio.sleep(0.05)  # let both ends of the closed connections finish closing


@pytest.mark.asyncio
async def test_every_request_on_a_keep_alive_connection_pays_the_latency() -> None:
    latency = 0.08
    origin, proxy, port = await _setup(latency, 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        firsts = []
        for path in (b"/a", b"/big", b"/b"):
            first, body = await _exchange(
                reader, writer, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path
            )
            firsts.append(first)
            assert body == (BIG if path == b"/big" else b"ok")
        payload = os.urandom(300_000)
        first, body = await _exchange(
            reader,
            writer,
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload,
        )
        assert body == f"{len(payload)} {sum(payload)}".encode()  # the upload arrived intact
        firsts.append(first)
    finally:
        writer.close()
        await writer.wait_closed()
        await _teardown(origin, proxy)
    assert all(f >= latency * 0.95 for f in firsts), firsts


@pytest.mark.asyncio
async def test_the_bandwidth_cap_holds_per_connection() -> None:
    rate = 4e6  # 1 MB at 4 MB/s: at least ~0.19 s (less the 256 KiB burst)
    origin, proxy, port = await _setup(0.0, rate)
    try:

        async def one() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                t0 = time.monotonic()
                _, body = await _exchange(reader, writer, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                assert body == BIG
                return time.monotonic() - t0
            finally:
                writer.close()
                await writer.wait_closed()

        took = await asyncio.gather(one(), one())  # two connections: each has its own bucket
    finally:
        await _teardown(origin, proxy)
    floor = (len(BIG) - 256 * 1024) / rate
    assert all(t >= floor * 0.95 for t in took), (took, floor)


@pytest.mark.asyncio
async def test_a_closed_upstream_closes_the_client_connection() -> None:
    origin, proxy, port = await _setup(0.0, 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _exchange(reader, writer, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.write_eof()  # the origin sees EOF, closes; the proxy passes that on
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
        await _teardown(origin, proxy)
