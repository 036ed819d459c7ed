"""acrn-dm's bzImage loader (``devicemodel/core/sw_load_bzimage.c: acrn_sw_load_bzimage``): every placement
and zero-page field.

Each rule is checked on a synthetic bzImage built here and, when ``scripts/fetch-linux-guest.py``
has cached one, on Debian's cloud kernel (its setup-header facts).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from acrn.dm.loaders import GiB, KiB, LoaderError, MemoryLayout, MiB, SparseMemory
from acrn.dm.loaders import zeropage as zp
from acrn.dm.loaders.bzimage import BZIMAGE_GDT, load_bzimage
from acrn.dm.loaders.e820 import E820_TYPE_RAM, E820_TYPE_RESERVED, E820Entry, unpack_e820
from acrn.regs import presets

LOWMEM = 256 * MiB


def synthetic_bzimage(setup_sects: int = 3, payload: int = 0x3000, loadflags: int = 0x01) -> bytes:
    """A bzImage-shaped file: setup header at 0x1F1, protected-mode bytes after the setup sectors."""
    setup = ((setup_sects or 4) + 1) * 512
    img = bytearray(setup + payload)
    img[zp.SETUP_SECTS] = setup_sects
    struct.pack_into("<H", img, zp.BOOT_FLAG, zp.BOOT_FLAG_MAGIC)
    img[0x201] = 0x6A  # header length byte: 0x202 + 0x6A - 0x1F1 = 123
    struct.pack_into("<I", img, zp.HEADER, zp.HEADER_MAGIC)
    struct.pack_into("<H", img, zp.VERSION, 0x020F)
    img[zp.TYPE_OF_LOADER] = 0x00
    img[zp.LOADFLAGS] = loadflags
    struct.pack_into("<I", img, zp.CODE32_START, 0x100000)
    struct.pack_into("<I", img, zp.INITRD_ADDR_MAX, 0x7FFFFFFF)
    struct.pack_into("<I", img, zp.KERNEL_ALIGNMENT, 0x200000)
    img[zp.RELOCATABLE_KERNEL] = 1
    struct.pack_into("<H", img, zp.XLOADFLAGS, 0x7F)
    struct.pack_into("<I", img, zp.CMDLINE_SIZE, 2047)
    struct.pack_into("<Q", img, zp.PREF_ADDRESS, 0x1000000)
    struct.pack_into("<I", img, zp.INIT_SIZE, 0x3378000)
    struct.pack_into("<I", img, 0x264, 0xD72F10)  # handover_offset, the last copied field
    struct.pack_into("<I", img, 0x268, 0xD7F91C)  # kernel_info_offset: NOT copied by acrn-dm
    for i in range(setup, len(img), 4):
        struct.pack_into("<I", img, i, i)  # recognisable protected-mode bytes
    return bytes(img)


def cached_kernel() -> Path | None:
    root = Path(
        os.environ.get("ACRN_GUEST_DIR", Path(__file__).resolve().parents[2] / "work-guests" / "linux")
    )
    path = root / "vmlinuz"
    return path if path.is_file() else None


@pytest.fixture(params=["synthetic", "debian"])
def kernel(request: pytest.FixtureRequest) -> bytes:
    if request.param == "synthetic":
        return synthetic_bzimage()
    path = cached_kernel()
    if path is None:
        pytest.skip("no cached Debian kernel (run scripts/fetch-linux-guest.py)")
    return path.read_bytes()


def _zero_page(mem: SparseMemory) -> bytes:
    return mem.read(LOWMEM - 4 * KiB, 4096)


def test_whole_bzimage_is_copied_to_16_mib(kernel: bytes) -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    res = load_bzimage(mem, MemoryLayout(LOWMEM), kernel)
    assert mem.read(16 * MiB, len(kernel)) == kernel
    assert res.placements["kernel"] == 16 * MiB


def test_entry_is_16_mib_plus_setup_size(kernel: bytes) -> None:
    res = load_bzimage(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), kernel)
    assert res.regs.rip == 16 * MiB + (kernel[0x1F1] + 1) * 512


def test_setup_sects_zero_means_four_and_is_written_back() -> None:
    img = synthetic_bzimage(setup_sects=0)
    mem = SparseMemory(MemoryLayout(LOWMEM))
    res = load_bzimage(mem, MemoryLayout(LOWMEM), img)
    assert res.regs.rip == 16 * MiB + 5 * 512
    assert mem.read(16 * MiB + 0x1F1, 1) == b"\x04"
    assert _zero_page(mem)[0x1F1] == 4


def test_registers_are_acrn_dm_protected_mode_state(kernel: bytes) -> None:
    res = load_bzimage(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), kernel)
    r = res.regs
    assert (r.cr0, r.cs_sel, r.cs_ar, r.cs_limit, r.cs_base) == (0x31, 0x10, 0xC09B, 0xFFFFFFFF, 0)
    assert (r.ds_sel, r.ss_sel, r.es_sel, r.fs_sel, r.gs_sel) == (0x18, 0x18, 0x18, 0, 0)
    assert r.rsi == LOWMEM - 4 * KiB
    assert (r.cr3, r.cr4, r.ia32_efer, r.rflags, r.idt.base, r.idt.limit) == (0, 0, 0, 0, 0, 0)
    assert bytes(r.to_struct()) == bytes(presets.bzimage(LOWMEM, kernel[0x1F1]).to_struct())


def test_zero_page_header_is_bytes_1f1_to_268_of_the_image(kernel: bytes) -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_bzimage(mem, MemoryLayout(LOWMEM), kernel)
    page = _zero_page(mem)
    expect = bytearray(kernel[0x1F1:0x268])
    expect[zp.TYPE_OF_LOADER - 0x1F1] = 0xFF
    expect[zp.LOADFLAGS - 0x1F1] |= 0x20
    struct.pack_into("<I", expect, zp.CMD_LINE_PTR - 0x1F1, LOWMEM - 8 * KiB)
    assert page[0x1F1:0x268] == bytes(expect)
    assert page[0x268:0x2D0] == bytes(0x2D0 - 0x268)  # kernel_info_offset etc. are not copied


def test_type_of_loader_ff_and_quiet_flag_added(kernel: bytes) -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_bzimage(mem, MemoryLayout(LOWMEM), kernel)
    page = _zero_page(mem)
    assert page[zp.TYPE_OF_LOADER] == 0xFF
    assert page[zp.LOADFLAGS] == kernel[zp.LOADFLAGS] | 0x20


def test_cmd_line_ptr_set_even_without_bootargs() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage())
    assert zp.get_u32(_zero_page(mem), zp.CMD_LINE_PTR) == LOWMEM - 8 * KiB
    assert mem.read(LOWMEM - 8 * KiB, 16) == bytes(16)


def test_bootargs_at_lowmem_minus_8k_nul_padded_to_1024() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    mem.write(LOWMEM - 8 * KiB, b"\xaa" * 1100)
    load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage(), bootargs="console=ttyS0")
    got = mem.read(LOWMEM - 8 * KiB, 1100)
    assert got[:14] == b"console=ttyS0\0"
    assert got[14:1024] == bytes(1010)
    assert got[1024:] == b"\xaa" * 76  # strncpy writes exactly 1024 bytes


def test_bootargs_longer_than_1024_are_cut_without_nul() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    res = load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage(), bootargs="x" * 1500)
    assert mem.read(LOWMEM - 8 * KiB, 1024) == b"x" * 1024
    assert any("cut" in n for n in res.notes)


def test_ramdisk_at_lowmem_minus_load_size_and_in_zero_page() -> None:
    rd = bytes(range(256)) * 40  # 10240 bytes -> RAMDISK_LOAD_SIZE = roundup(10240 + 8192, 4096) = 20480
    mem = SparseMemory(MemoryLayout(LOWMEM))
    res = load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage(), ramdisk=rd)
    gpa = LOWMEM - 20480
    assert mem.read(gpa, len(rd)) == rd
    page = _zero_page(mem)
    assert zp.get_u32(page, zp.RAMDISK_IMAGE) == gpa
    assert zp.get_u32(page, zp.RAMDISK_SIZE) == len(rd)
    assert res.placements["ramdisk"] == gpa


def test_no_ramdisk_fields_without_ramdisk() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage())
    page = _zero_page(mem)
    assert zp.get_u32(page, zp.RAMDISK_IMAGE) == 0 and zp.get_u32(page, zp.RAMDISK_SIZE) == 0


def test_gdt_below_ramdisk_area_minus_2k() -> None:
    for rd, expect in ((None, LOWMEM - 10 * KiB), (bytes(5000), LOWMEM - 16 * KiB - 2 * KiB)):
        mem = SparseMemory(MemoryLayout(LOWMEM))
        res = load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage(), ramdisk=rd)
        assert res.regs.gdt.base == expect and res.regs.gdt.limit == 31
        assert struct.unpack("<4Q", mem.read(expect, 32)) == BZIMAGE_GDT
        assert BZIMAGE_GDT == (0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)


def test_only_first_2k_of_zero_page_is_cleared() -> None:
    mem = SparseMemory(MemoryLayout(LOWMEM))
    mem.write(LOWMEM - 4 * KiB, b"\x5a" * 4096)
    load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage())
    page = _zero_page(mem)
    assert page[:0x1E8] == bytes(0x1E8)
    assert page[0x800:] == b"\x5a" * 0x800  # acrn-dm's memset covers 2 KiB only


def test_e820_in_zero_page_is_acrn_dm_table() -> None:
    layout = MemoryLayout(LOWMEM, highmem=512 * MiB)
    mem = SparseMemory(layout)
    load_bzimage(mem, layout, synthetic_bzimage())
    page = _zero_page(mem)
    n = page[zp.E820_ENTRIES]
    assert unpack_e820(page[zp.E820_TABLE :], n) == [
        E820Entry(0, 0xA0000, E820_TYPE_RAM),
        E820Entry(1 * MiB, LOWMEM - 1 * MiB, E820_TYPE_RAM),
        E820Entry(0xE0000000, 0x20000000, E820_TYPE_RESERVED),
        E820Entry(4 * GiB, 512 * MiB, E820_TYPE_RAM),
    ]


def test_kernel_must_end_below_ramdisk() -> None:
    small = 20 * MiB
    img = synthetic_bzimage(payload=small - 16 * MiB - 8 * KiB)  # ends exactly at lowmem - 8 KiB
    load_bzimage(SparseMemory(MemoryLayout(small)), MemoryLayout(small), img[: small - 16 * MiB - 8 * KiB])
    with pytest.raises(LoaderError, match="does not fit"):
        load_bzimage(SparseMemory(MemoryLayout(small)), MemoryLayout(small), img + b"\0")


def test_ramdisk_needs_lowmem_above_load_size_plus_16_mib() -> None:
    lowmem = 18 * MiB
    rd = bytes(2 * MiB - 8 * KiB - 2 * KiB)  # load size 2 MiB - 2 KiB rounded up to 2 MiB
    with pytest.raises(LoaderError, match="too big"):
        load_bzimage(
            SparseMemory(MemoryLayout(lowmem)), MemoryLayout(lowmem), synthetic_bzimage(), ramdisk=rd
        )


def test_image_without_header_still_loads_with_a_warning() -> None:
    img = bytes(0x5000)
    res = load_bzimage(SparseMemory(MemoryLayout(LOWMEM)), MemoryLayout(LOWMEM), img)
    assert res.regs.rip == 16 * MiB + 5 * 512  # setup_sects 0 -> 4
    assert any("HdrS" in n for n in res.notes)


def test_debian_cloud_kernel_header_facts() -> None:
    path = cached_kernel()
    if path is None:
        pytest.skip("no cached Debian kernel (run scripts/fetch-linux-guest.py)")
    hdr = zp.parse_setup_header(path.read_bytes())
    assert hdr.valid and hdr.setup_sects == 39 and hdr.version == 0x020F
    assert hdr.loadflags & zp.LOADED_HIGH and hdr.xloadflags & zp.XLF_KERNEL_64
    assert hdr.kernel_alignment == 0x200000 and hdr.relocatable_kernel == 1 and hdr.pref_address == 0x1000000


def test_e820_in_zero_page_without_highmem_has_three_entries() -> None:
    """No zero-length entry at 4 GiB (acrn-dm's removal loop would leave one; docs/differences.md)."""
    mem = SparseMemory(MemoryLayout(LOWMEM))
    load_bzimage(mem, MemoryLayout(LOWMEM), synthetic_bzimage())
    page = _zero_page(mem)
    assert page[zp.E820_ENTRIES] == 3
    assert unpack_e820(page[zp.E820_TABLE :], 3)[-1] == E820Entry(0xE0000000, 0x20000000, E820_TYPE_RESERVED)
    assert page[zp.E820_TABLE + 60 : zp.E820_TABLE + 80] == bytes(20)
