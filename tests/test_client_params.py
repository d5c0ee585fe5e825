"""metaflow.S3's client keywords: ``client_params``, ``session_vars``, ``external_client``,
against SeaweedFS with auth on, from an empty environment (no ``AWS_*`` variables, no
config or credentials files, ``HOME`` an empty directory)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from s3fast import S3, AsyncS3, MetaflowS3AccessDenied, MetaflowS3Exception, TransferConfig
from s3fast.testing import ADMIN, READER

from .conftest import Server


@pytest.fixture
def empty_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """Nothing to find credentials or an endpoint in: no AWS_* variables, an empty HOME."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "METAFLOW_DATATOOLS", "METAFLOW_S3")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never leave loopback
    return home


@pytest.fixture
def weed_bucket(seaweed: Server) -> Iterator[str]:
    """A bucket on SeaweedFS, made with boto3 (the environment is left alone)."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):  # type: ignore[attr-defined]
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=name)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def params(server: Server, access: str = ADMIN.access_key, secret: str = ADMIN.secret_key) -> dict:
    return {
        "endpoint_url": server.endpoint_url,
        "region_name": "us-east-1",
        "aws_access_key_id": access,
        "aws_secret_access_key": secret,
    }


def test_client_params_reach_the_server(
    empty_env: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    root = f"s3://{weed_bucket}/cp"
    with S3(s3root=root, client_params=params(seaweed)) as s3:
        s3.put("a", b"hello")
        assert s3.get("a").blob == b"hello"
        assert [o.key for o in s3.list_paths()] == ["a"]
    # Wrong keys are refused by the server: the given keys are what signs the requests.
    bad = params(seaweed, secret="not-the-secret")
    with S3(s3root=root, client_params=bad) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.get("a")


def test_client_params_from_metaflow_environment(
    empty_env: pathlib.Path, seaweed: Server, weed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_DATATOOLS_CLIENT_PARAMS", json.dumps(params(seaweed)))
    with S3(s3root=f"s3://{weed_bucket}/env") as s3:
        s3.put("b", b"from METAFLOW_DATATOOLS_CLIENT_PARAMS")
    obj = seaweed.client().get_object(Bucket=weed_bucket, Key="env/b")  # type: ignore[attr-defined]
    assert obj["Body"].read() == b"from METAFLOW_DATATOOLS_CLIENT_PARAMS"


def test_client_params_config_is_merged(
    empty_env: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    """The user's botocore Config wins for what it sets (here: unsigned requests, which the
    server refuses), and s3fast's settings fill in the rest."""
    seaweed.seed(weed_bucket, {"c/x": b"x"})
    unsigned = {**params(seaweed), "config": Config(signature_version=UNSIGNED)}
    del unsigned["aws_access_key_id"], unsigned["aws_secret_access_key"]
    with S3(s3root=f"s3://{weed_bucket}/c", client_params=unsigned) as s3:
        with pytest.raises(MetaflowS3AccessDenied):
            s3.get("x")
    path_style = {**params(seaweed), "config": {"s3": {"addressing_style": "path"}}}
    with S3(s3root=f"s3://{weed_bucket}/c", client_params=path_style) as s3:
        assert s3.get("x").blob == b"x"


def test_session_vars_reach_the_server(
    empty_env: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    """botocore session variables (metaflow's meaning): here they name a credentials file
    and a profile in it; nothing else says where credentials are."""
    creds = empty_env / "creds.ini"
    creds.write_text(
        f"[weed]\naws_access_key_id = {ADMIN.access_key}\n"
        f"aws_secret_access_key = {ADMIN.secret_key}\n"
    )
    session_vars = {
        "credentials_file": (None, None, str(creds), None),
        "profile": (None, None, "weed", None),
        "region": (None, None, "us-east-1", None),
    }
    endpoint = {"endpoint_url": seaweed.endpoint_url}
    with S3(
        s3root=f"s3://{weed_bucket}/sv", session_vars=session_vars, client_params=endpoint
    ) as s3:
        s3.put("k", b"session vars")
        assert s3.get("k").blob == b"session vars"
    # Without them, no credentials at all.
    with S3(s3root=f"s3://{weed_bucket}/sv", client_params=endpoint) as s3:
        with pytest.raises(MetaflowS3AccessDenied):
            s3.get("k")


def test_external_client(empty_env: pathlib.Path, seaweed: Server, weed_bucket: str) -> None:
    admin = boto3.client("s3", **params(seaweed))
    reader = boto3.client("s3", **params(seaweed, READER.access_key, READER.secret_key))
    root = f"s3://{weed_bucket}/ext"
    try:
        with S3(s3root=root, external_client=admin) as s3:
            s3.put("k", b"external")
            assert s3.get("k").blob == b"external"
        # The reader's client reads but cannot write: its own credentials sign.
        with S3(s3root=root, external_client=reader) as s3:
            assert s3.get("k").blob == b"external"
            with pytest.raises(MetaflowS3AccessDenied):
                s3.put("k2", b"no")
    finally:
        admin.close()
        reader.close()


def test_clients_keep_their_own_credentials(
    empty_env: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    """Clients made from the shared session, at the same time, each sign as themselves."""
    root = f"s3://{weed_bucket}/two"

    async def main() -> None:
        async with (
            AsyncS3(s3root=root, client_params=params(seaweed)) as admin,
            AsyncS3(
                s3root=root, client_params=params(seaweed, READER.access_key, READER.secret_key)
            ) as reader,
        ):
            await admin.put("k", b"v")
            results = await asyncio.gather(
                admin.put("k2", b"v2"), reader.put("k3", b"v3"), return_exceptions=True
            )
            assert results[0].startswith("s3://")  # type: ignore[union-attr]
            assert isinstance(results[1], MetaflowS3AccessDenied)
            assert (await reader.get("k", in_memory=True)).blob == b"v"

    asyncio.run(main())


def test_unknown_keywords_raise_type_error() -> None:
    with pytest.raises(TypeError):
        S3(no_such_keyword=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AsyncS3(no_such_keyword=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="client_params"):
        S3(client_params={"endpoint": "http://x"})
    with pytest.raises(TypeError, match="external_client"):
        S3(external_client=object())


def test_verify_from_client_params_and_metaflow(
    empty_env: pathlib.Path,
    seaweed_https: Server,
    weed_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``verify`` (a CA bundle) from ``client_params``, or Metaflow's
    ``S3_VERIFY_CERTIFICATE``, checks the server's certificate on every transport."""
    seaweed_https.seed(weed_bucket, {"tls/k": b"secure"})
    root = f"s3://{weed_bucket}/tls"
    with S3(s3root=root, client_params=params(seaweed_https)) as s3:
        with pytest.raises(MetaflowS3Exception, match=r"(?i)certificate|TLS|SSL"):
            s3.get("k")  # a self-signed CA that nothing names
    for transport in ("http", "botocore"):
        config = TransferConfig(transport=transport)
        given = {**params(seaweed_https), "verify": seaweed_https.ca_bundle}
        with S3(s3root=root, client_params=given, config=config) as s3:
            assert s3.get("k").blob == b"secure"
    monkeypatch.setenv("METAFLOW_S3_VERIFY_CERTIFICATE", str(seaweed_https.ca_bundle))
    with S3(s3root=root, client_params=params(seaweed_https)) as s3:
        assert s3.get("k").blob == b"secure"


def test_user_config_merges_under_s3fast_settings() -> None:
    """From a user's botocore Config, the options s3fast does not own win (proxies,
    addressing style, signature version); the pool, timeouts and retries are s3fast's."""
    from s3fast._engine.session import client_config, spec_from

    user = Config(
        proxies={"https": "http://proxy.example:3128"},
        s3={"addressing_style": "virtual"},
        connect_timeout=99,
        retries={"max_attempts": 1},
    )
    spec, endpoint = spec_from(client_params={"config": user, "endpoint_url": "http://x:1"})
    assert endpoint == "http://x:1"
    owned = {
        "connect_timeout": 3.0,
        "retries": {"max_attempts": 5, "mode": "standard"},
        "s3": {"addressing_style": "path"},
    }
    merged = client_config(spec, owned, {"signature_version": "s3v4"})
    assert merged.proxies == {"https": "http://proxy.example:3128"}
    assert merged.s3 == {"addressing_style": "virtual"}
    assert merged.connect_timeout == 3.0
    assert merged.retries == {"max_attempts": 5, "mode": "standard"}
    assert merged.signature_version == "s3v4"
    unsigned, _ = spec_from(client_params={"config": {"signature_version": UNSIGNED}})
    assert client_config(unsigned, {}, {"signature_version": "s3v4"}).signature_version is UNSIGNED
