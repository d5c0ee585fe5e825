"""Cheap contexts: what can be shared across ``S3``/``AsyncS3`` instances of a process is
(botocore's session and parsed models; the started client, per event loop; on s3fast's own
loop, its keep-alive connections too), and nothing of one client's leaks into another's
results. On a caller's loop nothing that outlives a context holds a socket.

Functional, not timed: counted through botocore's loader and the file-system calls made."""

from __future__ import annotations

import asyncio
import builtins
import gc
import json
import os
import pathlib
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import botocore
import pytest
import uvloop
from botocore.exceptions import UnknownServiceError
from botocore.loaders import JSONFileLoader, Loader, create_loader

from s3fast import S3, AsyncS3, MetaflowS3AccessDenied, TransferConfig, tuning
from s3fast._engine import session
from s3fast.testing import READER

from ._internals import botocore_client
from .conftest import Server


class Calls:
    def __init__(self) -> None:
        self.model_files: list[str] = []
        self.listings: list[str] = []
        self.opened: list[str] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Observes (and passes through) botocore's model-file loads (by botocore's file loader
    and s3fast's), directory listings and files opened by path."""
    seen = Calls()

    def counting_load(load_file: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: JSONFileLoader, file_path: str, *a: Any, **kw: Any) -> Any:
            seen.model_files.append(file_path)
            return load_file(self, file_path, *a, **kw)

        return wrapper

    def counting(fn: Callable[..., Any], into: list[str]) -> Callable[..., Any]:
        def wrapper(path: Any = ".", *a: Any, **kw: Any) -> Any:
            if not isinstance(path, int):  # (an fd: rmtree inside the private temp dir)
                into.append(str(path))
            return fn(path, *a, **kw)

        return wrapper

    for loader in (JSONFileLoader, session._FileLoader):
        monkeypatch.setattr(loader, "load_file", counting_load(loader.load_file))
    monkeypatch.setattr(os, "listdir", counting(os.listdir, seen.listings))
    monkeypatch.setattr(os, "scandir", counting(os.scandir, seen.listings))
    monkeypatch.setattr(builtins, "open", counting(builtins.open, seen.opened))
    yield seen


def test_the_loaders_are_observed(calls: Calls) -> None:
    """(The fixture above sees the loads of both file loaders.)"""
    session._FileLoader().load_file(os.path.join(os.path.dirname(botocore.__file__), "data/_retry"))
    JSONFileLoader().load_file(os.path.join(os.path.dirname(botocore.__file__), "data/_retry"))
    assert len(calls.model_files) == 2


def test_second_context_loads_nothing(
    seaweed: Server, seaweed_bucket: str, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    seaweed.seed(seaweed_bucket, {"k": b"x" * 1024})
    monkeypatch.setattr(tuning, "MACHINE_TTL", 3600.0)  # (however slow this machine is)
    monkeypatch.setattr(tuning, "_machine_seen", [])  # (not the probe of an earlier test)
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        assert s3.get("k").blob == b"x" * 1024
        first = botocore_client(s3)
    sessions = session.loads
    assert any(p.startswith(("/proc/", "/sys/")) for p in calls.opened)  # the machine's probe
    calls.model_files.clear()
    calls.listings.clear()
    calls.opened.clear()
    with S3(s3root=root) as s3:
        assert s3.get("k").blob == b"x" * 1024
        assert botocore_client(s3) is first  # the started client, borrowed again
    assert calls.model_files == []
    assert session.loads == sessions
    # No directory scanned and no file opened (the download's own private temp dir aside).
    assert [p for p in calls.listings if "s3fast." not in p] == []
    assert [p for p in calls.opened if "s3fast." not in p] == []


@pytest.mark.unit
def test_the_loader_loads_what_botocore_loads(tmp_path: pathlib.Path) -> None:
    """s3fast's data loader skips botocore's scan of every service directory, and nothing
    else: the same models, the same error for a service botocore does not know, and a model
    of a later API version in ``AWS_DATA_PATH`` is the one taken."""
    ours, botocore_own = session._Loader.for_data_path(None), Loader()
    for service, kind in [("s3", "service-2"), ("s3", "endpoint-rule-set-1"), ("sts", "service-2")]:
        assert ours.load_service_model(service, kind) == botocore_own.load_service_model(
            service, kind
        )
    with pytest.raises(UnknownServiceError):
        ours.load_service_model("no-such-service", "service-2")
    model = botocore_own.load_service_model("s3", "service-2")
    custom = tmp_path / "models" / "s3" / "2099-01-01"
    custom.mkdir(parents=True)
    (custom / "service-2.json").write_text(
        json.dumps({**model, "metadata": {**model["metadata"], "apiVersion": "2099-01-01"}})
    )
    data_path = f"{tmp_path / 'models'}{os.pathsep}{tmp_path / 'none'}"
    ours, botocore_own = session._Loader.for_data_path(data_path), create_loader(data_path)
    for loader in (ours, botocore_own):
        assert loader.load_service_model("s3", "service-2")["metadata"]["apiVersion"] == (
            "2099-01-01"
        )
    assert ours.search_paths == botocore_own.search_paths


_FIRST_CONTEXT = """
import json, os, sys
import botocore
from s3fast import S3
from s3fast._engine import endpoint
data = os.path.dirname(botocore.__file__)
listed = []
listdir = os.listdir
def counting(path="."):
    if str(path).startswith(data):
        listed.append(str(path))
    return listdir(path)
os.listdir = counting
with S3(s3root=sys.argv[1]) as s3:
    body = s3.get("k").blob
print(json.dumps({"listed": listed, "tls": len(endpoint._CONTEXTS), "ok": body == b"z" * 1024}))
"""


def test_a_process_first_context_scans_no_service_list(
    seaweed: Server, seaweed_bucket: str, tmp_path: pathlib.Path
) -> None:
    """A fresh process's first context reads the ``s3`` model without listing the directory
    of every service botocore knows (hundreds of ``listdir`` calls), and on plain HTTP makes
    no TLS context (loading a CA bundle)."""
    seaweed.seed(seaweed_bucket, {"k": b"z" * 1024})
    script = tmp_path / "first.py"
    script.write_text(_FIRST_CONTEXT)
    out = subprocess.run(
        [sys.executable, str(script), f"s3://{seaweed_bucket}"],
        capture_output=True,
        text=True,
        env={**os.environ, **seaweed.env()},
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["ok"]
    assert got["tls"] == 0
    assert len(got["listed"]) <= 4, got["listed"]  # s3's own directory, per type of data
    assert all("/s3" in p for p in got["listed"]), got["listed"]


def test_async_contexts_share_the_session(
    seaweed: Server, seaweed_bucket: str, calls: Calls
) -> None:
    seaweed.seed(seaweed_bucket, {"k": b"y" * 1024})

    async def one() -> None:
        async with AsyncS3(s3root=f"s3://{seaweed_bucket}") as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"y" * 1024

    asyncio.run(one())
    sessions = session.loads
    calls.model_files.clear()
    asyncio.run(one())
    asyncio.run(one())
    assert calls.model_files == []
    assert session.loads == sessions


def test_credentials_do_not_leak_between_contexts(
    seaweed: Server, seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context after the admin's, as the reader, is the reader: its own client."""
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root) as s3:
        s3.put("a", b"admin")
        admin = botocore_client(s3)
    for name, value in READER.env().items():
        monkeypatch.setenv(name, value)
    with S3(s3root=root) as s3:
        assert s3.get("a").blob == b"admin"
        assert botocore_client(s3) is not admin
        with pytest.raises(MetaflowS3AccessDenied):
            s3.put("b", b"reader")
    params = {
        "endpoint_url": seaweed.endpoint_url,
        "aws_access_key_id": READER.access_key,
        "aws_secret_access_key": READER.secret_key,
    }
    for name, value in seaweed.env().items():  # back to the admin's environment
        monkeypatch.setenv(name, value)
    with S3(s3root=root, client_params=params) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.put("c", b"reader")
    with S3(s3root=root) as s3:
        s3.put("d", b"admin again")
        assert botocore_client(s3) is admin


def test_failure_injection_gets_its_own_client(seaweed: Server, seaweed_bucket: str) -> None:
    """An engine with ``inject_failure_rate`` has its faults on a client of its own: the next
    context is not failed."""
    seaweed.seed(seaweed_bucket, {"k": b"z"})
    root = f"s3://{seaweed_bucket}"
    with S3(s3root=root, inject_failure_rate=50) as s3:
        assert s3.get("k").blob == b"z"
    with S3(s3root=root) as s3:
        for _ in range(20):
            assert s3.get("k").blob == b"z"
        assert s3.stats.retries == 0


def test_rewritten_credentials_file_is_read_again(
    seaweed: Server, seaweed_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Credentials rewritten in the shared credentials file (a login tool, a rotation) are
    what the next context signs with, as with a new metaflow.S3."""
    from s3fast.testing import ADMIN

    creds = tmp_path / "credentials"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    root = f"s3://{seaweed_bucket}"
    creds.write_text(
        f"[default]\naws_access_key_id = {READER.access_key}\n"
        f"aws_secret_access_key = {READER.secret_key}\n"
    )
    with S3(s3root=root) as s3, pytest.raises(MetaflowS3AccessDenied):
        s3.put("k", b"reader")
    creds.write_text(
        f"[default]\naws_access_key_id = {ADMIN.access_key}\n"
        f"aws_secret_access_key = {ADMIN.secret_key}\n# rotated\n"
    )
    with S3(s3root=root) as s3:
        s3.put("k", b"admin")


def connections_to(endpoint_url: str) -> set[str]:
    """This process's open TCP sockets connected to ``endpoint_url``'s port (inodes)."""
    port = urlsplit(endpoint_url).port
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in ours:
                    found.add(fields[9])
    return found


def test_async_contexts_on_one_loop_borrow_the_client(seaweed: Server, seaweed_bucket: str) -> None:
    """Contexts on a caller's loop borrow one started client, one context at a time, and leave
    no socket open: each context's connections (the lean path's, and botocore's) close when it
    ends."""
    seaweed.seed(seaweed_bucket, {"k": b"a" * 1024})
    root = f"s3://{seaweed_bucket}"
    botocore = TransferConfig(transport="botocore")

    seeding = connections_to(seaweed.endpoint_url)  # the seeding client's

    def open_connections(url: str) -> int:
        return len(connections_to(url) - seeding)

    async def main() -> None:
        async with AsyncS3(s3root=root) as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"a" * 1024
            first = botocore_client(s3)
            assert open_connections(seaweed.endpoint_url) >= 1
        assert open_connections(seaweed.endpoint_url) == 0
        async with AsyncS3(s3root=root) as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"a" * 1024
            assert botocore_client(s3) is first
        assert open_connections(seaweed.endpoint_url) == 0
        for _ in range(2):  # botocore's connections: closed, and opened again by the next
            async with AsyncS3(s3root=root, config=botocore) as s3:
                assert (await s3.get("k", in_memory=True)).blob == b"a" * 1024
                assert await s3.transport_for() == "botocore"
                assert open_connections(seaweed.endpoint_url) >= 1
            assert open_connections(seaweed.endpoint_url) == 0
        async with AsyncS3(s3root=root) as a:
            async with AsyncS3(s3root=root) as b:
                got = await asyncio.gather(a.get("k", in_memory=True), b.get("k", in_memory=True))
                assert [o.blob for o in got] == [b"a" * 1024] * 2
                # two live contexts do not share one botocore connection pool
                assert botocore_client(a) is first and botocore_client(b) is not first
            assert open_connections(seaweed.endpoint_url) >= 1  # a still has its own
            assert (await a.get("k", in_memory=True)).blob == b"a" * 1024
        assert open_connections(seaweed.endpoint_url) == 0
        async with AsyncS3(s3root=root) as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"a" * 1024
            assert botocore_client(s3) is first

    asyncio.run(main())


def test_async_contexts_with_other_credentials_do_not_borrow(
    seaweed: Server, seaweed_bucket: str
) -> None:
    root = f"s3://{seaweed_bucket}"
    reader = {
        "endpoint_url": seaweed.endpoint_url,
        "aws_access_key_id": READER.access_key,
        "aws_secret_access_key": READER.secret_key,
    }

    async def main() -> None:
        async with AsyncS3(s3root=root) as s3:
            await s3.put("a", b"admin")
            admin = botocore_client(s3)
        async with AsyncS3(s3root=root, client_params=reader) as s3:
            assert (await s3.get("a", in_memory=True)).blob == b"admin"
            assert botocore_client(s3) is not admin
            with pytest.raises(MetaflowS3AccessDenied):
                await s3.put("b", b"reader")
        async with AsyncS3(s3root=root) as s3:
            await s3.put("c", b"admin again")
            assert botocore_client(s3) is admin
            assert s3.stats.retries == 0

    asyncio.run(main())


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_loops_closed_by_hand_leave_nothing_behind(
    seaweed: Server, seaweed_bucket: str, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """A loop run and closed by hand (no ``shutdown_asyncgens``, nothing s3fast can hook):
    no socket stays open, and the loop and its shared client are freed."""
    seaweed.seed(seaweed_bucket, {"k": b"b" * 1024})

    async def one() -> None:
        async with AsyncS3(s3root=f"s3://{seaweed_bucket}") as s3:
            assert (await s3.get("k", in_memory=True)).blob == b"b" * 1024

    seeding = connections_to(seaweed.endpoint_url)  # the seeding client's
    loops = []
    for _ in range(4):
        loop = new_loop()
        loop.run_until_complete(one())
        loop.close()
        assert connections_to(seaweed.endpoint_url) <= seeding
        loops.append(weakref.ref(loop))
        del loop
    asyncio.run(one())  # the next loop's shelf drops the closed loops' shelves
    gc.collect()
    assert [ref for ref in loops if ref() is not None] == []


def test_a_task_left_running_past_its_context_pins_nothing(
    seaweed: Server, seaweed_bucket: str
) -> None:
    """A ``get_many`` still running when its ``async with`` ends fails with a clear error
    instead of starting the client again, and later contexts still close their sockets."""
    keys = {f"k{i}": b"c" * 1024 for i in range(40)}
    seaweed.seed(seaweed_bucket, keys)
    root = f"s3://{seaweed_bucket}"
    seeding = connections_to(seaweed.endpoint_url)

    async def main() -> None:
        async with AsyncS3(s3root=root) as s3:
            assert (await s3.get("k0", in_memory=True)).blob == keys["k0"]
            stray = asyncio.ensure_future(s3.get_many(list(keys), in_memory=True))
            await asyncio.sleep(0)  # started; the context ends before it does
        with pytest.raises(RuntimeError, match="closed"):
            await stray
        for _ in range(2):
            async with AsyncS3(s3root=root) as s3:
                assert (await s3.get("k1", in_memory=True)).blob == keys["k1"]
            assert connections_to(seaweed.endpoint_url) <= seeding

    asyncio.run(main())
