"""The device model's I/O bus: port-I/O and MMIO ranges mapped to device objects (kvmtool style).

Each device registers the ranges it decodes and nothing else knows about it.  An access goes to the
device whose range contains its *first* byte, with the offset from the start of that range (acrn-dm
looks port handlers up per port and MMIO handlers by the address, the same rule).

Unclaimed accesses behave like an empty ISA/PCI bus: reads return all-ones for the access size,
writes are dropped.  Both are counted (per port or address) for ``-v`` reports.  The ioreq loop
needs to tell "unclaimed" apart from "a device answered all-ones" (acrn-dm writes a full 32-bit or
64-bit all-ones value into the slot for unclaimed reads, ``devicemodel/core/inout.c: emulate_inout``), so
the ``try_*`` methods return None / False for an unclaimed access.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Final, Protocol

PIO_SPACE: Final = 0x10000
MMIO_SPACE: Final = 1 << 64
PIO_SIZES: Final = (1, 2, 4)
MMIO_SIZES: Final = (1, 2, 4, 8)


class BusDevice(Protocol):
    """What a device offers the bus: accesses relative to the start of its registered range."""

    def read(self, offset: int, size: int) -> int:
        """Return ``size`` bytes read at ``offset`` (upper bits beyond the size are ignored)."""

    def write(self, offset: int, size: int, value: int) -> None:
        """Write the low ``size`` bytes of ``value`` at ``offset``."""


@dataclass(frozen=True)
class BusRange:
    """One registered range: [start, start + length) decoded by ``device``."""

    start: int
    length: int
    device: BusDevice

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.start + self.length


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


class _Space:
    """A sorted, non-overlapping set of ranges in one address space, with unclaimed-access counters."""

    def __init__(self, kind: str, limit: int, sizes: tuple[int, ...]) -> None:
        self.kind = kind
        self.limit = limit
        self.sizes = sizes
        self._starts: list[int] = []
        self._ranges: list[BusRange] = []
        self._lock = threading.Lock()
        self.unhandled_reads: Counter[int] = Counter()
        self.unhandled_writes: Counter[int] = Counter()

    def register(self, start: int, length: int, device: BusDevice) -> BusRange:
        if length <= 0:
            raise ValueError(f"{self.kind} range at {start:#x}: length must be positive, got {length}")
        if start < 0 or start + length > self.limit:
            raise ValueError(
                f"{self.kind} range [{start:#x}, {start + length:#x}) is outside the address space"
            )
        new = BusRange(start, length, device)
        with self._lock:
            i = bisect.bisect_left(self._starts, start)
            for neighbour in self._ranges[max(i - 1, 0) : i + 1]:
                if neighbour.start < new.end and new.start < neighbour.end:
                    raise ValueError(
                        f"{self.kind} range [{start:#x}, {new.end:#x}) overlaps "
                        f"[{neighbour.start:#x}, {neighbour.end:#x}) of {type(neighbour.device).__name__}"
                    )
            self._starts.insert(i, start)
            self._ranges.insert(i, new)
        return new

    def unregister(self, start: int) -> BusDevice:
        with self._lock:
            i = bisect.bisect_left(self._starts, start)
            if i == len(self._starts) or self._starts[i] != start:
                raise KeyError(f"no {self.kind} range starts at {start:#x}")
            del self._starts[i]
            return self._ranges.pop(i).device

    def find(self, address: int) -> BusRange | None:
        # Lock-free read: list replacement is atomic under the GIL, and registration normally
        # happens before the vCPUs run.
        starts, ranges = self._starts, self._ranges
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < ranges[i].end:
            return ranges[i]
        return None

    def check(self, address: int, size: int) -> None:
        if size not in self.sizes:
            raise ValueError(f"{self.kind} access size must be one of {self.sizes}, got {size}")
        if not 0 <= address < self.limit:
            raise ValueError(f"{self.kind} address {address:#x} is outside the address space")

    def ranges(self) -> list[BusRange]:
        return list(self._ranges)


class IoBus:
    """Port-I/O and MMIO dispatch to registered devices."""

    def __init__(self) -> None:
        self._pio = _Space("PIO", PIO_SPACE, PIO_SIZES)
        self._mmio = _Space("MMIO", MMIO_SPACE, MMIO_SIZES)

    # ------------------------------------------------------------------ registration
    def register_pio(self, start: int, length: int, device: BusDevice) -> BusRange:
        """Claim ports [start, start+length); ValueError if any port is already claimed."""
        return self._pio.register(start, length, device)

    def register_mmio(self, start: int, length: int, device: BusDevice) -> BusRange:
        """Claim guest-physical [start, start+length); ValueError on overlap."""
        return self._mmio.register(start, length, device)

    def unregister_pio(self, start: int) -> BusDevice:
        """Release the port range that starts at ``start`` (KeyError if none)."""
        return self._pio.unregister(start)

    def unregister_mmio(self, start: int) -> BusDevice:
        """Release the MMIO range that starts at ``start`` (KeyError if none)."""
        return self._mmio.unregister(start)

    def pio_ranges(self) -> list[BusRange]:
        return self._pio.ranges()

    def mmio_ranges(self) -> list[BusRange]:
        return self._mmio.ranges()

    # ------------------------------------------------------------------ port I/O
    def try_pio_read(self, port: int, size: int) -> int | None:
        """The device's answer masked to ``size`` bytes, or None (counted) if no device claims it."""
        return _read(self._pio, port, size)

    def try_pio_write(self, port: int, size: int, value: int) -> bool:
        """Deliver a write; False (counted) if no device claims the port."""
        return _write(self._pio, port, size, value)

    def pio_read(self, port: int, size: int) -> int:
        """A port read as the guest sees it: all-ones for the size when unclaimed."""
        v = self.try_pio_read(port, size)
        return _mask(size) if v is None else v

    def pio_write(self, port: int, size: int, value: int) -> None:
        """A port write; unclaimed writes are dropped (and counted)."""
        self.try_pio_write(port, size, value)

    # ------------------------------------------------------------------ MMIO
    def try_mmio_read(self, address: int, size: int) -> int | None:
        return _read(self._mmio, address, size)

    def try_mmio_write(self, address: int, size: int, value: int) -> bool:
        return _write(self._mmio, address, size, value)

    def mmio_read(self, address: int, size: int) -> int:
        """An MMIO read: all-ones for the size when unclaimed."""
        v = self.try_mmio_read(address, size)
        return _mask(size) if v is None else v

    def mmio_write(self, address: int, size: int, value: int) -> None:
        self.try_mmio_write(address, size, value)

    # ------------------------------------------------------------------ statistics
    @property
    def unhandled_pio_reads(self) -> Counter[int]:
        """Unclaimed port reads, per port."""
        return self._pio.unhandled_reads

    @property
    def unhandled_pio_writes(self) -> Counter[int]:
        return self._pio.unhandled_writes

    @property
    def unhandled_mmio_reads(self) -> Counter[int]:
        return self._mmio.unhandled_reads

    @property
    def unhandled_mmio_writes(self) -> Counter[int]:
        return self._mmio.unhandled_writes

    def unhandled_report(self) -> list[str]:
        """One line per unclaimed port/address, most frequent first (for ``-v``)."""
        lines = []
        for space in (self._pio, self._mmio):
            for what, counter in (("read", space.unhandled_reads), ("write", space.unhandled_writes)):
                for addr, n in counter.most_common():
                    lines.append(f"unhandled {space.kind} {what} at {addr:#x}: {n}")
        return lines


def _read(space: _Space, address: int, size: int) -> int | None:
    space.check(address, size)
    r = space.find(address)
    if r is None:
        space.unhandled_reads[address] += 1
        return None
    return r.device.read(address - r.start, size) & _mask(size)


def _write(space: _Space, address: int, size: int, value: int) -> bool:
    space.check(address, size)
    r = space.find(address)
    if r is None:
        space.unhandled_writes[address] += 1
        return False
    r.device.write(address - r.start, size, value & _mask(size))
    return True
