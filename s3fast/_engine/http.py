"""The lean path: an HTTP/1.1 keep-alive pool on asyncio ``BufferedProtocol`` for the
requests that move bytes or are made by the thousand: GET, HEAD, PutObject, UploadPart and
ListObjectsV2.

Responses are framed by llhttp (``httptools``): status line and headers, chunked and
close-delimited bodies, interim 1xx answers, HTTP/1.0 and the keep-alive rules. A body with a
Content-Length (what S3 sends) is received by the kernel straight into the destination
(``get_buffer`` hands out a slice of the caller's preallocated buffer, or of a window that is
then written to a temp file), so each byte is copied once on the way in; other bodies are
copied in from the parser. Request
bodies are written a slice at a time under the transport's flow control; big ones are sent
with ``Expect: 100-continue``. ``read_timeout`` is the longest silence from the server, not a
deadline. A response the lean path does not take raises :class:`ProtocolSurprise`, and the
bucket goes to botocore.

Requests are signed with SigV4 here (the derived key cached per day and region; the
empty-payload hash for GET and HEAD; ``UNSIGNED-PAYLOAD`` plus a signed CRC32 header, which
the server checks, for uploads). The first GET of a whole object asks for the object's
checksums (``x-amz-checksum-mode``), which :mod:`.get` checks. Credentials come from
aiobotocore, which also keeps every other call; where each request goes (endpoint, signing
region and name, proxy, TLS trust) is botocore's own answer (:mod:`.endpoint`), and which
requests come here at all is decided in one place, :mod:`.transport`.

Errors are returned in botocore's shape (``ClientError`` with the S3 error code), so the one
translator in :mod:`s3fast.errors` handles both transports. 5xx and throttling answers raise
:class:`TransientHTTPError`, which the caller retries with backoff like a broken body.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import inspect
import logging
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote_plus
from xml.etree import ElementTree
from xml.sax.saxutils import unescape as xml_unescape

import botocore.exceptions
import httptools

from .checksums import CRC32, FIELDS
from .endpoint import Endpoint, Proxy, open_tunnel
from .sinks import Spool

logger = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_HEAD = 64 * 1024  # bytes: the most a response head may take; error bodies read up to this
SCRATCH = 64 * 1024  # bytes: the parser's receive buffer (heads, chunked/close-delimited bodies)
MAX_LISTING = 64 * 1024 * 1024  # bytes: the most a ListObjectsV2 page may take
WRITE_CHUNK = 1024 * 1024  # bytes: a request body is written this much at a time (flow control)
# Request bodies at least this big are sent with "Expect: 100-continue" (as botocore does for
# S3 uploads over 1 MB), so that an early error answer (403, 400, a redirect) stops them.
EXPECT_OVER = 1024 * 1024
CONTINUE_WAIT = 1.0  # seconds: the body goes anyway if no 100 (nor an answer) came by then
Digest = Callable[[memoryview], None]  # fed each chunk of a body as it lands (checksums)
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class TransientHTTPError(ConnectionError):
    """A 5xx or throttling answer: retried by the caller, with backoff."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ProtocolSurprise(ConnectionError):
    """The server answered in a way the lean path does not take: a malformed response,
    an unexpected interim status (101), or a body whose length cannot be known where it must
    be. The request belongs to botocore (see :meth:`.transport.Transport.hand_over`)."""


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection; one exchange at a time.

    Framing is llhttp's (``httptools``): status line, headers (obsolete line folding
    included), 1xx interim answers, chunked and close-delimited bodies, HTTP/1.0 and the
    keep-alive rules. Each exchange gets a fresh parser, fed the head of the response. A body
    with a Content-Length is then received by the kernel straight into the caller's buffer
    (``get_buffer`` hands out the rest of it), bypassing the parser, which is dropped; the
    rare chunked or close-delimited body goes through the parser and is copied into the
    buffer. Whatever the framing, a body longer than the buffer (when the whole body was
    wanted) or shorter than it raises :class:`ConnectionError`.

    ``read_timeout`` is the longest silence allowed while waiting on the server (for the
    response, between body bytes, for the socket to take more of a request body); each
    received chunk restarts it.
    """

    def __init__(self, read_timeout: float) -> None:
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(SCRATCH)  # what the parser reads from
        self.parser: httptools.HttpResponseParser | None = None
        self.method = "GET"
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.head_done = False  # the final (non-1xx) response head has been parsed
        self.head_bytes = 0  # bytes fed to the parser before head_done
        self.continued = False  # a "100 Continue" came
        self.framing = "none"  # of the body: "length", "chunked", "close" or "none"
        self.length: int | None = None  # the Content-Length, for "length"
        self.seen = 0  # body bytes received so far, wherever they went
        self.complete = False  # the end of the response has been received
        self.early = bytearray()  # body bytes parsed while no destination was given
        self.collect = 0  # small_body: gather up to this many body bytes in ``early``
        self.dest: memoryview | None = None  # where body bytes go now
        self.direct = False  # the kernel receives into ``dest`` (a Content-Length body)
        self.whole = True  # the whole body is wanted in ``dest`` (else its first bytes)
        self.overflow = False  # more body bytes came than ``dest`` holds
        self.digest: Digest | None = None  # called with each chunk received into dest
        self.received = 0  # body bytes received into dest
        self.unsent = False  # a request body was not (fully) sent
        self.waiter: asyncio.Future[None] | None = None
        self.ready: Callable[[], bool] | None = None  # what the waiter waits for
        self.timer: asyncio.TimerHandle | None = None
        self.last_io = 0.0  # loop time of the last sign of life from the server
        self.time: Callable[[], float] = lambda: 0.0
        self.writing_paused = False
        self.lost: BaseException | None = None
        self.gone = False  # connection_lost called: the socket is released
        self.active = False  # an exchange is in progress
        self.reusable = False  # set by an exchange that consumed its whole response

    # -- asyncio protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.time = asyncio.get_running_loop().time

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.direct:
            return self.dest[self.received :]  # type: ignore[index]
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.last_io = self.time()
        if self.direct:
            dest = self.dest
            assert dest is not None
            if self.digest is not None:  # while the chunk is still in the CPU's cache
                self.digest(dest[self.received : self.received + nbytes])
            self.received += nbytes
            self.seen += nbytes
            if self.received >= len(dest):
                self.direct = False
                self.dest = None  # the next bytes (there should be none) go to the parser
                self.complete = self.seen >= (self.length or 0)
                self.transport.pause_reading()  # type: ignore[union-attr]
                self._poke()
            return
        if not self.active or self.parser is None:
            self._fail(ConnectionError("unsolicited data on an idle connection"))
            self.transport.close()  # type: ignore[union-attr]
            return
        before = self.head_done
        try:
            self.parser.feed_data(memoryview(self.buf)[:nbytes])
        except Exception as exc:
            self.parser = None
            # an exception raised by a callback here comes back wrapped
            inner = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            if isinstance(inner, ConnectionError):
                self._fail(inner)
            else:
                self._fail(ProtocolSurprise(f"malformed HTTP response ({exc})"))
            return
        if not self.head_done:
            self.head_bytes += nbytes
            if self.head_bytes > MAX_HEAD:
                self._fail(ProtocolSurprise("response headers too large"))
                return
        elif not before and self.dest is None and not self.collect:
            self.transport.pause_reading()  # type: ignore[union-attr]  # until body_into
        elif not self.whole and self.dest is not None and self.received >= len(self.dest):
            self.transport.pause_reading()  # type: ignore[union-attr]  # a window is full
        self._poke()

    # llhttp's callbacks, from inside feed_data
    def on_message_begin(self) -> None:
        if self.head_done:
            raise ConnectionError("data after the response")
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim: 100 Continue lets the request body go; others skipped
            if status == 101:
                raise ProtocolSurprise("the server switched protocols (101)")
            self.continued = self.continued or status == 100
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # HTTP/1.0 and Connection rules
        headers = self.headers
        if self.method == "HEAD" or status in (204, 304):
            self.framing, self.complete = "none", True
        elif "transfer-encoding" in headers:  # llhttp refused one with a Content-Length
            if headers["transfer-encoding"].lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolSurprise(f"transfer coding {headers['transfer-encoding']!r}")
            self.framing = "chunked"
        elif "content-length" in headers:
            self.framing, self.length = "length", int(headers["content-length"])
            self.complete = self.length == 0
        else:
            self.framing, self.keep_alive = "close", False  # the body ends at EOF

    def on_body(self, body: bytes) -> None:
        n = len(body)
        self.seen += n
        dest = self.dest
        if dest is None:
            self.early += body
            return
        room = len(dest) - self.received
        if n > room:
            if self.whole:
                self.overflow = True
            else:  # a window of the body (see body_into): the rest is for the next one
                self.early += body[room:]
            body, n = body[:room], room
        if n:
            dest[self.received : self.received + n] = body
            if self.digest is not None:
                self.digest(dest[self.received : self.received + n])
            self.received += n

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    def eof_received(self) -> bool:
        if self.head_done and self.framing == "close" and not self.complete:
            self.complete = True  # a close-delimited body ends here
            self.parser = None
            self._poke()
        else:
            self._fail(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.gone = True
        if exc is None and self.head_done and self.framing == "close" and not self.complete:
            self.complete = True  # TLS without close_notify: the same end
            self._poke()
        self._fail(exc or ConnectionResetError("connection closed"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.last_io = self.time()  # the server took more of the request
        self._poke()

    def _poke(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done() and self.ready is not None and self.ready():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(
                exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc))
            )

    def _idle(self) -> None:
        """The read timer: fails the wait after ``read_timeout`` of silence, else re-arms."""
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        due = self.last_io + self.read_timeout
        if self.time() >= due:
            exc = TimeoutError(f"no data from the server for {self.read_timeout:g} s")
            if self.lost is None:
                self.lost = exc
            waiter.set_exception(exc)
        else:
            self.timer = asyncio.get_running_loop().call_at(due, self._idle)

    # -- used by the pool --
    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    @property
    def finished(self) -> bool:
        """The response was read to its end and the connection may carry another exchange."""
        return self.complete and self.keep_alive and not self.overflow and not self.unsent

    async def _wait(self, ready: Callable[[], bool], patience: float | None = None) -> None:
        """Until ``ready()``, the server silent at most ``read_timeout`` at a time (else
        TimeoutError); with ``patience``, return after that many seconds anyway."""
        if ready():
            return
        if self.lost is not None:
            raise (
                self.lost
                if isinstance(self.lost, ConnectionError | TimeoutError)
                else ConnectionResetError(str(self.lost))
            )
        loop = asyncio.get_running_loop()
        self.waiter, self.ready = loop.create_future(), ready
        self.last_io = self.time()
        self.timer = loop.call_at(self.last_io + self.read_timeout, self._idle)
        nudge = None
        if patience is not None:
            nudge = loop.call_later(patience, _settle, self.waiter)
        try:
            await self.waiter
        finally:
            self.waiter = self.ready = None
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if nudge is not None:
                nudge.cancel()

    async def _send(self, body: bytes | memoryview) -> None:
        """Write a request body a slice at a time, waiting while the transport's buffer is
        full (so a big part is not copied, or encrypted, into it all at once), and stopping
        early if the server has answered already."""
        assert self.transport is not None
        view = memoryview(body)
        for at in range(0, len(view), WRITE_CHUNK):
            if self.lost is not None:
                return  # the wait for the answer raises it
            if self.head_done:  # an early final answer (an error): the rest is not wanted
                self.unsent = True
                return
            self.transport.write(view[at : at + WRITE_CHUNK])
            if self.writing_paused:
                await self._wait(lambda: not self.writing_paused or self.head_done)

    async def head(
        self,
        request: bytes,
        body: bytes | memoryview = b"",
        method: str = "GET",
        expect: bool = False,
    ) -> tuple[int, dict[str, str]]:
        """Send ``request`` (and ``body``), return the final response's status and headers
        (names lower-case). A request with ``Expect: 100-continue`` sends its body after the
        server's 100 (or after :data:`CONTINUE_WAIT` without an answer); a final answer before
        that means the body is not sent."""
        assert self.transport is not None
        self.parser = httptools.HttpResponseParser(self)
        # RFC 9112 5.2: a client must accept obsolete line folding in a response, which
        # llhttp does only with lenient header values (the values are read, never forwarded).
        self.parser.set_dangerous_leniencies(lenient_headers=True)
        self.method = method
        self.status, self.headers, self.keep_alive = 0, {}, False
        self.head_done = self.continued = self.complete = self.overflow = self.unsent = False
        self.head_bytes = self.seen = self.received = self.collect = 0
        self.framing, self.length, self.early = "none", None, bytearray()
        self.active = True
        self.transport.write(request)
        self.transport.resume_reading()
        if body:
            if expect:
                await self._wait(lambda: self.head_done or self.continued, CONTINUE_WAIT)
            await self._send(body)
        await self._wait(lambda: self.head_done)
        return self.status, self.headers

    async def body_into(
        self, dest: memoryview, whole: bool = True, digest: Digest | None = None
    ) -> int:
        """Read the body into ``dest``, calling ``digest`` with each chunk as it lands:
        exactly ``len(dest)`` bytes, or (not ``whole``) its next ``len(dest)`` bytes, so that
        calls with ``whole`` false can take a body a window at a time, the last with ``whole``
        true. Returns the bytes received; raises ConnectionError if the body is shorter than
        ``dest``, or (``whole``) longer; ``self.received`` then says how many bytes landed."""
        self.received, self.whole, self.overflow = 0, whole, False
        early, self.early = self.early, bytearray()
        take = min(len(early), len(dest))
        if take:
            dest[:take] = early[:take]
            if digest is not None:
                digest(dest[:take])
        self.received = take
        if len(early) > take:
            if whole:
                self.overflow = True
            else:
                self.early = early[take:]
        # A whole body read so far fills dest: its end (the last chunk, EOF) is still awaited.
        if not (self.complete or self.overflow or self.lost) and (take < len(dest) or whole):
            self.dest, self.digest = dest, digest
            self.direct = self.framing == "length" and take < len(dest)
            if self.direct:
                self.parser = None  # its bytes now bypass it
            try:
                assert self.transport is not None
                self.transport.resume_reading()
                await self._wait(self._filled)
            finally:
                self.dest = self.digest = None
                self.direct = False
        if self.received < len(dest):
            raise ConnectionError(f"the body ended after {self.received} of {len(dest)} bytes")
        if whole and (self.overflow or not self.complete):
            self.complete = False  # not reusable
            raise ConnectionError(f"the server sent more than the {len(dest)} bytes expected")
        return self.received

    async def window_into(
        self, window: memoryview, whole: bool, landed: list[int], digest: Digest | None
    ) -> None:
        """:meth:`body_into` for a :class:`~.sinks.Spool`: ``landed[0]`` is set to the bytes
        that landed in ``window``, also when the body breaks off."""
        try:
            await self.body_into(window, whole, digest)
        finally:
            landed[0] = self.received

    def _filled(self) -> bool:
        if self.complete or self.overflow:
            return True
        return not self.whole and self.received >= len(self.dest or b"")

    async def small_body(self, limit: int) -> bytes:
        """The whole body (a listing page, an error document), or its first ``limit`` bytes
        if longer (the connection is then not reused)."""
        if not self.complete and self.framing != "none":
            self.collect = limit
            assert self.transport is not None
            self.transport.resume_reading()
            await self._wait(lambda: self.complete or len(self.early) >= limit)
        body, self.early = bytes(self.early[:limit]), bytearray()
        if not self.complete:
            self.overflow = True  # not read to its end: not reusable
        return body

    def park(self) -> None:
        """Idle in the pool, reading, so that a close by the server is noticed."""
        self.active = False
        self.parser = None
        assert self.transport is not None
        self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection at once. A connection is closed only when it cannot be reused
        (a response not read to its end, an error, shutdown), so nothing it would still send
        matters, and a TLS close handshake would only read the rest of an unwanted body."""
        if self.transport is not None:
            self.transport.abort()


class _Signer:
    """SigV4 for S3 requests, with the derived key cached per (secret, day, region, service)."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self._keys: dict[tuple[str, str, str, str], bytes] = {}

    async def frozen(self) -> Any:
        if self.credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = self.credentials.get_frozen_credentials()
        if inspect.isawaitable(frozen):
            frozen = await frozen
        return frozen

    def _key(self, secret: str, day: str, region: str, service: str) -> bytes:
        key = self._keys.get((secret, day, region, service))
        if key is None:
            k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
            for part in (region, service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            if len(self._keys) >= 64 or any(s != secret or d != day for s, d, *_ in self._keys):
                self._keys.clear()  # a new day or a new secret: the old keys are done
            self._keys[(secret, day, region, service)] = k
            key = k
        return key

    async def sign(
        self,
        method: str,
        host: str,
        path: str,
        extra: dict[str, str],
        query: str = "",
        payload: str = EMPTY_SHA256,
        *,
        region: str = "us-east-1",
        service: str = "s3",
        origin: str = "",
        unsigned: dict[str, str] | None = None,
    ) -> bytes:
        """The request head, signed for ``service`` in ``region``. ``query`` must already be
        canonical (sorted, encoded). ``origin`` ("http://host:port") makes the request target
        absolute (a request through an HTTP proxy); ``unsigned`` headers are sent but not
        signed (``Proxy-Authorization``)."""
        creds = await self.frozen()
        now = datetime.datetime.now(datetime.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        headers.update({k.lower(): v for k, v in extra.items()})
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                *(f"{n}:{' '.join(headers[n].split())}" for n in names),
                "",
                ";".join(names),
                payload,
            ]
        )
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(
            self._key(creds.secret_key, day, region, service), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        target = origin + (f"{path}?{query}" if query else path)
        lines = [f"{method} {target} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers.items()]
        lines += [f"{n}: {v}" for n, v in (unsigned or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _error(status: int, body: bytes, operation: str = "GetObject") -> Exception:
    code_m, msg_m = _CODE.search(body), _MESSAGE.search(body)
    code = code_m.group(1).decode() if code_m else str(status)
    message = msg_m.group(1).decode() if msg_m else ""
    if status in TRANSIENT_STATUS or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
        return TransientHTTPError(f"HTTP {status} {code}: {message}", status, code)
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


_SPAN = re.compile(r"\s*bytes\s+(\d+)-(\d+)/")
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def peek_token(body: bytes) -> str | None:
    """The continuation token of a raw ListObjectsV2 page, found without parsing it (so the
    next page can be asked for first); :func:`parse_listing` has the last word."""
    found = _NEXT_TOKEN.search(body) if _TRUNCATED.search(body) else None
    return xml_unescape(found.group(1).decode(), {"&quot;": '"', "&apos;": "'"}) if found else None


# A ListObjectsV2 page in the shape S3 sends (see :func:`_scan_listing`): the fields read,
# the two containers, and any markup outside that shape. A whole <Contents> in the compact
# form S3 writes (its Key first, one Size, other fields plain, empty or an Owner of plain
# fields) is one token, its key and size; any other form is read field by field.
_OTHER_FIELD = (
    rb"(?:<(?!Key>|Size>)[A-Za-z]+>[^<]*</[A-Za-z]+>|<[A-Za-z]+/>"
    rb"|<Owner>(?:<[A-Za-z]+>[^<]*</[A-Za-z]+>)*</Owner>)"
)
_LISTING_TOKENS = re.compile(
    rb"<Contents><Key>([^<]+)</Key>"
    + _OTHER_FIELD
    + rb"*<Size>([0-9]+)</Size>"
    + _OTHER_FIELD
    + rb"*</Contents>"
    rb"|<(/?)(Contents|CommonPrefixes)>"
    rb"|<(Key|Size|Prefix|EncodingType|IsTruncated|NextContinuationToken|KeyCount)>([^<]*)</\5>"
)
_ODD_MARKUP = re.compile(rb"<(?!/?[A-Za-z][A-Za-z0-9]*/?>)")  # <Name>, </Name>, <Name/>
_ROOT = re.compile(
    rb'\A(?:<\?xml version="1\.0" encoding="(?i:utf-8)"\?>)?\s*<ListBucketResult[^<>]*>'
)
_ENTITY = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]{1,7})|#x([0-9a-fA-F]{1,6}));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _text(raw: bytes) -> str | None:
    """Element text as an XML parser gives it; None for what only a parser should judge."""
    text = raw.decode()
    if "&" not in text:
        return text
    found = 0

    def one(m: re.Match[str]) -> str:
        nonlocal found
        found += 1
        if m.group(1):
            return _NAMED[m.group(1)]
        return chr(int(m.group(2)) if m.group(2) else int(m.group(3), 16))

    try:
        out = _ENTITY.sub(one, text)
    except (ValueError, OverflowError):
        return None
    return out if found == text.count("&") else None


def _scan_listing(
    body: bytes,
) -> tuple[list[tuple[str, int | None]], bool, str | None, bool] | None:
    """:func:`parse_listing`'s fields read straight from the bytes, about 4x faster than
    building a tree (listing is bound by this parse on a fast server): ``(entries, truncated,
    token, url_encoded)``, or None whenever the page is not in the plain shape S3 and the
    servers that copy it send (UTF-8, no attributes past the root, no comments, CDATA, raw
    carriage returns, namespace prefixes or entities other than XML's own, a closed root,
    and a ``KeyCount``, where present, that matches); the XML parser reads those."""
    root = _ROOT.match(body)
    if (
        root is None
        or b"\r" in body
        or not body.rstrip().endswith(b"</ListBucketResult>")
        or _ODD_MARKUP.search(body, root.end()) is not None
    ):
        return None
    objects: list[tuple[str, int | None]] = []
    prefixes: list[tuple[str, int | None]] = []
    truncated, url_encoded, token, count = False, False, None, None
    box, key, size = b"", None, 0
    for whole_key, whole_size, close, container, tag, raw in _LISTING_TOKENS.findall(
        body, root.end()
    ):
        if whole_key:
            key = _text(whole_key)
            if key is None or box:
                return None
            objects.append((key, int(whole_size)))
            continue
        if container:
            if not close:
                box, key, size = container, None, 0
                continue
            if container != box or key is None:
                return None
            (objects if box == b"Contents" else prefixes).append(
                (key, size if box == b"Contents" else None)
            )
            box = b""
            continue
        text = _text(raw)
        if text is None:
            return None
        if (box, tag) in ((b"Contents", b"Key"), (b"CommonPrefixes", b"Prefix")):
            key = text
        elif box == b"Contents" and tag == b"Size":
            size = int(text or 0)
        elif box:
            return None  # a field that belongs outside the containers
        elif tag == b"EncodingType":
            url_encoded = text == "url"
        elif tag == b"IsTruncated":
            truncated = text.strip() == "true"
        elif tag == b"NextContinuationToken":
            token = text
        elif tag == b"KeyCount":
            count = int(text)
    if box or (count is not None and count != len(objects) + len(prefixes)):
        return None
    return objects + prefixes, truncated, token, url_encoded


def parse_listing(body: bytes) -> tuple[list[tuple[str, int | None]], str | None]:
    """A ListObjectsV2 page: ``(key, size)`` of objects then ``(prefix, None)`` of common
    prefixes, and the continuation token (None on the last page)."""
    entries, truncated, token, url_encoded = _scan_listing(body) or _parse_listing_tree(body)
    if url_encoded:  # decoded as botocore decodes them
        entries = [
            (unquote_plus(key), size) if "%" in key or "+" in key else (key, size)
            for key, size in entries
        ]
    if truncated and not token:
        raise ConnectionError("a truncated listing without a continuation token")
    return entries, token if truncated else None


def _parse_listing_tree(
    body: bytes,
) -> tuple[list[tuple[str, int | None]], bool, str | None, bool]:
    """:func:`_scan_listing`'s result, by the XML parser: any page it reads."""
    root = ElementTree.fromstring(body)
    url_encoded = False
    truncated = False
    token = None
    objects: list[tuple[str, int | None]] = []
    prefixes: list[tuple[str, int | None]] = []
    for child in root:
        tag = child.tag.rpartition("}")[2]
        if tag == "Contents":
            fields = {c.tag.rpartition("}")[2]: c.text or "" for c in child}
            objects.append((fields.get("Key", ""), int(fields.get("Size") or 0)))
        elif tag == "CommonPrefixes":
            fields = {c.tag.rpartition("}")[2]: c.text or "" for c in child}
            prefixes.append((fields.get("Prefix", ""), None))
        elif tag == "EncodingType":
            url_encoded = (child.text or "") == "url"
        elif tag == "IsTruncated":
            truncated = (child.text or "").strip() == "true"
        elif tag == "NextContinuationToken":
            token = child.text
    return objects + prefixes, truncated, token, url_encoded


def body_length(fields: dict[str, Any]) -> int | None:
    """A GET response's body length, from its ``ContentLength`` or else its ``ContentRange``
    (a chunked or close-delimited body has no Content-Length); None when neither says."""
    if fields.get("ContentLength") is not None:
        return int(fields["ContentLength"])
    span = _SPAN.match(fields.get("ContentRange") or "")
    return int(span.group(2)) - int(span.group(1)) + 1 if span else None


def response_fields(headers: dict[str, str]) -> dict[str, Any]:
    """The fields of a GET response, named as botocore names them."""
    out: dict[str, Any] = {
        "ContentLength": int(headers["content-length"]) if "content-length" in headers else None,
        "ContentRange": headers.get("content-range"),
        "ContentType": headers.get("content-type"),
        "ETag": headers.get("etag"),
        "VersionId": headers.get("x-amz-version-id"),
        "ServerSideEncryption": headers.get("x-amz-server-side-encryption"),
        "Metadata": {k[11:]: v for k, v in headers.items() if k.startswith("x-amz-meta-")},
        "ChecksumType": headers.get("x-amz-checksum-type"),
    }
    for field, algorithm in FIELDS.items():
        value = headers.get("x-amz-checksum-" + algorithm.name)
        if value:
            out[field] = value
    if headers.get("last-modified"):
        out["LastModified"] = parsedate_to_datetime(headers["last-modified"])
    return out


class LeanHttp:
    """Requests over pooled keep-alive connections, sent where botocore would send them.

    Only :class:`.transport.Transport` decides which requests come here: it gives each
    (bucket, operation) its route (``routes``) before the first request, from botocore's own
    endpoint resolution and proxy configuration (:mod:`.endpoint`)."""

    def __init__(
        self,
        client: Any,
        tls: Callable[[], Awaitable[ssl.SSLContext]],
        timeouts: tuple[float, float],
        faults: Any = None,
    ) -> None:
        self._client = client
        self._faults = faults  # a FaultInjector (inject_failure_rate), asked per request
        self._signer = _Signer(client._request_signer._credentials)
        # botocore's TLS context for the endpoint, made at the first TLS connection (loading
        # the CA bundle costs ~20 ms, which a plain-HTTP endpoint never needs)
        self._tls = tls
        self._ssl: ssl.SSLContext | None = None
        self._connect_timeout, self._read_timeout = timeouts
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        # (bucket, operation) -> where botocore sends it, and through which proxy
        self.routes: dict[tuple[str, str], tuple[Endpoint, Proxy | None]] = {}

    def _address(self, bucket: str, operation: str) -> tuple[Endpoint, Proxy | None]:
        """Where botocore sends ``operation`` on ``bucket`` (set by the transport)."""
        return self.routes[(bucket, operation)]

    async def _connect(self, scheme: str, host: str, port: int, proxy: Proxy | None) -> _Conn:
        pool = self._idle.setdefault((scheme, host, port), deque())
        while pool:
            conn = pool.pop()
            if conn.usable:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        context = None
        if tls:
            if self._ssl is None:
                self._ssl = await self._tls()
            context = self._ssl
        async with asyncio.timeout(self._connect_timeout):
            if proxy is None:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._read_timeout),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if tls else None,
                )
            elif not tls:  # plain HTTP through the proxy: absolute-form requests, as aiohttp
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._read_timeout), proxy.host, proxy.port
                )
            else:  # HTTPS: a CONNECT tunnel, then TLS with the endpoint inside it
                assert context is not None
                raw = await open_tunnel(proxy, host, port)
                conn = _Conn(self._read_timeout)
                try:
                    transport = await loop.start_tls(raw, conn, context, server_hostname=host)
                except BaseException:
                    raw.abort()
                    raise
                if transport is None:
                    raw.abort()
                    raise ConnectionError(f"no TLS session with {host} through the proxy")
                conn.connection_made(transport)
        return conn

    async def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        extra: dict[str, str],
        query: str = "",
        payload: str = EMPTY_SHA256,
        operation: str = "GetObject",
    ) -> tuple[tuple[str, str, int, Proxy | None], bytes]:
        endpoint, proxy = self._address(bucket, operation)
        scheme, host, port = endpoint.scheme, endpoint.host, endpoint.port
        if self._faults is not None:
            where = f"{endpoint.host_header}{endpoint.path(key)}?{query}"
            self._faults.check(method, where, extra.get("range", ""))
        plain_proxy = proxy is not None and scheme == "http"
        request = await self._signer.sign(
            method,
            endpoint.host_header,
            endpoint.path(key),
            extra,
            query,
            payload,
            region=endpoint.signing_region,
            service=endpoint.signing_name,
            origin=f"http://{endpoint.host_header}" if plain_proxy else "",
            unsigned=(
                {"proxy-authorization": proxy.authorization}
                if plain_proxy and proxy is not None and proxy.authorization
                else None
            ),
        )
        return (scheme, host, port, proxy), request

    async def list_page(
        self, bucket: str, prefix: str, delimiter: str, token: str | None, max_keys: int | None
    ) -> bytes:
        """One ListObjectsV2 page, raw (see :func:`parse_listing`)."""
        params = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        if max_keys:
            params["max-keys"] = str(max_keys)
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
        )
        where, request = await self._request(
            "GET", bucket, "", {}, query, operation="ListObjectsV2"
        )
        async with self._borrow(where) as conn:
            status, _ = await conn.head(request)
            body = await conn.small_body(MAX_LISTING if status == 200 else MAX_HEAD)
            conn.reusable = conn.finished
            if status == 200 and not conn.complete:
                raise ProtocolSurprise(f"a ListObjectsV2 page over {MAX_LISTING} bytes")
            if status != 200:
                raise _error(status, body, "ListObjectsV2")
        return body

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes | memoryview,
        headers: dict[str, str],
        query: str = "",
        operation: str = "PutObject",
    ) -> dict[str, Any]:
        """One PutObject (or UploadPart, given its ``query``). The payload is not hashed for
        the signature (``UNSIGNED-PAYLOAD``); its CRC32 is sent in a signed header instead,
        and the server checks it."""
        crc = CRC32.encode(CRC32.of(data))
        extra = {**headers, "content-length": str(len(data)), "x-amz-checksum-crc32": crc}
        where, request = await self._request(
            "PUT", bucket, key, extra, query, UNSIGNED_PAYLOAD, operation
        )
        expect = len(data) >= EXPECT_OVER
        if expect:  # not signed, as botocore does not sign it
            request = request[:-2] + b"expect: 100-continue\r\n\r\n"
        async with self._borrow(where) as conn:
            status, answer = await conn.head(request, data, "PUT", expect)
            body = await conn.small_body(MAX_HEAD)
            if status != 200:  # the server may not have read the whole body: not reusable
                raise _error(status, body, operation)
            conn.reusable = conn.finished
            if not answer.get("etag"):
                raise ConnectionError(f"{operation} answered without an ETag")
            return {
                "ETag": answer["etag"],
                "ChecksumCRC32": answer.get("x-amz-checksum-crc32") or crc,
                "VersionId": answer.get("x-amz-version-id"),
            }

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> dict[str, Any]:
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        return await self.put(bucket, key, data, {}, query, "UploadPart")

    @asynccontextmanager
    async def _borrow(self, where: tuple[str, str, int, Proxy | None]) -> AsyncIterator[_Conn]:
        """A pooled connection for one exchange. It goes back to the pool only if the
        exchange set ``conn.reusable`` (the response was consumed and keep-alive allowed)."""
        conn = await self._connect(*where)
        conn.reusable = False
        try:
            yield conn
        finally:
            if conn.reusable and conn.usable:
                conn.park()
                self._idle[where[:3]].append(conn)
            else:
                conn.close()

    async def head(
        self, bucket: str, key: str, etag: str | None = None, checksum: bool = False
    ) -> dict[str, Any]:
        """One HEAD; the object's fields, named as botocore names them. ``etag``: only of that
        version (else 412); ``checksum``: with the object's checksums."""
        extra = {"x-amz-checksum-mode": "ENABLED"} if checksum else {}
        if etag:
            extra["if-match"] = f'"{etag}"'
        where, request = await self._request("HEAD", bucket, key, extra, operation="HeadObject")
        async with self._borrow(where) as conn:
            status, headers = await conn.head(request, method="HEAD")
            conn.reusable = conn.finished
            if status != 200:
                raise _error(status, b"", "HeadObject")
            if "content-length" not in headers:
                raise ProtocolSurprise("HeadObject answered without a Content-Length")
            return response_fields(headers)

    async def get(
        self,
        bucket: str,
        key: str,
        range_header: str | None,
        etag: str | None,
        prepare: Callable[[dict[str, Any]], Awaitable[tuple[memoryview | Spool, Digest | None]]],
        progress: list[int],
        checksum: bool = False,
    ) -> None:
        """One GET. ``prepare(fields)`` gets the response fields and returns the buffer for
        the body, and maybe a function to call with each chunk that lands in it (in order);
        ``progress[0]`` advances by the body bytes received, also when the body breaks off
        (so the caller can resume). ``checksum`` asks for the object's checksums. A buffer
        shorter than the body takes its first bytes; the connection is then closed."""
        extra = {"x-amz-checksum-mode": "ENABLED"} if checksum else {}
        if range_header:
            extra["range"] = range_header
        if etag:
            extra["if-match"] = f'"{etag}"'
        where, request = await self._request("GET", bucket, key, extra)
        async with self._borrow(where) as conn:
            status, headers = await conn.head(request)
            if status not in (200, 206):
                body = await conn.small_body(MAX_HEAD)
                conn.reusable = conn.finished
                raise _error(status, body)
            fields = response_fields(headers)
            length = body_length(fields)  # None: known only at its end
            dest, digest = await prepare(fields)
            whole = length is None or len(dest) == length
            try:
                if length is not None and len(dest) > length:
                    raise ConnectionError(f"buffer of {len(dest)} bytes for a body of {length}")
                if isinstance(dest, Spool):
                    read = functools.partial(conn.window_into, digest=digest)
                    await dest.receive(read, whole, progress)
                else:
                    try:
                        await conn.body_into(dest, whole, digest)
                    finally:
                        progress[0] += conn.received
            finally:
                dest.release()
            conn.reusable = conn.finished

    def close(self) -> list[_Conn]:
        """Close the idle connections (the pool stays usable); returns them."""
        closed = []
        for pool in self._idle.values():
            while pool:
                closed.append(pool.pop())
                closed[-1].close()
        return closed

    async def aclose(self) -> None:
        """:meth:`close`, and wait until their sockets are released (the event loop does that
        on its next turns: a loop stopped and closed before then would leave them open)."""
        closed = self.close()
        for _ in range(100):
            if all(conn.gone for conn in closed):
                return
            await asyncio.sleep(0)
