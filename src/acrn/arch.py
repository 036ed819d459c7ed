"""x86 architectural vCPU state, independent of ACRN and of any accelerator.

The hypervisor core (``acrn.emu.hv``) computes a :class:`CpuState` from ``acrn_regs`` exactly as
ACRN lands it; accelerators load and read back a :class:`CpuState`; the register tools print and
compare it.  Its dict form (:meth:`CpuState.to_dict`) is the one JSON schema used wherever a vCPU
state is dumped::

    cs ss ds es fs gs ldtr tr   {selector, base, limit, ar}   (ar in VMX access-rights format)
    gdtr idtr                   {base, limit}
    cr0 cr2 cr3 cr4 efer rflags rip rax ... r15               integers
    mode                        "real" | "protected" | "compat" | "long"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

# Control-register, EFER and RFLAGS bits used across the project.
CR0_PE: Final = 1 << 0
CR0_MP: Final = 1 << 1
CR0_EM: Final = 1 << 2
CR0_TS: Final = 1 << 3
CR0_ET: Final = 1 << 4
CR0_NE: Final = 1 << 5
CR0_WP: Final = 1 << 16
CR0_AM: Final = 1 << 18
CR0_NW: Final = 1 << 29
CR0_CD: Final = 1 << 30
CR0_PG: Final = 1 << 31

CR4_VME: Final = 1 << 0
CR4_PVI: Final = 1 << 1
CR4_TSD: Final = 1 << 2
CR4_DE: Final = 1 << 3
CR4_PSE: Final = 1 << 4
CR4_PAE: Final = 1 << 5
CR4_MCE: Final = 1 << 6
CR4_PGE: Final = 1 << 7
CR4_PCE: Final = 1 << 8
CR4_OSFXSR: Final = 1 << 9
CR4_OSXMMEXCPT: Final = 1 << 10
CR4_UMIP: Final = 1 << 11
CR4_LA57: Final = 1 << 12
CR4_VMXE: Final = 1 << 13
CR4_SMXE: Final = 1 << 14
CR4_FSGSBASE: Final = 1 << 16
CR4_PCIDE: Final = 1 << 17
CR4_OSXSAVE: Final = 1 << 18
CR4_KL: Final = 1 << 19
CR4_SMEP: Final = 1 << 20
CR4_SMAP: Final = 1 << 21
CR4_PKE: Final = 1 << 22
CR4_CET: Final = 1 << 23
CR4_PKS: Final = 1 << 24

EFER_SCE: Final = 1 << 0
EFER_LME: Final = 1 << 8
EFER_LMA: Final = 1 << 10
EFER_NXE: Final = 1 << 11

RFLAGS_CF: Final = 1 << 0
RFLAGS_FIXED1: Final = 1 << 1
RFLAGS_PF: Final = 1 << 2
RFLAGS_AF: Final = 1 << 4
RFLAGS_ZF: Final = 1 << 6
RFLAGS_SF: Final = 1 << 7
RFLAGS_TF: Final = 1 << 8
RFLAGS_IF: Final = 1 << 9
RFLAGS_DF: Final = 1 << 10
RFLAGS_OF: Final = 1 << 11

# VMX access-rights format (Intel SDM Vol. 3, "Guest Register State"): type 3:0, S 4, DPL 6:5,
# P 7, bits 11:8 reserved, AVL 12, L 13, D/B 14, G 15, unusable 16.
AR_TYPE_MASK: Final = 0xF
AR_S: Final = 1 << 4
AR_DPL_SHIFT: Final = 5
AR_P: Final = 1 << 7
AR_RESERVED_11_8: Final = 0xF00
AR_AVL: Final = 1 << 12
AR_L: Final = 1 << 13
AR_DB: Final = 1 << 14
AR_G: Final = 1 << 15
AR_UNUSABLE: Final = 1 << 16

#: GPR names in ACRN's ``acrn_gp_regs`` order.
GPR_NAMES: Final = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
#: Segment registers in the order the state schema lists them.
SEGMENT_NAMES: Final = ("cs", "ss", "ds", "es", "fs", "gs", "ldtr", "tr")
#: Scalar control/state registers of the schema.
CONTROL_NAMES: Final = ("cr0", "cr2", "cr3", "cr4", "efer", "rflags", "rip")

MODES: Final = ("real", "protected", "compat", "long")


@dataclass
class Segment:
    """A segment register with its hidden part; ``ar`` is in VMX access-rights format."""

    selector: int = 0
    base: int = 0
    limit: int = 0
    ar: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"selector": self.selector, "base": self.base, "limit": self.limit, "ar": self.ar}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        return cls(int(d["selector"]), int(d["base"]), int(d["limit"]), int(d["ar"]))


@dataclass
class DescriptorTable:
    """GDTR or IDTR."""

    base: int = 0
    limit: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"base": self.base, "limit": self.limit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DescriptorTable:
        return cls(int(d["base"]), int(d["limit"]))


def _seg() -> Segment:
    return Segment()


def _dt() -> DescriptorTable:
    return DescriptorTable()


def _st() -> list[bytes]:
    return [bytes(10)] * 8


def _xmm() -> list[bytes]:
    return [bytes(16)] * 16


@dataclass
class FpuState:
    """The x87 and SSE state in FXSAVE's terms, as it crosses between accelerators.

    ``st[i]`` is ST(i), stack order, as the 80-bit value's 10 little-endian bytes; ``ftw`` is the
    abridged tag word (bit ``p`` set: physical register ``p`` is in use), ``fsw`` holds TOP in bits
    13:11, so physical register ``p`` is ST((p - TOP) mod 8).  Defaults are the FNINIT/reset state.
    """

    fcw: int = 0x037F
    fsw: int = 0
    ftw: int = 0
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    st: list[bytes] = field(default_factory=_st)
    xmm: list[bytes] = field(default_factory=_xmm)
    mxcsr: int = 0x1F80

    @property
    def top(self) -> int:
        return (self.fsw >> 11) & 7


@dataclass
class CpuState:
    """The architectural state of one vCPU that VM entry needs (and that dumps report)."""

    cs: Segment = field(default_factory=_seg)
    ss: Segment = field(default_factory=_seg)
    ds: Segment = field(default_factory=_seg)
    es: Segment = field(default_factory=_seg)
    fs: Segment = field(default_factory=_seg)
    gs: Segment = field(default_factory=_seg)
    ldtr: Segment = field(default_factory=_seg)
    tr: Segment = field(default_factory=_seg)
    gdtr: DescriptorTable = field(default_factory=_dt)
    idtr: DescriptorTable = field(default_factory=_dt)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    rflags: int = RFLAGS_FIXED1
    rip: int = 0
    rax: int = 0
    rcx: int = 0
    rdx: int = 0
    rbx: int = 0
    rsp: int = 0
    rbp: int = 0
    rsi: int = 0
    rdi: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0

    @property
    def mode(self) -> str:
        """The CPU mode as ACRN derives it (``set_vcpu_regs``' cpu_mode): EFER.LMA and CS.L, else CR0.PE."""
        if self.efer & EFER_LMA:
            return "long" if self.cs.ar & AR_L else "compat"
        return "protected" if self.cr0 & CR0_PE else "real"

    def segment(self, name: str) -> Segment:
        seg = getattr(self, name)
        assert isinstance(seg, Segment)
        return seg

    def gprs(self) -> dict[str, int]:
        """The 16 GPRs in ACRN order."""
        return {n: int(getattr(self, n)) for n in GPR_NAMES}

    def to_dict(self) -> dict[str, Any]:
        """The project-wide JSON-ready schema (see the module docstring)."""
        d: dict[str, Any] = {n: self.segment(n).to_dict() for n in SEGMENT_NAMES}
        d["gdtr"] = self.gdtr.to_dict()
        d["idtr"] = self.idtr.to_dict()
        for n in CONTROL_NAMES:
            d[n] = int(getattr(self, n))
        d.update(self.gprs())
        d["mode"] = self.mode
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuState:
        """Inverse of :meth:`to_dict` (``mode`` is derived, so it is ignored on input)."""
        st = cls()
        for n in SEGMENT_NAMES:
            setattr(st, n, Segment.from_dict(d[n]))
        st.gdtr = DescriptorTable.from_dict(d["gdtr"])
        st.idtr = DescriptorTable.from_dict(d["idtr"])
        for n in CONTROL_NAMES + GPR_NAMES:
            setattr(st, n, int(d[n]))
        return st

    def copy(self) -> CpuState:
        """A deep copy (segments and tables are mutable dataclasses).

        Field values are copied as they are, without ``__init__`` (``dataclasses.replace`` through
        the constructor took half of a SET_VCPU_REGS ioctl's time in the emulator).
        """
        st = _shallow(self)
        d = st.__dict__
        for n in SEGMENT_NAMES:
            d[n] = _shallow(d[n])
        d["gdtr"] = _shallow(self.gdtr)
        d["idtr"] = _shallow(self.idtr)
        return st


_T = TypeVar("_T")


def _shallow(obj: _T) -> _T:
    """A new instance of ``obj``'s class with the same attribute values (no ``__init__`` call)."""
    new: _T = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new
