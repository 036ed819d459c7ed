"""A 16550A UART (COM1 at 0x3F8, IRQ 4 by default), modelled to the level Linux's 8250 driver probes.

Registers (offset from the base; as in Linux's ``include/uapi/linux/serial_reg.h``)::

    0  RBR (read) / THR (write); DLL when LCR.DLAB      4  MCR
    1  IER; DLM when LCR.DLAB                           5  LSR (read only)
    2  IIR (read) / FCR (write)                         6  MSR (read only)
    3  LCR                                              7  SCR

Transmission is instantaneous: every byte written to THR goes to the ``output`` sink at once, so
LSR always reports THRE|TEMT (0x60) and the THR-empty interrupt becomes pending right after each
write.  Input comes from :meth:`Uart16550.feed` into an unbounded receive queue (a 16550's FIFO
holds 16 bytes; the queue stands for the FIFO plus the host-side buffer, so there is no overrun).

Interrupts (IIR priorities, highest first): received data available (0x04, IER bit 0), THR empty
(0x02, IER bit 1), modem status (0x00, IER bit 3); none = 0x01.  Reading IIR while it reports THR
empty clears that condition, as does writing THR; enabling IER.THRI while THR is empty makes it
pending at once (Linux's THRE test in ``serial8250_do_startup`` depends on this edge).  The line
is reported through ``irq(level)`` whenever the "interrupt pending" state changes; callbacks are
made outside the device lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

COM1_BASE: Final = 0x3F8
COM1_IRQ: Final = 4
UART_PORTS: Final = 8

# Register offsets.
RBR: Final = 0  # also THR, DLL
IER: Final = 1  # also DLM
IIR: Final = 2  # FCR on write
LCR: Final = 3
MCR: Final = 4
LSR: Final = 5
MSR: Final = 6
SCR: Final = 7

IER_RDI: Final = 0x01
IER_THRI: Final = 0x02
IER_RLSI: Final = 0x04
IER_MSI: Final = 0x08
IER_MASK: Final = 0x0F

IIR_NO_INT: Final = 0x01
IIR_MSI: Final = 0x00
IIR_THRI: Final = 0x02
IIR_RDI: Final = 0x04
IIR_FIFO_ENABLED: Final = 0xC0

FCR_ENABLE_FIFO: Final = 0x01
FCR_CLEAR_RCVR: Final = 0x02
FCR_CLEAR_XMIT: Final = 0x04

LCR_DLAB: Final = 0x80

MCR_DTR: Final = 0x01
MCR_RTS: Final = 0x02
MCR_OUT1: Final = 0x04
MCR_OUT2: Final = 0x08
MCR_LOOP: Final = 0x10
MCR_MASK: Final = 0x1F

LSR_DR: Final = 0x01
LSR_THRE: Final = 0x20
LSR_TEMT: Final = 0x40

MSR_DCTS: Final = 0x01
MSR_DDSR: Final = 0x02
MSR_TERI: Final = 0x04
MSR_DDCD: Final = 0x08
MSR_DELTA_MASK: Final = 0x0F
MSR_CTS: Final = 0x10
MSR_DSR: Final = 0x20
MSR_RI: Final = 0x40
MSR_DCD: Final = 0x80

#: Modem lines seen when not in loopback: a connected terminal (carrier, data set and clear to send).
MSR_CONNECTED: Final = MSR_DCD | MSR_DSR | MSR_CTS
#: Reset divisor: 115200 / 12 = 9600 baud.
DEFAULT_DIVISOR: Final = 0x000C


def _loopback_status(mcr: int) -> int:
    """MSR status bits in loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD (16550 datasheet)."""
    status = 0
    if mcr & MCR_DTR:
        status |= MSR_DSR
    if mcr & MCR_RTS:
        status |= MSR_CTS
    if mcr & MCR_OUT1:
        status |= MSR_RI
    if mcr & MCR_OUT2:
        status |= MSR_DCD
    return status


class Uart16550:
    """One 16550A.  ``output`` receives transmitted bytes; ``irq`` the interrupt line level."""

    def __init__(
        self,
        output: Callable[[bytes], None] | None = None,
        irq: Callable[[bool], None] | None = None,
    ) -> None:
        self.output = output
        self.irq = irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        """Power-on register values (also used by a VM reset)."""
        with self._lock:
            self.ier = 0
            self.lcr = 0x03  # 8N1, as firmware leaves it and vm-superio resets it
            self.mcr = MCR_OUT2
            self.fcr = 0
            self.scr = 0
            self.divisor = DEFAULT_DIVISOR
            self.msr_status = MSR_CONNECTED
            self.msr_delta = 0
            self.thr_ipending = False
            self._rx.clear()
            self._irq_level = False

    def attach(self, bus: IoBus, base: int = COM1_BASE) -> None:
        """Claim the 8 ports at ``base``."""
        bus.register_pio(base, UART_PORTS, self)

    # ------------------------------------------------------------------ host side
    def feed(self, data: bytes) -> None:
        """Queue received bytes (keyboard input); raises the RDA interrupt if enabled."""
        with self._lock:
            self._rx.extend(data)
            level = self._update_irq()
        self._signal(level)

    @property
    def rx_pending(self) -> int:
        """Bytes received and not yet read by the guest."""
        return len(self._rx)

    @property
    def irq_level(self) -> bool:
        """The current level of the interrupt line."""
        return self._irq_level

    # ------------------------------------------------------------------ guest side
    def read(self, offset: int, size: int) -> int:
        # Wider accesses are treated as byte accesses to the first register.
        with self._lock:
            value = self._read(offset & 7)
            level = self._update_irq()
        self._signal(level)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        out: bytes | None
        with self._lock:
            out = self._write(offset & 7, value & 0xFF)
            level = self._update_irq()
        if out is not None and self.output is not None:
            self.output(out)
        self._signal(level)

    # ------------------------------------------------------------------ register logic (locked)
    def _dlab(self) -> bool:
        return bool(self.lcr & LCR_DLAB)

    def _lsr(self) -> int:
        return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)

    def _msr_current_status(self) -> int:
        return _loopback_status(self.mcr) if self.mcr & MCR_LOOP else self.msr_status

    def _interrupt_id(self) -> int:
        if self.ier & IER_RDI and self._rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _read(self, reg: int) -> int:
        if reg == RBR:
            if self._dlab():
                return self.divisor & 0xFF
            return self._rx.popleft() if self._rx else 0
        if reg == IER:
            return (self.divisor >> 8) if self._dlab() else self.ier
        if reg == IIR:
            iid = self._interrupt_id()
            if iid == IIR_THRI:
                # Reading IIR acknowledges the THR-empty interrupt it reports.
                self.thr_ipending = False
            return iid | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE_FIFO else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return self._lsr()
        if reg == MSR:
            value = self._msr_current_status() | self.msr_delta
            self.msr_delta = 0
            return value
        return self.scr

    def _write(self, reg: int, value: int) -> bytes | None:
        if reg == RBR:
            if self._dlab():
                self.divisor = (self.divisor & 0xFF00) | value
                return None
            self.thr_ipending = True  # the byte leaves at once: THR is empty again
            if self.mcr & MCR_LOOP:
                self._rx.append(value)  # loopback: TX feeds RX, nothing reaches the line
                return None
            return bytes((value,))
        if reg == IER:
            if self._dlab():
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                return None
            new = value & IER_MASK
            if (new ^ self.ier) & IER_THRI:
                # THR is always empty here, so enabling THRI raises it at once; disabling drops it.
                self.thr_ipending = bool(new & IER_THRI)
            self.ier = new
            return None
        if reg == IIR:
            if (value ^ self.fcr) & FCR_ENABLE_FIFO or value & FCR_CLEAR_RCVR:
                self._rx.clear()  # changing the FIFO mode resets both FIFOs
            self.fcr = value & ~(FCR_CLEAR_RCVR | FCR_CLEAR_XMIT)
            return None
        if reg == LCR:
            self.lcr = value
            return None
        if reg == MCR:
            before = self._msr_current_status()
            self.mcr = value & MCR_MASK
            self._note_msr_change(before, self._msr_current_status())
            return None
        if reg == SCR:
            self.scr = value
        # LSR and MSR are read-only.
        return None

    def _note_msr_change(self, before: int, after: int) -> None:
        changed = before ^ after
        if changed & MSR_CTS:
            self.msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_delta |= MSR_DDSR
        if changed & MSR_DCD:
            self.msr_delta |= MSR_DDCD
        if before & MSR_RI and not after & MSR_RI:
            self.msr_delta |= MSR_TERI  # trailing edge of RI only

    def _update_irq(self) -> bool | None:
        """The new line level if it changed, else None."""
        level = self._interrupt_id() != IIR_NO_INT
        if level == self._irq_level:
            return None
        self._irq_level = level
        return level

    def _signal(self, level: bool | None) -> None:
        if level is not None and self.irq is not None:
            self.irq(level)
