"""Deletes: delete, delete_many (DeleteObjects in batches of 1000, per-key errors reported) and
delete_recursive (sibling prefixes spared), against SeaweedFS and moto."""

from __future__ import annotations

import os

import pytest

from s3fast import S3, MetaflowS3AccessDenied, MetaflowS3Exception, Progress
from s3fast.testing import READER

from .conftest import Server, keys_in


def test_delete_one_and_many(bucket: str, boto: object) -> None:
    root = f"s3://{bucket}/d"
    with S3(s3root=root) as s3:
        s3.put_many([(f"k{i}", str(i)) for i in range(5)])
        assert s3.delete("k0") == f"{root}/k0"
        s3.delete("never-existed")  # S3 semantics: not an error
        seen: list[Progress] = []
        urls = s3.delete_many(["k1", "k2", "k2", "missing"], progress=seen.append)
    assert urls == [f"{root}/k1", f"{root}/k2", f"{root}/missing"]
    assert keys_in(boto, bucket) == ["d/k3", "d/k4"]
    assert seen[0] == Progress(0, 3, 0, None) and seen[-1] == Progress(3, 3, 0, None)


def test_delete_many_batches_over_1000_keys(bucket: str, boto: object) -> None:
    keys = [f"many/{i:05d}" for i in range(1203)]
    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put_many([(k, b"x") for k in keys] + [("keep", b"y")])
        seen: list[Progress] = []
        assert len(s3.delete_many(keys, progress=seen.append)) == 1203
    assert keys_in(boto, bucket) == ["keep"]
    # two requests (1000 + 203 keys): one report at the start, then one per request
    assert [p.objects_done for p in seen] in ([0, 1000, 1203], [0, 203, 1203])


def test_delete_recursive_spares_siblings(bucket: str, boto: object) -> None:
    for k in ["dir", "dir/a", "dir/b/c", "dir_v2/a", "dirt", "other/dir/a"]:  # one at a time:
        boto.put_object(Bucket=bucket, Key=k, Body=k.encode())  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}") as s3:  # (SeaweedFS can lose "dir" put beside "dir/a")
        deleted = s3.delete_recursive(["dir"])
    assert sorted(deleted) == [f"s3://{bucket}/{k}" for k in ["dir", "dir/a", "dir/b/c"]]
    assert keys_in(boto, bucket) == ["dir_v2/a", "dirt", "other/dir/a"]


def test_delete_many_reports_per_key_errors(seaweed_bucket: str, seaweed: Server) -> None:
    """SeaweedFS answers DeleteObjects from a read-only identity with per-key AccessDenied
    (HTTP 200): each failed key is named; nothing is silently dropped."""
    root = f"s3://{seaweed_bucket}/p"
    with S3(s3root=root) as s3:
        s3.put_many([("a", "1"), ("b", "2")])
    os.environ.update(READER.env())
    with S3(s3root=root) as s3, pytest.raises(MetaflowS3AccessDenied) as info:
        s3.delete_many(["a", "b"])
    assert f"{root}/a" in str(info.value) and f"{root}/b" in str(info.value)
    assert "2 of 2 keys were not deleted" in str(info.value)
    assert info.value.failed == {f"{root}/a": "AccessDenied", f"{root}/b": "AccessDenied"}  # type: ignore[attr-defined]
    with S3(s3root=root) as s3:
        assert [o.key for o in s3.list_recursive()] == ["a", "b"]


def test_delete_many_mixed_batch(seaweed_bucket: str, seaweed: Server, boto: object) -> None:
    """A key the server refuses (SeaweedFS: InvalidRequest for '..') is reported; the others
    in the same request are deleted."""
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        s3.put_many([("a", "1"), ("b", "2")])
        with pytest.raises(MetaflowS3Exception, match=r"1 of 3 keys.*\.\./a \(InvalidRequest"):
            s3.delete_many(["a", "../a", "b"])
        assert s3.list_recursive() == []
