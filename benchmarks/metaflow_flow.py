"""Metaflow's S3 datastore with the s3fast extension off and on: ``python -m benchmarks.metaflow_flow``.

The same work in both modes (``METAFLOW_S3FAST_ENABLED=0`` / ``1``), each in fresh processes,
against an embedded SeaweedFS (or ``--endpoint``/``--bucket``):

- artifact save / load: one task's artifacts stored with Metaflow's ``TaskDataStore`` (what a
  step does when it ends) and loaded back (what the next step and the Client API do):
  ``--small`` small artifacts, 10 small artifacts (a typical step: core does ten or fewer one
  at a time in-process), and one ``--big-mib`` MiB bytes artifact;
- a ``--width``-way foreach run of ``tests/flows/artifacts_flow.py`` on the local runtime
  (``--datastore=s3``), wall time from launch to done;
- the Client API reading every artifact of every task of that run (a fresh client cache),
  and the ``--small`` distinct artifacts of one task of another run (a notebook reading a
  task's data); each with Metaflow's blob cache in the temp directory (as its default,
  ``/tmp/metaflow_client``) and, where that is not tmpfs, again with it on tmpfs.

Prints a table (seconds, best of ``--rounds``; ratio = off / on) and writes it as JSON to
``--out`` when given. Wall times on a shared machine are noisy; rounds interleave the modes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FLOW = REPO / "tests" / "flows" / "artifacts_flow.py"
READER = REPO / "tests" / "flows" / "read_run.py"
BUCKET = "s3fast-mfbench"
MODES = ("off", "on")


def _datastore_worker(spec: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: save and load one task's artifacts; seconds per operation."""
    from metaflow.datastore import FlowDataStore
    from metaflow.plugins import DATASTORES

    storage = next(d for d in DATASTORES if d.TYPE == "s3")
    flow = FlowDataStore("BenchFlow", storage_impl=storage, ds_root=spec["root"])
    salt = uuid.uuid4().hex  # new content each round: nothing is already in the store
    cases: dict[str, list[tuple[str, Any]]] = {
        f"{spec['small']} small artifacts": [
            (f"a{i}", {"i": i, "salt": salt, "text": "x" * 100}) for i in range(spec["small"])
        ],
        "10 small artifacts": [(f"a{i}", [i, salt]) for i in range(10)],
        f"1 artifact of {spec['big_mib']} MiB": [
            ("big", salt.encode() + os.urandom(spec["big_mib"] * 1024 * 1024))
        ],
    }
    out = {}
    for n, (case, artifacts) in enumerate(cases.items()):
        run_id, task_id = salt[:12], str(n + 1)
        task = flow.get_task_datastore(run_id, "start", task_id, attempt=0, mode="w")
        task.init_task()
        began = time.perf_counter()
        task.save_artifacts(iter(artifacts), len_hint=len(artifacts))
        out[f"artifact save: {case}"] = time.perf_counter() - began
        task.done()
        names = [name for name, _ in artifacts]
        began = time.perf_counter()
        reader = flow.get_task_datastore(run_id, "start", task_id, mode="r")
        loaded = dict(reader.load_artifacts(names))
        out[f"artifact load: {case}"] = time.perf_counter() - began
        assert sorted(loaded) == sorted(names)
    return out


def _env(base: dict[str, str], mode: str, root: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("METAFLOW_")}
    env.update(
        {
            "METAFLOW_S3FAST_ENABLED": "1" if mode == "on" else "0",
            "METAFLOW_HOME": str(tmp / "home"),
            "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp / "metadata"),
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": root,
            "METAFLOW_DATATOOLS_S3ROOT": root + "/data",
            "USERNAME": base.get("USERNAME", "bench"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")])),
        }
    )
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[str, str]:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout, done.stderr


def one_round(
    args: argparse.Namespace, base: dict[str, str], bucket: str, tmp: Path, mode: str
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    root = f"s3://{bucket}/{mode}-{tag}"
    work = tmp / f"{mode}-{tag}"
    work.mkdir()
    env = _env(base, mode, root, tmp)
    spec = {"root": root, "small": args.small, "big_mib": args.big_mib}
    out, _ = _run(
        [sys.executable, "-m", "benchmarks.metaflow_flow", "--worker", json.dumps(spec)],
        env,
        work,
        args.timeout,
    )
    results: dict[str, float] = json.loads(out.splitlines()[-1])

    began = time.perf_counter()
    cmd = [sys.executable, str(FLOW), "--no-pylint", "--datastore=s3", "run", "--big-mib", "0"]
    cmd += ["--width", str(args.width), "--small", "100", "--max-workers", str(args.max_workers)]
    stdout, stderr = _run(cmd, env, work, args.timeout)
    results[f"{args.width}-way foreach run (wall)"] = time.perf_counter() - began
    found = re.search(r"Workflow starting \(run-id (\w+)\)", stdout + stderr)
    assert found, stdout + stderr
    run_id = found.group(1)

    for case, seconds in _client_api(args, env, work, tmp, tag, [f"ArtifactsFlow/{run_id}"]):
        results[f"Client API: {case} of a run{_cache_label(seconds)}"] = seconds[1]

    # A task with many distinct artifacts (a notebook reading one task's data).
    cmd = [sys.executable, str(FLOW), "--no-pylint", "--datastore=s3", "run", "--big-mib", "0"]
    cmd += ["--width", "1", "--small", "10", "--many", str(args.small)]
    stdout, stderr = _run(cmd, env, work, args.timeout)
    found = re.search(r"Workflow starting \(run-id (\w+)\)", stdout + stderr)
    assert found, stdout + stderr
    task = [f"ArtifactsFlow/{found.group(1)}", "start"]
    for case, seconds in _client_api(args, env, work, tmp, tag + "-many", task):
        results[f"Client API: {case} of one task{_cache_label(seconds)}"] = seconds[1]
    return results


def _cache_roots(tmp: Path) -> list[tuple[str, Path]]:
    """Where the Client API's blob cache goes: under the temp directory, as Metaflow's
    default (``/tmp/metaflow_client``) does, and on tmpfs (``/dev/shm``) when that is another
    filesystem. Metaflow writes one cache file per artifact in one of 256 directories; on
    this project's 2-core VM that costs about 0.7-0.9 ms a file on ext4 and 0.03 ms on tmpfs, in
    both modes."""
    from s3fast._engine.sinks import filesystem_of

    here = filesystem_of(str(tmp)) or "?"
    roots = [(here, tmp)]
    shm = Path("/dev/shm")
    if here != "tmpfs" and shm.is_dir() and filesystem_of(str(shm)) == "tmpfs":
        roots.append(("tmpfs", shm))
    return roots


def _client_api(
    args: argparse.Namespace, env: dict[str, str], work: Path, tmp: Path, tag: str, what: list[str]
) -> list[tuple[str, tuple[str, float]]]:
    """``read_run.py`` on ``what`` with a fresh client cache in each of :func:`_cache_roots`:
    (what was read, (the cache's filesystem, seconds)) for each."""
    out = []
    for fs, root in _cache_roots(tmp):
        cache = Path(tempfile.mkdtemp(prefix=f"s3fast-mfbench-cache-{tag}-", dir=root))
        try:
            read, _ = _run(
                [sys.executable, str(READER), *what],
                {**env, "METAFLOW_CLIENT_CACHE_PATH": str(cache)},
                work,
                args.timeout,
            )
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        got = json.loads(read.splitlines()[-1])
        out.append((f"{len(got['artifacts'])} artifacts", (fs, got["seconds"])))
    return out


def _cache_label(seconds: tuple[str, float]) -> str:
    return f" (client cache on {seconds[0]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metaflow_flow", description=__doc__)
    p.add_argument("--width", type=int, default=64, help="foreach width (64)")
    p.add_argument("--max-workers", type=int, default=16, help="the runtime's --max-workers (16)")
    p.add_argument("--small", type=int, default=1000, help="small artifacts in one task (1000)")
    p.add_argument("--big-mib", type=int, default=200, help="the large artifact, MiB (200)")
    p.add_argument("--rounds", type=int, default=1, help="rounds, modes interleaved (1)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per command (1800)")
    p.add_argument("--endpoint", help="an S3 endpoint instead of an embedded SeaweedFS")
    p.add_argument("--bucket", help="an existing bucket on --endpoint")
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_datastore_worker(json.loads(args.worker))))
        return 0

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3fast-mfbench-")))
        (tmp / "home").mkdir()
        base = dict(os.environ)
        if args.endpoint:
            base["AWS_ENDPOINT_URL_S3"] = args.endpoint
            bucket = args.bucket or BUCKET
        else:
            from s3fast.testing import SeaweedFS

            print("starting SeaweedFS ...", file=sys.stderr, flush=True)
            server = stack.enter_context(SeaweedFS())
            base.update(server.env())
            base["AWS_EC2_METADATA_DISABLED"] = "true"
            bucket = BUCKET
            import boto3

            boto3.client(
                "s3",
                endpoint_url=server.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id=base["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=base["AWS_SECRET_ACCESS_KEY"],
            ).create_bucket(Bucket=bucket)
        best: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                print(f"round {r + 1}: extension {mode} ...", file=sys.stderr, flush=True)
                for name, seconds in one_round(args, base, bucket, tmp, mode).items():
                    best[mode][name] = min(seconds, best[mode].get(name, float("inf")))

    rows = list(best["off"])
    width = max(len(r) for r in rows)
    print(f"{'':{width}}  {'off (s)':>9}  {'on (s)':>9}  {'off/on':>7}")
    for row in rows:
        off, on = best["off"][row], best["on"][row]
        print(f"{row:{width}}  {off:9.2f}  {on:9.2f}  {off / on:6.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "seconds": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
