"""acrn-dm's software loaders (devicemodel/core/sw_load_common.c: acrn_sw_load), one module each,
plus a 64-bit vmlinux loader.

Every loader is a pure function of the image bytes, the guest memory layout and a
:class:`GuestMemory` to write into; it returns a :class:`LoadResult` holding the BSP's
SET_VCPU_REGS argument and the decisions it took (addresses and sizes, printed by ``acrn run -v``).
No loader issues an ioctl, so every placement rule is testable without a VM.

Memory layout (:class:`MemoryLayout`, devicemodel/core/vmmapi.c: vm_setup_memory):
``lowmem = min(memsize, 2 GiB)`` at GPA 0,
``highmem = memsize - lowmem`` at GPA 4 GiB, and for firmware images a BIOS region of the image
size rounded up to 2 MiB that ends at 4 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from acrn.regs.model import VcpuRegs

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

#: acrn-dm's lowmem_limit (PCI_EMUL_MEMBASE32): RAM above it moves to 4 GiB.
LOWMEM_LIMIT: Final = 2 * GiB
#: acrn-dm's HIGHRAM_START_ADDR.
HIGHRAM_START: Final = 4 * GiB
#: Every acrn-dm memory region is made of 2 MiB huge pages.
HUGE_PAGE: Final = 2 * MiB


class LoaderError(ValueError):
    """An image that the loader refuses (acrn-dm prints ``SW_LOAD ERR`` and fails to start)."""


class GuestMemory(Protocol):
    """Guest-physical memory as a loader sees it."""

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` to guest-physical ``gpa`` (ValueError if it is not RAM)."""

    def read(self, gpa: int, size: int) -> bytes:
        """Read ``size`` bytes at guest-physical ``gpa``."""


@dataclass(frozen=True)
class MemoryLayout:
    """Where guest RAM lives, as acrn-dm lays it out (devicemodel/core/vmmapi.c: vm_setup_memory)."""

    lowmem: int
    highmem: int = 0
    biosmem: int = 0

    @classmethod
    def from_memsize(cls, memsize: int, biosmem: int = 0) -> MemoryLayout:
        """Split ``memsize`` bytes at acrn-dm's 2 GiB low-memory limit; sizes must be 2 MiB multiples."""
        if memsize <= 0 or memsize % HUGE_PAGE:
            raise LoaderError(f"memsize {memsize:#x} must be a positive multiple of 2 MiB (huge pages)")
        lowmem = min(memsize, LOWMEM_LIMIT)
        return cls(lowmem=lowmem, highmem=memsize - lowmem, biosmem=round_up(biosmem, HUGE_PAGE))

    @property
    def memsize(self) -> int:
        return self.lowmem + self.highmem

    def regions(self) -> list[tuple[int, int]]:
        """(gpa, size) of every RAM region acrn-dm maps with SET_MEMSEG, in its order."""
        out = [(0, self.lowmem)]
        if self.biosmem:
            out.append((HIGHRAM_START - self.biosmem, self.biosmem))
        if self.highmem:
            out.append((HIGHRAM_START, self.highmem))
        return out


@dataclass
class LoadResult:
    """What a loader produced: the BSP registers and a log of its placement decisions."""

    loader: str
    regs: VcpuRegs
    notes: list[str] = field(default_factory=list)
    #: Named guest-physical addresses the loader chose (kernel, zero_page, cmdline, ramdisk, gdt...).
    placements: dict[str, int] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.append(text)


def round_up(value: int, align: int) -> int:
    """``roundup2`` of acrn-dm: the next multiple of ``align`` (a power of two)."""
    return (value + align - 1) & ~(align - 1)


class SparseMemory:
    """Page-granular guest memory for tests and dry runs: RAM regions, pages allocated on write."""

    PAGE: Final = 4096

    def __init__(self, layout: MemoryLayout) -> None:
        self.layout = layout
        self._regions = layout.regions()
        self.pages: dict[int, bytearray] = {}

    def _check(self, gpa: int, size: int) -> None:
        for base, length in self._regions:
            if base <= gpa and gpa + size <= base + length:
                return
        raise ValueError(f"[{gpa:#x}, {gpa + size:#x}) is not guest RAM")

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        view = memoryview(data)
        while view:
            page, off = divmod(gpa, self.PAGE)
            n = min(len(view), self.PAGE - off)
            buf = self.pages.setdefault(page, bytearray(self.PAGE))
            buf[off : off + n] = view[:n]
            view = view[n:]
            gpa += n

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        out = bytearray()
        while size:
            page, off = divmod(gpa, self.PAGE)
            n = min(size, self.PAGE - off)
            buf = self.pages.get(page)
            out += buf[off : off + n] if buf is not None else bytes(n)
            size -= n
            gpa += n
        return bytes(out)


__all__ = [
    "GiB",
    "GuestMemory",
    "KiB",
    "LoadResult",
    "LoaderError",
    "MemoryLayout",
    "MiB",
    "SparseMemory",
    "round_up",
]
