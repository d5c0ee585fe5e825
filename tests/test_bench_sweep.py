"""The sweep mode of the benchmark harness runs end to end on tiny data (figures are noise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3fast import tuning

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_bench_sweep_smoke(tmp_path: Path) -> None:
    tiny = ["--quick", "--rounds", "1", "--large-count", "1", "--small-count", "10"]
    tiny += ["--put-count", "1", "--big-size", "1M", "--workloads", "get_mem,put_files"]
    grid = ["--sweep-concurrency", "8", "--sweep-sizes", "8M"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--sweep", *tiny, *grid, "--out", str(tmp_path)],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WRONG DATA" not in proc.stdout and "error" not in proc.stdout, proc.stdout
    for needle in ("best hand-tuned", "plan default", "default / best", "c8 8 MiB", "boto3"):
        assert needle in proc.stdout, proc.stdout
    (record,) = tmp_path.glob("*-sweep.json")
    data = json.loads(record.read_text())
    assert [v["workload"] for v in data["verdicts"]] == ["get_mem", "put_files"]
    assert all(v["default_over_best"] > 0 for v in data["verdicts"])
    # the default the sweep measured is the plan this machine makes, as printed
    planned = data["plan"]
    assert planned["max_concurrency"] == tuning.plan().max_concurrency
    assert f"plan default here: max_concurrency {planned['max_concurrency']}," in proc.stdout
    assert list(tmp_path.glob("*-sweep.png"))
