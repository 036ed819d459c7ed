"""DebugExit: a write of v at port 0xF4 requests exit status (v << 1) | 1."""

from __future__ import annotations

from acrn.dm.bus import IoBus
from acrn.dm.devices.debugexit import DEBUGEXIT_PORT, DebugExit, exit_status


def test_write_requests_status_v_shifted_or_one() -> None:
    seen: list[int] = []
    dev = DebugExit(seen.append)
    bus = IoBus()
    dev.attach(bus)
    bus.pio_write(DEBUGEXIT_PORT, 1, 0x10)
    assert seen == [0x21]
    assert dev.status == 0x21


def test_status_is_odd_even_for_zero() -> None:
    assert exit_status(0) == 1


def test_wide_write_uses_the_whole_value() -> None:
    dev = DebugExit()
    bus = IoBus()
    dev.attach(bus)
    bus.pio_write(DEBUGEXIT_PORT, 4, 0x1234)
    assert dev.status == 0x2469


def test_no_status_until_written() -> None:
    dev = DebugExit()
    bus = IoBus()
    dev.attach(bus)
    assert bus.pio_read(DEBUGEXIT_PORT, 1) == 0
    assert dev.status is None
