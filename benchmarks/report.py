"""Summaries of the raw runs: markdown tables, the JSON record, the PNG plot, and a
description of the machine and of every package version."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from typing import Any

from . import BYTE_WORKLOADS, PACKAGES, PER_OP_WORKLOADS, REFERENCE_CLIENTS, S3FAST_CLIENTS

GiB = 1024**3


# --- the machine ------------------------------------------------------------------------


def nic_speed() -> str:
    """Line rate of the physical NICs that report one, from /sys/class/net/*/speed."""
    found = []
    try:
        names = sorted(os.listdir("/sys/class/net"))
    except OSError:
        names = []
    for name in names:
        if name == "lo":
            continue
        try:
            with open(f"/sys/class/net/{name}/speed") as f:
                mbit = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if mbit > 0:
            found.append(f"{name} {mbit / 1000:g} Gbit/s")
    return ", ".join(found) if found else "n/a (loopback)"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "nic": nic_speed(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return info


def versions(weed: str | None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    if weed:
        try:
            text = subprocess.run(
                [weed, "version"], capture_output=True, text=True, timeout=20
            ).stdout
            out["weed"] = next((ln.strip() for ln in text.splitlines() if "version" in ln), text)
        except (OSError, subprocess.SubprocessError) as exc:
            out["weed"] = f"unknown ({exc})"
    return out


# --- numbers ----------------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (network, profile, workload, client), in first-seen order.

    Wall time: the median of every timed sample of every round (a run repeats its timed
    section until ``--min-time`` has passed, and keeps each sample), with the quartiles and
    the extremes; the rate's spread is the volume over the quartiles. CPU, server and proxy
    CPU: the median over rounds of each run's mean per sample."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        key = (r.get("network", "loopback"), r["profile"], r["workload"], r["client"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (network, profile, workload, client), rs in groups.items():
        row: dict[str, Any] = {
            "network": network,
            "profile": profile,
            "workload": workload,
            "client": client,
        }
        bad = [r for r in rs if r["status"] != "OK"]
        row["status"] = next((r["status"] for r in bad if r["status"] == "WRONG DATA"), None) or (
            bad[0]["status"] if bad else "OK"
        )
        if any(r.get("error") for r in bad):
            row["error"] = next(r["error"] for r in bad if r.get("error"))
        ok = [r for r in rs if r["status"] == "OK"]
        row["rounds_ok"] = len(ok)
        if ok:
            walls = [w for r in ok for w in (r.get("walls_s") or [r["wall_s"]])]
            wall = statistics.median(walls)
            p25, p75 = _quartiles(walls)
            row.update(
                wall_s=wall,
                wall_p25_s=p25,
                wall_p75_s=p75,
                wall_min_s=min(walls),
                wall_max_s=max(walls),
                samples=len(walls),
                timed_s=sum(r.get("timed_s", r["wall_s"]) for r in ok),
                bytes=ok[0]["bytes"],
                objects=ok[0]["objects"],
                cpu_s=statistics.median(r["cpu_s"] for r in ok),
                rss_mib=max(r["rss_mib"] for r in ok),
            )
            servers = [r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]
            row["server_cpu_s"] = statistics.median(servers) if servers else None
            proxies = [r["proxy_cpu_s"] for r in ok if r.get("proxy_cpu_s") is not None]
            row["proxy_cpu_s"] = statistics.median(proxies) if proxies else None
            if workload in BYTE_WORKLOADS:
                row["gbit_s"] = row["bytes"] * 8 / wall / 1e9
                row["cpu_s_per_gib"] = row["cpu_s"] / (row["bytes"] / GiB)
                row["rate"] = row["gbit_s"]
                per = row["bytes"] * 8 / 1e9
            else:
                row["objects_s"] = row["objects"] / wall
                row["cpu_ms_per_object"] = row["cpu_s"] * 1000 / row["objects"]
                row["rate"] = row["objects_s"]
                per = row["objects"]
                if workload in PER_OP_WORKLOADS:
                    row["ms_per_op"] = wall * 1000
            row["rate_lo"], row["rate_hi"] = per / p75, per / p25
            notes = {r["note"] for r in ok if r.get("note")}
            if notes:
                row["note"] = "; ".join(sorted(notes))
        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (profile, workload): each s3fast client's rate over the best peer's (and the floor's)."""
    out = []
    keys = dict.fromkeys((r.get("network", "loopback"), r["profile"], r["workload"]) for r in rows)
    for network, profile, workload in keys:
        group = [
            r
            for r in rows
            if (r.get("network", "loopback"), r["profile"], r["workload"])
            == (network, profile, workload)
        ]
        rated = [r for r in group if r.get("rate") and r["status"] == "OK"]
        peers = [r for r in rated if r["client"] not in S3FAST_CLIENTS + REFERENCE_CLIENTS]
        best = max(peers, key=lambda r: r["rate"]) if peers else None
        floor = next((r for r in rated if r["client"] in REFERENCE_CLIENTS), None)
        entry: dict[str, Any] = {
            "network": network,
            "profile": profile,
            "workload": workload,
            "best_peer": best["client"] if best else None,
            "best_peer_rate": best["rate"] if best else None,
            "best_peer_row": best,
        }
        for r in rated:
            if r["client"] in S3FAST_CLIENTS:
                entry[r["client"]] = r["rate"] / best["rate"] if best else None
                if best and r.get("rate_lo") and best.get("rate_lo"):
                    # the ratio's spread: our quartiles against the peer's opposite ones
                    entry[r["client"] + "_range"] = (
                        r["rate_lo"] / best["rate_hi"],
                        r["rate_hi"] / best["rate_lo"],
                    )
                entry[r["client"] + "_vs_floor"] = r["rate"] / floor["rate"] if floor else None
        out.append(entry)
    return out


def _spread(row: dict[str, Any]) -> str:
    """Half the interquartile range of the rate, relative to the median rate."""
    lo, hi = row.get("rate_lo"), row.get("rate_hi")
    if not lo or not hi or not row.get("rate"):
        return ""
    return f" ±{(hi - lo) / 2 / row['rate'] * 100:.0f}%"


def _rate(row: dict[str, Any]) -> str:
    if "ms_per_op" in row:
        unit = PER_OP_WORKLOADS[row["workload"]]
        lo, hi = row["wall_p25_s"] * 1000, row["wall_p75_s"] * 1000
        return f"{row['ms_per_op']:.2f} ms/{unit} (IQR {lo:.2f}-{hi:.2f})"
    if "gbit_s" in row:
        return f"{row['gbit_s']:.2f} Gbit/s{_spread(row)}"
    if "objects_s" in row:
        return f"{row['objects_s']:,.0f} obj/s{_spread(row)}"
    return ""


def _cpu(row: dict[str, Any]) -> str:
    if "ms_per_op" in row:
        return f"{row['cpu_ms_per_object']:.2f} ms/{PER_OP_WORKLOADS[row['workload']]}"
    if "cpu_s_per_gib" in row:
        return f"{row['cpu_s_per_gib']:.2f} s/GiB"
    if "cpu_ms_per_object" in row:
        return f"{row['cpu_ms_per_object']:.3f} ms/obj"
    return ""


def _server(row: dict[str, Any]) -> str:
    server, proxy = row.get("server_cpu_s"), row.get("proxy_cpu_s")
    text = f"{server:.2f}" if server is not None else "n/a"
    if proxy is not None:
        text += f" (+{proxy:.2f} proxy)"
    return text


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "network",
        "profile",
        "workload",
        "client",
        "wall s (median)",
        "IQR s (samples)",
        "rate (± half IQR)",
        "client CPU",
        "server CPU s",
        "peak RSS MiB",
        "result",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        has = "wall_s" in r
        status = r["status"]
        if status != "OK" and r.get("error") and status == "WRONG DATA":
            status = f"WRONG DATA ({r['error'][:80]})"
        spread = ""
        if has:
            spread = f"{r['wall_p25_s']:.4g}-{r['wall_p75_s']:.4g} ({r['samples']})"
        cells = [
            r.get("network", "loopback"),
            r["profile"],
            r["workload"],
            r["client"],
            f"{r['wall_s']:.4g}" if has else "",
            spread,
            _rate(r),
            _cpu(r),
            _server(r) if has else "",
            f"{r['rss_mib']:.0f}" if has else "",
            status.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| network | profile | workload | best peer (± half IQR) | s3fast_sync / best peer "
        "| s3fast_async / best peer | s3fast_sync / floor | s3fast_async / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def x(e: dict[str, Any], key: str) -> str:
        v = e.get(key)
        if not isinstance(v, float):
            return "-"
        rng = e.get(key + "_range")
        return f"{v:.2f}x ({rng[0]:.2f}-{rng[1]:.2f})" if rng else f"{v:.2f}x"

    for e in entries:
        if e["best_peer"] is None and not any(e.get(c) for c in S3FAST_CLIENTS):
            continue
        peer = "-"
        if e["best_peer"]:
            row = e.get("best_peer_row") or {}
            peer = f"{e['best_peer']} ({_rate(row)})" if row else e["best_peer"]
        lines.append(
            f"| {e.get('network', 'loopback')} | {e['profile']} | {e['workload']} | {peer} | "
            f"{x(e, 's3fast_sync')} | {x(e, 's3fast_async')} | "
            f"{x(e, 's3fast_sync_vs_floor')} | {x(e, 's3fast_async_vs_floor')} |"
        )
    return "\n".join(lines)


def write_json(path: str, record: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
        f.write("\n")


# --- the plot ---------------------------------------------------------------------------


def _panel(row: dict[str, Any]) -> str:
    network = row.get("network", "loopback")
    return row["profile"] if network == "loopback" else f"{row['profile']}, {network}"


def plot(path: str, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{**r, "profile": _panel(r)} for r in rows]
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    panels = [
        ("gbit_s", "Gbit/s (higher is better)", True),
        ("cpu_s_per_gib", "client CPU s per GiB (lower is better)", True),
        ("objects_s", "objects/s (higher is better)", False),
        ("cpu_ms_per_object", "client CPU ms per object (lower is better)", False),
    ]
    # Two rows of two panels per profile: rates on top, CPU cost below.
    fig, grid = plt.subplots(2 * len(profiles), 2, figsize=(15, 8.5 * len(profiles)), squeeze=False)
    clients = list(dict.fromkeys(r["client"] for r in rows))
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(clients)}
    for i, profile in enumerate(profiles):
        axes = [grid[2 * i][0], grid[2 * i + 1][0], grid[2 * i][1], grid[2 * i + 1][1]]
        for j, (metric, label, byte_wl) in enumerate(panels):
            ax = axes[j]
            sel = [r for r in rows if r["profile"] == profile and metric in r]
            workloads = list(
                dict.fromkeys(
                    r["workload"] for r in sel if (r["workload"] in BYTE_WORKLOADS) == byte_wl
                )
            )
            width = 0.8 / max(1, len(clients))
            for k, client in enumerate(clients):
                xs, ys = [], []
                for w, workload in enumerate(workloads):
                    hit = [r for r in sel if r["workload"] == workload and r["client"] == client]
                    if hit:
                        xs.append(w + k * width - 0.4 + width / 2)
                        ys.append(hit[0][metric])
                if ys:
                    ax.bar(xs, ys, width, label=client, color=colors[client])
            ax.set_xticks(range(len(workloads)))
            ax.set_xticklabels(workloads)
            ax.set_title(f"{profile}: {label}", fontsize=10)
            if metric == "objects_s" and workloads:
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
                break
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the data-plane targets (issue 3), checked against the peers of the same run -------------


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each data-plane target, per profile and s3fast client: the measured value, the bar it
    must clear (from the same run), and whether it does. Targets whose reference client did
    not run are left out."""

    def get(where: tuple[str, str], workload: str, client: str, field: str) -> float | None:
        for r in rows:
            if (r.get("network", "loopback"), r["profile"], r["workload"], r["client"]) == (
                *where,
                workload,
                client,
            ):
                value = r.get(field) if r["status"] == "OK" else None
                if value is None:
                    return None
                out = _Measured(value)
                if field == "rate" and r.get("rate_lo"):
                    out.range = (r["rate_lo"], r["rate_hi"])
                elif field == "ms_per_op":
                    out.range = (r["wall_p25_s"] * 1000, r["wall_p75_s"] * 1000)
                return out
        return None

    out = []
    for where in dict.fromkeys((r.get("network", "loopback"), r["profile"]) for r in rows):
        network, profile = where
        for client in S3FAST_CLIENTS:

            def mine(
                workload: str, field: str, client: str = client, where: tuple[str, str] = where
            ) -> float | None:
                return get(where, workload, client, field)

            def peer(workload: str, other: str, where: tuple[str, str] = where) -> float | None:
                return get(where, workload, other, "rate")

            checks: list[tuple[str, float | None, str, float | None, str]] = [
                # (target, value, relation, bar, how the bar is made)
                (
                    "GET into memory: Gbit/s",
                    mine("get_mem", "rate"),
                    ">=",
                    peer("get_mem", "obstore"),
                    "obstore",
                ),
                (
                    "GET into memory: CPU s/GiB",
                    mine("get_mem", "cpu_s_per_gib"),
                    "<=",
                    0.75,
                    "0.75",
                ),
                (
                    "GET into files: Gbit/s",
                    mine("get_files", "rate"),
                    ">=",
                    _times(0.9, peer("get_mem", "obstore")),
                    "0.9 x obstore in memory",
                ),
                (
                    "GET into files: Gbit/s",
                    mine("get_files", "rate"),
                    ">=",
                    _times(6, peer("get_files", "metaflow")),
                    "6 x metaflow.S3",
                ),
                (
                    "one large object: Gbit/s",
                    mine("get_big", "rate"),
                    ">=",
                    _times(0.9, mine("get_mem", "rate")),
                    "0.9 x its GET into memory",
                ),
                (
                    "small GETs: obj/s",
                    mine("small", "rate"),
                    ">=",
                    peer("small", "obstore"),
                    "obstore",
                ),
                ("small GETs: CPU ms/object", mine("small", "cpu_ms_per_object"), "<=", 0.4, "0.4"),
                (
                    "multipart PUT: Gbit/s",
                    mine("put_files", "rate"),
                    ">=",
                    peer("put_files", "obstore"),
                    "obstore",
                ),
                ("multipart PUT: CPU s/GiB", mine("put_files", "cpu_s_per_gib"), "<=", 1.5, "1.5"),
                (
                    "listing: obj/s",
                    mine("list", "rate"),
                    ">=",
                    peer("list", "boto3"),
                    "boto3 paginator",
                ),
                ("GET into files: peak RSS MiB", mine("get_files", "rss_mib"), "<=", 300.0, "300"),
                (
                    "a context + 1 KiB GET: ms",
                    mine("context", "ms_per_op"),
                    "<=",
                    get(where, "context", "boto3", "ms_per_op"),
                    "boto3 new client",
                ),
                (
                    "metadata round (4 contexts): ms",
                    mine("metadata", "ms_per_op"),
                    "<=",
                    get(where, "metadata", "metaflow", "ms_per_op"),
                    "metaflow.S3",
                ),
            ]
            for name, value, relation, bar, basis in checks:
                if value is None or bar is None:
                    continue
                met = value >= bar if relation == ">=" else value <= bar
                out.append(
                    {
                        "network": network,
                        "profile": profile,
                        "client": client,
                        "target": name,
                        "value": value,
                        "range": getattr(value, "range", None),
                        "relation": relation,
                        "bar": bar,
                        "basis": basis,
                        "met": met,
                    }
                )
    return out


class _Measured(float):
    """A median, with its interquartile range where the row has one."""

    range: tuple[float, float] | None = None


def _times(factor: float, value: float | None) -> float | None:
    return factor * value if value is not None else None


def target_table(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| network | profile | client | target | measured (IQR) | bar (same run) | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        fmt = "{:,.3f}" if e["value"] < 10 else "{:,.2f}" if e["value"] < 1000 else "{:,.0f}"
        measured = fmt.format(e["value"])
        if e.get("range"):
            lo, hi = e["range"]
            measured += f" ({fmt.format(lo)}-{fmt.format(hi)})"
        lines.append(
            f"| {e.get('network', 'loopback')} | {e['profile']} | {e['client']} | {e['target']} "
            f"| {measured} | {e['relation']} {fmt.format(e['bar'])} ({e['basis']}) | "
            f"{'yes' if e['met'] else '**no**'} |"
        )
    return "\n".join(lines)
