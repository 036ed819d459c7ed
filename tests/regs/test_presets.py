"""acrn.regs.presets: ACRN's reset state and acrn-dm's loader states (``sw_load_*.c``), and that they
validate as documented."""

from __future__ import annotations

import pytest

from acrn import arch
from acrn.regs import presets
from acrn.regs.model import VcpuRegs
from acrn.regs.presets import KiB, MiB
from acrn.regs.validate import LEVELS, validate

#: The only findings a preset may have: the documented quirks (module docstring of acrn.regs.presets).
ALLOWED = {
    "reset": {"arch.cr0.pe_unrestricted"},
    "ovmf": {"arch.cr0.pe_unrestricted"},
    "vsbl": {"arch.cr0.pe_unrestricted"},
    "elf": {"arch.cs.reserved_11_8"},
    "bzimage": set(),
    "long64": set(),
}


@pytest.mark.parametrize("name", list(presets.PRESETS))
@pytest.mark.parametrize("level", LEVELS)
def test_preset_validates_clean_except_documented_quirks(name: str, level: str) -> None:
    found = {f.rule for f in validate(presets.PRESETS[name](), level)}
    assert found <= ALLOWED[name]
    if level != "arch":
        assert found == set()


def test_elf_preset_reports_the_cs_ar_quirk_as_error() -> None:
    (f,) = validate(presets.elf())
    assert (f.rule, f.severity, f.fields) == ("arch.cs.reserved_11_8", "error", ["vcpu_regs.cs_ar"])


def test_every_preset_works_without_arguments() -> None:
    for fn in presets.PRESETS.values():
        assert isinstance(fn(), VcpuRegs)


def test_reset_preset_is_the_architectural_reset_template() -> None:
    r = presets.reset()
    assert (r.cs_sel, r.cs_base, r.cs_limit, r.cs_ar, r.rip) == (0xF000, 0xFFFF0000, 0xFFFF, 0x9F, 0xFFF0)
    assert (r.cr0, r.cr3, r.cr4, r.ia32_efer, r.rflags) == (0x30, 0, 0, 0, 0x2)
    assert (r.gdt.limit, r.idt.limit, r.gdt.base, r.idt.base) == (0xFFFF, 0xFFFF, 0, 0)
    assert r.rdx == 0


def test_bzimage_preset_entry_is_16m_plus_setup_size() -> None:
    assert presets.bzimage(setup_sects=4).rip == 16 * MiB + 5 * 512
    assert presets.bzimage(setup_sects=0x1E).rip == 16 * MiB + 0x1F * 512


def test_bzimage_preset_treats_zero_setup_sects_as_four() -> None:
    assert presets.bzimage(setup_sects=0).rip == presets.bzimage(setup_sects=4).rip


def test_bzimage_preset_layout_follows_lowmem_and_ramdisk() -> None:
    r = presets.bzimage(lowmem=512 * MiB)
    assert r.rsi == 512 * MiB - 4 * KiB  # zero page
    assert (r.gdt.base, r.gdt.limit) == (512 * MiB - 10 * KiB, 31)
    r = presets.bzimage(lowmem=512 * MiB, ramdisk_size=5000)
    # RAMDISK_LOAD_SIZE = roundup(5000 + 8 KiB, 4 KiB) = 16 KiB; GDT 2 KiB below it.
    assert r.gdt.base == 512 * MiB - 16 * KiB - 2 * KiB
    assert (r.cr0, r.cs_sel, r.cs_ar, r.cs_limit) == (0x31, 0x10, 0xC09B, 0xFFFFFFFF)
    assert (r.ds_sel, r.ss_sel, r.es_sel, r.fs_sel, r.gs_sel) == (0x18, 0x18, 0x18, 0, 0)
    assert (r.rflags, r.idt.limit) == (0, 0)


def test_bzimage_preset_refuses_ramdisk_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="lowmem"):
        presets.bzimage(lowmem=18 * MiB, ramdisk_size=4 * MiB)


@pytest.mark.parametrize("lowmem", [0, 3 * MiB, 4096 * MiB])
def test_presets_refuse_bad_lowmem(lowmem: int) -> None:
    with pytest.raises(ValueError, match="lowmem"):
        presets.bzimage(lowmem=lowmem)


def test_ovmf_preset_has_zero_descriptor_table_limits() -> None:
    r = presets.ovmf()
    assert (r.gdt.limit, r.idt.limit, r.cs_ar, r.cs_base, r.rip, r.cr0) == (
        0,
        0,
        0x9F,
        0xFFFF0000,
        0xFFF0,
        0x30,
    )


def test_elf_preset_sets_magic_and_multiboot_info() -> None:
    r = presets.elf(entry=0x200000, multiboot=True, lowmem=128 * MiB)
    assert (r.rip, r.rax, r.rbx) == (0x200000, 0x2BADB002, 0x20000)
    assert (r.gdt.base, r.gdt.limit) == (128 * MiB - 64 * KiB, 23)
    assert (r.cs_sel, r.cs_ar, r.ds_sel, r.gs_sel) == (0x08, 0xCF9B, 0x10, 0x10)
    assert presets.elf(multiboot=False).rbx == 0
    assert presets.elf(multiboot=False).rax == 0x2BADB002


def test_elf_preset_refuses_64_bit_entry() -> None:
    with pytest.raises(ValueError, match="entry"):
        presets.elf(entry=1 << 32)


def test_vsbl_preset_uses_cs_base_below_64m() -> None:
    r = presets.vsbl(lowmem=256 * MiB)
    assert (r.cs_sel, r.cs_base, r.rip, r.rsi) == (0xF000, 0x03FF0000, 0xFFF0, 256 * MiB - 4 * KiB)


def test_long64_preset_enters_64_bit_mode() -> None:
    r = presets.long64(entry=0x2000, cr3=0x5000)
    assert r.cr0 == arch.CR0_PG | arch.CR0_PE | arch.CR0_NE | arch.CR0_ET
    assert (r.cr4, r.ia32_efer, r.cs_ar, r.cr3, r.rip) == (arch.CR4_PAE, 0x500, 0xA09B, 0x5000, 0x2000)


def test_make_and_parse_params_name_the_bad_parameter() -> None:
    assert (
        presets.make("elf", **presets.parse_params("elf", ["entry=0x1000", "multiboot=true"])).rbx == 0x20000
    )
    with pytest.raises(ValueError, match="'entyr'"):
        presets.parse_params("elf", ["entyr=1"])
    with pytest.raises(ValueError, match="multiboot"):
        presets.parse_params("elf", ["multiboot=maybe"])
    with pytest.raises(ValueError, match="lowmem"):
        presets.parse_params("bzimage", ["lowmem=lots"])
    with pytest.raises(ValueError, match="preset"):
        presets.make("bios")
