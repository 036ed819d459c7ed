"""Level ``arch``: the processor's VM-entry guest-state checks that ACRN does not make.

Intel SDM Vol. 3 27.3.1 ("Checks on Guest Register State"), applied to the state ACRN actually lands.
A state that fails them makes the first VM entry fail (or, for CR0/CR4, injects #GP through the CR
emulation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from acrn import arch, rules
from acrn.regs.validate.core import (
    CR0_NAMES,
    CR4_NAMES,
    SDM_CR,
    SDM_DT,
    SDM_RIP,
    SDM_SEG,
    Context,
    Hit,
    bit_names,
    enters_ia32e,
    is_canonical,
    rule,
)

_U64: Final = (1 << 64) - 1


@rule("arch.cr0.pg_pe", "arch", SDM_CR)
def _arch_cr0_pg_pe(c: Context) -> Iterator[Hit]:
    """CR0.PG requires CR0.PE."""
    if c.regs.cr0 & arch.CR0_PG and not c.regs.cr0 & arch.CR0_PE:
        yield Hit(["vcpu_regs.cr0"], f"cr0 = {c.regs.cr0:#x} sets PG (bit 31) without PE (bit 0)")


@rule("arch.cr0.nw_cd", "arch", "Intel SDM Vol. 3 2.5 (CR0.NW/CD), KVM kvm_is_valid_cr0")
def _arch_cr0_nw_cd(c: Context) -> Iterator[Hit]:
    """CR0.NW = 1 with CD = 0 is an invalid combination: MOV to CR0 faults and KVM refuses the state."""
    if c.regs.cr0 & arch.CR0_NW and not c.regs.cr0 & arch.CR0_CD:
        yield Hit(["vcpu_regs.cr0"], f"cr0 = {c.regs.cr0:#x} sets NW (bit 29) without CD (bit 30)")


@rule("arch.cr0.pe_unrestricted", "arch", SDM_CR)
def _arch_cr0_pe_unrestricted(c: Context) -> Iterator[Hit]:
    """CR0.PE = 0 or PG = 0 passes VM entry only with the unrestricted-guest control, which ACRN always uses.

    Without it, IA32_VMX_CR0_FIXED0 (PE, NE, PG) applies to PE and PG too: real mode and unpaged
    protected mode cannot be entered.  With it, real mode is only worth a warning.
    """
    cr0 = c.regs.cr0
    if c.facts.unrestricted_guest:
        if not cr0 & arch.CR0_PE:
            yield Hit(["vcpu_regs.cr0"], f"cr0 = {cr0:#x} has PE clear (real mode): VM entry needs the "
                      "unrestricted-guest control, which ACRN always enables", "warning")  # fmt: skip
        return
    missing = (arch.CR0_PE | arch.CR0_PG) & ~cr0
    if missing:
        yield Hit(["vcpu_regs.cr0"], f"cr0 = {cr0:#x} has {bit_names(missing, CR0_NAMES)} clear but the platform "
                  "has no unrestricted guest: VM entry requires PE and PG (IA32_VMX_CR0_FIXED0)")  # fmt: skip


@rule("arch.cr4.reserved", "arch", SDM_CR)
def _arch_cr4_reserved(c: Context) -> Iterator[Hit]:
    """CR4 must not set an architecturally reserved bit (bit 15, bits 63:25)."""
    known = 0
    for b in CR4_NAMES:
        known |= 1 << b
    bad = c.regs.cr4 & ~known
    if bad:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets reserved bits {bit_names(bad, {})}")


@rule("arch.cr4.cet_wp", "arch", SDM_CR)
def _arch_cr4_cet_wp(c: Context) -> Iterator[Hit]:
    """CR4.CET requires CR0.WP."""
    if c.regs.cr4 & arch.CR4_CET and not c.regs.cr0 & arch.CR0_WP:
        yield Hit(["vcpu_regs.cr4", "vcpu_regs.cr0"],
                  f"cr4 = {c.regs.cr4:#x} sets CET but cr0 = {c.regs.cr0:#x} has WP (bit 16) clear")  # fmt: skip


@rule("arch.cr4.pcide", "arch", SDM_CR)
def _arch_cr4_pcide(c: Context) -> Iterator[Hit]:
    """CR4.PCIDE may be 1 only in IA-32e mode."""
    if c.regs.cr4 & arch.CR4_PCIDE and not enters_ia32e(c.regs):
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets PCIDE (bit 17) outside IA-32e mode")


@rule("arch.cr3.reserved", "arch", SDM_CR)
def _arch_cr3_reserved(c: Context) -> Iterator[Hit]:
    """CR3 bits at and above MAXPHYADDR must be 0."""
    m = c.facts.maxphyaddr
    if c.regs.cr3 >> m:
        yield Hit(["vcpu_regs.cr3"], f"cr3 = {c.regs.cr3:#x} sets bits above the {m}-bit physical-address "
                  f"width (bits 63:{m} must be 0)")  # fmt: skip


@rule("arch.ia32e.pg", "arch", SDM_CR)
def _arch_ia32e_pg(c: Context) -> Iterator[Hit]:
    """IA-32e mode (EFER.LMA with CS.L) requires CR0.PG."""
    if enters_ia32e(c.regs) and not c.regs.cr0 & arch.CR0_PG:
        yield Hit(["vcpu_regs.cr0", "vcpu_regs.ia32_efer"],
                  f"64-bit entry (EFER.LMA and CS.L) needs CR0.PG, but cr0 = {c.regs.cr0:#x}")  # fmt: skip


@rule("arch.ia32e.pae", "arch", SDM_CR)
def _arch_ia32e_pae(c: Context) -> Iterator[Hit]:
    """IA-32e mode requires CR4.PAE."""
    if enters_ia32e(c.regs) and not c.regs.cr4 & arch.CR4_PAE:
        yield Hit(["vcpu_regs.cr4", "vcpu_regs.ia32_efer"],
                  f"64-bit entry (EFER.LMA and CS.L) needs CR4.PAE (bit 5), but cr4 = {c.regs.cr4:#x}")  # fmt: skip


@rule("arch.efer.reserved", "arch", SDM_CR)
def _arch_efer_reserved(c: Context) -> Iterator[Hit]:
    """EFER bits other than SCE, LME, LMA and NXE are reserved on Intel."""
    bad = c.regs.ia32_efer & ~(arch.EFER_SCE | arch.EFER_LME | arch.EFER_LMA | arch.EFER_NXE)
    if bad:
        yield Hit(
            ["vcpu_regs.ia32_efer"],
            f"ia32_efer = {c.regs.ia32_efer:#x} sets reserved bits {bit_names(bad, {})}",
        )


@rule("arch.efer.lma_ia32e", "arch", SDM_CR)
def _arch_efer_lma_ia32e(c: Context) -> Iterator[Hit]:
    """EFER.LMA must equal the IA-32e mode guest control, which ACRN sets only with CS.L (``init_vmcs``)."""
    if c.regs.ia32_efer & arch.EFER_LMA and not enters_ia32e(c.regs):
        yield Hit(
            ["vcpu_regs.ia32_efer", "vcpu_regs.cs_ar"],
            f"ia32_efer = {c.regs.ia32_efer:#x} sets LMA but cs_ar = {c.regs.cs_ar:#x} lacks L, so ACRN leaves "
            "the IA-32e mode guest control 0 and LMA does not match it",
        )


@rule("arch.efer.lme_lma", "arch", SDM_CR)
def _arch_efer_lme_lma(c: Context) -> Iterator[Hit]:
    """With CR0.PG set, EFER.LME must equal EFER.LMA."""
    e = c.regs.ia32_efer
    if c.regs.cr0 & arch.CR0_PG and bool(e & arch.EFER_LME) != bool(e & arch.EFER_LMA):
        yield Hit(["vcpu_regs.ia32_efer", "vcpu_regs.cr0"],
                  f"ia32_efer = {e:#x}: with CR0.PG set, LME (bit 8) and LMA (bit 10) must be equal")  # fmt: skip


def _cs_type(c: Context) -> int:
    return c.regs.cs_ar & arch.AR_TYPE_MASK


@rule("arch.cs.type", "arch", SDM_SEG)
def _arch_cs_type(c: Context) -> Iterator[Hit]:
    """CS type must be an accessed code segment (9, 11, 13, 15), or 3 with unrestricted guest."""
    t = _cs_type(c)
    allowed = {9, 11, 13, 15} | ({3} if c.facts.unrestricted_guest else set())
    if t not in allowed:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} has type {t}; CS must be type "
                  f"{', '.join(map(str, sorted(allowed)))} (accessed code, or 3, read/write accessed data, with "
                  "unrestricted guest)")  # fmt: skip


@rule("arch.cs.s", "arch", SDM_SEG)
def _arch_cs_s(c: Context) -> Iterator[Hit]:
    """CS.S (bit 4) must be 1: a code/data descriptor, not a system one."""
    if not c.regs.cs_ar & arch.AR_S:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} has S (bit 4) clear")


@rule("arch.cs.dpl", "arch", SDM_SEG)
def _arch_cs_dpl(c: Context) -> Iterator[Hit]:
    """CS.DPL must fit SS.DPL, which ACRN always lands as 0: so CS.DPL must be 0."""
    dpl = (c.regs.cs_ar >> arch.AR_DPL_SHIFT) & 3
    if dpl:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} has DPL {dpl}; ACRN lands SS with DPL 0 "
                  "and CS.DPL must equal (non-conforming) or not exceed (conforming) it")  # fmt: skip


@rule("arch.cs.p", "arch", SDM_SEG)
def _arch_cs_p(c: Context) -> Iterator[Hit]:
    """CS.P (bit 7) must be 1."""
    if not c.regs.cs_ar & arch.AR_P:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} has P (bit 7) clear")


@rule("arch.cs.reserved_11_8", "arch", SDM_SEG)
def _arch_cs_reserved_11_8(c: Context) -> Iterator[Hit]:
    """CS access-rights bits 11:8 are reserved (acrn-dm's ``acrn_sw_load_elf`` sets them: cs_ar 0xCF9B)."""
    if c.regs.cs_ar & arch.AR_RESERVED_11_8:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} sets reserved bits 11:8 "
                  f"({(c.regs.cs_ar >> 8) & 0xF:#x}); a descriptor's limit 19:16 does not belong in the VMX "
                  "access-rights format (acrn-dm's ELF loader quirk, 0xCF9B)")  # fmt: skip


@rule("arch.cs.reserved_31_17", "arch", SDM_SEG)
def _arch_cs_reserved_31_17(c: Context) -> Iterator[Hit]:
    """CS access-rights bits 31:17 are reserved."""
    if c.regs.cs_ar >> 17:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} sets reserved bits 31:17")


@rule("arch.cs.unusable", "arch", SDM_SEG)
def _arch_cs_unusable(c: Context) -> Iterator[Hit]:
    """CS bit 16 (unusable) is not checked, but then the rest of CS's access rights are undefined after entry."""
    if c.regs.cs_ar & arch.AR_UNUSABLE:
        yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} sets the unusable bit 16: CS's other "
                  "access rights are undefined after VM entry", "warning")  # fmt: skip


@rule("arch.cs.l_and_db", "arch", SDM_SEG)
def _arch_cs_l_and_db(c: Context) -> Iterator[Hit]:
    """CS.L and CS.D/B both set: invalid for a 64-bit entry; a reserved combination elsewhere."""
    if c.regs.cs_ar & arch.AR_L and c.regs.cs_ar & arch.AR_DB:
        if enters_ia32e(c.regs):
            yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} sets both L (bit 13) and D/B "
                      "(bit 14) for a 64-bit entry: D/B must be 0 when L is 1")  # fmt: skip
        else:
            yield Hit(["vcpu_regs.cs_ar"], f"cs_ar = {c.regs.cs_ar:#x} sets both L (bit 13) and D/B (bit 14), "
                      "a reserved combination (harmless only while the guest stays outside IA-32e mode)",
                      "warning")  # fmt: skip


@rule("arch.cs.l_outside_ia32e", "arch", "KVM kvm_is_valid_sregs (stricter than Intel SDM 27.3.1.2)")
def _arch_cs_l_outside_ia32e(c: Context) -> Iterator[Hit]:
    """CS.L = 1 needs EFER.LME and CR0.PG: the processor ignores L outside IA-32e mode, KVM refuses it."""
    r = c.regs
    if r.cs_ar & arch.AR_L and not (r.ia32_efer & arch.EFER_LME and r.cr0 & arch.CR0_PG):
        yield Hit(["vcpu_regs.cs_ar", "vcpu_regs.ia32_efer", "vcpu_regs.cr0"],
                  f"cs_ar = {r.cs_ar:#x} sets L (bit 13) but the state is not in IA-32e mode "
                  f"(ia32_efer = {r.ia32_efer:#x}, cr0 = {r.cr0:#x}): KVM refuses it; clear L or enter long mode")  # fmt: skip


@rule("arch.cs.limit_g", "arch", SDM_SEG)
def _arch_cs_limit_g(c: Context) -> Iterator[Hit]:
    """G=0 needs cs_limit bits 31:20 zero; G=1 needs bits 11:0 all ones."""
    lim, g = c.regs.cs_limit, bool(c.regs.cs_ar & arch.AR_G)
    if g and lim & 0xFFF != 0xFFF:
        yield Hit(["vcpu_regs.cs_limit", "vcpu_regs.cs_ar"],
                  f"cs_limit = {lim:#x} with G = 1 in cs_ar = {c.regs.cs_ar:#x}: bits 11:0 must all be 1")  # fmt: skip
    elif not g and lim >> 20:
        yield Hit(["vcpu_regs.cs_limit", "vcpu_regs.cs_ar"],
                  f"cs_limit = {lim:#x} with G = 0 in cs_ar = {c.regs.cs_ar:#x}: bits 31:20 must be 0")  # fmt: skip


@rule("arch.cs.base", "arch", SDM_SEG)
def _arch_cs_base(c: Context) -> Iterator[Hit]:
    """CS base bits 63:32 must be 0."""
    if c.regs.cs_base >> 32:
        yield Hit(["vcpu_regs.cs_base"], f"cs_base = {c.regs.cs_base:#x}: bits 63:32 must be 0")


@rule("arch.ss.rpl", "arch", SDM_SEG)
def _arch_ss_rpl(c: Context) -> Iterator[Hit]:
    """Without unrestricted guest, SS.RPL must equal CS.RPL and SS.DPL (ACRN lands DPL 0)."""
    if c.facts.unrestricted_guest:
        return
    ss_rpl, cs_rpl = c.regs.ss_sel & 3, c.regs.cs_sel & 3
    if ss_rpl != cs_rpl or ss_rpl != 0:
        yield Hit(["vcpu_regs.ss_sel", "vcpu_regs.cs_sel"], f"ss_sel = {c.regs.ss_sel:#x} has RPL {ss_rpl}: "
                  f"it must equal CS's RPL ({cs_rpl}) and SS.DPL, which ACRN lands as 0")  # fmt: skip


@rule("arch.data.rpl", "arch", SDM_SEG)
def _arch_data_rpl(c: Context) -> Iterator[Hit]:
    """Without unrestricted guest, DS/ES/FS/GS DPL (ACRN lands 0) must not be below the selector's RPL."""
    if c.facts.unrestricted_guest:
        return
    for n in ("ds_sel", "es_sel", "fs_sel", "gs_sel"):
        sel = getattr(c.regs, n)
        if sel & 3:
            yield Hit([f"vcpu_regs.{n}"], f"{n} = {sel:#x} has RPL {sel & 3} above the DPL 0 ACRN lands")


@rule("arch.tr.ti", "arch", SDM_SEG)
def _arch_tr_ti(c: Context) -> Iterator[Hit]:
    """TR's selector TI flag (bit 2) must be 0."""
    if c.regs.tr_sel & 4:
        yield Hit(["vcpu_regs.tr_sel"], f"tr_sel = {c.regs.tr_sel:#x} sets TI (bit 2): TR must name the GDT")


@rule("arch.ldtr.ti", "arch", SDM_SEG)
def _arch_ldtr_ti(c: Context) -> Iterator[Hit]:
    """LDTR's selector TI flag must be 0 while LDTR is usable, and ACRN always lands it usable (AR 0x82)."""
    if c.regs.ldt_sel & 4:
        yield Hit(["vcpu_regs.ldt_sel"], f"ldt_sel = {c.regs.ldt_sel:#x} sets TI (bit 2); ACRN lands LDTR "
                  "usable, so it must name the GDT")  # fmt: skip


@rule("arch.gdtr.base", "arch", SDM_DT)
def _arch_gdtr_base(c: Context) -> Iterator[Hit]:
    """The GDTR base must be canonical."""
    if not is_canonical(c.regs.gdt.base, c.facts.linear_bits):
        yield Hit(["vcpu_regs.gdt.base"], f"gdt.base = {c.regs.gdt.base:#x} is not canonical "
                  f"({c.facts.linear_bits}-bit linear addresses)")  # fmt: skip


@rule("arch.idtr.base", "arch", SDM_DT)
def _arch_idtr_base(c: Context) -> Iterator[Hit]:
    """The IDTR base must be canonical."""
    if not is_canonical(c.regs.idt.base, c.facts.linear_bits):
        yield Hit(["vcpu_regs.idt.base"], f"idt.base = {c.regs.idt.base:#x} is not canonical "
                  f"({c.facts.linear_bits}-bit linear addresses)")  # fmt: skip


@rule("arch.rip.high", "arch", SDM_RIP)
def _arch_rip_high(c: Context) -> Iterator[Hit]:
    """Outside 64-bit mode (IA-32e with CS.L), RIP bits 63:32 must be 0."""
    if not enters_ia32e(c.regs) and c.regs.rip >> 32:
        yield Hit(["vcpu_regs.rip"], f"rip = {c.regs.rip:#x}: bits 63:32 must be 0 outside 64-bit mode")


@rule("arch.rip.canonical", "arch", SDM_RIP)
def _arch_ripis_canonical(c: Context) -> Iterator[Hit]:
    """In 64-bit mode RIP must be canonical."""
    if enters_ia32e(c.regs) and not is_canonical(c.regs.rip, c.facts.linear_bits):
        yield Hit(["vcpu_regs.rip"], f"rip = {c.regs.rip:#x} is not canonical "
                  f"({c.facts.linear_bits}-bit linear addresses)")  # fmt: skip


@rule("arch.rflags.fixed1", "arch", SDM_RIP)
def _arch_rflags_fixed1(c: Context) -> Iterator[Hit]:
    """RFLAGS bit 1 must be 1 in the landed value (ACRN sets it only for an input of 0)."""
    if not rules.landed_rflags(c.regs.rflags) & arch.RFLAGS_FIXED1:
        yield Hit(["vcpu_regs.rflags"], f"rflags = {c.regs.rflags:#x} lands as "
                  f"{rules.landed_rflags(c.regs.rflags):#x}: bit 1 must be 1")  # fmt: skip


@rule("arch.rflags.reserved", "arch", SDM_RIP)
def _arch_rflags_reserved(c: Context) -> Iterator[Hit]:
    """RFLAGS bits 63:22, 15, 5 and 3 must be 0."""
    bad = rules.landed_rflags(c.regs.rflags) & (((_U64 >> 22) << 22) | (1 << 15) | (1 << 5) | (1 << 3))
    if bad:
        yield Hit(
            ["vcpu_regs.rflags"], f"rflags = {c.regs.rflags:#x} sets reserved bits {bit_names(bad, {})}"
        )


@rule("arch.rflags.vm", "arch", SDM_RIP)
def _arch_rflags_vm(c: Context) -> Iterator[Hit]:
    """RFLAGS.VM must be 0 in IA-32e mode and in real mode; in protected mode it needs segments ACRN cannot land."""
    r = c.regs.rflags
    if not r & (1 << 17):
        return
    if enters_ia32e(c.regs) or not c.regs.cr0 & arch.CR0_PE:
        where = "IA-32e mode" if enters_ia32e(c.regs) else "real mode (CR0.PE = 0)"
        yield Hit(["vcpu_regs.rflags"], f"rflags = {r:#x} sets VM (bit 17), which must be 0 in {where}")
    else:
        yield Hit(["vcpu_regs.rflags", "vcpu_regs.cs_ar"], f"rflags = {r:#x} sets VM (bit 17): virtual-8086 "
                  "entry needs every segment with AR 0xf3, limit 0xffff and base selector << 4, which ACRN "
                  "cannot land (it forces the data segments)")  # fmt: skip
