"""A real Jupyter kernel (ipykernel, driven by nbclient) runs a notebook that uses the sync
``S3`` the way Metaflow's docs show it in notebooks: cells run inside the kernel's running event
loop, and ``S3`` works there, ``S3(run=Run(...))`` included. The kernel is shut down after, and
nothing it started is left running."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import uuid

import pytest

import s3fast

from .conftest import Server

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
ROOT = pathlib.Path(s3fast.__file__).resolve().parent.parent

CELLS = [
    """\
import asyncio, os
from s3fast import S3, AsyncS3
try:
    asyncio.get_running_loop()
    print("cells run in a running loop")
except RuntimeError:
    print("no running loop")""",
    """\
with S3(s3root=os.environ["NB_ROOT"]) as s3:
    s3.put("a.txt", "hello")
    s3.put_many([("b/1", b"one"), ("b/2", b"two")])
    one = s3.get("a.txt")
    print("get", open(one.path).read(), one.size)
    print("get_many", [o.blob for o in s3.get_many(["b/1", "b/2"])])
    print("in_memory", [o.blob for o in s3.get_many(["b/1", "b/2"], in_memory=True)])
    print("list_recursive", sorted(o.key for o in s3.list_recursive()))
    dirs = s3.tmpdirs
print("cleaned", [os.path.exists(d) for d in dirs])""",
    """\
from metaflow import Flow, namespace
namespace(None)
run = Flow("S3FastDemoFlow").latest_run
with S3(run=run) as s3:
    shards = s3.get_recursive(["shard"])
    print("run", run.id, len(shards), shards[0].blob[:9], s3.get("summary.json").text)""",
    """\
async with AsyncS3(s3root=os.environ["NB_ROOT"]) as aio:
    print("await", (await aio.get("a.txt", in_memory=True)).text)""",
]


def _marked(mark: str) -> list[int]:
    """Running processes whose environment holds ``mark`` (the kernel and what it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited, not yet reaped
        except OSError:
            continue
        found.append(int(entry))
    return found


def test_notebook_uses_sync_s3(
    seaweed: Server,
    seaweed_bucket: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = seaweed.flow_env(seaweed_bucket, tmp_path)
    flow = subprocess.run(
        [sys.executable, str(EXAMPLES / "metaflow_flow.py"), "--no-pylint", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert flow.returncode == 0, flow.stdout + flow.stderr

    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    mark = f"s3fast-notebook-{uuid.uuid4().hex}"
    kernel_env = {
        **env,
        "NB_ROOT": f"s3://{seaweed_bucket}/nb",
        "NB_MARK": mark,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute(env=kernel_env)
    finally:
        deadline = time.monotonic() + 30
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _marked(mark) == [], "the kernel or a process it started is still running"

    outputs = [cell.outputs for cell in nb.cells]
    stdout = [
        "".join(o.get("text", "") for o in out if o.get("name") == "stdout") for out in outputs
    ]
    others = [o for out in outputs for o in out if o.get("name") != "stdout"]
    assert others == []  # no stderr (no warning), no error, no rich output
    assert stdout[0] == "cells run in a running loop\n"
    assert stdout[1].splitlines() == [
        "get hello 5",
        "get_many [b'one', b'two']",
        "in_memory [b'one', b'two']",
        "list_recursive ['a.txt', 'b/1', 'b/2']",
        "cleaned [False]",
    ]
    run_line = stdout[2].split()
    assert run_line[0] == "run" and run_line[2:] == ["10", "b'payload", "0'", '{"shards":', "10}"]
    assert stdout[3] == "await hello\n"
    with s3fast.S3(s3root=f"s3://{seaweed_bucket}/data/S3FastDemoFlow/{run_line[1]}") as s3:
        assert len(s3.list_recursive(["shard"])) == 10  # the run the notebook read
