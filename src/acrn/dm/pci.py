"""PCI configuration space as acrn-dm emulates it: per-function config data and the bus that routes
PCICFG requests to it.

The guest never reaches this through raw port I/O: the HSM kernel driver keeps 0xCF8 itself and
rewrites accesses to 0xCFC-0xCFF into PCICFG requests carrying bus, device, function and register
(``drivers/virt/acrn/ioreq.c: handle_cf8cfc``).  :class:`PciBus` is the device model's side of those
requests; it is the ``pci`` handler of :class:`acrn.dm.ioreq_loop.IoreqLoop`.

The access rules are acrn-dm's ``pci_cfgrw`` (inherited from bhyve):

* no function at the address: reads return all-ones (the ioreq loop writes 0xFFFFFFFF into the
  slot when the handler answers None), writes are dropped;
* an access whose size is not 1, 2 or 4, or that is not naturally aligned, or that lies beyond the
  256-byte conventional space, reads all-ones and writes nothing;
* writes to the command/status dword keep the read-only bits (everything but command bits 0-6 and
  8-10); writes to BARs and the expansion ROM of a function without them leave 0; the ID byte and
  next pointer of a capability are read-only (a 4-byte write over them keeps only its upper half);
* any other write is stored as it is, the ID registers included: acrn-dm has no read-only mask for
  the rest of the header, so a guest that writes the vendor ID reads its own value back.
"""

from __future__ import annotations

import threading
from typing import Final, Protocol

#: Standard header registers (PCI Local Bus 3.0, section 6.1).
PCIR_VENDOR: Final = 0x00
PCIR_DEVICE: Final = 0x02
PCIR_COMMAND: Final = 0x04
PCIR_STATUS: Final = 0x06
PCIR_REVID: Final = 0x08
PCIR_PROGIF: Final = 0x09
PCIR_SUBCLASS: Final = 0x0A
PCIR_CLASS: Final = 0x0B
PCIR_HDRTYPE: Final = 0x0E
PCIR_BAR0: Final = 0x10
PCIR_BAR_END: Final = 0x28
PCIR_BIOS: Final = 0x30
PCIR_CAP_PTR: Final = 0x34
PCIR_INTLINE: Final = 0x3C
PCIR_INTPIN: Final = 0x3D

PCIM_STATUS_CAPPRESENT: Final = 0x0010
PCIM_HDRTYPE_NORMAL: Final = 0x00
#: Bits of the command/status dword a write cannot change (acrn-dm ``pci_emul_cmdsts_write``).
CMDSTS_READONLY: Final = 0xFFFFF880

PCI_CONFIG_SIZE: Final = 256
PCI_DEVMAX: Final = 31
PCI_FUNCMAX: Final = 7
PCI_BUSMAX: Final = 255
PCI_ALL_ONES: Final = 0xFFFFFFFF


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


class PciFunction(Protocol):
    """One PCI function as the bus sees it."""

    def cfg_read(self, reg: int, size: int) -> int:
        """Read ``size`` bytes at ``reg`` (already checked: aligned, in range)."""

    def cfg_write(self, reg: int, size: int, value: int) -> None:
        """Write the low ``size`` bytes of ``value`` at ``reg`` (already checked)."""


class PciConfigSpace:
    """The 256-byte config data of one function with acrn-dm's write rules (module docstring)."""

    def __init__(self) -> None:
        self.data = bytearray(PCI_CONFIG_SIZE)
        #: Offsets of the capabilities, in list order.
        self.caps: list[int] = []
        #: Length of each capability (ID and next pointer included), by offset.
        self.cap_len: dict[int, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ raw access (no rules)
    def get(self, reg: int, size: int) -> int:
        return int.from_bytes(self.data[reg : reg + size], "little")

    def set(self, reg: int, size: int, value: int) -> None:
        self.data[reg : reg + size] = (value & _mask(size)).to_bytes(size, "little")

    def add_capability(self, cap_id: int, body: bytes) -> int:
        """Append a capability (ID, next pointer, ``body``) at the next dword after the last one."""
        if self.caps:
            last = self.caps[-1]
            off = (last + self.cap_len[last] + 3) & ~3
        else:
            off = 0x40
        length = 2 + len(body)
        if off + length > PCI_CONFIG_SIZE:
            raise ValueError("no room for another capability")
        self.set(off, 1, cap_id)
        self.set(off + 1, 1, 0)
        self.data[off + 2 : off + length] = body
        if self.caps:
            self.set(self.caps[-1] + 1, 1, off)
        else:
            self.set(PCIR_CAP_PTR, 1, off)
            self.set(PCIR_STATUS, 2, self.get(PCIR_STATUS, 2) | PCIM_STATUS_CAPPRESENT)
        self.caps.append(off)
        self.cap_len[off] = length
        return off

    def _cap_at(self, reg: int) -> int | None:
        for off in self.caps:
            if off <= reg < off + self.cap_len[off]:
                return off
        return None

    # ------------------------------------------------------------------ guest access
    def cfg_read(self, reg: int, size: int) -> int:
        with self._lock:
            return self.get(reg, size)

    def cfg_write(self, reg: int, size: int, value: int) -> None:
        value &= _mask(size)
        with self._lock:
            if PCIR_BAR0 <= reg < PCIR_BAR_END or PCIR_BIOS <= reg < PCIR_BIOS + 4:
                # No BARs and no ROM: the registers read back 0 whatever is written.
                return
            cap = self._cap_at(reg)
            if cap is not None:
                if reg in (cap, cap + 1):
                    if reg == cap and size == 4:
                        # A dword write over ID and next pointer: only its upper half lands.
                        reg, size, value = reg + 2, 2, value >> 16
                    else:
                        return
                self.set(reg, size, value)
                return
            if PCIR_COMMAND <= reg < PCIR_REVID:
                shift = (reg & 3) * 8
                readonly = (CMDSTS_READONLY >> shift) & _mask(size)
                value = (value & ~readonly) | (self.get(reg, size) & readonly)
            self.set(reg, size, value)


class PciBus:
    """The device model's PCI segment: (bus, device, function) -> function; answers PCICFG requests.

    It has the shape of :class:`acrn.dm.ioreq_loop.PciConfigHandler`: ``cfg_read`` returns None where
    nothing answers, and the ioreq loop then puts all-ones in the slot, as acrn-dm does.
    """

    def __init__(self) -> None:
        self._functions: dict[tuple[int, int, int], PciFunction] = {}
        self._lock = threading.Lock()

    def add(self, bus: int, dev: int, func: int, function: PciFunction) -> None:
        """Put ``function`` at bus:dev.func; ValueError if the address is taken or invalid."""
        if not (0 <= bus <= PCI_BUSMAX and 0 <= dev <= PCI_DEVMAX and 0 <= func <= PCI_FUNCMAX):
            raise ValueError(f"invalid PCI address {bus:02x}:{dev:02x}.{func}")
        with self._lock:
            if (bus, dev, func) in self._functions:
                raise ValueError(f"PCI address {bus:02x}:{dev:02x}.{func} is taken")
            self._functions[(bus, dev, func)] = function

    def remove(self, bus: int, dev: int, func: int) -> PciFunction:
        with self._lock:
            return self._functions.pop((bus, dev, func))

    def get(self, bus: int, dev: int, func: int) -> PciFunction | None:
        return self._functions.get((bus, dev, func))

    @staticmethod
    def _valid(reg: int, size: int) -> bool:
        # acrn-dm pci_cfgrw: sizes 1/2/4 only, naturally aligned, inside the conventional space.
        return size in (1, 2, 4) and reg % size == 0 and reg >= 0 and reg + size <= PCI_CONFIG_SIZE

    def cfg_read(self, bus: int, dev: int, func: int, reg: int, size: int) -> int | None:
        """The value read, or None (all-ones in the slot) when absent or the access is invalid."""
        function = self.get(bus, dev, func)
        if function is None or not self._valid(reg, size):
            return None
        return function.cfg_read(reg, size) & _mask(size)

    def cfg_write(self, bus: int, dev: int, func: int, reg: int, size: int, value: int) -> None:
        """Deliver a write; dropped when nothing answers or the access is invalid."""
        function = self.get(bus, dev, func)
        if function is None or not self._valid(reg, size):
            return
        function.cfg_write(reg, size, value & _mask(size))
