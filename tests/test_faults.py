"""Reliability under injected faults, through the fault proxy (tests/proxy.py) in front of
SeaweedFS with auth on: transient faults are retried, retries are bounded in attempts and in
time, sustained SlowDown lowers the concurrency (and it recovers), batch calls report partial
failure truthfully, 100,000 keys in one call stay bounded in memory, temp files are private."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import stat
import threading
import time
from collections.abc import Iterator

import pytest

from s3fast import (
    S3,
    AsyncS3,
    MetaflowS3Exception,
    MetaflowS3TransferError,
    TransferConfig,
)
from s3fast._engine.endpoint import tls_context
from s3fast._engine.engine import Engine
from s3fast.limits import KiB, MiB

from .conftest import Server, _bucket_on, open_uploads
from .proxy import INTERNAL, SLOWDOWN, FaultProxy, Faults


@pytest.fixture
def objs(seaweed_bucket: str, seaweed: Server) -> dict[str, bytes]:
    return seaweed.seed(seaweed_bucket, {f"o{i}": os.urandom(32 * KiB + i) for i in range(32)})


def _s3(bucket: str, proxy: FaultProxy, **cfg: object) -> S3:
    config = TransferConfig(**{"max_concurrency": 1, **cfg})  # type: ignore[arg-type]
    return S3(s3root=f"s3://{bucket}", endpoint_url=proxy.url, config=config)


@pytest.mark.parametrize(
    "faults",
    [
        Faults(answer=INTERNAL, times=2),
        Faults(answer=SLOWDOWN, times=2),
        Faults(reset=True, times=2),
        Faults(cut_after=1000, clean=True, times=2),  # a body shorter than its Content-Length
        Faults(refuse=True, times=2),
        Faults(trickle=0.001, times=2),  # slow bytes: slow, but complete
    ],
    ids=lambda f: f.kind,
)
def test_transient_faults_are_retried(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, faults: Faults
) -> None:
    proxy.set(faults)
    with _s3(seaweed_bucket, proxy) as s3:
        assert s3.get("o1", in_memory=True).blob == objs["o1"]
        assert hashlib.sha256(s3.get("o2").blob).digest() == hashlib.sha256(objs["o2"]).digest()
        assert s3.info("o3").size == len(objs["o3"])
    assert proxy.injected == 2


def test_botocore_calls_and_parts_are_retried_alone(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy
) -> None:
    big = os.urandom(12 * MiB)
    cfg = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "max_concurrency": 4}
    proxy.set(Faults(answer=INTERNAL, times=2, match="partNumber=2"))
    with _s3(seaweed_bucket, proxy, **cfg) as s3:
        s3.put("mp", big)
        # CreateMultipartUpload, 3 parts, part 2 twice more, CompleteMultipartUpload
        assert proxy.requests == 7 and proxy.injected == 2
        assert s3.stats.retries == 2
        proxy.set(Faults(answer=SLOWDOWN, times=2))
        s3.put("small", b"small")  # PutObject, through botocore
        assert s3.stats.retries == 4
        proxy.set(Faults())
        assert s3.get("mp", in_memory=True).blob == big
        assert s3.get("small", in_memory=True).blob == b"small"
    client = seaweed.client()
    assert open_uploads(client, seaweed_bucket) == []
    client.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_cancel_while_the_upload_is_being_created_leaves_no_upload(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy
) -> None:
    """The server makes the multipart upload, its answer is slow, the caller gives up: the
    upload is still aborted once its id arrives."""
    proxy.set(Faults(stall=1.0, times=1, match="?uploads"))
    cfg = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)
    async with AsyncS3(s3root=f"s3://{seaweed_bucket}", endpoint_url=proxy.url, config=cfg) as s3:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await s3.put("mp", os.urandom(6 * MiB))
        assert proxy.injected == 1
        proxy.set(Faults())
        assert (await s3.info("mp", return_missing=True)).exists is False
    client = seaweed.client()
    assert open_uploads(client, seaweed_bucket) == []
    client.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_cancel_while_the_temp_file_is_made_leaks_no_descriptor(
    bucket: str, boto: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is made on a thread; a cancel meanwhile must still close and remove it."""
    import s3fast._engine.sinks as sinks

    boto.put_object(Bucket=bucket, Key="x", Body=b"x" * 5000)  # type: ignore[attr-defined]
    make = sinks._create
    entered, go, made = threading.Event(), threading.Event(), threading.Event()

    def held_create(part: str) -> int:
        entered.set()
        go.wait(30)  # until the test's cancels have landed
        try:
            return make(part)
        finally:
            made.set()

    def leftovers(s3: AsyncS3) -> list[str]:
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own descriptor
                pass
        return [f for f in fds if ".part" in f or "s3fast." in f] + sorted(_files(s3.tmpdirs))

    monkeypatch.setattr(sinks, "_create", held_create)
    async with AsyncS3(s3root=f"s3://{bucket}") as s3:
        for cancels in (1, 2):  # twice, as a batch may do: the second stops the wait
            entered.clear()
            go.clear()
            made.clear()
            task = asyncio.ensure_future(s3.get("x"))
            assert await asyncio.to_thread(entered.wait, 30)  # the thread is making the file
            for _ in range(cancels):
                task.cancel()
                await asyncio.sleep(0)
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The file was made; it is closed and removed once the thread returns.
            assert await asyncio.to_thread(made.wait, 30)
            for _ in range(500):
                if not leftovers(s3):
                    break
                await asyncio.sleep(0.01)
            assert not leftovers(s3)


def test_a_lost_create_answer_leaves_no_orphaned_upload(
    seaweed_bucket: str, seaweed: Server, proxy: FaultProxy
) -> None:
    """The server makes an upload but its answer is lost (reset before the status line);
    botocore tries again and gets a second upload: the first must not be left behind."""
    big = os.urandom(6 * MiB)
    proxy.set(Faults(reset=True, times=1, match="?uploads"))
    with _s3(seaweed_bucket, proxy, part_size=5 * MiB, multipart_threshold=5 * MiB) as s3:
        s3.put("mp", big)
        assert proxy.injected == 1
        proxy.set(Faults())
        assert s3.get("mp", in_memory=True).blob == big
    client = seaweed.client()
    assert open_uploads(client, seaweed_bucket) == []
    client.close()  # type: ignore[attr-defined]


def test_retries_are_bounded_in_attempts_and_in_time(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy
) -> None:
    url = f"s3://{seaweed_bucket}/o1"
    proxy.set(Faults(answer=SLOWDOWN, seconds=600))  # a storm that does not end
    with _s3(seaweed_bucket, proxy, max_attempts=4) as s3:
        with pytest.raises(MetaflowS3TransferError, match=url):
            s3.get("o1")
        stats = s3.stats
        assert all(os.listdir(d) == [] for d in s3.tmpdirs)
    assert proxy.requests == 4
    assert (stats.retries, stats.gave_up) == (3, 1)  # three sleeps: none after the last try
    # Bounded in time: with attempts to spare, each call gives up after max_retry_time.
    with _s3(seaweed_bucket, proxy, max_attempts=1000, max_retry_time=1.5) as s3:
        proxy.set(Faults())
        s3.info("o1")  # the client is started before the clock (a loaded machine is slow to)
        for call, slack in [
            (lambda: s3.get("o1"), 3.0),  # the engine's own retries (1000 would take minutes)
            (lambda: s3.info("o1"), 3.0),
            (lambda: s3.put("new", b"x"), 9.0),  # botocore's, whose last sleep may overrun
        ]:
            proxy.set(Faults(answer=SLOWDOWN, seconds=600))
            start = time.monotonic()
            with pytest.raises(MetaflowS3TransferError, match=f"s3://{seaweed_bucket}/"):
                call()
            assert time.monotonic() - start < 1.5 + slack
            assert 3 <= proxy.requests < 100
    proxy.set(Faults())


def _gateway(status: str) -> bytes:
    """What a load balancer in front of an S3-compatible store answers: HTML, not S3 XML."""
    body = f"<html><body><h1>{status}</h1></body></html>"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


@pytest.mark.parametrize(
    "answer, load",
    [
        (_gateway("502 Bad Gateway"), True),
        (_gateway("504 Gateway Timeout"), True),
        (INTERNAL, False),  # one request's failure: retried, not a sign of load
    ],
    ids=["502", "504", "500"],
)
def test_overload_answers_lower_concurrency(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, answer: bytes, load: bool
) -> None:
    keys, want = list(objs), list(objs.values())
    with _s3(seaweed_bucket, proxy, max_concurrency=16, max_attempts=50) as s3:
        s3.info(keys[0])  # the client is started first: the burst meets the batch, however slow
        proxy.set(Faults(answer=answer, seconds=1.0))
        assert [o.blob for o in s3.get_many(keys, in_memory=True)] == want
        stats = s3.stats
        assert proxy.counts["answer " + answer.split(b" ", 2)[1].decode()] >= 5
    proxy.set(Faults())
    assert stats.retries >= 5
    if load:
        assert stats.limit_cuts >= 1 and stats.throttled >= 5, stats
    else:
        assert stats.limit_cuts == stats.throttled == 0, stats


def test_sustained_slowdown_lowers_concurrency_and_it_recovers(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy
) -> None:
    keys, want = list(objs), list(objs.values())
    proxy.set(Faults())
    with _s3(seaweed_bucket, proxy, max_concurrency=16, max_attempts=50) as s3:
        assert [o.blob for o in s3.get_many(keys, in_memory=True)] == want
        assert proxy.peak >= 8 and s3.stats.limit == 16  # full concurrency on the wire
        proxy.set(Faults(answer=SLOWDOWN, seconds=2.0))  # a 2-second storm, ridden out
        assert [o.blob for o in s3.get_many(keys, in_memory=True)] == want
        during = s3.stats
        assert proxy.counts["answer 503"] >= 10
        assert during.limit_cuts >= 3 and during.lowest_limit <= 2, during
        # Right after the storm: fewer requests in flight, growing back one at a time.
        proxy.set(Faults())
        assert [o.blob for o in s3.get_many(keys, in_memory=True)] == want
        assert proxy.peak <= s3.stats.limit < 16
        for _ in range(30):
            if s3.stats.limit == 16:
                break
            s3.get_many(keys, in_memory=True)
        assert s3.stats.limit == 16  # recovered, and never above the maximum
        proxy.reset_peak()
        assert [o.blob for o in s3.get_many(keys, in_memory=True)] == want
        assert 8 <= proxy.peak <= 16


def test_batch_calls_report_partial_failure_truthfully(
    seaweed_bucket: str, objs: dict[str, bytes], proxy: FaultProxy, seaweed: Server
) -> None:
    client = seaweed.client()
    for key in ("bad1", "bad2"):
        client.put_object(Bucket=seaweed_bucket, Key=key, Body=b"unreachable")  # type: ignore[attr-defined]
    proxy.set(Faults(answer=INTERNAL, seconds=600, match="/bad"))  # these keys always fail
    bad_url = f"s3://{seaweed_bucket}/bad1"
    with _s3(seaweed_bucket, proxy, max_attempts=2) as s3:
        got = s3.get_many(["o1", "nope", "o2"], return_missing=True)
        assert [o.exists for o in got] == [True, False, True]
        assert [got[0].blob, got[2].blob] == [objs["o1"], objs["o2"]]
        infos = s3.info_many(["o1", "nope"], return_missing=True)
        assert [o.exists for o in infos] == [True, False]
        for call in (
            lambda: s3.get_many(["o1", "nope", "bad1", "o2"], return_missing=True),
            lambda: s3.get_many(["o1", "bad1"], return_missing=True, in_memory=True),
            lambda: s3.info_many(["o1", "nope", "bad1"], return_missing=True),
            lambda: s3.put_many([("o9", b"new"), ("bad1", b"new")]),
        ):
            before = _files(s3.tmpdirs)
            with pytest.raises(MetaflowS3TransferError, match=bad_url) as err:
                call()
            assert "/o1" not in str(err.value) and "/nope" not in str(err.value)
            assert _files(s3.tmpdirs) == before  # what the failed batch wrote is gone
    # Several keys failing together: every key named is one that failed.
    with _s3(seaweed_bucket, proxy, max_attempts=1, max_concurrency=8) as s3:
        with pytest.raises(MetaflowS3Exception) as err:
            s3.info_many(["o1", "bad1", "bad2", "o2"])
        named = {f"bad{i}" for i in (1, 2) if f"s3://{seaweed_bucket}/bad{i}" in str(err.value)}
        assert named and "/o1" not in str(err.value)
    proxy.set(Faults())
    client.close()  # type: ignore[attr-defined]


def _files(dirs: list[str]) -> set[str]:
    return {os.path.join(d, name) for d in dirs for name in os.listdir(d)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.asyncio
async def test_100k_keys_in_one_call_stay_bounded(seaweed_bucket: str, seaweed: Server) -> None:
    n = 100_000
    keys = [f"k/{i:06d}" for i in range(n)]
    present = {0: b"first", n // 2: b"middle", n - 1: b"last"}
    client = seaweed.client()
    for i, body in present.items():
        client.put_object(Bucket=seaweed_bucket, Key=keys[i], Body=body)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]
    cfg = TransferConfig(max_concurrency=32)
    async with AsyncS3(s3root=f"s3://{seaweed_bucket}", config=cfg) as s3:
        await s3.info("k/000000")  # connections and the client are warm
        base = _rss()
        peak, most_tasks = [base], [0]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], _rss())
                most_tasks[0] = max(most_tasks[0], len(asyncio.all_tasks()))
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        try:
            got = await s3.info_many(keys, return_missing=True)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
    assert len(got) == n
    assert [i for i, o in enumerate(got) if o.exists] == sorted(present)
    assert [got[i].size for i in sorted(present)] == [len(b) for b in present.values()]
    assert most_tasks[0] <= 32 + 4  # one worker per slot, not a task (or coroutine) per key
    # 100,000 results are kept (about 32 MiB here); nothing per key beyond them
    growth = peak[0] - base
    assert growth < 96 * MiB, f"RSS grew by {growth / MiB:.0f} MiB for {n} keys"


@pytest.fixture
def moto_bucket(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from _bucket_on(moto_server, monkeypatch)


def test_temp_files_are_private_and_stay_inside(moto_bucket: str, moto_server: Server) -> None:
    keys = ["plain", "../../escape", "a/../../up", "..", "dir/.hidden", "x" * 300]
    client = moto_server.client()
    for key in keys:
        client.put_object(Bucket=moto_bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]
    old = os.umask(0)  # modes must not depend on the caller's umask
    try:
        with S3(s3root=f"s3://{moto_bucket}") as s3:
            got = s3.get_many(keys)
            dirs = s3.tmpdirs
            assert dirs and all(stat.S_IMODE(os.stat(d).st_mode) == 0o700 for d in dirs)
            for key, obj in zip(keys, got, strict=True):
                assert obj.path is not None and obj.blob == key.encode()
                assert os.path.dirname(obj.path) in dirs
                assert stat.S_IMODE(os.stat(obj.path).st_mode) == 0o600
    finally:
        os.umask(old)


def _lean_tls(config: TransferConfig) -> ssl.SSLContext:
    """The TLS context of the lean path of a client with ``config`` (no request is made)."""

    async def lean_tls() -> ssl.SSLContext:
        engine = Engine(config, "https://127.0.0.1:9")
        try:
            return await tls_context(await engine.client())
        finally:
            await engine.close()

    return asyncio.run(lean_tls())


def test_tls_verification_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TransferConfig().verify_ssl and TransferConfig.from_env().verify_ssl
    ctx = _lean_tls(TransferConfig())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    monkeypatch.setenv("S3FAST_VERIFY_SSL", "0")
    assert not TransferConfig.from_env().verify_ssl
    assert _lean_tls(TransferConfig.from_env()).verify_mode == ssl.CERT_NONE
    monkeypatch.setenv("S3FAST_MAX_RETRY_TIME", "2.5")
    assert TransferConfig.from_env().max_retry_time == 2.5
    with pytest.raises(ValueError):
        TransferConfig(max_retry_time=0)


def test_secrets_stay_out_of_logs_and_stats(
    seaweed_bucket: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every log record (botocore's debug output included) of working and failing calls."""
    import logging

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    caplog.set_level(logging.DEBUG)
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        s3.put("k", b"v" * 100)
        assert s3.get("k").blob == b"v" * 100
        texts = [repr(s3.stats), repr(s3._aio.config)]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + secret)
    with S3(s3root=f"s3://{seaweed_bucket}") as s3, pytest.raises(MetaflowS3Exception):
        s3.get("k")
    assert caplog.records
    assert all(secret not in text for text in [caplog.text, *texts])
