"""Validation of a SET_VCPU_REGS argument: "there really is no validation of any fields?"

The answer has three cumulative levels, each a table of small checks with a stable rule id:

``abi``
    What the HSM driver rejects with ``-EINVAL`` before any hypercall: the reserved fields, in the
    driver's order (``drivers/virt/acrn/hsm.c: acrn_dev_ioctl``).
``acrn``
    What the hypervisor rejects (``is_valid_cr0_cr4``, the vcpu_id bound: the hypercall returns -1,
    errno EPERM; ``hypervisor/common/hypercall.c: hcall_set_vcpu_regs``) as errors, and what it
    silently changes while landing the registers (``hypervisor/arch/x86/guest/vcpu.c: set_vcpu_regs``)
    as warnings.  The rules themselves are :mod:`acrn.rules`, shared with the emulated hypervisor.
``arch``
    The processor's VM-entry guest-state checks (Intel SDM Vol. 3 27.3.1, "Checks on Guest Register
    State") that ACRN does not make, applied to the state ACRN actually lands.  A state that fails
    them makes the first VM entry fail (or, for CR0/CR4, injects #GP through the CR emulation).

``validate(regs, level)`` returns every finding (it does not stop at the first, unlike the driver).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from acrn import arch, rules
from acrn.regs.model import SELECTOR_NAMES, VcpuRegs

LEVELS: Final = ("abi", "acrn", "arch")
SEVERITIES: Final = ("error", "warning")

SRC_HSM: Final = "Linux drivers/virt/acrn/hsm.c: acrn_dev_ioctl"
SRC_HC: Final = "ACRN hypervisor/common/hypercall.c: hcall_set_vcpu_regs"
SRC_CR: Final = "ACRN hypervisor/arch/x86/guest/virtual_cr.c: is_valid_cr0_cr4"
SRC_LAND: Final = "ACRN hypervisor/arch/x86/guest/vcpu.c: set_vcpu_regs"
SRC_VMCS: Final = "ACRN hypervisor/arch/x86/guest/vmcs.c: init_guest_state"
SDM_CR: Final = "Intel SDM 27.3.1.1"
SDM_SEG: Final = "Intel SDM 27.3.1.2"
SDM_DT: Final = "Intel SDM 27.3.1.3"
SDM_RIP: Final = "Intel SDM 27.3.1.4"


@dataclass(frozen=True)
class Finding:
    """One violated rule: where it comes from, which C fields, and a sentence saying why."""

    level: str
    severity: str
    rule: str
    fields: list[str]
    message: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "severity": self.severity,
            "rule": self.rule,
            "fields": list(self.fields),
            "message": self.message,
            "source": self.source,
        }

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.message} ({self.source})"


# ------------------------------------------------------------------------------------------------
# The platform: VMX fixed bits and the other machine facts the rules depend on
# ------------------------------------------------------------------------------------------------
#: Physical-address width that bounds CR3 (CPUID 0x80000008 EAX[7:0] of a common core).
DEFAULT_MAXPHYADDR: Final = 46
DEFAULT_LINEAR_BITS: Final = 48


@dataclass(frozen=True)
class VmxFacts:
    """The machine facts the rules read; taken from a platform object where it has them.

    The defaults are the default board's (``acrn.rules``), the same as
    ``acrn.emu.platform.Platform.default()``.
    """

    cr0_fixed0: int = rules.DEFAULT_VMX_CR0_FIXED0
    cr0_fixed1: int = rules.DEFAULT_VMX_CR0_FIXED1
    cr4_fixed0: int = rules.DEFAULT_VMX_CR4_FIXED0
    cr4_fixed1: int = rules.DEFAULT_VMX_CR4_FIXED1
    nested_vmx: bool = False
    pcpu_num: int = rules.DEFAULT_PCPU_NUM
    maxphyaddr: int = DEFAULT_MAXPHYADDR
    linear_bits: int = DEFAULT_LINEAR_BITS
    unrestricted_guest: bool = True

    @property
    def cr_masks(self) -> rules.CrMasks:
        """ACRN's CR0/CR4 masks for these VMX fixed bits."""
        return rules.CrMasks.from_vmx_fixed(
            self.cr0_fixed0, self.cr0_fixed1, self.cr4_fixed0, self.cr4_fixed1, self.nested_vmx
        )

    @classmethod
    def from_platform(cls, platform: object | None) -> VmxFacts:
        """Read the facts from ``acrn.emu.platform.Platform`` (or any object with such attributes)."""
        if platform is None:
            return cls()
        if isinstance(platform, VmxFacts):
            return platform
        names = {
            "cr0_fixed0": ("cr0_fixed0", "vmx_cr0_fixed0"),
            "cr0_fixed1": ("cr0_fixed1", "vmx_cr0_fixed1"),
            "cr4_fixed0": ("cr4_fixed0", "vmx_cr4_fixed0"),
            "cr4_fixed1": ("cr4_fixed1", "vmx_cr4_fixed1"),
            "nested_vmx": ("nested_vmx", "nvmx", "nested_vmx_enabled"),
            "pcpu_num": ("pcpu_num", "pcpu_count", "num_pcpus", "max_pcpu_num"),
            "maxphyaddr": ("maxphyaddr", "phys_addr_bits"),
            "linear_bits": ("linear_bits", "linear_addr_bits"),
            "unrestricted_guest": ("unrestricted_guest",),
        }
        found: dict[str, Any] = {}
        for key, candidates in names.items():
            for c in candidates:
                v = getattr(platform, c, None)
                if v is None:
                    vmx = getattr(platform, "vmx", None)
                    v = getattr(vmx, c, None) if vmx is not None else None
                if isinstance(v, bool | int) and not callable(v):
                    found[key] = bool(v) if key in ("nested_vmx", "unrestricted_guest") else int(v)
                    break
        return cls(**found)


_U64: Final = (1 << 64) - 1


def enters_ia32e(regs: VcpuRegs) -> bool:
    """ACRN sets the "IA-32e mode guest" entry control iff EFER.LMA and CS.L (``init_vmcs``)."""
    return bool(regs.ia32_efer & arch.EFER_LMA) and bool(regs.cs_ar & arch.AR_L)


def entry_mode(regs: VcpuRegs) -> str:
    """The CPU mode the vCPU starts in, as ACRN derives it: long, compat, protected or real."""
    if regs.ia32_efer & arch.EFER_LMA:
        return "long" if regs.cs_ar & arch.AR_L else "compat"
    return "protected" if regs.cr0 & arch.CR0_PE else "real"


def _canonical(addr: int, bits: int) -> bool:
    top = addr >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _bits(value: int, names: dict[int, str]) -> str:
    out = [names.get(b, f"bit {b}") for b in range(64) if value >> b & 1]
    return ", ".join(out) if out else "none"


_CR0_NAMES: Final = {0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP", 18: "AM", 29: "NW",
                     30: "CD", 31: "PG"}  # fmt: skip
_CR4_NAMES: Final = {0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE", 8: "PCE",
                     9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE", 14: "SMXE",
                     16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP", 21: "SMAP", 22: "PKE",
                     23: "CET", 24: "PKS"}  # fmt: skip
_RFLAGS_NAMES: Final = {0: "CF", 1: "bit 1", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF",
                        11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID"}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The rule table
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What a check sees: the input, the platform facts and ACRN's CR masks."""

    regs: VcpuRegs
    facts: VmxFacts
    masks: rules.CrMasks


@dataclass(frozen=True)
class Hit:
    """A check's result before the table adds level and source."""

    fields: list[str]
    message: str
    severity: str = "error"


Check = Callable[[Context], Iterator[Hit]]


@dataclass(frozen=True)
class Rule:
    """One entry of the table: a stable id, its level and source, and the check."""

    rule: str
    level: str
    source: str
    check: Check
    doc: str = field(default="")


RULES: list[Rule] = []


def rule(rule_id: str, level: str, source: str) -> Callable[[Check], Check]:
    """Register a check in :data:`RULES` (in definition order, which is report order)."""

    def deco(fn: Check) -> Check:
        RULES.append(Rule(rule_id, level, source, fn, (fn.__doc__ or "").strip()))
        return fn

    return deco


# ---------------------------------------------------------------- abi: the HSM driver
def _nonzero(values: list[int], path: str) -> list[str]:
    return [f"{path}[{i}]" for i, v in enumerate(values) if v]


def _abi_hit(fields: list[str], what: str, values: list[int]) -> Iterator[Hit]:
    if fields:
        shown = ", ".join(f"{f} = {v:#x}" for f, v in zip(fields, [v for v in values if v], strict=True))
        yield Hit(fields, f"{shown}: the HSM driver rejects a non-zero {what} with -EINVAL")


@rule("abi.reserved", "abi", SRC_HSM)
def _abi_reserved(c: Context) -> Iterator[Hit]:
    """acrn_vcpu_regs.reserved[0..2] must be 0 (checked first)."""
    yield from _abi_hit(_nonzero(c.regs.reserved, "reserved"), "reserved word", c.regs.reserved)


@rule("abi.reserved_32", "abi", SRC_HSM)
def _abi_reserved_32(c: Context) -> Iterator[Hit]:
    """vcpu_regs.reserved_32[0..2] must be 0 (checked second)."""
    r = c.regs.reserved_32
    yield from _abi_hit(_nonzero(r, "vcpu_regs.reserved_32"), "reserved_32 word", r)


@rule("abi.reserved_64", "abi", SRC_HSM)
def _abi_reserved_64(c: Context) -> Iterator[Hit]:
    """vcpu_regs.reserved_64[0..3] must be 0 (checked third)."""
    r = c.regs.reserved_64
    yield from _abi_hit(_nonzero(r, "vcpu_regs.reserved_64"), "reserved_64 word", r)


@rule("abi.descriptor_reserved", "abi", SRC_HSM)
def _abi_descriptor_reserved(c: Context) -> Iterator[Hit]:
    """gdt.reserved[i] | idt.reserved[i] must be 0 for i in 0..2 (checked last, GDT and IDT together)."""
    fields: list[str] = []
    values: list[int] = []
    for i in range(3):
        for name in ("gdt", "idt"):
            v = getattr(c.regs, name).reserved[i]
            if v:
                fields.append(f"vcpu_regs.{name}.reserved[{i}]")
                values.append(v)
    yield from _abi_hit(fields, "GDT/IDT reserved word", values)


# ---------------------------------------------------------------- acrn: the hypervisor
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
            f"cr0 = {c.regs.cr0:#x} lacks the platform's fixed-1 bits {_bits(missing, _CR0_NAMES)}: "
            "the hypercall fails with -1 (EPERM)",
        )


@rule("acrn.cr0.reserved", "acrn", SRC_CR)
def _acrn_cr0_reserved(c: Context) -> Iterator[Hit]:
    """Only PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG may be set in CR0 (bits 63:32 included)."""
    bad = _cr_reserved_set(c.regs.cr0, c.masks.cr0_reserved_mask, c.masks.cr0_required)
    if bad:
        yield Hit(
            ["vcpu_regs.cr0"],
            f"cr0 = {c.regs.cr0:#x} sets {_bits(bad, _CR0_NAMES)}, which ACRN treats as reserved: "
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
            f"cr4 = {c.regs.cr4:#x} sets {_bits(bad, _CR4_NAMES)}, which ACRN treats as reserved on this "
            "platform: the hypercall fails with -1 (EPERM)",
        )


@rule("acrn.cr4.fixed1", "acrn", SRC_CR)
def _acrn_cr4_fixed1(c: Context) -> Iterator[Hit]:
    """CR4 bits the platform fixes to 1 (other than VMXE/SMXE/CET, which ACRN hides) must be 1."""
    missing = _cr_required_missing(c.regs.cr4, c.masks.cr4_reserved_mask, c.masks.cr4_required)
    if missing:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} lacks the platform's fixed-1 bits "
                  f"{_bits(missing, _CR4_NAMES)}: the hypercall fails with -1 (EPERM)")  # fmt: skip


@rule("acrn.rflags.masked", "acrn", SRC_LAND)
def _acrn_rflags_masked(c: Context) -> Iterator[Hit]:
    """A non-zero RFLAGS loses CF/PF/AF/ZF/SF/OF (``acrn.rules.landed_rflags``)."""
    r = c.regs.rflags
    if r and r & rules.RFLAGS_CLEARED:
        yield Hit(
            ["vcpu_regs.rflags"],
            f"rflags = {r:#x}: ACRN clears {_bits(r & rules.RFLAGS_CLEARED, _RFLAGS_NAMES)}, "
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
            f"cr4 = {c.regs.cr4:#x}: ACRN strips {_bits(stripped, _CR4_NAMES)} at the first VM entry",
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


# ---------------------------------------------------------------- arch: VM-entry checks (SDM 27.3.1)
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
        yield Hit(["vcpu_regs.cr0"], f"cr0 = {cr0:#x} has {_bits(missing, _CR0_NAMES)} clear but the platform "
                  "has no unrestricted guest: VM entry requires PE and PG (IA32_VMX_CR0_FIXED0)")  # fmt: skip


@rule("arch.cr4.reserved", "arch", SDM_CR)
def _arch_cr4_reserved(c: Context) -> Iterator[Hit]:
    """CR4 must not set an architecturally reserved bit (bit 15, bits 63:25)."""
    known = 0
    for b in _CR4_NAMES:
        known |= 1 << b
    bad = c.regs.cr4 & ~known
    if bad:
        yield Hit(["vcpu_regs.cr4"], f"cr4 = {c.regs.cr4:#x} sets reserved bits {_bits(bad, {})}")


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
            ["vcpu_regs.ia32_efer"], f"ia32_efer = {c.regs.ia32_efer:#x} sets reserved bits {_bits(bad, {})}"
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
    if not _canonical(c.regs.gdt.base, c.facts.linear_bits):
        yield Hit(["vcpu_regs.gdt.base"], f"gdt.base = {c.regs.gdt.base:#x} is not canonical "
                  f"({c.facts.linear_bits}-bit linear addresses)")  # fmt: skip


@rule("arch.idtr.base", "arch", SDM_DT)
def _arch_idtr_base(c: Context) -> Iterator[Hit]:
    """The IDTR base must be canonical."""
    if not _canonical(c.regs.idt.base, c.facts.linear_bits):
        yield Hit(["vcpu_regs.idt.base"], f"idt.base = {c.regs.idt.base:#x} is not canonical "
                  f"({c.facts.linear_bits}-bit linear addresses)")  # fmt: skip


@rule("arch.rip.high", "arch", SDM_RIP)
def _arch_rip_high(c: Context) -> Iterator[Hit]:
    """Outside 64-bit mode (IA-32e with CS.L), RIP bits 63:32 must be 0."""
    if not enters_ia32e(c.regs) and c.regs.rip >> 32:
        yield Hit(["vcpu_regs.rip"], f"rip = {c.regs.rip:#x}: bits 63:32 must be 0 outside 64-bit mode")


@rule("arch.rip.canonical", "arch", SDM_RIP)
def _arch_rip_canonical(c: Context) -> Iterator[Hit]:
    """In 64-bit mode RIP must be canonical."""
    if enters_ia32e(c.regs) and not _canonical(c.regs.rip, c.facts.linear_bits):
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
        yield Hit(["vcpu_regs.rflags"], f"rflags = {c.regs.rflags:#x} sets reserved bits {_bits(bad, {})}")


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


# ------------------------------------------------------------------------------------------------
def validate(
    regs: VcpuRegs,
    level: str = "arch",
    platform: object | None = None,
    *,
    maxphyaddr: int | None = None,
    unrestricted_guest: bool | None = None,
) -> list[Finding]:
    """Every finding for ``regs`` at ``level`` and below ("arch" includes "acrn" includes "abi").

    ``platform`` supplies the VMX fixed bits and pCPU count (default: the default board of
    :mod:`acrn.rules`, the same as the emulator's ``Platform.default()``; or a :class:`VmxFacts`).
    ``maxphyaddr`` (default 46) bounds CR3; ``unrestricted_guest`` (default True, as ACRN requires)
    relaxes the real-mode and RPL rules.
    """
    if level not in LEVELS:
        raise ValueError(f"level: {level!r} is not one of {', '.join(LEVELS)}")
    regs.validate_ranges()
    facts = VmxFacts.from_platform(platform)
    if maxphyaddr is not None:
        facts = _replace(facts, maxphyaddr=maxphyaddr)
    if unrestricted_guest is not None:
        facts = _replace(facts, unrestricted_guest=unrestricted_guest)
    ctx = Context(regs, facts, facts.cr_masks)
    upto = LEVELS.index(level)
    out: list[Finding] = []
    for r in RULES:
        if LEVELS.index(r.level) > upto:
            continue
        for hit in r.check(ctx):
            out.append(Finding(r.level, hit.severity, r.rule, hit.fields, hit.message, r.source))
    return out


def _replace(facts: VmxFacts, **changes: Any) -> VmxFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def has_errors(findings: list[Finding]) -> bool:
    """True if any finding is an error (the CLI's exit status)."""
    return any(f.severity == "error" for f in findings)


def rule_ids() -> list[str]:
    """Every rule id, in report order."""
    return [r.rule for r in RULES]
