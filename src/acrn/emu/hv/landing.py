"""How ACRN turns an ``acrn_regs`` into a vCPU's architectural state (spec 4.3, 4.4), and its CR check (4.2).

These are pure functions: the hypervisor uses them for SET_VCPU_REGS, RESET_VM and VM creation, and
the register tools use :func:`land_vcpu_regs` to show the *effective* state a request produces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from acrn import uapi
from acrn.arch import (
    CR0_AM,
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR0_WP,
    CR4_CET,
    CR4_DE,
    CR4_FSGSBASE,
    CR4_KL,
    CR4_LA57,
    CR4_MCE,
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    CR4_OSXSAVE,
    CR4_PAE,
    CR4_PCE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PKE,
    CR4_PKS,
    CR4_PSE,
    CR4_PVI,
    CR4_SMAP,
    CR4_SMEP,
    CR4_SMXE,
    CR4_TSD,
    CR4_UMIP,
    CR4_VME,
    CR4_VMXE,
    GPR_NAMES,
    RFLAGS_AF,
    RFLAGS_CF,
    RFLAGS_FIXED1,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_SF,
    RFLAGS_ZF,
    CpuState,
    DescriptorTable,
    Segment,
)

if TYPE_CHECKING:
    from acrn.emu.platform import Platform

# Segment access rights ACRN uses (hypervisor vcpu.h / cpu.h).
PROTECTED_MODE_DATA_SEG_AR: Final = 0xC093
REAL_MODE_DATA_SEG_AR: Final = 0x0093
REAL_MODE_CODE_SEG_AR: Final = 0x009F
LDTR_AR: Final = 0x0082
TR_AR: Final = 0x008B
#: The flags ``set_vcpu_regs`` clears from a non-zero RFLAGS (CF, PF, AF, ZF, SF, OF = 0x8D5).
RFLAGS_CLEARED: Final = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF

_U64: Final = (1 << 64) - 1

# --- spec 4.2: is_valid_cr0_cr4 (virtual_cr.c, non-nested-VMX build) ---------------------------
CR0_PASSTHRU_BITS: Final = CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_AM
CR0_TRAP_AND_PASSTHRU_BITS: Final = CR0_PE | CR0_PG | CR0_WP
CR0_TRAP_AND_EMULATE_BITS: Final = CR0_CD | CR0_NW
CR4_PASSTHRU_BITS: Final = (
    CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PGE | CR4_PCE | CR4_OSFXSR | CR4_PCIDE
    | CR4_OSXSAVE | CR4_FSGSBASE | CR4_OSXMMEXCPT | CR4_UMIP | CR4_LA57
)  # fmt: skip
CR4_TRAP_AND_PASSTHRU_BITS: Final = CR4_PSE | CR4_PAE | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS | CR4_KL
CR4_TRAP_AND_EMULATE_BITS: Final = CR4_MCE
#: Bits ACRN keeps from the guest whatever the hardware says; the guest must see them as 0.
CR4_EMULATED_RESERVE_BITS: Final = CR4_VMXE | CR4_CET | CR4_SMXE


def cr_masks(platform: Platform) -> tuple[int, int, int, int]:
    """(cr0_reserved_mask, cr0_required_value, cr4_reserved_mask, cr4_required_value), as ACRN
    computes them once at boot from the VMX FIXED0/FIXED1 MSRs (``init_cr0_cr4_flexible_bits``)."""
    cr0_flex = (platform.vmx_cr0_fixed0 ^ platform.vmx_cr0_fixed1) | CR0_PE | CR0_PG
    cr0_reserved = (
        ~((CR0_PASSTHRU_BITS | CR0_TRAP_AND_PASSTHRU_BITS) & cr0_flex | CR0_TRAP_AND_EMULATE_BITS) & _U64
    )
    cr0_required = platform.vmx_cr0_fixed0 & ~cr0_flex & _U64
    cr4_flex = platform.vmx_cr4_fixed0 ^ platform.vmx_cr4_fixed1
    cr4_reserved = (
        ~((CR4_PASSTHRU_BITS | CR4_TRAP_AND_PASSTHRU_BITS) & cr4_flex | CR4_TRAP_AND_EMULATE_BITS) & _U64
    )
    # The always-1 bits, minus those ACRN emulates as reserved (VMXE is physically 1 but reads 0).
    cr4_required = platform.vmx_cr4_fixed0 & ~cr4_flex & ~CR4_EMULATED_RESERVE_BITS & _U64
    return cr0_reserved, cr0_required, cr4_reserved, cr4_required


def is_valid_cr0_cr4(cr0: int, cr4: int, platform: Platform) -> bool:
    """Spec 4.2: the reserved bits of both registers must hold exactly their required values.

    With typical hardware this means CR0.NE set, CR0 bits 63:32 and undefined bits clear, and
    CR4 VMXE/SMXE/CET and unsupported bits clear.  It is the only check SET_VCPU_REGS makes.
    """
    cr0_reserved, cr0_required, cr4_reserved, cr4_required = cr_masks(platform)
    return (cr4 & cr4_reserved) == cr4_required and (cr0 & cr0_reserved) == cr0_required


# --- spec 4.3 / 4.4 --------------------------------------------------------------------------
#: The six segment registers in the order of ACRN's internal array and of the UAPI selector fields.
_SEGMENTS_IN_SELECTOR_ORDER: Final = (
    ("cs", "cs_sel"),
    ("ss", "ss_sel"),
    ("ds", "ds_sel"),
    ("es", "es_sel"),
    ("fs", "fs_sel"),
    ("gs", "gs_sel"),
)


def land_vcpu_regs(regs: uapi.acrn_regs, current: CpuState | None = None) -> CpuState:
    """The state ``set_vcpu_regs`` gives a vCPU for ``regs`` (spec 4.3, in its step order).

    ``current`` is the vCPU's state before the call; the fields the call does not write (CR2) are
    kept from it.  The input is not validated here (that is :func:`is_valid_cr0_cr4`'s job).
    """
    st = current.copy() if current is not None else CpuState()
    # Step 1: all six segments get base 0 and the default limit/AR chosen by CR0.PE alone.
    if regs.cr0 & CR0_PE:
        limit, ar = 0xFFFFFFFF, PROTECTED_MODE_DATA_SEG_AR
    else:
        limit, ar = 0xFFFF, REAL_MODE_DATA_SEG_AR
    for name, sel_field in _SEGMENTS_IN_SELECTOR_ORDER:
        setattr(st, name, Segment(int(getattr(regs, sel_field)), 0, limit, ar))
    # Step 2: only CS can carry its own base/limit/AR.
    st.cs = Segment(int(regs.cs_sel), int(regs.cs_base), int(regs.cs_limit), int(regs.cs_ar))
    # Step 3.
    st.gdtr = DescriptorTable(int(regs.gdt.base), int(regs.gdt.limit))
    st.idtr = DescriptorTable(int(regs.idt.base), int(regs.idt.limit))
    # Step 4: LDTR/TR hidden parts are fixed whatever is passed.
    st.ldtr = Segment(int(regs.ldt_sel), 0, 0xFFFF, LDTR_AR)
    st.tr = Segment(int(regs.tr_sel), 0, 0xFFFF, TR_AR)
    # Step 5: GPRs as a block, then RIP and EFER.
    for name in GPR_NAMES:
        setattr(st, name, int(getattr(regs.gprs, name)))
    st.rip = int(regs.rip)
    st.efer = int(regs.ia32_efer)
    # Step 6: 0 means "default"; otherwise the arithmetic flags are cleared and bit 1 is NOT forced.
    st.rflags = RFLAGS_FIXED1 if regs.rflags == 0 else int(regs.rflags) & ~RFLAGS_CLEARED & _U64
    # Step 7: CRs are stored raw; they are applied (CR4 masked) at the first VM entry.
    st.cr0 = int(regs.cr0)
    st.cr3 = int(regs.cr3)
    st.cr4 = int(regs.cr4)
    # Step 8 (cpu_mode) is derived from EFER.LMA, CS.L and CR0.PE by CpuState.mode.
    return st


#: CR4 bits ``init_vmcs`` masks off when it applies the stored CR4 at the first entry (spec 4.3 step 7).
CR4_MASKED_AT_ENTRY: Final = CR4_VMXE | CR4_SMXE | CR4_MCE


def first_entry_state(stored: CpuState) -> CpuState:
    """The state a vCPU enters the guest with after START: the stored one with CR4 applied as
    ``init_vmcs`` applies it, VMXE, SMXE and MCE masked off (spec 4.3 step 7, 12.9)."""
    st = stored.copy()
    st.cr4 &= ~CR4_MASKED_AT_ENTRY
    return st


def reset_vcpu_state() -> CpuState:
    """The architectural reset template ``realmode_init_vregs`` (spec 4.4); the context is all zero first."""
    st = CpuState()
    st.cs = Segment(0xF000, 0xFFFF0000, 0xFFFF, REAL_MODE_CODE_SEG_AR)
    for name in ("ss", "ds", "es", "fs", "gs"):
        setattr(st, name, Segment(0, 0, 0xFFFF, REAL_MODE_DATA_SEG_AR))
    st.gdtr = DescriptorTable(0, 0xFFFF)
    st.idtr = DescriptorTable(0, 0xFFFF)
    st.ldtr = Segment(0, 0, 0xFFFF, LDTR_AR)
    st.tr = Segment(0, 0, 0xFFFF, TR_AR)
    st.cr0 = CR0_ET | CR0_NE
    st.rflags = RFLAGS_FIXED1
    st.rip = 0xFFF0
    return st
