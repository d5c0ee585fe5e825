"""Result and request records: S3Object, S3GetObject, S3PutObject, RangeInfo.

They keep metaflow.S3's shapes (the request records are the same namedtuples), so code written
for metaflow reads them unchanged.
"""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

from .limits import USER_METADATA_KEY

__all__ = [
    "RangeInfo",
    "S3GetObject",
    "S3Object",
    "S3PutObject",
]

S3GetObject = namedtuple("S3GetObject", ["key", "offset", "length"])
S3GetObject.__doc__ = """A ranged download request: ``offset`` and ``length`` in bytes.

``length=None`` reads to the end; a negative ``length`` reads the last ``-length`` bytes."""

S3PutObject = namedtuple(
    "S3PutObject",
    ["key", "value", "path", "content_type", "encryption", "metadata"],
    defaults=(None, None, None, None, None),
)
S3PutObject.__doc__ = """An upload request: ``value`` (str, bytes or a readable, seekable file
object) or ``path`` (a local file), with optional content type, encryption and user metadata."""

RangeInfo = namedtuple(
    "RangeInfo", ["total_size", "request_offset", "request_length"], defaults=(0, -1)
)
RangeInfo.__doc__ = """What part of an object was downloaded."""


class S3Object:
    """A path or an object in S3, with an optional local copy (``path``) or in-memory copy
    (``blob``). Returned by the ``S3`` and ``AsyncS3`` methods; not made by users.
    """

    __slots__ = (
        "_blob",
        "_content_type",
        "_encryption",
        "_etag",
        "_key",
        "_last_modified",
        "_metadata",
        "_path",
        "_prefix",
        "_range_info",
        "_size",
        "_url",
        "_version_id",
    )

    def __init__(
        self,
        prefix: str | None,
        url: str,
        path: str | None,
        *,
        size: int | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        range_info: RangeInfo | None = None,
        last_modified: float | None = None,
        encryption: str | None = None,
        blob: bytes | None = None,
        etag: str | None = None,
        version_id: str | None = None,
    ) -> None:
        self._url = url
        self._path = path
        self._blob = blob
        self._size = size
        if blob is not None:
            self._size = len(blob)
        self._content_type = content_type
        self._last_modified = last_modified
        self._encryption = encryption
        self._etag = etag
        self._version_id = version_id
        self._metadata = None
        if metadata is not None and USER_METADATA_KEY in metadata:
            self._metadata = json.loads(metadata[USER_METADATA_KEY])
        if range_info is not None and (
            range_info.request_length is None or range_info.request_length < 0
        ):
            range_info = RangeInfo(
                range_info.total_size, range_info.request_offset, range_info.total_size
            )
        self._range_info = range_info
        if prefix is None or prefix == url:
            self._key = url
            self._prefix = None
        else:
            self._key = url[len(prefix.rstrip("/")) + 1 :].rstrip("/")
            self._prefix = prefix

    @property
    def exists(self) -> bool:
        """True if this object points at an existing object (file) in S3."""
        return self._size is not None

    @property
    def downloaded(self) -> bool:
        """True if the contents are available through ``path`` (or ``blob``) and ``text``."""
        return bool(self._path) or self._blob is not None

    @property
    def url(self) -> str:
        """S3 location of the object."""
        return self._url

    @property
    def prefix(self) -> str | None:
        """Prefix requested that matches this object."""
        return self._prefix

    @property
    def key(self) -> str:
        """The key given to the call that produced this object: a full URL or a suffix."""
        return self._key

    @property
    def path(self) -> str | None:
        """Local temporary file with the contents; deleted when the S3 scope exits.
        None when not downloaded, or downloaded with ``in_memory=True``."""
        return self._path

    @property
    def blob(self) -> bytes | None:
        """Contents as bytes, or None if not downloaded."""
        if self._blob is not None:
            return self._blob
        if self._path:
            with open(self._path, "rb") as f:
                return f.read()
        return None

    @property
    def text(self) -> str | None:
        """Contents decoded as UTF-8 (invalid bytes replaced), or None if not downloaded."""
        blob = self.blob
        return None if blob is None else blob.decode("utf-8", errors="replace")

    @property
    def size(self) -> int | None:
        """Size in bytes (of the downloaded range, if a range was requested); None if the
        object does not exist."""
        return self._size

    @property
    def has_info(self) -> bool:
        """True if content type, user metadata, range info or encryption are known."""
        return (
            self._content_type is not None
            or self._metadata is not None
            or self._range_info is not None
            or self._encryption is not None
        )

    @property
    def metadata(self) -> dict[str, Any] | None:
        """User-defined metadata, or None."""
        return self._metadata

    @property
    def content_type(self) -> str | None:
        """The object's MIME type, or None."""
        return self._content_type

    @property
    def encryption(self) -> str | None:
        """Server-side encryption type, or None."""
        return self._encryption

    @property
    def range_info(self) -> RangeInfo | None:
        """``RangeInfo(total_size, request_offset, request_length)`` of a download."""
        return self._range_info

    @property
    def last_modified(self) -> float | None:
        """Last-modified time as a Unix timestamp."""
        return self._last_modified

    @property
    def etag(self) -> str | None:
        """The object's ETag (quotes removed), where the server returned one."""
        return self._etag

    @property
    def version_id(self) -> str | None:
        """The object's version id, where the bucket is versioned."""
        return self._version_id

    def __str__(self) -> str:
        if self.downloaded:
            where = "in memory" if self._path is None else "local"
            return f"<S3Object {self._url} ({self._size} bytes, {where})>"
        if self._size is not None:
            return f"<S3Object {self._url} ({self._size} bytes, in S3)>"
        return f"<S3Object {self._url} (object does not exist)>"

    __repr__ = __str__


def listed_objects(prefix: str, bucket: str, entries: Any) -> list[S3Object]:
    """``S3Object(prefix, f"s3://{bucket}/{key}", None, size=size)`` for each ``(key, size)``
    of a listing, made without the constructor's argument handling (a listing of millions of
    keys spends its client time here); ``test_objects`` checks that the two agree."""
    new = object.__new__
    strip = len(prefix.rstrip("/")) + 1
    out = []
    for key, size in entries:
        obj = new(S3Object)
        obj._url = url = f"s3://{bucket}/{key}"
        obj._path = obj._blob = obj._content_type = obj._last_modified = None
        obj._encryption = obj._etag = obj._version_id = obj._metadata = obj._range_info = None
        obj._size = size
        if prefix == url:
            obj._key, obj._prefix = url, None
        else:
            obj._key, obj._prefix = url[strip:].rstrip("/"), prefix
        out.append(obj)
    return out
