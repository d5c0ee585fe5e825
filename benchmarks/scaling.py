"""``python -m benchmarks --scaling``: how s3fast scales with client CPUs and worker processes.

For each CPU count N (``--scaling-cpus``, default 1,2,4,8) the client is pinned to N CPUs and
runs with ``S3FAST_PROCESSES=N`` (``s3fast``), with one process (``s3fast_1proc``, the single
event loop), and obstore (a Rust runtime with a thread per CPU) as the reference. The server
can be pinned elsewhere with ``--server-cpus``. Output: one table (rate and client CPU per GiB
or per object, per CPU count) and one plot (rate and CPU cost against CPUs, per workload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import BYTE_WORKLOADS
from .profiles import Resolved

WORKLOADS = ("get_mem", "get_files", "put_files", "small")
CPUS = (1, 2, 4, 8)


def _processes(prof: Resolved) -> dict[str, str]:
    return {"S3FAST_PROCESSES": str(prof.profile.vcpus or 1)}


# label -> (the client that runs, extra environment for a profile)
VARIANTS: dict[str, tuple[str, Callable[[Resolved], dict[str, str]]]] = {
    "s3fast": ("s3fast_sync", _processes),
    "s3fast_1proc": ("s3fast_sync", lambda _: {"S3FAST_PROCESSES": "1"}),
    "obstore": ("obstore", lambda _: {}),
}


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "OK":
        return row["status"].replace("|", "/")[:40]
    if "gbit_s" in row:
        return f"{row['gbit_s']:.2f} Gbit/s<br>{row['cpu_s_per_gib']:.2f} s/GiB"
    return f"{row['objects_s']:,.0f} obj/s<br>{row['cpu_ms_per_object']:.3f} ms"


def table(rows: list[dict[str, Any]], profiles: list[Resolved]) -> str:
    """Rows: (workload, client); columns: CPU counts. Each cell: rate, then client CPU per GiB
    (or per object), with s3fast's worker processes counted."""
    names = [p.profile.name for p in profiles]
    head = ["workload", "client", *(n.replace("cpu", " CPU") for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pairs = dict.fromkeys((r["workload"], r["client"]) for r in rows)
    for workload, client in pairs:
        cells = []
        for name in names:
            hit = [
                r
                for r in rows
                if (r["profile"], r["workload"], r["client"]) == (name, workload, client)
            ]
            cells.append(_cell(hit[0] if hit else None))
        lines.append(f"| {workload} | {client} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: str, rows: list[dict[str, Any]], profiles: list[Resolved], title: str) -> None:
    """Per workload: rate against client CPUs (top) and client CPU cost (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpus = {p.profile.name: p.profile.vcpus or 0 for p in profiles}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    clients = list(dict.fromkeys(r["client"] for r in rows))
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(clients)}
    fig, grid = plt.subplots(
        2, max(1, len(workloads)), figsize=(4.5 * max(1, len(workloads)), 8), squeeze=False
    )
    for j, workload in enumerate(workloads):
        byte = workload in BYTE_WORKLOADS
        for i, (metric, label) in enumerate(
            [
                ("gbit_s", "Gbit/s") if byte else ("objects_s", "objects/s"),
                ("cpu_s_per_gib", "client CPU s/GiB")
                if byte
                else ("cpu_ms_per_object", "client CPU ms/object"),
            ]
        ):
            ax = grid[i][j]
            for client in clients:
                pts = sorted(
                    (cpus[r["profile"]], r[metric])
                    for r in rows
                    if r["workload"] == workload
                    and r["client"] == client
                    and metric in r
                    and r["profile"] in cpus
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", label=client, color=colors[client])
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(set(cpus.values())))
            ax.set_xticklabels([str(c) for c in sorted(set(cpus.values()))])
            ax.set_xlabel("client CPUs (s3fast: as many processes)")
            ax.set_title(f"{workload}: {label}", fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
