"""Boot plumbing without a guest: loader choice (acrn-dm's priority), console marker, raw-terminal escape."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from acrn.dm.console import ConsoleWatch, InteractiveConsole
from acrn.dm.loaders import LoaderError
from acrn.dm.loaders.image import ImageSpec


def test_loader_priority_is_ovmf_then_bzimage_then_elf() -> None:
    assert ImageSpec(ovmf=b"f", kernel=b"k", elf=b"e").loader == "ovmf"
    assert ImageSpec(kernel=b"k", elf=b"e").loader == "bzimage"
    assert ImageSpec(elf=b"e").loader == "elf"
    assert ImageSpec(vmlinux=b"v").loader == "vmlinux"


def test_nothing_to_boot_or_vmlinux_with_another_image_is_an_error() -> None:
    with pytest.raises(LoaderError):
        _ = ImageSpec().loader
    with pytest.raises(LoaderError):
        _ = ImageSpec(kernel=b"k", vmlinux=b"v").loader


def test_firmware_layout_reserves_the_bios_region() -> None:
    assert ImageSpec(ovmf=bytes(1 << 20)).layout(256 << 20).regions()[1] == ((4 << 30) - (2 << 20), 2 << 20)


class FakeSession:
    def __init__(self) -> None:
        self.stops: list[tuple[str, int, str]] = []
        self.fed = bytearray()
        self.stopped = threading.Event()
        self.uart: Any = self

    def request_stop(self, reason: str, status: int, detail: str = "") -> None:
        self.stops.append((reason, status, detail))
        self.stopped.set()

    def feed(self, data: bytes) -> None:
        self.fed += data


def test_console_marker_split_across_writes_stops_once() -> None:
    s = FakeSession()
    echoed: list[bytes] = []
    w = ConsoleWatch(s, b"Linux version", echoed.append)  # type: ignore[arg-type]
    for chunk in (b"[ 0.0] Lin", b"ux ver", b"sion 6.1", b" Linux version again"):
        w(chunk)
    assert [r for r, _, _ in s.stops] == ["marker"] and b"".join(echoed).startswith(b"[ 0.0] Linux")
    assert w.seen_at is not None


def test_interactive_console_forwards_keys_and_ctrl_a_x_quits() -> None:
    s = FakeSession()
    r, w = os.pipe()
    try:
        with InteractiveConsole(s, fd=r):  # type: ignore[arg-type]
            os.write(w, b"ab\x01\x01c\x01x")
            assert s.stopped.wait(10)
        assert bytes(s.fed) == b"ab\x01c"
        assert s.stops[0][0] == "quit"
    finally:
        os.close(r)
        os.close(w)
