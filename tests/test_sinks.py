"""Sinks: the in-place ``bytes`` write and its kill switch."""

from __future__ import annotations

import sys

import pytest

from s3fast._engine.sinks import KILL_SWITCH, MemorySink, writable_bytes

pytestmark = pytest.mark.unit


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's bytes layout")
def test_bytes_are_written_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    direct = writable_bytes(8192)
    assert direct is not None
    blob, view = direct
    view[100:104] = b"abcd"
    view.release()
    assert blob[100:104] == b"abcd" and blob.count(0) == 8192 - 4


@pytest.mark.parametrize("value", ["1", "yes"])
def test_kill_switch_turns_ctypes_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(KILL_SWITCH, value)
    assert writable_bytes(8192) is None


def test_small_bodies_are_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    assert writable_bytes(100) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("switch", ["", "0", "1"])
async def test_memory_sink_returns_what_was_received(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    monkeypatch.setenv(KILL_SWITCH, switch)
    body = bytes(range(256)) * 40  # 10 KiB: big enough for the in-place path
    sink = MemorySink()
    await sink.open(len(body))
    for offset in range(0, len(body), 4096):
        chunk = body[offset : offset + 4096]
        sink.view(offset, len(chunk))[:] = chunk
        assert sink.settled(offset, len(chunk)) is None
    path, blob = await sink.commit()
    assert path is None and blob == body and type(blob) is bytes
