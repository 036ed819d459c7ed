"""Readable decoding of vCPU register state: bit names, access rights, the entry mode, tables.

``format_regs`` prints a SET_VCPU_REGS argument as given; ``format_state`` prints an architectural
:class:`~acrn.arch.CpuState` (all eight segments), such as the one ACRN lands (``effective_state``).
"""

from __future__ import annotations

from typing import Any, Final

from acrn import arch
from acrn.arch import GPR_NAMES, SEGMENT_NAMES, CpuState
from acrn.regs.model import VcpuRegs
from acrn.regs.validate import entry_mode
from acrn.rules import land_vcpu_regs

CR0_BITS: Final = {0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP", 18: "AM", 29: "NW",
                   30: "CD", 31: "PG"}  # fmt: skip
CR4_BITS: Final = {0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE", 8: "PCE",
                   9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE", 14: "SMXE",
                   16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP", 21: "SMAP", 22: "PKE",
                   23: "CET", 24: "PKS"}  # fmt: skip
EFER_BITS: Final = {0: "SCE", 8: "LME", 10: "LMA", 11: "NXE"}
RFLAGS_BITS: Final = {0: "CF", 1: "1", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF",
                      11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID"}  # fmt: skip


def bit_names(value: int, names: dict[int, str]) -> list[str]:
    """Names of the set bits, low to high; unnamed bits appear as ``bit N``."""
    return [names.get(b, f"bit{b}") for b in range(value.bit_length()) if value >> b & 1]


def _flags(value: int, names: dict[int, str]) -> str:
    return "|".join(bit_names(value, names)) or "-"


def decode_cr0(v: int) -> list[str]:
    return bit_names(v, CR0_BITS)


def decode_cr4(v: int) -> list[str]:
    return bit_names(v, CR4_BITS)


def decode_efer(v: int) -> list[str]:
    return bit_names(v, EFER_BITS)


def decode_rflags(v: int) -> list[str]:
    """RFLAGS bit names; IOPL (bits 13:12) shows as ``IOPL=n`` when non-zero."""
    names = bit_names(v & ~0x3000, RFLAGS_BITS)
    if v & 0x3000:
        names.append(f"IOPL={(v >> 12) & 3}")
    return names


def ar_type_name(ar: int) -> str:
    """The descriptor type in words, for code/data (S=1) or system (S=0) descriptors."""
    t = ar & arch.AR_TYPE_MASK
    if ar & arch.AR_S:
        if t & 8:
            kind = ["code", "execute"]
            if t & 2:
                kind[-1] += "/read"
            if t & 4:
                kind.append("conforming")
        else:
            kind = ["data", "read/write" if t & 2 else "read-only"]
            if t & 4:
                kind.append("expand-down")
        if t & 1:
            kind.append("accessed")
        return " ".join(kind)
    system = {1: "16-bit TSS (available)", 2: "LDT", 3: "16-bit TSS (busy)", 4: "16-bit call gate",
              5: "task gate", 6: "16-bit interrupt gate", 7: "16-bit trap gate", 9: "32/64-bit TSS (available)",
              11: "32/64-bit TSS (busy)", 12: "32/64-bit call gate", 14: "32/64-bit interrupt gate",
              15: "32/64-bit trap gate"}  # fmt: skip
    return system.get(t, f"reserved system type {t}")


def decode_ar(ar: int) -> dict[str, Any]:
    """The VMX access-rights fields of ``ar`` (type, S, DPL, P, AVL, L, D/B, G, unusable, reserved)."""
    return {
        "type": ar & arch.AR_TYPE_MASK,
        "type_name": ar_type_name(ar),
        "s": int(bool(ar & arch.AR_S)),
        "dpl": (ar >> arch.AR_DPL_SHIFT) & 3,
        "p": int(bool(ar & arch.AR_P)),
        "avl": int(bool(ar & arch.AR_AVL)),
        "l": int(bool(ar & arch.AR_L)),
        "db": int(bool(ar & arch.AR_DB)),
        "g": int(bool(ar & arch.AR_G)),
        "unusable": int(bool(ar & arch.AR_UNUSABLE)),
        "reserved_11_8": (ar >> 8) & 0xF,
        "reserved_31_17": ar >> 17,
    }


def format_ar(ar: int) -> str:
    """One line: ``type=11 (code execute/read accessed) S=1 DPL=0 P=1 AVL=0 L=0 D/B=1 G=1``."""
    d = decode_ar(ar)
    s = (
        f"type={d['type']} ({d['type_name']}) S={d['s']} DPL={d['dpl']} P={d['p']} AVL={d['avl']} "
        f"L={d['l']} D/B={d['db']} G={d['g']}"
    )
    if d["unusable"]:
        s += " UNUSABLE"
    if d["reserved_11_8"]:
        s += f" reserved11:8={d['reserved_11_8']:#x}"
    if d["reserved_31_17"]:
        s += f" reserved31:17={d['reserved_31_17']:#x}"
    return s


MODE_TEXT: Final = {
    "real": "real mode (16-bit; needs unrestricted guest)",
    "protected": "protected mode",
    "compat": "compatibility mode (EFER.LMA without CS.L)",
    "long": "64-bit long mode",
}


def describe_mode(mode: str, cr0: int, cs_ar: int) -> str:
    """The mode in words, with operand size and paging."""
    text = MODE_TEXT.get(mode, mode)
    if mode in ("protected", "compat"):
        text += ", 32-bit code" if cs_ar & arch.AR_DB else ", 16-bit code"
    if cr0 & arch.CR0_PG:
        text += ", paging on"
    return text


def _h(v: int, width: int = 16) -> str:
    return f"0x{v:0{width}x}"


def _gpr_lines(values: dict[str, int]) -> list[str]:
    lines = []
    names = list(GPR_NAMES)
    for i in range(0, 16, 4):
        lines.append("  ".join(f"{n:>3} {_h(values[n])}" for n in names[i : i + 4]))
    return lines


def format_regs(regs: VcpuRegs) -> str:
    """A readable table of a SET_VCPU_REGS argument, as given (before ACRN lands it)."""
    lines = [f"vcpu_id {regs.vcpu_id}    enters: {describe_mode(entry_mode(regs), regs.cr0, regs.cs_ar)}"]
    lines += _gpr_lines({n: getattr(regs, n) for n in GPR_NAMES})
    lines.append(f"rip {_h(regs.rip)}  rflags {_h(regs.rflags)}  [{_flags(regs.rflags, RFLAGS_BITS)}]")
    lines.append(f"cr0 {_h(regs.cr0)}  [{_flags(regs.cr0, CR0_BITS)}]")
    lines.append(f"cr3 {_h(regs.cr3)}")
    lines.append(f"cr4 {_h(regs.cr4)}  [{_flags(regs.cr4, CR4_BITS)}]")
    lines.append(f"efer {_h(regs.ia32_efer)}  [{_flags(regs.ia32_efer, EFER_BITS)}]")
    lines.append(
        f"cs  sel {regs.cs_sel:#06x} base {_h(regs.cs_base)} limit {regs.cs_limit:#010x} ar {regs.cs_ar:#07x}"
    )
    lines.append(f"    {format_ar(regs.cs_ar)}")
    sels = "  ".join(
        f"{n[:-4]} {getattr(regs, n):#06x}" for n in ("ss_sel", "ds_sel", "es_sel", "fs_sel", "gs_sel")
    )
    lines.append(f"selectors: {sels}  ldt {regs.ldt_sel:#06x}  tr {regs.tr_sel:#06x}")
    for name in ("gdt", "idt"):
        d = getattr(regs, name)
        lines.append(f"{name} base {_h(d.base)} limit {d.limit:#06x}")
    rsv = [
        ("reserved", regs.reserved),
        ("reserved_32", regs.reserved_32),
        ("reserved_64", regs.reserved_64),
        ("gdt.reserved", regs.gdt.reserved),
        ("idt.reserved", regs.idt.reserved),
    ]
    bad = [f"{n}={[hex(x) for x in v]}" for n, v in rsv if any(v)]
    lines.append("reserved fields: " + ("NON-ZERO " + " ".join(bad) if bad else "all zero"))
    return "\n".join(lines) + "\n"


def format_state(st: CpuState) -> str:
    """A readable table of an architectural vCPU state (all eight segments)."""
    lines = [f"mode: {describe_mode(st.mode, st.cr0, st.cs.ar)}"]
    lines += _gpr_lines(st.gprs())
    lines.append(f"rip {_h(st.rip)}  rflags {_h(st.rflags)}  [{_flags(st.rflags, RFLAGS_BITS)}]")
    lines.append(f"cr0 {_h(st.cr0)}  [{_flags(st.cr0, CR0_BITS)}]")
    lines.append(f"cr2 {_h(st.cr2)}  cr3 {_h(st.cr3)}")
    lines.append(f"cr4 {_h(st.cr4)}  [{_flags(st.cr4, CR4_BITS)}]")
    lines.append(f"efer {_h(st.efer)}  [{_flags(st.efer, EFER_BITS)}]")
    for n in SEGMENT_NAMES:
        s = st.segment(n)
        lines.append(
            f"{n:<4} sel {s.selector:#06x} base {_h(s.base)} limit {s.limit:#010x} ar {s.ar:#07x}  {format_ar(s.ar)}"
        )
    lines.append(f"gdtr base {_h(st.gdtr.base)} limit {st.gdtr.limit:#06x}")
    lines.append(f"idtr base {_h(st.idtr.base)} limit {st.idtr.limit:#06x}")
    return "\n".join(lines) + "\n"


def effective_state(regs: VcpuRegs) -> CpuState:
    """The state ACRN lands for ``regs`` (``acrn.rules.land_vcpu_regs``, as the emulated hypervisor does).

    CR0/CR3/CR4 are shown as given: ACRN applies them at the first VM entry.
    """
    return land_vcpu_regs(regs.to_struct().vcpu_regs)
