"""Transfer configuration: one frozen, keyword-only object; environment read at call time."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .limits import MAX_PART_SIZE, MIN_PART_SIZE, GiB, KiB, MiB


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _env_size(name: str) -> int | None:
    """An integer number of bytes, optionally with a binary suffix: ``8M``, ``1G``, ``512K``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": KiB, "M": MiB, "G": GiB}.get(text[-1:], 1)
    try:
        return int(float(text[:-1]) * scale) if scale > 1 else int(text)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a size (bytes, or 8M, 1G, ...)") from None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


# Size-valued fields and the variables that set them (``K``/``M``/``G`` suffixes allowed).
ENV_SIZES = (
    ("range_size", "S3FAST_RANGE_SIZE"),
    ("part_size", "S3FAST_PART_SIZE"),
    ("multipart_threshold", "S3FAST_MULTIPART_THRESHOLD"),
    ("max_bandwidth", "S3FAST_MAX_BANDWIDTH"),
    ("memory_budget", "S3FAST_MEMORY_BUDGET"),
)


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """How s3fast moves bytes. A field left as ``None`` is taken from the machine's plan
    (:func:`s3fast.tuning.plan`; ``python -m s3fast.tuning`` prints it and why).

    Parameters
    ----------
    max_concurrency : int, optional
        Requests in flight at once (the one concurrency limiter). Given, it is fixed (lowered
        only while the server throttles). Default: from the plan (CPUs, NIC speed), bounded
        by the memory budget, and raised at run time while that raises throughput, up to the
        plan's ``concurrency_ceiling``.
    range_size : int, optional
        Size of each ranged GET when a large object is fetched in parallel. Default: from
        the plan (8 MiB; 16 MiB on NICs of 25 Gbit/s and more).
    part_size : int, optional
        Preferred multipart part size, doubled as needed to fit 10,000 parts. Default: from
        the plan (8 MiB; 16 MiB on NICs of 25 Gbit/s and more).
    multipart_threshold : int
        Objects at least this large are uploaded as multipart (16 MiB).
    max_attempts : int
        Attempts per request, the first included, for transient errors (5xx, throttling,
        resets, stalls, bodies that broke off): 5.
    max_retry_time : float
        Seconds after a request was first sent (time spent queued for a concurrency slot
        does not count) when no further try starts (300: room for ``max_attempts`` tries
        that each time out); backoff sleeps that would end later are not slept.
    connect_timeout, read_timeout : float
        Seconds. ``connect_timeout`` bounds opening a connection, TLS handshake included;
        ``read_timeout`` is the longest the server may stay silent (before its answer,
        between body bytes, or not taking a request body): a slow body that keeps moving
        never times out. 10 and 60, as botocore's.
    verify_ssl : bool
        Verify TLS certificates (on by default; turning it off is explicit).
    ca_bundle : str, optional
        Path to a CA bundle for TLS verification.
    verify_checksums : bool
        Check every whole-object download against the full-object checksum (CRC32, CRC32C
        or CRC64NVME) the object carries; a mismatch is fetched again once, then raised. The
        first GET of such a download is unranged (S3 sends the checksum only then); for an
        object over two ranges it reads one range and drops its connection.
    transport : str
        ``"http"`` (default): GET, HEAD, PutObject, UploadPart and ListObjectsV2 take the lean
        path (s3fast's own zero-copy HTTP/1.1 pool) where they can; ``"botocore"``: every
        request goes through aiobotocore.
    max_bandwidth : int, optional
        Bytes per second for all transfers of one client together (GET ranges, PUTs and
        parts), enforced by a token bucket before each request. Default ``None``: unlimited.
    memory_budget : int, optional
        Bytes of transfer buffers in flight at once: ``max_concurrency`` is lowered until
        ``max_concurrency x max(range_size, part_size)`` fits. Default: from the plan (a
        quarter of the memory available to this process, cgroup limit included).
    processes : int, optional
        Worker processes for big batches (``get_many``, ``get_recursive``, ``put_files``),
        each with its own event loop and connections; a big batch into memory whose bodies
        are big (median over 256 KiB) runs instead on as many event loops in threads of
        this process, so the bodies land in the returned ``bytes`` without a second copy. Default: from the machine's plan
        (1 until a plan says otherwise); 1 keeps everything in this process.
    """

    max_concurrency: int | None = None
    range_size: int | None = None
    part_size: int | None = None
    multipart_threshold: int = 16 * MiB
    max_attempts: int = 5
    max_retry_time: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    verify_ssl: bool = True
    ca_bundle: str | None = None
    verify_checksums: bool = True
    transport: str = "http"
    max_bandwidth: int | None = None
    memory_budget: int | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.range_size is not None and self.range_size < 64 * KiB:
            raise ValueError(f"range_size must be >= 64 KiB, got {self.range_size}")
        if self.part_size is not None and not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
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
        if self.max_bandwidth is not None and self.max_bandwidth < 1:
            raise ValueError(f"max_bandwidth must be >= 1 byte/s, got {self.max_bandwidth}")
        if self.memory_budget is not None and self.memory_budget < 1:
            raise ValueError(f"memory_budget must be >= 1 byte, got {self.memory_budget}")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")

    @classmethod
    def from_env(cls, base: TransferConfig | None = None) -> TransferConfig:
        """``base`` (or the defaults) overridden by ``S3FAST_*`` environment variables,
        read now: ``S3FAST_MAX_CONCURRENCY``, ``S3FAST_RANGE_SIZE``, ``S3FAST_PART_SIZE``,
        ``S3FAST_MULTIPART_THRESHOLD``, ``S3FAST_MAX_BANDWIDTH`` (bytes/s),
        ``S3FAST_MEMORY_BUDGET`` (sizes take ``K``/``M``/``G`` suffixes),
        ``S3FAST_MAX_ATTEMPTS``, ``S3FAST_MAX_RETRY_TIME``, ``S3FAST_CONNECT_TIMEOUT``,
        ``S3FAST_READ_TIMEOUT``, ``S3FAST_VERIFY_SSL`` and ``S3FAST_VERIFY_CHECKSUMS``
        (0/false to disable), ``S3FAST_CA_BUNDLE``, ``S3FAST_TRANSPORT``, ``S3FAST_PROCESSES``.
        """
        base = base or cls()
        changes: dict[str, object] = {}
        for field, name in (
            ("max_concurrency", "S3FAST_MAX_CONCURRENCY"),
            ("max_attempts", "S3FAST_MAX_ATTEMPTS"),
            ("processes", "S3FAST_PROCESSES"),
        ):
            value = _env_int(name)
            if value is not None:
                changes[field] = value
        for field, name in ENV_SIZES:
            value = _env_size(name)
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
        for field, name in (
            ("verify_ssl", "S3FAST_VERIFY_SSL"),
            ("verify_checksums", "S3FAST_VERIFY_CHECKSUMS"),
        ):
            flag = os.environ.get(name)
            if flag is not None and flag.strip():
                changes[field] = flag.strip().lower() not in ("0", "false", "no", "off")
        if os.environ.get("S3FAST_CA_BUNDLE"):
            changes["ca_bundle"] = os.environ["S3FAST_CA_BUNDLE"]
        if os.environ.get("S3FAST_TRANSPORT"):
            changes["transport"] = os.environ["S3FAST_TRANSPORT"]
        return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class ResolvedConfig(TransferConfig):
    """A :class:`TransferConfig` with every planned field filled in (made by
    :func:`s3fast.tuning.plan`); what the engine runs with."""

    max_concurrency: int = 16
    range_size: int = 8 * MiB
    part_size: int = 8 * MiB
    memory_budget: int = 1 * GiB
