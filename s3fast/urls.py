"""s3:// parsing, s3root joining, run= roots, and the Range / Content-Range codec."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import MetaflowS3InvalidRange, MetaflowS3URLException
from .limits import MAX_KEY_BYTES

__all__ = [
    "ByteRange",
    "S3Path",
    "join",
    "parse",
    "parse_content_range",
]

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$")  # 3+ chars; legacy names allowed
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class S3Path:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse(url: str, *, need_key: bool = True) -> S3Path:
    """Split ``s3://bucket/key`` without urllib's query/fragment handling: in S3, ``?`` and
    ``#`` are ordinary key characters."""
    if not isinstance(url, str):
        raise MetaflowS3URLException(f"{url!r}: an S3 URL must be a str", None)
    if not url.startswith("s3://"):
        raise MetaflowS3URLException(f"{url}: not an S3 URL (expected s3://bucket/key)", url)
    bucket, _, key = url[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise MetaflowS3URLException(f"{url}: invalid bucket name {bucket!r}", url)
    if need_key and not key:
        raise MetaflowS3URLException(f"{url}: the URL names a bucket, not an object", url)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise MetaflowS3URLException(f"{url[:80]}...: key longer than {MAX_KEY_BYTES} bytes", url)
    return S3Path(bucket, key)


def join(root: str | None, key: Any, *, in_flow: bool = False) -> str:
    """The URL for ``key`` under ``root``, with metaflow.S3's rules."""
    if key is not None and not isinstance(key, str):
        raise MetaflowS3URLException(f"{key!r}: a key must be a str, not {type(key).__name__}")
    if root is None:
        if key and key.startswith("s3://") and len(key) > 5 and "/" in key[5:]:
            return key
        if in_flow:
            raise MetaflowS3URLException(
                f"{key!r}: specify S3(run=self) when you use S3 inside a running flow; "
                "otherwise use full s3:// URLs",
                key,
            )
        raise MetaflowS3URLException(
            f"{key!r}: initialize S3 with an 's3root' or 'run' if you don't want to "
            "specify full s3:// URLs",
            key,
        )
    if key:
        if key.startswith("s3://"):
            raise MetaflowS3URLException(
                f"{key}: don't use absolute S3 URLs when the S3 client is initialized "
                f"with a prefix ({root})",
                key,
            )
        return root + "/" + key.lstrip("/")
    return root


def datatools_root() -> str | None:
    """The root for ``run=`` addressing: ``S3FAST_DATATOOLS_S3ROOT``, else Metaflow's
    ``DATATOOLS_S3ROOT`` (see :func:`s3fast.metaflow_settings.datatools_root`), read now."""
    from .metaflow_settings import datatools_root as configured

    return configured()


def resolve_root(
    bucket: str | None, prefix: str | None, run: Any, s3root: str | None
) -> str | None:
    """The client's root URL, as metaflow.S3 computes it (``run=`` > ``s3root=`` > none)."""
    if run:
        root = datatools_root()
        if root is None:
            raise MetaflowS3URLException(
                "DATATOOLS_S3ROOT is not configured: set S3FAST_DATATOOLS_S3ROOT, "
                "METAFLOW_DATATOOLS_S3ROOT or METAFLOW_DATASTORE_SYSROOT_S3 to use S3(run=...)"
            )
        base = parse(root, need_key=False)
        bucket = bucket or base.bucket
        prefix = prefix or "/" + base.key
        from metaflow import FlowSpec  # type: ignore[import-not-found]
        from metaflow.metaflow_current import current  # type: ignore[import-not-found]

        if isinstance(run, FlowSpec):
            if not current.is_running_flow:
                raise MetaflowS3URLException(
                    "Initializing S3 with a FlowSpec outside of a running flow is not supported."
                )
            prefix = os.path.join(prefix, str(current.flow_name), str(current.run_id))
        else:
            prefix = os.path.join(prefix, run.parent.id, run.id)
        return "s3://" + os.path.join(bucket, prefix.strip("/"))
    if s3root:
        if not isinstance(s3root, str) or not s3root.startswith("s3://"):
            raise MetaflowS3URLException(
                f"{s3root!r}: s3root needs to be an S3 URL prefixed with s3://", str(s3root)
            )
        parse(s3root, need_key=False)
        return s3root.rstrip("/")
    return None


# --- ranges -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    """What the caller asked for: ``offset``/``length`` as in S3GetObject.

    ``length is None`` means to the end; ``length < 0`` means the last ``-length`` bytes.
    """

    offset: int
    length: int | None

    def header(self) -> str:
        if self.length is None:
            return f"bytes={self.offset}-"
        if self.length < 0:
            return f"bytes=-{-self.length}"
        return f"bytes={self.offset}-{self.offset + self.length - 1}"

    def tag(self) -> str:
        return self.header()[6:].replace("-", "_")


def byte_range(obj: Any, url: str) -> ByteRange | None:
    """The range requested by an ``S3GetObject``-like value, or None for the whole object."""
    offset = getattr(obj, "offset", None)
    length = getattr(obj, "length", None)
    if offset is None and length is None:
        return None
    offset = 0 if offset is None else offset
    for name, value in (("offset", offset), ("length", length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MetaflowS3InvalidRange(f"{url}: {name} must be an int, got {value!r}", url)
    if offset < 0:
        raise MetaflowS3InvalidRange(f"{url}: negative offset {offset}", url)
    if length == 0:
        raise MetaflowS3InvalidRange(f"{url}: zero-length range", url)
    return ByteRange(offset, length)


def parse_content_range(value: str | None, url: str) -> tuple[int, int, int]:
    """``bytes start-end/total`` -> (start, end, total)."""
    m = _CONTENT_RANGE.match(value or "")
    if m is None or m.group(3) == "*":
        raise MetaflowS3InvalidRange(f"{url}: unexpected Content-Range {value!r}", url)
    return int(m.group(1)), int(m.group(2)), int(m.group(3))
