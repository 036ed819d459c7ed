"""acrn.regs.show: decoding of access rights, control bits, modes and the effective state."""

from __future__ import annotations

import pytest

from acrn.regs import presets, show
from acrn.regs.model import VcpuRegs
from acrn.rules import land_vcpu_regs


def test_decode_ar_splits_every_field() -> None:
    d = show.decode_ar(0xCF9B)
    assert (d["type"], d["s"], d["dpl"], d["p"], d["avl"], d["l"], d["db"], d["g"]) == (
        11,
        1,
        0,
        1,
        0,
        0,
        1,
        1,
    )
    assert d["reserved_11_8"] == 0xF and d["type_name"] == "code execute/read accessed"
    assert show.decode_ar(0xA09B)["l"] == 1 and show.decode_ar(0xA09B)["db"] == 0
    assert show.decode_ar(0x1_0000)["unusable"] == 1


@pytest.mark.parametrize(
    ("ar", "name"),
    [(0x93, "data read/write accessed"), (0x9F, "code execute/read conforming accessed"),
     (0x82, "LDT"), (0x8B, "32/64-bit TSS (busy)"), (0x91, "data read-only accessed")],
)  # fmt: skip
def test_ar_type_name(ar: int, name: str) -> None:
    assert show.ar_type_name(ar) == name


def test_control_bits_are_named() -> None:
    assert show.decode_cr0(0x80000031) == ["PE", "ET", "NE", "PG"]
    assert show.decode_cr4(0x2020) == ["PAE", "VMXE"]
    assert show.decode_efer(0x500) == ["LME", "LMA"]
    assert show.decode_rflags(0x3202) == ["1", "IF", "IOPL=3"]


def test_format_regs_shows_mode_cs_and_reserved() -> None:
    r = presets.elf()
    r.reserved_64[2] = 5
    text = show.format_regs(r)
    assert "enters: protected mode, 32-bit code" in text
    assert "reserved11:8=0xf" in text and "D/B=1" in text
    assert "NON-ZERO" in text and "reserved_64" in text
    assert "[PE|ET|NE]" in text


@pytest.mark.parametrize(
    ("regs", "mode"),
    [(presets.reset(), "real mode"), (presets.long64(), "64-bit long mode"),
     (VcpuRegs(cr0=0x31, ia32_efer=0x500, cs_ar=0xC09B), "compatibility mode")],
)  # fmt: skip
def test_format_regs_names_the_entry_mode(regs: VcpuRegs, mode: str) -> None:
    assert mode in show.format_regs(regs)


def test_effective_state_forces_data_segments_and_rflags() -> None:
    r = presets.bzimage()
    r.rflags = 0x2C3
    st = show.effective_state(r)
    assert (st.ds.selector, st.ds.base, st.ds.limit, st.ds.ar) == (0x18, 0, 0xFFFFFFFF, 0xC093)
    assert (st.tr.ar, st.ldtr.ar, st.tr.limit) == (0x8B, 0x82, 0xFFFF)
    assert st.rflags == 0x202
    assert st.mode == "protected"


def test_effective_state_is_the_emulated_hypervisors_landing() -> None:
    for fn in presets.PRESETS.values():
        r = fn()
        r.rflags = 0x8D7
        assert show.effective_state(r) == land_vcpu_regs(r.to_struct().vcpu_regs)


def test_format_state_lists_all_eight_segments() -> None:
    text = show.format_state(show.effective_state(presets.reset()))
    for seg in ("cs", "ss", "ds", "es", "fs", "gs", "ldtr", "tr", "gdtr", "idtr"):
        assert any(line.startswith(seg + " ") for line in text.splitlines()), seg
    assert "mode: real mode" in text
