"""The guest e820 memory map acrn-dm builds (devicemodel/core/sw_load_common.c: ``acrn_create_e820_table``).

Seven template entries, filled in from the memory layout, then every zero-length entry removed::

    0  [0, 0xA0000)                RAM
    1  [1 MiB, lowmem part 1)      RAM   up to the first reserved hole or lowmem
    2  vSSRAM                      reserved (without software SRAM: base = entry 3's base, length 0)
    3  GPU DSM/OpRegion            reserved (without GPU passthrough: base = lowmem_limit, length 0)
    4  lowmem part 2               RAM if lowmem extends past the GPU region, else reserved length 0
    5  [0xE0000000, 4 GiB)         reserved (PCI ECAM and 32-bit MMIO)
    6  [4 GiB, 4 GiB + highmem)    RAM if highmem > 0

[0xA0000, 1 MiB) is a hole; the ACPI tables sit in it at 0xF2400.  (acrn-dm's removal loop stops
one entry short, so with highmem 0 it leaves a zero-length reserved entry at 4 GiB in the table;
its comment states the intent, "zero-length entries are removed", which is what is built here.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from acrn.dm.loaders import HIGHRAM_START, LOWMEM_LIMIT, MiB

E820_TYPE_RAM: Final = 1
E820_TYPE_RESERVED: Final = 2
E820_TYPE_ACPI_RECLAIM: Final = 3
E820_TYPE_ACPI_NVS: Final = 4
E820_TYPE_UNUSABLE: Final = 5

#: PCI_EMUL_ECFG_BASE: the reserved range from here to 4 GiB.
PCI_ECFG_BASE: Final = 0xE0000000
#: Size of one packed ``struct e820_entry {u64 base; u64 length; u32 type;}``.
E820_ENTRY_SIZE: Final = 20
#: boot_params has room for 128 entries (E820_MAX_ENTRIES_ZEROPAGE).
E820_MAX_ZEROPAGE: Final = 128
#: acrn-dm's OVMF loader puts "820\0", a u32 count and the packed entries here.
OVMF_E820_GPA: Final = 0xEF000
OVMF_E820_SIGNATURE: Final = b"820\0"

_ENTRY = struct.Struct("<QQI")


@dataclass(frozen=True)
class E820Entry:
    base: int
    length: int
    type: int

    @property
    def end(self) -> int:
        return self.base + self.length

    def pack(self) -> bytes:
        return _ENTRY.pack(self.base, self.length, self.type)

    def __str__(self) -> str:
        names = {1: "RAM", 2: "reserved", 3: "ACPI", 4: "NVS", 5: "unusable"}
        return f"[{self.base:#x}, {self.end:#x}) {names.get(self.type, str(self.type))}"


def acrn_e820(
    lowmem: int,
    highmem: int = 0,
    *,
    lowmem_limit: int = LOWMEM_LIMIT,
    vssram: tuple[int, int] | None = None,
    gpu_rsvmem: tuple[int, int] | None = None,
) -> list[E820Entry]:
    """acrn-dm's table for a guest with ``lowmem`` bytes at 0 and ``highmem`` at 4 GiB.

    ``vssram`` / ``gpu_rsvmem``: (base, size) of the software-SRAM and GPU reserved regions when
    those devices are passed through (absent by default, as in every pyacrn guest).
    """
    # Entry 3 (GPU) first: entry 2 (vSSRAM) defaults to its base.
    gpu_base, gpu_len = gpu_rsvmem if gpu_rsvmem else (lowmem_limit, 0)
    ss_base, ss_len = vssram if vssram else (gpu_base, 0)
    e = [
        [0, 0xA0000, E820_TYPE_RAM],
        [1 * MiB, 0, E820_TYPE_RAM],
        [ss_base, ss_len, E820_TYPE_RESERVED],
        [gpu_base, gpu_len, E820_TYPE_RESERVED],
        [0, 0, E820_TYPE_RESERVED],
        [PCI_ECFG_BASE, HIGHRAM_START - PCI_ECFG_BASE, E820_TYPE_RESERVED],
        [HIGHRAM_START, 0, E820_TYPE_RESERVED],
    ]
    if lowmem <= e[2][0]:
        e[1][1] = lowmem - e[1][0]
    else:
        e[1][1] = e[2][0] - e[1][0]
        e[4][0] = e[3][0] + e[3][1]
        if lowmem > e[4][0]:
            e[4][1] = lowmem - e[4][0]
            e[4][2] = E820_TYPE_RAM
    if highmem > 0:
        e[6][1] = highmem
        e[6][2] = E820_TYPE_RAM
    return [E820Entry(b, n, t) for b, n, t in e if n != 0]


def pack_e820(entries: list[E820Entry]) -> bytes:
    """The packed array as it sits in boot_params.e820_table (0x2D0)."""
    if len(entries) > E820_MAX_ZEROPAGE:
        raise ValueError(f"{len(entries)} e820 entries do not fit in the zero page (max {E820_MAX_ZEROPAGE})")
    return b"".join(e.pack() for e in entries)


def unpack_e820(data: bytes, count: int) -> list[E820Entry]:
    """The inverse of :func:`pack_e820` for ``count`` entries."""
    return [E820Entry(*_ENTRY.unpack_from(data, i * E820_ENTRY_SIZE)) for i in range(count)]


def ovmf_e820_blob(entries: list[E820Entry]) -> bytes:
    """What acrn-dm's OVMF loader writes at 0xEF000: signature "820\\0", u32 count, entries."""
    return OVMF_E820_SIGNATURE + struct.pack("<I", len(entries)) + b"".join(e.pack() for e in entries)
