"""Where botocore would send a request, asked of botocore itself: the endpoint ruleset for one
bucket and operation (scheme, host, port, path, signing scheme, region and name), the proxy
its HTTP session would use for that URL, and the TLS trust its HTTP session uses.

Nothing here is re-derived by hand: the ruleset sees the client's own configuration (region,
FIPS, dual-stack, accelerate, addressing style, ``endpoint_url``, ``AWS_ENDPOINT_URL_S3``,
the bucket regions botocore learned from redirects), and the proxy and CA bundle come from
the client's HTTP session, which botocore built from ``Config(proxies=..., proxies_config=...)``
or the environment (``HTTPS_PROXY``, ``NO_PROXY``, ...), and from ``verify`` (explicit,
``AWS_CA_BUNDLE``, the profile's ``ca_bundle``, ``REQUESTS_CA_BUNDLE``, else certifi's bundle).
:mod:`.transport` decides from these whether the lean path can send a request.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["Endpoint", "Proxy", "open_tunnel", "proxy_for", "resolve", "tls_context"]

# The parameters each operation's endpoint is resolved with, besides the bucket (the key and
# prefix are context parameters of the S3 ruleset; a placeholder stands for any key).
_PARAMS: dict[str, dict[str, str]] = {
    "GetObject": {"Key": "k"},
    "HeadObject": {"Key": "k"},
    "PutObject": {"Key": "k"},
    "UploadPart": {"Key": "k", "UploadId": "u"},
    "ListObjectsV2": {"Prefix": ""},
}
_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as botocore's ruleset resolved it for one bucket and operation."""

    url: str  # the base URL: "https://bucket.s3.us-west-2.amazonaws.com", ".../bucket"
    auth: str  # the auth scheme: "sigv4", "sigv4a", "sigv4-s3express", ... ("" if none)
    signing_region: str
    signing_name: str
    headers: dict[str, Any] = field(default_factory=dict)  # headers the ruleset adds

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or _DEFAULT_PORT.get(parts.scheme, 0)

    @property
    def host_header(self) -> str:
        """The Host header botocore sends (the port only when it is not the default)."""
        host = self.host
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return host if self.port == _DEFAULT_PORT.get(self.scheme) else f"{host}:{self.port}"

    def path(self, key: str) -> str:
        """The request path for ``key`` (the bucket's own path when ``key`` is empty), encoded
        as botocore encodes it."""
        base = urlsplit(self.url).path.rstrip("/")
        if key:
            return f"{base}/{quote(key, safe='/~')}"
        return base or "/"


async def resolve(client: Any, bucket: str, operation: str) -> Endpoint:
    """The endpoint botocore's ruleset gives ``operation`` on ``bucket``, with the client's
    configuration. Raises what botocore raises for a bucket or configuration it refuses."""
    model = client._service_model.operation_model(operation)
    context = {
        "client_region": client.meta.region_name,
        "client_config": client.meta.config,
        "has_streaming_input": model.has_streaming_input,
        "auth_type": model.resolved_auth_type,
        "unsigned_payload": model.unsigned_payload,
        "auth_options": client._service_model.metadata.get("auth"),
    }
    params = await client._emit_api_params(
        api_params={"Bucket": bucket, **_PARAMS[operation]},
        operation_model=model,
        context=context,
    )
    url, headers, properties = await client._resolve_endpoint_ruleset(model, params, context)
    schemes = properties.get("authSchemes") or [{}]
    scheme = schemes[0]
    signing = context.get("signing", {})
    return Endpoint(
        url=url,
        auth=str(scheme.get("name", "")),
        signing_region=str(
            signing.get("region") or scheme.get("signingRegion") or client.meta.region_name
        ),
        signing_name=str(signing.get("signing_name") or scheme.get("signingName") or "s3"),
        headers=dict(headers or {}),
    )


@dataclass(frozen=True)
class Proxy:
    """A forward proxy, as botocore's HTTP session would use it for one URL."""

    host: str
    port: int
    authorization: str | None  # "Basic ..." when the proxy URL has a user and password

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _session(client: Any) -> Any:
    return client._endpoint.http_session


# proxies_config settings the lean path follows (none of the others: a proxy with its own CA
# bundle or client certificate, or forwarding instead of tunnelling HTTPS, is botocore's).
_PROXY_SETTINGS: frozenset[str] = frozenset()


def proxy_for(client: Any, url: str) -> Proxy | str | None:
    """The proxy botocore's HTTP session uses for ``url``: None when it connects directly,
    or a string saying why the lean path cannot use the proxy as botocore does."""
    config = getattr(_session(client), "_proxy_config", None)
    if config is None:
        return "the HTTP session has no proxy configuration the lean path can read"
    proxy_url = config.proxy_url_for(url)
    if not proxy_url:
        return None
    unknown = {k for k, v in (config.settings or {}).items() if v} - _PROXY_SETTINGS
    if unknown:
        return f"proxies_config {sorted(unknown)}"
    if os.environ.get("BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER", "").lower() == "true":
        return "BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER"
    parts = urlsplit(proxy_url)
    if parts.scheme != "http":
        return f"a {parts.scheme} proxy"
    try:
        port = parts.port or 80
    except ValueError:
        return "a proxy URL with a bad port"
    authorization = None
    if parts.username and parts.password:
        # as botocore's ProxyConfiguration (and aiohttp) build it
        credentials = f"{unquote(parts.username)}:{unquote(parts.password)}"
        authorization = "Basic " + base64.b64encode(credentials.encode("latin-1")).decode()
    return Proxy(parts.hostname or "", port, authorization)


_CONTEXTS: dict[tuple[bool | str, str | None, str | None], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _built_context(session: Any) -> ssl.SSLContext:
    """The session's endpoint context: one per trust setting (loading a CA bundle costs
    ~20 ms), shared by the engines of this process (contexts are safe to share)."""
    trust = (session._verify, session._cert_file, session._key_file)
    with _CONTEXTS_LOCK:
        found = _CONTEXTS.get(trust)
        if found is None:
            try:
                found, _ = session._build_ssl_contexts(None)
            except OSError as exc:  # a CA bundle or client certificate it cannot read
                files = ", ".join(str(f) for f in trust if isinstance(f, str)) or "the default"
                raise type(exc)(exc.errno, f"cannot load the TLS files ({files}): {exc}") from exc
            _CONTEXTS[trust] = found
        return found


async def tls_context(client: Any) -> ssl.SSLContext:
    """The TLS context botocore's HTTP session uses for the endpoint: the same CA bundle
    (or no verification) and the same client certificate (built off the event loop)."""
    session = _session(client)
    found = _CONTEXTS.get((session._verify, session._cert_file, session._key_file))
    return found if found is not None else await asyncio.to_thread(_built_context, session)


class _TunnelProtocol(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT (its status line and headers)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end >= 0 and not self.answered.done():
            self.answered.set_result(bytes(self.data[: end + 4]))
        elif len(self.data) > 64 * 1024 and not self.answered.done():
            self.answered.set_exception(ConnectionError("the proxy's answer is too large"))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(
                ConnectionError(f"the proxy closed the connection before answering CONNECT: {exc}")
            )


async def open_tunnel(proxy: Proxy, host: str, port: int) -> asyncio.Transport:
    """A connection through ``proxy`` to ``host:port`` (``CONNECT``, as aiohttp opens one for
    botocore), ready for TLS. Raises ConnectionError when the proxy refuses."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_TunnelProtocol, proxy.host, proxy.port)
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await protocol.answered
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            raise ConnectionError(f"proxy {proxy.address} refused CONNECT {target}: {status_line}")
        if len(protocol.data) > len(answer):
            raise ConnectionError(f"proxy {proxy.address} sent data before the TLS handshake")
        return transport  # type: ignore[return-value]
    except BaseException:
        transport.abort()
        raise
