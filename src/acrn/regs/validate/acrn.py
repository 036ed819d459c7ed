"""Level ``acrn``: what the hypervisor refuses, and what it silently changes while landing the state.

Errors are ``is_valid_cr0_cr4`` and the vcpu_id bound (the hypercall returns -1, errno EPERM;
``hypervisor/common/hypercall.c: hcall_set_vcpu_regs``); warnings are what
``hypervisor/arch/x86/guest/vcpu.c: set_vcpu_regs`` changes.  The rules themselves are :mod:`acrn.rules`,
shared with the emulated hypervisor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from acrn import arch, rules
from acrn.regs.model import SELECTOR_NAMES
from acrn.regs.validate.core import (
    CR0_NAMES,
    CR4_NAMES,
    SRC_CR,
    SRC_HC,
    SRC_LAND,
    SRC_VMCS,
    Context,
    Hit,
    bit_names,
    rule,
)

_RFLAGS_NAMES: Final = {0: "CF", 1: "bit 1", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF",
                       11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID"}  # fmt: skip


@rule("acrn.vcpu_id", "acrn", SRC_HC)
def _acrn_vcpu_id(c: Context) -> Iterator[Hit]:
    """vcpu_id must be below the platform's pCPU count (MAX_VCPUS_PER_VM), not the VM's vCPU count."""
    if c.regs.vcpu_id >= c.facts.pcpu_num:
        yield Hit(
            ["vcpu_id"],
            f"vcpu_id = {c.regs.vcpu_id} is not below the platform's {c.facts.pcpu_num} pCPUs: "
            "the hypercall fails with -1 (EPERM)",
        )


def _cr_required_missing(value: int, mask: int, required: int) -> int:
    return required & ~value & mask


def _cr_reserved_set(value: int, mask: int, required: int) -> int:
    return value & mask & ~required


@rule("acrn.cr0.ne", "acrn", SRC_CR)
def _acrn_cr0_ne(c: Context) -> Iterator[Hit]:
    """CR0.NE is fixed to 1 in VMX operation on usual hardware, so ACRN refuses a CR0 without it."""
    missing = _cr_required_missing(c.regs.cr0, c.masks.cr0_reserved_mask, c.masks.cr0_required)
    if missing & arch.CR0_NE:
        yield Hit(
            ["vcpu_regs.cr0"],
            f"cr0 = {c.regs.cr0:#x} has NE (bit 5) clear; ACRN requires it (VMX fixed-1 bit): "
            "the hypercall fails with -1 (EPERM)",
        )


@rule("acrn.cr0.fixed1", "acrn", SRC_CR)
def _acrn_cr0_fixed1(c: Context) -> Iterator[Hit]:
    """Other CR0 bits fixed to 1 by the platform (IA32_VMX_CR0_FIXED0 minus PE/PG) must be 1."""
    missing = _cr_required_missing(c.regs.cr0, c.masks.cr0_reserved_mask, c.masks.cr0_required)
    missing &= ~arch.CR0_NE
    if missing:
        yield Hit(
            ["vcpu_regs.cr0"],
            f"cr0 = {c.regs.cr0:#x} lacks the platform's fixed-1 bits {bit_names(missing, CR0_NAMES)}: "
            "the hypercall fails with -1 (EPERM)",
        )


@rule("acrn.cr0.reserved", "acrn", SRC_CR)
def _acrn_cr0_reserved(c: Context) -> Iterator[Hit]:
    """Only PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG may be set in CR0 (bits 63:32 included)."""
    bad = _cr_reserved_set(c.regs.cr0, c.masks.cr0_reserved_mask, c.masks.cr0_required)
    if bad:
        yield Hit(
            ["vcpu_regs.cr0"],
            f"cr0 = {c.regs.cr0:#x} sets {bit_names(bad, CR0_NAMES)}, which ACRN treats as reserved: "
            "the hypercall fails with -1 (EPERM)",
        )


def _cr4_bad(c: Context) -> int:
    return _cr_reserved_set(c.regs.cr4, c.masks.cr4_reserved_mask, c.masks.cr4_required)


@rule("acrn.cr4.vmxe", "acrn", SRC_CR)
def _acrn_cr4_vmxe(c: Context) -> Iterator[Hit]:
    """CR4.VMXE must be 0 (unless nested VMX is built in)."""
    if _cr4_bad(c) & arch.CR4_VMXE:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets VMXE (bit 13), which ACRN forbids: "
                  "the hypercall fails with -1 (EPERM)")  # fmt: skip


@rule("acrn.cr4.smxe", "acrn", SRC_CR)
def _acrn_cr4_smxe(c: Context) -> Iterator[Hit]:
    """CR4.SMXE must be 0."""
    if _cr4_bad(c) & arch.CR4_SMXE:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets SMXE (bit 14), which ACRN forbids: "
                  "the hypercall fails with -1 (EPERM)")  # fmt: skip


@rule("acrn.cr4.cet", "acrn", SRC_CR)
def _acrn_cr4_cet(c: Context) -> Iterator[Hit]:
    """CR4.CET must be 0."""
    if _cr4_bad(c) & arch.CR4_CET:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets CET (bit 23), which ACRN forbids: "
                  "the hypercall fails with -1 (EPERM)")  # fmt: skip


@rule("acrn.cr4.reserved", "acrn", SRC_CR)
def _acrn_cr4_reserved(c: Context) -> Iterator[Hit]:
    """Any other CR4 bit ACRN does not expose (reserved, or unsupported by the platform) must be 0."""
    bad = _cr4_bad(c) & ~(arch.CR4_VMXE | arch.CR4_SMXE | arch.CR4_CET)
    if bad:
        yield Hit(
            ["vcpu_regs.cr4"],
            f"cr4 = {c.regs.cr4:#x} sets {bit_names(bad, CR4_NAMES)}, which ACRN treats as reserved on this "
            "platform: the hypercall fails with -1 (EPERM)",
        )


@rule("acrn.cr4.fixed1", "acrn", SRC_CR)
def _acrn_cr4_fixed1(c: Context) -> Iterator[Hit]:
    """CR4 bits the platform fixes to 1 (other than VMXE/SMXE/CET, which ACRN hides) must be 1."""
    missing = _cr_required_missing(c.regs.cr4, c.masks.cr4_reserved_mask, c.masks.cr4_required)
    if missing:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} lacks the platform's fixed-1 bits "
                  f"{bit_names(missing, CR4_NAMES)}: the hypercall fails with -1 (EPERM)")  # fmt: skip


@rule("acrn.rflags.masked", "acrn", SRC_LAND)
def _acrn_rflags_masked(c: Context) -> Iterator[Hit]:
    """A non-zero RFLAGS loses CF/PF/AF/ZF/SF/OF (``acrn.rules.landed_rflags``)."""
    r = c.regs.rflags
    if r and r & rules.RFLAGS_CLEARED:
        yield Hit(
            ["vcpu_regs.rflags"],
            f"rflags = {r:#x}: ACRN clears {bit_names(r & rules.RFLAGS_CLEARED, _RFLAGS_NAMES)}, "
            f"the vCPU starts with {rules.landed_rflags(r):#x}",
            "warning",
        )


@rule("acrn.rflags.bit1", "acrn", SRC_LAND)
def _acrn_rflags_bit1(c: Context) -> Iterator[Hit]:
    """Only rflags == 0 becomes 0x2; a non-zero value without bit 1 stays invalid."""
    r = c.regs.rflags
    if r and not r & arch.RFLAGS_FIXED1:
        yield Hit(
            ["vcpu_regs.rflags"],
            f"rflags = {r:#x} lacks bit 1 and ACRN does not set it (only 0 becomes 0x2): VM entry will "
            "fail (arch.rflags.fixed1)",
            "warning",
        )


@rule("acrn.segment.real_mode_base", "acrn", SRC_LAND)
def _acrn_segment_real_mode_base(c: Context) -> Iterator[Hit]:
    """In real mode a non-zero SS/DS/ES/FS/GS selector does not give base selector<<4: ACRN sets base 0."""
    if c.regs.cr0 & arch.CR0_PE:
        return
    for n in SELECTOR_NAMES[1:6]:
        sel = getattr(c.regs, n)
        if sel:
            yield Hit(
                [f"vcpu_regs.{n}"],
                f"{n} = {sel:#x} in real mode: ACRN lands base 0, not {sel << 4:#x} (selector << 4); "
                "only CS gets a base (cs_base)",
                "warning",
            )


@rule("acrn.segment.forced", "acrn", SRC_LAND)
def _acrn_segment_forced(c: Context) -> Iterator[Hit]:
    """LDTR and TR land with base 0, limit 0xFFFF and fixed AR whatever the GDT says."""
    for n, what, ar in (("ldt_sel", "LDTR", rules.LDTR_AR), ("tr_sel", "TR", rules.TR_AR)):
        sel = getattr(c.regs, n)
        if sel:
            yield Hit(
                [f"vcpu_regs.{n}"],
                f"{n} = {sel:#x}: ACRN lands {what} with base 0, limit 0xffff, AR {ar:#06x}, not the GDT "
                "descriptor this selector names",
                "warning",
            )


@rule("acrn.cr4.stripped", "acrn", SRC_VMCS)
def _acrn_cr4_stripped(c: Context) -> Iterator[Hit]:
    """CR4.VMXE/SMXE/MCE are masked off when CR4 is applied at the first VM entry."""
    stripped = c.regs.cr4 & rules.CR4_MASKED_AT_ENTRY & ~_cr4_bad(c)
    if stripped:
        yield Hit(
            ["vcpu_regs.cr4"],
            f"cr4 = {c.regs.cr4:#x}: ACRN strips {bit_names(stripped, CR4_NAMES)} at the first VM entry",
            "warning",
        )


@rule("acrn.efer.compat", "acrn", SRC_LAND)
def _acrn_efer_compat(c: Context) -> Iterator[Hit]:
    """EFER.LMA without CS.L (cs_ar bit 13) makes ACRN pick compatibility mode, not 64-bit mode."""
    if c.regs.ia32_efer & arch.EFER_LMA and not c.regs.cs_ar & arch.AR_L:
        yield Hit(
            ["vcpu_regs.ia32_efer", "vcpu_regs.cs_ar"],
            f"ia32_efer = {c.regs.ia32_efer:#x} sets LMA but cs_ar = {c.regs.cs_ar:#x} has L (bit 13) clear: "
            "ACRN enters compatibility mode and does not set the IA-32e mode guest control",
            "warning",
        )
