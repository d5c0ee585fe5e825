"""A fault-injecting HTTP/1.1 proxy on loopback, between s3fast and a real S3 server.

It frames requests and responses (Content-Length, chunked, HEAD, 1xx) so that faults apply
per request, also on keep-alive connections. A fault can answer instead of the server (503
SlowDown, 500), reset the connection before the status line, cut a body after N bytes (reset,
or a clean close short of the announced Content-Length), flip one body byte, stall before
answering, trickle the response a few bytes at a time, go silent part-way through a body
(``pause_at``), close the connection after the response (``close``), or refuse (reset) new
connections.

A ``transform`` rewrites responses in ways HTTP/1.1 allows, to check that clients read them
right: ``"chunked"`` (every body re-sent with chunked transfer coding, extensions and a
trailer included), ``"close"`` (no Content-Length: the body ends when the proxy closes the
connection), ``"http10"`` (answered as HTTP/1.0 without keep-alive; a request that comes on
the connection afterwards is counted as ``"reused after HTTP/1.0"`` and refused),
``"continue"`` (interim ``100 Continue`` and ``103 Early Hints`` answers first), ``"fold"``
(headers folded over several lines, obsolete but valid). ``request_body_bytes`` counts the
request body bytes the proxy received, ``botocore_requests`` the requests botocore sent (by
their User-Agent; s3fast's own transport sends none).

Explicit faults (:class:`Faults`) go to the first ``times`` matching requests (connections,
for ``refuse``), or to every matching request for ``seconds`` after :meth:`FaultProxy.set`.
Random faults (:class:`Chaos`) go to each request with probability ``rate``, drawn from a
seeded generator. ``counts`` says what was injected, by kind (an explicit body fault counts
when taken, a random one when it fires).
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def canned(status: str, code: str) -> bytes:
    """A complete S3 error response."""
    body = f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


SLOWDOWN = canned("503 Slow Down", "SlowDown")
INTERNAL = canned("500 Internal Server Error", "InternalError")
REDIRECT = canned("301 Moved Permanently", "PermanentRedirect")
TRICKLE_CHUNK = 512  # bytes per write when trickling


@dataclass
class Faults:
    cut_after: int | None = None  # stop after forwarding this many body bytes
    clean: bool = False  # ... closing cleanly (FIN, a short body) instead of a reset
    flip_at: int | None = None  # invert the body byte at this offset
    close: bool = False  # add "Connection: close" and close after the response
    stall: float = 0.0  # seconds to hold the response before forwarding it
    trickle: float = 0.0  # seconds between TRICKLE_CHUNK-byte writes of the response ...
    trickle_for: int = 64 * 1024  # ... for this many bytes, then at full speed
    trickle_chunk: int = TRICKLE_CHUNK  # bytes per write when trickling
    pause_at: int | None = None  # go silent for ``stall`` seconds after this many body bytes
    transform: str = ""  # "chunked", "close", "http10", "continue" or "fold" (see above)
    answer: bytes | None = None  # answer this (e.g. SLOWDOWN) instead of forwarding
    reset: bool = False  # reset the connection before the status line (the server did answer)
    refuse: bool = False  # reset new connections as soon as they are accepted
    times: int = 0  # how many requests (connections, for refuse) get the fault
    seconds: float = 0.0  # or: every matching request for this long after set()
    match: str = ""  # only requests whose target (path and query) contains this

    @property
    def kind(self) -> str:
        if self.answer is not None:
            return "answer " + self.answer.split(b" ", 2)[1].decode()
        if self.transform:
            return self.transform
        if self.pause_at is not None:
            return "pause"
        for name in ("refuse", "reset", "stall", "trickle"):
            if getattr(self, name):
                return name
        if self.flip_at is not None:
            return "flip"
        if self.cut_after is not None:
            return "truncate" if self.clean else "cut"
        return "none"


CHAOS_KINDS = ("reset", "cut", "truncate", "slowdown", "error500", "stall", "trickle", "refuse")


@dataclass
class Chaos:
    """Random faults: each request (each new connection, for ``refuse``) gets one with
    probability ``rate``, of a kind drawn uniformly from ``kinds``; with probability
    ``burst_rate`` a request starts ``burst_seconds`` of 503s for every request (a storm).
    Seeded: the same seed, the same draws."""

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = CHAOS_KINDS
    stall: float = 2.0  # longer than the client's read timeout
    trickle: float = 0.002
    burst_rate: float = 0.0
    burst_seconds: float = 0.5
    flip_rate: float = 0.0  # share of requests whose body gets one byte flipped
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> tuple[str, Faults] | None:
        rng = self.rng
        if self.flip_rate and rng.random() < self.flip_rate:
            return "flip", Faults(flip_at=-1)
        if self.burst_rate and rng.random() < self.burst_rate:
            return "burst", Faults(answer=SLOWDOWN)
        if rng.random() >= self.rate:
            return None
        kind = rng.choice([k for k in self.kinds if k != "refuse"] or ["reset"])
        faults = {
            "reset": Faults(reset=True),
            "cut": Faults(cut_after=-1),
            "truncate": Faults(cut_after=-1, clean=True),
            "slowdown": Faults(answer=SLOWDOWN),
            "error500": Faults(answer=INTERNAL),
            "stall": Faults(stall=self.stall),
            "trickle": Faults(trickle=self.trickle),
        }[kind]
        return kind, faults

    def refuse(self) -> bool:
        return "refuse" in self.kinds and self.rng.random() < self.rate / len(self.kinds)


class _Framing(Exception):
    pass


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _copy_chunked(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter | None,
    seen: Callable[[int], None] | None = None,
) -> None:
    """Forward (or, with ``dst`` None, drop) one chunked body, framing included."""
    while True:
        line = await src.readuntil(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        data = await src.readexactly(size + 2) if size else b""
        if seen is not None:
            seen(size)
        if dst is not None:
            dst.write(line + data)
        if not size:
            while True:  # trailers, then the empty line
                trailer = await src.readuntil(b"\r\n")
                if dst is not None:
                    dst.write(trailer)
                if trailer == b"\r\n":
                    break
            if dst is not None:
                await dst.drain()
            return
        if dst is not None:
            await dst.drain()


async def _copy_exact(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter | None,
    length: int,
    seen: Callable[[int], None] | None = None,
) -> None:
    while length > 0:
        data = await src.read(min(length, 65536))
        if not data:
            raise _Framing("the body ended early")
        length -= len(data)
        if seen is not None:
            seen(len(data))
        if dst is not None:
            dst.write(data)
            await dst.drain()


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults = Faults()
        self.also: list[tuple[Faults, list[int]]] = []
        self.chaos: Chaos | None = None
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()  # every socket, closed on stop()
        self.requests = 0
        self.request_body_bytes = 0  # request body bytes received from clients
        self.botocore_requests = 0  # requests whose User-Agent is botocore's
        self.injected = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()  # "GET whole", "HEAD", ...
        self.in_flight = 0  # requests received and not yet answered in full
        self.peak = 0  # the most in flight at once since set() (or reset_peak())
        self._taken = 0
        self._set_at = time.monotonic()
        self._burst_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20), self._loop
        )
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(
        self, faults: Faults, chaos: Chaos | None = None, also: tuple[Faults, ...] = ()
    ) -> None:
        """Inject ``faults`` (and random ``chaos``) from now on; counters start again.
        ``also``: more explicit faults (by ``match`` and ``times``), for requests that
        ``faults`` does not take."""
        self.faults = faults
        self.chaos = chaos
        self.also = [(f, [0]) for f in also]
        self.connections = self.requests = self.injected = self._taken = 0
        self.request_body_bytes = self.botocore_requests = 0
        self.peak = self.in_flight
        self.counts = collections.Counter()
        self.kinds = collections.Counter()
        self._set_at = time.monotonic()
        self._burst_until = 0.0

    def reset_peak(self) -> None:
        self.peak = self.in_flight

    def _begin(self, open_requests: list[int]) -> None:
        open_requests[0] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def _end(self, open_requests: list[int]) -> None:
        if open_requests[0] > 0:
            open_requests[0] -= 1
            self.in_flight -= 1

    def _count(self, kind: str) -> None:
        self.injected += 1
        self.counts[kind] += 1

    def _explicit(self, target: str | None) -> bool:
        f = self.faults
        if f.match and (target is None or f.match not in target):
            return False
        if f.seconds and time.monotonic() < self._set_at + f.seconds:
            return True
        if self._taken < f.times:
            self._taken += 1
            return True
        return False

    def _also(self, target: str) -> Faults | None:
        for f, taken in self.also:
            if f.match in target and taken[0] < f.times:
                taken[0] += 1
                return f
        return None

    def _refuse(self) -> bool:
        if self.faults.refuse and self._explicit(None):
            self._count("refuse")
            return True
        if self.chaos is not None and self.chaos.refuse():
            self._count("refuse")
            return True
        return False

    def _take_fault(self, target: str, flippable: bool = True) -> Faults | None:
        """The fault for one request, counted (body faults are counted when they fire).
        Random byte flips go only to ``flippable`` requests: whole-object GETs, the reads a
        checksum covers (a flipped listing or range is corruption nothing can catch)."""
        if not self.faults.refuse and self._explicit(target):
            fault = self.faults
        elif (more := self._also(target)) is not None:
            fault = more
        elif time.monotonic() < self._burst_until:
            fault = Faults(answer=SLOWDOWN)
            self.counts["burst 503"] += 1
            self.injected += 1
            return fault
        elif self.chaos is not None and (drawn := self.chaos.draw()) is not None:
            kind, fault = drawn
            if kind == "flip" and not flippable:
                return None
            if kind == "burst":
                self._burst_until = time.monotonic() + self.chaos.burst_seconds
        else:
            return None
        if (fault.cut_after or 0) >= 0 and (fault.flip_at or 0) >= 0:
            self._count(fault.kind)  # random cuts and flips are counted when they fire
        return fault

    def request_head(self, head: bytes, method: str, target: str, headers: dict[str, str]) -> bytes:
        """The request head sent upstream (``headers`` are lower-cased); a subclass may
        rewrite it. Headers the client signed must stay as they are."""
        return head

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self._refuse():
            writer.transport.abort()
            return
        up_writer: asyncio.StreamWriter | None = None
        responder: asyncio.Future[None] | None = None
        pending: asyncio.Queue[tuple[str, Faults | None]] = asyncio.Queue()
        open_requests = [0]
        done = [False]  # an HTTP/1.0 answer ended the connection
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                if done[0]:
                    self.counts["reused after HTTP/1.0"] += 1
                    return
                self.requests += 1
                self._begin(open_requests)
                line, headers = _parse_head(head)
                if "botocore" in headers.get("user-agent", "").lower():
                    self.botocore_requests += 1
                method, _, rest = line.partition(" ")
                target = rest.rpartition(" ")[0]
                flippable = method == "GET" and "range" not in headers and "?" not in target
                ranged = " ranged" if "range" in headers else " whole" if flippable else ""
                self.kinds[method + ranged] += 1
                fault = self._take_fault(target, flippable)
                if fault is not None and fault.answer is not None:
                    if "100-continue" not in headers.get("expect", ""):
                        await asyncio.wait_for(self._body(reader, None, headers, self._seen), 10)
                    writer.write(fault.answer)
                    await writer.drain()
                    return
                if up_writer is None:
                    up_reader, up_writer = await asyncio.open_connection(
                        "127.0.0.1", self.upstream_port, limit=1 << 20
                    )
                    self._writers.add(up_writer)
                    responder = asyncio.ensure_future(
                        self._responses(up_reader, writer, pending, open_requests, done)
                    )
                up_writer.write(self.request_head(head, method, target, headers))
                pending.put_nowait((method, fault))
                await self._body(reader, up_writer, headers, self._seen)
        except (ConnectionError, asyncio.IncompleteReadError, _Framing, TimeoutError):
            pass
        finally:
            if responder is not None:
                if not responder.done():
                    await asyncio.wait([responder], timeout=0.05)
                responder.cancel()
                await asyncio.gather(responder, return_exceptions=True)
            if up_writer is not None:
                up_writer.transport.abort()
                self._writers.discard(up_writer)
            writer.close()
            self._writers.discard(writer)
            while open_requests[0]:
                self._end(open_requests)

    def _seen(self, n: int) -> None:
        self.request_body_bytes += n

    @staticmethod
    async def _body(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter | None,
        headers: dict[str, str],
        seen: Callable[[int], None] | None = None,
    ) -> None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await _copy_chunked(src, dst, seen)
        else:
            await _copy_exact(src, dst, int(headers.get("content-length") or 0), seen)

    async def _responses(
        self,
        up: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: asyncio.Queue[tuple[str, Faults | None]],
        open_requests: list[int],
        done: list[bool],
    ) -> None:
        try:
            while True:
                try:
                    head = await up.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    writer.close()
                    return
                line, headers = _parse_head(head)
                status = int(line.split(" ", 2)[1])
                if 100 <= status < 200:
                    writer.write(head)
                    await writer.drain()
                    continue
                method, fault = await pending.get()
                if fault is not None and fault.reset:
                    writer.transport.abort()
                    return
                if fault is not None and fault.stall:
                    await asyncio.sleep(fault.stall)
                if fault is not None and fault.close:
                    head = head[:-2] + b"Connection: close\r\n\r\n"
                if fault is not None and fault.transform:
                    if not await self._transformed(up, writer, head, method, status, fault, done):
                        return
                    self._end(open_requests)
                    continue
                if method == "HEAD" or status in (204, 304):
                    length: int | None = 0
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    length = None
                elif "content-length" in headers:
                    length = int(headers["content-length"])
                else:
                    length = -1  # until the server closes
                body_fault = fault is not None and (
                    fault.trickle
                    or fault.cut_after is not None
                    or fault.flip_at is not None
                    or fault.pause_at is not None
                )
                if fault is None or not body_fault or length is None or length < 0:
                    writer.write(head)
                    if length is None:
                        await _copy_chunked(up, writer)
                    elif length > 0:
                        await _copy_exact(up, writer, length)
                    elif length < 0:
                        while data := await up.read(65536):
                            writer.write(data)
                    await writer.drain()
                    self._end(open_requests)
                    if fault is not None and fault.close:
                        writer.close()
                        return
                    continue
                if not await self._faulty_body(up, writer, head, length, fault):
                    return
                self._end(open_requests)
                if fault.close:
                    writer.close()
                    return
        except (ConnectionError, _Framing):
            writer.transport.abort()

    async def _faulty_body(
        self,
        up: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        length: int,
        fault: Faults,
    ) -> bool:
        """Forward one response with a body fault; False once the connection is finished."""
        rng = self.chaos.rng if self.chaos is not None else random.Random(0)
        cut = fault.cut_after
        if cut is not None and cut < 0:  # chaos: somewhere in the body
            cut = rng.randrange(length) if length else None
        if fault.cut_after is not None and cut is None:  # no body to cut: reset instead
            if fault.cut_after < 0:
                self._count("reset")
            writer.transport.abort()
            return False
        flip = fault.flip_at
        if flip is not None and flip < 0:
            flip = rng.randrange(length) if length else None
        if cut is not None and cut >= length:
            cut = None
        if flip is not None and flip >= length:
            flip = None
        if cut is not None and fault.cut_after is not None and fault.cut_after < 0:
            self._count(fault.kind)
        if flip is not None and fault.flip_at is not None and fault.flip_at < 0:
            self._count("flip")
        step = fault.trickle_chunk if fault.trickle else 65536
        out = bytearray(head)
        sent = 0
        end = length if cut is None else cut
        pause = fault.pause_at
        while True:
            if pause is not None and sent >= pause:
                pause = None
                self._count("pause")
                await asyncio.sleep(fault.stall)
            if fault.trickle and out and sent < fault.trickle_for:
                for i in range(0, len(out), step):
                    writer.write(bytes(out[i : i + step]))
                    await writer.drain()
                    await asyncio.sleep(fault.trickle)
            else:
                writer.write(bytes(out))
                await writer.drain()
            if sent >= end:
                break
            slow = fault.trickle and sent < fault.trickle_for
            want = min(step if slow else 65536, end - sent)
            if pause is not None and pause > sent:
                want = min(want, pause - sent)
            data = await up.read(want)
            if not data:
                raise _Framing("the body ended early")
            out = bytearray(data)
            if flip is not None and sent <= flip < sent + len(data):
                out[flip - sent] ^= 0xFF
            sent += len(data)
        if cut is None:
            return True
        if fault.clean:
            writer.close()
        else:
            writer.transport.abort()
        return False

    async def _transformed(
        self,
        up: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        method: str,
        status: int,
        fault: Faults,
        done: list[bool],
    ) -> bool:
        """Forward one response rewritten by ``fault.transform``; False once the connection
        is finished."""
        line, headers = _parse_head(head)
        fields = [ln for ln in head.decode("latin-1").split("\r\n")[1:] if ln]
        if method == "HEAD" or status in (204, 304):
            length: int | None = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            length = None
        else:
            length = int(headers.get("content-length", "-1"))
        body = bytearray()  # read whole (test objects are small enough), then re-sent
        if length is None:
            while True:
                size_line = await up.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if not size:
                    while await up.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                body += (await up.readexactly(size + 2))[:-2]
        elif length > 0:
            body = bytearray(await up.readexactly(length))
        elif length < 0:
            while data := await up.read(65536):
                body += data
        has_body = not (method == "HEAD" or status in (204, 304))
        framing = ("content-length", "transfer-encoding", "connection", "keep-alive")
        kept = [f for f in fields if f.split(":", 1)[0].strip().lower() not in framing]
        kind = fault.transform
        close = False
        if kind == "chunked" and has_body:
            out = "\r\n".join([line, *kept, "Transfer-Encoding: chunked", "", ""]).encode()
            step = 7001  # odd-sized chunks, with an extension on each and a trailer at the end
            for at in range(0, len(body), step):
                piece = body[at : at + step]
                out += f"{len(piece):x};piece={at}\r\n".encode() + piece + b"\r\n"
            out += b"0\r\nX-Trailer: done\r\n\r\n"
        elif kind == "close" and has_body:
            out = "\r\n".join([line, *kept, "Connection: close", "", ""]).encode() + body
            close = True
        elif kind == "http10":
            rest = line.partition(" ")[2]
            length_field = [] if not has_body else [f"Content-Length: {len(body)}"]
            if method == "HEAD" and "content-length" in headers:
                length_field = [f"Content-Length: {headers['content-length']}"]
            out = "\r\n".join(["HTTP/1.0 " + rest, *kept, *length_field, "", ""]).encode() + body
            done[0] = True  # an HTTP/1.0 server without keep-alive: nothing more here
        elif kind == "continue":
            interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            out = interim + head + body
        elif kind == "fold":
            folded = []
            for f in fields:
                name, _, value = f.partition(":")
                value = value.strip()
                if name.lower() in ("etag", "last-modified", "content-type") and " " in value:
                    first, _, second = value.partition(" ")
                    folded += [f"{name}: {first}", f"\t {second}"]
                elif name.lower() == "etag":
                    folded += [f"{name}:", f"  {value}"]
                else:
                    folded.append(f)
            folded += ["X-Folded: one", " two", "\tthree"]
            out = "\r\n".join([line, *folded, "", ""]).encode() + body
        else:
            out = head + body
        writer.write(bytes(out))
        await writer.drain()
        if close:
            writer.close()
            return False
        if done[0]:
            await asyncio.sleep(0.2)  # a lazy close: a client that reuses it is seen
            writer.close()
            return False
        return True

    def stop(self) -> None:
        async def _close() -> None:
            assert self._server is not None
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # connections still open
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for writer in self._writers:
                writer.transport.abort()
            self._writers.clear()
            await asyncio.sleep(0)  # let the transports finish closing

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
