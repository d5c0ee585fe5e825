"""S3's limits in one place, and pure part/range planning (no I/O)."""

from __future__ import annotations

__all__ = [
    "GiB",
    "KiB",
    "MAX_COPY_OBJECT_SIZE",
    "MAX_DELETE_KEYS",
    "MAX_KEY_BYTES",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MAX_PUT_OBJECT_SIZE",
    "MIN_PART_SIZE",
    "MiB",
    "TiB",
    "part_size_for",
    "split",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART_SIZE = 5 * MiB  # every multipart part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
MAX_PUT_OBJECT_SIZE = 5 * GiB  # largest single PutObject
MAX_KEY_BYTES = 1024  # UTF-8 bytes in a key
USER_METADATA_KEY = "metaflow-user-attributes"


def part_size_for(size: int, preferred: int) -> int:
    """The multipart part size for an object of ``size`` bytes: ``preferred`` clamped to S3's
    bounds, doubled until the object fits in ``MAX_PARTS`` parts (as s3transfer does)."""
    if size > MAX_OBJECT_SIZE:
        raise ValueError(f"{size} bytes exceeds S3's largest object ({MAX_OBJECT_SIZE} bytes)")
    part = min(max(preferred, MIN_PART_SIZE), MAX_PART_SIZE)
    while -(-size // part) > MAX_PARTS:
        part *= 2
    return min(part, MAX_PART_SIZE)


def split(start: int, end: int, chunk: int) -> list[tuple[int, int]]:
    """Split the inclusive byte span ``start..end`` into inclusive spans of at most ``chunk``."""
    return [(off, min(off + chunk, end + 1) - 1) for off in range(start, end + 1, chunk)]


MAX_DELETE_KEYS = 1000  # keys per DeleteObjects request
MAX_COPY_OBJECT_SIZE = 5 * GiB  # largest single CopyObject; above it, UploadPartCopy
COPY_PART_SIZE = 512 * MiB  # preferred UploadPartCopy part (server-side: no bytes through us)
