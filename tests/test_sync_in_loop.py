"""The sync API works wherever sync code runs: also in a thread whose event loop is running (an
async web handler calling sync code; Jupyter, see test_notebook.py), which waits for the call,
warned once. Only a call from s3fast's own loop thread is refused, with a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
import threading
import warnings
from collections.abc import Iterator

import pytest

from s3fast import S3, BlockingCallWarning, Progress, _bridge


def test_sync_calls_inside_a_running_loop(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_bridge, "_warned", False)

    async def handler() -> list[str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        with S3(s3root=f"s3://{seaweed_bucket}/loop") as s3:
            with pytest.warns(BlockingCallWarning, match="AsyncS3") as warned:
                s3.put("a", b"A")
            assert warned[0].filename == __file__  # it points at the caller's line
            # Once: any other warning would fail the test (warnings are errors here).
            assert s3.get("a", in_memory=True).blob == b"A"
            obj = s3.get("a")
            assert obj.path and await asyncio.to_thread(pathlib.Path(obj.path).read_bytes) == b"A"
            s3.put_many([("b", b"B"), ("c", "C")])
            assert [o.blob for o in s3.get_many(["b", "c"], in_memory=True)] == [b"B", b"C"]
            listed = [o.key for o in s3.list_recursive()]
            before = ticks
            s3.get_many(["a", "b"])
            assert ticks == before  # the caller's loop waited for the call ...
        await asyncio.sleep(0.01)
        assert ticks > before  # ... and runs on afterwards
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return listed

    assert asyncio.run(handler()) == ["a", "b", "c"]


def test_sync_call_in_a_thread_of_a_running_loop(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_in_executor`` (a worker thread, no loop there): no warning, as in any thread."""
    monkeypatch.setattr(_bridge, "_warned", False)

    async def main() -> bytes:
        s3 = await asyncio.to_thread(S3, s3root=f"s3://{seaweed_bucket}/thread")
        try:
            await asyncio.to_thread(s3.put, "a", b"A")
            obj = await asyncio.to_thread(s3.get, "a", in_memory=True)
            return bytes(obj.blob or b"")
        finally:
            await asyncio.to_thread(s3.close)

    assert asyncio.run(main()) == b"A"


def test_call_from_s3fast_loop_thread_is_refused(seaweed_bucket: str) -> None:
    """A progress callback runs on s3fast's loop thread: a sync call from there would wait for
    that very loop, so it is refused (and nothing is left half-done)."""
    refused: list[str] = []
    threads: list[threading.Thread] = []
    with S3(s3root=f"s3://{seaweed_bucket}/own") as s3:
        s3.put("a", b"A")

        def progress(p: Progress) -> None:
            threads.append(threading.current_thread())
            if not refused:
                try:
                    s3.get("a")
                except RuntimeError as exc:
                    refused.append(str(exc))

        assert [o.blob for o in s3.get_many(["a"], in_memory=True, progress=progress)] == [b"A"]
        assert s3.get("a", in_memory=True).blob == b"A"  # still usable
    assert threads and threads[0].name == "s3fast-loop"
    assert len(refused) == 1 and "own event loop thread" in refused[0]
    assert "AsyncS3" in refused[0]


def test_warning_made_an_error_leaves_no_coroutine(
    seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the warning turned into an error (as here), the call raises it and nothing runs."""
    monkeypatch.setattr(_bridge, "_warned", False)
    s3 = S3(s3root=f"s3://{seaweed_bucket}/error")

    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BlockingCallWarning)
            with pytest.raises(BlockingCallWarning):
                s3.put("a", b"A")

    asyncio.run(main())
    try:
        assert s3.list_recursive() == []
    finally:
        s3.close()


def _ctrl_c() -> None:
    """Ctrl-C for the main thread (where the test runs), sent from the loop's thread."""
    main = threading.main_thread().ident
    assert main is not None
    signal.pthread_kill(main, signal.SIGINT)


@contextlib.contextmanager
def _interrupted() -> Iterator[None]:
    """The block raises the KeyboardInterrupt that ``_ctrl_c`` causes (Python's own SIGINT
    handler, whatever the test runner installed)."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupted_as_the_call_ends_hands_its_result_to_discard() -> None:
    """Ctrl-C that lands after the coroutine finished but before its result reached the
    caller: the result goes to ``discard`` (a download's files are removed), and the
    interrupt is raised."""
    discarded: list[str] = []

    async def ends_as_interrupted() -> str:
        _ctrl_c()
        return "result"

    with _interrupted():
        _bridge.run(ends_as_interrupted(), discarded.append)
    assert discarded == ["result"]


def test_interrupted_call_is_cancelled_and_cleaned_up_first() -> None:
    """Ctrl-C while the coroutine runs: it is cancelled, its cleanup runs before the
    interrupt reaches the caller, and nothing goes to ``discard``."""
    steps: list[str] = []

    async def long_call() -> str:
        _ctrl_c()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.2)  # cleanup that takes a while
            steps.append("cleaned up")
        return "result"

    with _interrupted():
        _bridge.run(long_call(), steps.append)
    assert steps == ["cleaned up"]
