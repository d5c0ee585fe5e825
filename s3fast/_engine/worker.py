"""A worker process: one event loop and engine serving the parent's batches (the design is
described in :mod:`.pool`, the messages in :mod:`.procwire`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from ..config import TransferConfig
from ..errors import (
    MetaflowS3InsufficientDiskSpace,
    MetaflowS3NotFound,
)
from ..limits import MiB
from ..tempdirs import TempDirs, free_bytes, local_name, margin
from ..urls import ByteRange, S3Path, parse
from .batch import bounded_map
from .checksums import Algorithm
from .engine import Engine
from .fanout import INLINE_MAX, Credentials
from .get import Fetched, fetch
from .listing import list_prefix
from .procwire import (
    AskCreds,
    Batch,
    Cancel,
    Creds,
    Done,
    Exit,
    Failed,
    GetOptions,
    PutOptions,
    Ready,
    Results,
    Setup,
    ToParent,
    portable,
    recv,
    remove_files,
    send,
)
from .put import Source, put
from .session import ClientSpec
from .sinks import FileSink, MemorySink, Spool

ASK_TIMEOUT = 60.0  # seconds a worker waits for the parent's credentials


class _Dirs:
    """The parent's private temp dirs as a worker sees them: the same order and margins, with
    this worker's own reservations (a full disk is still found by the writes)."""

    def __init__(self, roots: list[tuple[str, str, bool]]) -> None:
        self.roots = roots
        self.margins = [margin(base, explicit) for _, base, explicit in roots]
        self.reserved = [0] * len(roots)

    def reserve(self, size: int, url: str) -> tuple[str, int]:
        tried = []
        for idx, (directory, base, _) in enumerate(self.roots):
            avail = free_bytes(base) - self.reserved[idx]
            if size == 0 or avail >= size + self.margins[idx]:
                self.reserved[idx] += size
                return directory, idx
            tried.append(f"{base} has {max(avail, 0) // MiB} MiB free")
        raise MetaflowS3InsufficientDiskSpace(
            f"{url}: not enough space for {size} bytes ({'; '.join(tried)})", url
        )

    def release(self, token: int, size: int) -> None:
        self.reserved[token] -= size


class _Named:
    """One download's view of :class:`_Dirs`: its local name numbered by the parent."""

    def __init__(self, dirs: _Dirs, number: int) -> None:
        self.dirs = dirs
        self.number = number

    def reserve(self, size: int, url: str) -> tuple[str, int]:
        return self.dirs.reserve(size, url)

    def release(self, token: int, size: int) -> None:
        self.dirs.release(token, size)

    def new_path(self, directory: str, url: str, tag: str = "") -> str:
        return os.path.join(directory, local_name(self.number, url, tag))


class _StagedSink:
    """``in_memory=True`` in a worker: a small body in memory (sent inline), a bigger one in a
    temp file that the parent reads back."""

    def __init__(self, temp_dirs: TempDirs, url: str, tag: str) -> None:
        self._file = FileSink(temp_dirs, url, tag)
        self._sink: Any = None

    async def open(self, size: int) -> None:
        self._sink = MemorySink() if size <= INLINE_MAX else self._file
        await self._sink.open(size)

    def dest(self, offset: int, length: int) -> memoryview | Spool:
        return cast("memoryview | Spool", self._sink.dest(offset, length))

    async def checksum(self, offset: int, length: int, algorithm: Algorithm) -> int:
        return cast(int, await self._sink.checksum(offset, length, algorithm))

    async def commit(self) -> tuple[str | None, bytes | None]:
        return cast(tuple[str | None, bytes | None], await self._sink.commit())

    async def discard(self) -> None:
        if self._sink is not None:
            await self._sink.discard()


class _Worker:
    """A worker's state: its engine (per credentials), running batches, the parent's socket."""

    def __init__(self, writer: asyncio.StreamWriter, setup: Setup) -> None:
        self.writer = writer
        self.config: TransferConfig = setup.config
        self.endpoint_url: str | None = setup.endpoint_url
        self.region: str | None = setup.region
        self.ceiling: int = setup.ceiling
        self.spec: ClientSpec | None = setup.spec
        self.engine: Engine | None = None
        self.creds: Credentials | None = None
        self.engines: list[Engine] = []
        self.batches: dict[int, asyncio.Task[None]] = {}
        # Results finished (and bytes moved) in the same turn of the loop go out as one
        # message per batch.
        self.finished: dict[int, list[tuple[int, Any]]] = {}
        self.moved: dict[int, int] = {}
        self.flush_soon: asyncio.Handle | None = None
        self.asks: dict[int, asyncio.Future[Credentials | None]] = {}
        self.ask_ids = itertools.count(1)

    def engine_for(self, creds: Credentials | None) -> Engine:
        # Expiring credentials refresh themselves through the parent (``ask``): the engine,
        # and its connections, stay. Others: a changed set gets a new engine.
        refreshing = (
            creds is not None and self.creds is not None and bool(creds[3] and self.creds[3])
        )
        if self.engine is None or (creds != self.creds and not refreshing):
            self.engine = Engine(
                self.config,
                self.endpoint_url,
                credentials=creds,
                region=self.region,
                ceiling=self.ceiling,
                spec=self.spec,
                ask=self.ask,
            )
            self.creds = creds
            self.engines.append(self.engine)
        return self.engine

    async def ask(self) -> Credentials | None:
        """The parent's current credentials (refreshed there when due)."""
        number = next(self.ask_ids)
        answer = asyncio.get_running_loop().create_future()
        self.asks[number] = answer
        try:
            send(self.writer, AskCreds(number))
            await self.writer.drain()
            async with asyncio.timeout(ASK_TIMEOUT):
                return await answer
        finally:
            self.asks.pop(number, None)

    def answered(self, number: int, creds: Credentials | None) -> None:
        answer = self.asks.get(number)
        if answer is not None and not answer.done():
            answer.set_result(creds)

    def flush(self) -> None:
        if self.flush_soon is not None:
            self.flush_soon.cancel()  # a no-op when the handle is what called us
            self.flush_soon = None
        finished, self.finished = self.finished, {}
        moved, self.moved = self.moved, {}
        for batch in finished.keys() | moved.keys():
            send(self.writer, Results(batch, finished.get(batch, []), moved.get(batch, 0)))

    def _flush_soon(self) -> None:
        if self.flush_soon is None:
            self.flush_soon = asyncio.get_running_loop().call_soon(self.flush)

    def mover(self, batch: int) -> Callable[[int], None]:
        """The ``on_bytes`` hook of ``batch``'s transfers: counts go to the parent's progress
        with the next message."""

        def moved(n: int) -> None:
            self.moved[batch] = self.moved.get(batch, 0) + n
            self._flush_soon()

        return moved

    async def result(self, batch: int, idx: int, value: Any) -> None:
        self.finished.setdefault(batch, []).append((idx, value))
        self._flush_soon()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def send(self, msg: ToParent) -> None:
        try:
            self.flush()  # results first: "done" comes after every result of its batch
            send(self.writer, msg)
            await self.writer.drain()
        except ConnectionError:
            pass  # the parent is gone; the read side sees EOF and ends the worker

    async def run(self, msg: Batch) -> None:
        op, batch, jobs, opts = msg.op, msg.batch, msg.jobs, msg.options
        written: list[str] = []
        engine = self.engine_for(msg.creds)
        on_bytes = self.mover(batch) if msg.report_bytes else None
        try:
            if op == "get":
                assert isinstance(opts, GetOptions)
                return_missing, in_memory, roots = opts.return_missing, opts.in_memory, opts.roots
                dirs = _Dirs(roots)

                async def get_one(job: tuple[int, str, ByteRange | None, int, int | None]) -> None:
                    idx, url, brange, number, size = job
                    tag = brange.tag() if brange else ""
                    named = cast(TempDirs, _Named(dirs, number))
                    sink: Any = (
                        _StagedSink(named, url, tag) if in_memory else FileSink(named, url, tag)
                    )
                    try:
                        got: Fetched | None = await fetch(
                            engine, parse(url), url, brange, sink, on_bytes, size
                        )
                    except MetaflowS3NotFound:
                        if not return_missing:
                            raise
                        got = None
                    if got is not None and got.path:
                        written.append(got.path)
                    await self.result(batch, idx, got)

                await bounded_map(get_one, jobs, engine.concurrency, engine.admitted)
            elif op == "list":

                async def list_one(job: tuple[int, str, str, str, str, int | None]) -> None:
                    idx, url, bucket, key, delimiter, limit = job
                    entries = await list_prefix(
                        engine, S3Path(bucket, key), url, delimiter=delimiter, limit=limit
                    )
                    # Two plain lists pickle far faster than a list of records.
                    await self.result(
                        batch, idx, ([e.key for e in entries], [e.size for e in entries])
                    )

                await bounded_map(list_one, jobs, engine.concurrency)
            else:
                assert isinstance(opts, PutOptions)
                overwrite = opts.overwrite

                async def put_one(job: tuple[int, str, str, Any, Any, Any]) -> None:
                    idx, url, local, content_type, metadata, encryption = job
                    done = await put(
                        engine,
                        parse(url),
                        url,
                        Source(path=local),
                        overwrite=overwrite,
                        content_type=content_type,
                        metadata=metadata,
                        encryption=encryption,
                        on_bytes=on_bytes,
                    )
                    await self.result(batch, idx, done)

                await bounded_map(put_one, jobs, engine.concurrency, engine.admitted)
        except asyncio.CancelledError:
            remove_files(written)
            raise
        except BaseException as exc:
            remove_files(written)
            await self.send(Failed(batch, portable(exc), os.getpid()))
        finally:
            await asyncio.shield(self.send(Done(batch)))

    async def close(self) -> None:
        tasks = list(self.batches.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # files removed, uploads aborted
        for engine in self.engines:
            with contextlib.suppress(Exception):
                await engine.close()
        self.writer.close()


def _forget(batches: dict[int, Any], batch: int, _: object) -> None:
    batches.pop(batch, None)


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    setup = await recv(reader)
    assert isinstance(setup, Setup)
    worker = _Worker(writer, setup)
    await worker.send(Ready(os.getpid()))
    try:
        while True:
            try:
                msg = await recv(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the parent is gone
            if isinstance(msg, Exit):
                break
            if isinstance(msg, Cancel):
                task = worker.batches.get(msg.batch)
                if task is not None:
                    task.cancel()
            elif isinstance(msg, Creds):
                worker.answered(msg.number, msg.creds)
            else:
                assert isinstance(msg, Batch)
                task = asyncio.ensure_future(worker.run(msg))
                worker.batches[msg.batch] = task
                task.add_done_callback(functools.partial(_forget, worker.batches, msg.batch))
    finally:
        await worker.close()


def worker_main() -> None:
    """Entry point of a worker process: ``python -c ... <socket fd>``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches us as a cancel from the parent
    sock = socket.socket(fileno=int(sys.argv[-1]))
    from .._bridge import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(sock))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
