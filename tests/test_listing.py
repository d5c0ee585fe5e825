"""Listings: recursive calls never return sibling prefixes (where metaflow.S3 does), zero-byte
objects exist, and the next page is asked for with the token found in the raw page."""

from __future__ import annotations

import pytest

from s3fast import S3


def test_recursive_calls_skip_sibling_prefixes(bucket: str, boto: object) -> None:
    for key in ["data/dir/a", "data/dir/sub/b", "data/dir", "data/dir_v2/c", "data/dirt"]:
        boto.put_object(Bucket=bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/data") as s3:
        got = {o.url.split("/data/", 1)[1] for o in s3.get_recursive(["dir"])}
        assert got == {"dir", "dir/a", "dir/sub/b"}
        assert {o.key for o in s3.list_recursive(["dir"])} == {"a", "sub/b"}
    with S3(s3root=f"s3://{bucket}/data/dir") as s3:
        # the root object itself keeps its full URL as key, as in metaflow
        assert {o.key for o in s3.get_all()} == {f"s3://{bucket}/data/dir", "a", "sub/b"}


def test_zero_byte_objects_exist_in_listings(bucket: str, boto: object) -> None:
    boto.put_object(Bucket=bucket, Key="p/empty", Body=b"")  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/p") as s3:
        (obj,) = s3.list_paths()
        assert obj.exists and obj.size == 0  # metaflow.S3 reports exists=False here


@pytest.mark.unit
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
