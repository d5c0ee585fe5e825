"""metaflow.S3's ``inject_failure_rate``: transient failures injected as requests go out, so
that users can test their own retry handling against the engine's real retry path.

Every request passes one of two doors, and both ask :meth:`FaultInjector.check`: the lean
transport's request builder (``LeanHttp._request``) and botocore's ``before-send`` event.
An injected failure looks like a connection that broke before an answer came: the lean
transport raises :class:`~s3fast._engine.http.TransientHTTPError`, botocore gets
:class:`InjectedFault` (an ``HTTPClientError``, which its retry handler retries). Both are
retried, counted and given up exactly as real failures are, except that no backoff sleep
precedes their retry (metaflow.S3 does not sleep after its faked failures either).

Semantics, as in metaflow.S3: a rate below 100 makes that percentage (at most 90) of tries
fail, and never the last try a request has (so the data still arrives, after retries); 100
or more fails every try, so requests run out of attempts and raise
:class:`~s3fast.errors.MetaflowS3TransferError` (a ``MetaflowS3Exception``).
"""

from __future__ import annotations

import random
from typing import Any

import botocore.exceptions

from .http import TransientHTTPError

MAX_RATE = 90  # percent, below 100: as metaflow.S3 caps it


class InjectedFault(botocore.exceptions.HTTPClientError):
    """An injected failure on botocore's path."""

    fmt = "Injected failure (inject_failure_rate={rate}%) for {url}"


class InjectedHTTPError(TransientHTTPError):
    """An injected failure on the lean path."""


def is_injected(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an injected failure: retried at once, without the backoff sleep
    (as metaflow.S3 does not sleep between retries of its faked failures), so a test at 90%
    costs retries, not minutes."""
    return isinstance(exc, (InjectedFault, InjectedHTTPError))


class FaultInjector:
    """Fails ``rate`` percent of tries (see the module's docstring); ``max_attempts`` is the
    tries a request has. ``injected`` counts the failures injected."""

    def __init__(self, rate: int, max_attempts: int) -> None:
        self.rate = rate
        self.max_attempts = max_attempts
        self.injected = 0
        # Tries failed in a row per request (method, URL, range): the last try goes through.
        self._streak: dict[tuple[str, ...], int] = {}

    def _fails(self, what: tuple[str, ...]) -> bool:
        if self.rate >= 100:
            self.injected += 1
            return True
        streak = self._streak.pop(what, 0)
        if streak + 1 >= self.max_attempts or random.randrange(100) >= min(MAX_RATE, self.rate):
            return False
        self._streak[what] = streak + 1
        self.injected += 1
        return True

    def check(self, method: str, url: str, detail: str = "") -> None:
        """A request of the lean path goes out: maybe raise a transient failure."""
        if self._fails((method, url, detail)):
            raise InjectedHTTPError(
                f"injected failure (inject_failure_rate={self.rate}%) for {method} {url}",
                500,
                "InternalError",
            )

    def before_send(self, request: Any = None, **_: Any) -> None:
        """botocore's ``before-send`` hook: maybe raise a transient failure."""
        if request is None:
            return
        headers = getattr(request, "headers", {}) or {}
        detail = str(headers.get("Range", "") or "")
        if self._fails((str(request.method), str(request.url), detail)):
            raise InjectedFault(rate=self.rate, url=request.url)
