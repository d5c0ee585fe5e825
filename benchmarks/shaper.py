"""A shaping TCP proxy on loopback: S3's time to first byte and per-connection bandwidth.

    python -m benchmarks.shaper --upstream 127.0.0.1:8333 --latency-ms 20 --rate-mb-s 100

prints ``listening on 127.0.0.1:<port>`` once it accepts connections, and forwards every
connection to ``--upstream`` until killed. Per connection:

- **Time to first byte.** When the client has sent something (a request, or the end of an
  upload's body) and the server's answer starts, the answer's first byte is held until
  ``latency`` after the client's last byte; the rest of that answer flows unhindered. A
  keep-alive connection's next request starts the clock again, so every request of a
  sequence pays it once (an ``Expect: 100-continue`` upload pays it twice: for the interim
  response, then after its body). A server slower than ``latency`` adds nothing more.
- **Bandwidth.** A token bucket per direction (``rate`` bytes/s, ``burst`` bytes of credit,
  full when the connection opens): what exceeds the credit waits, and the socket it came from
  is not read meanwhile, so the kernel's buffers and TCP's flow control carry the
  back-pressure to the sender.

It knows nothing of HTTP beyond "the client spoke, then the server answered", so it works
for any request/response protocol without pipelining (HTTP/1.1 clients do not pipeline). It
runs on uvloop when available, with plain protocols (no coroutine per chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any, cast

CHUNK_LIMIT = 256 * 1024  # write-buffer high-water mark before the reader is paused


class _Bucket:
    """Token bucket: ``rate`` bytes/s, at most ``burst`` bytes of credit (full at the start)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.at = time.monotonic()

    def take(self, want: int, now: float) -> int:
        """How many of ``want`` bytes may go now (and spend them)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        n = min(want, int(self.tokens))
        self.tokens -= n
        return n

    def wait(self, want: int) -> float:
        """Seconds until ``want`` bytes (at most a burst) may go."""
        return max(0.0, (min(want, self.burst) - self.tokens) / self.rate)


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it receives goes to the other side."""

    def __init__(self, link: _Link, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream  # True: the socket to the server
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.bucket = _Bucket(link.cfg.rate, link.cfg.burst)
        self._pauses: set[str] = set()  # why reading is paused: shape, latency, full, connect
        self._held: list[bytes] = []  # an answer's first bytes, held for the latency
        self._eof = False  # the other end sent EOF; forward it after what is held
        self._early: list[bytes] = []  # the client's bytes from before upstream connected
        self._shaped: memoryview | None = None  # bytes waiting for the bucket's tokens
        self.closed = False

    # -- pausing reads for several reasons at once -------------------------------------------

    def pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=CHUNK_LIMIT)
        if self._pauses:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if "connect" in self._pauses:  # uvloop reads before the pause in connection_made
            self._early.append(data)
            if self.transport is not None and self.transport.is_reading():
                self.transport.pause_reading()
            return
        link = self.link
        now = time.monotonic()
        if not self.upstream:  # the client spoke: the next answer waits for the latency
            link.asked_at = now
            link.awaiting = True
        elif link.awaiting:
            link.awaiting = False
            wait = link.asked_at + link.cfg.latency - now
            if wait > 0.0005:
                self._held.append(data)
                self.pause("latency")
                asyncio.get_running_loop().call_later(wait, self._release)
                return
        if self._held:  # (cannot happen while paused, but keep the order regardless)
            self._held.append(data)
            return
        self._forward(data, now)

    def _release(self) -> None:
        held, self._held = self._held, []
        for data in held:
            self._forward(data, time.monotonic())
        if self._eof and self._shaped is None:
            self._send_eof()
        self.resume("latency")

    def _forward(self, data: bytes | memoryview, now: float) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return
        if not self.bucket.rate:
            peer.transport.write(data)
            return
        if self._shaped is not None:  # (reading is paused meanwhile; keep the order anyway)
            self._shaped = memoryview(bytes(self._shaped) + bytes(data))
            return
        n = self.bucket.take(len(data), now)
        if n:
            peer.transport.write(data if n == len(data) else memoryview(data)[:n])
        if n < len(data):  # the rest waits for tokens; reading stops meanwhile
            self._shaped = memoryview(data)[n:]
            self.pause("shape")
            self._schedule_shaped()

    def _schedule_shaped(self) -> None:
        assert self._shaped is not None
        wait = max(self.bucket.wait(len(self._shaped)), 0.0005)
        asyncio.get_running_loop().call_later(wait, self._send_shaped)

    def _send_shaped(self) -> None:
        rest, self._shaped = self._shaped, None
        peer = self.peer
        if rest is None or peer is None or peer.transport is None or peer.closed:
            return
        n = self.bucket.take(len(rest), time.monotonic())
        if n:
            peer.transport.write(rest[:n])
        if n < len(rest):
            self._shaped = rest[n:]
            self._schedule_shaped()
            return
        if self._eof and not self._held:
            self._send_eof()
        self.resume("shape")

    def connected(self) -> None:
        """The upstream connection is up: forward what came before, read on."""
        early, self._early = self._early, []
        for data in early:
            self._forward_request(data)
        self.resume("connect")

    def _forward_request(self, data: bytes) -> None:
        self.link.asked_at = time.monotonic()
        self.link.awaiting = True
        self._forward(data, time.monotonic())

    def eof_received(self) -> bool:
        self._eof = True
        if "connect" in self._pauses:
            return True  # (sent on connect)
        if not self._held and self._shaped is None:
            self._send_eof()
        return True  # keep the socket: the other direction may still be flowing

    def _send_eof(self) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return
        if peer._eof:  # both directions are done
            peer.transport.close()
            if self.transport is not None:
                self.transport.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            peer.transport.close()

    # the other side's write buffer is full: stop reading here until it drains
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause("full")

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume("full")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            held, self._held = self._held, []
            if self._shaped is not None:
                held.insert(0, bytes(self._shaped))
                self._shaped = None
            for data in held:  # what still waits for latency or tokens: deliver it now
                peer.transport.write(data)
            peer.transport.close()  # flushes what is buffered, then closes
        self.link.sides_open -= 1


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.asked_at = 0.0
        self.awaiting = False
        self.sides_open = 2


class Config:
    def __init__(
        self,
        upstream: tuple[str, int],
        latency: float = 0.020,
        rate: float = 100e6,
        burst: float = 256 * 1024,
    ) -> None:
        self.upstream = upstream
        self.latency = latency
        self.rate = rate
        self.burst = burst

    def describe(self) -> str:
        rate = f"{self.rate / 1e6:g} MB/s" if self.rate else "unlimited"
        return (
            f"{self.latency * 1000:g} ms to first byte per request, {rate} per connection "
            "per direction"
        )


_tasks: set[asyncio.Task[None]] = set()


def _client_factory(cfg: Config) -> Any:
    loop = asyncio.get_running_loop()

    def make() -> _Side:
        link = _Link(cfg)
        client = _Side(link, upstream=False)
        client.pause("connect")
        server = _Side(link, upstream=True)
        client.peer, server.peer = server, client

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: server, *cfg.upstream)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            if client.closed and server.transport is not None:
                server.transport.close()
                return
            client.connected()
            if client._eof:
                client._send_eof()

        task = loop.create_task(connect())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return client

    return make


async def serve(cfg: Config, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(
        _client_factory(cfg), host, port, backlog=1024, reuse_address=True
    )


def parse_hostport(raw: str) -> tuple[str, int]:
    raw = raw.removeprefix("http://").rstrip("/")
    host, _, port = raw.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shaper", description=__doc__)
    p.add_argument("--upstream", required=True, help="host:port (or http://host:port)")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (default a free port)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="time to first byte, ms")
    p.add_argument(
        "--rate-mb-s", type=float, default=100.0, help="MB/s per connection per direction (0: off)"
    )
    p.add_argument("--burst-kib", type=float, default=256.0, help="token bucket depth, KiB")
    args = p.parse_args(argv)
    cfg = Config(
        parse_hostport(args.upstream),
        args.latency_ms / 1000,
        args.rate_mb_s * 1e6,
        args.burst_kib * 1024,
    )
    host, port = parse_hostport(args.listen)

    async def run() -> None:
        server = await serve(cfg, host, port)
        bound = server.sockets[0].getsockname()
        print(f"listening on {bound[0]}:{bound[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
