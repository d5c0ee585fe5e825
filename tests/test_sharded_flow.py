"""The sharded example flow runs with Metaflow's local runtime against the local SeaweedFS:
every object is processed by exactly one branch, results land under S3(run=self), and
S3(run=Run("Flow/<id>")) outside the flow addresses the same prefix as metaflow.S3."""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import subprocess
import sys
import textwrap

from s3fast import S3

from .conftest import Server

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_sharded_flow(seaweed: Server, seaweed_bucket: str, tmp_path: pathlib.Path) -> None:
    rng = random.Random(6)
    words = ["alpha", "beta", "gamma", "delta"]
    inputs = {
        f"corpus/part-{i:02d}.txt": "".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) + "\n"
            for _ in range(rng.randint(1, 400))
        )
        for i in range(23)
    }
    inputs["corpus_v2/not-mine.txt"] = "a sibling prefix the flow must not read\n"
    with S3(s3root=f"s3://{seaweed_bucket}") as s3:
        s3.put_many(list(inputs.items()))
    mine = {k: v for k, v in inputs.items() if k.startswith("corpus/")}
    env = seaweed.flow_env(seaweed_bucket, tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "sharded_flow.py"),
            "--no-pylint",
            "run",
            "--prefix",
            f"s3://{seaweed_bucket}/corpus",
            "--shards",
            "3",
            "--max-workers",
            "3",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # current.tempdir (here Metaflow's default ".", the flow's working directory) is where
    # the branches' downloads landed.
    dirs = re.findall(r"shard \d: \d+ objects, downloaded to \['([^']+)'\]", out)
    assert len(dirs) == 3, out
    for d in dirs:  # relative to the task's working directory: "./s3fast.<random>"
        assert os.path.dirname(os.path.normpath(d)) in ("", "."), dirs
    assert not list(tmp_path.glob("s3fast.*"))  # and were removed
    total = {
        "objects": len(mine),
        "lines": sum(v.count("\n") for v in mine.values()),
        "words": sum(len(v.split()) for v in mine.values()),
        "bytes": sum(len(v.encode()) for v in mine.values()),
    }
    assert (
        f"sharded flow: {total['objects']} objects, {total['lines']} lines, "
        f"{total['words']} words, {total['bytes']} bytes in 3 shards"
    ) in out

    with S3(s3root=f"s3://{seaweed_bucket}/data/ShardedFlow") as s3:
        objs = s3.get_all()
        run_id = objs[0].key.split("/")[0]
        by_key = {o.key: json.loads(o.text) for o in objs}
    assert sorted(by_key) == [f"{run_id}/results/shard-{i:04d}.json" for i in range(3)] + [
        f"{run_id}/total.json"
    ]
    assert by_key[f"{run_id}/total.json"] == total
    shards = [by_key[f"{run_id}/results/shard-{i:04d}.json"] for i in range(3)]
    seen = [url for shard in shards for url in shard["urls"]]
    assert sorted(seen) == sorted(f"s3://{seaweed_bucket}/{k}" for k in mine)  # each once
    sizes = [shard["bytes"] for shard in shards]
    assert max(sizes) - min(sizes) <= max(len(v) for v in mine.values())

    # Outside the flow: S3(run=Run(...)) reads the same prefix, as metaflow.S3 computes it.
    check = textwrap.dedent(
        f"""
        from metaflow import Run, S3 as MetaflowS3, namespace
        from s3fast import S3
        namespace(None)
        run = Run("ShardedFlow/{run_id}")
        with S3(run=run) as s3, MetaflowS3(run=run) as mf:
            assert s3._aio._s3root == mf._s3root, (s3._aio._s3root, mf._s3root)
            print(s3._aio._s3root, s3.get("total.json").text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    root, text = done.stdout.split(" ", 1)
    assert root == f"s3://{seaweed_bucket}/data/ShardedFlow/{run_id}"
    assert json.loads(text) == total
