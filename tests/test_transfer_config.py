"""TransferConfig: keyword-only, validated, read from S3FAST_* variables at call time; and the
order in which the endpoint is taken from the environment."""

from __future__ import annotations

import pytest

from s3fast import TransferConfig
from s3fast._engine.client import resolve_endpoint


@pytest.mark.unit
def test_config(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        TransferConfig(max_concurrency=0)
    with pytest.raises(ValueError):
        TransferConfig(part_size=1024)
    with pytest.raises(TypeError):
        TransferConfig(8)  # type: ignore[misc]  # keyword-only
    monkeypatch.setenv("S3FAST_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("S3FAST_VERIFY_SSL", "false")
    monkeypatch.setenv("S3FAST_READ_TIMEOUT", "2.5")
    cfg = TransferConfig.from_env()
    assert (cfg.max_concurrency, cfg.verify_ssl, cfg.read_timeout) == (7, False, 2.5)
    monkeypatch.setenv("S3FAST_PART_SIZE", "lots")
    with pytest.raises(ValueError, match="S3FAST_PART_SIZE"):
        TransferConfig.from_env()


@pytest.mark.unit
def test_endpoint_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", "http://mf")
    assert resolve_endpoint(None) == "http://mf"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws")
    assert resolve_endpoint(None) == "http://aws"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://aws-s3")
    assert resolve_endpoint(None) == "http://aws-s3"
    assert resolve_endpoint("http://arg") == "http://arg"
