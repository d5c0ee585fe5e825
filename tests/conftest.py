"""Fixtures: real S3 servers on loopback (SeaweedFS with auth, moto), one bucket per test,
a clean AWS environment, and checks that nothing is left behind."""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import pathlib
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config

from s3fast import tuning
from s3fast.testing import ADMIN, READER, Identity, Moto, SeaweedFS

from .proxy import FaultProxy

# Set before anything imports metaflow (its config is read at import time).
os.environ.setdefault("METAFLOW_DEFAULT_DATASTORE", "local")
os.environ.setdefault("USERNAME", "s3fast-tests")


@dataclass
class Server:
    name: str
    endpoint_url: str
    auth: bool  # does it verify signatures and permissions?
    ca_bundle: str | None = None  # HTTPS with a self-signed CA

    def env(self, identity: Identity = ADMIN) -> dict[str, str]:
        env = {
            **identity.env(),
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        if self.ca_bundle:
            env["AWS_CA_BUNDLE"] = self.ca_bundle
        return env

    def client(self, identity: Identity = ADMIN) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
            verify=self.ca_bundle,
        )

    def seed(self, bucket: str, objs: dict[str, bytes]) -> dict[str, bytes]:
        """Upload ``objs`` with boto3 (not with s3fast, which is under test); returns them."""
        client = self.client()
        for key, body in objs.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)  # type: ignore[attr-defined]
        client.close()  # type: ignore[attr-defined]
        return objs

    def flow_env(self, bucket: str, sysroot: pathlib.Path) -> dict[str, str]:
        """The environment for a Metaflow flow run by the local runtime against this server,
        with ``S3(run=self)`` rooted at ``s3://bucket/data``."""
        return {
            **os.environ,
            **self.env(),
            "METAFLOW_DATATOOLS_S3ROOT": f"s3://{bucket}/data",
            "METAFLOW_DEFAULT_DATASTORE": "local",
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(sysroot),
            "USERNAME": "s3fast-tests",
        }


def thp_always() -> bool:
    """Transparent huge pages for every mapping (a large new ``bytes`` then takes few page
    faults whatever s3fast does)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


def self_signed(tmp: pathlib.Path) -> tuple[str, str]:
    """A self-signed CA certificate for localhost, and its key: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session, serving plain HTTP and HTTPS (a self-signed CA)."""
    cert, key = self_signed(tmp_path_factory.mktemp("weed-tls"))
    with SeaweedFS(https_cert=cert, https_key=key) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(weed: SeaweedFS) -> Server:
    return Server("seaweedfs", weed.endpoint_url, auth=True)


@pytest.fixture(scope="session")
def seaweed_https(weed: SeaweedFS) -> Server:
    assert weed.https_cert is not None
    return Server("seaweedfs-https", weed.https_url, auth=True, ca_bundle=weed.https_cert)


@pytest.fixture(scope="module")
def proxy(seaweed: Server) -> Iterator[FaultProxy]:
    """The fault-injecting proxy in front of SeaweedFS (``tests/proxy.py``)."""
    p = FaultProxy(int(seaweed.endpoint_url.rsplit(":", 1)[1])).start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Server]:
    with Moto() as server:
        yield Server("moto", server.endpoint_url, auth=False)


SERVERS = {"seaweedfs": "seaweed", "moto": "moto_server", "seaweedfs-https": "seaweed_https"}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Server:
    """Each server in turn: SeaweedFS (auth on), moto, and SeaweedFS over HTTPS."""
    return request.getfixturevalue(SERVERS[request.param])


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
    # One process by default whatever machine runs the tests (a big CI machine would get
    # several from the plan): tests ask for worker processes and loop threads explicitly,
    # and test_tuning checks the plan's own rules.
    monkeypatch.setattr(tuning, "GBPS_PER_PROCESS", float("inf"))
    monkeypatch.setattr(tuning, "MAX_PROCESSES_UNKNOWN_NIC", 1)


@pytest.fixture(autouse=True)
def own_connections() -> Iterator[None]:
    """Each test's ``S3`` contexts start with connections of their own: the started clients
    that s3fast shares between contexts of a process are closed after each test."""
    yield
    from s3fast._engine.session import close_idle_clients

    close_idle_clients()


def _s3fast_dirs() -> set[str]:
    """s3fast temp dirs (``s3fast.<pid>.<random>``) of this process or of processes that have
    exited, not those of other live processes (another test run on the same machine)."""
    roots = ["/dev/shm", tempfile.gettempdir()]
    found = set()
    for d in (d for root in roots for d in glob.glob(os.path.join(root, "s3fast.*"))):
        pid = os.path.basename(d).split(".")[1]
        if not pid.isdigit() or (int(pid) != os.getpid() and os.path.exists(f"/proc/{pid}")):
            continue  # another version's, or another live process's
        found.add(d)
    return found


@pytest.fixture(autouse=True)
def no_leftover_tempdirs() -> Iterator[None]:
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


@contextlib.contextmanager
def temporary_bucket(server: Server) -> Iterator[str]:
    """A fresh bucket on ``server`` (for a module's tests), emptied and deleted after."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    client = server.client()
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        _empty_bucket(client, name)
        client.delete_bucket(Bucket=name)  # type: ignore[attr-defined]
        client.close()  # type: ignore[attr-defined]


def open_uploads(client: object, bucket: str) -> list[str]:
    resp = client.list_multipart_uploads(Bucket=bucket)  # type: ignore[attr-defined]
    return [u["Key"] for u in resp.get("Uploads", [])]


def keys_in(client: object, bucket: str) -> list[str]:
    """Every key in ``bucket``, sorted, as boto3 lists them."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


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


__all__ = ["ADMIN", "READER", "Server", "keys_in", "open_uploads"]


# Fixtures that start or use a server: a test marked `unit` (make test-fast) may use none.
_SERVER_FIXTURES = {
    "weed",
    "seaweed",
    "seaweed_https",
    "moto_server",
    "server",
    "proxy",
    "bucket",
    "seaweed_bucket",
    "boto",
    "demo_bucket",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = _SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("unit") and used:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(used)}")
