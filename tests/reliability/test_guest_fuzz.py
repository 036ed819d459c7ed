"""Guest-code fuzzing (issue 7, reliability): whatever a guest executes, pyacrn survives it.

Hypothesis builds guest programs from instruction snippets assembled by hand (no assembler at test
time): port I/O of every size to the device model's ports (UART, RTC, i8042, PCI CF8/CFC, ACPI PM,
reset control, debug exit) and to random ones; REP INS/OUTS with random counts and direction; MMIO
loads, stores and read-modify-writes on RAM, on unmapped space and across page and RAM boundaries;
HLT with interrupts off and on, INT3, UD2, INT n, IRET of garbage, far JMP/CALL to random selectors,
MOV to CR0/CR3/CR4, LGDT/LIDT of random tables, segment loads, POPF of random flags, WRMSR/RDMSR,
CPUID, VMCALL, XSETBV, privileged odds and ends, writes into its own code and jumps to random
addresses; then random bytes and a way to end (HLT, debug exit, ACPI power-off, reset, nothing).

The program runs at :data:`CODE_GPA` of a built-in guest (its GDT and, in long mode, its page
tables stay in place) in real, protected and long mode, through :class:`VmSession` with the boot
devices ``acrn run`` attaches, on the faithful or the fast ioreq path, and with either a guest reset
ending the run or acrn-dm's reset sequence reloading the program.  After every example:

* ``run`` returned a :class:`RunResult` whose reason is one that :mod:`acrn.dm.vmm` documents, with
  the status that goes with it; ``error`` (an exception in a vCPU thread) is a bug;
* a fault comes with a stop report that prints, registers included (disassembly only if capstone
  is installed);
* ``close`` works and nothing is left: hypervisor and runtime VMs, HSM VMs and files, pins, Service
  VM memory registrations, threads and fds are back to what they were;
* the same :class:`Machine` still runs a known-good guest.

A failing example is printed as its snippet listing and its bytes in hex; replay it with
``PYACRN_GUEST_FUZZ_REPLAY=<accel>:<mode>:<hex>`` (``-k replay``).  CI runs
``PYACRN_GUEST_FUZZ_EXAMPLES`` (default 15) derandomized examples per accelerator and mode; the
long run is ``python -m pytest tests/reliability/test_guest_fuzz.py -m slow -s``
(``PYACRN_GUEST_FUZZ_LONG_EXAMPLES``, default 500 per combination), which prints the number of
programs run and a histogram of stop reasons.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from acrn.arch import CpuState
from acrn.device import EmulatedDevice
from acrn.dm.boot import attach_boot_devices
from acrn.dm.devices import acpi_pm, i8042
from acrn.dm.loaders import MemoryLayout
from acrn.dm.vmm import FAULT_REASONS, STATUS_FAULT, STATUS_TIMEOUT, RunResult, VmSession
from acrn.emu.machine import Machine
from acrn.guests import GUESTS, Guest
from acrn.regs.model import VcpuRegs
from acrn.regs.show import format_state

from .test_guest_faults import PortLog

MODES: Final = ("real", "protected", "long")
#: The guest whose image (GDT, page tables) and register preset each mode borrows.
HOST_GUESTS: Final = {"real": "hello_real", "protected": "hello_protected", "long": "hello_long"}
#: Where the program goes and RIP points: past every host image (hello_long's page tables end at
#: 0xC000), inside real mode's 64 KiB code segment.
CODE_GPA: Final = 0xC000
#: A RAM page the programs use for far pointers and tables.
SCRATCH_GPA: Final = 0x1000
RAM_END: Final = 2 << 20

TIMEOUT: Final = float(os.environ.get("PYACRN_GUEST_FUZZ_TIMEOUT", "0.25"))
CI_EXAMPLES: Final = int(os.environ.get("PYACRN_GUEST_FUZZ_EXAMPLES", "15"))
LONG_EXAMPLES: Final = int(os.environ.get("PYACRN_GUEST_FUZZ_LONG_EXAMPLES", "500"))

#: Every reason acrn.dm.vmm documents for a session without a console marker, with its status
#: (None: debug exit, whose status is (value << 1) | 1).  "error" is documented too, but it means
#: an exception escaped into a vCPU thread: a finding, reported separately.
STATUS_BY_REASON: Final[dict[str, int | None]] = {
    "halt": 0,
    "debugexit": None,
    "timeout": STATUS_TIMEOUT,
    "poweroff": 0,
    "reset": 0,
    **{r: STATUS_FAULT for r in FAULT_REASONS if r != "error"},
}

#: Stop reasons per (accel, mode), over every run of this process (the long run prints them).
HISTOGRAM: dict[tuple[str, str], Counter[str]] = {}


class LoggedErrors(logging.Handler):
    """Counts pyacrn's error-level log records by message kind: handled, but worth a look."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.kinds[record.msg if isinstance(record.msg, str) else repr(record.msg)] += 1


# --------------------------------------------------------------------------- ports and addresses
UART_PORTS: Final = list(range(0x3F8, 0x400))
RTC_PORTS: Final = [0x70, 0x71]
I8042_PORTS: Final = [i8042.DATA_PORT, i8042.STATUS_PORT]
PCI_PORTS: Final = [0xCF8, 0xCF9, 0xCFA, 0xCFB, 0xCFC, 0xCFD, 0xCFE, 0xCFF]
ACPI_PORTS: Final = [
    acpi_pm.SMI_CMD_PORT,
    *range(acpi_pm.PM1A_EVT_PORT, acpi_pm.PM1A_EVT_PORT + 4),
    acpi_pm.PM1A_CNT_PORT,
    acpi_pm.PM1A_CNT_PORT + 1,
    *range(acpi_pm.PM_TMR_PORT, acpi_pm.PM_TMR_PORT + 4),
    acpi_pm.RESET_PORT,
]
DEBUGEXIT_PORT: Final = 0xF4
#: Ports nothing in the device model claims, and ones the in-kernel irqchip of KVM may claim.
OTHER_PORTS: Final = [0x80, 0x20, 0x21, 0xA0, 0xA1, 0x40, 0x43, 0x61, 0x92, 0x510, 0xE0, 0xC010, 0xFFFF]
DEVICE_PORTS: Final = UART_PORTS + RTC_PORTS + I8042_PORTS + PCI_PORTS + ACPI_PORTS + OTHER_PORTS

#: RAM (scratch, stack, the program itself, the last bytes of RAM), unmapped guest-physical space
#: (right after RAM, a virtio-like BAR, IOAPIC, HPET, LAPIC, below 4 GiB) and page/RAM crossings.
MEM_ADDRESSES: Final = [
    SCRATCH_GPA,
    SCRATCH_GPA + 0xFFE,
    0x6FF0,
    CODE_GPA,
    CODE_GPA + 0x10,
    RAM_END - 4,
    RAM_END - 2,
    RAM_END - 1,
    RAM_END,
    0x400000,
    0xA0000,
    0xD0000000,
    0xFEC00000,
    0xFEC00010,
    0xFED00000,
    0xFEE00000,
    0xFEE00300,
    0xFEE00FFE,
    0xFFFFFFF0,
    0xFFFFFFFE,
]

# --------------------------------------------------------------------------- encoders
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def u16(v: int) -> bytes:
    return struct.pack("<H", v & 0xFFFF)


def osz(mode: str, size: int) -> bytes:
    """The prefix that makes an instruction's operand ``size`` bytes (1: the byte opcode is used)."""
    if size == 1:
        return b""
    if mode == "real":
        return b"\x66" if size == 4 else b""
    return {2: b"\x66", 4: b"", 8: b"\x48"}[size]


def asz(mode: str) -> bytes:
    """The prefix for a 32-bit address in [ebx] (real mode addresses with 16 bits by default)."""
    return b"\x67" if mode == "real" else b""


def mov(mode: str, reg: int, value: int) -> bytes:
    """mov e<reg>, imm32 (zero-extended into r<reg> in long mode)."""
    return osz(mode, 4) + bytes([0xB8 + reg]) + u32(value)


def mov64(reg: int, value: int) -> bytes:
    return b"\x48" + bytes([0xB8 + reg]) + struct.pack("<Q", value & (1 << 64) - 1)


def store_ebx(mode: str, value: int) -> bytes:
    """mov eax, value; mov [ebx], eax."""
    return mov(mode, EAX, value) + asz(mode) + osz(mode, 4) + b"\x89\x03"


@dataclass(frozen=True)
class Snippet:
    name: str
    code: bytes

    def __repr__(self) -> str:
        return f"{self.name}: {self.code.hex()}"


@dataclass(frozen=True)
class Program:
    """A guest program: snippets run in order from :data:`CODE_GPA` in ``mode``."""

    mode: str
    snippets: tuple[Snippet, ...]

    def code(self) -> bytes:
        return b"".join(s.code for s in self.snippets)

    def listing(self) -> str:
        out, off = [], CODE_GPA
        for s in self.snippets:
            out.append(f"  {off:#07x} {s.name:<28} {s.code.hex()}")
            off += len(s.code)
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"Program({self.mode!r}, hex={self.code().hex()!r})"


# --------------------------------------------------------------------------- strategies
def ports() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(DEVICE_PORTS), st.integers(0, 0xFFFF))


def values() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 0xFF, 0xFE, 0x80000000, 0xFFFFFFFF, 0x2000 | 0x1400]),
        st.integers(0, 0xFFFFFFFF),
    )


def addresses() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(MEM_ADDRESSES),
        st.integers(0, RAM_END - 1),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFF).map(lambda p: (p << 12) | 0xFFD),  # a page crossing
    )


def io_sizes(mode: str) -> st.SearchStrategy[int]:
    return st.sampled_from([1, 2, 4])


def mem_sizes(mode: str) -> st.SearchStrategy[int]:
    return st.sampled_from([1, 2, 4, 8] if mode == "long" else [1, 2, 4])


@st.composite
def port_io(draw: st.DrawFn, mode: str) -> Snippet:
    port, size, write, value = draw(ports()), draw(io_sizes(mode)), draw(st.booleans()), draw(values())
    op = (0xEE if write else 0xEC) + (size > 1)
    if port < 0x100 and draw(st.booleans()):  # the immediate-port form
        code = mov(mode, EAX, value) + osz(mode, size) + bytes([op - 8, port])
    else:
        code = mov(mode, EDX, port) + mov(mode, EAX, value) + osz(mode, size) + bytes([op])
    return Snippet(f"{'out' if write else 'in'}{size} {port:#x}", code)


@st.composite
def pci_config(draw: st.DrawFn, mode: str) -> Snippet:
    """CF8 with the enable bit and a random bus/device/function/register, then CFC..CFF."""
    addr = 0x80000000 | draw(st.integers(0, 0xFFFFFF)) if draw(st.booleans()) else draw(values())
    off, size, write = draw(st.integers(0, 3)), draw(io_sizes(mode)), draw(st.booleans())
    code = mov(mode, EDX, 0xCF8) + mov(mode, EAX, addr) + osz(mode, 4) + b"\xef"
    code += mov(mode, EDX, 0xCFC + off) + mov(mode, EAX, draw(values()))
    code += osz(mode, size) + bytes([(0xEE if write else 0xEC) + (size > 1)])
    return Snippet(f"pci {addr:#x} +{off} {'w' if write else 'r'}{size}", code)


@st.composite
def string_io(draw: st.DrawFn, mode: str) -> Snippet:
    """REP INS/OUTS (or a single one) with a random count, buffer and direction flag."""
    ins, size, count = draw(st.booleans()), draw(io_sizes(mode)), draw(st.integers(0, 80))
    buf = draw(addresses())
    std, rep = draw(st.booleans()), draw(st.booleans())
    index = EDI if ins else ESI
    code = mov(mode, ECX, count) + mov(mode, index, buf) + mov(mode, EDX, draw(ports()))
    code += b"\xfd" if std else b"\xfc"
    code += (b"\xf3" if rep else b"") + osz(mode, size) + bytes([(0x6C if ins else 0x6E) + (size > 1)])
    return Snippet(
        f"{'rep ' if rep else ''}{'ins' if ins else 'outs'}{size} n={count} {'std' if std else 'cld'}", code
    )


@st.composite
def memory_access(draw: st.DrawFn, mode: str) -> Snippet:
    """A load, store or locked/unlocked read-modify-write of [ebx] (RAM, MMIO, crossings)."""
    addr, size, kind = draw(addresses()), draw(mem_sizes(mode)), draw(st.sampled_from(["ld", "st", "rmw"]))
    pre = asz(mode) + osz(mode, size)
    if kind == "ld":
        op = pre + (b"\x8a\x03" if size == 1 else b"\x8b\x03")
    elif kind == "st":
        op = pre + (b"\x88\x03" if size == 1 else b"\x89\x03")
    else:
        rmw = draw(st.sampled_from([b"\x01\x03", b"\x87\x03", b"\xff\x03", b"\x0f\xb1\x03", b"\x0f\xc1\x03"]))
        lock = b"\xf0" if draw(st.booleans()) else b""
        op = lock + asz(mode) + osz(mode, max(size, 2)) + rmw
    code = mov(mode, EBX, addr) + mov(mode, EAX, draw(values())) + op
    return Snippet(f"{kind}{size} [{addr:#x}]", code)


@st.composite
def poke_code(draw: st.DrawFn, mode: str) -> Snippet:
    """A store into the program's own code (self-modifying code, possibly of the next instruction)."""
    addr = CODE_GPA + draw(st.integers(0, 160))
    code = mov(mode, EBX, addr) + store_ebx(mode, draw(values()))
    return Snippet(f"poke code [{addr:#x}]", code)


SIMPLE: Final = {
    "hlt": b"\xf4",
    "cli;hlt": b"\xfa\xf4",
    "sti;hlt": b"\xfb\xf4",
    "sti;nop": b"\xfb\x90",
    "int3": b"\xcc",
    "into": b"\xce",
    "int1": b"\xf1",
    "ud2": b"\x0f\x0b",
    "vmcall": b"\x0f\x01\xc1",
    "vmmcall": b"\x0f\x01\xd9",
    "rdtsc": b"\x0f\x31",
    "rdtscp": b"\x0f\x01\xf9",
    "rdpmc": b"\x0f\x33",
    "wbinvd": b"\x0f\x09",
    "invd": b"\x0f\x08",
    "monitor": b"\x0f\x01\xc8",
    "mwait": b"\x0f\x01\xc9",
    "syscall": b"\x0f\x05",
    "sysenter": b"\x0f\x34",
    "swapgs": b"\x0f\x01\xf8",
    "rsm": b"\x0f\xaa",
    "pause": b"\xf3\x90",
    "xgetbv": b"\x0f\x01\xd0",
    "fninit;fld1": b"\xdb\xe3\xd9\xe8",
    "clts": b"\x0f\x06",
    "invlpg [ebx]": b"\x0f\x01\x3b",
    "sgdt [ebx]": b"\x0f\x01\x03",
    "div by zero": b"\x31\xc9\xf7\xf1",
}


@st.composite
def simple(draw: st.DrawFn, mode: str) -> Snippet:
    name = draw(st.sampled_from(sorted(SIMPLE)))
    code = SIMPLE[name]
    if "[ebx]" in name:
        code = mov(mode, EBX, draw(addresses())) + asz(mode) + code
    return Snippet(name, code)


@st.composite
def int_n(draw: st.DrawFn, mode: str) -> Snippet:
    n = draw(st.integers(0, 255))
    return Snippet(f"int {n:#x}", bytes([0xCD, n]))


@st.composite
def iret_garbage(draw: st.DrawFn, mode: str) -> Snippet:
    """IRET of whatever was pushed: real mode pops IP/CS/FLAGS, long mode RIP/CS/RFLAGS/RSP/SS."""
    words = draw(st.lists(values(), min_size=5, max_size=5))
    if mode == "real":
        return Snippet("iret garbage", b"".join(b"\x68" + u16(w) for w in words[:3]) + b"\xcf")
    if mode == "protected":
        return Snippet("iretd garbage", b"".join(b"\x68" + u32(w) for w in words[:3]) + b"\xcf")
    return Snippet("iretq garbage", b"".join(b"\x68" + u32(w) for w in words) + b"\x48\xcf")


def selectors() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 3, 0x8, 0x10, 0x13, 0x18, 0x1B, 0x20, 0x28, 0xFFFF]), st.integers(0, 0xFFFF)
    )


@st.composite
def far_transfer(draw: st.DrawFn, mode: str) -> Snippet:
    sel, off, call = draw(selectors()), draw(values()), draw(st.booleans())
    name = f"far {'call' if call else 'jmp'} {sel:#x}:{off:#x}"
    if mode == "real":
        return Snippet(name, bytes([0x9A if call else 0xEA]) + u16(off) + u16(sel))
    if mode == "protected":
        return Snippet(name, bytes([0x9A if call else 0xEA]) + u32(off) + u16(sel))
    # No direct far transfer in 64-bit mode: through a m16:32 pointer at SCRATCH.
    code = mov(mode, EBX, SCRATCH_GPA) + mov(mode, EAX, off) + b"\x89\x03"
    code += mov(mode, EAX, sel) + b"\x66\x89\x43\x04" + (b"\xff\x1b" if call else b"\xff\x2b")
    return Snippet(name, code)


CRS: Final = {0: 0xC0, 2: 0xD0, 3: 0xD8, 4: 0xE0}


@st.composite
def mov_cr(draw: st.DrawFn, mode: str) -> Snippet:
    """MOV to CR0/2/3/4 (CR8 in long mode) of a random value or the current one with a bit flipped."""
    cr = draw(st.sampled_from([0, 0, 3, 4, 4, 2, 8] if mode == "long" else [0, 0, 3, 4, 4, 2]))
    if draw(st.booleans()):
        bit = draw(st.integers(0, 63 if mode == "long" else 31))
        rd = bytes([0x0F, 0x20, CRS.get(cr, 0xC0)]) if cr != 8 else b"\x44\x0f\x20\xc0"
        if mode == "long":
            code = rd + mov64(ECX, 1 << bit) + b"\x48\x31\xc8"
        else:
            code = rd + mov(mode, ECX, 1 << bit) + osz(mode, 4) + b"\x31\xc8"
        name = f"cr{cr} ^= bit {bit}"
    else:
        v = draw(st.integers(0, (1 << 64) - 1 if mode == "long" else 0xFFFFFFFF))
        code = mov64(EAX, v) if mode == "long" else mov(mode, EAX, v)
        name = f"cr{cr} = {v:#x}"
    wr = b"\x44\x0f\x22\xc0" if cr == 8 else bytes([0x0F, 0x22, CRS[cr]])
    return Snippet(name, code + wr)


@st.composite
def descriptor_table(draw: st.DrawFn, mode: str) -> Snippet:
    """LGDT/LIDT/LLDT/LTR of random tables, or a data-segment load of a random selector."""
    kind = draw(st.sampled_from(["lgdt", "lidt", "lldt", "ltr", "mov ds", "mov ss", "mov es", "mov fs"]))
    if kind in ("lgdt", "lidt"):
        ptr = draw(addresses())
        table = mov(mode, EBX, SCRATCH_GPA) + store_ebx(mode, draw(values()))
        code = (table if draw(st.booleans()) else b"") + mov(mode, EBX, ptr) + asz(mode)
        code += b"\x0f\x01\x13" if kind == "lgdt" else b"\x0f\x01\x1b"
        return Snippet(f"{kind} [{ptr:#x}]", code)
    sel = draw(selectors())
    modrm = {"lldt": b"\x0f\x00\xd0", "ltr": b"\x0f\x00\xd8", "mov ds": b"\x8e\xd8", "mov ss": b"\x8e\xd0"}
    modrm |= {"mov es": b"\x8e\xc0", "mov fs": b"\x8e\xe0"}
    return Snippet(f"{kind} {sel:#x}", mov(mode, EAX, sel) + modrm[kind])


@st.composite
def msr(draw: st.DrawFn, mode: str) -> Snippet:
    index = draw(
        st.one_of(
            st.sampled_from(
                [0x10, 0x1B, 0x3A, 0x8B, 0x174, 0x175, 0x176, 0x1A0, 0x277, 0x2FF, 0x6E0, 0x802, 0x808,
                 0x80B, 0x830, 0x838, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000100, 0xC0000102,
                 0xC0000103, 0x40000000, 0x4B564D00]
            ),
            st.integers(0, 0xFFFFFFFF),
        )
    )  # fmt: skip
    write = draw(st.booleans())
    code = mov(mode, ECX, index) + mov(mode, EAX, draw(values())) + mov(mode, EDX, draw(values()))
    return Snippet(
        f"{'wrmsr' if write else 'rdmsr'} {index:#x}", code + (b"\x0f\x30" if write else b"\x0f\x32")
    )


@st.composite
def cpuid(draw: st.DrawFn, mode: str) -> Snippet:
    leaf = draw(
        st.one_of(st.sampled_from([0, 1, 4, 7, 0xB, 0xD, 0x40000000, 0x80000000, 0x80000001]), values())
    )
    sub = draw(st.integers(0, 3))
    return Snippet(f"cpuid {leaf:#x}.{sub}", mov(mode, EAX, leaf) + mov(mode, ECX, sub) + b"\x0f\xa2")


@st.composite
def xsetbv(draw: st.DrawFn, mode: str) -> Snippet:
    xcr, lo = draw(st.integers(0, 2)), draw(st.sampled_from([0, 1, 3, 7, 0xE7, 0xFFFFFFFF]))
    code = mov(mode, ECX, xcr) + mov(mode, EAX, lo) + mov(mode, EDX, 0) + b"\x0f\x01\xd1"
    return Snippet(f"xsetbv {xcr} {lo:#x}", code)


@st.composite
def popf(draw: st.DrawFn, mode: str) -> Snippet:
    """POPF of random flags: TF (single-step #DB), IF, DF, AC, IOPL, NT."""
    flags = draw(st.one_of(st.sampled_from([0x2, 0x102, 0x202, 0x402, 0x40002, 0x3002, 0x4002]), values()))
    if mode == "real":
        return Snippet(f"popf {flags:#x}", b"\x68" + u16(flags) + b"\x9d")
    return Snippet(f"popf {flags:#x}", b"\x68" + u32(flags) + b"\x9d")


@st.composite
def jump(draw: st.DrawFn, mode: str) -> Snippet:
    """jmp eax to a random address, somewhere in the program, RAM or anywhere."""
    target = draw(st.one_of(st.integers(CODE_GPA, CODE_GPA + 160), addresses()))
    return Snippet(f"jmp {target:#x}", mov(mode, EAX, target) + osz(mode, 4) + b"\xff\xe0")


@st.composite
def random_bytes(draw: st.DrawFn, mode: str) -> Snippet:
    return Snippet("bytes", draw(st.binary(min_size=1, max_size=12)))


SNIPPETS: Final[list[Callable[[str], st.SearchStrategy[Snippet]]]] = [
    port_io,
    port_io,
    pci_config,
    string_io,
    memory_access,
    memory_access,
    poke_code,
    simple,
    int_n,
    iret_garbage,
    far_transfer,
    mov_cr,
    descriptor_table,
    msr,
    cpuid,
    xsetbv,
    popf,
    jump,
    random_bytes,
]


@st.composite
def terminator(draw: st.DrawFn, mode: str) -> Snippet:
    """How the program ends: halt, debug exit, ACPI S5, a reset, or not at all (runs into zeros)."""
    kind = draw(
        st.sampled_from(["cli;hlt", "cli;hlt", "debugexit", "poweroff", "reset 0xcf9", "reset i8042", "none"])
    )
    if kind == "cli;hlt":
        return Snippet(kind, b"\xfa\xf4")
    if kind == "debugexit":
        return Snippet(kind, mov(mode, EAX, draw(st.integers(0, 255))) + bytes([0xE6, DEBUGEXIT_PORT]))
    if kind == "poweroff":  # SLP_TYP 5, SLP_EN
        code = mov(mode, EDX, acpi_pm.PM1A_CNT_PORT) + mov(mode, EAX, (5 << 10) | (1 << 13)) + osz(mode, 2)
        return Snippet(kind, code + b"\xef")
    if kind == "reset 0xcf9":
        return Snippet(kind, mov(mode, EDX, acpi_pm.RESET_PORT) + mov(mode, EAX, 6) + b"\xee")
    if kind == "reset i8042":
        return Snippet(kind, mov(mode, EAX, 0xFE) + bytes([0xE6, i8042.STATUS_PORT]))
    return Snippet(kind, b"")


@st.composite
def programs(draw: st.DrawFn, mode: str) -> Program:
    body = draw(st.lists(st.one_of([s(mode) for s in SNIPPETS]), min_size=1, max_size=8))
    tail = draw(st.one_of(st.just(b""), st.binary(max_size=24)))
    parts = [*body, Snippet("tail bytes", tail)] if tail else body
    return Program(mode, (*parts, draw(terminator(mode))))


# --------------------------------------------------------------------------- running
def program_regs(guest: Guest) -> VcpuRegs:
    regs = guest.regs()
    regs.rip = CODE_GPA
    return regs


def run_program(machine: Machine, program: Program, *, fast: bool, reboot: bool, timeout: float) -> RunResult:
    """Run ``program`` in a fresh VmSession (the devices ``acrn run`` attaches) and close it."""
    guest = GUESTS[HOST_GUESTS[program.mode]]
    code = program.code()
    session = VmSession(
        mem_size=guest.mem_size,
        device=EmulatedDevice(machine),
        accel=machine.runtime.accel_name,
        fast_path=fast,
    )
    try:
        attach_boot_devices(session, MemoryLayout(lowmem=session.mem_size))

        def load() -> VcpuRegs:
            session.load(guest.load_gpa, guest.image())
            session.load(CODE_GPA, code)
            return program_regs(guest)

        session.set_regs(load())
        if reboot:
            session.reload = load  # acrn-dm's reset sequence reruns the program
        else:
            session.no_reboot = True
        result = session.run(timeout=timeout)
    finally:
        session.close()
    return result


def render(result: RunResult) -> str:
    """What ``acrn run`` prints about a stop: summary, report, registers, code, findings."""
    lines = [result.summary()]
    report = result.report
    if report is not None:
        lines.append(report.summary())
        if report.state is not None:
            lines.append(format_state(CpuState.from_dict(report.state)))
        lines += report.disassembly
        lines += [f"[{f['level']} {f['severity']}] {f['rule']}: {f['message']}" for f in report.findings]
    return "\n".join(lines)


def check_result(result: RunResult) -> str:
    """The rules every run must keep, whatever the guest did; returns the printed report."""
    assert isinstance(result, RunResult)
    assert result.reason != "error", f"an exception reached a vCPU thread: {result.summary()}"
    assert result.reason in STATUS_BY_REASON, f"undocumented stop reason: {result.summary()}"
    expected = STATUS_BY_REASON[result.reason]
    if expected is None:
        assert result.status & 1 and 1 <= result.status <= 511, result.summary()
    else:
        assert result.status == expected, result.summary()
    text = render(result)
    if result.reason in FAULT_REASONS:
        assert result.report is not None, f"a fault without a report: {result.summary()}"
        assert result.report.state is not None, f"a fault report without registers: {text}"
        assert "rip" in text.lower() and result.reason in text, text
    return text


@dataclass
class Baseline:
    """What the process holds once the accelerator is open: each example must come back to it."""

    fds: set[str]
    threads: set[threading.Thread]

    @staticmethod
    def now() -> Baseline:
        return Baseline(set(os.listdir("/proc/self/fd")), set(threading.enumerate()))


def check_released(machine: Machine, base: Baseline, *, join_timeout: float = 10.0) -> None:
    """Nothing of the examples is left: VMs, files, pins, memory registrations, threads, fds."""
    assert machine.hv.vms() == [], machine.hv.vms()
    assert machine.hsm.vms == [] and machine.hsm.open_files == set()
    assert machine.hsm.pins.count() == 0
    assert machine.runtime.vms == {}
    assert machine.memory._starts == [], "Service VM memory registrations left behind"
    for t in set(threading.enumerate()) - base.threads:
        t.join(timeout=join_timeout)  # vCPU and ioreq threads end once DESTROY/close returned
        assert not t.is_alive(), f"thread left running: {t.name}"
    leaked = set(os.listdir("/proc/self/fd")) - base.fds
    assert not leaked, f"fds leaked: {sorted(leaked)}"


def check_known_good(machine: Machine, mode: str) -> None:
    """The machine still runs the mode's hello guest to the end with its output."""
    g = GUESTS[HOST_GUESTS[mode]]
    with VmSession(
        mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name
    ) as s:
        s.load(g.load_gpa, g.image())
        s.set_regs(g.regs())
        r = s.run(timeout=30)
    assert r.reason == "halt" and r.output.decode() == g.expected_output, r.summary()


def make_machine(accel: str) -> Machine:
    """A Machine on ``accel``: kvm, soft, or fallback/hybrid (KVM with the soft CPU behind it)."""
    if accel in ("kvm", "soft"):
        return Machine(accel=accel)
    from acrn.emu.accel.fallback import FallbackAccelerator, HybridAccelerator

    machine = Machine(accel="kvm")
    machine.runtime.set_accelerator(HybridAccelerator() if accel == "hybrid" else FallbackAccelerator())
    return machine


@pytest.fixture
def hang_guard() -> Iterator[None]:
    # A hang is a finding too: never block CI; dump every thread's stack and exit.
    faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__ or sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def fuzz(
    accel: str, mode: str, examples: int, *, derandomize: bool, errors: LoggedErrors | None = None
) -> Counter[str]:
    """Run ``examples`` generated programs on one Machine; returns the histogram of stop reasons.

    ``errors``, if given, collects the error-level records pyacrn logged meanwhile.
    """
    machine = make_machine(accel)
    histogram: Counter[str] = Counter()
    acrn_log = logging.getLogger("acrn")
    if errors is not None:
        acrn_log.addHandler(errors)
    try:
        check_known_good(machine, mode)  # opens the accelerator: its fds belong to the baseline
        base = Baseline.now()

        @settings(
            max_examples=examples,
            derandomize=derandomize,
            database=None,
            deadline=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(program=programs(mode), fast=st.booleans(), reboot=st.booleans())
        def one(program: Program, fast: bool, reboot: bool) -> None:
            note(f"program ({len(program.code())} bytes at {CODE_GPA:#x}, {mode} mode):\n{program.listing()}")
            note(f"replay: PYACRN_GUEST_FUZZ_REPLAY={accel}:{mode}:{program.code().hex()}")
            result = run_program(machine, program, fast=fast, reboot=reboot, timeout=TIMEOUT)
            note(f"result: {result.summary()}")
            check_result(result)
            check_released(machine, base)
            histogram[result.reason] += 1
            check_known_good(machine, mode)
            check_released(machine, base)

        one()
    finally:
        machine.runtime.close()
        if errors is not None:
            acrn_log.removeHandler(errors)
    HISTOGRAM.setdefault((accel, mode), Counter()).update(histogram)
    return histogram


ACCELS: Final = [
    pytest.param("kvm", marks=pytest.mark.kvm),
    pytest.param("soft", marks=pytest.mark.soft),
    pytest.param("fallback", marks=[pytest.mark.kvm, pytest.mark.soft]),
]
#: The hybrid accelerator (soft first, KVM from the first exception on) only in the long run.
LONG_ACCELS: Final = [*ACCELS, pytest.param("hybrid", marks=[pytest.mark.kvm, pytest.mark.soft])]


# --------------------------------------------------------------------------- the encoders themselves
def test_snippets_encode_the_instruction_they_name() -> None:
    # A few encodings checked by hand against the SDM, so that the fuzzer tests what it claims to.
    assert mov("protected", EDX, 0x3F8) == b"\xba\xf8\x03\x00\x00"
    assert mov("real", EDX, 0x3F8) == b"\x66\xba\xf8\x03\x00\x00"  # operand-size prefix for 32 bits
    assert osz("protected", 2) == b"\x66" and osz("real", 2) == b"" and osz("long", 8) == b"\x48"
    assert mov64(EAX, 1 << 40) == b"\x48\xb8" + (1 << 40).to_bytes(8, "little")
    prog = Program("protected", (Snippet("a", b"\x90"), Snippet("b", b"\xfa\xf4")))
    assert prog.code() == b"\x90\xfa\xf4" and "90faf4" in repr(prog)


def test_checks_catch_what_they_look_for() -> None:
    # The per-example checks must be able to fail: an exception in a vCPU thread, a status that
    # does not go with the reason, a fault without registers, and a thread left running.
    with pytest.raises(AssertionError, match="exception reached a vCPU thread"):
        check_result(RunResult("error", STATUS_FAULT, "RuntimeError: boom"))
    with pytest.raises(AssertionError):
        check_result(RunResult("halt", STATUS_FAULT))
    with pytest.raises(AssertionError, match="fault without a report"):
        check_result(RunResult("shutdown", STATUS_FAULT, "triple fault"))
    assert "timeout" in check_result(RunResult("timeout", STATUS_TIMEOUT, "no stop within 0.1 s"))
    machine = Machine(accel="soft")
    base = Baseline.now()
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="leaked")
    t.start()
    try:
        with pytest.raises(AssertionError, match="thread left running: leaked"):
            check_released(machine, Baseline(base.fds, base.threads), join_timeout=0.01)
    finally:
        release.set()
        t.join()
    check_released(machine, base)


# --------------------------------------------------------------------------- CI and long runs
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("accel", ACCELS)
def test_guest_programs_never_break_the_vmm(accel: str, mode: str, no_leaks: None, hang_guard: None) -> None:
    """CI: a few derandomized programs per accelerator and mode; every rule of the module docstring."""
    histogram = fuzz(accel, mode, CI_EXAMPLES, derandomize=True)
    assert sum(histogram.values()) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("accel", LONG_ACCELS)
def test_guest_programs_long_run(
    accel: str, mode: str, no_leaks: None, hang_guard: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """On demand: many random programs; prints the count and the histogram of stop reasons."""
    errors = LoggedErrors()
    histogram = fuzz(accel, mode, LONG_EXAMPLES, derandomize=False, errors=errors)
    with capsys.disabled():
        total = sum(histogram.values())
        hist = ", ".join(f"{reason} {n}" for reason, n in histogram.most_common())
        print(f"\nguest fuzz {accel}/{mode}: {total} programs; {hist}")
        for msg, n in errors.kinds.most_common():
            print(f"  logged error x{n}: {msg}")


def test_replay(no_leaks: None, hang_guard: None) -> None:
    """``PYACRN_GUEST_FUZZ_REPLAY=<accel>:<mode>:<hex>`` reruns one printed program (both ioreq paths)."""
    spec = os.environ.get("PYACRN_GUEST_FUZZ_REPLAY")
    if not spec:
        pytest.skip("set PYACRN_GUEST_FUZZ_REPLAY=<accel>:<mode>:<hex> to replay a program")
    accel, mode, hexcode = spec.split(":")
    machine = make_machine(accel)
    try:
        check_known_good(machine, mode)
        base = Baseline.now()
        program = Program(mode, (Snippet("replayed", bytes.fromhex(hexcode)),))
        for fast in (False, True):
            for reboot in (False, True):
                result = run_program(machine, program, fast=fast, reboot=reboot, timeout=TIMEOUT)
                print(check_result(result))
                check_released(machine, base)
                check_known_good(machine, mode)
    finally:
        machine.runtime.close()


# --------------------------------------------------------------------------- findings, pinned
IDT_GPA: Final = 0x2000
IDTR_GPA: Final = 0x1FF0
HANDLER_GPA: Final = CODE_GPA + 0x100


HALTING_HANDLER: Final = b"\xb0\x42\xe6\x80\xfa\xf4"  # mov al,0x42; out 0x80,al; cli; hlt
RETURNING_HANDLER: Final = b"\xb0\x42\xe6\x80\xcf"  # mov al,0x42; out 0x80,al; iretd


def run_int_through_idt(
    accel: str, insn: bytes, vector: int, handler: bytes = HALTING_HANDLER
) -> tuple[RunResult, list[int]]:
    """Protected mode with a 256-entry IDT whose ``vector`` gate writes 0x42 to port 0x80 and halts;
    the program loads it, executes ``insn`` and, if that returns, writes 0x11 and halts."""
    g = GUESTS["hello_protected"]
    code = mov("protected", EBX, IDTR_GPA) + b"\x0f\x01\x1b" + insn + b"\xb0\x11\xe6\x80\xfa\xf4"
    gate = struct.pack("<HHHH", HANDLER_GPA & 0xFFFF, 0x10, 0x8E00, HANDLER_GPA >> 16)  # 32-bit int gate
    machine = make_machine(accel)
    try:
        with VmSession(
            mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name
        ) as s:
            s.load(g.load_gpa, g.image())
            s.load(IDT_GPA + 8 * vector, gate)
            s.load(IDTR_GPA, struct.pack("<HI", 256 * 8 - 1, IDT_GPA))
            s.load(CODE_GPA, code)
            s.load(HANDLER_GPA, handler)
            s.set_regs(program_regs(g))
            log = PortLog()
            s.bus.register_pio(0x80, 1, log)
            result = s.run(timeout=10)
    finally:
        machine.runtime.close()
    return result, log.writes


_KVM_AND_SOFT: Final = [pytest.mark.kvm, pytest.mark.soft]


@pytest.mark.parametrize(
    ("accel", "insn", "vector"),
    [
        pytest.param(accel, insn, vector, marks=_KVM_AND_SOFT, id=f"{accel}-{name}")
        for accel in ("fallback", "hybrid")
        for name, insn, vector in (
            ("int3", b"\xcc", 3),
            ("int_3", b"\xcd\x03", 3),
            ("int_0x80", b"\xcd\x80", 0x80),
        )
    ],
)
def test_software_interrupt_is_delivered_through_the_guest_idt(accel: str, insn: bytes, vector: int) -> None:
    # On hardware INT n / INT3 at CPL 0 with a present 32-bit interrupt gate enters the handler
    # (SDM vol. 2 INT n); the handler halts, so the code after the instruction never runs.
    result, writes = run_int_through_idt(accel, insn, vector)
    assert result.reason == "halt" and writes == [0x42], (result.summary(), writes)


@pytest.mark.kvm
@pytest.mark.soft
@pytest.mark.parametrize("accel", ["fallback", "hybrid"])
@pytest.mark.parametrize(("insn", "vector"), [(b"\xcc", 3), (b"\xcd\x03", 3), (b"\xcd\x80", 0x80)])
def test_software_interrupt_handler_returns_past_the_instruction(
    accel: str, insn: bytes, vector: int
) -> None:
    # INT n / INT3 are traps: the return address pushed is the next instruction, so IRET
    # continues with the code after it (0x11), once.
    result, writes = run_int_through_idt(accel, insn, vector, RETURNING_HANDLER)
    assert result.reason == "halt" and writes == [0x42, 0x11], (result.summary(), writes)
