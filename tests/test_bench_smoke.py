"""The benchmark harness runs end to end (quick data, two clients) and cleans up after itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_bench_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--rounds",
            "1",
            "--clients",
            "s3fast_sync,boto3",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "s3fast_sync" in proc.stdout
    assert "OK" in proc.stdout
    assert "WRONG DATA" not in proc.stdout, proc.stdout
    assert list(tmp_path.glob("*.json")), list(tmp_path.iterdir())
    assert list(tmp_path.glob("*.png")), list(tmp_path.iterdir())


@pytest.mark.timeout(300)
def test_bench_scaling_smoke(tmp_path: Path) -> None:
    """--scaling with tiny data: s3fast with 2 worker processes, byte-exact, table and plot."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--scaling",
            "--quick",
            "--scaling-cpus",
            "2",
            "--clients",
            "s3fast",
            "--workloads",
            "get_mem,put_files",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Scaling (client pinned" in proc.stdout, proc.stdout
    assert "| get_mem | s3fast |" in proc.stdout and "Gbit/s" in proc.stdout
    assert "WRONG DATA" not in proc.stdout and "error" not in proc.stdout, proc.stdout
    assert list(tmp_path.glob("*-scaling.png")), list(tmp_path.iterdir())


@pytest.mark.timeout(600)
def test_metaflow_benchmark_smoke(tmp_path: Path) -> None:
    """``python -m benchmarks.metaflow_flow`` with tiny data: every step runs with the
    extension off and on, and each Client API read runs once per blob-cache filesystem."""
    out = tmp_path / "mf.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.metaflow_flow",
            *("--width", "2", "--max-workers", "2", "--small", "20", "--big-mib", "1"),
            *("--out", str(out)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    seconds = json.loads(out.read_text())["seconds"]
    assert sorted(seconds) == ["off", "on"] and seconds["off"].keys() == seconds["on"].keys()
    rows = list(seconds["on"])
    for step in ("artifact save: 20 small", "artifact load: 1 artifact of 1 MiB", "2-way foreach"):
        assert any(r.startswith(step) for r in rows), rows
    client_api = [r for r in rows if r.startswith("Client API:")]
    assert any("artifacts of a run (client cache on " in r for r in client_api), rows
    assert any("artifacts of one task (client cache on " in r for r in client_api), rows
    assert all(s > 0 for mode in seconds.values() for s in mode.values()), seconds
    for row in rows:
        assert row in proc.stdout


@pytest.mark.timeout(300)
def test_batch_gaps_smoke() -> None:
    """``python -m benchmarks.batch_gaps`` with tiny data: every client runs its batches in
    fresh processes (their bytes checked for count and size) and gets a row."""
    env = {k: v for k, v in os.environ.items() if k != "S3FAST_HUGE_PAGES"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.batch_gaps",
            *("--gap", "0", "--batches", "2", "--count", "2", "--size-mib", "1", "--rounds", "1"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert labels == [
        "S3",
        "S3 advice on",
        "S3 advice off",
        "AsyncS3",
        "AsyncS3 advice on",
        "AsyncS3 advice off",
        "obstore",
    ]
    assert all(row.count("faults") == 2 for row in rows), rows
