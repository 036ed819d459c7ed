"""Inspecting a guest from outside, read-only: guest-physical reads, a page-table walk, disassembly.

Used when a vCPU stops on a fault, to show the instructions at RIP, and by the fallback and the
SYSCALL repair to read an IDT gate, an instruction or a stack frame.  The walk handles the x86 paging
modes (32-bit, PAE, 4-level, 5-level); it reads only, never sets accessed/dirty bits, and gives
up (None) on anything not present, so a report can never fault itself.  ``capstone`` is optional
and imported only here.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

from acrn.arch import AR_DB, CR0_PG, CR4_LA57, CR4_PAE, EFER_LMA, CpuState

Reader = Callable[[int, int], bytes | None]


class Region(Protocol):
    """An EPT mapping: guest-physical ``gpa`` backed by process memory at ``hpa``."""

    @property
    def gpa(self) -> int: ...
    @property
    def hpa(self) -> int: ...
    @property
    def size(self) -> int: ...


def region_reader(regions: Iterable[Region]) -> Reader:
    """A guest-physical reader over EPT regions whose ``hpa`` is a process address."""
    table = sorted(((r.gpa, r.size, r.hpa) for r in regions), key=lambda t: t[0])

    def read(gpa: int, size: int) -> bytes | None:
        for start, length, hpa in table:
            if start <= gpa and gpa + size <= start + length:
                return ctypes.string_at(hpa + gpa - start, size)
        return None

    return read


def linear_to_gpa(state: CpuState, linear: int, read: Reader) -> int | None:
    """Translate a linear address with the guest's page tables (None when not mapped)."""
    if not state.cr0 & CR0_PG:
        return linear & 0xFFFFFFFF if not state.efer & EFER_LMA else linear

    def entry(table: int, index: int, size: int) -> int | None:
        raw = read(table + index * size, size)
        if raw is None:
            return None
        value: int = struct.unpack("<Q" if size == 8 else "<I", raw)[0]
        return value if value & 1 else None

    if state.efer & EFER_LMA:
        table = state.cr3 & 0x000FFFFFFFFFF000
        shifts = (48, 39, 30, 21, 12) if state.cr4 & CR4_LA57 else (39, 30, 21, 12)
        for shift in shifts:
            e = entry(table, (linear >> shift) & 0x1FF, 8)
            if e is None:
                return None
            if shift in (30, 21) and e & 0x80:  # 1 GiB / 2 MiB page
                base = e & 0x000FFFFFFFFFF000 & ~((1 << shift) - 1)
                return base | (linear & ((1 << shift) - 1))
            table = e & 0x000FFFFFFFFFF000
        return table | (linear & 0xFFF)
    if state.cr4 & CR4_PAE:
        pdpte = entry(state.cr3 & 0xFFFFFFE0, (linear >> 30) & 3, 8)
        if pdpte is None:
            return None
        pde = entry(pdpte & 0x000FFFFFFFFFF000, (linear >> 21) & 0x1FF, 8)
        if pde is None:
            return None
        if pde & 0x80:
            return (pde & 0x000FFFFFFFE00000) | (linear & 0x1FFFFF)
        pte = entry(pde & 0x000FFFFFFFFFF000, (linear >> 12) & 0x1FF, 8)
        return None if pte is None else (pte & 0x000FFFFFFFFFF000) | (linear & 0xFFF)
    pde = entry(state.cr3 & 0xFFFFF000, (linear >> 22) & 0x3FF, 4)
    if pde is None:
        return None
    if pde & 0x80 and state.cr4 & 0x10:  # 4 MiB page with CR4.PSE
        return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
    pte = entry(pde & 0xFFFFF000, (linear >> 12) & 0x3FF, 4)
    return None if pte is None else (pte & 0xFFFFF000) | (linear & 0xFFF)


def read_linear(state: CpuState, linear: int, size: int, read: Reader) -> bytes | None:
    """``size`` bytes at a linear address through the guest's page tables (None unless all map)."""
    out = b""
    while len(out) < size:
        gpa = linear_to_gpa(state, linear + len(out), read)
        if gpa is None:
            return None
        data = read(gpa, min(size - len(out), 0x1000 - (gpa & 0xFFF)))
        if data is None:
            return None
        out += data
    return out


def code_at_rip(state: CpuState, read: Reader, size: int = 16) -> bytes | None:
    """The bytes at CS:RIP (shortened at a page boundary that does not translate)."""
    linear = (state.cs.base + state.rip) & 0xFFFFFFFFFFFFFFFF
    out = b""
    while len(out) < size:
        gpa = linear_to_gpa(state, linear + len(out), read)
        if gpa is None:
            break
        chunk = min(size - len(out), 0x1000 - (gpa & 0xFFF))
        data = read(gpa, chunk)
        if data is None:
            break
        out += data
    return out or None


def disassemble(code: bytes, address: int, state: CpuState, count: int = 4) -> list[str]:
    """Up to ``count`` instructions as ``address: bytes  mnemonic operands``; [] without capstone."""
    try:
        import capstone
    except ImportError:
        return []
    mode = state.mode
    if mode == "long":
        cs_mode = capstone.CS_MODE_64
    elif mode in ("protected", "compat") and state.cs.ar & AR_DB:
        cs_mode = capstone.CS_MODE_32
    else:
        cs_mode = capstone.CS_MODE_16
    md = capstone.Cs(capstone.CS_ARCH_X86, cs_mode)
    lines = []
    for insn in md.disasm(code, address):
        lines.append(f"{insn.address:#x}: {insn.bytes.hex(' '):24} {insn.mnemonic} {insn.op_str}".rstrip())
        if len(lines) >= count:
            break
    return lines
