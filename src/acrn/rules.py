"""ACRN's register rules, in one place: the CR0/CR4 check and how SET_VCPU_REGS lands a state.

Everything here is a pure function of its arguments.  The emulated hypervisor (``acrn.emu.hv``)
applies these rules to SET_VCPU_REGS, RESET_VM and VM creation; the register tools
(``acrn.regs.validate``, ``acrn.regs.show``) explain them and show the state a request produces.
Both read the same definitions, so the tool's verdict is the hypervisor's.  This module imports
only ``acrn.uapi`` and ``acrn.arch``.

Sources, in ACRN (projectacrn/acrn-hypervisor):

* ``hypervisor/arch/x86/guest/virtual_cr.c``: ``init_cr0_cr4_flexible_bits`` (the masks, computed
  once at boot from the VMX FIXED MSRs) and ``is_valid_cr0_cr4`` (the only register check of
  ``hypervisor/common/hypercall.c: hcall_set_vcpu_regs``);
* ``hypervisor/arch/x86/guest/vcpu.c``: ``set_vcpu_regs`` (the landing) and ``realmode_init_vregs``
  (the reset template used by ``reset_vcpu_regs``);
* ``hypervisor/arch/x86/guest/vmcs.c``: ``init_guest_state`` (called by ``init_vmcs``), which
  applies the stored CR0/CR4 at the vCPU's first entry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

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

_U64: Final = (1 << 64) - 1

# ------------------------------------------------------------------------------------------------
# The default board: the hardware facts the rules depend on, defined once.
# ``acrn.emu.platform.Platform`` and ``acrn.regs.validate.VmxFacts`` both take their defaults here.
# ------------------------------------------------------------------------------------------------
#: pCPUs of the default board; SET_VCPU_REGS refuses ``vcpu_id`` at or above it (MAX_VCPUS_PER_VM).
DEFAULT_PCPU_NUM: Final = 4
#: IA32_VMX_CR0_FIXED0 on usual Intel hardware (Intel SDM Vol. 3 A.7): PE, NE and PG fixed to 1.
#: ACRN makes PE and PG flexible for its unrestricted guests, so only NE stays required.
DEFAULT_VMX_CR0_FIXED0: Final = 0x80000021
#: IA32_VMX_CR0_FIXED1: bits 31:0 may be 1, bits 63:32 are fixed to 0.
DEFAULT_VMX_CR0_FIXED1: Final = 0xFFFFFFFF
#: IA32_VMX_CR4_FIXED0 (Intel SDM Vol. 3 A.8): VMXE fixed to 1 in VMX operation.
DEFAULT_VMX_CR4_FIXED0: Final = CR4_VMXE
#: IA32_VMX_CR4_FIXED1 of a recent core: bits 0-24 may be 1 except bit 15 (reserved) and KL (bit 19).
DEFAULT_VMX_CR4_FIXED1: Final = 0x1F77FFF

# ------------------------------------------------------------------------------------------------
# CR0/CR4 validity: virtual_cr.c (the non-nested-VMX build unless ``nested_vmx``)
# ------------------------------------------------------------------------------------------------
CR0_PASSTHRU_BITS: Final = CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_AM
CR0_TRAP_AND_PASSTHRU_BITS: Final = CR0_PE | CR0_PG | CR0_WP
CR0_TRAP_AND_EMULATE_BITS: Final = CR0_CD | CR0_NW
CR4_PASSTHRU_BITS: Final = (
    CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PGE | CR4_PCE | CR4_OSFXSR | CR4_PCIDE
    | CR4_OSXSAVE | CR4_FSGSBASE | CR4_OSXMMEXCPT | CR4_UMIP | CR4_LA57
)  # fmt: skip
CR4_TRAP_AND_PASSTHRU_BITS: Final = CR4_PSE | CR4_PAE | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS | CR4_KL
CR4_TRAP_AND_EMULATE_BITS: Final = CR4_MCE
#: Bits ACRN hides from the guest whatever the hardware says: the guest must see them as 0.
CR4_EMULATED_RESERVE_BITS: Final = CR4_VMXE | CR4_CET | CR4_SMXE


@dataclass(frozen=True)
class CrMasks:
    """ACRN's (reserved-bit mask, required value) pairs for CR0 and CR4.

    A CR0/CR4 pair is valid iff the reserved bits of each hold exactly the required value
    (:meth:`accepts`).  Build one with :meth:`from_vmx_fixed`, from the platform's VMX MSRs.
    """

    cr0_reserved_mask: int
    cr0_required: int
    cr4_reserved_mask: int
    cr4_required: int

    @staticmethod
    @functools.cache
    def from_vmx_fixed(
        cr0_fixed0: int = DEFAULT_VMX_CR0_FIXED0,
        cr0_fixed1: int = DEFAULT_VMX_CR0_FIXED1,
        cr4_fixed0: int = DEFAULT_VMX_CR4_FIXED0,
        cr4_fixed1: int = DEFAULT_VMX_CR4_FIXED1,
        nested_vmx: bool = False,
    ) -> CrMasks:
        """The masks ``init_cr0_cr4_flexible_bits`` computes at boot from IA32_VMX_CR0/CR4_FIXED0/1.

        "Flexible" bits are those the hardware lets software choose (FIXED0 XOR FIXED1).  PE and PG
        are flexible too because ACRN always runs guests with "unrestricted guest".
        """
        cr0_flex = (cr0_fixed0 ^ cr0_fixed1) | CR0_PE | CR0_PG
        cr0_allowed = (CR0_PASSTHRU_BITS | CR0_TRAP_AND_PASSTHRU_BITS) & cr0_flex | CR0_TRAP_AND_EMULATE_BITS
        cr4_flex = cr4_fixed0 ^ cr4_fixed1
        cr4_allowed = (CR4_PASSTHRU_BITS | CR4_TRAP_AND_PASSTHRU_BITS) & cr4_flex | CR4_TRAP_AND_EMULATE_BITS
        if nested_vmx:  # CONFIG_NVMX_ENABLED lets the guest own VMXE
            cr4_allowed |= CR4_VMXE
        return CrMasks(
            cr0_reserved_mask=~cr0_allowed & _U64,
            cr0_required=cr0_fixed0 & ~cr0_flex & _U64,
            cr4_reserved_mask=~cr4_allowed & _U64,
            # The always-1 bits minus those ACRN emulates as reserved (VMXE is physically 1 but
            # reads 0 in the guest): in practice 0.
            cr4_required=cr4_fixed0 & ~cr4_flex & ~CR4_EMULATED_RESERVE_BITS & _U64,
        )

    def accepts(self, cr0: int, cr4: int) -> bool:
        """``is_valid_cr0_cr4``: both registers' reserved bits hold exactly their required values."""
        return (cr4 & self.cr4_reserved_mask) == self.cr4_required and (
            cr0 & self.cr0_reserved_mask
        ) == self.cr0_required


#: The masks of the default board (:data:`DEFAULT_VMX_CR0_FIXED0` and the other defaults).
DEFAULT_CR_MASKS: Final = CrMasks.from_vmx_fixed()


def is_valid_cr0_cr4(cr0: int, cr4: int, masks: CrMasks = DEFAULT_CR_MASKS) -> bool:
    """ACRN's ``is_valid_cr0_cr4``, the only register check SET_VCPU_REGS makes.

    With typical hardware this means CR0.NE set, CR0 bits 63:32 and undefined bits clear, and
    CR4 VMXE/SMXE/CET and unsupported bits clear.
    """
    return masks.accepts(cr0, cr4)


# ------------------------------------------------------------------------------------------------
# The landing: vcpu.c set_vcpu_regs and realmode_init_vregs
# ------------------------------------------------------------------------------------------------
# Segment access rights ACRN uses (hypervisor/include/arch/x86/asm/guest/vcpu.h).
PROTECTED_MODE_DATA_SEG_AR: Final = 0xC093
REAL_MODE_DATA_SEG_AR: Final = 0x0093
REAL_MODE_CODE_SEG_AR: Final = 0x009F
LDTR_AR: Final = 0x0082
TR_AR: Final = 0x008B
#: The flags ``set_vcpu_regs`` clears from a non-zero RFLAGS (CF, PF, AF, ZF, SF, OF = 0x8D5).
RFLAGS_CLEARED: Final = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF
#: CR4 bits ``init_guest_state`` (from ``init_vmcs``) masks off when it applies the stored CR4 at the first
#: entry.
CR4_MASKED_AT_ENTRY: Final = CR4_VMXE | CR4_SMXE | CR4_MCE

#: The six segment registers in the order of ACRN's internal array and of the UAPI selector fields:
#: ``set_vcpu_regs`` walks both in parallel, so the UAPI order matters.
_SEGMENTS_IN_SELECTOR_ORDER: Final = (
    ("cs", "cs_sel"),
    ("ss", "ss_sel"),
    ("ds", "ds_sel"),
    ("es", "es_sel"),
    ("fs", "fs_sel"),
    ("gs", "gs_sel"),
)


def landed_rflags(rflags: int) -> int:
    """RFLAGS after ``set_vcpu_regs``: 0 becomes 0x2; anything else loses CF/PF/AF/ZF/SF/OF and
    keeps bit 1 as given (it is not forced on)."""
    return RFLAGS_FIXED1 if rflags == 0 else rflags & ~RFLAGS_CLEARED & _U64


def landed_data_segment(cr0: int) -> tuple[int, int]:
    """(AR, limit) every segment gets before CS is overridden: chosen by CR0.PE alone."""
    if cr0 & CR0_PE:
        return PROTECTED_MODE_DATA_SEG_AR, 0xFFFFFFFF
    return REAL_MODE_DATA_SEG_AR, 0xFFFF


def land_vcpu_regs(regs: uapi.acrn_regs, current: CpuState | None = None) -> CpuState:
    """The state ``set_vcpu_regs`` gives a vCPU for ``regs``, in its step order.

    ``current`` is the vCPU's state before the call; the fields the call does not write (CR2) are
    kept from it.  The input is not validated here (that is :func:`is_valid_cr0_cr4`'s job).
    """
    st = current.copy() if current is not None else CpuState()
    # All six segments get base 0 and the default limit/AR chosen by CR0.PE alone.
    ar, limit = landed_data_segment(int(regs.cr0))
    for name, sel_field in _SEGMENTS_IN_SELECTOR_ORDER:
        setattr(st, name, Segment(int(getattr(regs, sel_field)), 0, limit, ar))
    # Only CS can carry its own base/limit/AR.
    st.cs = Segment(int(regs.cs_sel), int(regs.cs_base), int(regs.cs_limit), int(regs.cs_ar))
    st.gdtr = DescriptorTable(int(regs.gdt.base), int(regs.gdt.limit))
    st.idtr = DescriptorTable(int(regs.idt.base), int(regs.idt.limit))
    # LDTR/TR hidden parts are fixed whatever is passed.
    st.ldtr = Segment(int(regs.ldt_sel), 0, 0xFFFF, LDTR_AR)
    st.tr = Segment(int(regs.tr_sel), 0, 0xFFFF, TR_AR)
    # GPRs as a block, then RIP and EFER.
    for name in GPR_NAMES:
        setattr(st, name, int(getattr(regs.gprs, name)))
    st.rip = int(regs.rip)
    st.efer = int(regs.ia32_efer)
    st.rflags = landed_rflags(int(regs.rflags))
    # CRs are stored raw; init_vmcs applies them (CR4 masked) at the first VM entry.
    st.cr0 = int(regs.cr0)
    st.cr3 = int(regs.cr3)
    st.cr4 = int(regs.cr4)
    # ACRN's cpu_mode (from EFER.LMA, CS.L and CR0.PE) is derived by CpuState.mode.
    return st


def first_entry_state(stored: CpuState) -> CpuState:
    """The state a vCPU enters the guest with after START: the stored one with CR4 applied as
    ``init_guest_state`` applies it, VMXE, SMXE and MCE masked off."""
    st = stored.copy()
    st.cr4 &= ~CR4_MASKED_AT_ENTRY
    return st


def reset_vcpu_state() -> CpuState:
    """The architectural reset template ``realmode_init_vregs`` that ``reset_vcpu_regs`` applies
    (``hypervisor/arch/x86/guest/vcpu.c``); the context is all zero first, so RDX is 0, not the
    CPUID signature."""
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
