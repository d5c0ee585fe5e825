"""The put family checks its input in metaflow.S3's order: entry by entry, the object (or the
local file) before the key, so the same bad call raises the same exception class in both."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import pytest

from s3fast import S3, MetaflowS3Exception, S3PutObject


class _Unreadable(io.BytesIO):
    def readable(self) -> bool:
        return False


def _cases(bad: str, good: str, missing: str, local: str, put: Any) -> list[tuple[str, Any]]:
    """``(method, argument)``: each call has a bad object, a bad key, or both, in some order.
    ``put`` is the client's own S3PutObject class."""
    return [
        ("put", (good, 1)),
        ("put", (bad, 1)),
        ("put", (bad, b"x")),
        ("put", (bad, _Unreadable(b"x"))),
        ("put", (bad, None)),
        ("put_many", [(bad, 1)]),
        ("put_many", [(good, 1)]),
        ("put_many", [(bad, b"x")]),
        ("put_many", [(bad, b"x"), (good, 1)]),
        ("put_many", [(good, b"x"), (bad, 1)]),
        ("put_many", [(good, b"x"), (bad, _Unreadable(b"x"))]),
        ("put_many", [put(bad, value=1)]),
        ("put_many", [put(bad, value=b"x")]),
        ("put_files", [(bad, missing)]),
        ("put_files", [(bad, local)]),
        ("put_files", [(good, missing)]),
        ("put_files", [(good, missing), (bad, local)]),
        ("put_files", [(bad, local), (good, missing)]),
        ("put_files", [put(bad, path=missing)]),
    ]


def _raised(s3: Any, method: str, arg: Any) -> BaseException:
    try:
        getattr(s3, method)(*(arg if method == "put" else (arg,)))
    except Exception as exc:
        return exc
    raise AssertionError(f"{method}({arg!r}) did not raise")


@pytest.mark.parametrize("rooted", [False, True], ids=["urls", "s3root"])
def test_put_family_raises_as_metaflow(
    seaweed_bucket: str, tmp_path: pathlib.Path, rooted: bool
) -> None:
    from metaflow import S3 as MetaflowS3
    from metaflow.plugins.datatools.s3 import S3PutObject as MetaflowS3PutObject

    local = tmp_path / "local"
    local.write_bytes(b"x")
    if rooted:  # an absolute URL is a bad key under a root
        root, bad, good = f"s3://{seaweed_bucket}/p", "s3://elsewhere/k", "k"
    else:  # and a bare key without one
        root, bad, good = None, "k", f"s3://{seaweed_bucket}/k"
    missing = str(tmp_path / "missing")
    cases = _cases(bad, good, missing, str(local), S3PutObject)
    mf_cases = _cases(bad, good, missing, str(local), MetaflowS3PutObject)
    with (
        MetaflowS3(tmproot=str(tmp_path), s3root=root) as theirs,
        S3(tmproot=str(tmp_path), s3root=root) as ours,
    ):
        want = [type(_raised(theirs, method, arg)).__name__ for method, arg in mf_cases]
        errors = [_raised(ours, method, arg) for method, arg in cases]
    with S3() as s3:
        assert s3.list_recursive([f"s3://{seaweed_bucket}/"]) == []  # nothing was sent
    assert all(isinstance(exc, MetaflowS3Exception) for exc in errors)
    got = [type(exc).__name__ for exc in errors]
    assert {"MetaflowS3InvalidObject", "MetaflowS3URLException", "MetaflowS3NotFound"} <= set(want)
    assert [(m, a, w, g) for (m, a), w, g in zip(cases, want, got, strict=True) if w != g] == []
