"""Fixtures: real S3 servers on loopback (SeaweedFS with auth, moto), one bucket per test,
a clean AWS environment, and checks that nothing is left behind."""

from __future__ import annotations

import glob
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config

import s3fast.targets
from s3fast.testing import ADMIN, READER, Identity, Moto, SeaweedFS

# Set before anything imports metaflow (its config is read at import time).
os.environ.setdefault("METAFLOW_DEFAULT_DATASTORE", "local")
os.environ.setdefault("USERNAME", "s3fast-tests")


@dataclass
class Server:
    name: str
    endpoint_url: str
    auth: bool  # does it verify signatures and permissions?

    def env(self, identity: Identity = ADMIN) -> dict[str, str]:
        return {
            **identity.env(),
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, identity: Identity = ADMIN) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Server]:
    with SeaweedFS() as server:
        yield Server("seaweedfs", server.endpoint_url, auth=True)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Server]:
    with Moto() as server:
        yield Server("moto", server.endpoint_url, auth=False)


@pytest.fixture(params=["seaweedfs", "moto"])
def server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue("seaweed" if request.param == "seaweedfs" else "moto_server")


_CLEARED_PREFIXES = (
    "AWS_",
    "METAFLOW_S3",
    "METAFLOW_DATATOOLS",
    "METAFLOW_DATASTORE_SYSROOT",
    "METAFLOW_TEMPDIR",
    "S3FAST_",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No ambient AWS configuration: no profiles, no IMDS (never leave loopback)."""
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "empty-aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# Temp dirs made by this test process carry its pid: other test runs on the same machine
# make (and may leave) s3fast.* dirs in the same places.
_PREFIX = f"s3fast.{os.getpid()}."


def _s3fast_dirs() -> set[str]:
    roots = ["/dev/shm", tempfile.gettempdir()]
    return {d for root in roots for d in glob.glob(os.path.join(root, _PREFIX + "*"))}


@pytest.fixture(autouse=True)
def no_leftover_tempdirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(s3fast.targets, "_DIR_PREFIX", _PREFIX)
    before = _s3fast_dirs()
    yield
    left = _s3fast_dirs() - before
    assert not left, f"temp dirs left behind: {sorted(left)}"


def _empty_bucket(client: object, bucket: str) -> None:
    c = client
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # type: ignore[attr-defined]
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 500):
            c.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 500]})  # type: ignore[attr-defined]


def open_uploads(client: object, bucket: str) -> list[str]:
    resp = client.list_multipart_uploads(Bucket=bucket)  # type: ignore[attr-defined]
    return [u["Key"] for u in resp.get("Uploads", [])]


def _bucket_on(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on ``server``, with the environment pointing s3fast at it. After the
    test: no unfinished multipart uploads may remain."""
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    name = f"t-{uuid.uuid4().hex[:16]}"
    client = server.client()
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    yield name
    try:
        left = open_uploads(client, name)
        assert not left, f"unfinished multipart uploads left behind: {left}"
    finally:
        _empty_bucket(client, name)
        client.delete_bucket(Bucket=name)  # type: ignore[attr-defined]
        client.close()  # type: ignore[attr-defined]


@pytest.fixture
def bucket(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on each server in turn."""
    yield from _bucket_on(server, monkeypatch)


@pytest.fixture
def seaweed_bucket(seaweed: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on SeaweedFS (auth on), for tests that need real permission checks."""
    yield from _bucket_on(seaweed, monkeypatch)


@pytest.fixture
def boto(server: Server) -> Iterator[object]:
    client = server.client()
    yield client
    client.close()  # type: ignore[attr-defined]


__all__ = ["ADMIN", "READER", "Server", "open_uploads"]
