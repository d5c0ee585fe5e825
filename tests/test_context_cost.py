"""Cheap contexts: what can be shared across ``S3``/``AsyncS3`` instances of a process is
(botocore's session and parsed models; on s3fast's own loop, the started client and its
keep-alive connections), and nothing of one client's leaks into another's results.

Functional, not timed: counted through botocore's loader and the file-system calls made."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.loaders import JSONFileLoader

from s3fast import S3, AsyncS3, MetaflowS3AccessDenied
from s3fast._engine import session
from s3fast.testing import READER

from ._internals import botocore_client
from .conftest import Server


class Calls:
    def __init__(self) -> None:
        self.model_files: list[str] = []
        self.listings: list[str] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Observes (and passes through) botocore's model-file loads and directory listings."""
    seen = Calls()
    load_file = JSONFileLoader.load_file

    def counting_load(self: JSONFileLoader, file_path: str, *a: Any, **kw: Any) -> Any:
        seen.model_files.append(file_path)
        return load_file(self, file_path, *a, **kw)

    def counting(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any = ".", *a: Any, **kw: Any) -> Any:
            if not isinstance(path, int):  # (an fd: rmtree inside the private temp dir)
                seen.listings.append(str(path))
            return fn(path, *a, **kw)

        return wrapper

    monkeypatch.setattr(JSONFileLoader, "load_file", counting_load)
    monkeypatch.setattr(os, "listdir", counting(os.listdir))
    monkeypatch.setattr(os, "scandir", counting(os.scandir))
    yield seen


def test_second_context_loads_nothing(seaweed: Server, seaweed_bucket: str, calls: Calls) -> None:
    seaweed.seed(seaweed_bucket, {"k": b"x" * 1024})
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        assert s3.get("k").blob == b"x" * 1024
        first = botocore_client(s3)
    sessions = session.loads
    calls.model_files.clear()
    calls.listings.clear()
    with S3(s3root=root) as s3:
        assert s3.get("k").blob == b"x" * 1024
        assert botocore_client(s3) is first  # the started client, borrowed again
    assert calls.model_files == []
    assert session.loads == sessions
    # No directory scanned (the download's own private temp dir aside).
    assert [p for p in calls.listings if "s3fast." not in p] == []


def test_async_contexts_share_the_session(
    seaweed: Server, seaweed_bucket: str, calls: Calls
) -> None:
    seaweed.seed(seaweed_bucket, {"k": b"y" * 1024})

    async def one() -> None:
        async with AsyncS3(s3root=f"s3://{seaweed_bucket}") as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"y" * 1024

    asyncio.run(one())
    sessions = session.loads
    calls.model_files.clear()
    asyncio.run(one())
    asyncio.run(one())
    assert calls.model_files == []
    assert session.loads == sessions


def test_credentials_do_not_leak_between_contexts(
    seaweed: Server, seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context after the admin's, as the reader, is the reader: its own client."""
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        s3.put("a", b"admin")
        admin = botocore_client(s3)
    for name, value in READER.env().items():
        monkeypatch.setenv(name, value)
    with S3(s3root=root) as s3:
        assert s3.get("a").blob == b"admin"
        assert botocore_client(s3) is not admin
        with pytest.raises(MetaflowS3AccessDenied):
            s3.put("b", b"reader")
    params = {
        "endpoint_url": seaweed.endpoint_url,
        "aws_access_key_id": READER.access_key,
        "aws_secret_access_key": READER.secret_key,
    }
    for name, value in seaweed.env().items():  # back to the admin's environment
        monkeypatch.setenv(name, value)
    with S3(s3root=root, client_params=params) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.put("c", b"reader")
    with S3(s3root=root) as s3:
        s3.put("d", b"admin again")
        assert botocore_client(s3) is admin


def test_failure_injection_gets_its_own_client(seaweed: Server, seaweed_bucket: str) -> None:
    """An engine with ``inject_failure_rate`` has its faults on a client of its own: the next
    context is not failed."""
    seaweed.seed(seaweed_bucket, {"k": b"z"})
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root, inject_failure_rate=50) as s3:
        assert s3.get("k").blob == b"z"
    with S3(s3root=root) as s3:
        for _ in range(20):
            assert s3.get("k").blob == b"z"
        assert s3.stats.retries == 0


def test_rewritten_credentials_file_is_read_again(
    seaweed: Server, seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Credentials rewritten in the shared credentials file (a login tool, a rotation) are
    what the next context signs with, as with a new metaflow.S3."""
    from s3fast.testing import ADMIN

    creds = tmp_path / "credentials"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    root = f"s3://{seaweed_bucket}"
    creds.write_text(
        f"[default]\naws_access_key_id = {READER.access_key}\n"
        f"aws_secret_access_key = {READER.secret_key}\n"
    )
    with S3(s3root=root) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.put("k", b"reader")
    creds.write_text(
        f"[default]\naws_access_key_id = {ADMIN.access_key}\n"
        f"aws_secret_access_key = {ADMIN.secret_key}\n# rotated\n"
    )
    with S3(s3root=root) as s3:
        s3.put("k", b"admin")
