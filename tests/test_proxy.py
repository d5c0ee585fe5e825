"""Through a real forward proxy (proxy.py, on loopback), as botocore is told to use one:
``HTTP_PROXY`` / ``HTTPS_PROXY`` with ``NO_PROXY``. Plain-HTTP requests go to the proxy in
absolute form; HTTPS goes through ``CONNECT`` tunnels, with the server's certificate checked
against the same CA bundle botocore uses.

The endpoint's port is one where nothing listens: only the proxy knows where the server is
(it maps that port to the server's), so every request that succeeds went through the proxy,
lean path and botocore alike. The proxy's access log counts what it saw."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import proxy
import pytest
from proxy.http.proxy import HttpProxyBasePlugin

from s3fast import S3, AsyncS3, S3PutObject, TransferConfig
from s3fast.limits import KiB, MiB

from .conftest import Server, _bucket_on

pytestmark = pytest.mark.timeout(180)


class _Remap(HttpProxyBasePlugin):
    """Records each request (and CONNECT) the proxy gets from a client, one line
    ``METHOD host:port/path`` in ``<state>/seen``, and sends the upstream connection for a
    port named in ``<state>/ports`` (``dead live`` lines) to its live port (the same host and
    Host header: requests and TLS names are unchanged). The proxy's workers are processes
    forked at its start, so the state is kept in files."""

    state: pathlib.Path = pathlib.Path()

    def before_upstream_connection(self, request: Any) -> Any:
        ports = self.state / "ports"
        for line in ports.read_text().splitlines() if ports.exists() else []:
            dead, live = map(int, line.split())
            if request.port == dead:
                request.port = live
                self.remapped = (live, dead)  # (plugins are made per client connection)
        return request

    def handle_client_request(self, request: Any) -> Any:
        method = (request.method or b"").decode()
        host = (request.host or b"").decode()
        path = (request.path or b"").decode() if method != "CONNECT" else ""
        live, dead = getattr(self, "remapped", (None, None))
        port = dead if request.port == live else request.port
        with open(self.state / "seen", "a") as seen:
            seen.write(f"{method} {host}:{port}{path}\n")
        return request


class ForwardProxy:
    def __init__(self, state: pathlib.Path, auth: str | None = None) -> None:
        self.state = state
        args = ["--hostname", "127.0.0.1", "--port", "0", "--num-workers", "1"]
        args += ["--num-acceptors", "1", "--threaded"]
        if auth:
            args += ["--basic-auth", auth]
        self._proxy = proxy.Proxy(args, plugins=[_Remap])
        self.auth = auth

    def __enter__(self) -> ForwardProxy:
        _Remap.state = self.state  # before its workers are forked
        self._proxy.__enter__()
        return self

    def remap(self, dead: int, live: int) -> None:
        (self.state / "ports").write_text(f"{dead} {live}\n")

    def __exit__(self, *exc: object) -> None:
        self._proxy.__exit__(None, None, None)

    @property
    def url(self) -> str:
        user = f"{self.auth}@" if self.auth else ""
        return f"http://{user}127.0.0.1:{self._proxy.flags.port}"

    def seen(self) -> list[tuple[str, str]]:
        """(method, host:port/path) of each request and tunnel the proxy got so far."""
        seen = self.state / "seen"
        lines = seen.read_text().splitlines() if seen.exists() else []
        return [(m, t) for m, _, t in (line.partition(" ") for line in lines)]

    def seen_after(
        self, before: int, at_least: int = 1, wait: float = 10.0
    ) -> list[tuple[str, str]]:
        """What was seen past the first ``before`` entries, waiting up to ``wait`` seconds
        for ``at_least`` of them (they are written by the proxy's worker)."""
        deadline = time.monotonic() + wait
        while True:
            got = self.seen()[before:]
            if len(got) >= at_least or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A loopback port bound by no server (connections are refused), kept for the module."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    with ForwardProxy(tmp_path_factory.mktemp("proxy")) as p:
        yield p


@pytest.fixture(params=["seaweed", "seaweed_https"])
def target(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Server, str]]:
    server: Server = request.getfixturevalue(request.param)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for bucket in _bucket_on(server, monkeypatch):
        yield server, bucket


def _via(monkeypatch: pytest.MonkeyPatch, proxy_url: str, no_proxy: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", no_proxy)


def _unreachable(server: Server, port: int) -> str:
    """The server's endpoint URL with a port only the proxy can reach."""
    parts = urlsplit(server.endpoint_url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def _round_trip(s3: S3, tmp_path: pathlib.Path) -> int:
    """put, put_many, put_files (one multipart), get, get_many, list, info, delete; every
    byte checked. Returns the number of calls made."""
    small = {f"d/s{i}": os.urandom(10 * KiB + i) for i in range(5)}
    big = os.urandom(11 * MiB + 3)  # three parts
    big_file = tmp_path / "big.bin"
    big_file.write_bytes(big)
    s3.put("one", b"hello through the proxy")
    s3.put_many([S3PutObject(key, value) for key, value in small.items()])
    s3.put_files([S3PutObject("big", path=str(big_file))])
    assert s3.get("one", in_memory=True).blob == b"hello through the proxy"
    got = s3.get_many(list(small))
    assert [o.blob for o in got] == list(small.values())
    assert s3.get("big").blob == big
    root = s3.info("big").url.removesuffix("big")
    assert sorted(o.url for o in s3.list_recursive(["d/"])) == sorted(root + k for k in small)
    assert {o.url for o in s3.list_paths()} == {root + k for k in ("one", "d/", "big")}
    assert s3.info("big").size == len(big)
    assert s3.info("gone", return_missing=True).exists is False
    s3.delete("one")
    assert s3.info("one", return_missing=True).exists is False
    return 12


def _config() -> TransferConfig:
    return TransferConfig(multipart_threshold=8 * MiB, part_size=5 * MiB, max_concurrency=4)


def test_round_trip_through_the_proxy(
    target: tuple[Server, str],
    forward_proxy: ForwardProxy,
    dead_port: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    server, bucket = target
    forward_proxy.remap(dead_port, int(urlsplit(server.endpoint_url).port or 0))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", _unreachable(server, dead_port))
    _via(monkeypatch, forward_proxy.url, "example.invalid")  # not the server's host
    before = len(forward_proxy.seen())
    with S3(s3root=f"s3://{bucket}", config=_config()) as s3:
        assert s3.transport_for() == "lean"
        calls = _round_trip(s3, tmp_path)
        assert s3.transport_for() == "lean"  # nothing was handed to botocore on the way
    host = urlsplit(server.endpoint_url).hostname
    if server.ca_bundle:  # HTTPS: tunnels only, to the endpoint botocore names
        seen = forward_proxy.seen_after(before)
        assert seen and all(m == "CONNECT" for m, _ in seen), seen
        assert {t for _, t in seen} == {f"{host}:{dead_port}"}
    else:  # plain HTTP: every request, in absolute form
        seen = forward_proxy.seen_after(before, at_least=calls)
        assert len(seen) >= calls, seen
        assert all(t.startswith(f"{host}:{dead_port}/{bucket}") for _, t in seen), seen
        assert {"GET", "HEAD", "PUT", "POST", "DELETE"} <= {m for m, _ in seen}


def test_no_proxy_bypasses_the_proxy(
    target: tuple[Server, str],
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    server, bucket = target
    host = urlsplit(server.endpoint_url).hostname or ""
    _via(monkeypatch, forward_proxy.url, f"example.invalid,{host}")
    before = len(forward_proxy.seen())
    with S3(s3root=f"s3://{bucket}", config=_config()) as s3:
        _round_trip(s3, tmp_path)
        assert s3.transport_for() == "lean"
    assert forward_proxy.seen_after(before, wait=1.0) == []


def test_proxy_basic_auth(
    seaweed_https: Server,
    dead_port: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    """A proxy URL with a user and password: the CONNECT carries Proxy-Authorization (the
    proxy refuses tunnels without it)."""
    bucket_iter = _bucket_on(seaweed_https, monkeypatch)
    bucket = next(bucket_iter)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", _unreachable(seaweed_https, dead_port))
        state = tmp_path / "authed"
        state.mkdir()
        with ForwardProxy(state, auth="user:se/cret") as authed:
            authed.remap(dead_port, int(urlsplit(seaweed_https.endpoint_url).port or 0))
            # the URL's userinfo is percent-encoded; botocore decodes it
            _via(monkeypatch, authed.url.replace("se/cret", "se%2Fcret"), "example.invalid")
            with S3(s3root=f"s3://{bucket}", config=_config()) as s3:
                s3.put("k", b"v" * 1000)
                assert s3.get("k", in_memory=True).blob == b"v" * 1000
                assert s3.transport_for() == "lean"
            seen = authed.seen_after(0)
            assert seen and all(m == "CONNECT" for m, _ in seen)
            _via(monkeypatch, authed.url.replace("user:se/cret@", ""), "example.invalid")
            with S3(s3root=f"s3://{bucket}", config=TransferConfig(max_attempts=1)) as s3:
                with pytest.raises(Exception, match=f"s3://{bucket}/k"):
                    s3.get("k")
    finally:
        for _ in bucket_iter:
            pass


def test_a_proxy_set_between_contexts_is_used(
    target: tuple[Server, str], forward_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy set in the environment after a first context (a later notebook cell) is used by
    the next context, sync or async, as by a new metaflow.S3: contexts share a started client
    only while the proxy variables are the same."""
    _, bucket = target
    root = f"s3://{bucket}"
    with S3(s3root=root, config=_config()) as s3:
        s3.put("k", b"direct")

    async def one() -> bytes:
        async with AsyncS3(s3root=root, config=_config()) as s3:
            return (await s3.get("k", in_memory=True)).blob

    async def both() -> None:
        assert await one() == b"direct"  # on this loop, before the proxy is set
        _via(monkeypatch, forward_proxy.url, "example.invalid")
        before = len(forward_proxy.seen())
        assert await one() == b"direct"
        assert forward_proxy.seen_after(before, at_least=1), "the async context bypassed it"

    asyncio.run(both())
    before = len(forward_proxy.seen())
    with S3(s3root=root, config=_config()) as s3:
        assert s3.get("k", in_memory=True).blob == b"direct"
    assert forward_proxy.seen_after(before, at_least=1), "the sync context bypassed it"
