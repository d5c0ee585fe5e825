"""The one place tests reach into s3fast's private state: what a client has started (worker
processes, loop threads, its botocore client) and the faults a test injects there. Everything
a test can observe publicly (``S3.stats``, ``S3.transport_for``, ``S3.tmpdirs``) it reads
through the public API instead."""

from __future__ import annotations

from typing import Any

from s3fast import S3, AsyncS3
from s3fast._engine.engine import Engine


def _aio(s3: S3 | AsyncS3) -> AsyncS3:
    return s3._aio if isinstance(s3, S3) else s3


def engine_of(s3: S3 | AsyncS3) -> Engine:
    """The client's engine (its plan, config, limiter and transport)."""
    return _aio(s3)._engine


def botocore_client(s3: S3 | AsyncS3) -> Any:
    """The started aiobotocore client (None before the first request)."""
    return engine_of(s3)._client


def worker_pids(s3: S3 | AsyncS3) -> list[int]:
    """Process ids of the client's running worker processes."""
    return _aio(s3)._procs.pids


def loop_slots(s3: S3 | AsyncS3) -> list[Any]:
    """The client's running event loops in threads (each with ``.loop`` and ``.thread``)."""
    return _aio(s3)._loops._loops


def restart_workers(s3: S3 | AsyncS3) -> None:
    """Have the next batch start new worker processes (as after a broken one)."""
    _aio(s3)._procs._broken = True
