"""Sinks: the in-place ``bytes`` write and its kill switch."""

from __future__ import annotations

import mmap
import pathlib
import sys

import pytest

from s3fast._engine import sinks
from s3fast._engine.sinks import KILL_SWITCH, MemorySink, _huge_page_size, writable_bytes

pytestmark = pytest.mark.unit


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's bytes layout")
def test_bytes_are_written_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    direct = writable_bytes(8192)
    assert direct is not None
    blob, view = direct
    assert type(blob) is bytes and len(blob) == len(view) == 8192
    expected = bytearray(range(256)) * 32
    view[:] = expected  # the caller writes every byte (none are cleared first)
    view[100:104] = expected[100:104] = b"abcd"
    view.release()
    assert blob == expected


@pytest.mark.parametrize("value", ["1", "yes"])
def test_kill_switch_turns_ctypes_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(KILL_SWITCH, value)
    assert writable_bytes(8192) is None


def _vma_flags(address: int) -> set[str]:
    """The ``VmFlags`` of the mapping of this process that holds ``address``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    return set()


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _huge_page_size() == 0,
    reason="CPython on a kernel with transparent huge pages",
)
def test_large_bodies_ask_for_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    monkeypatch.setenv("S3FAST_HUGE_PAGES", "1")  # (also where the host takes back memory)
    huge = _huge_page_size()
    direct = writable_bytes(8 * huge)
    assert direct is not None
    blob, view = direct
    data = id(blob) + sys.getsizeof(b"") - 1
    middle = (data + 4 * huge) & ~(huge - 1)  # inside the advised whole huge pages
    assert "hg" in _vma_flags(middle)  # MADV_HUGEPAGE
    view[:] = b"\x01" * len(view)  # and the bytes are still the caller's, intact
    view.release()
    assert blob.count(1) == 8 * huge


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _huge_page_size() == 0,
    reason="CPython on a kernel with transparent huge pages",
)
def test_huge_page_advice_covers_whole_huge_pages_inside_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    monkeypatch.setenv("S3FAST_HUGE_PAGES", "1")
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sinks, "_madvise", lambda *call: calls.append(call))
    huge = _huge_page_size()
    small = writable_bytes(huge + huge // 2)  # too small to be sure of a whole huge page
    assert small is not None and calls == []
    small[1].release()
    blob, view = writable_bytes(5 * huge + 123) or (b"", memoryview(b""))
    data = id(blob) + sys.getsizeof(b"") - 1
    ((address, length, advice),) = calls
    assert advice == mmap.MADV_HUGEPAGE and address % huge == 0 and length % huge == 0
    assert data <= address and address + length <= data + 5 * huge + 123
    assert length >= 4 * huge  # every whole huge page inside
    view.release()


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
        sink.dest(offset, len(chunk))[:] = chunk
    path, blob = await sink.commit()
    assert path is None and blob == body and type(blob) is bytes


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _huge_page_size() == 0,
    reason="CPython on a kernel with transparent huge pages",
)
@pytest.mark.parametrize("value", ["0", "off"])
def test_huge_page_advice_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    monkeypatch.setenv("S3FAST_HUGE_PAGES", value)
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sinks, "_madvise", lambda *call: calls.append(call))
    direct = writable_bytes(5 * _huge_page_size())
    assert direct is not None and calls == []  # still received in place, without the advice
    direct[1].release()


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _huge_page_size() == 0,
    reason="CPython on a kernel with transparent huge pages",
)
@pytest.mark.parametrize("host_takes_back", [False, True])
def test_huge_page_advice_by_default_unless_the_host_takes_back_memory(
    monkeypatch: pytest.MonkeyPatch, host_takes_back: bool
) -> None:
    monkeypatch.delenv(KILL_SWITCH, raising=False)
    monkeypatch.delenv("S3FAST_HUGE_PAGES", raising=False)
    monkeypatch.setattr(sinks, "host_takes_back_free_memory", lambda: host_takes_back)
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sinks, "_madvise", lambda *call: calls.append(call))
    direct = writable_bytes(5 * _huge_page_size())
    assert direct is not None
    direct[1].release()
    assert len(calls) == (0 if host_takes_back else 1)


@pytest.mark.unit
def test_free_page_reporting_is_read_from_the_virtio_balloon(tmp_path: pathlib.Path) -> None:
    """The balloon's feature bits, one character each, bit 0 first: bit 5 is free page
    reporting (VIRTIO_BALLOON_F_REPORTING)."""
    assert not sinks.host_takes_back_free_memory(str(tmp_path / "none"))  # no balloon
    for name, bits, reports in [
        ("stats", "0110000000000000000000000000000010", False),
        ("reporting", "0110010000000000000000000000000010", True),  # this project's VM
    ]:
        device = tmp_path / name / "sys/bus/virtio/drivers/virtio_balloon/virtio0"
        device.mkdir(parents=True)
        (device / "features").write_text(bits + "\n")
        assert sinks.host_takes_back_free_memory(str(tmp_path / name)) is reports
