"""Register states and guest-memory scaffolding for ``acrn run --preset`` (raw images, no loader).

``real``: real mode with CS covering the entry (selector = entry's 64 KiB segment), cr0 ET|NE (NE is
required by ACRN's CR0 check, hypervisor/arch/x86/guest/virtual_cr.c: is_valid_cr0_cr4).
``protected``: acrn-dm's 32-bit bzImage state (cr0 0x31, CS 0x10 AR 0xC09B flat 4 GiB, DS/SS/ES 0x18;
devicemodel/core/sw_load_bzimage.c) with a 4-entry flat GDT written to guest RAM.
``long``: 64-bit long mode entered directly (cr0 PG|PE|NE|ET, cr4 PAE, EFER LME|LMA, CS AR 0xA09B with
L=1; hypervisor/arch/x86/guest/vcpu.c: set_vcpu_regs), with a GDT and identity-mapping page tables
(1 GiB, 2 MiB pages) written to guest RAM below the built-in guests' load address 0x8000 (GDT 0x500,
PML4 0x1000, PDPT 0x2000, PD 0x3000).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from acrn.arch import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from acrn.regs.model import DescriptorPtr, VcpuRegs

PRESETS: Final = ("real", "protected", "long")
GDT_GPA: Final = 0x500
#: The stack grows down from here (RSP), below the tables of the guests loaded at 0x8000.
STACK_TOP: Final = 0x7000
PML4_GPA: Final = 0x1000
PDPT_GPA: Final = 0x2000
PD_GPA: Final = 0x3000
#: null, null, code 0x10 (flat 32-bit), data 0x18 (flat), as acrn-dm's loader GDT; 0x08 is a 64-bit code.
GDT_ENTRIES: Final = (0, 0x00AF9B000000FFFF, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)


def preset_regs(name: str, entry: int, mem_size: int, write: Callable[[int, bytes], None]) -> VcpuRegs:
    """The SET_VCPU_REGS state for a preset; writes any tables it needs with ``write(gpa, data)``."""
    if name == "real":
        if entry >= 0x100000:
            raise ValueError(f"--entry {entry:#x}: a real-mode entry must be below 1 MiB")
        seg = (entry >> 4) & 0xF000
        return VcpuRegs(
            cr0=CR0_ET | CR0_NE,
            cs_sel=seg,
            cs_base=seg << 4,
            cs_limit=0xFFFF,
            cs_ar=0x009F,
            rip=entry - (seg << 4),
            idt=DescriptorPtr(0, 0x3FF),
            rsp=STACK_TOP,
        )
    if name not in ("protected", "long"):
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    if mem_size < PD_GPA + 0x1000:
        raise ValueError(f"--mem {mem_size:#x} is too small for the preset's tables")
    write(GDT_GPA, b"".join(struct.pack("<Q", e) for e in GDT_ENTRIES))
    regs = VcpuRegs(
        cr0=CR0_ET | CR0_NE | CR0_PE,
        cs_sel=0x10,
        cs_limit=0xFFFFFFFF,
        cs_ar=0xC09B,
        ds_sel=0x18,
        ss_sel=0x18,
        es_sel=0x18,
        gdt=DescriptorPtr(GDT_GPA, len(GDT_ENTRIES) * 8 - 1),
        rip=entry,
        rsp=STACK_TOP,
    )
    if name == "long":
        write(PML4_GPA, struct.pack("<Q", PDPT_GPA | 0x3))
        write(PDPT_GPA, struct.pack("<Q", PD_GPA | 0x3))
        write(PD_GPA, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512)))
        regs.cr0 |= CR0_PG
        regs.cr4 = CR4_PAE
        regs.ia32_efer = EFER_LME | EFER_LMA
        regs.cs_sel = 0x08
        regs.cs_ar = 0xA09B
        regs.cr3 = PML4_GPA
    return regs
