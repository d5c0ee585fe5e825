"""The Metaflow extension (``metaflow_extensions/s3fast``) on Metaflow's local runtime with
``--datastore=s3`` against SeaweedFS.

Four flow runs, made once for the module and shared by the tests that need them:

- ``on``: the extension on (``METAFLOW_S3FAST_ENABLED=1``), a 200 MiB artifact, stored under
  ``s3://<bucket>/on``;
- ``off``: the extension off, a small big artifact, under ``s3://<bucket>/off``;
- ``resumed_off``: ``resume join`` of ``on`` with the extension off;
- ``resumed_by_config``: ``resume join`` of ``off`` with the extension on through
  ``$METAFLOW_HOME/config.json`` only.

Each run is read back through the Client API with the extension on and off
(``tests/flows/read_run.py``), and the objects the two modes wrote are compared byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import Server, temporary_bucket
from .flows.read_run import digest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLOW = ROOT / "tests" / "flows" / "artifacts_flow.py"
READER = ROOT / "tests" / "flows" / "read_run.py"

EXTENSION = "metaflow_extensions.s3fast.plugins.s3fast_storage"
CORE_DATASTORE = "metaflow.plugins.datastores.s3_storage"
CORE_S3 = "metaflow.plugins.datatools.s3.s3"
ANNOUNCEMENT = "Metaflow's S3 datastore, IncludeFile and metaflow.S3 use s3fast"
ON_CLASSES = {"datastore": EXTENSION, "includefile": EXTENSION, "metaflow.S3": "s3fast.sync"}
OFF_CLASSES = {"datastore": CORE_DATASTORE, "includefile": CORE_S3, "metaflow.S3": CORE_S3}

BIG_MIB = {"on": 200, "off": 8}
WIDTH = 8
SMALL = 1000
MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(2400)


def big_sha(mib: int) -> str:
    """The digest of the flow's large artifact (``artifacts_flow.big_bytes``)."""
    return hashlib.sha256(random.Random(1).randbytes(mib * MiB)).hexdigest()


@dataclass
class Done:
    returncode: int
    output: str
    run_id: str | None


class Flows:
    """Runs the test flow and the Client API reader in subprocesses against one bucket."""

    def __init__(self, server: Server, bucket: str, tmp: pathlib.Path) -> None:
        self.server = server
        self.bucket = bucket
        self.tmp = tmp
        self.sysroot = tmp / "metadata"  # the local metadata provider's root, for all runs
        self.home = tmp / "home"  # an empty METAFLOW_HOME: no user config is read
        self.home.mkdir()
        self.local_file = tmp / "local.bin"
        self.local_file.write_bytes(random.Random(2).randbytes(300_000))
        self.s3_blob = random.Random(3).randbytes(1_500_000)
        server.seed(bucket, {"inputs/blob.bin": self.s3_blob})
        empty = tmp / "empty-aws-config"
        empty.write_text("")
        self.aws_config = str(empty)

    def env(
        self, enabled: bool | None, prefix: str, home: pathlib.Path | None = None
    ) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "METAFLOW_", "S3FAST_"))
        }
        env.update(self.server.env())
        env.update(
            {
                "AWS_CONFIG_FILE": self.aws_config,
                "AWS_SHARED_CREDENTIALS_FILE": self.aws_config,
                "AWS_EC2_METADATA_DISABLED": "true",
                "METAFLOW_HOME": str(home or self.home),
                "METAFLOW_DEFAULT_METADATA": "local",
                "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(self.sysroot),
                "METAFLOW_DEFAULT_DATASTORE": "s3",
                "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{self.bucket}/{prefix}",
                "METAFLOW_DATATOOLS_S3ROOT": f"s3://{self.bucket}/{prefix}/data",
                "USERNAME": "s3fast-tests",
                # The checkout first: its metaflow_extensions and s3fast.
                "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
            }
        )
        if enabled is not None:
            env["METAFLOW_S3FAST_ENABLED"] = "1" if enabled else "0"
        return env

    def flow(self, args: list[str], env: dict[str, str], name: str) -> Done:
        workdir = self.tmp / name
        workdir.mkdir()
        done = subprocess.run(
            [sys.executable, str(FLOW), "--no-pylint", "--datastore=s3", *args],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        output = done.stdout + done.stderr
        found = re.search(r"Workflow starting \(run-id (\d+)\)", output)
        # The datastore's temp dirs (under ARTIFACT_LOCALROOT, the task's working
        # directory) are gone once every task has exited.
        assert not list(workdir.glob("s3fast.*")), sorted(os.listdir(workdir))
        return Done(done.returncode, output, found.group(1) if found else None)

    def run(self, enabled: bool, prefix: str, big_mib: int) -> Done:
        descriptor = {
            "type": "external",
            "url": f"s3://{self.bucket}/inputs/blob.bin",
            "is_text": False,
        }
        args = ["run", "--big-mib", str(big_mib), "--width", str(WIDTH), "--small", str(SMALL)]
        args += ["--local-file", str(self.local_file), "--s3-file", json.dumps(descriptor)]
        args += ["--max-workers", "4"]
        return self.flow(args, self.env(enabled, prefix), f"run-{prefix}")

    def resume(self, origin: str, env: dict[str, str], name: str) -> Done:
        args = ["resume", "join", "--origin-run-id", origin, "--max-workers", "4"]
        return self.flow(args, env, name)

    def read(self, run_id: str, enabled: bool, prefix: str) -> dict[str, Any]:
        # A cache of its own: the Client API keeps the blobs it read on disk
        # (/tmp/metaflow_client by default) and would serve a second read from there.
        cache = self.tmp / f"client-cache-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(
            [sys.executable, str(READER), f"ArtifactsFlow/{run_id}"],
            env={**self.env(enabled, prefix), "METAFLOW_CLIENT_CACHE_PATH": str(cache)},
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        assert result["successful"]
        assert result["datastore"] == (EXTENSION if enabled else CORE_DATASTORE)
        assert (ANNOUNCEMENT in done.stderr) == enabled, done.stderr
        return result

    # --- the module's runs, made on first use -------------------------------------------

    @functools.cached_property
    def on(self) -> Done:
        return self.run(True, "on", BIG_MIB["on"])

    @functools.cached_property
    def off(self) -> Done:
        return self.run(False, "off", BIG_MIB["off"])

    @functools.cached_property
    def resumed_off(self) -> Done:
        assert self.on.run_id is not None
        return self.resume(self.on.run_id, self.env(False, "on"), "resumed-off")

    @functools.cached_property
    def resumed_by_config(self) -> Done:
        assert self.off.run_id is not None
        home = self.tmp / "home-with-config"
        home.mkdir()
        (home / "config.json").write_text(json.dumps({"METAFLOW_S3FAST_ENABLED": True}))
        env = self.env(None, "off", home=home)
        assert not any(k.startswith("METAFLOW_S3FAST") for k in env)
        return self.resume(self.off.run_id, env, "resumed-by-config")

    @functools.cache  # noqa: B019 - one Flows per module
    def read_cached(self, run_id: str, enabled: bool, prefix: str) -> dict[str, Any]:
        return self.read(run_id, enabled, prefix)

    def keys(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every object under ``prefix``: key -> {"body", "metadata"}, read with boto3."""
        client: Any = self.server.client()
        try:
            found = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix + "/"
            ):
                for o in page.get("Contents", []):
                    found[o["Key"][len(prefix) + 1 :]] = o["Key"]
            out = {}
            for rel, key in found.items():
                got = client.get_object(Bucket=self.bucket, Key=key)
                out[rel] = {"body": got["Body"].read(), "metadata": got["Metadata"]}
            return out
        finally:
            client.close()


@pytest.fixture(scope="module")
def flows(seaweed: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flows]:
    with temporary_bucket(seaweed) as name:
        yield Flows(seaweed, name, tmp_path_factory.mktemp("mfext"))


def check_artifacts(read: dict[str, Any], flows: Flows, big_mib: int) -> None:
    """What the Client API read is what the flow stored."""
    artifacts, join = read["artifacts"], read["join"]
    assert artifacts["start/-/big"] == "bytes:" + big_sha(big_mib)
    assert artifacts["start/-/mapping"] == digest({f"key-{i:04d}": i * i for i in range(SMALL)})
    assert artifacts["start/-/number"] == digest(42)
    assert artifacts["start/-/text"] == digest("small text artifact")
    assert artifacts["start/-/values"] == digest([1.5, None, ("a", "b")])
    assert artifacts["start/-/local_file"] == digest(flows.local_file.read_bytes())
    assert artifacts["start/-/s3_file"] == digest(flows.s3_blob)
    for i in range(WIDTH):  # every foreach task's own artifact and the ones it carries on
        assert artifacts[f"fan/{i}/square"] == digest(i * i + 9)
        assert artifacts[f"fan/{i}/big"] == artifacts["start/-/big"]
    assert join["squares"] == sorted(i * i + 9 for i in range(WIDTH))
    assert join["big_sha"] == big_sha(big_mib)
    assert join["mapping_sum"] == sum(i * i for i in range(SMALL))
    assert join["local_sha"] == hashlib.sha256(flows.local_file.read_bytes()).hexdigest()
    assert join["s3_sha"] == hashlib.sha256(flows.s3_blob).hexdigest()


def announced_by(output: str) -> set[str]:
    """The steps whose task logs carry the extension's line."""
    return set(
        re.findall(r"/(\w+)/\d+ \(pid \d+\)\] s3fast [^:]+: " + re.escape(ANNOUNCEMENT), output)
    )


def test_flow_with_extension_on(flows: Flows) -> None:
    done = flows.on
    assert done.returncode == 0, done.output
    assert announced_by(done.output) == {"start", "fan", "join", "end"}
    assert re.search(r"Metaflow \S+\+s3fast\([^)]+\) executing ArtifactsFlow", done.output)
    read = flows.read_cached(done.run_id, True, "on")
    check_artifacts(read, flows, BIG_MIB["on"])
    join = read["join"]
    assert join["classes"] == {"start": ON_CLASSES, "fan": ON_CLASSES, "join": ON_CLASSES}
    assert join["fan_classes"] == [ON_CLASSES] * WIDTH


def test_run_written_on_read_with_extension_off(flows: Flows) -> None:
    assert flows.on.returncode == 0, flows.on.output
    on = flows.read_cached(flows.on.run_id, True, "on")
    off = flows.read_cached(flows.on.run_id, False, "on")
    assert off["artifacts"] == on["artifacts"]
    assert off["join"] == on["join"]


def test_run_written_off_read_with_extension_on(flows: Flows) -> None:
    done = flows.off
    assert done.returncode == 0, done.output
    assert announced_by(done.output) == set()
    assert "executing ArtifactsFlow" in done.output and "+s3fast(" not in done.output
    off = flows.read_cached(done.run_id, False, "off")
    on = flows.read_cached(done.run_id, True, "off")
    check_artifacts(on, flows, BIG_MIB["off"])
    assert on["artifacts"] == off["artifacts"]
    assert on["join"]["classes"] == {"start": OFF_CLASSES, "fan": OFF_CLASSES, "join": OFF_CLASSES}


def test_same_bytes_and_layout_as_core(flows: Flows) -> None:
    """The objects the two modes wrote: the same content-addressed blobs (bytes and user
    metadata) for equal artifacts, and the same files, with the same metadata, per task."""
    assert flows.on.returncode == 0 and flows.off.returncode == 0
    on, off = flows.keys("on"), flows.keys("off")
    cas_on = {k for k in on if k.startswith("ArtifactsFlow/data/")}
    cas_off = {k for k in off if k.startswith("ArtifactsFlow/data/")}
    shared = cas_on & cas_off
    # number, text, values, mapping, items, width, small, the flow's name, ...
    assert len(shared) >= 8, (sorted(cas_on), sorted(cas_off))
    for key in shared:
        # gzip'ed by Metaflow: equal but for the header's MTIME (bytes 4-7, the time written)
        a, b = on[key], off[key]
        assert a["metadata"] == b["metadata"], key
        assert a["body"][:2] == b"\x1f\x8b", key
        assert (a["body"][:4], a["body"][8:]) == (b["body"][:4], b["body"][8:]), key

    def per_task(objs: dict[str, dict[str, Any]], run_id: str) -> dict[tuple[str, str], dict]:
        files: dict[tuple[str, str], dict] = {}
        for key, obj in sorted(objs.items()):
            parts = key.split("/")
            if parts[:2] == ["ArtifactsFlow", run_id] and len(parts) == 5:
                files.setdefault((parts[2], parts[4]), obj["metadata"])
        return files

    files_on = per_task(on, flows.on.run_id or "")
    files_off = per_task(off, flows.off.run_id or "")
    assert {step for step, _ in files_on} >= {"_parameters", "start", "fan", "join", "end"}
    assert files_on == files_off
    # Including the gzip'ed logs, whose uncompressed form differs run to run.
    assert ("start", "0.runtime_stdout.log") in files_on or any(
        name.endswith(".log") for _, name in files_on
    ), sorted(files_on)


def test_resume_with_extension_off_from_a_run_made_on(flows: Flows) -> None:
    done = flows.resumed_off
    assert done.returncode == 0, done.output
    assert announced_by(done.output) == set()
    read = flows.read_cached(done.run_id, True, "on")
    check_artifacts(read, flows, BIG_MIB["on"])
    join = read["join"]
    assert join["joined_by"] == done.run_id  # the join step ran again, in the new run
    # start and fan were cloned from the run made with the extension on
    assert join["classes"] == {"start": ON_CLASSES, "fan": ON_CLASSES, "join": OFF_CLASSES}
    assert join["fan_classes"] == [ON_CLASSES] * WIDTH
    origin = flows.read_cached(flows.on.run_id, True, "on")
    assert {k: v for k, v in read["artifacts"].items() if k.startswith(("start/", "fan/"))} == {
        k: v for k, v in origin["artifacts"].items() if k.startswith(("start/", "fan/"))
    }


def test_resume_on_through_config_json_only(flows: Flows) -> None:
    """``{"METAFLOW_S3FAST_ENABLED": true}`` in ``$METAFLOW_HOME/config.json``, nothing in the
    environment: the resumed tasks use the extension; the cloned ones were core's."""
    done = flows.resumed_by_config
    assert done.returncode == 0, done.output
    assert announced_by(done.output) == {"join", "end"}
    read = flows.read_cached(done.run_id, False, "off")
    check_artifacts(read, flows, BIG_MIB["off"])
    assert read["join"]["joined_by"] == done.run_id
    assert read["join"]["classes"] == {"start": OFF_CLASSES, "fan": OFF_CLASSES, "join": ON_CLASSES}


# --- without flows: what `import metaflow` gives in each mode ------------------------------

PROBE = """
import json, sys
import metaflow
from metaflow.includefile import _dict_dataclients
from metaflow.metaflow_version import get_version
from metaflow.plugins import DATACLIENTS, DATASTORES

s3fast = sys.modules.get("s3fast")
print(json.dumps({
    "S3": metaflow.S3.__module__ + "." + metaflow.S3.__qualname__,
    "S3 is s3fast.S3": s3fast is not None and metaflow.S3 is s3fast.S3,
    "s3fast imported": s3fast is not None,
    "datastores": sorted(d.TYPE + "=" + d.__module__ for d in DATASTORES),
    "dataclients": sorted(d.TYPE + "=" + d.__module__ for d in DATACLIENTS),
    "includefile s3": _dict_dataclients["s3"].__module__,
    "version": get_version(),
    "names": sorted(dir(metaflow)),
}))
"""


def probe(flows: Flows, enabled: bool | None, **extra: str) -> dict[str, Any]:
    env = {**flows.env(enabled, "probe"), **extra}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=flows.tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # nothing is announced at import
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_off_is_metaflow_without_the_extension(flows: Flows, tmp_path: pathlib.Path) -> None:
    # Metaflow looks for extensions only in METAFLOW_EXTENSIONS_SEARCH_DIRS when it is set:
    # an empty directory hides this one, as if s3fast were not installed.
    absent = probe(flows, None, METAFLOW_EXTENSIONS_SEARCH_DIRS=str(tmp_path))
    assert absent["S3"] == CORE_S3 + ".S3" and "s3=" + CORE_DATASTORE in absent["datastores"]
    assert probe(flows, None) == absent
    assert probe(flows, False) == absent
    assert not absent["s3fast imported"]


MODULES = "import json, sys, metaflow; print(json.dumps(sorted(sys.modules)))"


def test_off_imports_only_the_extension_declarations(flows: Flows, tmp_path: pathlib.Path) -> None:
    """Off, ``import metaflow`` imports what it imports without the extension and the
    extension's three ``mfextinit`` modules (with their namespace packages), nothing else."""

    def modules(**extra: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", MODULES],
            env={**flows.env(False, "probe"), **extra},
            cwd=flows.tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return set(json.loads(done.stdout))

    absent = modules(METAFLOW_EXTENSIONS_SEARCH_DIRS=str(tmp_path))
    off = modules()
    assert absent <= off
    ext = "metaflow_extensions.s3fast"
    assert off - absent == {
        ext,
        *(f"{ext}.{point}" for point in ("config", "plugins", "toplevel")),
        *(f"{ext}.{point}.mfextinit_s3fast" for point in ("config", "plugins", "toplevel")),
    }


def test_on_metaflow_s3_is_s3fast(flows: Flows, tmp_path: pathlib.Path) -> None:
    absent = probe(flows, None, METAFLOW_EXTENSIONS_SEARCH_DIRS=str(tmp_path))
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"METAFLOW_S3FAST_ENABLED": "true"}))
    for on in (probe(flows, True), probe(flows, None, METAFLOW_HOME=str(home))):
        assert on["S3"] == "s3fast.sync.S3" and on["S3 is s3fast.S3"]
        assert "s3=" + EXTENSION in on["datastores"]
        assert "s3=" + CORE_DATASTORE not in on["datastores"]
        assert "s3=" + EXTENSION in on["dataclients"]
        assert on["includefile s3"] == EXTENSION
        assert re.fullmatch(re.escape(absent["version"]) + r"\+s3fast\([^)]+\)", on["version"])
        # S3 replaced, nothing added (but the loop variable Metaflow's loader of toplevel
        # modules leaves behind)
        assert set(on["names"]) - set(absent["names"]) <= {"pkg_name"}
        assert set(absent["names"]) <= set(on["names"])


def test_a_value_that_is_not_a_boolean_is_refused(flows: Flows) -> None:
    env = {**flows.env(None, "probe"), "METAFLOW_S3FAST_ENABLED": "fast"}
    done = subprocess.run(
        [sys.executable, "-c", "import metaflow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "METAFLOW_S3FAST_ENABLED='fast': expected true/false" in done.stderr


FORK = """
import multiprocessing, os, sys
from metaflow.plugins import DATASTORES
from metaflow_extensions.s3fast.plugins import s3fast_storage as ext

storage = next(d for d in DATASTORES if d.TYPE == "s3")(sys.argv[1])
assert type(storage) is ext.S3FastStorage
storage.save_bytes(iter([("parent/a", b"from the parent")]), overwrite=True)
with storage.load_bytes(["parent/a"]) as got:
    assert [open(p, "rb").read() for _, p, _ in got] == [b"from the parent"]
client = ext.shared_client(str(storage.datastore_root), storage.s3_client)
dirs = client.tmpdirs
assert dirs


def child(queue):
    storage.save_bytes(iter([("child/b", (b"from the child", {"k": 1}))]), overwrite=True)
    with storage.load_bytes(["child/b", "parent/a"]) as got:
        queue.put(sorted((k, open(p, "rb").read(), m) for k, p, m in got))
    queue.put(ext.shared_client(str(storage.datastore_root), storage.s3_client) is client)


queue = multiprocessing.get_context("fork").Queue()
proc = multiprocessing.get_context("fork").Process(target=child, args=(queue,))
proc.start()
read, same = queue.get(timeout=240), queue.get(timeout=240)
proc.join(240)
assert proc.exitcode == 0
assert read == [("child/b", b"from the child", {"k": 1}), ("parent/a", b"from the parent", None)], read
assert same  # the one client of this root, used by the child too
assert all(os.path.isdir(d) for d in dirs)  # the parent's temp dir is still there,
left = [f for d in dirs for _, _, files in os.walk(d) for f in files]
assert left == [], left  # and the files the child downloaded are gone
assert storage.is_file(["child/b", "parent/a", "missing"]) == [True, True, False]
print("fork ok")
"""


def test_datastore_in_a_forked_child(flows: Flows) -> None:
    """A process that forks after using the datastore (multiprocessing, Metaflow's
    parallel_map): the child stores and loads through the same client, the parent keeps
    working, and nothing is left in the working directory once the parent exits."""
    workdir = flows.tmp / "fork"
    workdir.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", FORK, f"s3://{flows.bucket}/fork"],
        env=flows.env(True, "fork"),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fork ok" in done.stdout
    assert os.listdir(workdir) == []
