"""Credentials handed on: from the calling process's client to the engines of its worker
processes and loop threads.

The caller resolves credentials through the standard chain; for temporary ones (an assumed
role, instance or container credentials, ``credential_process`` with an ``Expiration``) its
provider refreshes them before they expire (botocore: 15 minutes ahead, and no later than 10
minutes ahead). A worker's or loop thread's engine is handed the caller's current set with
its expiry and keeps it in its own refreshable credentials, on its own event loop; when that
set comes within the same refresh window, the engine asks the caller for its current set
(over the worker's socket, or onto the caller's event loop), so the caller's provider does
the refreshing for all of them. Credentials without an expiry are handed over as they are.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials

# access key, secret key, session token, expiry (ISO 8601; None: does not expire)
Handed = tuple[str, str, str | None, str | None]
Ask = Callable[[], Awaitable[Handed | None]]

METHOD = "s3fast-handed"
_NEVER = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)


async def current(client: Any) -> Handed | None:
    """``client``'s credentials as they are now, refreshed first if they are due (so what is
    handed on is never about to expire); None when there are none. Never logged."""
    creds = client._request_signer._credentials
    if creds is None:
        return None
    frozen = creds.get_frozen_credentials()
    if inspect.isawaitable(frozen):
        frozen = await frozen
    expiry = getattr(creds, "_expiry_time", None)  # refreshable credentials only
    return (
        frozen.access_key,
        frozen.secret_key,
        frozen.token,
        expiry.isoformat() if isinstance(expiry, datetime.datetime) else None,
    )


def _metadata(handed: Handed) -> dict[str, Any]:
    access, secret, token, expiry = handed
    return {
        "access_key": access,
        "secret_key": secret,
        "token": token,
        "expiry_time": expiry or _NEVER.isoformat(),
    }


def handed_on(handed: Handed, ask: Ask | None) -> AioCredentials:
    """Credentials for an engine on another loop or in another process: ``handed`` as they
    are, or, when they expire and ``ask`` can fetch the caller's current set, refreshed
    through ``ask`` in botocore's refresh window. Bound to the event loop that first uses
    them (each engine makes its own)."""
    access, secret, token, expiry = handed
    if expiry is None or ask is None:
        return AioCredentials(access, secret, token, method=METHOD)

    async def refresh() -> dict[str, Any]:
        fresh = await ask()
        if fresh is None:
            raise RuntimeError("the calling process has no AWS credentials any more")
        return _metadata(fresh)

    return AioRefreshableCredentials.create_from_metadata(_metadata(handed), refresh, METHOD)


__all__ = ["Ask", "Handed", "current", "handed_on"]
