"""An uncompressed ``vmlinux`` (ELF64) entered through Linux's 64-bit boot protocol.

Not an acrn-dm loader: this is how Firecracker and QEMU microvm boot, and it skips the bzImage
decompressor (about 85 s of guest time on the development machines' KVM; README.md, "Booting Linux").
Boot protocol rules (Documentation/arch/x86/boot.rst, "64-bit boot protocol"): long mode with
paging on, the kernel, zero page and command line identity-mapped, a GDT with flat 4 GiB
descriptors for __BOOT_CS (0x10) and __BOOT_DS (0x18), interrupts off, RSI = boot_params, entry at
the ELF entry point (``startup_64``'s physical address).

Layout: every PT_LOAD at its **physical** address (p_paddr); zero page, command line and ramdisk
where acrn-dm's bzImage loader puts them (lowmem - 4 KiB, lowmem - 8 KiB, below that), the same
e820 table; the boot GDT at 0x500, page tables identity-mapping the first 4 GiB with 2 MiB pages at
0x9000 (PML4), 0xA000 (PDPT), 0xB000-0xEFFF (four page directories), the stack below 0x8FF0.
The zero page has no image header to copy, so it gets a minimal one (as Firecracker writes):
boot_flag 0xAA55, "HdrS", protocol 2.15, type_of_loader 0xFF, LOADED_HIGH, kernel_alignment 16 MiB.
"""

from __future__ import annotations

import struct
from typing import Final

from acrn.dm.loaders import GuestMemory, KiB, LoaderError, LoadResult, MemoryLayout, MiB
from acrn.dm.loaders import zeropage as zp
from acrn.dm.loaders.bzimage import bootargs_gpa, ramdisk_gpa, ramdisk_load_size, zero_page_gpa
from acrn.dm.loaders.e820 import acrn_e820, pack_e820
from acrn.regs import presets

PT_LOAD: Final = 1
GDT_GPA: Final = 0x500
#: null, null, 64-bit code (selector 0x10 = __BOOT_CS), flat data (0x18 = __BOOT_DS).
GDT_ENTRIES: Final = (0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
BOOT_CS: Final = 0x10
BOOT_DS: Final = 0x18
STACK_TOP: Final = 0x8FF0
PML4_GPA: Final = 0x9000
PDPT_GPA: Final = 0xA000
PD_GPA: Final = 0xB000
#: Gigabytes identity-mapped (one page directory each).
IDENTITY_GIB: Final = 4
#: Command line room: from lowmem - 8 KiB up to the zero page.
CMDLINE_MAX: Final = 4 * KiB - 1
PROTOCOL_VERSION: Final = 0x020F
KERNEL_ALIGNMENT: Final = 16 * MiB

_PTE_PRESENT_RW: Final = 0x3
_PDE_LARGE: Final = 0x83


def identity_page_tables() -> dict[int, bytes]:
    """GPA -> page contents of the 4 GiB identity map (PML4, PDPT, four PDs of 2 MiB pages)."""
    pages = {PML4_GPA: struct.pack("<Q", PDPT_GPA | _PTE_PRESENT_RW).ljust(4096, b"\0")}
    pdpt = b"".join(struct.pack("<Q", (PD_GPA + i * 4096) | _PTE_PRESENT_RW) for i in range(IDENTITY_GIB))
    pages[PDPT_GPA] = pdpt.ljust(4096, b"\0")
    for g in range(IDENTITY_GIB):
        pd = b"".join(struct.pack("<Q", ((g * 512 + i) << 21) | _PDE_LARGE) for i in range(512))
        pages[PD_GPA + g * 4096] = pd
    return pages


def load_vmlinux(
    mem: GuestMemory,
    layout: MemoryLayout,
    image: bytes,
    *,
    ramdisk: bytes | None = None,
    bootargs: str | bytes | None = None,
) -> LoadResult:
    """Load an ELF64 ``vmlinux`` and return a 64-bit long-mode BSP state; see the module doc."""
    lowmem = layout.lowmem
    if image[:4] != b"\x7fELF":
        raise LoaderError("not an ELF file")
    if len(image) < 0x40 or image[4] != 2:
        raise LoaderError("vmlinux must be an ELF64 image")
    e_entry, e_phoff = struct.unpack_from("<QQ", image, 0x18)
    e_phentsize, e_phnum = struct.unpack_from("<HH", image, 0x36)
    rd_size = len(ramdisk) if ramdisk is not None else 0
    rd_gpa = ramdisk_gpa(lowmem, rd_size)
    notes: list[str] = []
    entry_phys: int | None = None
    top = 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 56 > len(image):
            raise LoaderError(f"program header {i} lies outside the file")
        p_type, _flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", image, off
        )
        if p_type != PT_LOAD:
            continue
        if p_paddr + p_memsz > rd_gpa:
            raise LoaderError(
                f"PT_LOAD {i} [{p_paddr:#x}, {p_paddr + p_memsz:#x}) does not fit below {rd_gpa:#x}"
            )
        data = image[p_offset : p_offset + min(p_filesz, p_memsz)]
        mem.write(p_paddr, data.ljust(p_memsz, b"\0"))
        top = max(top, p_paddr + p_memsz)
        notes.append(
            f"PT_LOAD {i}: {p_filesz} bytes at {p_paddr:#x} (vaddr {p_vaddr:#x}, memsz {p_memsz:#x})"
        )
        # The entry may be given as a virtual address; translate it through its segment.
        if p_vaddr <= e_entry < p_vaddr + p_memsz:
            entry_phys = e_entry - p_vaddr + p_paddr
    if entry_phys is None:
        if e_entry >= 1 << 32:
            raise LoaderError(f"entry {e_entry:#x} is in no PT_LOAD segment")
        entry_phys = e_entry
    if top > IDENTITY_GIB << 30:
        raise LoaderError("the kernel must load below 4 GiB (the identity map's reach)")
    regs = presets.long64(
        entry=entry_phys,
        cr3=PML4_GPA,
        rsp=STACK_TOP,
        gdt_base=GDT_GPA,
        gdt_limit=len(GDT_ENTRIES) * 8 - 1,
        cs_sel=BOOT_CS,
        data_sel=BOOT_DS,
    )
    result = LoadResult("vmlinux", regs, notes)
    result.placements["kernel"] = entry_phys
    result.placements["entry"] = entry_phys

    if bootargs is not None:
        raw = bootargs.encode() if isinstance(bootargs, str) else bytes(bootargs)
        raw = raw.split(b"\0", 1)[0]
        if len(raw) > CMDLINE_MAX:
            raise LoaderError(f"command line of {len(raw)} bytes is longer than {CMDLINE_MAX}")
    else:
        raw = b""
    mem.write(bootargs_gpa(lowmem), raw + b"\0")
    result.placements["cmdline"] = bootargs_gpa(lowmem)
    if ramdisk is not None:
        if not ramdisk:
            raise LoaderError("ramdisk image is empty")
        if rd_gpa < top or lowmem <= ramdisk_load_size(rd_size) + 2 * KiB:
            raise LoaderError(f"ramdisk of {rd_size} bytes does not fit above the kernel")
        mem.write(rd_gpa, ramdisk)
        result.placements["ramdisk"] = rd_gpa
        result.note(f"ramdisk {rd_size} bytes at {rd_gpa:#x}")

    zpa = zero_page_gpa(lowmem)
    page = bytearray(zp.ZERO_PAGE_SIZE)
    zp.put_u16(page, zp.BOOT_FLAG, zp.BOOT_FLAG_MAGIC)
    zp.put_u32(page, zp.HEADER, zp.HEADER_MAGIC)
    zp.put_u16(page, zp.VERSION, PROTOCOL_VERSION)
    page[zp.TYPE_OF_LOADER] = zp.LOADER_TYPE_UNDEFINED
    page[zp.LOADFLAGS] = zp.LOADED_HIGH
    zp.put_u32(page, zp.KERNEL_ALIGNMENT, KERNEL_ALIGNMENT)
    zp.put_u32(page, zp.CMD_LINE_PTR, bootargs_gpa(lowmem))
    zp.put_u32(page, zp.CMDLINE_SIZE, CMDLINE_MAX)
    if ramdisk is not None:
        zp.put_u32(page, zp.RAMDISK_IMAGE, rd_gpa)
        zp.put_u32(page, zp.RAMDISK_SIZE, rd_size)
    e820 = acrn_e820(lowmem, layout.highmem)
    page[zp.E820_ENTRIES] = len(e820)
    table = pack_e820(e820)
    page[zp.E820_TABLE : zp.E820_TABLE + len(table)] = table
    mem.write(zpa, bytes(page))
    regs.rsi = zpa
    result.placements["zero_page"] = zpa
    result.note(f"zero page at {zpa:#x}, command line ({len(raw)} bytes) at {bootargs_gpa(lowmem):#x}")

    mem.write(GDT_GPA, struct.pack("<4Q", *GDT_ENTRIES))
    for gpa, data in identity_page_tables().items():
        mem.write(gpa, data)
    result.placements.update(gdt=GDT_GPA, pml4=PML4_GPA)
    result.note(
        f"64-bit entry {entry_phys:#x}: GDT {GDT_GPA:#x}, CR3 {PML4_GPA:#x} (4 GiB identity map), "
        f"CS {BOOT_CS:#x}, DS {BOOT_DS:#x}, RSP {STACK_TOP:#x}, RSI {zpa:#x}"
    )
    return result
