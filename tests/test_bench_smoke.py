"""The benchmark harness runs end to end (quick data, two clients) and cleans up after itself."""

from __future__ import annotations

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
