"""SigV4 of the lean path (``_engine/http.py``'s ``_Signer``) against AWS's published
examples for S3 ("Examples: Signature calculations" in the S3 API reference, header-based
auth): the same credentials, date, requests and expected signatures."""

from __future__ import annotations

import datetime
import re
from types import SimpleNamespace

import pytest
from botocore.credentials import Credentials

from s3fast._engine import http

pytestmark = pytest.mark.unit

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "examplebucket.s3.amazonaws.com"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class _May24(datetime.datetime):
    """The examples' clock: 2013-05-24T00:00:00Z."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC)


@pytest.fixture
def may_24(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "datetime", SimpleNamespace(datetime=_May24, UTC=datetime.UTC))


# (method, path, query, extra headers, payload hash, signed headers, signature)
EXAMPLES = {
    "GET Object": (
        "GET",
        "/test.txt",
        "",
        {"Range": "bytes=0-9"},
        EMPTY,
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
    "PUT Object": (
        "PUT",
        "/test%24file.text",
        "",
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    ),
    "GET Bucket Lifecycle": (
        "GET",
        "/",
        "lifecycle=",
        {},
        EMPTY,
        "host;x-amz-content-sha256;x-amz-date",
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    ),
    "Get Bucket (List Objects)": (
        "GET",
        "/",
        "max-keys=2&prefix=J",
        {},
        EMPTY,
        "host;x-amz-content-sha256;x-amz-date",
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("example", list(EXAMPLES))
async def test_signature_matches_aws_example(example: str, may_24: None) -> None:
    method, path, query, extra, payload, signed, signature = EXAMPLES[example]
    signer = http._Signer(Credentials(ACCESS_KEY, SECRET_KEY))
    head = (
        await signer.sign(
            method, HOST, path, extra, query, payload, region="us-east-1", service="s3"
        )
    ).decode()

    lines = head.split("\r\n")
    target = f"{path}?{query}" if query else path
    assert lines[0] == f"{method} {target} HTTP/1.1"
    assert head.endswith("\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert headers["host"] == HOST
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["x-amz-content-sha256"] == payload
    auth = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=(\S+), SignedHeaders=(\S+), Signature=([0-9a-f]{64})",
        headers["authorization"],
    )
    assert auth is not None, headers["authorization"]
    assert auth.group(1) == f"{ACCESS_KEY}/20130524/us-east-1/s3/aws4_request"
    assert auth.group(2) == signed
    assert auth.group(3) == signature


@pytest.mark.asyncio
async def test_session_token_is_signed(may_24: None) -> None:
    """Temporary credentials: the token is sent and signed, so the signature differs from the
    same request without it."""
    method, path, query, extra, payload, _, signature = EXAMPLES["GET Object"]
    signer = http._Signer(Credentials(ACCESS_KEY, SECRET_KEY, "the-session-token"))
    head = (
        await signer.sign(
            method, HOST, path, extra, query, payload, region="us-east-1", service="s3"
        )
    ).decode()
    assert "\r\nx-amz-security-token: the-session-token\r\n" in head
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token" in head
    assert f"Signature={signature}" not in head
