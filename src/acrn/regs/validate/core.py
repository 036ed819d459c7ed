"""What every validation level shares: the finding, the platform facts, the rule table and its helpers.

A level module (``abi``, ``acrn``, ``arch``) registers its checks with :func:`rule`; the package's
``validate`` runs the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from acrn import arch, rules
from acrn.regs.model import VcpuRegs

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


def enters_ia32e(regs: VcpuRegs) -> bool:
    """ACRN sets the "IA-32e mode guest" entry control iff EFER.LMA and CS.L (``init_vmcs``)."""
    return bool(regs.ia32_efer & arch.EFER_LMA) and bool(regs.cs_ar & arch.AR_L)


def entry_mode(regs: VcpuRegs) -> str:
    """The CPU mode the vCPU starts in, as ACRN derives it: long, compat, protected or real."""
    if regs.ia32_efer & arch.EFER_LMA:
        return "long" if regs.cs_ar & arch.AR_L else "compat"
    return "protected" if regs.cr0 & arch.CR0_PE else "real"


def is_canonical(addr: int, bits: int) -> bool:
    """True if ``addr`` is canonical for ``bits``-bit linear addresses."""
    top = addr >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def bit_names(value: int, names: dict[int, str]) -> str:
    """The set bits of ``value`` by name, for messages."""
    out = [names.get(b, f"bit {b}") for b in range(64) if value >> b & 1]
    return ", ".join(out) if out else "none"


CR0_NAMES: Final = {0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP", 18: "AM", 29: "NW",
                    30: "CD", 31: "PG"}  # fmt: skip
CR4_NAMES: Final = {0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE", 8: "PCE",
                    9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE", 14: "SMXE",
                    16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP", 21: "SMAP", 22: "PKE",
                    23: "CET", 24: "PKS"}  # fmt: skip


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
    """Register a check in :data:`RULES`, after every rule of its level and of the levels below.

    The table thus runs in :data:`LEVELS` order whichever level module is imported first, and within a
    level in definition order (the report order).
    """

    def deco(fn: Check) -> Check:
        rank = LEVELS.index(level)
        at = sum(1 for r in RULES if LEVELS.index(r.level) <= rank)
        RULES.insert(at, Rule(rule_id, level, source, fn, (fn.__doc__ or "").strip()))
        return fn

    return deco
