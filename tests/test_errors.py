"""Errors: one base class, one translator from botocore's errors, permanent errors that fail
fast (SeaweedFS checks signatures and permissions), and no secret in any message or repr."""

from __future__ import annotations

import time

import botocore.exceptions
import pytest

from s3fast import (
    S3,
    MetaflowS3AccessDenied,
    MetaflowS3Exception,
    MetaflowS3InvalidRange,
    MetaflowS3NotFound,
    S3GetObject,
)
from s3fast.errors import translate
from s3fast.testing import READER, Identity

FAST = 10.0  # seconds: "fails fast" means no retry storm


@pytest.mark.unit
def test_every_error_shares_one_base() -> None:
    import s3fast

    errors = [getattr(s3fast, n) for n in s3fast.__all__ if n.startswith("MetaflowS3")]
    assert len(errors) == 8
    assert all(issubclass(e, MetaflowS3Exception) for e in errors)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.unit
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
