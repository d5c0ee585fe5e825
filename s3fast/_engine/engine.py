"""The engine: one aiobotocore client, one concurrency limiter, one config, per event loop.

aiobotocore does credentials (the standard AWS chain), endpoint and region resolution, SigV4
signing, request retries for transient errors (``standard`` mode) and XML error parsing.
The engine's own parts live apart: the limiter in :mod:`.limiter`, retries and backoff in
:mod:`.retry`, the upload and bandwidth budgets in :mod:`.budget`, ``bounded_map`` in
:mod:`.batch`, how the botocore client is made in :mod:`.session`.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

from .. import _fork
from ..config import TransferConfig
from .budget import TLS_COPIES, Bandwidth, ByteBudget
from .creds import Ask, Handed, current, handed_on
from .faults import FaultInjector, is_injected
from .http import LeanHttp
from .limiter import THROTTLE_CODES, THROTTLE_STATUS, AdaptiveLimiter
from .retry import botocore_sent, note_sent
from .session import (
    CURRENT_ENGINE,
    ClientShelf,
    ClientSpec,
    HttpSession,
    SharedClient,
    client_config,
    create_client,
    resolve_endpoint,
    shared_key,
    shelf,
)
from .transport import Transport


@dataclass(frozen=True)
class TransferStats:
    """A snapshot of one client's engine, for tests, the soak run and monitoring.

    ``limit`` is the number of requests currently allowed in flight. It starts at
    ``start_limit`` (the plan's or the given ``max_concurrency``) and moves between 1 and
    ``concurrency_ceiling`` (the given ``max_concurrency``, else what the memory budget
    allows); ``lowest_limit`` and ``highest_limit`` are how far it went; ``probes``
    how often it was raised to test for more throughput, ``probes_reverted`` how many of those
    did not pay, ``stepped_back`` how often it was lowered because latency collapsed;
    ``throttled`` the overload answers seen (429, 502, 503, 504, throttling codes);
    ``limit_cuts`` how often the limit was halved; ``retries`` the requests retried (the
    engine's own, plus those botocore retried); ``gave_up`` the requests that ran out of
    attempts or time."""

    concurrency_ceiling: int
    start_limit: int
    limit: int
    lowest_limit: int
    highest_limit: int
    probes: int
    probes_reverted: int
    stepped_back: int
    in_flight: int
    throttled: int
    limit_cuts: int
    retries: int
    gave_up: int

    @property
    def max_concurrency(self) -> int:
        """Deprecated: ``concurrency_ceiling`` (``TransferConfig.max_concurrency`` is where
        the limit starts, this the most it may reach)."""
        warnings.warn(
            "TransferStats.max_concurrency is deprecated: use concurrency_ceiling",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.concurrency_ceiling


SIZE_WEIGHT = 0.25  # weight of the newest object in Engine's moving share of big objects
FIRST_DOWNLOAD_WAIT = 1.0  # seconds the others wait at most for a new engine's first size


class _Slot:
    """``async with engine.slot(nbytes) as client``: one request in flight, moving ``nbytes``
    (or ``progress[0] - start`` of a ``progress`` counter, read at the end), which the
    limiter counts toward throughput."""

    __slots__ = ("_engine", "_nbytes", "_progress", "_start")

    def __init__(self, engine: Engine, nbytes: int, progress: list[int] | None) -> None:
        self._engine = engine
        self._nbytes = nbytes
        self._progress = progress
        self._start = progress[0] if progress is not None else 0

    async def __aenter__(self) -> Any:
        client = await self._engine.client()
        await self._engine.limiter.acquire()
        note_sent()
        return client

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        moved = self._nbytes
        if self._progress is not None:
            moved += self._progress[0] - self._start
        self._engine.limiter.release(exc, moved)


class Engine:
    """Lives on one event loop. Made by AsyncS3; ``start()`` before use, ``close()`` after.

    ``config``'s fields left as ``None`` are filled from the machine's plan
    (:func:`s3fast.tuning.plan`), once, here; ``self.plan`` says why."""

    def __init__(
        self,
        config: TransferConfig,
        endpoint_url: str | None,
        *,
        credentials: Handed | None = None,
        region: str | None = None,
        ceiling: int | None = None,
        spec: ClientSpec | None = None,
        ask: Ask | None = None,
    ) -> None:
        from .. import tuning  # lazily: ``python -m s3fast.tuning`` stays a clean entry point

        self.plan = tuning.plan(config)
        self.config = self.plan.config
        self.endpoint_url = resolve_endpoint(endpoint_url)
        # How the client is made (metaflow.S3's keywords). ``credentials`` and ``region``,
        # handed on by the caller (worker processes, loop threads), are used as they are: no
        # credential chain here; ``ask`` fetches the caller's current set when these come due
        # (see creds.py).
        spec = spec or ClientSpec()
        if credentials is not None:
            keys = (credentials[0], credentials[1], credentials[2])
            spec = replace(spec, keys=keys, credentials=None, role=None)
        if region is not None:
            spec = replace(spec, region=region)
        self.spec = spec
        self._credentials = credentials
        self._ask = ask
        self._region = spec.region
        self.faults = (
            FaultInjector(spec.inject_failure_rate, self.config.max_attempts)
            if spec.inject_failure_rate > 0
            else None
        )
        # Requests in flight start at the plan's number and may grow to its ceiling (a worker
        # process is given its share of its parent's).
        self.concurrency = max(
            self.config.max_concurrency, ceiling or self.plan.concurrency_ceiling
        )
        rate = self.config.max_bandwidth
        self._bandwidth = Bandwidth(rate) if rate is not None else None
        # Upload buffers in flight (parts read from files, TLS copies): within the memory
        # budget whatever the part size, so big parts mean fewer of them at once.
        self.upload_budget = ByteBudget(self.config.memory_budget)
        self._client: Any = None
        self._client_cm: Any = None
        self._lease: SharedClient | None = None
        self._shelf: ClientShelf | None = None
        self._closed = False
        self.limiter = AdaptiveLimiter(self.config.max_concurrency, self.concurrency)
        self.retries = 0  # requests retried (the engine's, and botocore's)
        self.gave_up = 0  # requests that ran out of attempts or time
        self._start_lock: asyncio.Lock | None = None
        self.transport = Transport()  # which requests take the lean path
        self.conditional_put = True  # cleared if the server rejects If-None-Match
        # The share of whole objects seen lately that were bigger than two ranges (a moving
        # average, from the first size seen): how a checked download of unknown size starts
        # (see get.Download). Until a size is seen, one download goes first, alone.
        self._big_share = 0.0
        self.knows_sizes = False
        self._first_download: asyncio.Future[None] | None = None

    def expects_big(self, size: int | None) -> bool:
        """Will a whole object of ``size`` (None: unknown) be bigger than two ranges (too big
        to read in one stream)?"""
        if size is not None:
            return size > 2 * self.config.range_size
        return self._big_share >= 0.5

    def saw_size(self, total: int) -> None:
        """A whole object's size, as a response gave it."""
        big = 1.0 if total > 2 * self.config.range_size else 0.0
        self._big_share += (SIZE_WEIGHT if self.knows_sizes else 1.0) * (big - self._big_share)
        self.knows_sizes = True
        if self._first_download is not None:
            self.end_first_download(self._first_download)

    def first_download(self) -> tuple[asyncio.Future[None], bool]:
        """No object size known yet: a future done when the first download's response has
        told one (or it failed a try), and whether the caller is that first download."""
        if self._first_download is None:
            self._first_download = asyncio.get_running_loop().create_future()
            return self._first_download, True
        return self._first_download, False

    def end_first_download(self, first: asyncio.Future[None]) -> None:
        """The first download (``first``) saw a size, or failed a try: release those waiting
        for it."""
        if not first.done():
            first.set_result(None)
        if self._first_download is first and not self.knows_sizes:
            self._first_download = None  # the next download goes first

    async def client(self) -> Any:
        # botocore's hooks on a shared client find the engine of the request here (the
        # caller's task, which makes the request right after this).
        CURRENT_ENGINE.set(self)
        if self._client is None:
            if self._closed:  # (a task left running past the close of its client)
                raise RuntimeError("this S3 client is closed")
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                if self._client is None:
                    await self._start()
        return self._client

    async def _start(self) -> None:
        cfg = self.config
        spec = self.spec
        # None: botocore's own lookup (AWS_CA_BUNDLE, the profile's ca_bundle, certifi)
        verify: bool | str | None = cfg.ca_bundle or (None if cfg.verify_ssl else False)
        if verify is None:
            verify = spec.verify if spec.verify is not True else None
        path_style = self.endpoint_url is not None and not spec.custom_addressing
        aio_cfg = client_config(
            spec,
            {
                "max_pool_connections": self.concurrency,
                "connect_timeout": cfg.connect_timeout,
                "read_timeout": cfg.read_timeout,
                "retries": {"max_attempts": cfg.max_attempts, "mode": "standard"},
                "s3": {"addressing_style": "path"} if path_style else None,
                "tcp_keepalive": True,
                "http_session_cls": HttpSession,
            },
            {"signature_version": "s3v4"},
        )
        timeouts = (cfg.connect_timeout, cfg.read_timeout)

        async def make() -> tuple[Any, Any, Transport]:
            cm, client = await create_client(
                spec, endpoint_url=self.endpoint_url, verify=verify, config=aio_cfg
            )
            if self._credentials is not None and self._credentials[3] is not None:
                # Expiring credentials: refreshed through the caller before they expire. Both
                # transports sign with the signer's credentials object.
                client._request_signer._credentials = handed_on(self._credentials, self._ask)
            client.meta.events.register_first("request-created.s3", botocore_sent)
            transport = Transport()
            await transport.start(client, cfg.transport == "http", timeouts, faults=self.faults)
            return cm, client, transport

        if self.faults is None and self._credentials is None:
            # The client of the last context on this loop with the same settings, with its
            # endpoint resolution and transport choices (on s3fast's own loop, the sync
            # API's, its keep-alive connections too: see session.ClientShelf).
            key = shared_key(
                spec,
                self.endpoint_url,
                verify,
                cfg.transport,
                timeouts,
                cfg.max_attempts,
                cfg.ca_bundle,
                cfg.verify_ssl,
                self.concurrency,
            )

            async def make_shared() -> tuple[Any, Any, Transport]:
                cm, client, transport = await make()
                client.meta.events.register_first("needs-retry.s3", _botocore_retry)
                return cm, client, transport

            self._shelf = shelf()
            self._lease = await self._shelf.lease(key, make_shared)
            if self._lease is not None:
                self._client, self.transport = self._lease.client, self._lease.transport
                return
        self._client_cm, self._client, self.transport = await make()
        self._client.meta.events.register_first("needs-retry.s3", self._botocore_retry)
        if self.faults is not None:
            self._client.meta.events.register_first("before-send.s3", self.faults.before_send)

    async def frozen_credentials(self) -> Handed | None:
        """The client's credentials as they are now ``(access key, secret, token, expiry)``,
        refreshed first when they are due, to hand on to worker processes and loop threads;
        None when there are none. Never logged."""
        return await current(await self.client())

    async def upload_cost(self, nbytes: int, bucket: str, operation: str) -> int:
        """Memory one upload body of ``nbytes`` takes while in flight, charged to
        :attr:`upload_budget`: the bytes themselves, and when botocore sends it over TLS their
        encrypted copies too (aiohttp encrypts a whole body into its write buffer at once; the
        lean path writes a slice at a time under flow control)."""
        client = await self.client()
        if not str(client.meta.endpoint_url).startswith("https:"):
            return nbytes
        lean = await self.lean(bucket, operation) is not None
        return nbytes if lean else nbytes * TLS_COPIES

    @property
    def region(self) -> str | None:
        """The region the started client signs for."""
        return self._client.meta.region_name if self._client is not None else self._region

    async def lean(self, bucket: str, operation: str) -> LeanHttp | None:
        """The lean path when it takes ``operation`` on ``bucket``, else None (botocore
        takes it). A failure of the lean path goes to ``self.transport.hand_over``."""
        await self.client()
        return await self.transport.lean(bucket, operation)

    async def transport_for(self, bucket: str) -> str:
        """``"lean"`` or ``"botocore"``: the path requests for ``bucket`` take (decided now if
        not yet)."""
        await self.client()
        await self.transport.lean(bucket, "GetObject")  # decides, if not yet
        return self.transport.path_for(bucket) or "botocore"

    def admitted(self, running: int) -> bool:
        """May a batch start one more object, with ``running`` in progress? Up to the
        limiter's target (the plan's start, as probes have moved it); one held back is demand
        the limiter counts as queued."""
        return self.limiter.admits(running)

    def slot(self, nbytes: int = 0, progress: list[int] | None = None) -> _Slot:
        """``async with engine.slot() as client``: one request in flight, through the engine's
        single (adaptive) concurrency limiter, which also learns from the outcome and from
        the bytes moved (``nbytes``, or what a ``progress`` counter advanced)."""
        return _Slot(self, nbytes, progress)

    def _botocore_retry(
        self,
        attempts: int = 1,
        response: Any = None,
        caught_exception: BaseException | None = None,
        request_dict: Any = None,
        **_: Any,
    ) -> bool | float | None:
        """botocore's ``needs-retry`` hook, called after every attempt of its requests before
        its own retry handler: counts throttling toward the limiter, vetoes a retry once
        ``max_attempts`` or ``max_retry_time`` is spent, retries an injected failure at once,
        else lets botocore decide."""
        context = request_dict.get("context", {}) if isinstance(request_dict, dict) else {}
        now = time.monotonic()
        started = context.setdefault("s3fast_started", now)  # set when first sent
        failed = caught_exception is not None
        if response is not None:
            http_response, parsed = response
            status = getattr(http_response, "status_code", 200)
            code = (parsed or {}).get("Error", {}).get("Code")
            failed = status >= 500 or status == 429 or code in THROTTLE_CODES
            if status in THROTTLE_STATUS or code in THROTTLE_CODES:
                self.limiter.throttle()
        if not failed:
            return None
        if attempts >= self.config.max_attempts or now - started >= self.config.max_retry_time:
            self.gave_up += 1
            return False
        self.retries += 1
        return 0.0 if is_injected(caught_exception) else None

    def stats(self) -> TransferStats:
        lim = self.limiter
        return TransferStats(
            concurrency_ceiling=lim.maximum,
            start_limit=self.config.max_concurrency,
            limit=int(lim.limit),
            lowest_limit=lim.lowest,
            highest_limit=lim.highest,
            probes=lim.probes,
            probes_reverted=lim.reverted,
            stepped_back=lim.stepped_back,
            in_flight=lim.in_flight,
            throttled=lim.throttled,
            limit_cuts=lim.cuts,
            retries=self.retries,
            gave_up=self.gave_up,
        )

    async def pace(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of the ``max_bandwidth`` budget; returns at once when unset."""
        if self._bandwidth is not None and nbytes > 0:
            delay = self._bandwidth.reserve(nbytes)
            if delay > 0:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._closed = True
        if self._lease is not None:  # the shared client stays for the next engine
            assert self._shelf is not None
            shared, self._lease, self._client, self.transport = (
                self._lease,
                None,
                None,
                Transport(),
            )
            await self._shelf.release(shared)
            return
        self.transport.close()
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's client, connections and limiter (bound to
        its event loop; never closed here, see :mod:`s3fast._fork`), keeping the plan and
        what was learned about the server. The next request starts a client of our own."""
        _fork.orphan(
            self._client_cm, self._client, self.transport, self.limiter, self._first_download
        )
        self._client = self._client_cm = None
        self._lease = self._shelf = None  # the parent's shared client: not released here
        self.transport = Transport()
        self._start_lock = None
        self._first_download = None
        self.limiter = AdaptiveLimiter(self.config.max_concurrency, self.concurrency)


def _botocore_retry(**kwargs: Any) -> bool | None:
    """A shared client's ``needs-retry`` hook: the hook of the engine making the request."""
    engine = CURRENT_ENGINE.get(None)
    return engine._botocore_retry(**kwargs) if engine is not None else None
