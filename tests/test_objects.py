"""The result record: S3Object's read-only properties, as metaflow.S3 defines them."""

from __future__ import annotations

import pytest

from s3fast import RangeInfo, S3Object


@pytest.mark.unit
def test_s3object_fields() -> None:
    obj = S3Object(
        "s3://b/root",
        "s3://b/root/a/b",
        None,
        size=5,
        content_type="text/plain",
        metadata={"metaflow-user-attributes": '{"x": 1}', "other": "y"},
        range_info=RangeInfo(10, 2, -1),
        last_modified=1.5,
        encryption="AES256",
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


@pytest.mark.unit
@pytest.mark.parametrize(
    "prefix",
    ["s3://b/p/", "s3://b/p", "s3://b/", "s3://b", "s3://b/p/q/k", "s3://b/dir/"],
)
def test_listed_objects_are_what_the_constructor_makes(prefix: str) -> None:
    """The listing's fast maker sets every field as ``S3Object(...)`` would."""
    from s3fast.objects import listed_objects

    entries = [("p/q/k", 3), ("p/q/", None), ("dir/", None), ("p/q/k", 0), ("a+b%2F", 7)]
    fast = listed_objects(prefix, "b", entries)
    slow = [S3Object(prefix, f"s3://b/{key}", None, size=size) for key, size in entries]
    for one, other in zip(fast, slow, strict=True):
        assert {n: getattr(one, n) for n in S3Object.__slots__} == {
            n: getattr(other, n) for n in S3Object.__slots__
        }
        assert (one.key, one.url, one.prefix, one.exists, one.size) == (
            other.key,
            other.url,
            other.prefix,
            other.exists,
            other.size,
        )
