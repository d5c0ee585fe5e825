"""Transfer configuration: one frozen, keyword-only object; environment read at call time."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .limits import MAX_PART_SIZE, MIN_PART_SIZE, MiB


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """How s3fast moves bytes. Every field has a default chosen by :mod:`s3fast.tuning`
    for the machine when left as ``None``.

    Parameters
    ----------
    max_concurrency : int, optional
        Requests in flight at once (the one concurrency limiter). Default: from the machine.
    range_size : int
        Size of each ranged GET when a large object is fetched in parallel (8 MiB).
    part_size : int
        Preferred multipart part size (8 MiB); doubled as needed to fit 10,000 parts.
    multipart_threshold : int
        Objects at least this large are uploaded as multipart (16 MiB).
    max_attempts : int
        Attempts per request, the first included, for transient errors (5xx, throttling,
        resets, stalls, bodies that broke off): 5.
    max_retry_time : float
        Seconds after a request's first try when no further try starts (60); backoff sleeps
        that would end later are not slept.
    connect_timeout, read_timeout : float
        Seconds; a stalled socket raises after ``read_timeout``.
    verify_ssl : bool
        Verify TLS certificates (on by default; turning it off is explicit).
    ca_bundle : str, optional
        Path to a CA bundle for TLS verification.
    transport : str
        ``"http"`` (default): GET, HEAD, UploadPart and ListObjectsV2 go over s3fast's own
        zero-copy HTTP/1.1 pool; ``"botocore"``: every request goes through aiobotocore.
    """

    max_concurrency: int | None = None
    range_size: int = 8 * MiB
    part_size: int = 8 * MiB
    multipart_threshold: int = 16 * MiB
    max_attempts: int = 5
    max_retry_time: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    verify_ssl: bool = True
    ca_bundle: str | None = None
    transport: str = "http"

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.range_size < 64 * 1024:
            raise ValueError(f"range_size must be >= 64 KiB, got {self.range_size}")
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(
                f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}, got {self.part_size}"
            )
        if self.multipart_threshold < MIN_PART_SIZE:
            raise ValueError(f"multipart_threshold must be >= {MIN_PART_SIZE}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_retry_time <= 0:
            raise ValueError(f"max_retry_time must be positive, got {self.max_retry_time}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.transport not in ("http", "botocore"):
            raise ValueError(f"transport must be 'http' or 'botocore', got {self.transport!r}")

    @classmethod
    def from_env(cls, base: TransferConfig | None = None) -> TransferConfig:
        """``base`` (or the defaults) overridden by ``S3FAST_*`` environment variables,
        read now: ``S3FAST_MAX_CONCURRENCY``, ``S3FAST_RANGE_SIZE``, ``S3FAST_PART_SIZE``,
        ``S3FAST_MULTIPART_THRESHOLD``, ``S3FAST_MAX_ATTEMPTS``, ``S3FAST_MAX_RETRY_TIME``,
        ``S3FAST_CONNECT_TIMEOUT``,
        ``S3FAST_READ_TIMEOUT``, ``S3FAST_VERIFY_SSL`` (0/false to disable), ``S3FAST_CA_BUNDLE``,
        ``S3FAST_TRANSPORT``.
        """
        base = base or cls()
        changes: dict[str, object] = {}
        for field, name in (
            ("max_concurrency", "S3FAST_MAX_CONCURRENCY"),
            ("range_size", "S3FAST_RANGE_SIZE"),
            ("part_size", "S3FAST_PART_SIZE"),
            ("multipart_threshold", "S3FAST_MULTIPART_THRESHOLD"),
            ("max_attempts", "S3FAST_MAX_ATTEMPTS"),
        ):
            value = _env_int(name)
            if value is not None:
                changes[field] = value
        for field, name in (
            ("max_retry_time", "S3FAST_MAX_RETRY_TIME"),
            ("connect_timeout", "S3FAST_CONNECT_TIMEOUT"),
            ("read_timeout", "S3FAST_READ_TIMEOUT"),
        ):
            fvalue = _env_float(name)
            if fvalue is not None:
                changes[field] = fvalue
        verify = os.environ.get("S3FAST_VERIFY_SSL")
        if verify is not None and verify.strip():
            changes["verify_ssl"] = verify.strip().lower() not in ("0", "false", "no", "off")
        if os.environ.get("S3FAST_CA_BUNDLE"):
            changes["ca_bundle"] = os.environ["S3FAST_CA_BUNDLE"]
        if os.environ.get("S3FAST_TRANSPORT"):
            changes["transport"] = os.environ["S3FAST_TRANSPORT"]
        return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]
