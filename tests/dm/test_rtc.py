"""RTC/CMOS at 0x70/0x71 from the host clock (BCD/binary, 12/24 h, NMI mask bit, memory sizes)."""

from __future__ import annotations

import calendar

from acrn.dm.bus import IoBus
from acrn.dm.devices.rtc import Rtc

T = calendar.timegm((2026, 11, 25, 14, 5, 9, 0, 0, 0))  # a Wednesday


def _bus(rtc: Rtc) -> IoBus:
    bus = IoBus()
    rtc.attach(bus)
    return bus


def _get(bus: IoBus, reg: int) -> int:
    bus.pio_write(0x70, 1, reg)
    return bus.pio_read(0x71, 1)


def test_time_from_host_clock_in_bcd_24h() -> None:
    bus = _bus(Rtc(clock=lambda: T))
    assert [_get(bus, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [0x09, 0x05, 0x14, 0x25, 0x11, 0x26, 0x20]
    assert _get(bus, 6) == 4  # Wednesday, 1 = Sunday


def test_binary_mode_and_12_hour_mode() -> None:
    bus = _bus(Rtc(clock=lambda: T))
    bus.pio_write(0x70, 1, 0x0B)
    bus.pio_write(0x71, 1, 0x04)  # binary, 12 h
    assert _get(bus, 0) == 9
    assert _get(bus, 4) == 0x80 | 2  # 2 PM


def test_status_registers() -> None:
    bus = _bus(Rtc(clock=lambda: T))
    assert _get(bus, 0x0A) & 0x80 == 0  # never "update in progress"
    assert _get(bus, 0x0B) == 0x02
    assert _get(bus, 0x0D) == 0x80


def test_index_bit7_is_nmi_mask_not_index() -> None:
    rtc = Rtc(clock=lambda: T)
    bus = _bus(rtc)
    bus.pio_write(0x70, 1, 0x80 | 0x09)
    assert rtc.nmi_masked and bus.pio_read(0x71, 1) == 0x26


def test_guest_time_write_moves_the_clock_by_an_offset() -> None:
    now = [float(T)]
    bus = _bus(Rtc(clock=lambda: now[0]))
    bus.pio_write(0x70, 1, 0x09)
    bus.pio_write(0x71, 1, 0x30)  # year 2030
    now[0] += 60
    assert _get(bus, 0x09) == 0x30 and _get(bus, 0x02) == 0x06


def test_cmos_ram_holds_writes_and_memory_sizes() -> None:
    bus = _bus(Rtc(lowmem=256 << 20, highmem=1 << 30, clock=lambda: T))
    bus.pio_write(0x70, 1, 0x40)
    bus.pio_write(0x71, 1, 0xA5)
    assert _get(bus, 0x40) == 0xA5
    assert _get(bus, 0x15) | _get(bus, 0x16) << 8 == 640
    assert _get(bus, 0x34) | _get(bus, 0x35) << 8 == (240 << 20) // 65536
    assert _get(bus, 0x5B) | _get(bus, 0x5C) << 8 | _get(bus, 0x5D) << 16 == (1 << 30) // 65536
