"""Where metaflow.S3 is wrong, s3fast is right: one test per deliberate difference, plus the
permanent errors that must fail fast (SeaweedFS verifies signatures and permissions)."""

from __future__ import annotations

import asyncio
import time

import pytest

from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3AccessDenied,
    MetaflowS3Exception,
    MetaflowS3InvalidRange,
    MetaflowS3NotFound,
    S3GetObject,
)
from s3fast.testing import READER, Identity

FAST = 10.0  # seconds: "fails fast" means no retry storm


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


@pytest.mark.asyncio
async def test_overwrite_false_is_atomic(bucket: str) -> None:
    async with AsyncS3(s3root=f"s3://{bucket}") as s3:
        results = await asyncio.gather(
            *(s3.put_many([("race", f"writer-{i}")], overwrite=False) for i in range(12))
        )
        winners = [i for i, r in enumerate(results) if r]
        assert len(winners) == 1, results
        assert (await s3.get("race", in_memory=True)).text == f"writer-{winners[0]}"


def test_put_to_missing_bucket_raises(bucket: str, tmp_path: object) -> None:
    import pathlib

    f = pathlib.Path(str(tmp_path)) / "x"
    f.write_bytes(b"x")
    with S3(s3root="s3://s3fast-no-such-bucket/p") as s3:
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.put_many([("a", "x"), ("b", "y")])
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.put_files([("a", str(f))])
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.get_recursive(["p"])


def test_invalid_range_raises_at_once(bucket: str, boto: object) -> None:
    boto.put_object(Bucket=bucket, Key="small", Body=b"0123456789")  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}") as s3:
        start = time.monotonic()
        with pytest.raises(MetaflowS3InvalidRange, match=f"s3://{bucket}/small"):
            s3.get_many(["small", S3GetObject("small", 100, 5)])
        assert time.monotonic() - start < FAST
        for bad in [
            S3GetObject("small", -1, 5),
            S3GetObject("small", 0, 0),
            S3GetObject("small", "0", 5),
        ]:
            with pytest.raises(MetaflowS3InvalidRange):
                s3.get(bad)


def test_zero_byte_objects_exist_in_listings(bucket: str, boto: object) -> None:
    boto.put_object(Bucket=bucket, Key="p/empty", Body=b"")  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/p") as s3:
        (obj,) = s3.list_paths()
        assert obj.exists and obj.size == 0  # metaflow.S3 reports exists=False here


def _with_identity(monkeypatch: pytest.MonkeyPatch, ident: Identity | None) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    if ident is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ident.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ident.secret_key)


@pytest.mark.parametrize(
    "ident,what",
    [
        (Identity("s3fast-admin", "wrong-secret"), "signature"),
        (Identity("nobody-knows-me", "x"), "access key"),
        (None, "credentials"),
    ],
)
def test_bad_credentials_fail_fast(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch, ident: Identity | None, what: str
) -> None:
    _with_identity(monkeypatch, ident)
    url = f"s3://{seaweed_bucket}/k"
    with S3() as s3:
        for call in (lambda: s3.get(url), lambda: s3.put(url, "x"), lambda: s3.list_paths([url])):
            start = time.monotonic()
            with pytest.raises(MetaflowS3AccessDenied) as err:
                call()
            assert time.monotonic() - start < FAST
            assert url in str(err.value) and what in str(err.value)
            assert isinstance(err.value, PermissionError)
            assert "s3fast-admin-secret" not in str(err.value)


def test_read_only_identity_cannot_write(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        s3.put("readable", "yes")
    _with_identity(monkeypatch, READER)
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        assert s3.get("readable").text == "yes"
        start = time.monotonic()
        with pytest.raises(MetaflowS3AccessDenied, match=f"s3://{seaweed_bucket}/nope"):
            s3.put("nope", "no")
        with pytest.raises(MetaflowS3AccessDenied):
            s3.put_many([("a", "1"), ("b", "2")])
        assert time.monotonic() - start < FAST


def test_no_such_bucket_fails_fast(seaweed_bucket: str) -> None:
    with S3() as s3:
        start = time.monotonic()
        for call in (
            lambda: s3.get("s3://s3fast-missing-bucket/k"),
            lambda: s3.info("s3://s3fast-missing-bucket/k"),
            lambda: s3.list_recursive(["s3://s3fast-missing-bucket/"]),
        ):
            with pytest.raises(MetaflowS3NotFound, match="s3fast-missing-bucket"):
                call()
        assert time.monotonic() - start < FAST


def test_every_error_shares_one_base() -> None:
    import s3fast

    errors = [getattr(s3fast, n) for n in s3fast.__all__ if n.startswith("MetaflowS3")]
    assert len(errors) == 8
    assert all(issubclass(e, MetaflowS3Exception) for e in errors)


def test_secrets_never_appear_in_errors_or_reprs(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3fast-admin-secret"  # the admin identity's real secret, in the environment
    url = f"s3://{seaweed_bucket}"
    texts = []
    with S3(s3root=url) as s3:
        s3.put("x", "0123456789")
        texts += [repr(s3.get("x")), repr(s3.info("x")), repr(s3.list_paths())]
        for call in (
            lambda: s3.get("missing"),
            lambda: s3.get(S3GetObject("x", 100, 5)),
            lambda: s3.get("s3://elsewhere/x"),
        ):
            with pytest.raises(MetaflowS3Exception) as err:
                call()
            texts += [str(err.value), repr(err.value), str(err.value.__cause__)]
    _with_identity(monkeypatch, Identity("s3fast-admin", "wrong-" + secret))
    with S3(s3root=url) as s3, pytest.raises(MetaflowS3AccessDenied) as err:
        s3.get("x")
    texts += [str(err.value), repr(err.value), str(err.value.__cause__)]
    assert all(secret not in text for text in texts), texts
