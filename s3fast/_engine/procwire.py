"""The messages between the parent and its worker processes (:mod:`.pool`, :mod:`.worker`):
length-prefixed pickles over one socketpair per worker.

Parent to worker: ``("setup", settings)`` once; ``(op, batch, credentials, jobs, options)``
with ``op`` one of ``"get"``, ``"put"``, ``"list"`` (every op's last option says whether to
report bytes moved); ``("cancel", batch)``; ``("creds", number, credentials)``, the answer to
an ask; ``("exit",)``.

Worker to parent: ``("ready", 0, pid)`` once; ``("ok", batch, [(index, result), ...],
bytes moved)``; ``("err", batch, exception, pid)``; ``("done", batch)`` after every result of
the batch; ``("creds?", number)``, an ask for the parent's current credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
from typing import Any

from ..errors import (
    MetaflowS3TransferError,
)

_HEADER = struct.Struct("!Q")


def send(writer: asyncio.StreamWriter, msg: Any) -> None:
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
