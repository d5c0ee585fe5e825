"""Which transport a request takes: the one place that decides.

The rule: the lean HTTP/1.1 path (:class:`.http.LeanHttp`: GetObject, HeadObject,
PutObject, UploadPart, ListObjectsV2) takes a request only when it can send exactly the
request botocore would send: the same scheme, host, port and path from botocore's endpoint
ruleset for that bucket and operation, signed with SigV4 for the same signing region and name,
through the same proxy, trusting the same certificates. Everything else goes to botocore:
other auth schemes (S3 Express session auth, SigV4a for multi-region access points, the
``s3-outposts`` and ``s3-object-lambda`` signing names), endpoints that add headers, proxies
set up in ways the lean path does not follow (an HTTPS proxy, ``proxies_config``), clients
that do not sign with SigV4, and every other operation.

The choice is made per bucket and operation at first use and logged once at debug level. A
protocol surprise on the lean path (a redirect or region error of any form, a bodiless 400 to
a HEAD, a status S3 does not answer with) sends the bucket to botocore, and the request that
met it is sent again through botocore, which follows redirects and learns the bucket's
region. After a redirect the bucket comes back to the lean path once botocore's endpoint
resolution names a different endpoint or signing region for it (botocore has learned where
the bucket is); a second surprise, or any other kind, leaves it with botocore for good.
:meth:`Transport.path_for` says which path a bucket takes (``AsyncS3.transport_for`` /
``S3.transport_for``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from .endpoint import Endpoint, Proxy, proxy_for, resolve, tls_context
from .http import LeanHttp, ProtocolSurprise

__all__ = ["BOTOCORE", "LEAN", "Surprise", "Transport", "surprise"]

logger = logging.getLogger(__name__)

LEAN = "lean"
BOTOCORE = "botocore"

# Answers that mean "this bucket lives elsewhere" (botocore follows them, learning the
# bucket's region): a redirect, or a request signed for, or sent to, the wrong region.
REDIRECT_CODES = frozenset(
    {
        "301",
        "302",
        "307",
        "308",
        "PermanentRedirect",
        "TemporaryRedirect",
        "Redirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    }
)
# Error statuses S3 answers with (5xx and 429 are retried as transient before this is asked).
S3_ERROR_STATUS = frozenset({400, 403, 404, 405, 409, 411, 412, 416, 501})
# The operations the lean path can send.
OPERATIONS = frozenset({"GetObject", "HeadObject", "PutObject", "UploadPart", "ListObjectsV2"})
RELEARN_INTERVAL = 1.0  # seconds between asking botocore whether it learned a bucket's region


@dataclass(frozen=True)
class Surprise:
    reason: str
    redirect: bool  # "the bucket is elsewhere": botocore finds out where


def surprise(exc: BaseException, operation: str) -> Surprise | None:
    """What is surprising about ``exc`` (a failure of the lean path), or None when it is an
    ordinary answer that botocore would give the caller too."""
    if isinstance(exc, ProtocolSurprise):  # an answer the lean path cannot read
        return Surprise(f"a protocol surprise ({exc})", False)
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in REDIRECT_CODES:
        return Surprise(f"a redirect ({code})", True)
    if 300 <= status < 400:
        return Surprise(f"a redirect (HTTP {status})", True)
    if status == 400 and operation == "HeadObject" and code in ("", "400", "BadRequest"):
        # S3's answer to a HEAD signed for the wrong region: no body, so no code
        return Surprise("a bodiless 400 to a HEAD (a region error)", True)
    if status and status not in S3_ERROR_STATUS:
        return Surprise(f"an unexpected status (HTTP {status})", False)
    return None


def cannot_send(endpoint: Endpoint, proxy: Proxy | str | None) -> str | None:
    """Why the lean path cannot send a request to ``endpoint`` exactly as botocore would
    (through ``proxy``, a reason when botocore's proxy setup is one it does not follow), or
    None when it can."""
    if endpoint.scheme not in ("http", "https"):
        return f"the endpoint scheme is {endpoint.scheme!r}"
    if endpoint.auth not in ("sigv4", ""):
        return f"auth scheme {endpoint.auth}"
    if endpoint.signing_name != "s3":
        return f"signing name {endpoint.signing_name}"
    if endpoint.headers:
        return f"the endpoint adds headers {sorted(endpoint.headers)}"
    if isinstance(proxy, str):
        return proxy
    return None


def _client_reason(client: Any) -> str | None:
    """Why no request of ``client`` can take the lean path, or None."""
    version = getattr(client.meta.config, "signature_version", None)
    if version not in (None, "s3v4", "v4"):
        return f"signature_version {version}"
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if not all(
        hasattr(session, name)
        for name in ("_proxy_config", "_verify", "_cert_file", "_key_file", "_build_ssl_contexts")
    ):
        return f"an HTTP session the lean path cannot read ({type(session).__name__})"
    return None


class Transport:
    """Decides, per bucket and operation, between the lean path and botocore (see the module
    docstring for the rule), and remembers the choice."""

    def __init__(self) -> None:
        self._client: Any = None
        self._http: LeanHttp | None = None
        self._started = False
        self._off: str | None = None  # why nothing takes the lean path
        self._chosen: dict[tuple[str, str], str] = {}  # (bucket, operation) -> LEAN/BOTOCORE
        self._handed_over: dict[str, str] = {}  # bucket -> the surprise that sent it away
        # bucket -> (the endpoint and signing region that met a redirect, when to look again)
        self._relearn: dict[str, tuple[tuple[str, str], float]] = {}
        self._relearned: set[str] = set()  # buckets back on the lean path after a redirect
        self._logged: set[tuple[str, str]] = set()

    async def start(
        self, client: Any, lean: bool, timeouts: tuple[float, float], faults: Any = None
    ) -> None:
        """Bind to the started botocore ``client``; ``lean``: the lean path may be used
        (``TransferConfig.transport == "http"``); ``faults``: a
        :class:`.faults.FaultInjector` the lean path asks before each request."""
        self._client = client
        self._started = True
        self._off = None if lean else 'TransferConfig(transport="botocore")'
        if self._off is None:
            self._off = _client_reason(client)
        if self._off is None:
            self._http = LeanHttp(client, lambda: tls_context(client), timeouts, faults)
        else:
            logger.debug("every request takes botocore: %s", self._off)

    async def lean(self, bucket: str, operation: str) -> LeanHttp | None:
        """The lean path when it takes ``operation`` on ``bucket``, else None (botocore)."""
        if self._http is None or bucket in self._handed_over:
            return None
        if bucket in self._relearn and not await self._relearnt(bucket):
            return None
        chosen = self._chosen.get((bucket, operation))
        if chosen is None:
            chosen = await self._choose(bucket, operation)
        return self._http if chosen == LEAN else None

    async def _choose(self, bucket: str, operation: str) -> str:
        assert self._http is not None
        reason: str | None
        if operation not in OPERATIONS:
            reason = f"{operation} is botocore's"
        else:
            try:
                endpoint = await resolve(self._client, bucket, operation)
                proxy = proxy_for(self._client, endpoint.url)
            except Exception as exc:  # botocore refuses the bucket: it will say why
                reason = f"botocore's endpoint resolution raised {type(exc).__name__}: {exc}"
            else:
                reason = cannot_send(endpoint, proxy)
                if reason is None:
                    assert not isinstance(proxy, str)
                    self._http.routes[(bucket, operation)] = (endpoint, proxy)
                    self._log(
                        bucket,
                        LEAN,
                        "%s %s, signed for %s/%s%s",
                        operation,
                        endpoint.url,
                        endpoint.signing_region,
                        endpoint.signing_name,
                        f", through proxy {proxy.address}" if proxy else "",
                    )
        chosen = LEAN if reason is None else BOTOCORE
        if reason is not None:
            self._log(bucket, BOTOCORE, "%s: %s", operation, reason)
        self._chosen[(bucket, operation)] = chosen
        return chosen

    async def _relearnt(self, bucket: str) -> bool:
        """Has botocore learned where ``bucket`` is, since a redirect sent it there? Then its
        operations are decided again."""
        failed, next_look = self._relearn[bucket]
        now = time.monotonic()
        if now < next_look:
            return False
        try:
            endpoint = await resolve(self._client, bucket, "HeadObject")
        except Exception:
            endpoint = None
        if endpoint is None or (endpoint.url, endpoint.signing_region) == failed:
            self._relearn[bucket] = (failed, now + RELEARN_INTERVAL)
            return False
        del self._relearn[bucket]
        self._relearned.add(bucket)
        for key in [key for key in self._chosen if key[0] == bucket]:
            del self._chosen[key]
        logger.debug(
            "s3://%s: botocore learned its endpoint (%s, %s): the lean path again",
            bucket,
            endpoint.url,
            endpoint.signing_region,
        )
        return True

    def hand_over(self, exc: BaseException, bucket: str, operation: str) -> bool:
        """Called with a failure of the lean path: True when it is a protocol surprise, and
        then ``bucket`` goes to botocore (the caller sends the request again through
        botocore); False when ``exc`` is an answer to pass on."""
        found = surprise(exc, operation)
        if found is None:
            return False
        if bucket in self._handed_over or bucket in self._relearn:
            return True
        route = self._http.routes.get((bucket, operation)) if self._http is not None else None
        if found.redirect and route is not None and bucket not in self._relearned:
            # botocore follows the redirect and learns the region; then the lean path again
            self._relearn[bucket] = ((route[0].url, route[0].signing_region), 0.0)
            logger.debug(
                "s3://%s: handed to botocore after %s to %s, until botocore learns where it is",
                bucket,
                found.reason,
                operation,
            )
        else:
            self._handed_over[bucket] = found.reason
            logger.debug(
                "s3://%s: handed to botocore for good after %s to %s",
                bucket,
                found.reason,
                operation,
            )
        return True

    def path_for(self, bucket: str, operation: str = "GetObject") -> str | None:
        """``"lean"`` or ``"botocore"``: the path ``operation`` on ``bucket`` takes now; None
        when not decided yet (before its first use)."""
        if self._off is not None:
            return BOTOCORE
        if bucket in self._handed_over or bucket in self._relearn:
            return BOTOCORE
        return self._chosen.get((bucket, operation))

    def _log(self, bucket: str, path: str, message: str, *args: Any) -> None:
        if (bucket, path) not in self._logged:
            self._logged.add((bucket, path))
            logger.debug("s3://%s takes %s: " + message, bucket, path, *args)

    async def close_connections(self) -> None:
        """Close the lean path's idle connections; it opens new ones when next used."""
        if self._http is not None:
            await self._http.aclose()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
