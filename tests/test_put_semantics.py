"""Upload semantics where metaflow.S3 is wrong: overwrite=False is atomic (a conditional PUT),
and uploads to a missing bucket raise instead of dropping keys."""

from __future__ import annotations

import asyncio

import pytest

from s3fast import S3, AsyncS3, MetaflowS3NotFound


@pytest.mark.asyncio
async def test_overwrite_false_is_atomic(bucket: str) -> None:
    async with AsyncS3(s3root=f"s3://{bucket}") as s3:
        results = await asyncio.gather(
            *(s3.put_many([("race", f"writer-{i}")], overwrite=False) for i in range(12))
        )
        winners = [i for i, r in enumerate(results) if r]
        assert len(winners) == 1, results
        assert (await s3.get("race", in_memory=True)).text == f"writer-{winners[0]}"


def test_put_to_missing_bucket_raises(bucket: str, tmp_path: object) -> None:
    import pathlib

    f = pathlib.Path(str(tmp_path)) / "x"
    f.write_bytes(b"x")
    with S3(s3root="s3://s3fast-no-such-bucket/p") as s3:
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.put_many([("a", "x"), ("b", "y")])
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.put_files([("a", str(f))])
        with pytest.raises(MetaflowS3NotFound, match="s3fast-no-such-bucket"):
            s3.get_recursive(["p"])
