"""acrn-dm's direct bzImage boot (devicemodel/core/sw_load_bzimage.c: ``acrn_sw_load_bzimage``),
quirks included.

Guest layout (``lowmem`` = RAM below 2 GiB; RAMDISK_LOAD_SIZE = roundup(ramdisk_size + 8 KiB, 4 KiB))::

    16 MiB                                   the WHOLE bzImage file, real-mode setup included
    lowmem - RAMDISK_LOAD_SIZE - 2 KiB       GDT: null, null, code 0x10, data 0x18 (limit 31)
    lowmem - RAMDISK_LOAD_SIZE               ramdisk
    lowmem - 8 KiB                           bootargs (strncpy of 1024 bytes)
    lowmem - 4 KiB                           zero page (its first 2 KiB cleared), RSI points here

The vCPU enters the kernel's 32-bit protected-mode entry at 16 MiB + setup size (not at
``code32_start``): acrn-dm never moves the protected-mode part to its own load address, the
relocatable kernel copes.  The zero page gets bytes [0x1F1, 0x268) of the loaded image's setup
header, then ramdisk_image/size (with a ramdisk), cmd_line_ptr (always, even without bootargs),
type_of_loader 0xFF, loadflags |= QUIET, and acrn-dm's e820 table.  acrn-dm checks neither the
"HdrS" signature nor the protocol version; neither does this loader (``-v`` notes them).
"""

from __future__ import annotations

import struct
from typing import Final

from acrn.dm.loaders import GuestMemory, KiB, LoaderError, LoadResult, MemoryLayout
from acrn.dm.loaders import zeropage as zp
from acrn.dm.loaders.e820 import acrn_e820, pack_e820
from acrn.regs import presets

KERNEL_LOAD_OFF: Final = presets.KERNEL_LOAD_OFF
#: acrn-dm copies the bootargs with strncpy(.., STR_LEN): 1024 bytes, NUL-padded, maybe unterminated.
BOOTARGS_COPY_LEN: Final = 1024
#: null, null, flat 4 GiB code (selector 0x10), flat data (selector 0x18).
BZIMAGE_GDT: Final = (0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)


def ramdisk_load_size(ramdisk_size: int) -> int:
    return presets.bzimage_ramdisk_load_size(ramdisk_size)


def ramdisk_gpa(lowmem: int, ramdisk_size: int) -> int:
    """RAMDISK_LOAD_OFF: lowmem - RAMDISK_LOAD_SIZE."""
    return lowmem - ramdisk_load_size(ramdisk_size)


def bootargs_gpa(lowmem: int) -> int:
    """BOOTARGS_LOAD_OFF: lowmem - 8 KiB."""
    return lowmem - 8 * KiB


def zero_page_gpa(lowmem: int) -> int:
    """ZEROPAGE_LOAD_OFF: lowmem - 4 KiB."""
    return presets.bzimage_zero_page_gpa(lowmem)


def gdt_gpa(lowmem: int, ramdisk_size: int) -> int:
    """GDT_LOAD_OFF: lowmem - RAMDISK_LOAD_SIZE - 2 KiB."""
    return presets.bzimage_gdt_gpa(lowmem, ramdisk_size)


def load_bzimage(
    mem: GuestMemory,
    layout: MemoryLayout,
    kernel: bytes,
    *,
    ramdisk: bytes | None = None,
    bootargs: str | bytes | None = None,
) -> LoadResult:
    """Load ``kernel`` (a bzImage) as acrn-dm does and return the BSP state; see the module doc."""
    lowmem = layout.lowmem
    if not kernel:
        raise LoaderError("kernel image is empty")
    rd_size = len(ramdisk) if ramdisk is not None else 0
    if ramdisk is not None and not ramdisk:
        raise LoaderError("ramdisk image is empty")
    if ramdisk is not None and lowmem <= ramdisk_load_size(rd_size) + 2 * KiB + KERNEL_LOAD_OFF:
        raise LoaderError(f"ramdisk of {rd_size} bytes is too big for lowmem {lowmem:#x}")
    hdr = zp.parse_setup_header(kernel)
    regs = presets.bzimage(lowmem=lowmem, setup_sects=hdr.setup_sects, ramdisk_size=rd_size)
    result = LoadResult("bzimage", regs)
    if not hdr.valid:
        result.note("warning: no HdrS/0xAA55 setup header (acrn-dm loads the file anyway)")
    else:
        result.note(
            f"setup header: protocol {hdr.version >> 8}.{hdr.version & 0xFF:02d}, setup_sects {hdr.setup_sects}, "
            f"loadflags {hdr.loadflags:#x}, xloadflags {hdr.xloadflags:#x}, init_size {hdr.init_size:#x}"
        )

    # 1. bootargs at lowmem - 8 KiB (strncpy semantics: cut at 1024 bytes, NUL padded).
    if bootargs is not None:
        raw = bootargs.encode() if isinstance(bootargs, str) else bytes(bootargs)
        raw = raw.split(b"\0", 1)[0]
        if len(raw) >= BOOTARGS_COPY_LEN:
            result.note(f"warning: bootargs cut to {BOOTARGS_COPY_LEN} bytes without a NUL (acrn-dm strncpy)")
        mem.write(bootargs_gpa(lowmem), raw[:BOOTARGS_COPY_LEN].ljust(BOOTARGS_COPY_LEN, b"\0"))
        result.placements["cmdline"] = bootargs_gpa(lowmem)
        result.note(f"bootargs ({len(raw)} bytes) at {bootargs_gpa(lowmem):#x}")

    # 2. ramdisk at lowmem - RAMDISK_LOAD_SIZE.
    rd_gpa = ramdisk_gpa(lowmem, rd_size)
    if ramdisk is not None:
        mem.write(rd_gpa, ramdisk)
        result.placements["ramdisk"] = rd_gpa
        result.note(f"ramdisk {rd_size} bytes at {rd_gpa:#x}")

    # 3. the whole kernel file at 16 MiB; it must end at or below the ramdisk.
    if len(kernel) + KERNEL_LOAD_OFF > rd_gpa:
        raise LoaderError(
            f"kernel of {len(kernel)} bytes at {KERNEL_LOAD_OFF:#x} does not fit below {rd_gpa:#x} "
            "(need bigger memory)"
        )
    image = bytearray(kernel)
    if len(image) > zp.SETUP_SECTS and image[zp.SETUP_SECTS] == 0:
        image[zp.SETUP_SECTS] = 4  # acrn-dm writes the backwards-compatible value into the copy
    mem.write(KERNEL_LOAD_OFF, bytes(image))
    result.placements["kernel"] = KERNEL_LOAD_OFF
    result.placements["entry"] = regs.rip
    result.note(
        f"kernel {len(kernel)} bytes at {KERNEL_LOAD_OFF:#x}, setup size {hdr.setup_size:#x}, "
        f"32-bit entry {regs.rip:#x}"
    )

    # 4. zero page at lowmem - 4 KiB.
    zpa = zero_page_gpa(lowmem)
    page = bytearray(mem.read(zpa, zp.ZERO_PAGE_SIZE))
    page[: 2 * KiB] = bytes(2 * KiB)
    hdr_bytes = mem.read(KERNEL_LOAD_OFF + zp.ACRN_HDR_START, zp.ACRN_HDR_END - zp.ACRN_HDR_START)
    page[zp.ACRN_HDR_START : zp.ACRN_HDR_END] = hdr_bytes
    if ramdisk is not None:
        zp.put_u32(page, zp.RAMDISK_IMAGE, rd_gpa)
        zp.put_u32(page, zp.RAMDISK_SIZE, rd_size)
    zp.put_u32(page, zp.CMD_LINE_PTR, bootargs_gpa(lowmem))
    page[zp.TYPE_OF_LOADER] = zp.LOADER_TYPE_UNDEFINED
    page[zp.LOADFLAGS] |= zp.QUIET_FLAG
    e820 = acrn_e820(lowmem, layout.highmem)
    page[zp.E820_ENTRIES] = len(e820)
    table = pack_e820(e820)
    page[zp.E820_TABLE : zp.E820_TABLE + len(table)] = table
    mem.write(zpa, bytes(page))
    result.placements["zero_page"] = zpa
    result.note(f"zero page at {zpa:#x}: cmd_line_ptr {bootargs_gpa(lowmem):#x}, e820 {len(e820)} entries")
    for entry in e820:
        result.note(f"  e820 {entry}")

    # 5. the boot GDT.
    gdt = gdt_gpa(lowmem, rd_size)
    mem.write(gdt, struct.pack("<4Q", *BZIMAGE_GDT))
    result.placements["gdt"] = gdt
    result.note(f"GDT at {gdt:#x} (limit 31); BSP: cr0 0x31, cs 0x10, ds/es/ss 0x18, rsi {zpa:#x}")
    return result
