"""The MC146818 RTC and CMOS RAM at ports 0x70 (index) and 0x71 (data), clocked by the host.

Time registers (0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 weekday, 0x07 day, 0x08 month,
0x09 year, 0x32 century) show the host's UTC time plus an offset that guest writes adjust, in BCD
unless register B's DM bit (0x04) asks for binary, and in 24-hour mode unless register B bit 1 is
clear (then hours 1-12 with bit 7 = PM).  Register A reports a 32.768 kHz divider and never
"update in progress"; register B resets to 24-hour BCD; C (interrupt flags) reads 0; D reports
a valid battery (VRT, 0x80).  Bit 7 of the index write is the NMI mask and not part of the index.

CMOS RAM holds what firmware reads about memory, as acrn-dm's ``rtc.c`` fills it: base memory
640 KiB (0x15-0x16), extended memory in KiB above 1 MiB capped at 0xFFFF (0x17-0x18 and 0x30-0x31),
64 KiB blocks between 16 MiB and lowmem (0x34-0x35) and above 4 GiB (0x5B-0x5D).
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

INDEX_PORT: Final = 0x70
DATA_PORT: Final = 0x71
RTC_IRQ: Final = 8

SEC: Final = 0x00
MIN: Final = 0x02
HOUR: Final = 0x04
WDAY: Final = 0x06
MDAY: Final = 0x07
MONTH: Final = 0x08
YEAR: Final = 0x09
REG_A: Final = 0x0A
REG_B: Final = 0x0B
REG_C: Final = 0x0C
REG_D: Final = 0x0D
CENTURY: Final = 0x32

REG_A_DIVIDER: Final = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
REG_B_24H: Final = 0x02
REG_B_DM_BINARY: Final = 0x04
REG_B_SET: Final = 0x80
REG_D_VRT: Final = 0x80

_TIME_REGS: Final = (SEC, MIN, HOUR, WDAY, MDAY, MONTH, YEAR, CENTURY)


def bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


class Rtc:
    """RTC + 128 bytes of CMOS.  ``clock()`` gives host UTC seconds (a parameter for tests)."""

    def __init__(self, lowmem: int = 0, highmem: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.cmos = bytearray(128)
        self.index = 0
        self.nmi_masked = False
        self.offset = 0.0  # guest time - host time, changed by guest writes of time registers
        self.cmos[REG_A] = REG_A_DIVIDER
        self.cmos[REG_B] = REG_B_24H
        self.cmos[REG_D] = REG_D_VRT
        self._set_memory(lowmem, highmem)

    def _set_memory(self, lowmem: int, highmem: int) -> None:
        c = self.cmos
        c[0x15], c[0x16] = 640 & 0xFF, 640 >> 8
        ext_kib = min(max(lowmem - (1 << 20), 0) // 1024, 0xFFFF)
        c[0x17], c[0x18] = ext_kib & 0xFF, ext_kib >> 8
        c[0x30], c[0x31] = ext_kib & 0xFF, ext_kib >> 8
        blocks16 = min(max(lowmem - (16 << 20), 0) // 65536, 0xFFFF)
        c[0x34], c[0x35] = blocks16 & 0xFF, blocks16 >> 8
        blocks_high = highmem // 65536
        c[0x5B], c[0x5C], c[0x5D] = blocks_high & 0xFF, (blocks_high >> 8) & 0xFF, (blocks_high >> 16) & 0xFF

    def attach(self, bus: IoBus) -> None:
        bus.register_pio(INDEX_PORT, 2, self)

    # ------------------------------------------------------------------ bus device
    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        with self._lock:
            return self._read_reg(self.index)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == 0:
                self.nmi_masked = bool(value & 0x80)
                self.index = value & 0x7F
            else:
                self._write_reg(self.index, value)

    # ------------------------------------------------------------------ registers (locked)
    def _now(self) -> time.struct_time:
        return time.gmtime(self.clock() + self.offset)

    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM_BINARY else bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM_BINARY else from_bcd(value)

    def _read_reg(self, reg: int) -> int:
        if reg not in _TIME_REGS:
            if reg == REG_C:
                return 0
            return self.cmos[reg]
        t = self._now()
        if reg == SEC:
            return self._encode(min(t.tm_sec, 59))
        if reg == MIN:
            return self._encode(t.tm_min)
        if reg == HOUR:
            if self.cmos[REG_B] & REG_B_24H:
                return self._encode(t.tm_hour)
            h12 = t.tm_hour % 12 or 12
            return self._encode(h12) | (0x80 if t.tm_hour >= 12 else 0)
        if reg == WDAY:
            return self._encode((t.tm_wday + 1) % 7 + 1)  # 1 = Sunday
        if reg == MDAY:
            return self._encode(t.tm_mday)
        if reg == MONTH:
            return self._encode(t.tm_mon)
        if reg == YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)

    def _write_reg(self, reg: int, value: int) -> None:
        if reg in (REG_C, REG_D):
            return  # read-only
        if reg not in _TIME_REGS:
            self.cmos[reg] = value
            return
        t = self._now()
        fields = [t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec]
        if reg == HOUR and not self.cmos[REG_B] & REG_B_24H:
            h = self._decode(value & 0x7F) % 12
            v = h + 12 if value & 0x80 else h
        else:
            v = self._decode(value)
        if reg == SEC:
            fields[5] = v
        elif reg == MIN:
            fields[4] = v
        elif reg == HOUR:
            fields[3] = v
        elif reg == MDAY:
            fields[2] = v
        elif reg == MONTH:
            fields[1] = v
        elif reg == YEAR:
            fields[0] = t.tm_year // 100 * 100 + v
        elif reg == CENTURY:
            fields[0] = v * 100 + t.tm_year % 100
        else:
            return  # the weekday follows from the date
        try:
            target = calendar.timegm(
                (fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], 0, 0, 0)
            )
        except (ValueError, OverflowError):
            return
        self.offset = target - self.clock()
