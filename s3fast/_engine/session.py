"""How the S3 client is made: metaflow.S3's keywords (``role``, ``session_vars``,
``client_params``, ``external_client``), the endpoint named by the environment
(:func:`resolve_endpoint`), and what the clients of one process share.

Shared within the process, so that a new ``S3`` costs no file-system scan and no network
round trip:

- one botocore data loader per data path: service models are parsed once, not per client;
- botocore sessions, keyed by what changes them: the session variables, the ``AWS_*``
  environment, ``HOME``, and the config and credentials files' modification times;
- assumed-role credentials, per role, session and event loop, refreshed by botocore before
  they expire (an asyncio lock guards each refresh, so they are not shared across loops);
- started clients, per event loop and settings (:class:`ClientShelf`): a new context borrows
  the client of an earlier one instead of making one.

botocore sessions are not thread-safe: clients are made from them one at a time (one lock
for the process, taken without blocking an event loop). Each client has its own
credentials, region, endpoint, certificate check and connection pool: nothing of one
client's leaks into another's requests. Engines that borrow one client keep their own
limiter, statistics and retry accounting (its hooks find the engine of each request).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import getpass
import gzip
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache

from .. import _bridge, _fork

# Options of a user's botocore Config that s3fast sets itself from its TransferConfig (the
# engine's pool, timeouts and retry budget); every other option of the user's Config wins.
OWNED_OPTIONS = frozenset(
    {
        "max_pool_connections",
        "connect_timeout",
        "read_timeout",
        "retries",
        "tcp_keepalive",
        "http_session_cls",
        "connector_args",
    }
)
# Options of an external client's Config that carry the user's intent (the rest are botocore's
# resolved defaults).
EXTERNAL_OPTIONS = ("proxies", "proxies_config", "s3", "signature_version", "client_cert")
# boto3 client arguments that metaflow.S3 passes through ``client_params``.
CLIENT_PARAMS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "verify",
        "config",
        "use_ssl",
        "api_version",
        "aws_account_id",
    }
)
MAX_SESSIONS = 16

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """What the S3 client is built from, beyond the endpoint and TransferConfig.

    ``keys``: static credentials ``(access key, secret, token)``; ``credentials``: a
    credentials object to sign with (an external client's, refreshed as it refreshes);
    ``role``: an IAM role to assume through STS; ``session_vars``: botocore session
    variables; ``config``: the user's botocore ``Config`` (merged under s3fast's own
    settings, see :data:`OWNED_OPTIONS`); ``inject_failure_rate``: see
    :mod:`s3fast._engine.faults`."""

    region: str | None = None
    verify: bool | str | None = None
    config: Any = None
    client_args: tuple[tuple[str, Any], ...] = ()  # use_ssl, api_version, aws_account_id
    keys: tuple[str, str, str | None] | None = None
    credentials: Any = None
    role: str | None = None
    session_vars: tuple[tuple[str, Any], ...] = ()
    inject_failure_rate: int = 0

    def portable(self, region: str | None) -> ClientSpec:
        """The part a worker (another process, or a loop thread given frozen credentials)
        rebuilds its client from."""
        return replace(self, region=region, keys=None, credentials=None, role=None)

    @property
    def custom_addressing(self) -> bool:
        s3 = getattr(self.config, "s3", None) or {}
        return bool(s3.get("addressing_style"))


def _frozen_vars(session_vars: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((session_vars or {}).items(), key=lambda kv: kv[0]))


def spec_from(
    *,
    role: str | None = None,
    session_vars: Mapping[str, Any] | None = None,
    client_params: Mapping[str, Any] | None = None,
    external_client: Any = None,
    inject_failure_rate: int = 0,
) -> tuple[ClientSpec, str | None]:
    """The client spec and the endpoint (None: not given) for metaflow.S3's keywords, as
    metaflow.S3 reads them: an ``external_client`` wins over ``role``, ``session_vars`` and
    ``client_params`` (its credentials, region, endpoint, certificate check and proxies are
    used)."""
    if external_client is not None:
        return _external_spec(external_client, inject_failure_rate)
    params = dict(client_params or {})
    unknown = sorted(set(params) - CLIENT_PARAMS)
    if unknown:
        raise TypeError(f"client_params: unsupported argument(s) {', '.join(unknown)}")
    config = params.get("config")
    if isinstance(config, Mapping):
        config = AioConfig(**config)  # as metaflow: a dict becomes a Config
    access, secret = params.get("aws_access_key_id"), params.get("aws_secret_access_key")
    if (access is None) != (secret is None):
        raise TypeError("client_params: give both aws_access_key_id and aws_secret_access_key")
    keys: tuple[str, str, str | None] | None = None
    if access is not None and secret is not None:
        keys = (str(access), str(secret), params.get("aws_session_token"))
    spec = ClientSpec(
        region=params.get("region_name"),
        verify=params.get("verify"),
        config=config,
        client_args=tuple(
            (k, params[k]) for k in ("use_ssl", "api_version", "aws_account_id") if k in params
        ),
        keys=keys,
        role=role,
        session_vars=_frozen_vars(session_vars),
        inject_failure_rate=int(inject_failure_rate or 0),
    )
    return spec, params.get("endpoint_url")


def _external_spec(client: Any, inject_failure_rate: int) -> tuple[ClientSpec, str | None]:
    """A boto3 (or aiobotocore) client's credentials, region, endpoint and settings."""
    meta = getattr(client, "meta", None)
    signer = getattr(client, "_request_signer", None)
    if meta is None or signer is None:
        raise TypeError(f"external_client must be a boto3 S3 client, not {type(client).__name__}")
    creds = getattr(signer, "_credentials", None)
    endpoint = None
    resolver = getattr(client, "_ruleset_resolver", None)
    builtins = getattr(resolver, "_builtins", None) or {}
    if builtins.get("SDK::Endpoint"):  # given to it, not derived from its region
        endpoint = meta.endpoint_url
    verify = getattr(
        getattr(getattr(client, "_endpoint", None), "http_session", None), "_verify", None
    )
    options = getattr(meta.config, "_user_provided_options", {}) or {}
    picked = {k: options[k] for k in EXTERNAL_OPTIONS if options.get(k) is not None}
    spec = ClientSpec(
        region=meta.region_name,
        verify=verify,
        config=AioConfig(**picked) if picked else None,
        credentials=_async_credentials(creds) if creds is not None else None,
        inject_failure_rate=int(inject_failure_rate or 0),
    )
    return spec, endpoint


class _SyncCredentials:
    """A boto3 client's (synchronous) credentials, as aiobotocore's signer awaits them. A
    refresh that is due runs in a thread, not on the event loop."""

    def __init__(self, creds: Any) -> None:
        self._creds = creds
        self.method = getattr(creds, "method", "external")

    async def get_frozen_credentials(self) -> Any:
        due = getattr(self._creds, "refresh_needed", None)
        if callable(due) and due():
            return await asyncio.to_thread(self._creds.get_frozen_credentials)
        return self._creds.get_frozen_credentials()


def _async_credentials(creds: Any) -> Any:
    if inspect.iscoroutinefunction(getattr(creds, "get_frozen_credentials", None)):
        return creds  # aiobotocore's already
    return _SyncCredentials(creds)


# --- what the clients of a process share -------------------------------------------------

_TABLE_LOCK = threading.Lock()  # the tables below
_CLIENT_LOCK = threading.Lock()  # botocore sessions are not thread-safe: one client at a time
_LOADERS: dict[str | None, Loader] = {}
_SESSIONS: OrderedDict[tuple[Any, ...], AioSession] = OrderedDict()
_ROLES: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], AioDeferredRefreshableCredentials]
] = weakref.WeakKeyDictionary()
loads = 0  # botocore sessions made (each loads what its loader has not)


# botocore's file forms, in its order
_JSON_OPENERS: tuple[tuple[str, Any], ...] = ((".json", open), (".json.gz", gzip.open))


class _FileLoader(JSONFileLoader):
    """botocore's JSON file loader, decoding into plain dicts instead of ``OrderedDict``s:
    the same order (dicts keep it), in half the time (S3's model, its endpoint rules and
    ``endpoints.json``: 10 ms of a process's first client)."""

    def load_file(self, file_path: str) -> Any:
        for ext, opener in _JSON_OPENERS:
            path = file_path + ext
            if os.path.isfile(path):
                with opener(path, "rb") as fp:
                    return json.loads(fp.read().decode("utf-8"))
        return None


class _Loader(Loader):
    """botocore's data loader, less its scan of every service's directory (about 900
    ``listdir`` calls, 15 ms of a process's first client) to find that ``s3`` exists: a
    service with a model of its own is loaded as botocore loads it; any other name goes to
    botocore's check, and its ``UnknownServiceError``. Files are read by :class:`_FileLoader`."""

    @classmethod
    def for_data_path(cls, data_path: str | None) -> _Loader:
        """As ``botocore.loaders.create_loader``: ``data_path`` is ``AWS_DATA_PATH``'s form."""
        if data_path is None:
            return cls(file_loader=_FileLoader())
        paths = data_path.split(os.pathsep)
        return cls(
            extra_search_paths=[os.path.expanduser(os.path.expandvars(p)) for p in paths],
            file_loader=_FileLoader(),
        )

    @instance_cache
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        try:
            versions = self.list_api_versions(service_name, type_name)  # its directory only
        except DataNotFoundError:
            return super().load_service_model(service_name, type_name, api_version)
        version = max(versions) if api_version is None else api_version
        model = self.load_data(os.path.join(service_name, version, type_name))
        self._extras_processor.process(model, self._find_extras(service_name, type_name, version))
        return model


def _stamp(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


PROXY_VARS = frozenset(
    name
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)


def _environment_key() -> tuple[Any, ...]:
    """What a session (and a client made from it) depends on besides its variables: the
    ``AWS_*`` environment, the proxy variables, ``HOME``, and the config and credentials files
    as they are now (edited, or rewritten by a login tool: a new session reads them again, as
    a new metaflow.S3 would)."""
    env = os.environ
    return (
        env.get("HOME"),
        # names first, values of the few that matter (decoding every value costs 3x more)
        tuple(sorted((k, env[k]) for k in env if k.startswith("AWS_") or k in PROXY_VARS)),
        _stamp(env.get("AWS_CONFIG_FILE") or "~/.aws/config"),
        _stamp(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"),
    )


def session_key(spec: ClientSpec) -> tuple[Any, ...]:
    return (repr(spec.session_vars), _environment_key())


def shared_session(spec: ClientSpec) -> AioSession:
    """The process's botocore session for ``spec``'s session variables and the environment as
    it is now; all of them share one data loader (per ``AWS_DATA_PATH``)."""
    global loads
    key = session_key(spec)
    with _TABLE_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            _SESSIONS.move_to_end(key)
            return session
        session = AioSession(session_vars=dict(spec.session_vars) or None)
        data_path = session.get_config_variable("data_path")
        loader = _LOADERS.get(data_path)
        if loader is None:
            loader = _LOADERS[data_path] = _Loader.for_data_path(data_path)
        session.register_component("data_loader", loader)
        _SESSIONS[key] = session
        loads += 1
        while len(_SESSIONS) > MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
        return session


@asynccontextmanager
async def _client_lock() -> AsyncIterator[None]:
    """The process's client-making lock, waited for without blocking the event loop (two
    engines on one loop must not block its thread on each other)."""
    # A thread lock has no awaitable form: poll it (held for milliseconds; a cancelled
    # waiter holds nothing, which a thread acquiring on its behalf could not promise).
    while not _CLIENT_LOCK.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    try:
        yield
    finally:
        _CLIENT_LOCK.release()


def _creator(session: AioSession) -> Any:
    """A ``client_creator`` for botocore's credential fetchers: clients (STS) made under the
    lock."""

    @asynccontextmanager
    async def create(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with _client_lock():
            cm = session.create_client(*args, **kwargs)
            client = await cm.__aenter__()
        try:
            yield client
        finally:
            await cm.__aexit__(None, None, None)

    return create


def role_session_name() -> str:
    """``s3fast-<user>-<unix time>``, as IAM allows it (``[\\w+=,.@-]``, at most 64)."""
    try:
        user = os.environ.get("USERNAME") or getpass.getuser()
    except Exception:
        user = "user"
    name = f"s3fast-{user}-{int(time.time())}"
    return re.sub(r"[^\w+=,.@-]", "_", name)[:64]


async def role_credentials(session: AioSession, spec: ClientSpec) -> Any:
    """Credentials of ``spec.role``, assumed with the session's own credentials and
    refreshed by botocore before they expire; shared by the clients of this event loop."""
    assert spec.role is not None
    loop = asyncio.get_running_loop()
    key = (spec.role, session_key(spec))
    with _TABLE_LOCK:
        per_loop = _ROLES.setdefault(loop, {})
        creds = per_loop.get(key)
    if creds is not None:
        return creds
    async with _client_lock():
        source = await session.get_credentials()
    if source is None:
        raise botocore.exceptions.NoCredentialsError()
    fetcher = AioAssumeRoleCredentialFetcher(
        client_creator=_creator(session),
        source_credentials=source,
        role_arn=spec.role,
        extra_args={"RoleSessionName": role_session_name()},
    )
    creds = AioDeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials
    )
    with _TABLE_LOCK:
        return per_loop.setdefault(key, creds)


def client_config(
    spec: ClientSpec, owned: dict[str, Any], defaults: dict[str, Any] | None = None
) -> AioConfig:
    """s3fast's options (``owned``) over the user's Config (its proxies, addressing style,
    signature version, ... win), over ``defaults``."""
    user = {**(defaults or {}), **(getattr(spec.config, "_user_provided_options", None) or {})}
    for name in OWNED_OPTIONS:
        user.pop(name, None)
    owned = dict(owned)
    s3 = {**(owned.pop("s3", None) or {}), **(user.pop("s3", None) or {})}  # the user's wins
    return AioConfig(**user, **owned, s3=s3 or None)


async def create_client(
    spec: ClientSpec, *, endpoint_url: str | None, verify: bool | str | None, config: AioConfig
) -> tuple[Any, Any]:
    """A started aiobotocore S3 client for ``spec``: ``(context manager, client)``; the
    caller closes it with ``await cm.__aexit__(None, None, None)``."""
    session = shared_session(spec)
    creds: Any = spec.credentials
    if creds is None and spec.role is not None and spec.keys is None:
        creds = await role_credentials(session, spec)
    keys: dict[str, Any] = {}
    if spec.keys is not None:
        access, secret, token = spec.keys
        keys = {
            "aws_access_key_id": access,
            "aws_secret_access_key": secret,
            "aws_session_token": token,
        }
    elif creds is not None:
        # Signed with ``creds`` (set below): placeholders spare botocore's credential chain.
        keys = {"aws_access_key_id": "-", "aws_secret_access_key": "-"}
    async with _client_lock():
        region = spec.region or session.get_config_variable("region") or "us-east-1"
        cm = session.create_client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=config,
            verify=verify,
            **keys,
            **dict(spec.client_args),
        )
        client = await cm.__aenter__()
    if creds is not None and spec.keys is None:
        client._request_signer._credentials = creds
    return cm, client


# --- started clients shared by the engines of one event loop ---------------------------------

CURRENT_ENGINE: contextvars.ContextVar[Any] = contextvars.ContextVar("s3fast_engine")
MAX_SHARED_CLIENTS = 8


class SharedClient:
    """A started client (and its :class:`~.transport.Transport`) that engines of the same
    settings on one event loop borrow in turn: made once, with its endpoint resolution and
    transport choices. botocore's hooks find the engine a request belongs to through
    :data:`CURRENT_ENGINE`."""

    def __init__(self, key: tuple[Any, ...], cm: Any, client: Any, transport: Any) -> None:
        self.key = key
        self.cm = cm
        self.client = client
        self.transport = transport
        self.users = 0
        self.resting: asyncio.Task[None] | None = None  # closing its connections

    async def rest(self) -> None:
        """Close its connections (the lean path's and botocore's), keeping the client: what
        stays shared holds no socket."""
        await self.transport.close_connections()
        http = self.client._endpoint.http_session
        await http.close()
        await http.__aenter__()  # usable again: botocore's sessions open on the next send

    async def close(self) -> None:
        self.transport.close()
        await self.cm.__aexit__(None, None, None)


class ClientShelf:
    """The shared clients of one event loop.

    On s3fast's own loop (the sync API's), which lives as long as the process, an idle
    client keeps its keep-alive connections for the next ``S3`` context; they are closed at
    exit (or by :func:`close_idle_clients`). On a caller's loop, whose end s3fast cannot
    see (a loop closed by hand runs no cleanup), a client whose last user leaves closes its
    connections first: what outlives a context there is the client without sockets, which
    the next context on that loop borrows instead of making one. The shelf of a loop found
    closed is dropped."""

    def __init__(self, own: bool) -> None:
        self.own = own
        self.clients: OrderedDict[tuple[Any, ...], SharedClient] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()

    async def lease(self, key: tuple[Any, ...], make: Any) -> SharedClient | None:
        """The shared client for ``key`` (made by ``await make()`` if there is none), with
        one more user; None on a caller's loop while it is in use (two live contexts would
        share one botocore connection pool: the caller makes a client of its own). Idle
        clients beyond :data:`MAX_SHARED_CLIENTS` are closed."""
        while True:
            shared = self.clients.get(key)
            if shared is not None and shared.resting is not None:
                await asyncio.wait([shared.resting])  # its connections closed, or it was dropped
                continue
            if shared is not None:
                break
            made = SharedClient(key, *(await make()))
            if key not in self.clients:
                shared = self.clients[key] = made
                break
            self._close_later(made)  # made meanwhile by another engine of the loop
        # From here to the return nothing is awaited: what was found is what is borrowed.
        if shared.users and not self.own:
            return None
        shared.users += 1
        self.clients.move_to_end(key)
        idle = [s for s in self.clients.values() if s.users == 0 and s.resting is None]
        while len(self.clients) > MAX_SHARED_CLIENTS and idle:
            old = idle.pop(0)
            del self.clients[old.key]
            self._close_later(old)
        return shared

    def _close_later(self, shared: SharedClient) -> None:
        """Close a client no engine uses, in a task of its own (no caller waits on it, and no
        cancellation of a caller's cuts it short)."""
        task = asyncio.ensure_future(shared.close())
        self._closing.add(task)
        task.add_done_callback(self._closed_one)

    def _closed_one(self, task: asyncio.Future[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("closing an idle shared client failed: %r", task.exception())

    async def release(self, shared: SharedClient) -> None:
        """One user less; on a caller's loop, the last one closes its connections (a failure
        to do so drops the client: it is not raised into the caller's ``async with``)."""
        shared.users -= 1
        if shared.users or self.own:
            return
        assert shared.resting is None
        shared.resting = asyncio.ensure_future(self._rest(shared))
        await asyncio.wait([shared.resting])

    async def _rest(self, shared: SharedClient) -> None:
        try:
            await shared.rest()
        except Exception as exc:
            logger.debug("closing a shared client's connections failed (%r): closing it", exc)
            if self.clients.get(shared.key) is shared:
                del self.clients[shared.key]
            with contextlib.suppress(Exception):
                await shared.close()
        finally:
            shared.resting = None

    async def close_idle(self) -> None:
        for key, shared in list(self.clients.items()):
            if shared.users == 0:
                del self.clients[key]
                await shared.close()


_SHELVES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ClientShelf] = (
    weakref.WeakKeyDictionary()
)
_OWN_LOOP: list[asyncio.AbstractEventLoop] = []  # s3fast's own loop, once it has a shelf


def shelf() -> ClientShelf:
    """The running loop's shelf (made on first use; shelves of closed loops are dropped)."""
    loop = asyncio.get_running_loop()
    with _TABLE_LOCK:
        found = _SHELVES.get(loop)
        if found is not None:
            return found
        for closed in [other for other in _SHELVES if other.is_closed()]:
            # Nothing on it holds a socket (see ClientShelf), unless the loop was stopped
            # in the middle of a context: those are left to the garbage collector.
            del _SHELVES[closed]
        own = _bridge.in_loop_thread()
        found = _SHELVES[loop] = ClientShelf(own)
        if own:
            _OWN_LOOP[:] = [loop]
            atexit.register(_close_at_exit)
        return found


def shared_key(spec: ClientSpec, *settings: Any) -> tuple[Any, ...]:
    """What a shared client is for: the session, the credentials, the region, the user's
    Config, and ``settings`` (endpoint, certificate check, the engine's pool and timeouts)."""
    options = getattr(spec.config, "_user_provided_options", None)
    return (
        session_key(spec),
        spec.keys,
        spec.role,
        # the external client's own credentials object (alive while the shared client is,
        # so its id is not reused), not the per-context wrapper around it
        id(getattr(spec.credentials, "_creds", spec.credentials))
        if spec.credentials is not None
        else None,
        spec.region,
        spec.client_args,
        repr(sorted(options.items())) if options else None,
        settings,
    )


def close_idle_clients(timeout: float = 10.0) -> None:
    """From any thread but s3fast's loop: close the idle shared clients of s3fast's own loop
    now (their next context starts with new connections)."""
    loop = _OWN_LOOP[0] if _OWN_LOOP else None
    own = _SHELVES.get(loop) if loop is not None else None
    if loop is None or own is None or loop.is_closed() or not loop.is_running():
        return
    if own.clients:
        asyncio.run_coroutine_threadsafe(own.close_idle(), loop).result(timeout)


def _close_at_exit() -> None:
    try:
        close_idle_clients(5.0)
    except Exception:  # the loop is going away with the process anyway
        pass


def _after_fork_in_child() -> None:
    """The parent's clients, sessions and locks are not this process's (another thread may
    have held a lock, or been half-way through making a client, at the fork): a child starts
    its own, and keeps the parent's alive and untouched (:func:`s3fast._fork.orphan`). The
    parsed models (the loaders) are kept."""
    global _CLIENT_LOCK, _TABLE_LOCK
    _fork.orphan(dict(_SHELVES), dict(_SESSIONS), dict(_ROLES))
    _SHELVES.clear()
    _OWN_LOOP.clear()
    _SESSIONS.clear()
    _ROLES.clear()
    _CLIENT_LOCK = threading.Lock()
    _TABLE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Before CPython 3.12.8 / 3.13.1 (python/cpython#118960) a TLS connection closed while the
# server still talks (a cancelled request) can outlive its event loop, half closed. aiohttp's
# remedy is its connector's ``enable_cleanup_closed``, which aborts those on close; later
# versions warn that it is not needed. AioConfig refuses the argument, so a session class
# hands it to the connector.
_NEEDS_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


class HttpSession(AIOHTTPSession):
    """aiobotocore's HTTP session, with ``enable_cleanup_closed`` where Python needs it."""

    def __init__(self, *args: Any, connector_args: dict[str, Any] | None = None, **kw: Any):
        if _NEEDS_CLEANUP_CLOSED:
            connector_args = {**(connector_args or {}), "enable_cleanup_closed": True}
        super().__init__(*args, connector_args=connector_args, **kw)


ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL")


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` >
    ``METAFLOW_S3_ENDPOINT_URL``, read now."""
    if endpoint_url:
        return endpoint_url
    for name in ENDPOINT_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None
