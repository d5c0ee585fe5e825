"""The engine's shared state: one aiobotocore client, one concurrency limiter, one config.

aiobotocore does credentials (the standard AWS chain), endpoint and region resolution, SigV4
signing, request retries for transient errors (``standard`` mode) and XML error parsing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

from ..config import TransferConfig
from .http import HttpGetter

T = TypeVar("T")
R = TypeVar("R")

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL")


def ssl_context(cfg: TransferConfig) -> ssl.SSLContext:
    """Certificates verified by default: against ``ca_bundle``, else ``AWS_CA_BUNDLE``, else
    the system store. Turning verification off is explicit (``verify_ssl=False``)."""
    ctx = ssl.create_default_context(cafile=cfg.ca_bundle or os.environ.get("AWS_CA_BUNDLE"))
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` >
    ``METAFLOW_S3_ENDPOINT_URL``, read now."""
    if endpoint_url:
        return endpoint_url
    for name in ENDPOINT_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


class Bandwidth:
    """A token bucket for ``max_bandwidth``: each transfer reserves its bytes and waits until
    the reservations before it have been paid for at ``rate`` bytes/s (first come, first
    served; no lock needed on one event loop). A burst is at most the transfer itself."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self._paid_until = 0.0  # monotonic time when all reserved bytes are paid for

    def reserve(self, nbytes: int) -> float:
        """Reserve ``nbytes``; returns how long to wait before sending them."""
        now = time.monotonic()
        start = max(now, self._paid_until)
        self._paid_until = start + nbytes / self.rate
        return start - now


class Engine:
    """Lives on one event loop. Made by AsyncS3; ``start()`` before use, ``close()`` after.

    ``config``'s fields left as ``None`` are filled from the machine's plan
    (:func:`s3fast.tuning.plan`), once, here; ``self.plan`` says why."""

    def __init__(
        self,
        config: TransferConfig,
        endpoint_url: str | None,
        *,
        credentials: tuple[str, str, str | None] | None = None,
        region: str | None = None,
    ) -> None:
        from .. import tuning  # lazily: ``python -m s3fast.tuning`` stays a clean entry point

        self.plan = tuning.plan(config)
        self.config = self.plan.config
        self.endpoint_url = resolve_endpoint(endpoint_url)
        # Given by a parent process (worker processes): used as is, no credential chain.
        self._credentials = credentials
        self._region = region
        self.concurrency = self.config.max_concurrency
        rate = self.config.max_bandwidth
        self._bandwidth = Bandwidth(rate) if rate is not None else None
        self._client: Any = None
        self._client_cm: Any = None
        self._limiter: asyncio.Semaphore | None = None
        self._start_lock: asyncio.Lock | None = None
        self._http: HttpGetter | None = None
        self.conditional_put = True  # cleared if the server rejects If-None-Match

    async def client(self) -> Any:
        if self._client is None:
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                if self._client is None:
                    await self._start()
        return self._client

    async def _start(self) -> None:
        session: AioSession = get_session()
        cfg = self.config
        aio_cfg = AioConfig(
            max_pool_connections=self.concurrency,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else None,
            signature_version="s3v4",
            tcp_keepalive=True,
        )
        region = self._region or session.get_config_variable("region") or "us-east-1"
        # None: botocore's own lookup (AWS_CA_BUNDLE, the profile's ca_bundle, certifi)
        verify: bool | str | None = cfg.ca_bundle or (None if cfg.verify_ssl else False)
        keys: dict[str, Any] = {}
        if self._credentials is not None:
            access, secret, token = self._credentials
            keys = {
                "aws_access_key_id": access,
                "aws_secret_access_key": secret,
                "aws_session_token": token,
            }
        cm = session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            config=aio_cfg,
            verify=verify,
            **keys,
        )
        self._client = await cm.__aenter__()
        self._client_cm = cm
        self._limiter = asyncio.Semaphore(self.concurrency)
        if cfg.transport == "http":
            self._http = HttpGetter(
                self._client, ssl_context(cfg), (cfg.connect_timeout, cfg.read_timeout)
            )

    async def frozen_credentials(self) -> tuple[str, str, str | None] | None:
        """The client's credentials as they are now ``(access key, secret, token)``, resolved
        through the chain once; None when there are none. Never logged."""
        client = await self.client()
        creds = client._request_signer._credentials
        if creds is None:
            return None
        frozen = creds.get_frozen_credentials()
        if inspect.isawaitable(frozen):
            frozen = await frozen
        return (frozen.access_key, frozen.secret_key, frozen.token)

    @property
    def region(self) -> str | None:
        """The region the started client signs for."""
        return self._client.meta.region_name if self._client is not None else self._region

    async def http(self) -> HttpGetter | None:
        """The lean GET transport, or None when GETs go through botocore."""
        await self.client()
        return self._http

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Any]:
        """One request in flight: the engine's single concurrency limiter."""
        client = await self.client()
        assert self._limiter is not None
        async with self._limiter:
            yield client

    async def throttle(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of the ``max_bandwidth`` budget; returns at once when unset."""
        if self._bandwidth is not None and nbytes > 0:
            delay = self._bandwidth.reserve(nbytes)
            if delay > 0:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            await cm.__aexit__(None, None, None)


# Failures that a (ranged) re-request can resume: broken bodies, 5xx answers, timeouts.
RESUMABLE: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


async def backoff(attempt: int) -> None:
    """Full jitter, capped at 2 s."""
    await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))


async def retrying(engine: Engine, call: Callable[[], Awaitable[R]]) -> R:
    """``await call()``, retried with backoff on transient failures, up to ``max_attempts``
    in all. For the lean transport only: botocore retries its own requests."""
    attempt = 0
    while True:
        try:
            return await call()
        except RESUMABLE:
            attempt += 1
            if attempt >= engine.config.max_attempts:
                raise
            await backoff(attempt)


async def bounded_map(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T] | Iterable[T], window: int
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``window`` running at once, results in
    input order. The first failure cancels the rest, waits for their cleanup, and is raised."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    feed = iter(enumerate(items))

    async def worker() -> None:
        for idx, item in feed:
            results[idx] = await fn(item)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(window, len(items)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results
