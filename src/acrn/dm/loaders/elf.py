"""acrn-dm's ELF loader (``-E``, devicemodel/core/sw_load_elf.c: ``acrn_sw_load_elf``): static ELF32 +
multiboot.

This is how acrn-unit-test images boot.  Rules, in acrn-dm's order:

* The first 8 KiB are scanned, 32-bit word by word, for the multiboot magic 0x1BADB002; the
  first hit decides: with a valid checksum (magic + flags + checksum == 0 mod 2^32) the image is
  a multiboot image, otherwise it is not (the scan does not go on).
* Only ELFCLASS32 is loaded ("No available 64bit elf loader"); each PT_LOAD is zero-filled to
  p_memsz and copied (p_filesz bytes) to **GPA = p_vaddr**; it must end at or below lowmem.
* GDT at lowmem - 64 KiB: null, code 0x00CF9B000000FFFF (selector 0x08), data (0x10); limit 23.
* BSP: cr0 0x31, cs_sel 0x08, cs_ar 0xCF9B (the descriptor's flags byte, reserved AR bits 11:8
  set, as sw_load_elf.c writes it), data selectors 0x10, rip = e_entry, EAX = 0x2BADB002.
* Multiboot info only if the header flags are exactly 0x2 (else the load fails): flags = MEMORY,
  mem_lower 0, mem_upper = (lowmem - 64 KiB) / 1024, at GPA 0x20000, EBX = 0x20000.  (acrn-dm's
  C source computes the info pointer as ``(struct multiboot_info *)base + 0x20000``, which
  scales the offset by the struct size; the intended rule, the block at 0x20000 that EBX
  names, is what is built here.)
"""

from __future__ import annotations

import struct
from typing import Final

from acrn.dm.loaders import GuestMemory, KiB, LoaderError, LoadResult, MemoryLayout
from acrn.regs import presets

ELF_SCAN_LEN: Final = 8 * KiB
MULTIBOOT_HEADER_MAGIC: Final = 0x1BADB002
MULTIBOOT_INFO_MEMORY: Final = 0x1
#: The only header flags value acrn-dm supports (bit 1: "memory information wanted").
MULTIBOOT_SUPPORTED_FLAGS: Final = 0x2
MULTIBOOT_INFO_GPA: Final = presets.MULTIBOOT_INFO_GPA
#: sizeof(struct multiboot_info) in acrn-dm (multiboot 0.6.96 without the VBE fields).
MULTIBOOT_INFO_SIZE: Final = 68
ELF_GDT: Final = (0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)
PT_LOAD: Final = 1


def elf_gdt_gpa(lowmem: int) -> int:
    """GDT_LOAD_OFF of the ELF loader: lowmem - 64 KiB."""
    return lowmem - 64 * KiB


def find_multiboot_header(image: bytes) -> tuple[bool, int] | None:
    """(checksum valid, flags) of the first multiboot magic in the first 8 KiB, or None."""
    head = image[:ELF_SCAN_LEN].ljust(ELF_SCAN_LEN, b"\0")
    words = struct.unpack(f"<{ELF_SCAN_LEN // 4}I", head)
    for i in range(len(words) - 2):
        if words[i] == MULTIBOOT_HEADER_MAGIC:
            ok = (words[i] + words[i + 1] + words[i + 2]) & 0xFFFFFFFF == 0
            return ok, words[i + 1]
    return None


def load_elf(mem: GuestMemory, layout: MemoryLayout, image: bytes) -> LoadResult:
    """Load a static ELF32 image as acrn-dm's ``-E`` does; see the module doc."""
    lowmem = layout.lowmem
    mb = find_multiboot_header(image)
    multiboot = mb is not None and mb[0]
    if image[:4] != b"\x7fELF":
        raise LoaderError("not an ELF file")
    if len(image) < 0x34 or image[4] != 1:
        raise LoaderError("only ELF32 images are loaded (acrn-dm has no 64-bit ELF loader)")
    e_entry, e_phoff = struct.unpack_from("<II", image, 0x18)
    e_phentsize, e_phnum = struct.unpack_from("<HH", image, 0x2A)
    result = LoadResult("elf", presets.elf(entry=e_entry, multiboot=False, lowmem=lowmem))
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 32 > len(image):
            raise LoaderError(f"program header {i} lies outside the file")
        p_type, p_offset, p_vaddr, _p_paddr, p_filesz, p_memsz = struct.unpack_from("<6I", image, off)
        if p_type != PT_LOAD:
            continue
        if p_vaddr + p_memsz > lowmem:
            raise LoaderError(
                f"PT_LOAD {i} [{p_vaddr:#x}, {p_vaddr + p_memsz:#x}) ends above lowmem {lowmem:#x}"
            )
        data = image[p_offset : p_offset + min(p_filesz, p_memsz)]
        mem.write(p_vaddr, data.ljust(p_memsz, b"\0"))
        result.note(f"PT_LOAD {i}: {p_filesz} bytes at {p_vaddr:#x} (memsz {p_memsz:#x})")
    gdt = elf_gdt_gpa(lowmem)
    mem.write(gdt, struct.pack("<3Q", *ELF_GDT))
    result.placements["gdt"] = gdt
    result.placements["entry"] = e_entry
    result.note(f"GDT at {gdt:#x} (limit 23); entry {e_entry:#x}, EAX 0x2BADB002")
    if multiboot:
        assert mb is not None
        flags = mb[1]
        if flags != MULTIBOOT_SUPPORTED_FLAGS:
            raise LoaderError(f"invalid multiboot header flags {flags:#x} (acrn-dm supports only 0x2)")
        info = struct.pack("<III", MULTIBOOT_INFO_MEMORY, 0, gdt // 1024).ljust(MULTIBOOT_INFO_SIZE, b"\0")
        mem.write(MULTIBOOT_INFO_GPA, info)
        result.regs = presets.elf(entry=e_entry, multiboot=True, lowmem=lowmem)
        result.placements["multiboot_info"] = MULTIBOOT_INFO_GPA
        result.note(f"multiboot info at {MULTIBOOT_INFO_GPA:#x}: mem_upper {gdt // 1024} KiB, EBX set")
    elif mb is not None:
        result.note("multiboot magic with a bad checksum: not a multiboot image")
    return result
