"""The 64-bit boot-protocol loader for an uncompressed vmlinux (Documentation/arch/x86/boot.rst)."""

from __future__ import annotations

import struct

import pytest

from acrn.arch import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from acrn.dm.loaders import GiB, KiB, LoaderError, MemoryLayout, MiB, SparseMemory
from acrn.dm.loaders import zeropage as zp
from acrn.dm.loaders.vmlinux import GDT_ENTRIES, GDT_GPA, PD_GPA, PDPT_GPA, PML4_GPA, load_vmlinux

LOWMEM = 128 * MiB
VBASE = 0xFFFFFFFF81000000


def elf64(
    entry: int = 0x1000000, paddr: int = 0x1000000, body: bytes = b"\xf4" * 64, memsz: int = 0x2000
) -> bytes:
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", out, 16, 2, 62, 1, entry, 0x40, 0, 0, 0x40, 56, 1, 64, 0, 0)
    struct.pack_into("<IIQQQQQQ", out, 0x40, 1, 7, 0x100, VBASE, paddr, len(body), memsz, 0x200000)
    return bytes(out) + body


def test_segments_load_at_physical_address() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_vmlinux(mem, MemoryLayout(LOWMEM), elf64())
    assert mem.read(0x1000000, 66) == b"\xf4" * 64 + b"\0\0"


def test_long_mode_state_with_boot_selectors_and_rsi() -> None:
    r = load_vmlinux(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), elf64()).regs
    assert r.cr0 & CR0_PG and r.cr4 & CR4_PAE and r.ia32_efer == EFER_LME | EFER_LMA
    assert (r.cs_sel, r.cs_ar, r.ds_sel, r.ss_sel, r.es_sel) == (0x10, 0xA09B, 0x18, 0x18, 0x18)
    assert (r.rip, r.rsi, r.cr3) == (0x1000000, LOWMEM - 4 * KiB, PML4_GPA)
    assert (r.gdt.base, r.gdt.limit) == (GDT_GPA, 31)


def test_virtual_entry_is_translated_through_its_segment() -> None:
    r = load_vmlinux(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), elf64(entry=VBASE + 0x10)).regs
    assert r.rip == 0x1000010


def test_identity_map_covers_4_gib_with_2_mib_pages() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_vmlinux(mem, MemoryLayout(LOWMEM), elf64())
    assert struct.unpack("<Q", mem.read(PML4_GPA, 8))[0] == PDPT_GPA | 3
    assert struct.unpack("<4Q", mem.read(PDPT_GPA, 32)) == tuple((PD_GPA + i * 4096) | 3 for i in range(4))
    last = struct.unpack("<Q", mem.read(PD_GPA + 3 * 4096 + 511 * 8, 8))[0]
    assert last == (4 * GiB - 2 * MiB) | 0x83
    assert struct.unpack("<4Q", mem.read(GDT_GPA, 32)) == GDT_ENTRIES


def test_zero_page_header_cmdline_ramdisk_and_e820() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_vmlinux(mem, MemoryLayout(LOWMEM), elf64(), ramdisk=b"R" * 100, bootargs="console=ttyS0")
    page = mem.read(LOWMEM - 4 * KiB, 4096)
    assert struct.unpack_from("<H", page, zp.BOOT_FLAG)[0] == 0xAA55
    assert zp.get_u32(page, zp.HEADER) == zp.HEADER_MAGIC
    assert page[zp.TYPE_OF_LOADER] == 0xFF and page[zp.LOADFLAGS] & zp.LOADED_HIGH
    assert zp.get_u32(page, zp.CMD_LINE_PTR) == LOWMEM - 8 * KiB
    assert mem.read(LOWMEM - 8 * KiB, 14) == b"console=ttyS0\0"
    rd = zp.get_u32(page, zp.RAMDISK_IMAGE)
    assert zp.get_u32(page, zp.RAMDISK_SIZE) == 100 and mem.read(rd, 100) == b"R" * 100
    assert page[zp.E820_ENTRIES] == 3


def test_elf32_is_refused() -> None:
    img = bytearray(elf64())
    img[4] = 1
    with pytest.raises(LoaderError, match="ELF64"):
        load_vmlinux(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), bytes(img))


def test_kernel_overlapping_ramdisk_area_is_refused() -> None:
    with pytest.raises(LoaderError, match="does not fit"):
        load_vmlinux(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), elf64(memsz=LOWMEM))
