"""The Client API reading a run's artifacts with the Metaflow extension on, where a task read
one artifact at a time has its other small artifacts prefetched in one batch
(``metaflow_extensions/s3fast/plugins/s3fast_prefetch.py``).

Two runs of ``tests/flows/artifacts_flow.py`` on Metaflow's local runtime with
``--datastore=s3`` against SeaweedFS, one written with the extension on and one with it off,
each with :data:`MANY` distinct small artifacts in its start step; each is read back through
the Client API in a fresh process with the extension off and on, and what is read is compared.
"""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Server, temporary_bucket
from .flows.read_run import digest
from .test_metaflow_extension import ROOT, Done, Flows

MANY = 300
WIDTH = 8
TRIGGER_UNKNOWN = 4  # s3fast_prefetch's (importing it here would import metaflow)
PREFETCH_LOG = "s3fast_prefetch"

pytestmark = pytest.mark.timeout(1800)

# Reads ``pathspec``'s artifacts (every task's, or only the one named) with the prefetch
# module's log at DEBUG, and prints the digests and how many prefetches were logged.
READER = """
import json, logging, sys
from metaflow import Run, namespace
from tests.flows.read_run import digest

import s3fast

class Count(logging.Handler):
    n = 0
    messages = []
    def emit(self, record):
        if record.getMessage().startswith("prefetched"):
            Count.n += 1
            Count.messages.append(record.getMessage())

log = logging.getLogger("metaflow_extensions.s3fast.plugins.s3fast_prefetch")
log.setLevel(logging.DEBUG)
log.addHandler(Count())
# how many batches s3fast was asked for, and of how many keys (observed, not changed)
batches = []
get_many = s3fast.S3.get_many
def counted(self, keys, *args, **kwargs):
    batches.append(len(keys))
    return get_many(self, keys, *args, **kwargs)
s3fast.S3.get_many = counted
namespace(None)
pathspec, only = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
out = {}
for step in Run(pathspec):
    for task in step:
        for artifact in task:
            name = f"{step.id}/{task.id}/{artifact.id}"
            if only is None or artifact.id == only:
                out[name] = digest(artifact.data)
print(json.dumps({"artifacts": out, "prefetches": Count.n, "messages": Count.messages,
                  "batches": batches}))
"""


class ClientFlows(Flows):
    def env(self, enabled: bool | None, prefix: str, home: pathlib.Path | None = None) -> Any:
        # This checkout's extension only, also where another copy is installed.
        return {**super().env(enabled, prefix, home), "METAFLOW_EXTENSIONS_SEARCH_DIRS": str(ROOT)}

    def many(self, enabled: bool, prefix: str) -> Done:
        args = ["run", "--big-mib", "1", "--width", "2", "--small", "20", "--many", str(MANY)]
        args += ["--max-workers", "2"]
        done = self.flow(args, self.env(enabled, prefix), f"many-{prefix}")
        assert done.returncode == 0 and done.run_id, done.output
        return done

    @functools.cached_property
    def written_on(self) -> Done:
        return self.many(True, "on")

    @functools.cached_property
    def written_off(self) -> Done:
        return self.many(False, "off")

    @functools.cached_property
    def wide(self) -> Done:
        """A foreach of :data:`WIDTH` whose tasks each store a few artifacts of their own."""
        args = ["run", "--big-mib", "0", "--width", str(WIDTH), "--small", "20"]
        args += ["--max-workers", "4"]
        done = self.flow(args, self.env(True, "wide"), "wide")
        assert done.returncode == 0 and done.run_id, done.output
        return done

    def client_read(
        self, run_id: str, enabled: bool, prefix: str, only: str | None = None, cache: str = ""
    ) -> dict[str, Any]:
        cache = cache or str(self.tmp / f"client-cache-{uuid.uuid4().hex[:8]}")
        done = subprocess.run(
            [sys.executable, "-c", READER, f"ArtifactsFlow/{run_id}", *filter(None, [only])],
            env={**self.env(enabled, prefix), "METAFLOW_CLIENT_CACHE_PATH": cache},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result


@pytest.fixture(scope="module")
def flows(seaweed: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientFlows]:
    with temporary_bucket(seaweed) as name:
        yield ClientFlows(seaweed, name, tmp_path_factory.mktemp("mfclient"))


def check_many(read: dict[str, Any], run_id: str) -> None:
    """Every one of start's distinct small artifacts is what the flow stored."""
    start = {k.split("/")[-1]: v for k, v in read["artifacts"].items() if k.startswith("start/")}
    for i in range(MANY):
        assert start[f"m{i:05d}"] == digest((i, run_id)), i
    assert start["number"] == digest(42)
    assert start["mapping"] == digest({f"key-{i:04d}": i * i for i in range(20)})


@pytest.mark.parametrize("written", ["on", "off"])
def test_client_api_reads_the_same_with_the_extension_on(flows: ClientFlows, written: str) -> None:
    done = flows.written_on if written == "on" else flows.written_off
    assert done.run_id is not None
    off = flows.client_read(done.run_id, False, written)
    on = flows.client_read(done.run_id, True, written)
    check_many(off, done.run_id)
    assert on["artifacts"] == off["artifacts"]
    assert off["prefetches"] == 0
    # start's artifacts (and each task's own) came in a batch, not one request each
    assert on["prefetches"] >= 1


def test_one_artifact_of_a_task_is_read_alone(flows: ClientFlows) -> None:
    run_id = flows.written_on.run_id
    assert run_id is not None
    # m00007 of start and of each foreach task that carries it on (one content address)
    read = flows.client_read(run_id, True, "on", only="m00007")
    assert len(read["artifacts"]) == 3
    assert set(read["artifacts"].values()) == {digest((7, run_id))}
    assert read["prefetches"] == 0


def test_blob_cache_filled_with_prefetch_is_read_by_core(flows: ClientFlows) -> None:
    """What the extension put in Metaflow's client cache is what core reads from it."""
    run_id = flows.written_on.run_id
    assert run_id is not None
    cache = str(flows.tmp / f"shared-cache-{uuid.uuid4().hex[:8]}")
    on = flows.client_read(run_id, True, "on", cache=cache)
    assert on["prefetches"] >= 1
    assert list(pathlib.Path(cache).rglob("*.blob"))
    off = flows.client_read(run_id, False, "on", cache=cache)
    check_many(off, run_id)
    assert off["artifacts"] == on["artifacts"]


def test_one_artifact_of_each_task_of_a_step_comes_in_two_batches(flows: ClientFlows) -> None:
    """``for task in step: task["square"].data``: the first task's read is a request of its
    own; the second task's starts a step prefetch of ``square`` (and nothing else) for the
    step's other tasks: their data.json in one batch, their squares in another. The rest of
    the step's reads are served from it."""
    run_id = flows.wide.run_id
    assert run_id is not None
    off = flows.client_read(run_id, False, "wide", only="square")
    on = flows.client_read(run_id, True, "wide", only="square")
    assert len(off["artifacts"]) == WIDTH
    assert sorted(off["artifacts"].values()) == sorted(digest(i * i + 9) for i in range(WIDTH))
    assert on["artifacts"] == off["artifacts"]
    assert off["prefetches"] == 0
    others = WIDTH - 2
    assert on["messages"] == [
        f"prefetched {others} artifacts of {others} tasks of ArtifactsFlow/{run_id}/fan"
    ]
    assert on["batches"] == [1, others, others + 1]


def test_a_run_read_task_by_task_is_prefetched_across_each_step(flows: ClientFlows) -> None:
    run_id = flows.wide.run_id
    assert run_id is not None
    off = flows.client_read(run_id, False, "wide")
    on = flows.client_read(run_id, True, "wide")
    assert on["artifacts"] == off["artifacts"]
    fan = [m for m in on["messages"] if m.endswith(f"tasks of ArtifactsFlow/{run_id}/fan")]
    assert len(fan) == 1 and fan[0].split()[4:6] == [str(WIDTH - 2), "tasks"], on["messages"]
    # The foreach tasks after the first two cost no request of their own: the single-key
    # requests are the reads before a task's prefetch starts (TRIGGER_UNKNOWN - 1 at most) in
    # start, join, end and the first two foreach tasks. Without the step prefetch each later
    # foreach task adds its own.
    singles = on["batches"].count(1)
    assert singles <= 5 * (TRIGGER_UNKNOWN - 1), on["batches"]
