"""acrn-dm's ELF32 + multiboot loader (``-E``, ``devicemodel/core/sw_load_elf.c: acrn_sw_load_elf``)."""

from __future__ import annotations

import struct

import pytest

from acrn.dm.loaders import KiB, LoaderError, MemoryLayout, MiB, SparseMemory
from acrn.dm.loaders.elf import ELF_GDT, find_multiboot_header, load_elf

LOWMEM = 64 * MiB


def elf32(
    segments: list[tuple[int, bytes, int]], entry: int = 0x400000, multiboot_flags: int | None = None
) -> bytes:
    """A static ELF32: (vaddr, file bytes, memsz) per PT_LOAD; an optional multiboot header at 0x100."""
    phoff = 0x34
    data_off = 0x200
    out = bytearray(data_off)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into(
        "<HHIIIIIHHHHHH", out, 16, 2, 3, 1, entry, phoff, 0, 0, 0x34, 32, len(segments), 40, 0, 0
    )
    for i, (vaddr, blob, memsz) in enumerate(segments):
        struct.pack_into("<8I", out, phoff + 32 * i, 1, len(out), vaddr, vaddr, len(blob), memsz, 7, 0x1000)
        out += blob
    if multiboot_flags is not None:
        struct.pack_into(
            "<3I", out, 0x100, 0x1BADB002, multiboot_flags, (-(0x1BADB002 + multiboot_flags)) & 0xFFFFFFFF
        )
    return bytes(out)


def _load(image: bytes) -> tuple[SparseMemory, object]:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    return mem, load_elf(mem, MemoryLayout(LOWMEM), image)


def test_pt_load_goes_to_vaddr_and_bss_is_zero_filled() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    mem.write(0x400000, b"\xff" * 0x40)
    load_elf(mem, MemoryLayout(LOWMEM), elf32([(0x400000, b"\x90" * 16, 0x40)]))
    assert mem.read(0x400000, 0x40) == b"\x90" * 16 + bytes(0x30)


def test_registers_are_acrn_dm_elf_state_with_cs_ar_cf9b() -> None:
    _, res = _load(elf32([(0x400000, b"\xf4", 1)], entry=0x400000))
    r = res.regs  # type: ignore[attr-defined]
    assert (r.cr0, r.cs_sel, r.cs_ar, r.cs_limit, r.rip, r.rax, r.rbx) == (
        0x31, 0x08, 0xCF9B, 0xFFFFFFFF, 0x400000, 0x2BADB002, 0
    )  # fmt: skip
    assert (r.ds_sel, r.ss_sel, r.es_sel, r.fs_sel, r.gs_sel) == (0x10,) * 5
    assert (r.gdt.base, r.gdt.limit) == (LOWMEM - 64 * KiB, 23)


def test_gdt_at_lowmem_minus_64k_three_entries() -> None:
    mem, _ = _load(elf32([(0x400000, b"\xf4", 1)]))
    assert struct.unpack("<3Q", mem.read(LOWMEM - 64 * KiB, 24)) == ELF_GDT
    assert ELF_GDT == (0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)


def test_multiboot_flags_2_gives_info_block_at_0x20000_and_ebx() -> None:
    mem, res = _load(elf32([(0x400000, b"\xf4", 1)], multiboot_flags=0x2))
    assert res.regs.rbx == 0x20000  # type: ignore[attr-defined]
    flags, lower, upper = struct.unpack("<3I", mem.read(0x20000, 12))
    assert (flags, lower, upper) == (1, 0, (LOWMEM - 64 * KiB) // 1024)


def test_multiboot_flags_other_than_2_fail() -> None:
    with pytest.raises(LoaderError, match="multiboot"):
        _load(elf32([(0x400000, b"\xf4", 1)], multiboot_flags=0x3))


def test_bad_multiboot_checksum_means_no_multiboot() -> None:
    img = bytearray(elf32([(0x400000, b"\xf4", 1)], multiboot_flags=0x2))
    img[0x108] ^= 1
    _, res = _load(bytes(img))
    assert res.regs.rbx == 0  # type: ignore[attr-defined]


def test_only_first_magic_in_first_8k_counts() -> None:
    head = bytearray(9000)
    struct.pack_into("<3I", head, 8192, 0x1BADB002, 2, (-(0x1BADB002 + 2)) & 0xFFFFFFFF)
    assert find_multiboot_header(bytes(head)) is None
    struct.pack_into("<3I", head, 16, 0x1BADB002, 2, 0)  # bad checksum first: the scan stops there
    struct.pack_into("<3I", head, 64, 0x1BADB002, 2, (-(0x1BADB002 + 2)) & 0xFFFFFFFF)
    assert find_multiboot_header(bytes(head)) == (False, 2)


def test_segment_beyond_lowmem_is_refused() -> None:
    with pytest.raises(LoaderError, match="lowmem"):
        _load(elf32([(LOWMEM - 16, b"\x90" * 8, 32)]))


def test_elf64_and_non_elf_are_refused() -> None:
    img = bytearray(elf32([(0x400000, b"\xf4", 1)]))
    img[4] = 2
    with pytest.raises(LoaderError, match="ELF32"):
        _load(bytes(img))
    with pytest.raises(LoaderError, match="not an ELF"):
        _load(b"MZ" + bytes(100))


def test_multiboot_info_block_is_cleared_to_its_68_bytes_and_sits_at_0x20000_not_scaled() -> None:
    """acrn-dm memsets sizeof(struct multiboot_info) = 68 bytes; the project puts the block where EBX
    points (0x20000, what acrn-dm means), not at acrn-dm's pointer-scaled 0x20000 * 68
    (docs/differences.md)."""
    mem = SparseMemory(MemoryLayout(LOWMEM))
    mem.write(0x20000, b"\xee" * 0x60)
    mem.write(0x20000 * 68, b"\xee" * 16)
    load_elf(mem, MemoryLayout(LOWMEM), elf32([(0x400000, b"\xf4", 1)], multiboot_flags=0x2))
    assert mem.read(0x20000 + 12, 68 - 12) == bytes(68 - 12)
    assert mem.read(0x20000 + 68, 0x60 - 68) == b"\xee" * (0x60 - 68)
    assert mem.read(0x20000 * 68, 16) == b"\xee" * 16


def test_no_multiboot_info_without_a_valid_header() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    mem.write(0x20000, b"\xee" * 12)
    res = load_elf(mem, MemoryLayout(LOWMEM), elf32([(0x400000, b"\xf4", 1)]))
    assert res.regs.rbx == 0 and res.regs.rax == 0x2BADB002
    assert mem.read(0x20000, 12) == b"\xee" * 12


def test_multiboot_flags_with_memory_bit_and_more_fail_even_with_a_valid_checksum() -> None:
    for flags in (0x0, 0x1, 0x3, 0x10002):
        with pytest.raises(LoaderError, match="multiboot header flags"):
            _load(elf32([(0x400000, b"\xf4", 1)], multiboot_flags=flags))


def test_segment_ending_exactly_at_lowmem_loads() -> None:
    mem, _ = _load(elf32([(LOWMEM - 32, b"\x90" * 8, 32)]))
    assert mem.read(LOWMEM - 32, 32) == b"\x90" * 8 + bytes(24)
