"""The driver: server, data, the interleaved run matrix, and the report."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import CLIENTS, REQUIRES, SUPPORTS, WORKLOADS, dataset, network, report, scaling
from .profiles import PROFILES, Resolved, parse_cpus, pinned, resolve

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "s3fast-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark s3fast against other Python S3 clients, each run in its own process.",
    )
    p.add_argument("--quick", action="store_true", help="small data, one round (under a minute)")
    p.add_argument(
        "--large",
        action="store_true",
        help="the data-plane target sizes: 64 x 16 MiB, a 1 GiB object, 2,000 small objects",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="scale-out run: s3fast with N worker processes on N client CPUs, one process, "
        "and obstore, for each N in --scaling-cpus (workloads get_mem,get_files,put_files,small)",
    )
    p.add_argument(
        "--scaling-cpus",
        default=",".join(map(str, scaling.CPUS)),
        help="client CPU counts for --scaling (default 1,2,4,8)",
    )
    p.add_argument(
        "--server-cpus",
        default="",
        help="pin the embedded SeaweedFS to these CPUs (e.g. 0-7); clients use the others",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="rounds, interleaved (default 1: each run repeats for --min-time; --sweep and "
        "--scaling: 3)",
    )
    p.add_argument("--clients", help=f"comma-separated, from: {','.join(CLIENTS)}")
    p.add_argument("--workloads", help=f"comma-separated, from: {','.join(WORKLOADS)}")
    p.add_argument(
        "--profiles",
        default="all",
        help=f"comma-separated, from: {','.join(PROFILES)} (default all)",
    )
    p.add_argument(
        "--network",
        help="comma-separated, from: loopback,s3like: run every client and workload under each "
        "(default: everything on loopback, and under s3like "
        f"{','.join(network.S3LIKE_CLIENTS)} x {','.join(network.S3LIKE_WORKLOADS)}; "
        "--quick: loopback only)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=20.0,
        help="s3like: time to first byte added to every request (default 20)",
    )
    p.add_argument(
        "--conn-mb-s",
        type=float,
        default=100.0,
        help="s3like: bandwidth cap per connection and direction, MB/s (default 100; 0: none)",
    )
    p.add_argument(
        "--min-time",
        type=float,
        help="seconds: each run repeats its timed section until the repeats add up to this "
        "(default 2; --quick: 0, one pass)",
    )
    p.add_argument("--out", help=f"directory for the JSON and PNG (default {RESULTS})")
    p.add_argument(
        "--endpoint",
        default=os.environ.get("S3FAST_BENCH_ENDPOINT"),
        help="an S3 endpoint to use instead of an embedded SeaweedFS (env S3FAST_BENCH_ENDPOINT)",
    )
    p.add_argument(
        "--bucket",
        default=os.environ.get("S3FAST_BENCH_BUCKET"),
        help="an existing bucket on --endpoint (env S3FAST_BENCH_BUCKET)",
    )
    sizes = p.add_argument_group("data sizes (override the tier chosen above)")
    for flag, field, unit in (
        ("--large-count", "large_count", "objects"),
        ("--large-size", "large_size", "bytes (suffix K, M, G)"),
        ("--big-size", "big_size", "bytes (suffix K, M, G)"),
        ("--small-count", "small_count", "objects"),
        ("--small-size", "small_size", "bytes (suffix K, M, G)"),
        ("--list-count", "list_count", "keys (0: list the small objects)"),
        ("--put-count", "put_count", "files of --large-size"),
    ):
        sizes.add_argument(flag, dest=field, type=_size, help=unit)
    p.add_argument("--timeout", type=float, help="seconds per run (default 600; --quick: 120)")
    sweep = p.add_argument_group("the concurrency / range-size sweep (benchmarks/sweep.py)")
    sweep.add_argument("--sweep", action="store_true", help="sweep s3fast's settings instead")
    sweep.add_argument("--sweep-concurrency", default="8,16,32,64,128", help="max_concurrency grid")
    sweep.add_argument("--sweep-sizes", default="8M,16M", help="range_size = part_size grid")
    sweep.add_argument(
        "--sweep-client", default="s3fast_async", choices=("s3fast_async", "s3fast_sync")
    )
    args = p.parse_args(argv)
    args.server_cpus = parse_cpus(args.server_cpus)
    if args.sweep and args.scaling:
        p.error("--sweep and --scaling are separate runs")
    if args.sweep:
        from .sweep import SWEEP_WORKLOADS, parse_grid

        args.workloads = args.workloads or ",".join(SWEEP_WORKLOADS)
        args.sweep_concurrency = parse_grid(args.sweep_concurrency, size=False)
        args.sweep_sizes = parse_grid(args.sweep_sizes, size=True)
    if args.scaling:
        args.clients = _names(args.clients, tuple(scaling.VARIANTS), "scaling client")
        args.workloads = _names(
            args.workloads or ",".join(scaling.WORKLOADS), WORKLOADS, "workload"
        )
        counts = [int(n) for n in args.scaling_cpus.split(",") if n.strip()]
        if not counts or min(counts) < 1:
            p.error("--scaling-cpus needs CPU counts >= 1")
        args.profiles = [pinned(n, args.server_cpus) for n in counts]
        args.variants = dict(scaling.VARIANTS)
    else:
        args.clients = _names(args.clients, CLIENTS, "client")
        args.workloads = _names(args.workloads, WORKLOADS, "workload")
        names = _names(args.profiles, tuple(PROFILES), "profile")
        args.profiles = [resolve(name, args.server_cpus) for name in names]
        args.variants = {c: (c, _no_env) for c in args.clients}
    args.rounds = args.rounds or (1 if args.quick or not (args.sweep or args.scaling) else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 2.0)
    endpoint_given = bool(args.endpoint or args.bucket)
    explicit = network.parse(args.network, endpoint_given)
    if explicit is not None and (args.sweep or args.scaling):
        p.error("--network applies to the main run, not to --sweep or --scaling")
    args.networks_explicit = explicit is not None and not (args.sweep or args.scaling)
    if args.sweep or args.scaling:
        args.networks = [network.DIRECT if endpoint_given else "loopback"]
    elif explicit is not None:
        args.networks = explicit
    else:
        args.networks = network.default_plan(args.quick, endpoint_given)
    args.timeout = args.timeout or (120.0 if args.quick else 600.0)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.bucket and not args.endpoint and not os.environ.get("AWS_ENDPOINT_URL_S3"):
        pass  # real AWS S3, with the usual configuration
    if args.endpoint and not args.bucket:
        p.error("--endpoint needs --bucket (or S3FAST_BENCH_BUCKET)")
    return args


def _no_env(prof: Resolved) -> dict[str, str]:
    return {}


def _size(raw: str) -> int:
    """``123``, ``4K``, ``16M``, ``1G`` (binary units)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    raw = raw.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {raw!r}") from None


def _names(raw: str | None, known: tuple[str, ...], what: str) -> list[str]:
    if not raw:
        return list(known)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; known: {', '.join(known)}")
    return names


def _missing_module(client: str) -> str | None:
    for mod in REQUIRES[client]:
        if importlib.util.find_spec(mod) is None:
            return mod
    return None


def _credentials_env() -> dict[str, str]:
    """The usual AWS chain, resolved once here and handed to workers as plain variables."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.bar: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False)
            except ImportError:
                pass

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)

    def finish(self, label: str, result: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            wall = f"{result['wall_s']:.2f} s " if "wall_s" in result else ""
            width = len(str(self.total))
            print(
                f"[{self.done:>{width}}/{self.total}] {label}: {wall}{result['status']}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_worker(
    client: str,
    workload: str,
    prof: Resolved,
    spec_path: str,
    scratch: str,
    env: dict[str, str],
    timeout: float,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    run_tmp = tempfile.mkdtemp(prefix=f"{client}-{workload}-", dir=scratch)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--client",
        client,
        "--workload",
        workload,
        "--spec",
        spec_path,
        "--tmp",
        run_tmp,
    ]
    if prof.cpus is not None:
        cmd += ["--cpus", ",".join(map(str, prof.cpus))]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, **prof.env, **(extra_env or {})},
        cwd=run_tmp,
        start_new_session=True,  # its own process group: metaflow's children die with it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return {
            "client": client,
            "workload": workload,
            "status": f"error: timeout after {timeout:.0f} s",
        }
    finally:
        _kill(proc)
        shutil.rmtree(run_tmp, ignore_errors=True)
    lines = out.decode(errors="replace").strip().splitlines()
    tail = err.decode(errors="replace").strip().splitlines()[-20:]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = tail[-1] if tail else "no output"
        return {
            "client": client,
            "workload": workload,
            "status": f"error: worker exited {proc.returncode}: {last[:160]}",
            "stderr_tail": tail,
        }
    if result["status"] != "OK" and tail:
        result["stderr_tail"] = tail
    return dict(result)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    # and anything it left in its group (metaflow's s3op workers)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.time()
    sizes = dataset.QUICK if args.quick else dataset.LARGE if args.large else dataset.DEFAULT
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(dataset.Sizes)}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}-{socket.gethostname()}"
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

    with ExitStack() as stack:
        scratch = tempfile.mkdtemp(prefix="s3fast-bench-", dir=shm)
        stack.callback(shutil.rmtree, scratch, True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        weed: str | None = None
        if args.endpoint or args.bucket:
            endpoint = args.endpoint
            bucket = args.bucket
            region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
            env.update(_credentials_env())
            if endpoint:
                env["AWS_ENDPOINT_URL_S3"] = endpoint
            server_desc = f"{endpoint or 'AWS S3'} bucket {bucket}"
        else:
            from s3fast.testing import weed_binary

            weed = weed_binary()
            print("starting SeaweedFS ...", file=sys.stderr, flush=True)
            server = stack.enter_context(_pinned_server(args.server_cpus))
            endpoint, bucket, region = server.endpoint_url, BUCKET, "us-east-1"
            env.update(server.env())
            env["AWS_EC2_METADATA_DISABLED"] = "true"
            env["S3FAST_BENCH_SERVER_PID"] = str(server.pid)
            server_desc = f"embedded SeaweedFS at {endpoint} (pid {server.pid}, loopback)"
        env["AWS_DEFAULT_REGION"] = region
        if endpoint:
            env["METAFLOW_S3_ENDPOINT_URL"] = endpoint
        for name, value in env.items():  # the parent's own boto3 sees the same setup
            if name.startswith("AWS_"):
                os.environ[name] = value

        s3 = dataset.boto_client(endpoint, region)
        if weed is not None:
            s3.create_bucket(Bucket=bucket)
        else:
            s3.head_bucket(Bucket=bucket)
        data = dataset.seed(s3, bucket, sizes)
        print("writing local files for put_files ...", file=sys.stderr, flush=True)
        files = dataset.make_local_files(os.path.join(scratch, "put-src"), sizes)
        spec = {
            "bucket": bucket,
            "endpoint": endpoint,
            "region": region,
            "root": dataset.ROOT,
            "large": data["large"],
            "big": data["big"],
            "small": data["small"],
            "tiny": data["tiny"],
            "list": data["list"] or [(k, s, h) for k, s, h in data["small"]],
            "list_prefix": data["list_prefix"],
            "put": files,
            "min_time": args.min_time,
        }
        spec_path = os.path.join(scratch, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        nets = _networks(args, stack, spec, scratch, env, endpoint, spec_path, server_desc)
        if args.sweep:
            from . import sweep

            return sweep.run(
                args, env=env, spec_path=spec_path, scratch=scratch, s3=s3, bucket=bucket,
                files=files, server_desc=server_desc, out_stem=out_dir / stem,
                sizes_desc=sizes.describe(),
            )  # fmt: skip

        impl = {c: args.variants[c][0] for c in args.clients}
        missing = {c: _missing_module(impl[c]) for c in args.clients}
        plan = [
            (rnd, net, prof, w, c)
            for rnd in range(1, args.rounds + 1)
            for net in nets
            for prof in args.profiles
            for w in args.workloads
            for c in client_order(args.clients, rnd)
            if network.runs_under(net.name, impl[c], w, args.networks_explicit)
        ]
        live = [p for p in plan if w_supported(impl[p[4]], p[3]) and not missing[p[4]]]
        print(
            f"{len(live)} runs; expect about {_expected_s(len(live), args.min_time) / 60:.0f} "
            "minutes on an idle 2-core machine",
            file=sys.stderr,
            flush=True,
        )
        progress = Progress(len(live))
        runs: list[dict[str, Any]] = []
        bench_started = time.time()
        try:
            for rnd, net, prof, w, c in plan:
                base = {
                    "round": rnd,
                    "network": net.name,
                    "profile": prof.profile.name,
                    "workload": w,
                    "client": c,
                }
                if missing[c]:
                    runs.append(
                        {
                            **base,
                            "status": "skipped (not installed)",
                            "error": f"no module {missing[c]}",
                        }
                    )
                    continue
                if not w_supported(impl[c], w):
                    runs.append({**base, "status": "n/a"})
                    continue
                label = f"round {rnd}/{args.rounds} {net.name} {prof.profile.name} {w} {c}"
                progress.start(label)
                extra = {**args.variants[c][1](prof), **net.env}
                result = run_worker(
                    impl[c], w, prof, net.spec_path, scratch, env, args.timeout, extra
                )
                result["client"] = c
                if w == "put_files":
                    dataset.settle_puts(s3, bucket, impl[c], files, result)
                if w == "metadata":
                    dataset.clear_prefix(s3, bucket, dataset.meta_prefix(impl[c]))
                runs.append({**base, **result})
                progress.finish(label, result)
        finally:
            progress.close()
        bench_s = time.time() - bench_started
        s3.close()

        rows = report.summarize(runs)
        ratio = report.ratios(rows)
        mach = report.machine()
        vers = report.versions(weed)
        total_s = time.time() - started
        print(f"# s3fast benchmarks: {stem}\n")
        print(
            f"- machine: {mach.get('cpu_model')}, {mach['cores']} cores, "
            f"{mach.get('memory_gib')} GiB, Linux {mach['kernel']}, Python {mach['python']}"
        )
        print(f"- server: {server_desc}" + (f", {vers.get('weed')}" if weed else ""))
        print(f"- NIC line rate: {mach['nic']}")
        print(f"- data: {sizes.describe()}")
        for prof in args.profiles:
            print(f"- profile: {prof.describe()}")
        for net in nets:
            print(f"- network: {net.describe}")
        print(
            f"- timed sections: each run repeats its timed section until the repeats add up to "
            f"{args.min_time:g} s; the median is over every repeat of every round, the spread "
            "is the interquartile range (rates: ± half of it)"
        )
        print(
            f"- rounds: {args.rounds} (interleaved); runs took {bench_s:.0f} s, "
            f"{total_s:.0f} s in all with setup and seeding"
        )
        print("- client CPU is user+sys of the worker process (and its children, for metaflow)\n")
        print(report.table(rows))
        if args.scaling:
            print(
                "\nScaling (client pinned to N CPUs; s3fast with S3FAST_PROCESSES=N; client CPU "
                "includes s3fast's worker processes):\n"
            )
            print(scaling.table(rows, args.profiles))
        else:
            print(
                "\nRate of s3fast over the best peer (higher is better; floor is a raw-socket "
                "reference):\n"
            )
            print(report.ratio_table(ratio))
        goals = [] if args.scaling else report.targets(rows)
        if goals:
            print("\nData-plane targets, against the peers of this run:\n")
            print(report.target_table(goals))
        notes = {f"{r['client']} {r['workload']}: {r['note']}" for r in rows if r.get("note")}
        for note in sorted(notes):
            print(f"\n- {note}", end="")
        print()

        record = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": total_s,
            "runs_duration_s": bench_s,
            "argv": sys.argv[1:] if argv is None else argv,
            "quick": args.quick,
            "scaling": args.scaling,
            "rounds": args.rounds,
            "machine": mach,
            "versions": vers,
            "server": server_desc,
            "data": dataset.describe(data, sizes),
            "networks": [{"name": n.name, "describe": n.describe} for n in nets],
            "min_time_s": args.min_time,
            "profiles": [
                {
                    "name": p.profile.name,
                    "cpus": p.cpus,
                    "env": p.env,
                    "warning": p.warning,
                    "describe": p.describe(),
                }
                for p in args.profiles
            ],
            "summary": rows,
            "ratios": ratio,
            "targets": goals,
            "runs": runs,
        }
        if args.scaling:
            stem += "-scaling"
        json_path = out_dir / f"{stem}.json"
        png_path = out_dir / f"{stem}.png"
        report.write_json(str(json_path), record)
        if args.scaling:
            title = f"s3fast scale-out {stem} ({server_desc})"
            scaling.plot(str(png_path), rows, args.profiles, title)
        else:
            report.plot(str(png_path), rows, f"s3fast benchmarks {stem} ({server_desc})")
        print(f"\nwrote {json_path} and {png_path}", file=sys.stderr)
    return 0


@contextmanager
def _pinned_server(cpus: frozenset[int]) -> Iterator[Any]:
    """The embedded SeaweedFS, started with ``cpus`` as its affinity (inherited by every
    thread it makes) when given."""
    from s3fast.testing import SeaweedFS

    cpus = cpus & os.sched_getaffinity(0) if cpus else cpus
    if not cpus:
        with SeaweedFS() as server:
            yield server
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        server = SeaweedFS().start()
    finally:
        os.sched_setaffinity(0, before)
    try:
        yield server
    finally:
        server.stop()


def _networks(
    args: argparse.Namespace,
    stack: ExitStack,
    spec: dict[str, Any],
    scratch: str,
    env: dict[str, str],
    endpoint: str | None,
    spec_path: str,
    server_desc: str,
) -> list[network.Network]:
    """The networks this run uses; ``s3like`` starts the shaping proxy and writes a spec whose
    endpoint is the proxy."""
    out = []
    for name in args.networks:
        if name != "s3like":
            desc = "loopback: straight to the server" if name == "loopback" else server_desc
            out.append(network.Network(name, endpoint, desc, {}, spec_path))
            continue
        assert endpoint is not None
        url, pid = stack.enter_context(
            network.shaping_proxy(endpoint, args.latency_ms, args.conn_mb_s, env)
        )
        path = os.path.join(scratch, "spec-s3like.json")
        with open(path, "w") as f:
            json.dump({**spec, "endpoint": url}, f)
        worker_env = {
            "AWS_ENDPOINT_URL_S3": url,
            "METAFLOW_S3_ENDPOINT_URL": url,
            "S3FAST_BENCH_PROXY_PID": str(pid),
        }
        desc = network.describe_s3like(args.latency_ms, args.conn_mb_s) + f", at {url}"
        out.append(network.Network(name, url, desc, worker_env, path))
    return out


def client_order(clients: list[str], rnd: int) -> list[str]:
    """The clients in round ``rnd`` (from 1): rotated by one each round, so no client always
    runs first after another workload or right after the same neighbour (the server may
    still be settling the previous run's writes)."""
    shift = (rnd - 1) % len(clients) if clients else 0
    return clients[shift:] + clients[:shift]


def _expected_s(runs: int, min_time: float) -> float:
    """A rough duration: each run is its timed repeats plus about 1.5 s of process start,
    imports, warm-up and the byte check."""
    return runs * (min_time + 1.5)


def w_supported(client: str, workload: str) -> bool:
    return workload in SUPPORTS[client]
