"""s3fast.S3 against metaflow.S3 itself, on the same SeaweedFS: same signatures, same results
for the same calls (apart from the deliberate differences the README lists, tested in
test_listing.py, test_put_semantics.py and test_errors.py), and objects written by one read
back identically by the other."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest

import s3fast
from s3fast import S3, S3GetObject, S3PutObject

METHODS = [
    "get",
    "get_many",
    "get_recursive",
    "get_all",
    "put",
    "put_many",
    "put_files",
    "list_paths",
    "list_recursive",
    "info",
    "info_many",
]
FIELDS = [
    "url",
    "key",
    "prefix",
    "exists",
    "downloaded",
    "size",
    "has_info",
    "content_type",
    "metadata",
    "range_info",
    "last_modified",
    "encryption",
    "blob",
]


@pytest.fixture
def mf(seaweed_bucket: str) -> Any:
    """metaflow.S3, pointed at the same server through the environment."""
    import metaflow

    return metaflow.S3


def _params(fn: Any) -> list[tuple[str, Any]]:
    return [
        (p.name, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind is not p.KEYWORD_ONLY and p.kind is not p.VAR_KEYWORD
    ]


@pytest.mark.unit
def test_method_signatures_match_metaflow() -> None:
    from metaflow import S3 as MetaflowS3

    for name in METHODS:
        assert _params(getattr(S3, name)) == _params(getattr(MetaflowS3, name)), name
        assert hasattr(s3fast.AsyncS3, name)
        assert _params(getattr(s3fast.AsyncS3, name)) == _params(getattr(S3, name)), name
    for name in ["get", "get_many", "get_recursive", "get_all"]:
        assert inspect.signature(getattr(S3, name)).parameters["in_memory"].default is False


@pytest.mark.unit
def test_records_and_exceptions_match_metaflow() -> None:
    from metaflow.plugins.datatools import s3 as mfs3

    for name in ["S3GetObject", "S3PutObject", "RangeInfo"]:
        assert getattr(s3fast, name)._fields == getattr(mfs3, name)._fields, name
    assert S3PutObject("k")._asdict() == mfs3.S3PutObject("k")._asdict()
    mf_props = {n for n, v in vars(mfs3.S3Object).items() if isinstance(v, property)}
    ours = {n for n, v in vars(s3fast.S3Object).items() if isinstance(v, property)}
    assert mf_props <= ours and {"etag", "version_id"} <= ours
    for name in dir(mfs3):
        if name.startswith("MetaflowS3"):
            assert hasattr(s3fast, name), name


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in FIELDS}


def _same(ours: list[Any], theirs: list[Any]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert _fields(a) == _fields(b)


def test_same_results_as_metaflow(seaweed_bucket: str, mf: Any, tmp_path: Any) -> None:
    root = f"s3://{seaweed_bucket}/conf"
    big = os.urandom(3 * 1024 * 1024 + 11)
    with mf(s3root=root, tmproot=str(tmp_path)) as m:
        m.put_many(
            [
                S3PutObject("a/one.txt", "one", content_type="text/x-one", metadata={"m": 1}),
                S3PutObject("a/b/two.bin", big, metadata={"nested": {"x": [1, 2]}}),
                S3PutObject("ünï/cöde #1.txt", "unicode"),
                S3PutObject("top", "top level"),
            ]
        )
    gets = [
        "a/one.txt",
        "a/b/two.bin",
        "ünï/cöde #1.txt",
        "missing",
        S3GetObject("a/b/two.bin", 10, 100),
        S3GetObject("a/b/two.bin", 1000, None),
        S3GetObject("a/b/two.bin", None, -7),
    ]
    with mf(s3root=root, tmproot=str(tmp_path)) as m, S3(s3root=root, tmproot=str(tmp_path)) as s:
        for return_info in (True, False):
            _same(
                s.get_many(gets, return_missing=True, return_info=return_info),
                m.get_many(gets, return_missing=True, return_info=return_info),
            )
            _same(
                [s.get("a/one.txt", return_info=return_info)],
                [m.get("a/one.txt", return_info=return_info)],
            )
            _same(
                s.get_recursive(["a"], return_info=return_info),
                m.get_recursive(["a"], return_info=return_info),
            )
            _same(s.get_all(return_info=return_info), m.get_all(return_info=return_info))
        _same([s.get("missing", return_missing=True)], [m.get("missing", return_missing=True)])
        _same(s.list_paths(), m.list_paths())
        _same(s.list_paths(["a", "ünï"]), m.list_paths(["a", "ünï"]))
        _same(s.list_recursive(), m.list_recursive())
        _same(s.list_recursive(["a"]), m.list_recursive(["a"]))
        _same(
            s.info_many(["a/one.txt", "missing", "top"], return_missing=True),
            m.info_many(["a/one.txt", "missing", "top"], return_missing=True),
        )
        _same([s.info("a/b/two.bin")], [m.info("a/b/two.bin")])
        assert s.put("new1", "x") == m.put("new1", "x") == f"{root}/new1"
        # overwrite=False: existing keys are left alone and left out of the result
        assert s.put_many([("q1", "1"), ("top", "t")], overwrite=False) == [("q1", f"{root}/q1")]
        assert m.put_many([("q2", "1"), ("top", "t")], overwrite=False) == [("q2", f"{root}/q2")]
        assert s.get("top").text == "top level"


def test_interop_both_ways(seaweed_bucket: str, mf: Any, tmp_path: Any) -> None:
    root = f"s3://{seaweed_bucket}/interop"
    meta = {"owner": "ünï", "tags": ["a", "b"], "n": 3}
    with mf(s3root=root, tmproot=str(tmp_path)) as m, S3(s3root=root) as s:
        m.put("by-metaflow", "from metaflow", content_type="text/plain", metadata=meta)
        s.put("by-s3fast", "from s3fast", content_type="text/plain", metadata=meta)
        for client in (m, s):
            for key, text in (("by-metaflow", "from metaflow"), ("by-s3fast", "from s3fast")):
                obj = client.get(key)
                assert obj.text == text and obj.metadata == meta
                assert obj.content_type == "text/plain"
                assert client.info(key).metadata == meta
