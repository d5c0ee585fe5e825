"""Fresh credentials in worker processes and loop threads: a batch that outlives its
credentials keeps signing with current ones, refreshed through the calling process.

The credentials come from a ``credential_process`` (an AWS config file in a temp dir) that
hands out two real SeaweedFS identities in turn, each expiring 15 minutes and a few seconds
ahead, so that a few seconds in, every refresh check of botocore (15 minutes ahead) rotates
them. A TCP tap between s3fast and SeaweedFS records the access key of every request's
SigV4 ``Authorization`` header: requests of the batch signed with the second identity prove
that the workers took the rotated keys; the server accepting them, and every object coming
back byte-exact, that they were valid.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from s3fast import S3, TransferConfig
from s3fast.limits import KiB, MiB
from s3fast.testing import ADMIN, WRITER

from ._internals import loop_slots, worker_pids
from .conftest import Server

# botocore refreshes credentials 15 minutes before they expire (its advisory window), and
# must by 10 minutes before: credentials that expire this far ahead are due a few seconds
# after they are issued, and are still far from the mandatory window.
AHEAD = 15 * 60 + 3

_PROCESS = textwrap.dedent(
    """
    import datetime, json, os, sys
    counter, a_key, a_secret, b_key, b_secret, ahead = sys.argv[1:7]
    calls = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    with open(counter, "w") as f:
        f.write(str(calls))
    key, secret = (a_key, a_secret) if calls % 2 else (b_key, b_secret)
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(ahead))
    print(json.dumps({
        "Version": 1,
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))
    """
)

# A request line, then header lines up to a SigV4 Authorization header: method, access key.
_SIGNED = re.compile(
    rb"(GET|PUT|POST|HEAD|DELETE) /[^\r\n]* HTTP/1\.1\r\n(?:[^\r\n]*\r\n)*?"
    rb"[Aa]uthorization: AWS4-HMAC-SHA256 Credential=([A-Za-z0-9_.-]+)/"
)


class KeyTap:
    """A TCP relay to ``port`` on loopback that counts, per access key, the requests signed
    with it (by method), scanning what clients send for SigV4 ``Authorization`` headers."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.signed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def start(self) -> KeyTap:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def keys(self, method: str) -> dict[str, int]:
        return {key: n for (m, key), n in self.signed.items() if m == method}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers |= {writer, up_writer}

        async def upstream() -> None:
            tail = b""
            while data := await reader.read(1 << 16):
                scan = tail + data
                for found in _SIGNED.finditer(scan):
                    if found.end() > len(tail):  # not counted with the previous read
                        method, key = found.group(1).decode(), found.group(2).decode()
                        self.signed[(method, key)] += 1
                tail = scan[-2048:]
                up_writer.write(data)
                await up_writer.drain()
            up_writer.write_eof()

        async def downstream() -> None:
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def tap(seaweed: Server) -> Iterator[KeyTap]:
    relay = KeyTap(int(seaweed.endpoint_url.rsplit(":", 1)[1])).start()
    yield relay
    relay.stop()


@pytest.fixture
def rotating(
    seaweed_bucket: str, tap: KeyTap, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Credentials from a ``credential_process`` that alternates ADMIN and WRITER, each set
    due for refresh a few seconds after it is issued; requests go through ``tap``. Yields
    the file that counts the process's calls."""
    script = os.path.join(tmp_path, "creds.py")
    counter = os.path.join(tmp_path, "calls")
    with open(script, "w") as f:
        f.write(_PROCESS)
    identities = [ADMIN.access_key, ADMIN.secret_key, WRITER.access_key, WRITER.secret_key]
    command = " ".join([sys.executable, script, counter, *identities, str(AHEAD)])
    config = os.path.join(tmp_path, "config")
    with open(config, "w") as f:
        f.write(f"[default]\nregion = us-east-1\ncredential_process = {command}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", config)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", tap.url)
    yield counter


def _calls(counter: str) -> int:
    with open(counter) as f:
        return int(f.read())


# A batch slowed by max_bandwidth to last several seconds past the first refresh, one
# request at a time per worker (a download pays for its bandwidth after its body, so with
# more in flight every GET would be signed at the start): the whole batch runs in the
# workers (or loop threads), none of it in the calling process.
COUNT = 24
SIZE = 320 * KiB
RATE = 1 * MiB  # bytes/s for the client as a whole: about 7.5 s for the batch
SLOW = TransferConfig(processes=2, max_bandwidth=RATE, max_concurrency=2)


def test_worker_processes_sign_with_refreshed_credentials(
    rotating: str, tap: KeyTap, seaweed: Server, seaweed_bucket: str, tmp_path: os.PathLike[str]
) -> None:
    blobs = {f"f{i:02d}": os.urandom(SIZE) for i in range(COUNT)}
    paths = []
    for key, blob in blobs.items():
        path = os.path.join(tmp_path, key)
        with open(path, "wb") as f:
            f.write(blob)
        paths.append((key, path))
    with S3(s3root=f"s3://{seaweed_bucket}/up", config=SLOW) as s3:
        s3.list_paths()  # the calling process's credentials resolved (call 1)
        assert _calls(rotating) == 1
        tap.signed.clear()
        done = s3.put_files(paths)
        assert len(worker_pids(s3)) == 2  # the batch ran in worker processes
    assert [k for k, _ in done] == list(blobs)
    assert _calls(rotating) >= 2  # refreshed during the batch
    puts = tap.keys("PUT")
    assert sum(puts.values()) == COUNT, puts  # every upload went through the tap, once
    # Both identities within the one batch: the workers' keys changed while it ran (frozen
    # credentials, as before, sign a whole batch with one set).
    assert puts.get(ADMIN.access_key) and puts.get(WRITER.access_key), puts
    client = seaweed.client()
    try:
        for key, blob in blobs.items():
            got = client.get_object(Bucket=seaweed_bucket, Key=f"up/{key}")  # type: ignore[attr-defined]
            assert got["Body"].read() == blob, key
    finally:
        client.close()  # type: ignore[attr-defined]


def test_loop_threads_sign_with_refreshed_credentials(
    rotating: str, tap: KeyTap, seaweed: Server, seaweed_bucket: str
) -> None:
    blobs = seaweed.seed(seaweed_bucket, {f"down/g{i:02d}": os.urandom(SIZE) for i in range(COUNT)})
    with S3(s3root=f"s3://{seaweed_bucket}/down", config=SLOW) as s3:
        s3.list_paths()
        assert _calls(rotating) == 1
        tap.signed.clear()
        got = s3.get_many([f"g{i:02d}" for i in range(COUNT)], in_memory=True)
        assert loop_slots(s3) and not worker_pids(s3)  # in loop threads
        assert [o.blob for o in got] == list(blobs.values())
    assert _calls(rotating) >= 2
    gets = tap.keys("GET")
    assert sum(gets.values()) >= COUNT, gets
    assert gets.get(ADMIN.access_key) and gets.get(WRITER.access_key), gets
