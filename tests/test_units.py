"""Pure logic: URLs, roots, ranges, part planning, config, error translation, records."""

from __future__ import annotations

from types import SimpleNamespace

import botocore.exceptions
import pytest

import s3fast
from s3fast import (
    MetaflowS3AccessDenied,
    MetaflowS3InvalidRange,
    MetaflowS3NotFound,
    MetaflowS3URLException,
    RangeInfo,
    S3GetObject,
    S3Object,
    TransferConfig,
)
from s3fast._engine.client import resolve_endpoint
from s3fast._engine.get import final_end, first_range
from s3fast.errors import translate
from s3fast.limits import MAX_PARTS, GiB, MiB, TiB, part_size_for, split
from s3fast.urls import ByteRange, byte_range, join, parse, parse_content_range, resolve_root


def test_all_is_sorted_and_complete() -> None:
    assert s3fast.__all__ == sorted(s3fast.__all__)
    for name in s3fast.__all__:
        assert hasattr(s3fast, name)


def test_parse_keeps_query_and_fragment_characters() -> None:
    assert parse("s3://bkt/a#b?c=d").key == "a#b?c=d"
    assert parse("s3://bkt/x/").key == "x/"
    assert parse("s3://bkt", need_key=False).key == ""
    for bad in ["s3://", "s3:///k", "gs://b/k", "s3://b/k", "s3://bad bucket/k"]:
        with pytest.raises(MetaflowS3URLException):
            parse(bad)
    with pytest.raises(MetaflowS3URLException, match="longer"):
        parse("s3://bkt/" + "é" * 600)


def test_join_follows_metaflow() -> None:
    assert join("s3://b/root", "a/b") == "s3://b/root/a/b"
    assert join("s3://b/root", "/a") == "s3://b/root/a"
    assert join("s3://b/root", None) == "s3://b/root"
    assert join(None, "s3://b/k") == "s3://b/k"
    with pytest.raises(MetaflowS3URLException, match="s3root"):
        join(None, "k")
    with pytest.raises(MetaflowS3URLException, match="run=self"):
        join(None, "k", in_flow=True)
    with pytest.raises(MetaflowS3URLException, match="absolute"):
        join("s3://b/root", "s3://b/k")
    with pytest.raises(MetaflowS3URLException):
        join("s3://b/root", 5)


def test_run_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    run = SimpleNamespace(id="12", parent=SimpleNamespace(id="MyFlow"))
    with pytest.raises(MetaflowS3URLException, match="DATATOOLS_S3ROOT"):
        monkeypatch.setattr("s3fast.urls.datatools_root", lambda: None)
        resolve_root(None, None, run, None)
    monkeypatch.undo()
    for name in (
        "S3FAST_DATATOOLS_S3ROOT",
        "METAFLOW_DATATOOLS_S3ROOT",
        "METAFLOW_DATASTORE_SYSROOT_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_S3", "s3://sys/root")
    assert resolve_root(None, None, run, None) == "s3://sys/root/data/MyFlow/12"
    monkeypatch.setenv("METAFLOW_DATATOOLS_S3ROOT", "s3://mfb/tools")
    assert resolve_root(None, None, run, None) == "s3://mfb/tools/MyFlow/12"
    monkeypatch.setenv("S3FAST_DATATOOLS_S3ROOT", "s3://fast/tools/")
    assert resolve_root(None, None, run, None) == "s3://fast/tools/MyFlow/12"
    assert resolve_root("other", None, run, None) == "s3://other/tools/MyFlow/12"
    assert resolve_root("other", "/p/q", run, None) == "s3://other/p/q/MyFlow/12"
    assert resolve_root(None, None, None, "s3://bkt/x/") == "s3://bkt/x"
    assert resolve_root(None, None, None, None) is None


def test_endpoint_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", "http://mf")
    assert resolve_endpoint(None) == "http://mf"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws")
    assert resolve_endpoint(None) == "http://aws"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws-s3")
    assert resolve_endpoint(None) == "http://aws-s3"
    assert resolve_endpoint("http://arg") == "http://arg"


def test_ranges() -> None:
    url = "s3://b/k"
    assert byte_range("k", url) is None
    assert byte_range(S3GetObject("k", None, None), url) is None
    assert byte_range(S3GetObject("k", 5, None), url) == ByteRange(5, None)
    assert ByteRange(5, None).header() == "bytes=5-"
    assert ByteRange(0, -10).header() == "bytes=-10"
    assert ByteRange(500, 100).header() == "bytes=500-599"
    for bad in [
        S3GetObject("k", -1, 3),
        S3GetObject("k", 0, 0),
        S3GetObject("k", 1.5, 3),
        S3GetObject("k", True, 3),
    ]:
        with pytest.raises(MetaflowS3InvalidRange):
            byte_range(bad, url)
    assert first_range(None, 8) == "bytes=0-7"
    assert first_range(ByteRange(10, 100), 8) == "bytes=10-17"
    assert first_range(ByteRange(10, 3), 8) == "bytes=10-12"
    assert first_range(ByteRange(0, -100), 8) == "bytes=-100"
    assert final_end(ByteRange(10, 100), 50) == 49
    assert final_end(None, 50) == 49
    assert parse_content_range("bytes 0-9/100", url) == (0, 9, 100)
    with pytest.raises(MetaflowS3InvalidRange):
        parse_content_range("bytes */100", url)


def test_part_planning() -> None:
    assert part_size_for(100, 8 * MiB) == 8 * MiB
    assert part_size_for(100, 1) == 5 * MiB
    big = part_size_for(5 * TiB, 8 * MiB)
    assert -(-5 * TiB // big) <= MAX_PARTS and big <= 5 * GiB
    assert part_size_for(200 * GiB, 8 * MiB) == 32 * MiB
    with pytest.raises(ValueError):
        part_size_for(6 * TiB, 8 * MiB)
    assert split(0, 9, 4) == [(0, 3), (4, 7), (8, 9)]
    assert split(10, 9, 4) == []


def test_config(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        TransferConfig(max_concurrency=0)
    with pytest.raises(ValueError):
        TransferConfig(part_size=1024)
    with pytest.raises(TypeError):
        TransferConfig(8)  # type: ignore[misc]  # keyword-only
    monkeypatch.setenv("S3FAST_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("S3FAST_VERIFY_SSL", "false")
    monkeypatch.setenv("S3FAST_READ_TIMEOUT", "2.5")
    cfg = TransferConfig.from_env()
    assert (cfg.max_concurrency, cfg.verify_ssl, cfg.read_timeout) == (7, False, 2.5)
    monkeypatch.setenv("S3FAST_PART_SIZE", "lots")
    with pytest.raises(ValueError, match="S3FAST_PART_SIZE"):
        TransferConfig.from_env()


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_translate() -> None:
    url = "s3://b/k"
    cases = [
        ("NoSuchKey", 404, MetaflowS3NotFound),
        ("404", 404, MetaflowS3NotFound),
        ("NoSuchBucket", 404, MetaflowS3NotFound),
        ("AccessDenied", 403, MetaflowS3AccessDenied),
        ("SignatureDoesNotMatch", 403, MetaflowS3AccessDenied),
        ("InvalidAccessKeyId", 403, MetaflowS3AccessDenied),
        ("InvalidRange", 416, MetaflowS3InvalidRange),
    ]
    for code, status, cls in cases:
        err = translate(_client_error(code, status), url)
        assert type(err) is cls and url in str(err) and err.url == url  # type: ignore[attr-defined]
    err = translate(botocore.exceptions.NoCredentialsError(), url)
    assert isinstance(err, MetaflowS3AccessDenied) and "credentials" in str(err)
    boom = ValueError("not an I/O error")
    assert translate(boom, url) is boom


def test_s3object_fields() -> None:
    obj = S3Object(
        "s3://b/root",
        "s3://b/root/a/b",
        None,
        5,
        "text/plain",
        {"metaflow-user-attributes": '{"x": 1}', "other": "y"},
        RangeInfo(10, 2, -1),
        1.5,
        "AES256",
    )
    assert obj.key == "a/b" and obj.prefix == "s3://b/root"
    assert obj.metadata == {"x": 1} and obj.range_info == RangeInfo(10, 2, 10)
    assert obj.exists and not obj.downloaded and obj.has_info and obj.blob is None
    mem = S3Object(None, "s3://b/k", None, blob=b"abc")
    assert mem.downloaded and mem.size == 3 and mem.text == "abc" and mem.key == "s3://b/k"
    assert "in memory" in repr(mem)
    assert not S3Object(None, "s3://b/k", None).exists
    with pytest.raises(AttributeError):
        mem.size = 4  # type: ignore[misc]


@pytest.mark.parametrize("name", ["crc32", "crc32c", "crc64nvme"])
def test_checksums_of_pieces_combine_to_the_whole(name: str) -> None:
    import itertools
    import os
    import zlib

    from s3fast._engine.checksums import ALGORITHMS, combined

    algorithm = ALGORITHMS[name]
    data = os.urandom(3 * MiB + 17)
    cuts = [0, 1, 4096, 1 * MiB, 3 * MiB, len(data)]
    pieces = [(algorithm.of(data[a:b]), b - a) for a, b in itertools.pairwise(cuts)]
    assert combined(algorithm, pieces) == algorithm.of(data)
    assert algorithm.decode(algorithm.encode(algorithm.of(data))) == algorithm.of(data)
    if name == "crc32":
        assert algorithm.of(data) == zlib.crc32(data)


def test_only_full_object_checksums_are_used() -> None:
    from s3fast._engine.checksums import full_object

    crc = "/gcRcQ=="
    assert str(full_object({"ChecksumCRC32": crc, "ETag": '"e"'})) == f"CRC32 {crc}"
    assert full_object({"ChecksumCRC32": crc, "ChecksumType": "FULL_OBJECT", "ETag": '"e-2"'})
    assert full_object({"ChecksumCRC32": crc + "-2", "ETag": '"e-2"'}) is None
    assert full_object({"ChecksumCRC32": crc, "ChecksumType": "COMPOSITE"}) is None
    assert full_object({"ChecksumCRC32": crc, "ETag": '"e-2"'}) is None  # untyped, multipart
    assert full_object({"ChecksumCRC32": "not base64!", "ETag": '"e"'}) is None
    assert full_object({"ETag": '"e"'}) is None


def test_listing_token_is_found_before_the_parse() -> None:
    """The next page is asked for with the token found in the raw page; the parser agrees."""
    from s3fast._engine.http import parse_listing, peek_token

    def page(truncated: str, token: str | None) -> bytes:
        tail = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<IsTruncated>{truncated}</IsTruncated><EncodingType>url</EncodingType>"
            "<Contents><Key>a%2Bb+c</Key><Size>3</Size></Contents>"
            f"<CommonPrefixes><Prefix>d%2F</Prefix></CommonPrefixes>{tail}</ListBucketResult>"
        ).encode()

    body = page("true", "1/a&amp;b=&lt;c&gt;&quot;")
    assert peek_token(body) == '1/a&b=<c>"'
    assert parse_listing(body) == ([("a+b c", 3), ("d/", None)], peek_token(body))
    last = page("false", "ignored")
    assert peek_token(last) is None and parse_listing(last)[1] is None
    assert peek_token(page("true", None)) is None
    with pytest.raises(ConnectionError, match="without a continuation token"):
        parse_listing(page("true", None))
