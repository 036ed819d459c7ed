"""ACPI fixed hardware as acrn-dm's ``pm.c`` provides it: SMI command, PM1 event/control, PM timer, reset.

Ports (the values acrn-dm's FADT publishes, :mod:`acrn.dm.acpi`):

* 0xB2 SMI_CMD: writing ACPI_ENABLE (0xA0) sets SCI_EN in PM1 control, ACPI_DISABLE (0xA1) clears it.
* 0x400 PM1a_EVT_BLK: PM1 status (write 1 to clear) at 0x400, PM1 enable at 0x402.
* 0x404 PM1a_CNT_BLK: PM1 control.  A write with SLP_EN (bit 13) and SLP_TYP (bits 12:10) = 5, the
  value of the DSDT's ``\\_S5`` package, is soft-off: ``on_poweroff()`` is called and the VMM ends
  the VM with status 0.  SLP_EN is write-only (reads as 0).
* 0x408 PM_TMR_BLK: the ACPI PM timer, 32 bits wide (FADT TMR_VAL_EXT), counting at 3.579545 MHz
  from the host's monotonic clock.
* 0xCF9 the reset control register (FADT RESET_REG, value 6): a write with RST_CPU (bit 2) calls
  ``on_reset()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

SMI_CMD_PORT: Final = 0xB2
ACPI_ENABLE: Final = 0xA0
ACPI_DISABLE: Final = 0xA1
PM1A_EVT_PORT: Final = 0x400
PM1A_EVT_LEN: Final = 4
PM1A_CNT_PORT: Final = 0x404
PM1A_CNT_LEN: Final = 2
PM_TMR_PORT: Final = 0x408
PM_TMR_LEN: Final = 4
RESET_PORT: Final = 0xCF9
RESET_VALUE: Final = 0x06
SCI_IRQ: Final = 9

PM1_SCI_EN: Final = 0x0001
PM1_SLP_TYP_SHIFT: Final = 10
PM1_SLP_TYP_MASK: Final = 0x7 << PM1_SLP_TYP_SHIFT
PM1_SLP_EN: Final = 0x2000
#: SLP_TYP of \_S5 in the DSDT (acrn-dm: Package () { 0x05, Zero }).
SLP_TYP_S5: Final = 5
PM_TIMER_HZ: Final = 3579545
RST_CPU: Final = 0x04


class AcpiPm:
    """The ACPI PM registers of one VM."""

    def __init__(
        self,
        on_poweroff: Callable[[], None] | None = None,
        on_reset: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_poweroff = on_poweroff
        self.on_reset = on_reset
        self.clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self.pm1_status = 0
        self.pm1_enable = 0
        self.pm1_control = 0
        self.poweroffs = 0

    def attach(self, bus: IoBus) -> None:
        bus.register_pio(SMI_CMD_PORT, 1, _Handler(self._smi_read, self._smi_write))
        bus.register_pio(PM1A_EVT_PORT, PM1A_EVT_LEN, _Handler(self._evt_read, self._evt_write))
        bus.register_pio(PM1A_CNT_PORT, PM1A_CNT_LEN, _Handler(self._cnt_read, self._cnt_write))
        bus.register_pio(PM_TMR_PORT, PM_TMR_LEN, _Handler(self._tmr_read, _ignore))
        bus.register_pio(RESET_PORT, 1, _Handler(lambda o, s: 0, self._reset_write))

    @property
    def timer(self) -> int:
        """The PM timer's current count (32 bits)."""
        return int((self.clock() - self._t0) * PM_TIMER_HZ) & 0xFFFFFFFF

    def _smi_read(self, offset: int, size: int) -> int:
        return 0

    def _smi_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if value & 0xFF == ACPI_ENABLE:
                self.pm1_control |= PM1_SCI_EN
            elif value & 0xFF == ACPI_DISABLE:
                self.pm1_control &= ~PM1_SCI_EN

    def _evt_read(self, offset: int, size: int) -> int:
        regs = self.pm1_status | (self.pm1_enable << 16)
        return (regs >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _evt_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            wide = (value & ((1 << (8 * size)) - 1)) << (8 * offset)
            self.pm1_status &= ~(wide & 0xFFFF)  # write 1 to clear
            if offset + size > 2:
                mask = (((1 << (8 * size)) - 1) << (8 * offset)) >> 16
                self.pm1_enable = (self.pm1_enable & ~mask) | ((wide >> 16) & mask)

    def _cnt_read(self, offset: int, size: int) -> int:
        return ((self.pm1_control & ~PM1_SLP_EN) >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _cnt_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            mask = ((1 << (8 * size)) - 1) << (8 * offset)
            new = (self.pm1_control & ~mask) | ((value << (8 * offset)) & mask)
            sleep = bool(new & PM1_SLP_EN)
            slp_typ = (new & PM1_SLP_TYP_MASK) >> PM1_SLP_TYP_SHIFT
            self.pm1_control = new & ~PM1_SLP_EN
        if sleep and slp_typ == SLP_TYP_S5:
            self.poweroffs += 1
            if self.on_poweroff is not None:
                self.on_poweroff()

    def _tmr_read(self, offset: int, size: int) -> int:
        return (self.timer >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _reset_write(self, offset: int, size: int, value: int) -> None:
        if value & RST_CPU and self.on_reset is not None:
            self.on_reset()


def _ignore(offset: int, size: int, value: int) -> None:
    return None


class _Handler:
    def __init__(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        self.read = read
        self.write = write
