"""A bucket in another region than the client's, met by the first call of a client.

moto serves any region's bucket whatever region a request is signed for, so a small proxy in
front of it answers as S3 does to a request signed for the wrong region: a HEAD gets a
bodiless ``400`` (with ``x-amz-bucket-region``), anything else ``400
AuthorizationHeaderMalformed`` naming the bucket's region. botocore follows both (it learns
the region and signs again); s3fast must hand such a bucket to botocore, not fail, and take
it back on the lean path once botocore knows the bucket's region.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import threading
import uuid
from collections.abc import Iterator

import pytest

from s3fast import S3, AsyncS3, TransferConfig
from s3fast.limits import MiB

from .conftest import Server

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
pytestmark = pytest.mark.timeout(120)


class RegionProxy:
    """Forwards to ``upstream`` only requests signed for their bucket's region (path-style
    URLs; ``regions``: bucket -> region); answers the others as S3 does."""

    def __init__(self, upstream_port: int, regions: dict[str, str]) -> None:
        self.upstream_port = upstream_port
        self.regions = regions
        # refusals by method, the region signed for and the sender: "HEAD us-east-1 lean", ...
        self.refused: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> RegionProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wrong(self, method: str, target: str, headers: dict[str, str]) -> bytes | None:
        bucket = target.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        want = self.regions.get(bucket)
        found = _SCOPE.search(headers.get("authorization", ""))
        signed = found.group(1) if found else ""
        if want is None or signed == want:
            return None
        sender = "botocore" if "botocore" in headers.get("user-agent", "").lower() else "lean"
        self.refused[f"{method} {signed} {sender}"] += 1
        common = f"x-amz-bucket-region: {want}\r\nx-amz-request-id: 0000\r\nServer: AmazonS3\r\n"
        if method == "HEAD":
            return f"HTTP/1.1 400 Bad Request\r\n{common}Content-Type: application/xml\r\n\r\n".encode()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed'
            f"</Code><Message>The authorization header is malformed; the region '{signed}' is "
            f"wrong; expecting '{want}'</Message><Region>{want}</Region>"
            "<RequestId>0000</RequestId></Error>"
        )
        return (
            f"HTTP/1.1 400 Bad Request\r\n{common}Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (``Connection: close`` on every answer)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            answer = self._wrong(method, target, headers)
            expect = headers.get("expect", "").lower() == "100-continue"
            body = b""
            if answer is None or not expect:  # a refusal does not wait for the body
                if answer is None and expect:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            if answer is None:
                self.forwarded += 1
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
                # ask upstream to close after answering, so its answer ends with the connection
                rest = [
                    ln
                    for ln in lines[1:]
                    if ln and not ln.lower().startswith(("connection:", "expect:"))
                ]
                up_writer.write(
                    "\r\n".join([lines[0], *rest, "Connection: close", "", ""]).encode("latin-1")
                    + body
                )
                await up_writer.drain()
                answer = await up_reader.read()
                up_writer.close()
            else:
                answer = answer.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
def eu_bucket(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, bytes]]:
    """A bucket in eu-west-1 holding ``k``; the environment is a us-east-1 client's."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="eu-west-1")
    bucket = f"eu-{uuid.uuid4().hex[:16]}"
    client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    body = os.urandom(MiB + 7)
    client.put_object(Bucket=bucket, Key="k", Body=body)
    yield bucket, body
    client.close()


@pytest.fixture
def region_proxy(moto_server: Server, eu_bucket: tuple[str, bytes]) -> Iterator[RegionProxy]:
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    with RegionProxy(port, {eu_bucket[0]: "eu-west-1"}) as proxy:
        yield proxy


def _s3(bucket: str, proxy: RegionProxy) -> S3:
    return S3(s3root=f"s3://{bucket}", endpoint_url=proxy.url, config=TransferConfig())


def test_the_region_proxy_refuses_what_s3_refuses(
    eu_bucket: tuple[str, bytes], region_proxy: RegionProxy
) -> None:
    """The stand-in for S3 is real: botocore itself meets the 400s and follows them."""
    import boto3

    bucket, body = eu_bucket
    client = boto3.client("s3", endpoint_url=region_proxy.url, region_name="us-east-1")
    try:
        assert client.head_object(Bucket=bucket, Key="k")["ContentLength"] == len(body)
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    finally:
        client.close()
    assert region_proxy.refused == {"HEAD us-east-1 botocore": 1}  # then it knew the region
    assert region_proxy.forwarded >= 2


def test_cross_region_info_as_the_first_call(
    eu_bucket: tuple[str, bytes], region_proxy: RegionProxy
) -> None:
    bucket, body = eu_bucket
    with _s3(bucket, region_proxy) as s3:
        info = s3.info("k")  # the client's very first request
        assert info.exists and info.size == len(body)
        # the lean HEAD met the 400, then botocore's (which learned the region from it)
        assert region_proxy.refused == {"HEAD us-east-1 lean": 1, "HEAD us-east-1 botocore": 1}
        # botocore knows the region now: the lean path signs for it
        assert s3.transport_for() == "lean"
        assert s3.get("k").blob == body
        assert s3.info("missing", return_missing=True).exists is False
        assert [o.key for o in s3.list_paths()] == ["k"]
        s3.put("new", b"x" * 1000)
        assert s3.get("new", in_memory=True).blob == b"x" * 1000
        assert s3.transport_for() == "lean"
    assert len(region_proxy.refused) == 2  # and none after the first call


@pytest.mark.parametrize("first", ["get", "list", "put"])
def test_cross_region_first_call_of_each_kind(
    eu_bucket: tuple[str, bytes], region_proxy: RegionProxy, first: str
) -> None:
    bucket, body = eu_bucket
    with _s3(bucket, region_proxy) as s3:
        if first == "get":
            assert s3.get("k", in_memory=True).blob == body
        elif first == "list":
            assert [o.key for o in s3.list_paths()] == ["k"]
        else:
            s3.put("p", b"payload")
            assert s3.get("p", in_memory=True).blob == b"payload"
        assert s3.transport_for() == "lean"
        assert s3.get("k", in_memory=True).blob == body
    lean = {k: n for k, n in region_proxy.refused.items() if k.endswith(" lean")}
    assert sum(lean.values()) == 1, region_proxy.refused  # one lean request, then botocore


@pytest.mark.asyncio
async def test_cross_region_info_async_first_call(
    eu_bucket: tuple[str, bytes], region_proxy: RegionProxy
) -> None:
    bucket, body = eu_bucket
    async with AsyncS3(s3root=f"s3://{bucket}", endpoint_url=region_proxy.url) as s3:
        assert (await s3.info("k")).size == len(body)
        assert await s3.transport_for() == "lean"
