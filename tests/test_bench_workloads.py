"""The harness's context and metadata workloads and the s3like network run end to end and
report (tiny data, short timed sections; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(400)
def test_context_metadata_and_s3like_run_and_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--clients",
            "s3fast_sync,s3fast_async,boto3",
            "--workloads",
            "get_big,context,metadata",
            "--network",
            "loopback,s3like",
            "--latency-ms",
            "5",
            "--min-time",
            "0.2",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "WRONG DATA" not in out and "error" not in out, out
    assert "- network: s3like: through a shaping proxy" in out, out
    for network in ("loopback", "s3like"):
        for workload, unit in (("context", "ms/context"), ("metadata", "ms/round")):
            for client in ("s3fast_sync", "s3fast_async", "boto3"):
                row = next(
                    (
                        line
                        for line in out.splitlines()
                        if line.startswith(f"| {network} | all | {workload} | {client} |")
                    ),
                    None,
                )
                assert row is not None, (network, workload, client, out)
                assert unit in row and row.rstrip().endswith("| OK |"), row
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [n["name"] for n in record["networks"]] == ["loopback", "s3like"]
    assert record["min_time_s"] == 0.2
    runs = [r for r in record["runs"] if r["status"] == "OK"]
    assert len(runs) == 2 * 3 * 3, [r["status"] for r in record["runs"]]
    for r in runs:
        # every repeat is kept, and together they last at least --min-time
        assert r["iterations"] == len(r["walls_s"]) >= 1
        assert r["timed_s"] >= 0.2 or r.get("note"), r
        if r["network"] == "s3like":
            assert r["proxy_cpu_s"] is not None  # the proxy's CPU is measured
    summary = {(s["network"], s["workload"], s["client"]): s for s in record["summary"]}
    for s in summary.values():
        assert s["wall_p25_s"] <= s["wall_s"] <= s["wall_p75_s"]
    # the proxy's latency is in every request: a context's GET cannot beat it
    assert summary[("s3like", "context", "boto3")]["wall_s"] >= 0.005
    assert list(tmp_path.glob("*.png"))


@pytest.mark.unit
def test_each_round_rotates_the_client_order() -> None:
    from benchmarks.run import client_order

    clients = ["s3fast_sync", "s3fast_async", "obstore"]
    rounds = [client_order(clients, rnd) for rnd in (1, 2, 3, 4)]
    assert rounds[0] == clients and rounds[3] == clients  # round 1 as asked; then it cycles
    for position in range(3):  # over 3 rounds every client runs once in every position
        assert sorted(r[position] for r in rounds[:3]) == sorted(clients)
    assert client_order([], 2) == []
