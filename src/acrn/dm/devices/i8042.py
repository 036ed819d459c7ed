"""The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).

Enough of an 8042 for Linux's probe (self-test 0xAA -> 0x55, port tests, the command byte read and
written with 0x20/0x60, the output port with 0xD0/0xD1, a keyboard that ACKs) and, above all, the
reset line: command **0xFE** written to port 0x64 pulses the CPU reset, which is how ``reboot=k``
resets a PC.  acrn-dm (``atkbdc.c``) turns it into a guest system reset; the device only reports
it through ``on_reset`` and the VMM decides (acrn-dm's reset sequence, or end the VM with
``--no-reboot``).  A write of the output port (0xD1) with bit 0 (the reset line) clear resets too.

Status register bits: 0 output buffer full, 1 input buffer full (never: commands complete at
once), 2 system flag (set once the self-test passed; firmware leaves it set), 3 last write was a
command, 5 the output byte came from the aux (mouse) port.  Interrupts: IRQ 1 for keyboard bytes
and IRQ 12 for aux bytes when enabled in the command byte, reported through ``irq(line, level)``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

DATA_PORT: Final = 0x60
STATUS_PORT: Final = 0x64
KBD_IRQ: Final = 1
AUX_IRQ: Final = 12

STS_OBF: Final = 0x01
STS_IBF: Final = 0x02
STS_SYS: Final = 0x04
STS_CMD: Final = 0x08
STS_AUXDATA: Final = 0x20

CTR_KBDINT: Final = 0x01
CTR_AUXINT: Final = 0x02
CTR_SYS: Final = 0x04
CTR_KBDDIS: Final = 0x10
CTR_AUXDIS: Final = 0x20
CTR_XLATE: Final = 0x40

CMD_READ_CTR: Final = 0x20
CMD_WRITE_CTR: Final = 0x60
CMD_AUX_DISABLE: Final = 0xA7
CMD_AUX_ENABLE: Final = 0xA8
CMD_AUX_TEST: Final = 0xA9
CMD_SELF_TEST: Final = 0xAA
CMD_KBD_TEST: Final = 0xAB
CMD_KBD_DISABLE: Final = 0xAD
CMD_KBD_ENABLE: Final = 0xAE
CMD_READ_OUTPORT: Final = 0xD0
CMD_WRITE_OUTPORT: Final = 0xD1
CMD_WRITE_KBD_OBUF: Final = 0xD2
CMD_WRITE_AUX_OBUF: Final = 0xD3
CMD_WRITE_AUX: Final = 0xD4
CMD_RESET: Final = 0xFE

OUTPORT_RESET_LINE: Final = 0x01  # 0 = CPU held in reset
OUTPORT_A20: Final = 0x02
SELF_TEST_OK: Final = 0x55
KBD_ACK: Final = 0xFA
KBD_BAT_OK: Final = 0xAA


class I8042:
    """One 8042.  ``on_reset()`` is called when the guest pulses the reset line."""

    def __init__(
        self,
        on_reset: Callable[[], None] | None = None,
        irq: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.on_reset = on_reset
        self.irq = irq
        self._lock = threading.Lock()
        self._out: deque[tuple[int, bool]] = deque()
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        """Power-on state as firmware leaves it: self-test passed, keyboard enabled, translation on."""
        with self._lock:
            self.ctr = CTR_KBDINT | CTR_SYS | CTR_XLATE
            self.outport = OUTPORT_RESET_LINE | OUTPORT_A20
            self.status = STS_SYS
            self._pending: int | None = None  # command waiting for its data byte
            self._out.clear()

    def attach(self, bus: IoBus) -> None:
        bus.register_pio(DATA_PORT, 1, _Port(self, DATA_PORT))
        bus.register_pio(STATUS_PORT, 1, _Port(self, STATUS_PORT))

    # ------------------------------------------------------------------ host side
    def feed(self, scancodes: bytes, aux: bool = False) -> None:
        """Queue bytes from the keyboard (or the aux device) for the guest."""
        with self._lock:
            for b in scancodes:
                self._out.append((b, aux))
            raise_irq = self._irq_line()
        self._signal(raise_irq)

    # ------------------------------------------------------------------ guest side
    def port_read(self, port: int) -> int:
        with self._lock:
            if port == STATUS_PORT:
                st = self.status & ~(STS_OBF | STS_AUXDATA)
                if self._out:
                    st |= STS_OBF | (STS_AUXDATA if self._out[0][1] else 0)
                return st
            value = self._out.popleft()[0] if self._out else 0
            line = self._irq_line()
        self._signal(line)
        return value

    def port_write(self, port: int, value: int) -> None:
        reset = False
        with self._lock:
            if port == STATUS_PORT:
                self.status |= STS_CMD
                reset = self._command(value)
            else:
                self.status &= ~STS_CMD
                reset = self._data(value)
            line = self._irq_line()
        self._signal(line)
        if reset:
            self.resets += 1
            if self.on_reset is not None:
                self.on_reset()

    # ------------------------------------------------------------------ controller logic (locked)
    def _reply(self, value: int, aux: bool = False) -> None:
        self._out.append((value & 0xFF, aux))

    def _command(self, cmd: int) -> bool:
        self._pending = None
        if cmd == CMD_READ_CTR:
            self._reply(self.ctr)
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX):
            self._pending = cmd
        elif cmd == CMD_AUX_DISABLE:
            self.ctr |= CTR_AUXDIS
        elif cmd == CMD_AUX_ENABLE:
            self.ctr &= ~CTR_AUXDIS
        elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._reply(0x00)  # interface OK
        elif cmd == CMD_SELF_TEST:
            self.status |= STS_SYS
            self._reply(SELF_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.ctr |= CTR_KBDDIS
        elif cmd == CMD_KBD_ENABLE:
            self.ctr &= ~CTR_KBDDIS
        elif cmd == CMD_READ_OUTPORT:
            self._reply(self.outport)
        elif cmd == CMD_RESET:
            return True
        return False

    def _data(self, value: int) -> bool:
        cmd, self._pending = self._pending, None
        if cmd == CMD_WRITE_CTR:
            self.ctr = value
            self.status = (self.status & ~STS_SYS) | (value & CTR_SYS)
        elif cmd == CMD_WRITE_OUTPORT:
            self.outport = value
            return not value & OUTPORT_RESET_LINE
        elif cmd == CMD_WRITE_KBD_OBUF:
            self._reply(value)
        elif cmd == CMD_WRITE_AUX_OBUF:
            self._reply(value, aux=True)
        elif cmd == CMD_WRITE_AUX:
            pass  # no mouse attached: the byte goes nowhere and nothing answers
        else:
            self._keyboard(value)
        return False

    def _keyboard(self, value: int) -> None:
        """A keyboard that acknowledges everything (enough for atkbd's probe)."""
        self._reply(KBD_ACK)
        if value == 0xFF:  # reset: ACK then basic assurance test passed
            self._reply(KBD_BAT_OK)
        elif value == 0xF2:  # identify: MF2 keyboard
            self._reply(0xAB)
            self._reply(0x83)

    def _irq_line(self) -> tuple[int, bool] | None:
        if not self._out:
            return None
        aux = self._out[0][1]
        enabled = self.ctr & (CTR_AUXINT if aux else CTR_KBDINT)
        return (AUX_IRQ if aux else KBD_IRQ, True) if enabled else None

    def _signal(self, line: tuple[int, bool] | None) -> None:
        # Edge-style pulse: the 8042 raises its line while a byte waits (ISA edge interrupts).
        if line is not None and self.irq is not None:
            self.irq(line[0], True)
            self.irq(line[0], False)


class _Port:
    """One of the two ports, as a bus device."""

    def __init__(self, dev: I8042, port: int) -> None:
        self.dev = dev
        self.port = port

    def read(self, offset: int, size: int) -> int:
        return self.dev.port_read(self.port)

    def write(self, offset: int, size: int, value: int) -> None:
        self.dev.port_write(self.port, value & 0xFF)
