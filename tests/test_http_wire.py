"""The lean path (HTTP/1.1) against responses that HTTP/1.1 allows and S3 servers (or what
stands between them and the client) send: chunked and close-delimited bodies, HTTP/1.0
answers, interim 1xx answers, folded headers, slow and stalled bodies; ``Expect:
100-continue`` on big uploads; IPv6 literal endpoints. Every download must come back
byte-exact on both transports, and the lean one must not lean on botocore to get there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3AccessDenied,
    MetaflowS3Exception,
    S3GetObject,
    TransferConfig,
)
from s3fast._engine import http, sinks
from s3fast._engine.http import ProtocolSurprise, _Conn
from s3fast.limits import KiB, MiB
from s3fast.testing import READER, SeaweedFS

from .conftest import Server, _bucket_on, self_signed
from .proxy import INTERNAL, FaultProxy, Faults, canned

TRANSPORTS = ["http", "botocore"]
TRANSFORMS = ["chunked", "close", "http10", "continue", "fold"]


@pytest.fixture
def objs(seaweed_bucket: str, seaweed: Server) -> dict[str, bytes]:
    return seaweed.seed(
        seaweed_bucket,
        {
            "small": os.urandom(40 * KiB + 3),
            "dir/a": os.urandom(1000),
            "dir/b": b"",
            "large": os.urandom(MiB + 777),  # five 256 KiB ranges
        },
    )


def _s3(bucket: str, proxy: FaultProxy, transport: str, **cfg: object) -> S3:
    config = TransferConfig(
        **{"transport": transport, "range_size": 256 * KiB, "max_concurrency": 4, **cfg}  # type: ignore[arg-type]
    )
    return S3(s3root=f"s3://{bucket}", endpoint_url=proxy.url, config=config)


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_downloads_are_exact_through_each_framing(
    seaweed_bucket: str,
    objs: dict[str, bytes],
    proxy: FaultProxy,
    transform: str,
    transport: str,
) -> None:
    proxy.set(Faults(transform=transform, seconds=3600))
    with _s3(seaweed_bucket, proxy, transport) as s3:
        for key in ("small", "large", "dir/a", "dir/b"):
            assert s3.get(key, in_memory=True).blob == objs[key], key
            assert _read(s3.get(key).path) == objs[key], key
        got = s3.get_many(["small", "large", "dir/a"], in_memory=True)
        assert [o.blob for o in got] == [objs["small"], objs["large"], objs["dir/a"]]
        ranged = s3.get_many([S3GetObject("large", 1000, 300 * KiB)])
        assert _read(ranged[0].path) == objs["large"][1000 : 1000 + 300 * KiB]
        listed = {o.key: o.size for o in s3.list_recursive()}
        assert listed == {k: len(v) for k, v in objs.items()}
        paths = sorted(o.key for o in s3.list_paths())
        assert paths == ["dir", "large", "small"]
        for key in ("small", "large", "dir/b"):
            info = s3.info(key)
            assert info.size == len(objs[key]) and info.etag, key
        missing = s3.info("nope", return_missing=True)  # a 404 (a HEAD: no body)
        assert not missing.exists
        assert s3.get("nope", return_missing=True).exists is False  # a 404 with a body
    assert proxy.injected > 0
    if transport == "http":
        assert proxy.botocore_requests == 0  # no request was left to botocore
    assert proxy.counts["reused after HTTP/1.0"] == 0


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_uploads_through_each_framing(
    seaweed_bucket: str, proxy: FaultProxy, transform: str
) -> None:
    big, small = os.urandom(3 * MiB + 5), os.urandom(10 * KiB)
    proxy.set(Faults(transform=transform, seconds=3600))
    with _s3(seaweed_bucket, proxy, "http") as s3:
        s3.put("big", big)  # Expect: 100-continue
        s3.put("small", small)
        proxy.set(Faults())
        assert s3.get("big", in_memory=True).blob == big
        assert s3.get("small", in_memory=True).blob == small
    assert proxy.botocore_requests == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_slow_body_is_not_a_timeout(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, transport: str
) -> None:
    """A body trickled over ~3 s with gaps of 0.3 s: longer than read_timeout in all, but
    never silent that long, so it is not a timeout (read_timeout is not a deadline)."""
    proxy.set(Faults(trickle=0.3, trickle_chunk=4 * KiB, trickle_for=10**9, times=1))
    with _s3(seaweed_bucket, proxy, transport, read_timeout=1.5) as s3:
        assert s3.get("small", in_memory=True).blob == objs["small"]
    assert proxy.counts["trickle"] == 1
    assert proxy.requests == 1  # not timed out, nor resumed


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("transform", ["", "chunked", "close"])
def test_file_downloads_span_several_receive_windows(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy, transform: str, transport: str
) -> None:
    """A download into a file is received a window at a time (``sinks.WINDOW``) and written
    as each fills: one body over several windows, ranges that do not line up with them, and
    a ranged read, through each framing (a chunked or close-delimited body is parsed, so its
    chunks straddle the windows' ends), are exact."""
    window = sinks.WINDOW
    blob = os.urandom(2 * window + window // 2 + 3)
    seaweed.seed(seaweed_bucket, {"multi": blob})
    proxy.set(Faults(transform=transform, seconds=3600))
    with _s3(seaweed_bucket, proxy, transport, range_size=8 * MiB) as s3:
        assert _read(s3.get("multi").path) == blob  # one response, three windows
        part = s3.get_many([S3GetObject("multi", window - 5, window + 10)])
        assert _read(part[0].path) == blob[window - 5 : 2 * window + 5]
    with _s3(seaweed_bucket, proxy, transport, range_size=window + 1000) as s3:
        assert _read(s3.get("multi").path) == blob  # ranges straddling the windows
    assert proxy.injected > 0 or not transform


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("clean", [False, True], ids=["reset", "short"])
def test_a_file_download_broken_mid_window_resumes_after_what_landed(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy, transport: str, clean: bool
) -> None:
    """A body that breaks off inside its second window: what landed in that window is
    written, and the body resumes after it (one more request, for the rest), not from the
    window's start nor the object's."""
    window = sinks.WINDOW
    blob = os.urandom(3 * window + 11)
    seaweed.seed(seaweed_bucket, {"broken": blob})
    asked: list[str] = []
    record = proxy.request_head

    def request_head(head: bytes, method: str, target: str, headers: dict[str, str]) -> bytes:
        asked.append(headers.get("range", ""))
        return record(head, method, target, headers)

    proxy.request_head = request_head  # type: ignore[method-assign]
    cut = window + 300 * KiB + 7
    proxy.set(Faults(cut_after=cut, clean=clean, times=1))
    config = {"range_size": 8 * MiB, "verify_checksums": False}
    with _s3(seaweed_bucket, proxy, transport, **config) as s3:
        obj = s3.get_many([S3GetObject("broken", 0, len(blob))])[0]
        assert _read(obj.path) == blob
    assert proxy.counts["truncate" if clean else "cut"] == 1
    assert len(asked) == 2, asked
    resumed_at = int(asked[1].removeprefix("bytes=").split("-")[0])
    assert window < resumed_at <= cut  # after the first window: what landed was kept


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stalled_body_times_out_and_resumes(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, transport: str
) -> None:
    proxy.set(Faults(pause_at=100 * KiB, stall=4.0, times=1))
    with _s3(seaweed_bucket, proxy, transport, read_timeout=1.0, max_concurrency=1) as s3:
        assert s3.get("large", in_memory=True).blob == objs["large"]
        assert s3.stats.retries >= 1
    assert proxy.counts["pause"] == 1


def test_retry_time_outlasts_timed_out_attempts() -> None:
    """By default a request that times out is retried: the retry budget holds every attempt
    timing out once."""
    cfg = TransferConfig()
    assert cfg.max_retry_time >= cfg.max_attempts * cfg.read_timeout


def test_a_refused_big_upload_with_expect(
    seaweed_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big PutObject that the server refuses fails with the server's error, at once.
    (SeaweedFS answers ``Expect: 100-continue`` with 100 even for a request it refuses, and
    reads the whole body before it says 403; the next test has an answer that comes first.)"""
    for name, value in READER.env().items():
        monkeypatch.setenv(name, value)
    proxy.set(Faults())
    with _s3(seaweed_bucket, proxy, "http", max_attempts=1) as s3:
        with pytest.raises(MetaflowS3AccessDenied):
            s3.put("denied", os.urandom(4 * MiB))
    assert proxy.requests == 1 and proxy.botocore_requests == 0


def test_an_answer_without_continue_stops_a_big_upload(
    seaweed_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``Expect: 100-continue``, a 403 that comes before the body (here from the proxy,
    which answers without reading it) means the body is never sent."""
    monkeypatch.setattr(http, "CONTINUE_WAIT", 30.0)
    proxy.set(Faults(answer=canned("403 Forbidden", "AccessDenied"), times=1, match="denied"))
    with _s3(seaweed_bucket, proxy, "http", max_attempts=1) as s3:
        with pytest.raises(MetaflowS3AccessDenied):
            s3.put("denied", os.urandom(2 * MiB))
    assert proxy.injected == 1 and proxy.request_body_bytes == 0


@pytest.fixture
def moto_bucket(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _bucket_on(moto_server, monkeypatch)


def test_big_uploads_wait_for_continue_on_moto(moto_bucket: str) -> None:
    """moto answers ``Expect: 100-continue`` too (twice, in fact)."""
    bucket = moto_bucket
    data = os.urandom(3 * MiB)
    with S3(s3root=f"s3://{bucket}", config=TransferConfig(transport="http")) as s3:
        s3.put("big", data)
        assert s3.get("big", in_memory=True).blob == data


# --- the connection on its own, against canned answers on loopback -------------------------


class _Canned:
    """A loopback server that answers each request with the next canned bytes (each a list of
    pieces, written ``gap`` seconds apart), then closes if ``close``."""

    def __init__(
        self,
        answers: list[list[bytes]],
        gap: float = 0.0,
        close: bool = False,
        host: str = "127.0.0.1",
    ):
        self.answers = answers
        self.gap = gap
        self.close = close
        self.host = host
        self.requests: list[bytes] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        if self.handlers:  # each ends when its client goes
            await asyncio.wait(self.handlers, timeout=5)
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            for answer in self.answers:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                for piece in answer:
                    writer.write(piece)
                    await writer.drain()
                    if self.gap:
                        await asyncio.sleep(self.gap)
            if self.close:
                writer.close()
            else:
                await reader.read()  # until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _conn(port: int, read_timeout: float = 5.0) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(read_timeout), "127.0.0.1", port)
    return conn


REQUEST = b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.asyncio
async def test_parser_chunked_body_and_folded_headers() -> None:
    body = os.urandom(10000)
    chunked = b"".join(
        f"{len(body[i : i + 3000]):x};ext=1\r\n".encode() + body[i : i + 3000] + b"\r\n"
        for i in range(0, len(body), 3000)
    )
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag:\r\n "abc"\r\n'
        b"X-Long: one\r\n\ttwo\r\n  three\r\n\r\n" + chunked + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    async with _Canned([[answer[:50], answer[50:1000], answer[1000:]], [answer]]) as port:
        conn = await _conn(port)
        try:
            for _ in range(2):  # the connection is reused for a second exchange
                status, headers = await conn.head(REQUEST)
                assert status == 200 and conn.framing == "chunked"
                assert headers["etag"] == '"abc"'
                assert headers["x-long"].split() == ["one", "two", "three"]
                dest = bytearray(len(body))
                assert await conn.body_into(memoryview(dest)) == len(body)
                assert dest == body and conn.finished
                conn.park()
        finally:
            conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [9999, 10001])
async def test_parser_a_chunked_body_of_the_wrong_length_is_an_error(size: int) -> None:
    body = os.urandom(size)
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    async with _Canned([[answer]]) as port:
        conn = await _conn(port)
        try:
            await conn.head(REQUEST)
            with pytest.raises(ConnectionError):
                await conn.body_into(memoryview(bytearray(10000)))
            if size > 10000:
                assert not conn.finished  # the rest was not read: not reusable
        finally:
            conn.close()


@pytest.mark.asyncio
async def test_parser_close_delimited_and_http10() -> None:
    body = os.urandom(5000)
    async with _Canned([[b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", body]], close=True) as port:
        conn = await _conn(port)
        try:
            await conn.head(REQUEST)
            assert conn.framing == "close"
            dest = bytearray(len(body))
            await conn.body_into(memoryview(dest))
            assert dest == body and not conn.finished  # the end was the connection's end
        finally:
            conn.close()
    answers = [
        [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"],
    ]
    for answer, reusable in zip(answers, (False, True), strict=True):
        async with _Canned([answer]) as port:
            conn = await _conn(port)
            try:
                await conn.head(REQUEST)
                assert await conn.small_body(100) == b"ok"
                assert conn.finished is reusable
            finally:
                conn.close()


@pytest.mark.asyncio
async def test_parser_read_timeout_is_between_bytes() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"
    # eight bytes 0.25 s apart: 2 s in all, never silent for 1 s
    async with _Canned([[head] + [b"x"] * 8], gap=0.25) as port:
        conn = await _conn(port, read_timeout=1.0)
        try:
            await conn.head(REQUEST)
            dest = bytearray(8)
            await conn.body_into(memoryview(dest))
            assert dest == b"x" * 8
        finally:
            conn.close()
    async with _Canned([[head + b"xx"]]) as port:  # then silence
        conn = await _conn(port, read_timeout=0.5)
        try:
            await conn.head(REQUEST)
            with pytest.raises(TimeoutError):
                await conn.body_into(memoryview(bytearray(8)))
            assert conn.received == 2 and not conn.usable
        finally:
            conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=["two-lengths", "101", "gzip-coding", "not-http"],
)
async def test_parser_surprises(answer: bytes) -> None:
    async with _Canned([[answer]]) as port:
        conn = await _conn(port)
        try:
            with pytest.raises(ProtocolSurprise):
                await conn.head(REQUEST)
        finally:
            conn.close()


# --- IPv6 ---------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def weed6() -> Iterator[SeaweedFS]:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    with SeaweedFS(host="::1") as server:
        yield server


@pytest.mark.asyncio
async def test_ipv6_host_header(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\n\r\n'
    canned = _Canned([[answer]], host="::1")
    port = await canned.__aenter__()
    for name, value in READER.env().items():  # any credentials: the server checks none
        monkeypatch.setenv(name, value)
    try:
        async with AsyncS3(
            s3root="s3://bucket6",
            endpoint_url=f"http://[::1]:{port}",
            config=TransferConfig(transport="http"),
        ) as s3:
            assert (await s3.info("k")).size == 3
    finally:
        await canned.__aexit__()
    assert f"\r\nhost: [::1]:{port}\r\n".encode() in canned.requests[0].lower()


@pytest.fixture
def weed6_bucket(weed6: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _bucket_on(Server("seaweedfs-ipv6", weed6.endpoint_url, auth=True), monkeypatch)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_seaweedfs_on_ipv6_loopback(weed6_bucket: str, transport: str) -> None:
    bucket = weed6_bucket
    data = {"a": os.urandom(5000), "big": os.urandom(3 * MiB)}
    cfg = TransferConfig(transport=transport, range_size=MiB)
    with S3(s3root=f"s3://{bucket}", config=cfg) as s3:
        for key, value in data.items():
            s3.put(key, value)
        assert {o.key: o.size for o in s3.list_recursive()} == {k: len(v) for k, v in data.items()}
        for key, value in data.items():
            assert s3.get(key, in_memory=True).blob == value
            assert s3.info(key).size == len(value)


# --- write flow control ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_big_body_is_not_buffered_whole(tls: bool, tmp_path: pathlib.Path) -> None:
    """While the server does not read, the request body waits in the caller's buffer, not in
    the transport's (over TLS: not encrypted into it all at once)."""
    body = os.urandom(32 * MiB)
    reading = asyncio.Event()
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"content-length: %d" % len(body) in head.lower()
            await reading.wait()
            while len(got) < len(body):
                got.extend(await reader.read(1 << 20))
            writer.write(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: 0\r\n\r\n')
            await writer.drain()
            await reader.read()
        finally:
            writer.close()

    server_ctx = client_ctx = None
    if tls:
        cert, key = self_signed(tmp_path)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: _Conn(30.0),
        "127.0.0.1",
        port,
        ssl=client_ctx,
        server_hostname="localhost" if tls else None,
    )
    request = b"PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    try:
        exchange = asyncio.ensure_future(conn.head(request, body, "PUT"))
        peak = 0
        for _ in range(20):  # the server reads nothing for a while
            await asyncio.sleep(0.05)
            assert conn.transport is not None
            peak = max(peak, conn.transport.get_write_buffer_size())
        assert conn.writing_paused and not exchange.done()
        assert peak <= 2 * http.WRITE_CHUNK
        reading.set()
        status, headers = await exchange
        assert status == 200 and headers["etag"] == '"e"'
        assert await conn.small_body(100) == b"" and conn.finished
        assert got == body
    finally:
        conn.close()
        server.close()
        await server.wait_closed()


# --- the retry clock --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_retry_time_starts_when_a_request_is_sent(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, transport: str
) -> None:
    """One slot: a request that waited for it longer than ``max_retry_time`` (behind a slow
    one) still gets its retry when its first try fails."""
    config = TransferConfig(transport=transport, max_concurrency=1, max_retry_time=1.0)
    async with AsyncS3(
        s3root=f"s3://{seaweed_bucket}", endpoint_url=proxy.url, config=config
    ) as s3:
        await s3.get("dir/b")  # sizes seen: no download goes first
        proxy.set(
            Faults(stall=2.0, times=1, match="dir/a"),
            also=(Faults(answer=INTERNAL, times=1, match="small"),),
        )
        slow = asyncio.ensure_future(s3.get("dir/a", in_memory=True))
        for _ in range(1000):  # until it holds the one slot
            if proxy.requests:
                break
            await asyncio.sleep(0.01)
        small = await s3.get("small", in_memory=True)  # queued ~2 s, then a 500, then again
        assert small.blob == objs["small"] and (await slow).blob == objs["dir/a"]
        assert s3.stats.retries == 1 and s3.stats.gave_up == 0
    assert proxy.counts["stall"] == 1 and proxy.counts["answer 500"] == 1


@pytest.mark.asyncio
async def test_connect_timeout_covers_the_tls_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes the connection but never answers the TLS handshake: the request
    fails after ``connect_timeout``, not ``read_timeout``."""
    canned = _Canned([])  # reads until the client goes, never writes
    port = await canned.__aenter__()
    for name, value in READER.env().items():  # any credentials: nothing gets that far
        monkeypatch.setenv(name, value)
    config = TransferConfig(
        transport="http", connect_timeout=0.5, read_timeout=60, max_attempts=1, verify_ssl=False
    )
    try:
        async with AsyncS3(
            s3root="s3://bucket6", endpoint_url=f"https://127.0.0.1:{port}", config=config
        ) as s3:
            started = time.monotonic()
            with pytest.raises(MetaflowS3Exception) as caught:
                await s3.info("k")
            assert time.monotonic() - started < 10
    finally:
        await canned.__aexit__()
    assert "Timeout" in repr(caught.value) or "timed out" in str(caught.value).lower()
