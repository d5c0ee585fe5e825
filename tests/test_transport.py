"""The lean path against SeaweedFS: keep-alive reuse, bodies that break off,
503 bursts, stalls (through a fault-injecting proxy), and HTTPS with a self-signed CA."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import pathlib
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

import s3fast._engine.get
from s3fast import S3, AsyncS3, MetaflowS3TransferError, S3GetObject, TransferConfig, _bridge
from s3fast._engine.copy import copy_object
from s3fast._engine.get import head_object
from s3fast._engine.session import close_idle_clients
from s3fast.limits import MiB
from s3fast.testing import SeaweedFS
from s3fast.urls import parse

from ._internals import engine_of
from .conftest import Server, open_uploads, self_signed
from .proxy import REDIRECT, SLOWDOWN, FaultProxy, Faults


@pytest.fixture
def data(seaweed_bucket: str, seaweed: Server) -> dict[str, bytes]:
    return seaweed.seed(seaweed_bucket, {f"o{i}": os.urandom(1 * MiB + i) for i in range(8)})


def _client(bucket: str, proxy: FaultProxy, **cfg: object) -> S3:
    config = TransferConfig(**{"max_concurrency": 1, "range_size": 256 * 1024, **cfg})  # type: ignore[arg-type]
    return S3(s3root=f"s3://{bucket}", endpoint_url=proxy.url, config=config)


def test_keep_alive_reuses_one_connection(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The others wait for the first download's size however slow a loaded machine is.
    monkeypatch.setattr(s3fast._engine.get, "FIRST_DOWNLOAD_WAIT", 30.0)
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy, verify_checksums=False) as s3:
        objs = s3.get_many(list(data), in_memory=True)
        assert [o.blob for o in objs] == list(data.values())
        objs = s3.get_many([S3GetObject(k, 10, 1000) for k in data])
        assert [o.blob for o in objs] == [v[10:1010] for v in data.values()]
    assert proxy.connections == 1  # 8 objects x 5 ranges, then 8 partial reads, on one socket
    close_idle_clients()  # the next contexts start with connections of their own
    # A new client's first checked download of unknown size starts with an unranged GET (the
    # checksum comes only with that or a HEAD); for an object over two ranges that reads one
    # range and drops the connection. The others wait for its size: bigger than two ranges,
    # so they start ranged, a HEAD brings the checksum, and no connection is dropped.
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy) as s3:
        objs = s3.get_many(list(data), in_memory=True)
        assert [o.blob for o in objs] == list(data.values())
        assert proxy.connections == 1 + 1
        objs = s3.get_many(list(data), in_memory=True)
        assert [o.blob for o in objs] == list(data.values())
        assert proxy.connections == 1 + 1
    close_idle_clients()
    # Sizes known from a listing: ranged from the first object.
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy) as s3:
        objs = s3.get_all(in_memory=True)
        assert sorted(o.key for o in objs) == sorted(data)
        assert all(o.blob == data[o.key] for o in objs)
    assert proxy.connections == 1


def test_a_new_client_downloads_one_object_first_for_its_size(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new client's batch of checked downloads: one object goes first (unranged, its
    response carries the checksum and tells the size); the others wait for that size, and
    being big, are read in ranges with the checksum from a HEAD. Small objects: one unranged
    GET each."""
    wait = s3fast._engine.get.FIRST_DOWNLOAD_WAIT
    monkeypatch.setattr(s3fast._engine.get, "FIRST_DOWNLOAD_WAIT", 30.0)  # however slow
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy, max_concurrency=8) as s3:
        objs = s3.get_many(list(data), in_memory=True)
        assert [o.blob for o in objs] == list(data.values())
    assert proxy.kinds["GET whole"] == 1 and proxy.kinds["HEAD"] == len(data) - 1
    ranges = sum(-(-len(v) // (256 * 1024)) for v in data.values())
    assert proxy.kinds["GET ranged"] == ranges - 1  # every range but the first download's first
    small = {f"s{i}": os.urandom(1000) for i in range(8)}
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        s3.put_many(list(small.items()))
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy, max_concurrency=8) as s3:
        objs = s3.get_many(list(small), in_memory=True)
        assert [o.blob for o in objs] == list(small.values())
    assert dict(proxy.kinds) == {"GET whole": len(small)}
    # A first download whose answer is slow holds the others for a second at most: they go
    # ahead unranged, as if none had gone first.
    monkeypatch.setattr(s3fast._engine.get, "FIRST_DOWNLOAD_WAIT", wait)
    proxy.set(Faults(stall=3.0, times=1))
    with _client(seaweed_bucket, proxy, max_concurrency=8) as s3:
        objs = s3.get_many(list(data), in_memory=True)
        assert [o.blob for o in objs] == list(data.values())
    assert proxy.kinds["GET whole"] == len(data) and proxy.kinds["HEAD"] == 0


@pytest.mark.parametrize("in_memory", [True, False])
def test_body_cut_midway_is_resumed(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy, in_memory: bool
) -> None:
    proxy.set(Faults(cut_after=100_000, times=3))
    with _client(seaweed_bucket, proxy) as s3:
        objs = s3.get_many(list(data), in_memory=in_memory)
        for obj, want in zip(objs, data.values(), strict=True):
            assert hashlib.sha256(obj.blob or b"").digest() == hashlib.sha256(want).digest()
    assert proxy.injected == 3


def test_slowdown_bursts_are_retried_then_reported(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy
) -> None:
    proxy.set(Faults(answer=SLOWDOWN, times=3))
    with _client(seaweed_bucket, proxy, max_attempts=5) as s3:
        assert s3.get("o1", in_memory=True).blob == data["o1"]
    proxy.set(Faults(answer=SLOWDOWN, times=100))
    with _client(seaweed_bucket, proxy, max_attempts=3) as s3:
        with pytest.raises(MetaflowS3TransferError, match=f"s3://{seaweed_bucket}/o1"):
            s3.get("o1")
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)


def test_region_redirect_hands_the_bucket_to_botocore(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy
) -> None:
    proxy.set(Faults(answer=REDIRECT, times=1))
    with _client(seaweed_bucket, proxy) as s3:
        assert s3.get("o3", in_memory=True).blob == data["o3"]
        assert s3.info("o4").size == len(data["o4"])
        assert s3.transport_for() == "botocore"
    assert proxy.injected == 1


def test_stalled_response_times_out_and_retries(
    seaweed_bucket: str, data: dict[str, bytes], proxy: FaultProxy
) -> None:
    proxy.set(Faults(stall=3.0, times=1))
    with _client(seaweed_bucket, proxy, read_timeout=0.5) as s3:
        assert s3.get("o2", in_memory=True).blob == data["o2"]
    assert proxy.connections >= 2


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedFS, str]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with SeaweedFS(https_cert=cert, https_key=key) as server:
        yield server, cert


def test_https_verifies_certificates(
    tls_server: tuple[SeaweedFS, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_server
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    body = os.urandom(3 * MiB + 5)
    cfg = TransferConfig(ca_bundle=ca, range_size=1 * MiB)
    with S3(endpoint_url=server.https_url, config=cfg) as s3:
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(
            Bucket="tls-bucket"
        )
        s3.put("s3://tls-bucket/x", body)
        assert s3.get("s3://tls-bucket/x", in_memory=True).blob == body
        assert s3.get("s3://tls-bucket/x").blob == body
    with S3(endpoint_url=server.https_url, config=TransferConfig(max_attempts=1)) as s3:
        with pytest.raises(MetaflowS3TransferError, match="s3://tls-bucket/x") as err:
            s3.get("s3://tls-bucket/x")
        assert (
            isinstance(err.value.__cause__, ssl.SSLError) or "certificate" in str(err.value).lower()
        )
    with S3(endpoint_url=server.https_url, config=TransferConfig(verify_ssl=False)) as s3:
        assert s3.get("s3://tls-bucket/x", in_memory=True).blob == body


@pytest.mark.parametrize("size", [12 * MiB, 1 * MiB], ids=["multipart", "single"])
def test_upload_checksum_is_checked_by_the_server(
    seaweed_bucket: str,
    seaweed: Server,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    """UploadPart and PutObject go out unhashed (UNSIGNED-PAYLOAD) but with a signed CRC32
    header: bytes that do not match it must be refused, and a multipart upload aborted.
    (SeaweedFS checks them; moto does not, so this runs on SeaweedFS only.)"""
    bucket = seaweed_bucket
    import s3fast._engine.http as http
    from s3fast._engine.checksums import CRC32

    local = tmp_path / "f"
    local.write_bytes(os.urandom(size))
    cfg = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, max_attempts=1)
    monkeypatch.setattr(http, "CRC32", SimpleNamespace(of=lambda data: 12345, encode=CRC32.encode))
    with S3(s3root=f"s3://{bucket}", config=cfg) as s3:
        with pytest.raises(Exception, match=f"s3://{bucket}/f"):
            s3.put_files([("f", str(local))])
    client = seaweed.client()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def test_listing_pages_and_decodes_keys(seaweed_bucket: str, seaweed: Server) -> None:
    """More than one ListObjectsV2 page, and keys that URL encoding mangles if decoded wrong."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"p/{i:05d}" for i in range(1100)] + ["p/a+b c%20d", "p/ünï/x", "p/q?x=1#y"]
    client = seaweed.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=seaweed_bucket, Key=k, Body=b"x"), keys))  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        assert sorted(o.key for o in s3.list_recursive(["p"])) == sorted(k[2:] for k in keys)
        top = s3.list_paths(["p"])
        assert {o.key for o in top if not o.exists} == {"ünï"}
        assert len([o for o in top if o.exists]) == 1102


def test_listing_fails_cleanly_on_a_later_page(seaweed_bucket: str, proxy: FaultProxy) -> None:
    """The next page is asked for while this one is parsed: when it keeps failing, the
    listing raises a typed error naming the prefix, nothing is left running, and the client
    still lists."""
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        s3.put_many([(f"p/{i:05d}", b"") for i in range(2100)])  # three pages
    proxy.set(Faults(answer=SLOWDOWN, times=1000, match="continuation-token"))
    with _client(seaweed_bucket, proxy, max_attempts=2) as s3:
        with pytest.raises(MetaflowS3TransferError, match=f"s3://{seaweed_bucket}/p"):
            s3.list_recursive(["p"])
        assert proxy.injected >= 2
        proxy.set(Faults())
        assert len(s3.list_recursive(["p"])) == 2100


@pytest.fixture
def carried(seaweed_bucket: str, seaweed: Server, tmp_path: pathlib.Path) -> dict[str, bytes]:
    """Objects with each full-object checksum: CRC32 from s3fast's PutObject and multipart
    upload, CRC32C and CRC64NVME from boto3."""
    objs = {k: os.urandom(n) for k, n in [("put", 100_000), ("mpu", 6 * MiB + 3)]}
    (tmp_path / "mpu").write_bytes(objs["mpu"])
    cfg = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)
    with S3(s3root=f"s3://{seaweed_bucket}", config=cfg) as s3:
        s3.put("put", objs["put"])
        s3.put_files([("mpu", str(tmp_path / "mpu"))])
    client = seaweed.client()
    for algorithm, size in [("CRC32C", 300_000), ("CRC64NVME", 1 * MiB)]:
        objs[algorithm] = os.urandom(size)
        client.put_object(  # type: ignore[attr-defined]
            Bucket=seaweed_bucket, Key=algorithm, Body=objs[algorithm], ChecksumAlgorithm=algorithm
        )
    head = client.head_object(Bucket=seaweed_bucket, Key="mpu", ChecksumMode="ENABLED")  # type: ignore[attr-defined]
    assert head["ChecksumType"] == "FULL_OBJECT" and head["ChecksumCRC32"]
    client.close()  # type: ignore[attr-defined]
    return objs


@pytest.mark.parametrize("in_memory", [True, False], ids=["memory", "file"])
@pytest.mark.parametrize("key", ["put", "mpu", "CRC32C", "CRC64NVME"])
def test_flipped_byte_is_caught_by_the_checksum(
    seaweed_bucket: str, carried: dict[str, bytes], proxy: FaultProxy, key: str, in_memory: bool
) -> None:
    """One byte flipped in flight: the download is checked against the object's checksum,
    fetched again, and comes back right. Flipped every time: it raises, naming the URL, and
    leaves no file behind."""
    url = f"s3://{seaweed_bucket}/{key}"
    proxy.set(Faults(flip_at=1000, close=True, times=1))
    with _client(seaweed_bucket, proxy) as s3:
        obj = s3.get(key, in_memory=in_memory)
        assert hashlib.sha256(obj.blob or b"").digest() == hashlib.sha256(carried[key]).digest()
    assert proxy.injected == 1
    proxy.set(Faults(flip_at=1000, close=True, times=1000))
    with _client(seaweed_bucket, proxy) as s3:
        with pytest.raises(MetaflowS3TransferError, match=f"{url}: checksum mismatch"):
            s3.get(key, in_memory=in_memory)
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)


@pytest.mark.parametrize("transport", ["http", "botocore"])
@pytest.mark.parametrize("key", ["mpu", "CRC32C", "CRC64NVME"])
def test_checksums_are_taken_as_bodies_land(
    seaweed_bucket: str,
    carried: dict[str, bytes],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    transport: str,
) -> None:
    """Each body is checksummed chunk by chunk as it lands (while in cache), not read again
    afterwards: every byte is fed once, also across a body that broke off and was resumed,
    whose pieces combine to the object's checksum (nothing is fetched again)."""
    import s3fast._engine.get as get

    fed: list[int] = []
    update = get._Piece.update
    monkeypatch.setattr(
        get._Piece, "update", lambda self, chunk: (fed.append(len(chunk)), update(self, chunk))
    )
    size = len(carried[key])
    with _client(seaweed_bucket, proxy, transport=transport, range_size=8 * MiB) as s3:
        for cut in (None, size // 3):
            fed.clear()
            proxy.set(Faults(cut_after=cut, times=1) if cut else Faults())
            assert s3.get(key, in_memory=True).blob == carried[key]
            assert sum(fed) == size and len(fed) > 1
            assert proxy.injected == (1 if cut else 0)


@pytest.mark.parametrize("transport", ["http", "botocore"])
@pytest.mark.parametrize("key", ["mpu", "CRC32C", "CRC64NVME"])
def test_ranged_download_is_checked_against_a_head(
    seaweed_bucket: str, carried: dict[str, bytes], proxy: FaultProxy, key: str, transport: str
) -> None:
    """Once the client expects objects bigger than two ranges, it reads them in parallel
    ranges and takes the checksum from a HEAD of the same version (If-Match): a flipped byte
    is caught there too, fetched again, and comes back right; flipped every time, it raises
    and leaves no file behind."""
    url = f"s3://{seaweed_bucket}/{key}"
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy, transport=transport, range_size=64 * 1024) as s3:
        assert s3.get(key, in_memory=True).blob == carried[key]
        engine = engine_of(s3)
        assert engine.expects_big(None)  # an object over two ranges: it learned
        proxy.set(Faults(flip_at=1000, close=True, times=1))
        obj = s3.get(key)
        assert obj.path and pathlib.Path(obj.path).read_bytes() == carried[key]
        assert proxy.injected == 1
        proxy.set(Faults(flip_at=1000, close=True, times=1000))
        with pytest.raises(MetaflowS3TransferError, match=f"{url}: checksum mismatch"):
            s3.get(key)
        left = [os.path.join(d, name) for d in s3.tmpdirs for name in os.listdir(d)]
        assert left == [obj.path]  # only the good download's file

        async def head_of_another_version() -> None:
            with pytest.raises(MetaflowS3TransferError, match=f"{url}: the object changed"):
                await head_object(engine, parse(url), url, "0123456789abcdef", True)

        _bridge.run(head_of_another_version())


@pytest.mark.parametrize("in_memory", [True, False], ids=["memory", "file"])
def test_ranges_that_landed_before_the_head_are_checked_after_the_fact(
    seaweed_bucket: str,
    carried: dict[str, bytes],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    in_memory: bool,
) -> None:
    """While the HEAD has not said which checksum a ranged object carries, bodies are
    checksummed with a guess (CRC32). A CRC32C object whose HEAD answers only after every
    range has landed is then checked by reading the ranges back: from a file on a thread,
    not on the event loop. The object comes back right, and a flipped byte is caught."""
    import s3fast._engine.get as get
    from s3fast._engine.sinks import FileSink, MemorySink

    head = get.head_object

    async def slow_head(*args: object) -> object:
        await asyncio.sleep(0.5)
        return await head(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(get, "head_object", slow_head)
    sink = MemorySink if in_memory else FileSink
    on_loop: list[int] = []  # the thread of each range read back, and where files were read
    in_files: list[int] = []
    read_back, read_file = sink.checksum, FileSink._checksum

    async def checksum(self: object, *args: object) -> int:
        on_loop.append(threading.get_ident())
        return await read_back(self, *args)  # type: ignore[arg-type]

    def file_checksum(self: FileSink, *args: object) -> int:
        in_files.append(threading.get_ident())
        return read_file(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sink, "checksum", checksum)
    monkeypatch.setattr(FileSink, "_checksum", file_checksum)
    url = f"s3://{seaweed_bucket}/CRC32C"
    proxy.set(Faults())
    with _client(seaweed_bucket, proxy, range_size=64 * 1024) as s3:
        s3.get("CRC32C", in_memory=True)  # the client learns that objects span many ranges
        on_loop.clear()
        obj = s3.get("CRC32C", in_memory=in_memory)
        got = obj.blob if in_memory else pathlib.Path(obj.path or "").read_bytes()
        assert got == carried["CRC32C"]
        assert len(on_loop) >= 2  # ranges were read back, not taken from their bodies
        assert len(in_files) == (0 if in_memory else len(on_loop))
        assert not set(in_files) & set(on_loop)  # files are read back off the loop
        proxy.set(Faults(flip_at=1000, close=True, times=1000))
        with pytest.raises(MetaflowS3TransferError, match=f"{url}: checksum mismatch"):
            s3.get("CRC32C", in_memory=in_memory)


@pytest.mark.parametrize("transport", ["http", "botocore"])
def test_checksum_check_is_what_catches_the_flip(
    seaweed_bucket: str, carried: dict[str, bytes], proxy: FaultProxy, transport: str
) -> None:
    """The same flip with ``verify_checksums=False`` goes through unnoticed (the length is
    right): the checksum, not luck, is what catches it, on either transport."""
    proxy.set(Faults(flip_at=1000, close=True, times=1))
    with _client(seaweed_bucket, proxy, verify_checksums=False, transport=transport) as s3:
        assert s3.get("mpu", in_memory=True).blob != carried["mpu"]
    proxy.set(Faults(flip_at=1000, close=True, times=1000))
    with _client(seaweed_bucket, proxy, transport=transport) as s3:
        with pytest.raises(MetaflowS3TransferError, match="checksum mismatch"):
            s3.get("mpu", in_memory=True)


@pytest.mark.parametrize("server", ["seaweedfs-https"], indirect=True)
def test_no_tls_connection_outlives_its_loop(bucket: str, boto: object) -> None:
    """Connections dropped mid-body over TLS (the rest of a large object after its first range,
    a cancelled GET, a cancelled UploadPartCopy through botocore) are gone when the client
    closes: none is found half-closed, unreferenced, after its event loop. Before Python
    3.12.8 a TLS close waits for the server; this caught 256 leaked sockets in ten GETs."""
    data = os.urandom(24 * MiB)
    config = TransferConfig(range_size=1 * MiB, max_concurrency=4)

    async def rounds(i: int) -> None:
        async with AsyncS3(s3root=f"s3://{bucket}", config=config) as s3:
            if i == 0:
                await s3.put("big", data)
            got = await s3.get("big", in_memory=True)
            assert got.blob == data
            task = asyncio.ensure_future(s3.get("big", in_memory=True))
            await asyncio.sleep(0.02)
            task.cancel()
            copy = asyncio.ensure_future(
                copy_object(
                    engine_of(s3),
                    parse(f"s3://{bucket}/big"),
                    parse(f"s3://{bucket}/copy"),
                    multipart_threshold=6 * MiB,
                    part_size=5 * MiB,
                )
            )
            for _ in range(400):  # until the upload exists on the server
                if copy.done() or await asyncio.to_thread(open_uploads, boto, bucket):
                    break
                await asyncio.sleep(0.005)
            copy.cancel()
            for t in (task, copy):
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    leaked = []
    for i in range(4):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(rounds(i))
        loop.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        leaked += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
    assert open_uploads(boto, bucket) == []


_WITHOUT_CRT = """
import os, sys
import botocore.auth
from s3fast import S3, TransferConfig
from s3fast._engine import checksums
assert botocore.auth.AUTH_TYPE_MAPS["s3v4"].__module__ == "botocore.auth"  # not awscrt's
body = os.urandom(3 * 2**20 + 5)
for transport in ("http", "botocore"):
    config = TransferConfig(transport=transport, multipart_threshold=2**20 * 5, part_size=2**20 * 5)
    with S3(s3root=sys.argv[1], config=config) as s3:
        s3.put("crt-" + transport, body)
        assert s3.get("crt-" + transport, in_memory=True).blob == body
assert checksums.CRC64NVME.update is not None  # s3fast's own checks still have awscrt
print("ok")
"""


def test_botocore_without_awscrt(seaweed_bucket: str, seaweed: Server) -> None:
    """``BOTO_DISABLE_CRT=true`` (docs/settings.md) keeps botocore as it is without awscrt:
    both transports still work, and s3fast's CRC32C/CRC64NVME checks still use awscrt."""
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_CRT, f"s3://{seaweed_bucket}"],
        env={**os.environ, **seaweed.env(), "BOTO_DISABLE_CRT": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
