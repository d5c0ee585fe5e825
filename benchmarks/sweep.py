"""``python -m benchmarks --sweep``: the concurrency / range-size sweep behind s3fast's defaults.

For each workload, s3fast runs at every ``max_concurrency`` x size in the grid (the size is
both ``range_size`` and ``part_size``, set through ``S3FAST_MAX_CONCURRENCY``,
``S3FAST_RANGE_SIZE`` and ``S3FAST_PART_SIZE``), then with no setting at all (the plan's
default for this machine), next to boto3 and aiobotocore at their library defaults (10
connections, 8 MiB parts). Rounds are interleaved. The report gives, per workload, the best
hand-tuned setting, the default's figure and their ratio (the goal: within 10%), and the
default over each untuned peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import BYTE_WORKLOADS, dataset, report
from .profiles import Profile, Resolved

SWEEP_WORKLOADS = ("get_mem", "get_files", "small", "put_files")
SWEEP_CAPABLE = frozenset({"get_mem", "get_files", "get_big", "small", "put_files"})
SIZE_FREE = frozenset({"small"})  # 4 KiB objects: range and part size do not matter
PEERS = ("boto3", "aiobotocore")
LIBRARY_DEFAULT_CONNECTIONS = 10  # boto3 TransferConfig and botocore max_pool_connections
DEFAULT_LABEL = "plan default"
PEER_LABEL = "library defaults"
PEER_COLORS = {"boto3": "tab:red", "aiobotocore": "tab:green"}
PLANNED_VARS = ("S3FAST_MAX_CONCURRENCY", "S3FAST_RANGE_SIZE", "S3FAST_PART_SIZE")


def settings(concurrency: list[int], sizes: list[int], workload: str) -> list[Resolved]:
    """The grid for one workload, then the plan's default (no S3FAST_* variable set)."""
    grid = []
    for size in sizes[:1] if workload in SIZE_FREE else sizes:
        for n in concurrency:
            label = f"c{n}" if workload in SIZE_FREE else f"c{n} {dataset.fmt_size(size)}"
            env = {"S3FAST_MAX_CONCURRENCY": str(n)}
            if workload not in SIZE_FREE:
                env.update(S3FAST_RANGE_SIZE=str(size), S3FAST_PART_SIZE=str(size))
            grid.append(Resolved(Profile(label, None), None, env))
    grid.append(Resolved(Profile(DEFAULT_LABEL, None), None, {}))
    return grid


def planned(env: dict[str, str]) -> dict[str, Any]:
    """The plan the workers see (computed in a child: the parent imports no client)."""
    code = "import json; from s3fast import tuning; print(json.dumps(tuning.plan().as_dict()))"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return dict(json.loads(out.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"error": str(exc)}


def run(
    args: Any,
    *,
    env: dict[str, str],
    spec_path: str,
    scratch: str,
    s3: Any,
    bucket: str,
    files: list[Any],
    server_desc: str,
    out_stem: Path,
    sizes_desc: str,
) -> int:
    from .run import Progress, run_worker

    started = time.time()
    env = {k: v for k, v in env.items() if k not in PLANNED_VARS}
    plan = planned(env)
    workloads = [w for w in args.workloads if w in SWEEP_CAPABLE]
    peer_env = {"S3FAST_BENCH_PEER_CONCURRENCY": str(LIBRARY_DEFAULT_CONNECTIONS)}
    peer = Resolved(Profile(PEER_LABEL, None), None, peer_env)
    matrix = [
        (rnd, w, prof, client)
        for rnd in range(1, args.rounds + 1)
        for w in workloads
        for prof, client in [
            *(
                (s, args.sweep_client)
                for s in settings(args.sweep_concurrency, args.sweep_sizes, w)
            ),
            *((peer, p) for p in PEERS),
        ]
    ]
    progress = Progress(len(matrix))
    runs: list[dict[str, Any]] = []
    try:
        for rnd, w, prof, client in matrix:
            label = f"round {rnd}/{args.rounds} {w} {client} {prof.profile.name}"
            progress.start(label)
            result = run_worker(client, w, prof, spec_path, scratch, env, args.timeout)
            if w == "put_files":
                dataset.settle_puts(s3, bucket, client, files, result)
            base = {"round": rnd, "profile": prof.profile.name, "workload": w, "client": client}
            runs.append({**base, **result, "env": prof.env})
            progress.finish(label, result)
    finally:
        progress.close()
        s3.close()
    rows = report.summarize(runs)
    verdicts = verdict(rows, args.sweep_client)
    total = time.time() - started

    print("# s3fast concurrency / range-size sweep\n")
    mach = report.machine()
    print(
        f"- machine: {mach.get('cpu_model')}, {mach['cores']} cores, "
        f"{mach.get('memory_gib')} GiB, NIC {mach['nic']}"
    )
    print(f"- server: {server_desc}")
    print(f"- data: {sizes_desc}")
    print(f"- s3fast client: {args.sweep_client}; grid: max_concurrency {args.sweep_concurrency}")
    print(f"  x range_size = part_size {[dataset.fmt_size(s) for s in args.sweep_sizes]}")
    if "max_concurrency" in plan:
        print(
            f"- plan default here: max_concurrency {plan['max_concurrency']}, range_size "
            f"{dataset.fmt_size(plan['range_size'])}, part_size {dataset.fmt_size(plan['part_size'])}"
        )
    print(
        f"- peers at their library defaults ({LIBRARY_DEFAULT_CONNECTIONS} connections, 8 MiB parts)"
    )
    print(f"- rounds: {args.rounds} (interleaved), medians; {total:.0f} s\n")
    print(verdict_table(verdicts))
    print("\nEvery setting:\n")
    print(report.table(rows))
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": total,
        "machine": mach,
        "server": server_desc,
        "data": sizes_desc,
        "plan": plan,
        "grid": {"max_concurrency": args.sweep_concurrency, "sizes": args.sweep_sizes},
        "verdicts": verdicts,
        "summary": rows,
        "runs": runs,
    }
    json_path = out_stem.with_name(out_stem.name + "-sweep.json")
    png_path = out_stem.with_name(out_stem.name + "-sweep.png")
    report.write_json(str(json_path), record)
    default = ""
    if "max_concurrency" in plan:
        default = f" (c{plan['max_concurrency']} {dataset.fmt_size(plan['range_size'])})"
    plot(str(png_path), rows, args.sweep_client, f"s3fast sweep ({server_desc})", default)
    print(f"\nwrote {json_path} and {png_path}", file=sys.stderr)
    return 0


def verdict(rows: list[dict[str, Any]], client: str) -> list[dict[str, Any]]:
    """Per workload: the best hand-tuned setting, the default, and the untuned peers."""
    out = []
    for w in dict.fromkeys(r["workload"] for r in rows):
        rated = [r for r in rows if r["workload"] == w and r.get("rate") and r["status"] == "OK"]
        grid = [
            r
            for r in rated
            if r["client"] == client and r["profile"] not in (DEFAULT_LABEL, PEER_LABEL)
        ]
        default = next(
            (r for r in rated if r["client"] == client and r["profile"] == DEFAULT_LABEL), None
        )
        best = max(grid, key=lambda r: r["rate"]) if grid else None
        entry: dict[str, Any] = {
            "workload": w,
            "unit": "Gbit/s" if w in BYTE_WORKLOADS else "obj/s",
            "best": best["profile"] if best else None,
            "best_rate": best["rate"] if best else None,
            "default_rate": default["rate"] if default else None,
        }
        if best and default:
            entry["default_over_best"] = default["rate"] / best["rate"]
            entry["within_10pct"] = entry["default_over_best"] >= 0.9
        for p in PEERS:
            hit = next((r for r in rated if r["client"] == p), None)
            entry[p] = hit["rate"] if hit else None
            if hit and default:
                entry[f"default_over_{p}"] = default["rate"] / hit["rate"]
        out.append(entry)
    return out


def verdict_table(entries: list[dict[str, Any]]) -> str:
    head = ["workload", "best hand-tuned", "plan default", "default / best", *PEERS]
    head += [f"default / {p}" for p in PEERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def rate(v: float | None, unit: str) -> str:
        if v is None:
            return "-"
        return f"{v:.2f} {unit}" if unit == "Gbit/s" else f"{v:,.0f} {unit}"

    def x(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    for e in entries:
        u = e["unit"]
        best = f"{e['best']}: {rate(e['best_rate'], u)}" if e["best"] else "-"
        ok = e.get("default_over_best")
        mark = "" if ok is None else (" (within 10%)" if e["within_10pct"] else " (NOT within 10%)")
        cells = [e["workload"], best, rate(e["default_rate"], u), x(ok) + mark]
        cells += [rate(e[p], u) for p in PEERS]
        cells += [x(e.get(f"default_over_{p}")) for p in PEERS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _concurrency(label: str) -> int | None:
    head = label.split()[0]
    return int(head[1:]) if head.startswith("c") and head[1:].isdigit() else None


def plot(path: str, rows: list[dict[str, Any]], client: str, title: str, default: str) -> None:
    """Rate against max_concurrency, one line per size, per workload; the default and the
    peers as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(workloads)), figsize=(5 * len(workloads), 4.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, w in zip(axes, workloads, strict=False):
        sel = [r for r in rows if r["workload"] == w and r.get("rate") and r["status"] == "OK"]
        lines: dict[str, list[tuple[int, float]]] = {}
        for r in sel:
            n = _concurrency(r["profile"]) if r["client"] == client else None
            if n is not None:
                size = " ".join(r["profile"].split()[1:]) or "any size"
                lines.setdefault(size, []).append((n, r["rate"]))
        for size, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"s3fast {size}")
        for r in sel:
            if r["profile"] == DEFAULT_LABEL:
                ax.axhline(r["rate"], color="black", lw=1.5, label=f"s3fast plan default{default}")
            elif r["profile"] == PEER_LABEL:
                color = PEER_COLORS.get(r["client"], "grey")
                label = f"{r['client']} (library defaults)"
                ax.axhline(r["rate"], ls="--", lw=1, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("max_concurrency")
        ax.set_ylabel("Gbit/s" if w in BYTE_WORKLOADS else "objects/s")
        ax.set_title(w)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_grid(raw: str, size: bool) -> list[int]:
    from .run import _size

    values = [(_size(v) if size else int(v)) for v in raw.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit(f"bad sweep grid: {raw!r}")
    if size and min(values) < 5 * dataset.MiB:
        raise SystemExit("--sweep-sizes: each size is also a part size, so at least 5M")
    return values
