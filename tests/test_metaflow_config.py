"""Metaflow's configuration, read the way Metaflow reads it: ``$METAFLOW_HOME/config.json``
(``~/.metaflowconfig`` by default), ``config_<profile>.json`` with ``METAFLOW_PROFILE``.

metaflow reads its configuration once, as it is imported, so each case runs in a fresh
interpreter whose environment has no ``METAFLOW_*`` setting and no ``AWS_*`` credentials or
endpoint: the credentials are in ``~/.aws/credentials``, everything else in Metaflow's file."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from s3fast.testing import ADMIN

from .conftest import Server

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
from types import SimpleNamespace
if sys.argv[2] == "no-metaflow":
    sys.modules["metaflow"] = None  # as if metaflow were not installed
from s3fast import S3, MetaflowS3URLException

bucket = sys.argv[1]
out = {}
with S3(s3root=f"s3://{bucket}/direct") as s3:
    s3.put("a", b"via s3root")
    got = s3.get("a")
    out["blob"] = got.blob.decode()
    out["path"] = got.path
    out["endpoint"] = s3._aio._engine.endpoint_url
    out["attempts"] = s3._aio.config.max_attempts
    out["encryption"] = s3._aio._encryption
run = SimpleNamespace(id="7", parent=SimpleNamespace(id="MyFlow"))
try:
    with S3(run=run) as s3:
        s3.put("b", b"via run")
        out["run_root"] = s3._aio._s3root
except MetaflowS3URLException as exc:
    out["run_error"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture
def weed_bucket(seaweed: Server) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:16]}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):  # type: ignore[attr-defined]
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=name)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def _home(tmp_path: pathlib.Path) -> pathlib.Path:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {ADMIN.access_key}\n"
        f"aws_secret_access_key = {ADMIN.secret_key}\n"
    )
    return home


def _run(home: pathlib.Path, bucket: str, mode: str = "", **env: str) -> dict:
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "AWS_EC2_METADATA_DISABLED": "true",  # never leave loopback
        "USERNAME": "s3fast-tests",
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, bucket, mode or "metaflow"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(home),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_config_file(tmp_path: pathlib.Path, seaweed: Server, weed_bucket: str) -> None:
    home = _home(tmp_path)
    tempdir = tmp_path / "mf-temp"
    tempdir.mkdir()
    (home / ".metaflowconfig").mkdir()
    (home / ".metaflowconfig" / "config.json").write_text(
        json.dumps(
            {
                "METAFLOW_S3_ENDPOINT_URL": seaweed.endpoint_url,
                "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{weed_bucket}/sys",
                "METAFLOW_TEMPDIR": str(tempdir),
                "METAFLOW_S3_RETRY_COUNT": 2,
            }
        )
    )
    out = _run(home, weed_bucket)
    assert out["blob"] == "via s3root"
    assert out["endpoint"] == seaweed.endpoint_url
    assert out["path"].startswith(str(tempdir) + os.sep)
    assert out["attempts"] == 3  # S3_RETRY_COUNT retries after the first try
    assert out["encryption"] is None
    # DATATOOLS_S3ROOT derived from DATASTORE_SYSROOT_S3, as Metaflow derives it.
    assert out["run_root"] == f"s3://{weed_bucket}/sys/data/MyFlow/7"
    client = seaweed.client()
    body = client.get_object(Bucket=weed_bucket, Key="sys/data/MyFlow/7/b")["Body"].read()  # type: ignore[attr-defined]
    assert body == b"via run"
    client.close()  # type: ignore[attr-defined]


def test_profile_and_overrides(tmp_path: pathlib.Path, seaweed: Server, weed_bucket: str) -> None:
    """``METAFLOW_PROFILE`` picks ``config_<profile>.json`` in ``METAFLOW_HOME``; S3FAST_*
    variables still win over Metaflow's settings."""
    home = _home(tmp_path)
    mfhome = tmp_path / "mfhome"
    mfhome.mkdir()
    # The default file points nowhere useful; the profile is what is read.
    (mfhome / "config.json").write_text(
        json.dumps({"METAFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    )
    (mfhome / "config_weed.json").write_text(
        json.dumps(
            {
                "METAFLOW_S3_ENDPOINT_URL": seaweed.endpoint_url,
                "METAFLOW_DATATOOLS_S3ROOT": f"s3://{weed_bucket}/tools",
            }
        )
    )
    out = _run(home, weed_bucket, METAFLOW_HOME=str(mfhome), METAFLOW_PROFILE="weed")
    assert out["endpoint"] == seaweed.endpoint_url
    assert out["run_root"] == f"s3://{weed_bucket}/tools/MyFlow/7"
    out = _run(
        home,
        weed_bucket,
        METAFLOW_HOME=str(mfhome),
        METAFLOW_PROFILE="weed",
        S3FAST_DATATOOLS_S3ROOT=f"s3://{weed_bucket}/fast",
        S3FAST_MAX_ATTEMPTS="4",
    )
    assert out["run_root"] == f"s3://{weed_bucket}/fast/MyFlow/7"
    assert out["attempts"] == 4


def test_without_metaflow_only_the_environment(
    tmp_path: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    """metaflow not importable: Metaflow's file is not read; its variables still are."""
    home = _home(tmp_path)
    (home / ".metaflowconfig").mkdir()
    (home / ".metaflowconfig" / "config.json").write_text(
        json.dumps({"METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{weed_bucket}/sys"})
    )
    out = _run(home, weed_bucket, "no-metaflow", METAFLOW_S3_ENDPOINT_URL=seaweed.endpoint_url)
    assert out["blob"] == "via s3root"
    assert "DATATOOLS_S3ROOT" in out["run_error"]


PROVIDER_SCRIPT = r"""
import json, sys
import boto3
import metaflow.plugins
from s3fast import S3

bucket, endpoint, access, secret = sys.argv[1:5]
asked = []


class Provider:
    name = "s3fast-test-provider"

    @staticmethod
    def get_client(module, with_error=False, role_arn=None, session_vars=None, client_params=None):
        asked.append([module, role_arn])
        client = boto3.client(
            module, endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=access, aws_secret_access_key=secret,
        )
        return (client, Exception) if with_error else client


metaflow.plugins.AWS_CLIENT_PROVIDERS.append(Provider)
with S3(s3root=f"s3://{bucket}/provided", role="arn:aws:iam::123456789012:role/r") as s3:
    s3.put("k", b"through the provider")
    blob = s3.get("k").blob.decode()
print(json.dumps({"blob": blob, "asked": asked}))
"""


def test_metaflow_aws_client_provider(
    tmp_path: pathlib.Path, seaweed: Server, weed_bucket: str
) -> None:
    """``METAFLOW_DEFAULT_AWS_CLIENT_PROVIDER`` naming another provider: it makes the client
    (given the role), and s3fast signs with that client's credentials, at its endpoint."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "AWS_EC2_METADATA_DISABLED": "true",
        "USERNAME": "s3fast-tests",
        "METAFLOW_DEFAULT_AWS_CLIENT_PROVIDER": "s3fast-test-provider",
    }
    args = [weed_bucket, seaweed.endpoint_url, ADMIN.access_key, ADMIN.secret_key]
    proc = subprocess.run(
        [sys.executable, "-c", PROVIDER_SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(home),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "blob": "through the provider",
        "asked": [["s3", "arn:aws:iam::123456789012:role/r"]],
    }
