"""Scale-out: big batches fanned out to worker processes, each with its own event loop.

One event loop in one process drives about one core's worth of transfers (the GIL caps it), so
``get_many``, ``get_recursive`` / ``get_all`` and ``put_files`` hand big batches to N worker
processes, each running the same engine (its own uvloop, connection pool and limiter), and so
do listings of many prefixes (the workers parse the pages).

- **Workers** are fresh interpreters (spawn semantics: nothing is inherited from the parent's
  threads, and the caller's ``__main__`` is not re-imported), started on the first big batch and
  reused until the client closes. Each talks to the parent over one socketpair: length-prefixed
  pickles. A weakref finalizer (run at interpreter exit too) terminates them if the client is
  never closed; a parent that dies closes the sockets, and workers exit at EOF.
- **Credentials** are resolved in the parent (the standard chain) and sent (access key,
  secret, session token, expiry) with every batch, never in argv or the environment.
  Expiring ones are refreshed as the parent's are: when a worker's set comes within
  botocore's refresh window, the worker asks the parent for its current set over the socket
  (the parent's provider refreshes it), so a batch that runs for hours never signs with
  expired keys (``creds.py``). Region and endpoint are the parent's.
- **Splitting**: by size when sizes are known (listings, local files): largest first onto the
  least loaded worker; else round-robin. Each worker streams results back as objects finish,
  with the bytes its ranges and parts moved (what is done in one turn of its loop goes in one
  message); the parent puts results in input order and reports progress as they come.
- **Where bytes land**: files go straight into the parent's private temp dirs, under names the
  parent numbers, so ``S3Object.path`` looks the same as in one process and is removed by the
  parent's ``close``. ``in_memory=True``: bodies up to ``INLINE_MAX`` travel inside the result
  message; bigger ones are received by the worker into a file in the parent's temp dir (tmpfs
  when the root is automatic) and read by the parent into the returned ``bytes`` with one copy
  (``readv`` into the new object), then unlinked. Pickling a body over the socket would cost the
  parent two copies and many more system calls.
- **Failure and cancellation**: an error in a worker is pickled back and raised in the parent as
  the same exception type, with the same message and URL. The parent then cancels the batch on
  every worker and waits (bounded) until each reports it has cleaned up (its temp files removed,
  its multipart uploads aborted), removes the files already reported, and raises. Cancelling
  the parent's task (Ctrl-C through the sync bridge, a timeout) takes the same path. Workers
  run in their own process group and ignore SIGINT: Ctrl-C reaches them only as a cancel from
  the parent, after which the client still works. A worker that dies fails its batch
  (``MetaflowS3TransferError``; files it had not finished stay until the client closes) and
  the pool is started afresh on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .. import _fork
from ..config import TransferConfig
from ..errors import (
    MetaflowS3AccessDenied,
    MetaflowS3InsufficientDiskSpace,
    MetaflowS3NotFound,
    MetaflowS3TransferError,
)
from ..limits import MiB
from ..targets import Targets, free_bytes, local_name, margin
from ..urls import ByteRange, S3Path, parse
from .client import Engine, bounded_map
from .creds import Handed
from .get import Fetched, FileSink, MemorySink, _writable_bytes, fetch
from .listing import Entry, ListRequest, list_prefix
from .put import Source, put

MIN_BATCH = 8  # fewer objects than this stay in the calling process
INLINE_MAX = 256 * 1024  # in-memory bodies up to this size travel inside the result message
SIZE_OVERHEAD = 256 * 1024  # per-object cost, in bytes, when balancing workers by size
START_TIMEOUT = 60.0
CLEANUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0

_HEADER = struct.Struct("!Q")
_ENTRY = "from s3fast._engine.procs import worker_main; worker_main()"

log = logging.getLogger(__name__)

Credentials = Handed  # (access key, secret, token, expiry): see creds.py
ASK_TIMEOUT = 60.0  # seconds a worker waits for the parent's credentials


def processes_for(engine: Engine) -> int:
    """The engine's plan's processes (``TransferConfig.processes``, else the machine's plan).
    Always 1 off POSIX (the workers talk over socketpairs handed down by ``pass_fds``)."""
    return engine.plan.processes if os.name == "posix" else 1


def share_of(config: TransferConfig, engine: Engine, size: int) -> tuple[TransferConfig, int]:
    """One of ``size`` workers' (processes' or loop threads') config and concurrency ceiling:
    one process each, a share of the client's concurrency (the plan's at least 16 each, a
    given one split exactly), its ceiling, its ``max_bandwidth`` (a cap for the client as a
    whole) and its memory budget (a given one is the client's, split; the plan's is already
    per process)."""
    start = math.ceil(engine.config.max_concurrency / size)
    budget = engine.config.memory_budget
    share = dataclasses.replace(
        config,
        processes=1,
        max_concurrency=max(1, start) if config.max_concurrency else max(16, start),
        max_bandwidth=max(1, config.max_bandwidth // size) if config.max_bandwidth else None,
        memory_budget=max(1, budget // size) if config.memory_budget else budget,
    )
    return share, math.ceil(engine.concurrency / size)


def assign(count: int, workers: int, sizes: list[int | None] | None = None) -> list[list[int]]:
    """Indices ``0..count-1`` split between ``workers``, each list in input order: balanced by
    size (largest first onto the least loaded) when sizes are known, else round-robin."""
    if sizes is None:
        return [list(range(w, count, workers)) for w in range(workers)]
    heap = [(0, w) for w in range(workers)]
    bins: list[list[int]] = [[] for _ in range(workers)]
    for idx in sorted(range(count), key=lambda i: -(sizes[i] or 0)):
        load, w = heapq.heappop(heap)
        bins[w].append(idx)
        heapq.heappush(heap, (load + (sizes[idx] or 0) + SIZE_OVERHEAD, w))
    return [sorted(b) for b in bins]


# --- the wire: length-prefixed pickles over a stream socket --------------------------------


def _send(writer: asyncio.StreamWriter, msg: Any) -> None:
    if writer.is_closing():
        return
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(body)))
    writer.write(body)


async def _recv(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling as the same type and message, else a transfer error
    that names it."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:
        pass
    url = getattr(exc, "url", None)
    return MetaflowS3TransferError(f"{url or 'S3'}: {type(exc).__name__}: {exc}", url)


def _remove(paths: list[str]) -> None:
    for path in paths:
        for name in (path, path + ".part"):
            with contextlib.suppress(OSError):
                os.unlink(name)


# --- the worker side -------------------------------------------------------------------------


class _Dirs:
    """The parent's private temp dirs as a worker sees them: the same order and margins, with
    this worker's own reservations (the disk-full check is repeated by ``posix_fallocate``)."""

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

    def __init__(self, targets: Targets, url: str, tag: str) -> None:
        self._file = FileSink(targets, url, tag)
        self._sink: Any = None

    async def open(self, size: int) -> None:
        self._sink = MemorySink() if size <= INLINE_MAX else self._file
        await self._sink.open(size)

    def view(self, offset: int, length: int) -> memoryview:
        return cast(memoryview, self._sink.view(offset, length))

    def settled(self, offset: int, length: int) -> asyncio.Future[None] | None:
        return cast("asyncio.Future[None] | None", self._sink.settled(offset, length))

    async def commit(self) -> tuple[str | None, bytes | None]:
        return cast(tuple[str | None, bytes | None], await self._sink.commit())

    async def discard(self) -> None:
        if self._sink is not None:
            await self._sink.discard()


class _Worker:
    """A worker's state: its engine (per credentials), running batches, the parent's socket."""

    def __init__(self, writer: asyncio.StreamWriter, setup: dict[str, Any]) -> None:
        self.writer = writer
        self.config: TransferConfig = setup["config"]
        self.endpoint_url: str | None = setup["endpoint_url"]
        self.region: str | None = setup["region"]
        self.ceiling: int = setup["ceiling"]
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
            _send(self.writer, ("creds?", number))
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
            _send(self.writer, ("ok", batch, finished.get(batch, []), moved.get(batch, 0)))

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

    async def send(self, msg: Any) -> None:
        try:
            self.flush()  # results first: "done" comes after every result of its batch
            _send(self.writer, msg)
            await self.writer.drain()
        except ConnectionError:
            pass  # the parent is gone; the read side sees EOF and ends the worker

    async def run(self, op: str, batch: int, creds: Any, jobs: list[Any], opts: Any) -> None:
        written: list[str] = []
        engine = self.engine_for(creds)
        on_bytes = self.mover(batch) if opts[-1] else None  # every op's last option: report bytes?
        try:
            if op == "get":
                return_missing, in_memory, roots, _ = opts
                dirs = _Dirs(roots)

                async def get_one(job: tuple[int, str, ByteRange | None, int, int | None]) -> None:
                    idx, url, brange, number, size = job
                    tag = brange.tag() if brange else ""
                    named = cast(Targets, _Named(dirs, number))
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
                overwrite, _ = opts

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
            _remove(written)
            raise
        except BaseException as exc:
            _remove(written)
            await self.send(("err", batch, _portable(exc), os.getpid()))
        finally:
            await asyncio.shield(self.send(("done", batch)))

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
    kind, setup = await _recv(reader)
    assert kind == "setup"
    worker = _Worker(writer, setup)
    await worker.send(("ready", 0, os.getpid()))
    try:
        while True:
            try:
                msg = await _recv(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the parent is gone
            if msg[0] == "exit":
                break
            if msg[0] == "cancel":
                task = worker.batches.get(msg[1])
                if task is not None:
                    task.cancel()
            elif msg[0] == "creds":
                worker.answered(msg[1], msg[2])
            else:
                op, batch, creds, jobs, opts = msg
                task = asyncio.ensure_future(worker.run(op, batch, creds, jobs, opts))
                worker.batches[batch] = task
                task.add_done_callback(functools.partial(_forget, worker.batches, batch))
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


# --- the parent side ---------------------------------------------------------------------


def _spawn(count: int) -> list[tuple[subprocess.Popen[bytes], socket.socket]]:
    """Start ``count`` workers, each with one end of a socketpair."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    started: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
    try:
        for _ in range(count):
            mine, theirs = socket.socketpair()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _ENTRY, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    env=env,
                    # Not in the terminal's foreground group: Ctrl-C reaches the parent only,
                    # which cancels the workers' batches and waits for their cleanup.
                    process_group=0,
                )
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
            started.append((proc, mine))
    except BaseException:
        _reap([p for p, _ in started], 0)
        for _, s in started:
            s.close()
        raise
    return started


def _reap(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait up to ``timeout`` for workers to exit, then terminate, then kill."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_at_exit(procs: list[subprocess.Popen[bytes]], socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # the worker sees EOF and cleans up
    _reap(procs, 5)


@dataclasses.dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    pump: asyncio.Task[None] | None = None


class Pool:
    """Worker processes for one client: started on the first big batch, reused, stopped by
    :meth:`close`. Lives on the client's event loop."""

    def __init__(self, size: int, config: TransferConfig, engine: Engine) -> None:
        self.size = size
        self.config = config
        self.engine = engine
        self._procs: list[_Proc] = []
        self._batches: dict[int, asyncio.Queue[tuple[int, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None
        self._broken = False
        self._finalizer: weakref.finalize | None = None
        self._answering: set[asyncio.Task[None]] = set()

    def wanted(self, count: int) -> bool:
        """Is a batch of ``count`` objects worth fanning out?"""
        return self.size > 1 and count >= MIN_BATCH

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [p.pid for p in self._procs]

    async def _ensure(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._procs and not self._broken:
                return
            if self._procs:
                await self.close()
            await self._start()

    async def _start(self) -> None:
        await self.engine.client()  # resolves region (and credentials) once, here
        config, ceiling = share_of(self.config, self.engine, self.size)
        setup = {
            "config": config,
            "endpoint_url": self.engine.endpoint_url,
            "region": self.engine.region,
            "ceiling": ceiling,
        }
        loop = asyncio.get_running_loop()
        spawned = await loop.run_in_executor(None, _spawn, self.size)
        popens, socks = [p for p, _ in spawned], [s for _, s in spawned]
        self._finalizer = weakref.finalize(self, _kill_at_exit, popens, socks)
        procs: list[_Proc] = []
        try:
            for popen, sock in spawned:
                reader, writer = await asyncio.open_connection(sock=sock)
                procs.append(_Proc(popen, sock, reader, writer, popen.pid))
                _send(writer, ("setup", setup))
            async with asyncio.timeout(START_TIMEOUT):
                for proc in procs:
                    kind, _, pid = await _recv(proc.reader)
                    assert kind == "ready" and pid == proc.pid
        except BaseException as exc:
            for proc in procs:
                proc.writer.close()
            self._finalizer()
            if isinstance(exc, Exception):
                raise MetaflowS3TransferError(
                    f"could not start {self.size} s3fast worker processes: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise
        for idx, proc in enumerate(procs):
            proc.pump = asyncio.ensure_future(self._pump(idx, proc))
        self._procs = procs
        self._broken = False

    async def _pump(self, idx: int, proc: _Proc) -> None:
        """Route a worker's messages to the batches waiting for them."""
        try:
            while True:
                msg = await _recv(proc.reader)
                if msg[0] == "creds?":
                    task = asyncio.ensure_future(self._answer(proc, msg[1]))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
                    continue
                queue = self._batches.get(msg[1])
                if queue is not None:
                    queue.put_nowait((idx, msg))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self._broken = True
        for queue in self._batches.values():
            queue.put_nowait((idx, ("lost", 0)))

    async def _answer(self, proc: _Proc, number: int) -> None:
        """A worker's credentials came due: send it the current set (this process's
        provider refreshes them first when they are due here too)."""
        try:
            creds = await self.engine.frozen_credentials()
        except Exception as exc:  # the worker keeps what it has; botocore decides
            log.warning("could not refresh AWS credentials for a worker process: %s", exc)
            creds = None
        _send(proc.writer, ("creds", number, creds))

    async def close(self) -> None:
        """Ask every worker to finish (running batches are cancelled and cleaned up), wait
        for them to exit, terminating any that do not."""
        procs, self._procs = self._procs, []
        if not procs:
            return
        for proc in procs:
            _send(proc.writer, ("exit",))
        for proc in procs:
            with contextlib.suppress(ConnectionError):
                await proc.writer.drain()
        loop = asyncio.get_running_loop()
        await asyncio.shield(
            loop.run_in_executor(None, _reap, [p.popen for p in procs], EXIT_TIMEOUT)
        )
        for proc in procs:
            if proc.pump is not None:
                proc.pump.cancel()
        await asyncio.gather(*(p.pump for p in procs if p.pump), return_exceptions=True)
        answering = list(self._answering)
        for task in answering:
            task.cancel()
        await asyncio.gather(*answering, return_exceptions=True)
        for proc in procs:
            proc.writer.close()
            with contextlib.suppress(Exception):
                await proc.writer.wait_closed()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def after_fork(self) -> None:
        """In a forked child: the workers are the parent's. Forget them without a word to them
        (no exit message, no signal: see :mod:`s3fast._fork`), and never kill them at exit;
        the next big batch starts workers of our own."""
        finalizer, self._finalizer = self._finalizer, None
        _fork.orphan(
            self._procs, self._batches, self._lock, finalizer.detach() if finalizer else None
        )
        self._procs, self._batches, self._lock, self._broken = [], {}, None, False

    async def _batch(
        self,
        op: str,
        parts: list[list[Any]],
        opts: Any,
        take: Callable[[int, Any], Awaitable[None]],
        late: Callable[[Any], None],
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """Send each worker its part; ``take(idx, result)`` for every result as it arrives,
        ``on_bytes(n)`` as ranges and parts complete. On any failure or cancellation: cancel
        the batch everywhere, wait for the workers' cleanup, hand results that still arrive to
        ``late``, and raise."""
        await self._ensure()
        creds = await self.engine.frozen_credentials()
        if creds is None:  # as in one process: no request goes out unsigned
            first = next(job for part in parts for job in part)
            raise MetaflowS3AccessDenied(f"{first[1]}: no AWS credentials were found", first[1])
        batch = next(self._ids)
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._batches[batch] = queue
        busy: set[int] = set()
        try:
            for idx, part in enumerate(parts):
                if part:
                    _send(self._procs[idx].writer, (op, batch, creds, part, opts))
                    busy.add(idx)
            while busy:
                idx, msg = await queue.get()
                if msg[0] == "ok":
                    if msg[3] and on_bytes is not None:
                        on_bytes(msg[3])
                    for idx_, value in msg[2]:
                        await take(idx_, value)
                elif msg[0] == "done":
                    busy.discard(idx)
                elif msg[0] == "err":
                    exc: BaseException = msg[2]
                    exc.add_note(f"(in s3fast worker process {msg[3]})")
                    raise exc
                elif msg[0] == "lost":
                    busy.discard(idx)
                    proc = self._procs[idx] if idx < len(self._procs) else None
                    code = proc.popen.poll() if proc else None
                    raise MetaflowS3TransferError(
                        f"s3fast worker process {proc.pid if proc else '?'} "
                        f"exited unexpectedly (exit code {code})"
                    )
        except BaseException:
            await asyncio.shield(self._cancel(batch, queue, busy, late))
            raise
        finally:
            self._batches.pop(batch, None)

    async def _cancel(
        self,
        batch: int,
        queue: asyncio.Queue[tuple[int, Any]],
        busy: set[int],
        late: Callable[[Any], None],
    ) -> None:
        for idx in busy:
            _send(self._procs[idx].writer, ("cancel", batch))
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                while busy:
                    idx, msg = await queue.get()
                    if msg[0] == "ok":
                        for _, value in msg[2]:
                            late(value)
                    elif msg[0] in ("done", "lost"):
                        busy.discard(idx)
        except TimeoutError:
            log.warning("s3fast worker processes did not clean up in %.0f s", CLEANUP_TIMEOUT)
            self._broken = True

    # --- the operations ------------------------------------------------------------------

    async def get(
        self,
        jobs: list[tuple[str, ByteRange | None]],
        targets: Targets,
        *,
        return_missing: bool,
        in_memory: bool,
        sizes: list[int | None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_object: Callable[[], None] | None = None,
    ) -> list[Fetched | None]:
        """Download ``(url, range)`` jobs; results in input order (None: missing).
        ``on_bytes(n)`` as ranges complete, ``on_object()`` as objects do (progress)."""
        roots = targets.all_dirs()
        items = [
            (i, url, brange, targets.number(), sizes[i] if sizes else None)
            for i, (url, brange) in enumerate(jobs)
        ]
        parts = [[items[i] for i in idxs] for idxs in assign(len(items), self.size, sizes)]
        results: list[Fetched | None] = [None] * len(jobs)
        reported: list[str] = []
        reads: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()

        def read_back(idx: int, got: Fetched) -> None:
            assert got.path is not None
            got.blob = _read_file(got.path, got.length)
            got.path = None
            results[idx] = got

        async def take(idx: int, got: Fetched | None) -> None:
            if on_object is not None:
                on_object()
            if got is not None and got.path:
                reported.append(got.path)
                if in_memory:
                    reads.append(loop.run_in_executor(None, read_back, idx, got))
                    return
            results[idx] = got

        def late(got: Fetched | None) -> None:
            if got is not None and got.path:
                reported.append(got.path)

        try:
            opts = (return_missing, in_memory, roots, on_bytes is not None)
            await self._batch("get", parts, opts, take, late, on_bytes)
            await asyncio.gather(*reads)
        except BaseException:
            await asyncio.shield(asyncio.gather(*reads, return_exceptions=True))
            await loop.run_in_executor(None, _remove, reported)
            raise
        return results

    async def put_files(
        self,
        items: list[tuple[str, str | None, Any, Any, Any]],
        overwrite: bool,
        sizes: list[int | None],
        on_bytes: Callable[[int], None] | None = None,
        on_object: Callable[[], None] | None = None,
    ) -> list[bool]:
        """Upload ``(url, local path, content type, metadata, encryption)`` items; whether each
        was written, in input order. ``on_bytes`` / ``on_object`` as in :meth:`get`."""
        jobs = [(i, *item) for i, item in enumerate(items)]
        parts = [[jobs[i] for i in idxs] for idxs in assign(len(jobs), self.size, sizes)]
        done: list[bool] = [False] * len(items)

        async def take(idx: int, ok: bool) -> None:
            if on_object is not None:
                on_object()
            done[idx] = ok

        opts = (overwrite, on_bytes is not None)
        await self._batch("put", parts, opts, take, lambda _: None, on_bytes)
        return done

    async def list_many(self, requests: list[ListRequest]) -> list[list[Entry]]:
        """Listings of ``(url, path, delimiter, limit)`` requests (as ``list_prefix``), in input
        order; round-robin across the workers, whose pages are parsed there."""
        jobs = [
            (i, url, p.bucket, p.key, d, limit) for i, (url, p, d, limit) in enumerate(requests)
        ]
        parts = [[jobs[i] for i in idxs] for idxs in assign(len(jobs), self.size)]
        listed: list[list[Entry]] = [[] for _ in requests]

        async def take(idx: int, columns: tuple[list[str], list[int | None]]) -> None:
            listed[idx] = list(map(Entry, *columns))

        await self._batch("list", parts, (False,), take, lambda _: None)  # no bytes to report
        return listed


def _read_file(path: str, size: int) -> bytes:
    """A staged body, read into a new ``bytes`` with one copy, then unlinked."""
    direct = _writable_bytes(size)
    try:
        if direct is None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            data, view = direct
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                got = 0
                while got < size:
                    n = os.readv(fd, [view[got:]])
                    if n == 0:
                        break
                    got += n
            finally:
                os.close(fd)
                view.release()
            if got != size:
                raise MetaflowS3TransferError(f"{path}: staged body has {got} of {size} bytes")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return data
