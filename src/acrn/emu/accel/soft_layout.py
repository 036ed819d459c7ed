"""Where unicorn 2.1.x keeps the hidden x86 segment state, and how to read and write it.

Unicorn's register API cannot set the hidden part of CS/SS/DS/ES in a ``UC_MODE_64`` engine
(writing ``UC_X86_REG_CS`` stores the selector only; FS/GS reload from the guest's GDT), and it
never reads the hidden parts back.  Its CPU context (``uc_context_save``) is, however, a plain
copy of QEMU's ``CPUX86State`` behind a 40-byte header, and ``uc_context_restore`` copies it back.
This module patches the six segment caches (selector, base, limit, flags) and the derived
``hflags`` bits in such a context, the way QEMU's ``cpu_x86_load_seg_cache`` does on a descriptor
load.  The offsets are not guessed: :func:`verify` writes sentinel values through unicorn's own
API and checks that they appear where this module expects them, so a unicorn build with another
layout is refused instead of corrupted.

QEMU's segment ``flags`` hold the high dword of a descriptor; access rights in VMX format
(``acrn.arch.AR_*``) sit at bit 8 of it.  VMX's "unusable" bit (16) has no QEMU equivalent: an
unusable segment is loaded not-present.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Final

from acrn.arch import AR_P, AR_UNUSABLE, Segment

#: Size of ``struct uc_context`` before its ``data[]`` (size_t, 3 ints, bool, 2 pointers).
CONTEXT_DATA: Final = 40
#: ``CPUX86State`` offsets (x86-64 target of unicorn 2.1.x, QEMU 5.0 based).
OFF_REGS: Final = 0
OFF_EIP: Final = 128
OFF_HFLAGS: Final = 176
OFF_SEGS: Final = 184
SEG_SIZE: Final = 24  # uint32 selector, pad, uint64 base, uint32 limit, uint32 flags
OFF_LDT: Final = OFF_SEGS + 6 * SEG_SIZE
OFF_TR: Final = OFF_SEGS + 7 * SEG_SIZE
OFF_EFER: Final = 592
_SEG: Final = struct.Struct("<I4xQII")

#: QEMU's segment indices (R_ES .. R_GS) for the schema's names.
SEG_INDEX: Final = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}

# QEMU hflags bits (target/i386/cpu.h) derived from the segment caches.
HF_CPL_MASK: Final = 3
HF_CS32: Final = 1 << 4
HF_SS32: Final = 1 << 5
HF_ADDSEG: Final = 1 << 6
HF_PE: Final = 1 << 7
HF_LMA: Final = 1 << 14
HF_CS64: Final = 1 << 15
HF_VM: Final = 1 << 17

# QEMU descriptor flag bits (high descriptor dword).
DESC_P: Final = 1 << 15
DESC_L: Final = 1 << 21
DESC_B: Final = 1 << 22
DESC_DPL_SHIFT: Final = 13


def ar_to_flags(ar: int) -> int:
    """VMX access rights -> QEMU segment flags (an unusable segment becomes not-present)."""
    flags = (ar & 0xF0FF) << 8
    if ar & AR_UNUSABLE:
        flags &= ~DESC_P
    return flags


def flags_to_ar(flags: int) -> int:
    """QEMU segment flags -> VMX access rights; a not-present segment reads back unusable.

    QEMU loads the raw descriptor dword, so base/limit bits outside the AR field are masked off.
    """
    ar = (flags >> 8) & 0xF0FF
    if not ar & AR_P:
        ar |= AR_UNUSABLE
    return ar


def pack_segment(seg: Segment, flags: int) -> bytes:
    return _SEG.pack(seg.selector & 0xFFFF, seg.base & 0xFFFF_FFFF_FFFF_FFFF, seg.limit & 0xFFFF_FFFF, flags)


def unpack_segment(data: bytes | bytearray, index: int) -> tuple[int, int, int, int]:
    """(selector, base, limit, flags) of QEMU segment cache ``index`` in a raw CPUX86State."""
    sel, base, limit, flags = _SEG.unpack_from(data, OFF_SEGS + index * SEG_SIZE)
    return int(sel), int(base), int(limit), int(flags)


def derive_hflags(
    hflags: int, segs: dict[str, tuple[int, int, int, int]], cr0_pe: bool, eflags_vm: bool
) -> int:
    """Recompute the hflags bits QEMU derives from CS/SS/DS/ES (as ``cpu_x86_load_seg_cache``).

    CPL comes from SS.DPL (as on VMX); CS64 needs EFER.LMA (HF_LMA) and CS.L; ADDSEG tells the
    translator whether DS/ES/SS bases must be added (always in real/16-bit/vm86 code).
    """
    cs_flags = segs["cs"][3]
    ss_flags = segs["ss"][3]
    h = hflags & ~(HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_ADDSEG | HF_CS64)
    if (h & HF_LMA) and (cs_flags & DESC_L):
        h |= HF_CS32 | HF_CS64
    elif cs_flags & DESC_B:
        h |= HF_CS32
    h |= (ss_flags >> DESC_DPL_SHIFT) & 3
    if ss_flags & DESC_B or h & HF_CS64:
        h |= HF_SS32
    if h & HF_CS64:
        pass  # bases of DS/ES/SS are ignored in 64-bit code
    elif not cr0_pe or eflags_vm or not h & HF_CS32 or segs["ds"][1] | segs["es"][1] | segs["ss"][1]:
        h |= HF_ADDSEG
    return h


def context_address(ctx: Any) -> int:
    """Address of the CPUX86State copy inside a ``UcContext``."""
    addr = ctx.context.value if hasattr(ctx.context, "value") else ctx.context
    if not addr:
        raise RuntimeError("unicorn context has no storage")
    return int(addr) + CONTEXT_DATA


def read_env(ctx: Any, size: int) -> bytearray:
    return bytearray(ctypes.string_at(context_address(ctx), size))


def write_env(ctx: Any, offset: int, data: bytes) -> None:
    ctypes.memmove(context_address(ctx) + offset, data, len(data))


def verify(uc: Any) -> str:
    """Check the assumed layout against a fresh engine; return "" if it holds, else why not."""
    import unicorn.x86_const as x

    probes_q = {
        OFF_REGS: 0x5EED_0000_0000_00A1,
        OFF_REGS + 15 * 8: 0x5EED_0000_0000_0F15,
        OFF_EIP: 0x5EED_0000_0000_01F0,
        OFF_SEGS + 4 * SEG_SIZE + 8: 0x5EED_0000_0000_0F5B,
        OFF_TR + 8: 0x5EED_0000_0000_07B0,
        OFF_LDT + 8: 0x5EED_0000_0000_0DB0,
    }
    uc.reg_write(x.UC_X86_REG_RAX, probes_q[OFF_REGS])
    uc.reg_write(x.UC_X86_REG_R15, probes_q[OFF_REGS + 15 * 8])
    uc.reg_write(x.UC_X86_REG_RIP, probes_q[OFF_EIP])
    uc.reg_write(x.UC_X86_REG_FS_BASE, probes_q[OFF_SEGS + 4 * SEG_SIZE + 8])
    uc.reg_write(x.UC_X86_REG_TR, (0x1238, probes_q[OFF_TR + 8], 0xABCDE, 0x8B00))
    uc.reg_write(x.UC_X86_REG_LDTR, (0x4320, probes_q[OFF_LDT + 8], 0xEDCBA, 0x8200))
    uc.reg_write(x.UC_X86_REG_CS, 0x5A58)
    uc.reg_write(x.UC_X86_REG_CR0, 0x11)
    ctx = uc.context_save()
    if ctx.size < CONTEXT_DATA + OFF_TR + SEG_SIZE:
        return f"unicorn context too small ({ctx.size} bytes)"
    env = read_env(ctx, ctx.size - CONTEXT_DATA)
    for off, val in probes_q.items():
        if struct.unpack_from("<Q", env, off)[0] != val:
            return f"unicorn CPU context layout differs from QEMU 5.0's CPUX86State (offset {off})"
    if unpack_segment(env, SEG_INDEX["cs"])[0] != 0x5A58 or unpack_segment(env, 7)[3] != 0x8B00:
        return "unicorn CPU context layout differs (segment caches)"
    uc.msr_write(0xC000_0080, 0xD01)
    if struct.unpack_from("<Q", read_env(uc.context_save(), OFF_EFER + 8), OFF_EFER)[0] != 0xD01:
        return "unicorn CPU context layout differs (efer)"
    h_pe = struct.unpack_from("<I", env, OFF_HFLAGS)[0] & HF_PE
    uc.reg_write(x.UC_X86_REG_CR0, 0x10)
    env2 = read_env(uc.context_save(), OFF_HFLAGS + 4)
    if not h_pe or struct.unpack_from("<I", env2, OFF_HFLAGS)[0] & HF_PE:
        return "unicorn CPU context layout differs (hflags)"
    return ""
