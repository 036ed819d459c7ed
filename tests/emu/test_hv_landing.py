"""``is_valid_cr0_cr4`` (CR0/CR4 validity), ``set_vcpu_regs`` (register landing, checked against an
independent table-driven statement of the rules written here) and the reset template."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from acrn import uapi
from acrn.emu.platform import Platform
from acrn.rules import is_valid_cr0_cr4, land_vcpu_regs, reset_vcpu_state

PLATFORM = Platform.default()
U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
U16 = st.integers(0, 0xFFFF)

# set_vcpu_regs, restated as data: (segment, selector field) in landing order; defaults by CR0.PE.
SELECTORS = [
    ("cs", "cs_sel"),
    ("ss", "ss_sel"),
    ("ds", "ds_sel"),
    ("es", "es_sel"),
    ("fs", "fs_sel"),
    ("gs", "gs_sel"),
]
DEFAULTS = {1: (0xFFFFFFFF, 0xC093), 0: (0xFFFF, 0x0093)}
FIXED = {"ldtr": ("ldt_sel", 0x82), "tr": ("tr_sel", 0x8B)}
GPRS = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *[f"r{i}" for i in range(8, 16)]]
RAW = {"cr0": "cr0", "cr3": "cr3", "cr4": "cr4", "efer": "ia32_efer", "rip": "rip"}


@st.composite
def acrn_regs(draw: st.DrawFn) -> uapi.acrn_regs:
    r = uapi.acrn_regs()
    for g in GPRS:
        setattr(r.gprs, g, draw(U64))
    for f in ("rip", "cs_base", "cr3", "rflags"):
        setattr(r, f, draw(U64))
    r.cr0 = draw(st.one_of(U64, st.sampled_from([0x30, 0x31, 0x80000031, 0x80050033])))
    r.cr4 = draw(U64)
    r.ia32_efer = draw(st.one_of(U64, st.sampled_from([0, 0x500, 0xD01])))
    if draw(st.booleans()):
        r.rflags = 0
    r.cs_ar, r.cs_limit = draw(U32), draw(U32)
    for _, f in SELECTORS:
        setattr(r, f, draw(U16))
    r.ldt_sel, r.tr_sel = draw(U16), draw(U16)
    r.gdt.base, r.gdt.limit = draw(U64), draw(U16)
    r.idt.base, r.idt.limit = draw(U64), draw(U16)
    return r


@settings(max_examples=300, deadline=None)
@given(acrn_regs())
def test_land_vcpu_regs_matches_spec_4_3(r: uapi.acrn_regs) -> None:
    s = land_vcpu_regs(r).to_dict()
    limit, ar = DEFAULTS[r.cr0 & 1]
    for name, sel in SELECTORS[1:]:
        assert s[name] == {"selector": getattr(r, sel), "base": 0, "limit": limit, "ar": ar}
    assert s["cs"] == {"selector": r.cs_sel, "base": r.cs_base, "limit": r.cs_limit, "ar": r.cs_ar}
    for name, (sel, fixed_ar) in FIXED.items():
        assert s[name] == {"selector": getattr(r, sel), "base": 0, "limit": 0xFFFF, "ar": fixed_ar}
    assert s["gdtr"] == {"base": r.gdt.base, "limit": r.gdt.limit}
    assert s["idtr"] == {"base": r.idt.base, "limit": r.idt.limit}
    assert s["rflags"] == (2 if r.rflags == 0 else r.rflags & ~0x8D5)
    for key, field in RAW.items():
        assert s[key] == getattr(r, field)
    for g in GPRS:
        assert s[g] == getattr(r.gprs, g)
    if r.ia32_efer & (1 << 10):
        assert s["mode"] == ("long" if r.cs_ar & (1 << 13) else "compat")
    else:
        assert s["mode"] == ("protected" if r.cr0 & 1 else "real")


def test_land_vcpu_regs_rflags_bit1_not_forced() -> None:
    r = uapi.acrn_regs()
    r.rflags = 0x200
    assert land_vcpu_regs(r).rflags == 0x200


def test_land_vcpu_regs_keeps_cr2() -> None:
    cur = reset_vcpu_state()
    cur.cr2 = 0xDEAD000
    assert land_vcpu_regs(uapi.acrn_regs(), cur).cr2 == 0xDEAD000


def test_reset_template_spec_4_4() -> None:
    s = reset_vcpu_state().to_dict()
    assert s["cs"] == {"selector": 0xF000, "base": 0xFFFF0000, "limit": 0xFFFF, "ar": 0x9F}
    for n in ("ss", "ds", "es", "fs", "gs"):
        assert s[n] == {"selector": 0, "base": 0, "limit": 0xFFFF, "ar": 0x93}
    assert s["gdtr"] == s["idtr"] == {"base": 0, "limit": 0xFFFF}
    assert (s["ldtr"]["ar"], s["tr"]["ar"]) == (0x82, 0x8B)
    assert (s["cr0"], s["cr3"], s["cr4"], s["efer"], s["rflags"], s["rip"]) == (0x30, 0, 0, 0, 2, 0xFFF0)
    assert all(s[g] == 0 for g in GPRS)
    assert s["mode"] == "real"


# --- is_valid_cr0_cr4 ---------------------------------------------------------------------------
def test_cr0_needs_ne() -> None:
    assert is_valid_cr0_cr4(0x30, 0, PLATFORM.cr_masks)
    assert is_valid_cr0_cr4(0x31, 0, PLATFORM.cr_masks)
    assert not is_valid_cr0_cr4(0x1, 0, PLATFORM.cr_masks)
    assert not is_valid_cr0_cr4(0x0, 0, PLATFORM.cr_masks)


def test_cr0_allows_only_architectural_bits() -> None:
    allowed = (
        (1 << 0)
        | (1 << 1)
        | (1 << 2)
        | (1 << 3)
        | (1 << 4)
        | (1 << 16)
        | (1 << 18)
        | (1 << 29)
        | (1 << 30)
        | (1 << 31)
    )
    assert is_valid_cr0_cr4(0x20 | allowed, 0, PLATFORM.cr_masks)
    for bit in range(64):
        if not (1 << bit) & (allowed | 0x20):
            assert not is_valid_cr0_cr4(0x20 | (1 << bit), 0, PLATFORM.cr_masks), bit


def test_cr0_bits_63_32_rejected() -> None:
    assert not is_valid_cr0_cr4((1 << 32) | 0x30, 0, PLATFORM.cr_masks)
    assert not is_valid_cr0_cr4((1 << 63) | 0x30, 0, PLATFORM.cr_masks)


def test_cr4_vmxe_smxe_cet_rejected() -> None:
    for bit in (13, 14, 23):
        assert not is_valid_cr0_cr4(0x30, 1 << bit, PLATFORM.cr_masks), bit


def test_cr4_allowed_bits() -> None:
    for bit in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 17, 18, 20, 21, 22, 24):
        assert is_valid_cr0_cr4(0x30, 1 << bit, PLATFORM.cr_masks), bit
    assert not is_valid_cr0_cr4(0x30, 1 << 15, PLATFORM.cr_masks)  # reserved
    assert not is_valid_cr0_cr4(0x30, 1 << 19, PLATFORM.cr_masks)  # KL not supported by the default board
    assert not is_valid_cr0_cr4(0x30, 1 << 40, PLATFORM.cr_masks)


def test_cr_masks_follow_platform_fixed_msrs() -> None:
    p = Platform.default()
    p.vmx_cr0_fixed0 = 0x80000001  # a CPU where NE is flexible
    assert is_valid_cr0_cr4(0x1, 0, p.cr_masks)


def test_first_entry_masks_vmxe_smxe_and_mce_from_the_stored_cr4() -> None:
    from acrn.arch import CR4_MCE, CR4_PAE, CR4_SMXE, CR4_VMXE, CpuState
    from acrn.rules import first_entry_state

    stored = CpuState(cr4=CR4_PAE | CR4_MCE | CR4_VMXE | CR4_SMXE, cr0=0x31, rip=0x1234)
    entered = first_entry_state(stored)
    assert entered.cr4 == CR4_PAE
    assert stored.cr4 == CR4_PAE | CR4_MCE | CR4_VMXE | CR4_SMXE  # the stored context is untouched
    assert (entered.cr0, entered.rip) == (0x31, 0x1234)
