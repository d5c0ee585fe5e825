"""Deletes: DeleteObject for one key, batched DeleteObjects (up to 1000 keys a request, the
batches in parallel) for many, with every per-key error the server reports returned."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import raise_translated
from ..limits import MAX_DELETE_KEYS
from ..urls import S3Path
from .batch import bounded_map
from .engine import Engine


@dataclass(frozen=True)
class Failed:
    """A key the server did not delete, with its S3 error code and message."""

    key: str
    code: str
    message: str | None


async def delete_object(engine: Engine, path: S3Path, url: str) -> None:
    """Delete one object. A missing key is not an error (as in S3)."""
    try:
        async with engine.slot() as client:
            await client.delete_object(Bucket=path.bucket, Key=path.key)
    except Exception as exc:
        raise_translated(exc, url)


async def delete_objects(
    engine: Engine,
    bucket: str,
    keys: list[str],
    on_deleted: Callable[[int], None] | None = None,
) -> list[Failed]:
    """Delete ``keys`` of ``bucket`` in batches of ``MAX_DELETE_KEYS``; returns the keys the
    server reported as not deleted. A request refused as a whole raises, translated."""
    batches = [keys[i : i + MAX_DELETE_KEYS] for i in range(0, len(keys), MAX_DELETE_KEYS)]

    async def one(batch: list[str]) -> list[Failed]:
        try:
            async with engine.slot() as client:
                resp = await client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
        except Exception as exc:
            raise_translated(exc, f"s3://{bucket}/{batch[0]}")
        failed = [
            Failed(err.get("Key", ""), str(err.get("Code") or "Unknown"), err.get("Message"))
            for err in resp.get("Errors", ())
        ]
        if on_deleted is not None:
            on_deleted(len(batch) - len(failed))
        return failed

    done = await bounded_map(one, batches, engine.concurrency)
    return [failure for failures in done for failure in failures]
