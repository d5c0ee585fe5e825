"""The benchmark data: sizes, key layout, idempotent seeding with boto3, local files for PUTs,
and the byte-exact check of what a client uploaded.

Object data is random; each object's sha256 is kept in its user metadata (``bench-sha256``),
so a re-run against a persistent endpoint skips objects that already exist with the right size
and still knows what every client must return.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
ROOT = "s3fast-bench/"
SHA_META = "bench-sha256"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Sizes:
    large_count: int
    large_size: int
    big_size: int
    small_count: int
    small_size: int
    list_count: int  # 0: the list workload lists the small objects' prefix
    put_count: int  # local files of large_size for put_files

    def describe(self) -> str:
        listing = f"{self.list_count} keys" if self.list_count else "the small prefix"
        return (
            f"large {self.large_count} x {fmt_size(self.large_size)}, big {fmt_size(self.big_size)}, "
            f"small {self.small_count} x {fmt_size(self.small_size)}, "
            f"put {self.put_count} x {fmt_size(self.large_size)} files, list {listing}"
        )


# --large: the sizes the data-plane targets are stated in (about 10 minutes on 2 cores)
LARGE = Sizes(64, 16 * MiB, 1 * GiB, 2000, 4 * KiB, 10_000, 32)
# default: the same shapes, smaller, so `make bench` takes a few minutes on 2 cores
DEFAULT = Sizes(24, 16 * MiB, 256 * MiB, 600, 4 * KiB, 10_000, 12)
QUICK = Sizes(8, 4 * MiB, 32 * MiB, 100, 4 * KiB, 0, 8)


# context and metadata: 1 KiB objects, the same in every tier (a context GETs the first one, a
# metadata round HEADs it and lists their prefix)
TINY_COUNT = 8
TINY_SIZE = 1 * KiB


def fmt_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def layout(sizes: Sizes) -> dict[str, Any]:
    """Keys and sizes (no hashes yet). Sizes are in the prefixes so quick and full data can
    live side by side in one bucket."""
    large = f"{ROOT}large-{sizes.large_size // KiB}k/"
    small = f"{ROOT}small-{sizes.small_size}b/"
    listing = f"{ROOT}list-{sizes.list_count}/" if sizes.list_count else small
    tiny = f"{ROOT}tiny-{TINY_SIZE}b/"
    return {
        "tiny": [(f"{tiny}{i:04d}", TINY_SIZE) for i in range(TINY_COUNT)],
        "large": [(f"{large}{i:04d}", sizes.large_size) for i in range(sizes.large_count)],
        "big": (f"{ROOT}big-{sizes.big_size // KiB}k", sizes.big_size),
        "small": [(f"{small}{i:05d}", sizes.small_size) for i in range(sizes.small_count)],
        "list_prefix": listing,
        "list": [(f"{listing}{i % 100:02d}/{i:05d}", 0) for i in range(sizes.list_count)],
    }


def boto_client(endpoint: str | None, region: str, pool: int = 32) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(
            max_pool_connections=pool,
            s3={"addressing_style": "path"} if endpoint else None,
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


def _existing(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    return found


def _put_random(client: Any, bucket: str, key: str, size: int) -> str:
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    client.put_object(Bucket=bucket, Key=key, Body=data, Metadata={SHA_META: sha})
    return sha


def _put_big(client: Any, bucket: str, key: str, size: int, part: int = 64 * MiB) -> str:
    """A large random object as a multipart upload (the data is made, and hashed, first: the
    hash goes into the metadata given when the upload is created)."""
    if size <= part:
        return _put_random(client, bucket, key, size)
    parts = [os.urandom(min(part, size - off)) for off in range(0, size, part)]
    h = hashlib.sha256()
    for data in parts:
        h.update(data)
    sha = h.hexdigest()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata={SHA_META: sha})[
        "UploadId"
    ]
    try:
        with ThreadPoolExecutor(4) as pool:
            etags = list(
                pool.map(
                    lambda n: client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n + 1, Body=parts[n]
                    )["ETag"],
                    range(len(parts)),
                )
            )
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"ETag": e, "PartNumber": i} for i, e in enumerate(etags, 1)]
            },
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return sha


def _known_sha(client: Any, bucket: str, key: str) -> str | None:
    meta = client.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    return meta.get(SHA_META)


def seed(client: Any, bucket: str, sizes: Sizes, log: Any = None) -> dict[str, Any]:
    """Make every object exist with the right size; return the layout with sha256 of each."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    lay = layout(sizes)
    groups = [
        ("large", lay["large"]),
        ("small", lay["small"]),
        ("list", lay["list"]),
        ("tiny", lay["tiny"]),
    ]
    out: dict[str, Any] = {"list_prefix": lay["list_prefix"]}

    def one(item: tuple[str, int], have_it: bool) -> str:
        key, size = item
        if size == 0:
            if not have_it:
                client.put_object(Bucket=bucket, Key=key, Body=b"")
            return EMPTY_SHA
        if have_it:
            sha = _known_sha(client, bucket, key)
            if sha:
                return sha
        return _put_random(client, bucket, key, size)

    with ThreadPoolExecutor(32) as pool:
        for name, objs in groups:
            if not objs:
                out[name] = []
                continue
            prefix = objs[0][0].rsplit("/", 2 if name == "list" else 1)[0] + "/"
            have = _existing(client, bucket, prefix)
            flags = [have.get(k) == s for k, s in objs]
            if not all(flags):
                log(f"seeding {flags.count(False)} {name} objects ...")
            shas = list(pool.map(one, objs, flags))
            out[name] = [(k, s, h) for (k, s), h in zip(objs, shas, strict=True)]
    key, size = lay["big"]
    sha = None
    if _existing(client, bucket, key).get(key) == size:
        sha = _known_sha(client, bucket, key)
    if not sha:
        log(f"seeding the big object ({fmt_size(size)}) ...")
        sha = _put_big(client, bucket, key, size)
    out["big"] = (key, size, sha)
    return out


def make_local_files(directory: str, sizes: Sizes) -> list[tuple[str, str, int, str]]:
    """Random local files for the put workload: ``(path, key_suffix, size, sha256)``."""
    os.makedirs(directory, exist_ok=True)
    files = []
    for i in range(sizes.put_count):
        data = os.urandom(sizes.large_size)
        path = os.path.join(directory, f"{i:04d}")
        with open(path, "wb") as f:
            f.write(data)
        files.append((path, f"{i:04d}", len(data), hashlib.sha256(data).hexdigest()))
    return files


def put_prefix(client_name: str) -> str:
    return f"{ROOT}put/{client_name}/"


def meta_prefix(client_name: str) -> str:
    """Where a metadata round's ``put_many`` writes (cleared after each run)."""
    return f"{ROOT}meta-put/{client_name}/"


def verify_and_clear_puts(
    client: Any, bucket: str, prefix: str, files: list[tuple[str, str, int, str]]
) -> str | None:
    """Read back what a client uploaded under ``prefix`` and compare by sha256; then delete it
    (and abort any multipart upload it left). Returns None when exact, else what is wrong."""

    def check(item: tuple[str, str, int, str]) -> str | None:
        _, suffix, size, sha = item
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + suffix)["Body"]
        except client.exceptions.NoSuchKey:
            return f"{prefix + suffix}: missing"
        h, n = hashlib.sha256(), 0
        for chunk in iter(lambda: body.read(4 * MiB), b""):
            h.update(chunk)
            n += len(chunk)
        if n != size or h.hexdigest() != sha:
            return (
                f"{prefix + suffix}: {n} bytes, sha256 differs"
                if n == size
                else (f"{prefix + suffix}: {n} bytes, expected {size}")
            )
        return None

    try:
        with ThreadPoolExecutor(16) as pool:
            problems = [p for p in pool.map(check, files) if p]
    finally:
        clear_prefix(client, bucket, prefix)
    return problems[0] if problems else None


def settle_puts(
    client: Any,
    bucket: str,
    client_name: str,
    files: list[tuple[str, str, int, str]],
    result: dict[str, Any],
) -> None:
    """After a put_files run: check what it uploaded (a mismatch marks ``result`` WRONG DATA)
    if it ran OK, and leave its prefix empty either way for the next run."""
    prefix = put_prefix(client_name)
    if result["status"] == "OK":
        problem = verify_and_clear_puts(client, bucket, prefix, files)
        if problem:
            result.update(status="WRONG DATA", error=problem)
    else:
        clear_prefix(client, bucket, prefix)


def clear_prefix(client: Any, bucket: str, prefix: str) -> None:
    keys = list(_existing(client, bucket, prefix))
    for i in range(0, len(keys), 1000):
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
        )
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    except Exception:  # not every server lists uploads
        uploads = []
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def describe(data: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    return {**asdict(sizes), "list_prefix": data["list_prefix"]}
