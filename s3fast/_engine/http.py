"""The hot path: a lean HTTP/1.1 keep-alive pool on asyncio ``BufferedProtocol`` for the
requests that move bytes or are made by the thousand: GET, HEAD, PutObject, UploadPart and
ListObjectsV2.

The kernel copies response bodies straight into the destination (``get_buffer`` hands out a
slice of the caller's preallocated buffer or memory-mapped temp file), so each byte is copied
once. Requests are signed with SigV4 here (the derived key cached per day and region; the
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
import hashlib
import hmac
import inspect
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

from .checksums import CRC32, FIELDS
from .endpoint import Endpoint, Proxy, open_tunnel

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_HEAD = 64 * 1024
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


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, read_timeout: float) -> None:
        self.read_timeout = read_timeout  # a stall longer than this raises TimeoutError
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(MAX_HEAD)
        self.used = 0  # bytes of self.buf holding header (or small body) data
        self.dest: memoryview | None = None  # where body bytes go now
        self.digest: Digest | None = None  # called with each chunk received into dest
        self.received = 0  # body bytes received into dest
        self.want = 0  # body bytes expected in dest
        self.waiter: asyncio.Future[None] | None = None
        self.head_end = -1
        self.lost: BaseException | None = None
        self.active = False  # an exchange is in progress
        self.reusable = False  # set by an exchange that consumed its whole response

    # -- asyncio protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.dest is not None:
            return self.dest[self.received :]
        if self.used == len(self.buf):
            self.buf.extend(bytes(len(self.buf)))
        return memoryview(self.buf)[self.used :]

    def buffer_updated(self, nbytes: int) -> None:
        if not self.active:
            self._fail(ConnectionError("unsolicited data on an idle connection"))
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.dest is not None:
            if self.digest is not None:  # while the chunk is still in the CPU's cache
                self.digest(self.dest[self.received : self.received + nbytes])
            self.received += nbytes
            if self.received >= self.want:
                self.dest = None  # the next bytes (there should be none) go to self.buf
                self.used = self.head_end = 0
                self.transport.pause_reading()  # type: ignore[union-attr]
                self._wake()
            return
        self.used += nbytes
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n", 0, self.used)
            if end >= 0:
                self.head_end = end + 4
                self.transport.pause_reading()  # type: ignore[union-attr]
                self._wake()
            elif self.used >= MAX_HEAD * 4:
                self._fail(ConnectionError("response headers too large"))
        elif self.used >= self.want + self.head_end:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc or ConnectionResetError("connection closed"))

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(
                exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc))
            )

    # -- used by the pool --
    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    async def _wait(self) -> None:
        if self.lost is not None:
            raise ConnectionResetError(str(self.lost))
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.read_timeout):
                await self.waiter
        finally:
            self.waiter = None

    async def head(self, request: bytes, body: bytes = b"") -> tuple[int, dict[str, str]]:
        self.used, self.head_end, self.dest, self.received, self.want = 0, -1, None, 0, 0
        self.active = True
        assert self.transport is not None
        self.transport.write(request)
        if body:
            self.transport.write(body)
        self.transport.resume_reading()
        await self._wait()
        lines = bytes(self.buf[: self.head_end - 4]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ConnectionError("chunked responses are not expected for S3 GET")
        return int(parts[1]), headers

    async def body_into(
        self, dest: memoryview, whole: bool = True, digest: Digest | None = None
    ) -> int:
        """Read ``len(dest)`` body bytes into ``dest`` (``whole``: all the body), calling
        ``digest`` with each chunk as it lands; returns the bytes received (fewer only when an
        exception is raised, in which case ``self.received`` says how many)."""
        extra = self.used - self.head_end
        take = min(extra, len(dest))
        dest[:take] = self.buf[self.head_end : self.head_end + take]
        if digest is not None and take:
            digest(dest[:take])
        self.received, self.want = take, len(dest)
        if take < len(dest):
            self.dest, self.digest = dest, digest
            try:
                assert self.transport is not None
                self.transport.resume_reading()
                await self._wait()
            finally:
                self.dest = self.digest = None
        if extra > take and whole:
            raise ConnectionError("the server sent more than Content-Length")
        return self.received

    async def small_body(self, length: int) -> bytes:
        self.want = length
        if self.used - self.head_end < length:
            assert self.transport is not None
            self.transport.resume_reading()
            await self._wait()
        return bytes(self.buf[self.head_end : self.head_end + length])

    def park(self) -> None:
        """Idle in the pool, reading, so that a close by the server is noticed."""
        self.active = False
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


_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def peek_token(body: bytes) -> str | None:
    """The continuation token of a raw ListObjectsV2 page, found without parsing it (so the
    next page can be asked for first); :func:`parse_listing` has the last word."""
    found = _NEXT_TOKEN.search(body) if _TRUNCATED.search(body) else None
    return xml_unescape(found.group(1).decode(), {"&quot;": '"', "&apos;": "'"}) if found else None


def parse_listing(body: bytes) -> tuple[list[tuple[str, int | None]], str | None]:
    """A ListObjectsV2 page: ``(key, size)`` of objects then ``(prefix, None)`` of common
    prefixes, and the continuation token (None on the last page)."""
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
    entries = objects + prefixes
    if url_encoded:  # decoded as botocore decodes them
        entries = [(unquote_plus(key), size) for key, size in entries]
    if truncated and not token:
        raise ConnectionError("a truncated listing without a continuation token")
    return entries, token if truncated else None


def _keep_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


def response_fields(headers: dict[str, str]) -> dict[str, Any]:
    """The fields of a GET response, named as botocore names them."""
    out: dict[str, Any] = {
        "ContentLength": int(headers.get("content-length", "0")),
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


class HttpGetter:
    """Requests over pooled keep-alive connections, sent where botocore would send them.

    Only :class:`.transport.Transport` decides which requests come here: it gives each
    (bucket, operation) its route (``routes``) before the first request, from botocore's own
    endpoint resolution and proxy configuration (:mod:`.endpoint`)."""

    def __init__(
        self,
        client: Any,
        ssl_context: ssl.SSLContext | None,
        timeouts: tuple[float, float],
        faults: Any = None,
    ) -> None:
        self._client = client
        self._faults = faults  # a FaultInjector (inject_failure_rate), asked per request
        self._signer = _Signer(client._request_signer._credentials)
        self._ssl = ssl_context
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
        async with asyncio.timeout(self._connect_timeout):
            if proxy is None:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._read_timeout),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
            elif not tls:  # plain HTTP through the proxy: absolute-form requests, as aiohttp
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._read_timeout), proxy.host, proxy.port
                )
            else:  # HTTPS: a CONNECT tunnel, then TLS with the endpoint inside it
                raw = await open_tunnel(proxy, host, port)
                conn = _Conn(self._read_timeout)
                try:
                    transport = await loop.start_tls(
                        raw, conn, self._ssl or ssl.create_default_context(), server_hostname=host
                    )
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
            status, headers = await conn.head(request)
            length = int(headers.get("content-length", "-1"))
            if length < 0:
                raise ConnectionError("ListObjectsV2 answered without a Content-Length")
            body = await conn.small_body(length)
            conn.reusable = _keep_alive(headers)
            if status != 200:
                raise _error(status, body, "ListObjectsV2")
        return body

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
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
        async with self._borrow(where) as conn:
            status, answer = await conn.head(request, data)
            length = int(answer.get("content-length", "0"))
            body = await conn.small_body(length) if length <= MAX_HEAD else b""
            if status != 200:  # the server may not have read the whole body: not reusable
                raise _error(status, body, operation)
            conn.reusable = _keep_alive(answer) and length <= MAX_HEAD
            if not answer.get("etag"):
                raise ConnectionError(f"{operation} answered without an ETag")
            return {
                "ETag": answer["etag"],
                "ChecksumCRC32": answer.get("x-amz-checksum-crc32") or crc,
                "VersionId": answer.get("x-amz-version-id"),
            }

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, data: bytes
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
            status, headers = await conn.head(request)
            conn.reusable = _keep_alive(headers)
            if status != 200:
                raise _error(status, b"", "HeadObject")
            return response_fields(headers)

    async def get(
        self,
        bucket: str,
        key: str,
        range_header: str | None,
        etag: str | None,
        prepare: Callable[[dict[str, Any]], Awaitable[tuple[memoryview, Digest | None]]],
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
            length = int(headers.get("content-length", "0"))
            if status not in (200, 206):
                body = await conn.small_body(length) if length <= MAX_HEAD else b""
                conn.reusable = _keep_alive(headers) and length <= MAX_HEAD
                raise _error(status, body)
            dest, digest = await prepare(response_fields(headers))
            whole = len(dest) == length
            try:
                if len(dest) > length:
                    raise ConnectionError(f"buffer of {len(dest)} bytes for a body of {length}")
                await conn.body_into(dest, whole, digest)
            finally:
                progress[0] += conn.received
                dest.release()
            conn.reusable = _keep_alive(headers) and whole

    def close(self) -> None:
        for pool in self._idle.values():
            while pool:
                pool.pop().close()
