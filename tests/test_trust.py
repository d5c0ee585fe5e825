"""The lean path trusts what botocore trusts: the CA bundle botocore resolves (here a
profile's ``ca_bundle`` in the AWS config file, with no ``AWS_CA_BUNDLE``), over HTTPS to
SeaweedFS with a self-signed CA."""

from __future__ import annotations

import os
import pathlib

import pytest

from s3fast import S3, MetaflowS3TransferError, TransferConfig
from s3fast.testing import free_ports

from .conftest import Server, _bucket_on


def test_a_ca_bundle_that_cannot_be_read_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # The TLS context is made at the first HTTPS connection; a bundle botocore cannot load is
    # an OSError naming it, not a retried connection error (nothing listens on the port).
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(missing))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"https://127.0.0.1:{free_ports(1)[0]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for _ in range(2):  # the second context meets it as well
        with S3(s3root="s3://bucket-x/") as s3:
            with pytest.raises(FileNotFoundError, match=str(missing)):
                s3.get("k")


def test_profile_ca_bundle_is_trusted(
    seaweed_https: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    for bucket in _bucket_on(seaweed_https, monkeypatch):
        monkeypatch.delenv("AWS_CA_BUNDLE")
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        body = os.urandom(300_000)
        config = tmp_path / "config"
        config.write_text(f"[default]\nca_bundle = {seaweed_https.ca_bundle}\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        with S3(s3root=f"s3://{bucket}") as s3:
            assert s3.transport_for() == "lean"
            s3.put("k", body)
            assert s3.get("k", in_memory=True).blob == body
            assert s3.info("k").size == len(body)
        config.write_text("[default]\n")  # botocore's default bundle: the CA is unknown
        with S3(s3root=f"s3://{bucket}", config=TransferConfig(max_attempts=1)) as s3:
            assert s3.transport_for() == "lean"
            with pytest.raises(MetaflowS3TransferError, match=f"s3://{bucket}/k") as err:
                s3.get("k", in_memory=True)
            assert (
                "certificate" in repr(err.value.__cause__).lower()
                or "certificate" in str(err.value).lower()
            )
