"""Bad input gets the documented result or a typed error naming the key, before anything is
sent; nothing is half-done."""

from __future__ import annotations

import io

import pytest

from s3fast import (
    S3,
    MetaflowS3Exception,
    MetaflowS3InvalidObject,
    MetaflowS3InvalidRange,
    MetaflowS3URLException,
    S3GetObject,
    S3PutObject,
)


def test_bad_keys_and_values(bucket: str, boto: object) -> None:
    boto.put_object(Bucket=bucket, Key="root", Body=b"the root object")  # type: ignore[attr-defined]
    boto.put_object(Bucket=bucket, Key="root/k", Body=b"0123456789")  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/root") as s3:
        # an empty or missing key means the root itself, as in metaflow
        assert s3.get("").blob == s3.get(None).blob == b"the root object"
        # the same key twice is two downloads
        a, b = s3.get_many(["k", "k"])
        assert a.blob == b.blob == b"0123456789" and a.path != b.path
        for bad in [5, 1.5, b"k", ["k"], object()]:
            with pytest.raises(MetaflowS3URLException):
                s3.get(bad)  # type: ignore[arg-type]
        with pytest.raises(MetaflowS3URLException):
            s3.get_many("k")  # a string is not a list of keys
        with pytest.raises(MetaflowS3URLException):
            s3.get_many(None)  # type: ignore[arg-type]
        for bad_range in [
            S3GetObject("k", -5, 2),
            S3GetObject("k", 0, 0),
            S3GetObject("k", 2, 1.0),
        ]:
            with pytest.raises(MetaflowS3InvalidRange, match=f"s3://{bucket}/root/k"):
                s3.get_many(["k", bad_range])
        with pytest.raises(MetaflowS3InvalidRange):
            s3.get(S3GetObject("k", 10, 5))  # starts at the end
        for value in [None, 42, 1.5, ["x"], io.StringIO("text"), {"a": 1}]:
            with pytest.raises(MetaflowS3InvalidObject, match="'new'"):
                s3.put("new", value)  # type: ignore[arg-type]
        with pytest.raises(MetaflowS3InvalidObject):
            s3.put_many([("a", "1"), ("b",)])  # not a pair
        with pytest.raises(MetaflowS3InvalidObject):
            s3.put_files([S3PutObject("a", path=None)])
        with pytest.raises(MetaflowS3InvalidObject):
            s3.put("m", "x", metadata={"not json": object()})
        # nothing of the failed batches was written
        assert [o.key for o in s3.list_paths()] == ["k"]
    with S3() as s3:
        for bad_url in [
            "",
            "s3://",
            "s3:///k",
            "s3://ab/k",
            "s3://bad_bucket!/k",
            "file:///etc/passwd",
        ]:
            with pytest.raises(MetaflowS3URLException):
                s3.get(bad_url)
        with pytest.raises(MetaflowS3URLException, match="longer"):
            s3.put(f"s3://{bucket}/" + "k" * 1100, "x")
        # caught as the common base and as ValueError, naming the URL
        with pytest.raises(MetaflowS3Exception) as err:
            s3.get("s3://bad_bucket!/k")
    assert isinstance(err.value, MetaflowS3URLException) and isinstance(err.value, ValueError)
    assert "s3://bad_bucket!/k" in str(err.value)
