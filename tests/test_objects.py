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
