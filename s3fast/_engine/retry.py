"""Retries and backoff of the engine's own requests.

Every request is retried by exactly one layer. botocore retries the calls it makes;
:func:`backoff` paces the engine's own (the lean path, and bodies that broke off), with
exponential backoff and full jitter, bounded by ``max_attempts`` and by ``max_retry_time``
seconds since the request was first sent (:class:`RetryClock`: the time it queued for a
slot does not count; hooks on botocore's ``request-created`` and ``needs-retry`` events apply
the same bound to botocore's retries, see ``Engine._botocore_retry``). No one sleeps after the
last try.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import botocore.exceptions

from .faults import is_injected
from .http import ProtocolSurprise

if TYPE_CHECKING:
    from .engine import Engine

R = TypeVar("R")


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


BACKOFF_BASE = 0.1  # seconds: the first retry waits up to this long
BACKOFF_MAX = 5.0  # seconds: no wait is longer


def backoff_delay(attempt: int) -> float:
    """Full jitter: uniform in ``[0, min(BACKOFF_MAX, BACKOFF_BASE * 2**(attempt - 1))]``."""
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempt - 1, 32)))


def now() -> float:
    """The clock of retry deadlines (monotonic seconds)."""
    return time.monotonic()


def botocore_sent(request: Any = None, **_: Any) -> None:
    """botocore's ``request-created`` hook (each attempt, after its slot is taken): the
    request's retry clock starts at its first attempt (see ``Engine._botocore_retry``)."""
    context = getattr(request, "context", None)
    if isinstance(context, dict):
        context.setdefault("s3fast_started", now())


# The retried request's first send, once it happened: a list that a :class:`RetryClock` sets
# for its task and the first slot taken under it fills.
_FIRST_SENT: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "s3fast_first_sent", default=None
)


def note_sent() -> None:
    """A request took its slot: under a :class:`RetryClock` whose request was not sent yet,
    this is its first send."""
    sent = _FIRST_SENT.get()
    if sent is not None and not sent:
        sent.append(now())


class RetryClock:
    """``max_retry_time``'s clock for one request and its retries: ``with RetryClock() as
    clock:`` around the retry loop; :attr:`started` is when the request first took a slot
    (was sent), so waiting in the limiter's queue (long while the server throttles) or for
    bandwidth does not use up the time to retry."""

    def __enter__(self) -> RetryClock:
        self._sent: list[float] = []
        self._entered = now()  # the start if no slot is taken under the clock (one held)
        self._token = _FIRST_SENT.set(self._sent)
        return self

    def __exit__(self, *exc: object) -> None:
        _FIRST_SENT.reset(self._token)

    @property
    def started(self) -> float:
        return self._sent[0] if self._sent else self._entered


async def backoff(
    attempt: int,
    engine: Engine | None = None,
    started: float | None = None,
    failure: BaseException | None = None,
) -> bool:
    """After failed try number ``attempt`` (1-based) of a request first tried at ``started``
    (:func:`now`), failed with ``failure``: if another try may start, sleep (full jitter; not
    after an injected failure) and return True; if the attempts (``max_attempts``) or the time
    (``max_retry_time``) are spent, or the sleep would end past that time, return False at
    once: no sleep after the last try.

    Without ``engine``: just the sleep (the caller bounds the attempts)."""
    delay = 0.0 if is_injected(failure) else backoff_delay(attempt)
    if engine is not None:
        cfg = engine.config
        elapsed = now() - (started if started is not None else now())
        if attempt >= cfg.max_attempts or elapsed + delay >= cfg.max_retry_time:
            engine.gave_up += 1
            return False
        engine.retries += 1
    await asyncio.sleep(delay)
    return True


async def retrying(engine: Engine, call: Callable[[], Awaitable[R]]) -> R:
    """``await call()``, retried with :func:`backoff` on transient failures. For the lean
    transport only: botocore retries its own requests. A :class:`ProtocolSurprise` is not
    retried: the request belongs to botocore."""
    attempt = 0
    with RetryClock() as clock:
        while True:
            try:
                return await call()
            except ProtocolSurprise:
                raise
            except RESUMABLE as exc:
                engine.limiter.observe(exc)  # a retry inside a held slot (UploadPart)
                attempt += 1
                if not await backoff(attempt, engine, clock.started, exc):
                    raise
