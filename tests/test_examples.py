"""The example flow runs with Metaflow's local runtime against the local SeaweedFS, and its
S3(run=self) objects land where metaflow.S3 would put them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from s3fast import S3

from .conftest import Server

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_metaflow_flow_uses_run_addressing(
    seaweed: Server, seaweed_bucket: str, tmp_path: pathlib.Path
) -> None:
    env = seaweed.flow_env(seaweed_bucket, tmp_path)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "metaflow_flow.py"), "--no-pylint", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s3fast read 10 objects" in done.stdout + done.stderr
    with S3(s3root=f"s3://{seaweed_bucket}/data/S3FastDemoFlow") as s3:
        keys = sorted(o.key for o in s3.list_recursive())
    assert len(keys) == 11
    run_id = keys[0].split("/")[0]
    assert keys == sorted([f"{run_id}/shard/{i}" for i in range(10)] + [f"{run_id}/summary.json"])
