"""Tiny guests for the accelerator conformance suite: machine code, the states that run it, RAM.

Each guest is a few instructions (this machine's /dev/kvm runs ~1M guest instructions per second).
The bytes were assembled with GNU ``as`` (``--32`` with ``.code16``/``.code32``, ``--64``) from the
assembly shown above each constant; the bytes are checked in so the suite needs no toolchain.

Memory layout every guest assumes (64 KiB of RAM at GPA 0):

    0x1000  code (CODE_GPA)          0x2000  PML4 -> 0x3000 PDPT -> 0x4000 PD (long mode)
    0x1100  data read by the guest   0x1200  data written by the guest
    0x8000  a page the tests may map read-only (RO_GPA)
    0x20000, 0x100000, 0x200000: not RAM (MMIO)
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from acrn.arch import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    CpuState,
    DescriptorTable,
    Segment,
)

RAM_SIZE = 0x10000
CODE_GPA = 0x1000
DATA_IN_GPA = 0x1100
DATA_OUT_GPA = 0x1200
RO_GPA = 0x8000
PML4_GPA = 0x2000

# ---- real mode (.code16) ----------------------------------------------------------------------
# mov $0x41,%al ; out %al,$0x10 ; mov $0x3f8,%dx ; mov $0x1234,%ax ; out %ax,%dx
# mov $0xdeadbeef,%eax ; out %eax,%dx ; in $0x11,%al ; mov %al,%bl ; in %dx,%ax ; mov %ax,%cx ; hlt
OUT_IN = bytes.fromhex("b041e610baf803b83412ef66b8efbeadde66efe41188c3ed89c1f4")
# mov $0x1100,%si ; mov $3,%cx ; mov $0x3f8,%dx ; cld ; rep outsb ; hlt
REP_OUTSB = bytes.fromhex("be0011b90300baf803fcf36ef4")
# mov $0x1200,%di ; mov $3,%cx ; mov $0x60,%dx ; cld ; rep insw ; hlt
REP_INSW = bytes.fromhex("bf0012b90300ba6000fcf36df4")
# mov $0x2000,%ax ; mov %ax,%es ; movw $0xbeef,%es:0x10 ; mov %es:0x20,%eax ; hlt
#   (a 2-byte MMIO write to 0x20010, then a 4-byte MMIO read of 0x20020 into EAX)
MMIO = bytes.fromhex("b800208ec026c7061000efbe2666a12000f4")
# movw $0x1234,0x8000 ; mov 0x8000,%bx ; hlt
RO_WRITE = bytes.fromhex("c706008034128b1e0080f4")
# mov $0x40000000,%eax ; cpuid ; out %eax,$0x10 ; mov %ebx,%eax ; out %eax,$0x10
# mov %ecx,%eax ; out %eax,$0x10 ; mov %edx,%eax ; out %eax,$0x10
# mov $0x40000010,%eax ; cpuid ; out %eax,$0x10 ; mov $1,%eax ; cpuid ; mov %ecx,%eax ; out %eax,$0x10 ; hlt
#   (OUTs, in order: leaf 0x40000000 EAX EBX ECX EDX, leaf 0x40000010 EAX, leaf 1 ECX)
CPUID_PROBE = bytes.fromhex(
    "66b8000000400fa266e7106689d866e7106689c866e7106689d066e71066b8100000400fa266e71066b8010000000fa26689c866e710f4"
)
# cli ; hlt
CLI_HLT = bytes.fromhex("faf4")
# sti ; hlt
STI_HLT = bytes.fromhex("fbf4")
# 1: jmp 1b
SPIN = bytes.fromhex("ebfe")

# ---- 32-bit protected mode (.code32) ---------------------------------------------------------
# mov (%esi),%eax ; out %eax,$0x10 ; movl $0xcafef00d,0x100000 ; hlt
PM_OUT = bytes.fromhex("8b06e710c705000010000df0fecaf4")
# ud2        (with IDTR.limit 0: #UD -> #GP -> #DF -> triple fault)
PM_UD = bytes.fromhex("0f0b")

# ---- 64-bit long mode (.code64) --------------------------------------------------------------
# movabs $0x1122334455667788,%rax ; mov %rax,0x200000 ; out %eax,$0x10 ; mov 0x200008,%rbx ; hlt
LM_OUT = bytes.fromhex("48b888776655443322114889042500002000e710488b1c2508002000f4")
# mov $0x1100,%edi ; lock cmpxchg16b (%rdi) ; hlt
LM_CMPXCHG16B = bytes.fromhex("bf00110000f0480fc70ff4")


class GuestRam:
    """Anonymous host memory for a guest; ``addr`` is its host virtual address."""

    def __init__(self, size: int = RAM_SIZE) -> None:
        self.size = size
        self.mem = mmap.mmap(-1, size)
        self._anchor: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * size).from_buffer(self.mem)
        self.addr = ctypes.addressof(self._anchor)

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa : gpa + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.mem[gpa : gpa + size])

    def close(self) -> None:
        self._anchor = None  # releases the buffer export so the mmap can close
        self.mem.close()


def real_mode_state(rip: int = CODE_GPA) -> CpuState:
    """Real mode, all segments base 0 (ACRN's real-mode landing with CS base 0)."""
    st = CpuState()
    for n in ("ss", "ds", "es", "fs", "gs"):
        setattr(st, n, Segment(0, 0, 0xFFFF, 0x0093))
    st.cs = Segment(0, 0, 0xFFFF, 0x009B)
    st.ldtr = Segment(0, 0, 0xFFFF, 0x0082)
    st.tr = Segment(0, 0, 0xFFFF, 0x008B)
    st.idtr = DescriptorTable(0, 0x3FF)
    st.gdtr = DescriptorTable(0, 0xFFFF)
    st.cr0 = CR0_ET | CR0_NE
    st.rip = rip
    return st


def protected_mode_state(rip: int = CODE_GPA) -> CpuState:
    """ACRN's bzImage entry state (acrn-dm's ``acrn_sw_load_bzimage``): flat 4 GiB, CR0 = PE|ET|NE."""
    st = CpuState()
    for n in ("ss", "ds", "es", "fs", "gs"):
        setattr(st, n, Segment(0x18, 0, 0xFFFFFFFF, 0xC093))
    st.cs = Segment(0x10, 0, 0xFFFFFFFF, 0xC09B)
    st.ldtr = Segment(0, 0, 0xFFFF, 0x0082)
    st.tr = Segment(0, 0, 0xFFFF, 0x008B)
    st.gdtr = DescriptorTable(0x500, 0x1F)
    st.idtr = DescriptorTable(0, 0)
    st.cr0 = CR0_PE | CR0_ET | CR0_NE
    st.rip = rip
    st.rsi = DATA_IN_GPA
    return st


def long_mode_state(rip: int = CODE_GPA) -> CpuState:
    """Firecracker-style 64-bit state (its ``setup_regs``/``setup_sregs``); needs
    :func:`write_page_tables`."""
    st = CpuState()
    for n in ("ss", "ds", "es", "fs", "gs"):
        setattr(st, n, Segment(0x10, 0, 0xFFFFFFFF, 0xC093))
    st.cs = Segment(0x08, 0, 0xFFFFFFFF, 0xA09B)
    st.ldtr = Segment(0, 0, 0xFFFF, 0x0082)
    st.tr = Segment(0x18, 0, 0xFFFFF, 0x808B)
    st.gdtr = DescriptorTable(0x500, 0x1F)
    st.idtr = DescriptorTable(0x520, 7)
    st.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
    st.cr3 = PML4_GPA
    st.cr4 = CR4_PAE
    st.efer = EFER_LME | EFER_LMA
    st.rip = rip
    st.rsp = 0x8FF0
    return st


def write_page_tables(ram: GuestRam) -> None:
    """Identity-map [0, 4 MiB) with two 2 MiB pages: PML4 0x2000 -> PDPT 0x3000 -> PD 0x4000."""
    ram.write(PML4_GPA, struct.pack("<Q", 0x3000 | 0x3))
    ram.write(0x3000, struct.pack("<Q", 0x4000 | 0x3))
    ram.write(0x4000, struct.pack("<QQ", 0x000000 | 0x83, 0x200000 | 0x83))
