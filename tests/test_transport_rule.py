"""The one rule for the lean path, met with real answers (through the fault proxy in front of
SeaweedFS): a protocol surprise sends the bucket to botocore, the request is sent again
through botocore and succeeds, and ``transport_for`` says where the bucket went; an ordinary
S3 error is not a surprise."""

from __future__ import annotations

import os

import pytest

from s3fast import S3, MetaflowS3NotFound, TransferConfig

from .conftest import Server
from .proxy import FaultProxy, Faults, canned

FOUND = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        canned("418 I'm a teapot", "Teapot"),
        canned("400 Bad Request", "IllegalLocationConstraintException"),
        canned("307 Temporary Redirect", "TemporaryRedirect"),
        FOUND,
    ],
    ids=["unknown-status", "illegal-location", "307", "302-no-body-code"],
)
def test_a_surprise_sends_the_bucket_to_botocore(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy, answer: bytes
) -> None:
    body = seaweed.seed(seaweed_bucket, {"k": os.urandom(100_000)})["k"]
    proxy.set(Faults(answer=answer, times=1))
    config = TransferConfig(max_concurrency=1)
    with S3(s3root=f"s3://{seaweed_bucket}", endpoint_url=proxy.url, config=config) as s3:
        assert s3.transport_for() == "lean"
        assert s3.get("k", in_memory=True).blob == body  # the lean GET met the answer
        assert proxy.injected == 1
        assert s3.transport_for() == "botocore"
        assert s3.get("k", in_memory=True).blob == body
        assert s3.transport_for() == "botocore"  # botocore learned nothing new: it stays


def test_an_s3_error_is_not_a_surprise(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy
) -> None:
    proxy.set(Faults())
    with S3(s3root=f"s3://{seaweed_bucket}", endpoint_url=proxy.url) as s3:
        with pytest.raises(MetaflowS3NotFound):
            s3.get("missing")
        assert s3.info("missing", return_missing=True).exists is False
        assert s3.transport_for() == "lean"


def test_transport_botocore_is_reported(seaweed_bucket: str) -> None:
    with S3(s3root=f"s3://{seaweed_bucket}", config=TransferConfig(transport="botocore")) as s3:
        assert s3.transport_for() == "botocore"
        assert s3.transport_for("another-bucket") == "botocore"
