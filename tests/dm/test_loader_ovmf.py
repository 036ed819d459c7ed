"""acrn-dm's OVMF loader (``sw_load_ovmf.c: acrn_sw_load_ovmf``): image ends at 4 GiB, reset-vector state."""

from __future__ import annotations

import pytest

from acrn.dm.loaders import GiB, KiB, LoaderError, MemoryLayout, MiB, SparseMemory
from acrn.dm.loaders.e820 import unpack_e820
from acrn.dm.loaders.ovmf import firmware_image, load_ovmf


def test_image_ends_at_4_gib_with_e820_at_0xef000() -> None:
    img = bytes(range(256)) * 4096  # 1 MiB
    layout = MemoryLayout.from_memsize(128 * MiB, biosmem=len(img))
    mem = SparseMemory(layout)
    res = load_ovmf(mem, layout, img)
    assert mem.read(4 * GiB - len(img), len(img)) == img
    assert res.placements["entry"] == 4 * GiB - 16
    blob = mem.read(0xEF000, 8 + 60)
    assert blob[:4] == b"820\0" and int.from_bytes(blob[4:8], "little") == 3
    assert unpack_e820(blob[8:], 3)[1].end == 128 * MiB


def test_registers_reset_vector_with_table_limits_zero() -> None:
    layout = MemoryLayout.from_memsize(64 * MiB, biosmem=4096)
    r = load_ovmf(SparseMemory(layout), layout, b"\xf4" * 4096).regs
    assert (r.cr0, r.cs_sel, r.cs_base, r.cs_limit, r.cs_ar, r.rip) == (
        0x30,
        0xF000,
        0xFFFF0000,
        0xFFFF,
        0x9F,
        0xFFF0,
    )
    assert (r.gdt.limit, r.idt.limit) == (0, 0)


def test_split_firmware_puts_vars_below_code() -> None:
    assert firmware_image(code=b"C" * 10, vars_=b"V" * 4) == b"VVVVCCCCCCCCCC"


def test_firmware_size_limits() -> None:
    with pytest.raises(LoaderError):
        firmware_image(ovmf=bytes(2 * MiB + 1))
    with pytest.raises(LoaderError):
        firmware_image(code=bytes(2 * MiB - 128 * KiB + 1), vars_=b"v")
    with pytest.raises(LoaderError):
        firmware_image(code=b"c", vars_=bytes(128 * KiB + 1))
    with pytest.raises(LoaderError):
        firmware_image(ovmf=b"")


def test_bios_region_must_hold_the_image() -> None:
    layout = MemoryLayout.from_memsize(64 * MiB)
    with pytest.raises(LoaderError, match="BIOS region"):
        load_ovmf(SparseMemory(layout), layout, b"\xf4")
