"""The messages between the parent and its worker processes (:mod:`.pool`, :mod:`.worker`):
the records below, as length-prefixed pickles over one socketpair per worker.

Parent to worker: :class:`Setup` once, then any of :class:`Batch`, :class:`Cancel`,
:class:`Creds` (the answer to an :class:`AskCreds`) and, last, :class:`Exit`.

Worker to parent: :class:`Ready` once, then :class:`Results` as objects finish (and bytes
move), :class:`Failed` when a batch fails, :class:`Done` after every other message of a
batch, and :class:`AskCreds` when its credentials come due.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from ..config import TransferConfig
from ..errors import MetaflowS3TransferError
from .fanout import Credentials
from .session import ClientSpec

_HEADER = struct.Struct("!Q")


@dataclass(frozen=True)
class Setup:
    """How a worker makes its engine: the parent's share of settings, endpoint and region."""

    config: TransferConfig
    endpoint_url: str | None
    region: str | None
    ceiling: int
    spec: ClientSpec | None


@dataclass(frozen=True)
class GetOptions:
    return_missing: bool
    in_memory: bool
    roots: list[tuple[str, str, bool]]  # the parent's temp dirs (directory, base, explicit)


@dataclass(frozen=True)
class PutOptions:
    overwrite: bool


@dataclass(frozen=True)
class Batch:
    """One worker's part of a batch: ``jobs`` for ``op`` (``"get"``, ``"put"`` or
    ``"list"``), signed with ``creds``; ``report_bytes``: send bytes moved as they move."""

    op: str
    batch: int
    creds: Credentials | None
    jobs: list[Any]
    options: GetOptions | PutOptions | None
    report_bytes: bool


@dataclass(frozen=True)
class Cancel:
    batch: int


@dataclass(frozen=True)
class Creds:
    """The parent's current credentials, answering ask ``number``."""

    number: int
    creds: Credentials | None


@dataclass(frozen=True)
class Exit:
    pass


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Results:
    """Results finished, ``(index in the batch, result)``, and bytes moved since the last."""

    batch: int
    results: list[tuple[int, Any]]
    moved: int


@dataclass(frozen=True)
class Failed:
    batch: int
    exc: BaseException
    pid: int


@dataclass(frozen=True)
class Done:
    batch: int


@dataclass(frozen=True)
class AskCreds:
    number: int


ToWorker = Setup | Batch | Cancel | Creds | Exit
ToParent = Ready | Results | Failed | Done | AskCreds


def send(writer: asyncio.StreamWriter, msg: ToWorker | ToParent) -> None:
    if writer.is_closing():
        return
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(body)))
    writer.write(body)


async def recv(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling as the same type and message, else a transfer error
    that names it."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:
        pass
    url = getattr(exc, "url", None)
    return MetaflowS3TransferError(f"{url or 'S3'}: {type(exc).__name__}: {exc}", url)


def remove_files(paths: list[str]) -> None:
    for path in paths:
        for name in (path, path + ".part"):
            with contextlib.suppress(OSError):
                os.unlink(name)
