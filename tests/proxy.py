"""A fault-injecting TCP proxy on loopback, between s3fast and a real S3 server.

It understands just enough HTTP/1.1 to find where a response's headers end, so it can cut a
body after N bytes, flip one body byte, stall before answering, or answer 503 SlowDown itself. Faults apply to the
first ``times`` connections (or requests, for 503s); after that it forwards faithfully.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass


def canned(status: str, code: str) -> bytes:
    """A complete S3 error response."""
    body = f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


SLOWDOWN = canned("503 Slow Down", "SlowDown")
REDIRECT = canned("301 Moved Permanently", "PermanentRedirect")


@dataclass
class Faults:
    cut_after: int | None = None  # close after forwarding this many body bytes
    flip_at: int | None = None  # invert the byte at this offset of the first body on a connection
    close: bool = False  # add "Connection: close", so each faulted request has its own connection
    stall: float = 0.0  # seconds to hold the first response before forwarding it
    answer: bytes | None = None  # answer this (e.g. SLOWDOWN) instead of forwarding
    times: int = 0  # how many connections get the fault


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults = Faults()
        self.connections = 0
        self.injected = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self.connections = 0
        self.injected = 0

    def _take_fault(self) -> Faults | None:
        if self.injected < self.faults.times:
            self.injected += 1
            return self.faults
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        fault = self._take_fault()
        try:
            if fault is not None and fault.answer is not None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(fault.answer)
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, None),
                    self._pipe(up_reader, writer, fault),
                )
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, fault: Faults | None
    ) -> None:
        seen = b""
        body = -1  # body bytes forwarded so far (-1: still in the headers)
        while True:
            data = await src.read(65536)
            if not data:
                dst.close()
                return
            if fault is not None:
                if fault.stall:
                    await asyncio.sleep(fault.stall)
                    fault = None
                elif fault.cut_after is not None or fault.flip_at is not None or fault.close:
                    if body < 0:  # hold the head until it is complete
                        seen += data
                        end = seen.find(b"\r\n\r\n")
                        if end < 0:
                            continue
                        head, data, body = seen[: end + 2], seen[end + 4 :], 0
                        if fault.close:
                            head += b"Connection: close\r\n"
                        dst.write(head + b"\r\n")
                    if fault.flip_at is not None and 0 <= fault.flip_at - body < len(data):
                        i = fault.flip_at - body
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                    room = fault.cut_after - body if fault.cut_after is not None else len(data) + 1
                    if len(data) >= room:
                        dst.write(data[:room])
                        await dst.drain()
                        dst.transport.abort()
                        raise ConnectionResetError("cut by the proxy")
                    body += len(data)
            dst.write(data)
            await dst.drain()

    def stop(self) -> None:
        async def _close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
