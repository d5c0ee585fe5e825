"""s3:// parsing, root joining as metaflow does, run= roots, and the Range / Content-Range codec."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from s3fast import MetaflowS3InvalidRange, MetaflowS3URLException, S3GetObject
from s3fast._engine.get import final_end, first_range
from s3fast.urls import ByteRange, byte_range, join, parse, parse_content_range, resolve_root


@pytest.mark.unit
def test_parse_keeps_query_and_fragment_characters() -> None:
    assert parse("s3://bkt/a#b?c=d").key == "a#b?c=d"
    assert parse("s3://bkt/x/").key == "x/"
    assert parse("s3://bkt", need_key=False).key == ""
    for bad in ["s3://", "s3:///k", "gs://b/k", "s3://b/k", "s3://bad bucket/k"]:
        with pytest.raises(MetaflowS3URLException):
            parse(bad)
    with pytest.raises(MetaflowS3URLException, match="longer"):
        parse("s3://bkt/" + "é" * 600)


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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
