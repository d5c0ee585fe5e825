"""``role=``: an IAM role assumed through STS, against moto with IAM enforcement on.

IAM enforcement is a process-wide moto setting (``INITIAL_NO_AUTH_ACTION_COUNT``), so this
moto runs as its own process: the first ``SETUP_ACTIONS`` requests (the users, role, policies
and bucket below) go unchecked, every later one is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

from s3fast import S3, AsyncS3, MetaflowS3AccessDenied
from s3fast._engine import session
from s3fast.testing import HOST, free_ports

from ._internals import botocore_client

SETUP_ACTIONS = 7
ROLE = "arn:aws:iam::123456789012:role/s3fast-reader"


@dataclass
class IamMoto:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str


def _policy(action: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}],
        }
    )


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamMoto]:
    (port,) = free_ports(1)
    log = open(tmp_path_factory.mktemp("moto-iam") / "moto.log", "wb")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [server, "-H", HOST, "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        admin = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="assumer")  # 1
        key = iam.create_access_key(UserName="assumer")["AccessKey"]  # 2
        iam.put_user_policy(  # 3: this user may only assume roles
            UserName="assumer", PolicyName="assume", PolicyDocument=_policy("sts:AssumeRole")
        )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:user/assumer"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(  # 4
            RoleName="s3fast-reader", AssumeRolePolicyDocument=json.dumps(trust)
        )
        iam.put_role_policy(  # 5: the role may use S3
            RoleName="s3fast-reader", PolicyName="s3", PolicyDocument=_policy("s3:*")
        )
        s3 = boto3.client("s3", **admin)
        bucket = f"t-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(Bucket=bucket)  # 6
        s3.put_object(Bucket=bucket, Key="data/k", Body=b"behind a role")  # 7
        iam.close()
        s3.close()
        yield IamMoto(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def assumer_env(iam_moto: IamMoto, monkeypatch: pytest.MonkeyPatch) -> IamMoto:
    """The environment of a user allowed nothing but sts:AssumeRole; STS and S3 are moto."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_moto.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", iam_moto.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("USERNAME", "tester")
    return iam_moto


def test_denied_without_role_allowed_with_it(assumer_env: IamMoto) -> None:
    root = f"s3://{assumer_env.bucket}/data"
    with S3(s3root=root) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.get("k")
    with S3(s3root=root, role=ROLE) as s3:
        assert s3.get("k").blob == b"behind a role"
        s3.put("k2", b"written as the role")
        assert s3.get("k2").blob == b"written as the role"
    # Another context reuses the assumed credentials: they are refreshable (refreshed before
    # they expire) and were issued for a session name that says who asked.
    with S3(s3root=root, role=ROLE) as s3:
        assert s3.get("k").blob == b"behind a role"
        creds = botocore_client(s3)._request_signer._credentials
        assert creds.method == "assume-role"
        assert creds.refresh_needed() is False
    assert session.role_session_name().startswith("s3fast-tester-")


def test_role_with_async_client(assumer_env: IamMoto) -> None:
    import asyncio

    async def main() -> None:
        async with AsyncS3(s3root=f"s3://{assumer_env.bucket}/data", role=ROLE) as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"behind a role"
        async with AsyncS3(s3root=f"s3://{assumer_env.bucket}/data") as s3:
            with pytest.raises(MetaflowS3AccessDenied):
                await s3.get("k", in_memory=True)

    asyncio.run(main())


def test_role_without_source_credentials(
    iam_moto: IamMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials to assume the role with: a typed error, not a crash."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", iam_moto.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with S3(s3root=f"s3://{iam_moto.bucket}/data", role=ROLE) as s3:
        with pytest.raises(MetaflowS3AccessDenied, match="credentials"):
            s3.get("k")
