"""The guest catalogue: images, layout and register states (no accelerator needed)."""

from __future__ import annotations

import pytest

from acrn.arch import AR_L, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from acrn.guests import (
    GUESTS,
    LOAD_GPA,
    MEM_SIZE,
    STACK_TOP,
    compute_output,
    compute_sum,
    debugexit_status,
    get,
    parse_probe,
)

ALL = sorted(GUESTS)


@pytest.mark.parametrize("name", ALL)
def test_image_fits_in_ram_above_the_stack(name: str) -> None:
    g = GUESTS[name]
    assert g.load_gpa == LOAD_GPA and g.mem_size == MEM_SIZE
    assert g.load_gpa >= STACK_TOP
    assert 0 < len(g.image()) <= g.mem_size - g.load_gpa


@pytest.mark.parametrize("name", ALL)
def test_image_ends_where_the_linker_says(name: str) -> None:
    g = GUESTS[name]
    assert g.load_gpa + len(g.image()) == g.symbols()["image_end"]


@pytest.mark.parametrize("name", ALL)
def test_entry_point_is_the_first_byte(name: str) -> None:
    g = GUESTS[name]
    assert g.regs().rip == g.symbols()["start"] == g.load_gpa


@pytest.mark.parametrize("name", ALL)
def test_register_state_passes_acrn_cr0_check(name: str) -> None:
    # is_valid_cr0_cr4: NE is fixed to 1 on usual hardware, so ACRN refuses a CR0 without it.
    assert GUESTS[name].regs().cr0 & CR0_NE


@pytest.mark.parametrize("name", ALL)
def test_register_state_encodes_to_the_296_byte_blob(name: str) -> None:
    assert len(GUESTS[name].regs().to_bytes()) == 296


@pytest.mark.parametrize("name", ALL)
def test_memory_has_the_image_at_load_gpa_and_zeroes_elsewhere(name: str) -> None:
    g = GUESTS[name]
    mem = g.memory()
    img = g.image()
    assert len(mem) == g.mem_size
    assert mem[g.load_gpa : g.load_gpa + len(img)] == img
    assert not any(mem[: g.load_gpa])


def test_real_mode_state_uses_acrn_real_mode_code_ar() -> None:
    r = get("hello_real").regs()
    assert (r.cr0, r.cs_sel, r.cs_base, r.cs_limit, r.cs_ar) == (0x30, 0, 0, 0xFFFF, 0x009F)
    assert (r.idt.base, r.idt.limit) == (0, 0x3FF)


def test_protected_mode_state_is_acrn_dm_bzimage_style() -> None:
    g = get("hello_protected")
    r = g.regs()
    assert (r.cr0, r.cs_sel, r.cs_ar, r.cs_limit, r.cs_base) == (0x31, 0x10, 0xC09B, 0xFFFFFFFF, 0)
    assert (r.ds_sel, r.ss_sel, r.es_sel, r.fs_sel, r.gs_sel) == (0x18, 0x18, 0x18, 0, 0)
    assert (r.gdt.base, r.gdt.limit) == (g.symbols()["gdt"], 31)


@pytest.mark.parametrize("name", [n for n in ALL if GUESTS[n].mode != "real"])
def test_gdt_in_the_image_is_acrn_loader_gdt(name: str) -> None:
    g = GUESTS[name]
    img = g.image()
    off = g.symbols()["gdt"] - g.load_gpa
    entries = [int.from_bytes(img[off + 8 * i : off + 8 * i + 8], "little") for i in range(4)]
    code = 0x00AF9B000000FFFF if g.mode == "long" else 0x00CF9B000000FFFF
    assert entries == [0, 0, code, 0x00CF93000000FFFF]


def test_long_mode_state_enters_64_bit_mode_directly() -> None:
    g = get("hello_long")
    r = g.regs()
    assert r.cr0 == CR0_PG | 0x31 and r.cr0 & CR0_PE
    assert r.cr4 == CR4_PAE
    assert r.ia32_efer == EFER_LME | EFER_LMA
    assert r.cs_ar == 0xA09B and r.cs_ar & AR_L
    assert r.cr3 == g.symbols()["pml4"]


@pytest.mark.parametrize("name", ["hello_long", "probe_long"])
def test_page_tables_identity_map_1g_with_2m_pages(name: str) -> None:
    g = GUESTS[name]
    mem = g.memory()
    cr3 = g.regs().cr3
    assert cr3 % 4096 == 0

    def q(addr: int) -> int:
        return int.from_bytes(mem[addr : addr + 8], "little")

    pdpt = q(cr3) & ~0xFFF
    assert q(cr3) & 0x3 == 0x3
    pd = q(pdpt) & ~0xFFF
    assert [q(pd + 8 * i) for i in (0, 1, 511)] == [0x83, (1 << 21) | 0x83, (511 << 21) | 0x83]


def test_regs_overrides_gprs_and_defaults_params() -> None:
    g = get("compute")
    assert g.regs().rcx == 1000
    assert g.regs(rcx=5).rcx == 5
    with pytest.raises(ValueError, match="general-purpose"):
        g.regs(cr0=0)


def test_regs_returns_a_fresh_state_each_time() -> None:
    g = get("hello_real")
    r = g.regs()
    r.rip = 0
    assert g.regs().rip == g.load_gpa


def test_get_names_the_known_guests_on_a_typo() -> None:
    with pytest.raises(KeyError, match="hello_real"):
        get("hello")


def test_compute_checksum_is_the_triangular_number_mod_2_32() -> None:
    assert compute_sum(1000) == 500500
    assert compute_sum(0) == 0
    assert compute_sum(0x10000) == (0x10000 * 0x10001 // 2) & 0xFFFFFFFF
    assert compute_output(3) == "COUNT=0x00000003\nSUM=0x00000006\n"


def test_debugexit_status_rule() -> None:
    assert debugexit_status(0x10) == 0x21


def test_parse_probe_reads_hex_and_words() -> None:
    assert parse_probe("CR0=0x00000031\nDSLIMIT=fault\nnoise\n") == {"CR0": 0x31, "DSLIMIT": "fault"}


def test_guest_json_description_round_trips_the_regs() -> None:
    from acrn.regs.model import VcpuRegs

    g = get("hello_long")
    d = g.to_json_dict()
    assert VcpuRegs.from_json_dict(d["regs"]) == g.regs()
    assert d["mode"] == "long"
