"""The s3fast exception tree, with metaflow.S3's names, and the one error translator.

::

    MetaflowS3Exception                      every s3fast error (metaflow has no common base)
    ├── MetaflowS3NotFound                   also FileNotFoundError   (NoSuchKey, NoSuchBucket, 404)
    ├── MetaflowS3AccessDenied               also PermissionError     (403, bad or missing credentials)
    ├── MetaflowS3URLException               also ValueError          (malformed URL or key)
    ├── MetaflowS3InvalidObject              also TypeError           (a value that cannot be uploaded)
    ├── MetaflowS3InvalidRange               also ValueError          (416, bad S3GetObject range)
    ├── MetaflowS3InsufficientDiskSpace      also OSError             (no room for a download)
    └── MetaflowS3TransferError                                       (transient failures outlasted retries,
                                                                       corrupt or short bodies)

Errors from botocore and the network are translated to this tree in exactly one place,
:func:`translate`, and every message names the URL concerned.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from typing import NoReturn

import aiohttp
import botocore.exceptions

__all__ = [
    "MetaflowS3AccessDenied",
    "MetaflowS3Exception",
    "MetaflowS3InsufficientDiskSpace",
    "MetaflowS3InvalidObject",
    "MetaflowS3InvalidRange",
    "MetaflowS3NotFound",
    "MetaflowS3TransferError",
    "MetaflowS3URLException",
    "translate",
]


class MetaflowS3Exception(Exception):
    """Base of every s3fast error. ``url`` is the S3 URL (or local path) concerned, if any."""

    headline = "S3 access failed"

    def __init__(self, msg: str, url: str | None = None) -> None:
        super().__init__(msg)
        self.url = url


class MetaflowS3NotFound(MetaflowS3Exception, FileNotFoundError):
    headline = "S3 object not found"


class MetaflowS3AccessDenied(MetaflowS3Exception, PermissionError):
    headline = "S3 access denied"


class MetaflowS3URLException(MetaflowS3Exception, ValueError):
    headline = "Invalid address"


class MetaflowS3InvalidObject(MetaflowS3Exception, TypeError):
    headline = "Not a string-like object"


class MetaflowS3InvalidRange(MetaflowS3Exception, ValueError):
    headline = "S3 invalid range"


class MetaflowS3InsufficientDiskSpace(MetaflowS3Exception, OSError):
    headline = "Insufficient disk space"


class MetaflowS3TransferError(MetaflowS3Exception):
    headline = "S3 transfer failed"


# S3 error codes, grouped by the exception they become.
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchUpload"}
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "403",
}
_INVALID_RANGE = {"InvalidRange", "416"}
_MESSAGES = {
    "NoSuchBucket": "bucket does not exist",
    "NoSuchKey": "object not found",
    "NotFound": "object not found",
    "404": "object not found",
    "InvalidAccessKeyId": "the AWS access key id is unknown to the server",
    "SignatureDoesNotMatch": "the request signature does not match (wrong secret key?)",
    "AccessDenied": "access denied",
    "403": "access denied",
    "InvalidRange": "the requested range is not satisfiable",
    "416": "the requested range is not satisfiable",
}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (as a string), else None."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code")
        if code is None:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(status) if status else None
        return str(code) if code is not None else None
    return None


def class_for(code: str) -> type[MetaflowS3Exception]:
    """The s3fast exception for an S3 error code."""
    if code in _NOT_FOUND:
        return MetaflowS3NotFound
    if code in _DENIED:
        return MetaflowS3AccessDenied
    if code in _INVALID_RANGE:
        return MetaflowS3InvalidRange
    if code in ("InvalidBucketName", "InvalidArgument", "KeyTooLongError"):
        return MetaflowS3URLException
    return MetaflowS3TransferError


def from_code(code: str, message: str | None, url: str | None) -> MetaflowS3Exception:
    """The s3fast exception for an S3 error ``code`` (with the server's ``message``) about
    ``url``: for errors that come as data, such as DeleteObjects' per-key errors."""
    detail = _MESSAGES.get(code) or message or code
    return class_for(code)(f"{url or 'S3'}: {detail} ({code})", url)


def translate(exc: BaseException, url: str | None) -> BaseException:
    """Turn a lower-level exception into the s3fast tree. Returns ``exc`` itself when it is
    already an s3fast error, a cancellation, or something that is not an I/O error at all.

    Use as ``raise translate(e, url) from e``.
    """
    if isinstance(exc, MetaflowS3Exception | asyncio.CancelledError):
        return exc
    where = url or "S3"
    code = error_code(exc)
    if code is not None:
        message = exc.response.get("Error", {}).get("Message")  # type: ignore[attr-defined]
        return from_code(code, message, url)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return MetaflowS3AccessDenied(f"{where}: no AWS credentials were found ({exc})", url)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return MetaflowS3URLException(f"{where}: {exc}", url)
    if isinstance(exc, ssl.SSLError):
        return MetaflowS3TransferError(f"{where}: TLS error: {exc}", url)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MetaflowS3InsufficientDiskSpace(f"{where}: {exc.strerror}", url)
    if isinstance(
        exc,
        botocore.exceptions.BotoCoreError
        | aiohttp.ClientError
        | ConnectionError
        | TimeoutError
        | asyncio.IncompleteReadError,
    ):
        # The engine retries every transient failure: one that reaches here outlasted them.
        return MetaflowS3TransferError(
            f"{where}: failed after retries: {type(exc).__name__}: {exc}", url
        )
    return exc


def raise_translated(exc: BaseException, url: str | None) -> NoReturn:
    """Raise ``exc`` as its s3fast equivalent (chained), or unchanged if it has none."""
    new = translate(exc, url)
    if new is exc:
        raise exc
    raise new from exc


__all__ = [
    "MetaflowS3AccessDenied",
    "MetaflowS3Exception",
    "MetaflowS3InsufficientDiskSpace",
    "MetaflowS3InvalidObject",
    "MetaflowS3InvalidRange",
    "MetaflowS3NotFound",
    "MetaflowS3TransferError",
    "MetaflowS3URLException",
    "class_for",
    "error_code",
    "from_code",
    "raise_translated",
    "translate",
]
