"""s3fast: an asyncio-native, high-throughput S3 transfer engine.

``S3`` is a drop-in for ``metaflow.S3``; ``AsyncS3`` is the same API for asyncio code.
"""

from __future__ import annotations

from ._bridge import BlockingCallWarning
from ._engine.client import TransferStats
from .aio import AsyncS3
from .config import TransferConfig
from .errors import (
    MetaflowS3AccessDenied,
    MetaflowS3Exception,
    MetaflowS3InsufficientDiskSpace,
    MetaflowS3InvalidObject,
    MetaflowS3InvalidRange,
    MetaflowS3NotFound,
    MetaflowS3TransferError,
    MetaflowS3URLException,
)
from .objects import RangeInfo, S3GetObject, S3Object, S3PutObject
from .progress import Progress
from .sharding import shard
from .sync import S3

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it

__all__ = [
    "AsyncS3",
    "BlockingCallWarning",
    "MetaflowS3AccessDenied",
    "MetaflowS3Exception",
    "MetaflowS3InsufficientDiskSpace",
    "MetaflowS3InvalidObject",
    "MetaflowS3InvalidRange",
    "MetaflowS3NotFound",
    "MetaflowS3TransferError",
    "MetaflowS3URLException",
    "Progress",
    "RangeInfo",
    "S3",
    "S3GetObject",
    "S3Object",
    "S3PutObject",
    "TransferConfig",
    "TransferStats",
    "__version__",
    "shard",
]
