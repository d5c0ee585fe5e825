"""Endpoint parity, offline: for each client configuration and operation, the request the lean
path would send (its target, Host and signing scope) is the request botocore prepares (caught
by a ``before-send`` hook, never sent), or the lean path leaves the operation to botocore.
Dummy credentials; no traffic."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from s3fast import TransferConfig
from s3fast._engine.client import Engine
from s3fast._engine.http import EMPTY_SHA256, UNSIGNED_PAYLOAD
from s3fast._engine.transport import BOTOCORE, LEAN, Transport

pytestmark = pytest.mark.unit

KEY = "dir/a b+c~d%.bin"
UPLOAD_ID = "up/load=1"
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass
class Case:
    id: str
    bucket: str
    region: str = "us-east-1"
    config: dict[str, Any] = field(default_factory=dict)
    endpoint_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    lean: bool = True  # the lean path must take it (else botocore must)


AP_ARN = "arn:aws:s3:us-west-2:123456789012:accesspoint/my-ap"
CASES = [
    Case("us-east-1", "mybucket"),
    Case("us-west-2", "mybucket", "us-west-2"),
    Case("eu-central-1", "mybucket", "eu-central-1"),
    Case("opt-in-ap-east-1", "mybucket", "ap-east-1"),
    Case("opt-in-me-south-1", "mybucket", "me-south-1"),
    Case("fips", "mybucket", "us-west-2", {"use_fips_endpoint": True}),
    Case("dualstack", "mybucket", "us-west-2", {"s3": {"use_dualstack_endpoint": True}}),
    Case("fips-dualstack-env", "mybucket", "us-east-2", env={
        "AWS_USE_FIPS_ENDPOINT": "true", "AWS_USE_DUALSTACK_ENDPOINT": "true"}),
    Case("accelerate", "mybucket", "us-west-2", {"s3": {"use_accelerate_endpoint": True}}),
    Case("path-style", "mybucket", "us-west-2", {"s3": {"addressing_style": "path"}}),
    Case("virtual-style", "mybucket", "us-west-2", {"s3": {"addressing_style": "virtual"}}),
    Case("dotted-bucket", "my.bucket.name", "eu-west-1"),
    Case("us-east-1-regional", "mybucket", "us-east-1", {"s3": {"us_east_1_regional_endpoint": "regional"}}),
    Case("endpoint-url", "mybucket", "us-east-1", endpoint_url="http://127.0.0.1:9000"),
    Case("endpoint-url-path", "mybucket", "eu-west-1", endpoint_url="https://minio.example.com:8443/s3"),
    Case("endpoint-url-virtual", "mybucket", "us-east-1", {"s3": {"addressing_style": "virtual"}},
         endpoint_url="https://storage.example.com"),
    Case("env-endpoint", "mybucket", "us-west-2", env={"AWS_ENDPOINT_URL_S3": "http://localhost:8333"}),
    Case("access-point-arn", AP_ARN, "us-west-2"),
    Case("access-point-arn-other-region", AP_ARN.replace("us-west-2", "eu-west-1"), "us-west-2",
         {"s3": {"use_arn_region": True}}),
    Case("s3-express", "mybucket--usw2-az1--x-s3", "us-west-2", lean=False),
    Case("outposts", "arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01234567890123456/accesspoint/my-ap",
         "us-west-2", lean=False),
    Case("multi-region-access-point", "arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "us-west-2",
         lean=False),
    Case("object-lambda", "arn:aws:s3-object-lambda:us-west-2:123456789012:accesspoint/my-ol", "us-west-2",
         lean=False),
]  # fmt: skip

# operation -> (botocore method, its parameters, lean method, key, query, payload)
OPERATIONS: dict[str, tuple[str, dict[str, Any], str, str, str, str]] = {
    "GetObject": ("get_object", {"Key": KEY}, "GET", KEY, "", EMPTY_SHA256),
    "HeadObject": ("head_object", {"Key": KEY}, "HEAD", KEY, "", EMPTY_SHA256),
    "PutObject": ("put_object", {"Key": KEY, "Body": b"x"}, "PUT", KEY, "", UNSIGNED_PAYLOAD),
    "UploadPart": (
        "upload_part",
        {"Key": KEY, "Body": b"x", "UploadId": UPLOAD_ID, "PartNumber": 3},
        "PUT",
        KEY,
        "partNumber=3&uploadId=up%2Fload%3D1",
        UNSIGNED_PAYLOAD,
    ),
    "ListObjectsV2": (
        "list_objects_v2",
        {"Prefix": "dir/"},
        "GET",
        "",
        "encoding-type=url&list-type=2&prefix=dir%2F",
        EMPTY_SHA256,
    ),
}


class _Caught(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("caught")
        self.request = request


@dataclass(frozen=True)
class Sent:
    """What identifies a request's destination and signature."""

    method: str
    scheme: str
    host: str  # the Host header
    path: str
    query: tuple[tuple[str, str], ...]
    scope: tuple[str, str]  # signing region, signing name


def _scope(authorization: str) -> tuple[str, str]:
    found = _SCOPE.search(authorization)
    assert found, authorization
    return found.group(1), found.group(2)


def _host(scheme: str, netloc: str) -> str:
    default = {"http": ":80", "https": ":443"}[scheme]
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


async def _botocore_sends(client: Any, bucket: str, operation: str) -> Sent:
    method, params, *_ = OPERATIONS[operation]
    caught: list[Any] = []

    def catch(request: Any, **_: Any) -> None:
        caught.append(request)
        raise _Caught(request)

    client.meta.events.register_first("before-send.s3", catch)
    try:
        with pytest.raises(_Caught):
            await getattr(client, method)(Bucket=bucket, **params)
    finally:
        client.meta.events.unregister("before-send.s3", catch)
    request = caught[-1]
    url = urlsplit(request.url)
    auth = request.headers["Authorization"]
    return Sent(
        request.method,
        url.scheme,
        _host(url.scheme, url.netloc),
        url.path,
        tuple(sorted(parse_qsl(url.query, keep_blank_values=True))),
        _scope(auth.decode() if isinstance(auth, bytes) else auth),
    )


def _lean_sends(where: tuple[Any, ...], request: bytes) -> Sent:
    head = request.decode("utf-8").split("\r\n")
    method, target, version = head[0].split(" ")
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    path, _, query = target.partition("?")
    return Sent(
        method,
        where[0],
        headers["host"],
        path,
        tuple(sorted(parse_qsl(query, keep_blank_values=True))),
        _scope(headers["authorization"]),
    )


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


async def _compare(case: Case) -> dict[str, str]:
    """Each operation's path; asserts parity for those the lean path takes."""
    config = AioConfig(signature_version="s3v4", **case.config)
    async with get_session().create_client(
        "s3", region_name=case.region, endpoint_url=case.endpoint_url, config=config
    ) as client:
        transport = Transport()
        await transport.start(client, True, (5.0, 5.0))
        try:
            paths = {}
            for operation, (_, _, method, key, query, payload) in OPERATIONS.items():
                http = await transport.lean(case.bucket, operation)
                paths[operation] = transport.path_for(case.bucket, operation) or "undecided"
                if http is None:
                    continue
                where, request = await http._request(
                    method, case.bucket, key, {}, query, payload, operation
                )
                lean = _lean_sends(where, request)
                assert lean == await _botocore_sends(client, case.bucket, operation), operation
            return paths
        finally:
            transport.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_lean_request_is_botocores_or_left_to_botocore(
    case: Case, creds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    paths = asyncio.run(_compare(case))
    want = LEAN if case.lean else BOTOCORE
    assert paths == dict.fromkeys(OPERATIONS, want)


def test_engine_clients_resolve_like_botocore(creds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client s3fast itself builds (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, FIPS from the
    environment) addresses buckets as its botocore client does."""

    async def run(endpoint_url: str | None) -> list[tuple[Sent, Sent]]:
        bucket = "some-bucket"
        engine = Engine(TransferConfig(), endpoint_url)
        try:
            client = await engine.client()
            pairs = []
            for operation, (_, _, method, key, query, payload) in OPERATIONS.items():
                http = await engine.lean(bucket, operation)
                assert http is not None, operation
                where, request = await http._request(
                    method, bucket, key, {}, query, payload, operation
                )
                botocore_sends = await _botocore_sends(client, bucket, operation)
                pairs.append((_lean_sends(where, request), botocore_sends))
            return pairs
        finally:
            await engine.close()

    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    for lean, botocore_ in asyncio.run(run(None)):
        assert lean == botocore_
        assert lean.host == "some-bucket.s3-fips.ap-southeast-2.amazonaws.com"
        assert lean.scope == ("ap-southeast-2", "s3")
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8333")
    for lean, botocore_ in asyncio.run(run(None)):
        assert lean == botocore_
        assert lean.host == "127.0.0.1:8333" and lean.path.startswith("/some-bucket")


def test_regional_endpoints_not_the_global_one(creds: None) -> None:
    """The lean path of a us-west-2 / ap-east-1 client goes to the bucket's regional host,
    signed for that region (not the legacy global host a presigned URL names)."""
    for region in ("us-west-2", "ap-east-1"):
        case = Case(region, "mybucket", region)

        async def run(case: Case = case) -> Sent:
            async with get_session().create_client("s3", region_name=case.region) as client:
                transport = Transport()
                await transport.start(client, True, (5.0, 5.0))
                try:
                    http = await transport.lean(case.bucket, "GetObject")
                    assert http is not None
                    where, request = await http._request("GET", case.bucket, "k", {})
                    return _lean_sends(where, request)
                finally:
                    transport.close()

        sent = asyncio.run(run())
        assert sent.host == f"mybucket.s3.{region}.amazonaws.com"
        assert sent.scope == (region, "s3")


@pytest.mark.parametrize(
    "proxies, proxies_config, path",
    [
        ({"https": "http://user:p%40ss@proxy.example:3128"}, None, LEAN),
        ({"https": "proxy.example:3128"}, None, LEAN),  # botocore adds http://
        ({"https": "https://proxy.example:3129"}, None, BOTOCORE),  # TLS to the proxy
        ({"https": "http://proxy.example:3128"}, {"proxy_ca_bundle": "/ca.pem"}, BOTOCORE),
        (
            {"https": "http://proxy.example:3128"},
            {"proxy_client_cert": ("/c.pem", "/k.pem")},
            BOTOCORE,
        ),
        (
            {"https": "http://proxy.example:3128"},
            {"proxy_use_forwarding_for_https": True},
            BOTOCORE,
        ),
    ],
    ids=["basic-auth", "no-scheme", "https-proxy", "proxy-ca", "proxy-cert", "forwarding"],
)
def test_proxy_settings_the_lean_path_follows_or_leaves(
    creds: None, proxies: dict[str, str], proxies_config: dict[str, Any] | None, path: str
) -> None:
    """``Config(proxies=..., proxies_config=...)``: the lean path uses the proxy botocore's
    HTTP session picks for the URL, or leaves the client's requests to botocore."""

    async def run() -> tuple[str | None, Any]:
        config = AioConfig(proxies=proxies, proxies_config=proxies_config)
        async with get_session().create_client(
            "s3", region_name="us-west-2", config=config
        ) as client:
            transport = Transport()
            await transport.start(client, True, (5.0, 5.0))
            try:
                http = await transport.lean("mybucket", "GetObject")
                route = http.routes[("mybucket", "GetObject")] if http is not None else None
                return transport.path_for("mybucket"), route
            finally:
                transport.close()

    got, route = asyncio.run(run())
    assert got == path
    if path == LEAN:
        endpoint, proxy = route
        assert endpoint.url == "https://mybucket.s3.us-west-2.amazonaws.com"
        assert (proxy.host, proxy.port) == ("proxy.example", 3128)
        if "user" in proxies["https"]:
            assert proxy.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
