"""``inject_failure_rate``: transient failures injected in the engine, retried through its
real retry path; 100 exhausts the retries and raises."""

from __future__ import annotations

import asyncio

import pytest

from s3fast import S3, AsyncS3, MetaflowS3Exception, MetaflowS3TransferError, TransferConfig

from .conftest import Server

OBJS = {f"f/{i:02d}": bytes([i]) * (1000 + 37 * i) for i in range(12)}


@pytest.mark.parametrize("rate", [10, 50, 90])
def test_rates_below_100_return_the_right_data(
    rate: int, seaweed: Server, seaweed_bucket: str
) -> None:
    seaweed.seed(seaweed_bucket, OBJS)
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root, inject_failure_rate=rate) as s3:
        got = s3.get_many(list(OBJS))
        assert {o.key: o.blob for o in got} == OBJS
        assert [o.url for o in s3.list_recursive(["f"])] == [f"{root}/{k}" for k in sorted(OBJS)]
        assert [i.size for i in s3.info_many(list(OBJS))] == [len(v) for v in OBJS.values()]
        put = s3.put_many([(f"up/{k}", v) for k, v in OBJS.items()])
        assert len(put) == len(OBJS)
        assert {o.key: o.blob for o in s3.get_many([f"up/{k}" for k in OBJS])} == {
            f"up/{k}": v for k, v in OBJS.items()
        }
        stats = s3.stats
    assert stats.gave_up == 0
    if rate >= 50:  # ~100 requests: some were failed and retried
        assert stats.retries > 0


def test_botocore_transport_is_injected_too(seaweed: Server, seaweed_bucket: str) -> None:
    """Requests through botocore (copies, deletes, and every request with
    ``transport="botocore"``) are failed at its ``before-send`` and retried by botocore."""
    seaweed.seed(seaweed_bucket, OBJS)
    config = TransferConfig(transport="botocore")
    with S3(s3root=f"s3://{seaweed_bucket}", inject_failure_rate=90, config=config) as s3:
        assert {o.key: o.blob for o in s3.get_many(list(OBJS))} == OBJS
        s3.delete_many(list(OBJS)[:3])
        assert [o.exists for o in s3.get_many(list(OBJS)[:4], return_missing=True)] == [
            False,
            False,
            False,
            True,
        ]
        assert s3.stats.retries > 0
        assert s3.stats.gave_up == 0


def test_rate_100_exhausts_retries(seaweed: Server, seaweed_bucket: str) -> None:
    seaweed.seed(seaweed_bucket, OBJS)
    config = TransferConfig(max_attempts=3)
    with S3(s3root=f"s3://{seaweed_bucket}", inject_failure_rate=100, config=config) as s3:
        with pytest.raises(MetaflowS3TransferError, match="inject_failure_rate=100") as info:
            s3.get("f/00")
        assert isinstance(info.value, MetaflowS3Exception)
        with pytest.raises(MetaflowS3TransferError):
            s3.put("new", b"x")
        with pytest.raises(MetaflowS3TransferError):
            s3.delete("f/01")  # through botocore
        assert s3.stats.gave_up >= 3
    # Nothing was written or deleted.
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        assert not s3.get("new", return_missing=True).exists
        assert s3.get("f/01").blob == OBJS["f/01"]


def test_async_and_environment_default(
    seaweed: Server, seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``METAFLOW_S3_TEST_RETRYABLE_FAILURES`` is the default, as in metaflow.S3."""
    seaweed.seed(seaweed_bucket, OBJS)
    monkeypatch.setenv("METAFLOW_S3_TEST_RETRYABLE_FAILURES", "100")

    async def main() -> None:
        config = TransferConfig(max_attempts=2)
        async with AsyncS3(s3root=f"s3://{seaweed_bucket}", config=config) as s3:
            with pytest.raises(MetaflowS3TransferError):
                await s3.get("f/00", in_memory=True)
        async with AsyncS3(s3root=f"s3://{seaweed_bucket}", inject_failure_rate=0) as s3:
            assert (await s3.get("f/00", in_memory=True)).blob == OBJS["f/00"]

    asyncio.run(main())
