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
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _fork
from ..config import TransferConfig
from ..errors import (
    MetaflowS3AccessDenied,
    MetaflowS3TransferError,
)
from ..tempdirs import TempDirs
from ..urls import ByteRange
from . import fanout
from .engine import Engine
from .fanout import assign, share_of
from .get import Fetched
from .listing import Entry, ListRequest
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
    recv,
    remove_files,
    send,
)
from .sinks import writable_bytes

START_TIMEOUT = 60.0
CLEANUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0

_ENTRY = "from s3fast._engine.worker import worker_main; worker_main()"

log = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class _Lost:
    """Put on a batch's queue by the parent when a worker's socket closed."""


_Routed = Results | Failed | Done | _Lost  # what a batch's queue carries


@dataclasses.dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    pump: asyncio.Task[None] | None = None
    gone: bool = False  # its pump has seen the connection end


class Pool:
    """Worker processes for one client: started on the first big batch, reused, stopped by
    :meth:`close`. Lives on the client's event loop."""

    def __init__(self, size: int, config: TransferConfig, engine: Engine) -> None:
        self.size = size
        self.config = config
        self.engine = engine
        self._procs: list[_Proc] = []
        self._batches: dict[int, asyncio.Queue[tuple[int, _Routed]]] = {}
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None
        self._broken = False
        self._finalizer: weakref.finalize | None = None
        self._answering: set[asyncio.Task[None]] = set()

    def worth_fanning_out(self, count: int) -> bool:
        """Is a batch of ``count`` objects worth fanning out?"""
        return self.size > 1 and count >= fanout.MIN_BATCH

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
        setup = Setup(
            config=config,
            endpoint_url=self.engine.endpoint_url,
            region=self.engine.region,
            ceiling=ceiling,
            spec=self.engine.spec.portable(self.engine.region),
        )
        loop = asyncio.get_running_loop()
        spawned = await loop.run_in_executor(None, _spawn, self.size)
        popens, socks = [p for p, _ in spawned], [s for _, s in spawned]
        self._finalizer = weakref.finalize(self, _kill_at_exit, popens, socks)
        procs: list[_Proc] = []
        try:
            for popen, sock in spawned:
                reader, writer = await asyncio.open_connection(sock=sock)
                procs.append(_Proc(popen, sock, reader, writer, popen.pid))
                send(writer, setup)
            async with asyncio.timeout(START_TIMEOUT):
                for proc in procs:
                    ready = await recv(proc.reader)
                    assert isinstance(ready, Ready) and ready.pid == proc.pid
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
                msg = await recv(proc.reader)
                if isinstance(msg, AskCreds):
                    task = asyncio.ensure_future(self._answer(proc, msg.number))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
                    continue
                queue = self._batches.get(msg.batch)
                if queue is not None:
                    queue.put_nowait((idx, msg))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        proc.gone = self._broken = True
        for queue in self._batches.values():
            queue.put_nowait((idx, _Lost()))

    async def _answer(self, proc: _Proc, number: int) -> None:
        """A worker's credentials came due: send it the current set (this process's
        provider refreshes them first when they are due here too)."""
        try:
            creds = await self.engine.frozen_credentials()
        except Exception as exc:  # the worker keeps what it has; botocore decides
            log.warning("could not refresh AWS credentials for a worker process: %s", exc)
            creds = None
        send(proc.writer, Creds(number, creds))

    async def close(self) -> None:
        """Ask every worker to finish (running batches are cancelled and cleaned up), wait
        for them to exit, terminating any that do not."""
        procs, self._procs = self._procs, []
        if not procs:
            return
        for proc in procs:
            send(proc.writer, Exit())
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
        options: GetOptions | PutOptions | None,
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
        queue: asyncio.Queue[tuple[int, _Routed]] = asyncio.Queue()
        self._batches[batch] = queue
        for idx, worker in enumerate(self._procs):
            if worker.gone:  # it died after _ensure: its pump told only the batches before this
                queue.put_nowait((idx, _Lost()))
        busy: set[int] = set()
        try:
            for idx, part in enumerate(parts):
                if part:
                    message = Batch(op, batch, creds, part, options, on_bytes is not None)
                    send(self._procs[idx].writer, message)
                    busy.add(idx)
            while busy:
                idx, msg = await queue.get()
                if isinstance(msg, Results):
                    if msg.moved and on_bytes is not None:
                        on_bytes(msg.moved)
                    for idx_, value in msg.results:
                        await take(idx_, value)
                elif isinstance(msg, Done):
                    busy.discard(idx)
                elif isinstance(msg, Failed):
                    exc = msg.exc
                    exc.add_note(f"(in s3fast worker process {msg.pid})")
                    raise exc
                elif isinstance(msg, _Lost):
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
        queue: asyncio.Queue[tuple[int, _Routed]],
        busy: set[int],
        late: Callable[[Any], None],
    ) -> None:
        for idx in busy:
            send(self._procs[idx].writer, Cancel(batch))
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                while busy:
                    idx, msg = await queue.get()
                    if isinstance(msg, Results):
                        for _, value in msg.results:
                            late(value)
                    elif isinstance(msg, (Done, _Lost)):
                        busy.discard(idx)
        except TimeoutError:
            log.warning("s3fast worker processes did not clean up in %.0f s", CLEANUP_TIMEOUT)
            self._broken = True

    # --- the operations ------------------------------------------------------------------

    async def get(
        self,
        jobs: list[tuple[str, ByteRange | None]],
        temp_dirs: TempDirs,
        *,
        return_missing: bool,
        in_memory: bool,
        sizes: list[int | None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_object: Callable[[], None] | None = None,
    ) -> list[Fetched | None]:
        """Download ``(url, range)`` jobs; results in input order (None: missing).
        ``on_bytes(n)`` as ranges complete, ``on_object()`` as objects do (progress)."""
        roots = temp_dirs.all_dirs()
        items = [
            (i, url, brange, temp_dirs.number(), sizes[i] if sizes else None)
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
            options = GetOptions(return_missing, in_memory, roots)
            await self._batch("get", parts, options, take, late, on_bytes)
            await asyncio.gather(*reads)
        except BaseException:
            await asyncio.shield(asyncio.gather(*reads, return_exceptions=True))
            await loop.run_in_executor(None, remove_files, reported)
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

        await self._batch("put", parts, PutOptions(overwrite), take, lambda _: None, on_bytes)
        return done

    async def list_many(self, requests: list[ListRequest]) -> list[list[Entry]]:
        """Listings of ``requests`` (as ``list_prefix``), in input order; round-robin across
        the workers, whose pages are parsed there."""
        jobs = [
            (i, r.url, r.path.bucket, r.path.key, r.delimiter, r.limit)
            for i, r in enumerate(requests)
        ]
        parts = [[jobs[i] for i in idxs] for idxs in assign(len(jobs), self.size)]
        listed: list[list[Entry]] = [[] for _ in requests]

        async def take(idx: int, columns: tuple[list[str], list[int | None]]) -> None:
            listed[idx] = list(map(Entry, *columns))

        await self._batch("list", parts, None, take, lambda _: None)  # no bytes to report
        return listed


def _read_file(path: str, size: int) -> bytes:
    """A staged body, read into a new ``bytes`` with one copy, then unlinked."""
    direct = writable_bytes(size)
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
