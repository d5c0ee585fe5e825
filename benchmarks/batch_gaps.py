"""GETs into memory the way a pipeline makes them: a few batches per process, with work in
between. Each run is a fresh process that GETs ``--count`` x ``--size`` into memory
``--batches`` times, ``--gap`` seconds apart (the caller's work between batches), and times
each batch (wall, process CPU, minor page faults). Clients: ``s3fast.S3`` and
``s3fast.AsyncS3``, with the huge-page advice as the machine's default chooses
(``S3FAST_HUGE_PAGES`` unset) and forced on and off, and obstore. Runs interleave; medians
and ranges per batch, on a SeaweedFS started here.

    python -m benchmarks.batch_gaps --gap 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid

from s3fast.testing import SeaweedFS

from .dataset import boto_client

_CHILD = r"""
import asyncio, json, os, resource, sys, time
bucket, client, gap, batches, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
keys = [f"o/{i}" for i in range(count)]
out = []

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt

def timed(fn):
    for _ in range(batches):
        time.sleep(gap)
        cpu0, faults0 = usage()
        start = time.perf_counter()
        got = fn()
        wall = time.perf_counter() - start
        cpu1, faults1 = usage()
        assert len(got) == count and all(len(b) == len(got[0]) for b in got)
        out.append([wall, cpu1 - cpu0, faults1 - faults0])
        del got

if client == "S3":
    from s3fast import S3
    with S3(s3root="s3://" + bucket) as s3:
        s3.info(keys[0])
        timed(lambda: [o.blob for o in s3.get_many(keys, in_memory=True)])
elif client == "AsyncS3":
    import uvloop
    from s3fast import AsyncS3
    loop = uvloop.new_event_loop()  # driven a batch at a time; idle during the gaps
    s3 = AsyncS3(s3root="s3://" + bucket)
    loop.run_until_complete(s3.info(keys[0]))

    async def batch():
        return [o.blob for o in await s3.get_many(keys, in_memory=True)]

    timed(lambda: loop.run_until_complete(batch()))
    loop.run_until_complete(s3.close())
else:
    import obstore as obs
    from obstore.store import S3Store
    env = os.environ
    store = S3Store(bucket, config={
        "endpoint": env["AWS_ENDPOINT_URL_S3"], "region": "us-east-1",
        "virtual_hosted_style_request": False, "access_key_id": env["AWS_ACCESS_KEY_ID"],
        "secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}, client_options={"allow_http": True})
    loop = asyncio.new_event_loop()

    async def head():  # (obstore's calls need a running loop)
        return await obs.head_async(store, keys[0])

    loop.run_until_complete(head())

    async def read(key):
        return await (await obs.get_async(store, key)).bytes_async()

    async def batch():
        return await asyncio.gather(*(read(k) for k in keys))

    timed(lambda: loop.run_until_complete(batch()))
print(json.dumps(out), flush=True)
if client == "obstore":
    os._exit(0)  # (obstore 0.12 can abort in its teardown at interpreter exit)
"""

# (label, client, S3FAST_HUGE_PAGES: None leaves it unset)
RUNS = [
    ("S3", "S3", None),
    ("S3 advice on", "S3", "1"),
    ("S3 advice off", "S3", "0"),
    ("AsyncS3", "AsyncS3", None),
    ("AsyncS3 advice on", "AsyncS3", "1"),
    ("AsyncS3 advice off", "AsyncS3", "0"),
    ("obstore", "obstore", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between batches")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per client")
    args = parser.parse_args()
    from s3fast._engine.sinks import host_takes_back_free_memory

    print(
        f"{args.batches} batches of {args.count} x {args.size_mib} MiB into memory, "
        f"{args.gap:g} s apart, fresh processes, {args.rounds} rounds; this kernel reports "
        f"free memory to its host: {host_takes_back_free_memory()}"
    )
    with SeaweedFS() as srv:
        os.environ.update(srv.env())
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
        env.pop("S3FAST_HUGE_PAGES", None)
        bucket = f"gaps-{uuid.uuid4().hex[:8]}"
        client = boto_client(srv.endpoint_url, "us-east-1", pool=4)
        client.create_bucket(Bucket=bucket)
        for i in range(args.count):
            client.put_object(Bucket=bucket, Key=f"o/{i}", Body=os.urandom(args.size_mib << 20))
        got: dict[str, list[list[list[float]]]] = {label: [] for label, _, _ in RUNS}
        for _ in range(args.rounds):
            for label, name, advice in RUNS:
                child_env = dict(env)
                if advice is not None:
                    child_env["S3FAST_HUGE_PAGES"] = advice
                argv = [str(v) for v in (bucket, name, args.gap, args.batches, args.count)]
                done = subprocess.run(
                    [sys.executable, "-c", _CHILD, *argv],
                    capture_output=True,
                    text=True,
                    env=child_env,
                    timeout=600,
                    check=True,
                )
                got[label].append(json.loads(done.stdout.splitlines()[-1]))
    print("| client | " + " | ".join(f"batch {i + 1}: s (range)" for i in range(args.batches)))
    print("|---|" + "---|" * args.batches)
    for label, runs in got.items():
        cells = []
        for i in range(args.batches):
            walls = [run[i][0] for run in runs]
            faults = statistics.median(run[i][2] for run in runs)
            cells.append(
                f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}), "
                f"{faults / 1000:.0f}k faults"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
