"""The built-in test and demo guests: tiny flat images entered purely through SET_VCPU_REGS.

Each guest is assembled from ``guest-src/<name>.S`` by ``guest-src/build.py``; the bytes
(``<name>.bin``) and the addresses the register state needs (``symbols.json``) are checked in, so
nothing here needs a toolchain.  There is no BIOS and no loader code: the VMM copies
:meth:`Guest.image` to :attr:`Guest.load_gpa` in a RAM of :attr:`Guest.mem_size` bytes at GPA 0,
issues ``ACRN_IOCTL_SET_VCPU_REGS`` with :meth:`Guest.regs` and starts the VM.

Guest-physical layout (the same for every guest)::

    0x00000-0x003FF  real-mode IVT (probe_real installs vectors 12 and 13 here)
    0x00400-0x06FFF  free; the stack grows down from RSP = 0x7000
    0x08000-...      the image; entry point = its first byte (symbol ``start``); GDT and, for the
                     long-mode guests, 4 KiB-aligned page tables (PML4, PDPT, PD) inside it
    ...-0x1FFFFF     free RAM (2 MiB in all); 0x10000 is what the probes read for DSLIMIT

Output goes to a 16550 at 0x3F8, polled the way Linux's early console polls it (LSR.THRE before
each byte), so the guests need nothing but a UART model that reports THRE.

Register states follow ACRN's own conventions (acrn-dm's ``devicemodel/core/sw_load_*.c`` loaders
and ACRN's reset template, ``acrn.rules.reset_vcpu_state``):

* real mode: ``cr0 = 0x30`` (ET|NE: NE is fixed to 1 by VMX, so ACRN's CR0 check refuses 0x0),
  ``cs_ar = 0x009F``, the access rights of ACRN's reset template and of acrn-dm's OVMF and
  vSBL loaders (present, S=1, type 15 = code, conforming, readable, accessed: an "accessed"
  code type is what VM entry requires of CS in an unrestricted real-mode guest); selector 0,
  base 0, limit 0xFFFF, IDTR 0/0x3FF (the real-mode IVT);
* protected mode: acrn-dm's bzImage state: ``cr0 = 0x31``, CS 0x10 AR 0xC09B limit 4 GiB,
  DS/SS/ES 0x18, FS/GS 0, GDTR -> the image's 4-entry GDT (limit 31), IDT 0/0;
* long mode: as protected, plus ``cr0 = 0x80000031``, ``cr4 = PAE``, ``ia32_efer = LME|LMA``,
  ``cs_ar = 0xA09B`` (L=1, D=0: ACRN picks 64-bit mode from EFER.LMA and CS.L in ``set_vcpu_regs``)
  and ``cr3`` = the image's PML4 (identity map of 1 GiB with 2 MiB pages).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from acrn.arch import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, GPR_NAMES
from acrn.regs.model import DescriptorPtr, VcpuRegs

LOAD_GPA: Final = 0x8000
MEM_SIZE: Final = 2 * 1024 * 1024
STACK_TOP: Final = 0x7000
#: Selectors of ACRN's 4-entry loader GDT (``acrn_sw_load_bzimage``): code 0x10, data 0x18.
CODE_SEL: Final = 0x10
DATA_SEL: Final = 0x18

REAL_MODE_CODE_AR: Final = 0x009F
PROTECTED_MODE_CODE_AR: Final = 0xC09B
LONG_MODE_CODE_AR: Final = 0xA09B

#: Default iteration count of ``compute`` and OUT count of ``io_loop`` (a few ms of guest time here).
COMPUTE_DEFAULT_COUNT: Final = 1000
IO_LOOP_DEFAULT_COUNT: Final = 100
IO_LOOP_DEFAULT_PORT: Final = 0x80
DEBUGEXIT_DEFAULT_VALUE: Final = 0x10
DEBUGEXIT_PORT: Final = 0xF4
#: irq_count: the port its level-triggered vector's handler reads (a device's acknowledge), the
#: vector that makes it print TOTAL and halt, and its IOAPIC pin -> vector wiring.
IRQ_COUNT_ACK_PORT: Final = 0x510
IRQ_COUNT_STOP_VECTOR: Final = 0x3F
IRQ_COUNT_IOAPIC_VECTORS: Final = {4: 0x34, 5: 0x35, 6: 0x36}
#: smp_hello: what it prints when the AP starts with RBX = ``rbx``.
SMP_HELLO_OUTPUT: Final = "BSP\nAP RBX=0x{rbx:08X}\nBSP saw AP\n"
#: Port the pci_probe and ioevent_probe guests write every value they read to (one dword each).
REPORT_PORT: Final = 0xE0
#: ioevent_probe's defaults: a queue-notify port and MMIO address (outside RAM), the queue index
#: it kicks with (CX) and another value (BX).
IOEVENT_PORT: Final = 0xC010
IOEVENT_MMIO: Final = 0xD0000000
IOEVENT_MATCH: Final = 1
IOEVENT_OTHER: Final = 2


@cache
def _symbols() -> dict[str, dict[str, int]]:
    text = resources.files(__name__).joinpath("symbols.json").read_text()
    table: dict[str, dict[str, int]] = json.loads(text)
    return table


def symbols(name: str) -> dict[str, int]:
    """The addresses ``guest-src/build.py`` exported for one guest (start, gdt, gdt_end, pml4, ...)."""
    return dict(_symbols()[name])


def image(name: str) -> bytes:
    """The flat image of one guest, to be copied to :data:`LOAD_GPA`."""
    return resources.files(__name__).joinpath(f"{name}.bin").read_bytes()


def _real_regs(name: str) -> VcpuRegs:
    return VcpuRegs(
        cr0=CR0_ET | CR0_NE,
        cs_sel=0,
        cs_base=0,
        cs_limit=0xFFFF,
        cs_ar=REAL_MODE_CODE_AR,
        rip=symbols(name)["start"],
        rsp=STACK_TOP,
        idt=DescriptorPtr(base=0, limit=0x3FF),
    )


def _gdt(name: str) -> DescriptorPtr:
    sym = symbols(name)
    return DescriptorPtr(base=sym["gdt"], limit=sym["gdt_end"] - sym["gdt"] - 1)


def _protected_regs(name: str) -> VcpuRegs:
    return VcpuRegs(
        cr0=CR0_ET | CR0_NE | CR0_PE,
        cs_sel=CODE_SEL,
        cs_base=0,
        cs_limit=0xFFFFFFFF,
        cs_ar=PROTECTED_MODE_CODE_AR,
        ds_sel=DATA_SEL,
        ss_sel=DATA_SEL,
        es_sel=DATA_SEL,
        gdt=_gdt(name),
        rip=symbols(name)["start"],
        rsp=STACK_TOP,
    )


def _long_regs(name: str) -> VcpuRegs:
    r = _protected_regs(name)
    r.cr0 = CR0_PG | CR0_ET | CR0_NE | CR0_PE
    r.cr4 = CR4_PAE
    r.ia32_efer = EFER_LME | EFER_LMA
    r.cs_ar = LONG_MODE_CODE_AR
    r.cr3 = symbols(name)["pml4"]
    return r


_REGS_BY_MODE: Final[dict[str, Callable[[str], VcpuRegs]]] = {
    "real": _real_regs,
    "protected": _protected_regs,
    "long": _long_regs,
}


def compute_sum(count: int) -> int:
    """The checksum ``compute`` prints for ECX = count: count + (count-1) + ... + 1, mod 2**32."""
    count &= 0xFFFFFFFF
    return (count * (count + 1) // 2) & 0xFFFFFFFF


def compute_output(count: int) -> str:
    """Everything ``compute`` prints for ECX = count."""
    return f"COUNT=0x{count & 0xFFFFFFFF:08X}\nSUM=0x{compute_sum(count):08X}\n"


def debugexit_status(value: int) -> int:
    """The VM exit status a write of ``value`` to port 0xF4 requests (QEMU isa-debug-exit rule)."""
    return (value << 1) | 1


def parse_probe(output: str) -> dict[str, int | str]:
    """Parse a probe's ``KEY=0xHEX`` lines into a dict (``DSLIMIT`` stays a string: ok/fault)."""
    out: dict[str, int | str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        out[key] = int(value, 16) if value.startswith("0x") else value
    return out


@dataclass(frozen=True)
class Guest:
    """One built-in guest: its image, where it goes, the state it is entered with, what it prints."""

    name: str
    description: str
    #: "real" | "protected" | "long": the mode the register state enters.
    mode: str
    load_gpa: int = LOAD_GPA
    mem_size: int = MEM_SIZE
    #: The complete UART output of a run with the default :meth:`regs`; None when the guest never
    #: finishes or prints nothing checkable (spin, triple_fault, the probes, whose values depend on
    #: the hypervisor being tested).
    expected_output: str | None = None
    #: GPRs the guest takes as parameters, with their defaults (set by :meth:`regs`).
    params: dict[str, int] = field(default_factory=dict)

    def image(self) -> bytes:
        """The flat image, to be copied to :attr:`load_gpa`."""
        return image(self.name)

    def symbols(self) -> dict[str, int]:
        """Addresses inside the image (``start`` is the entry point)."""
        return symbols(self.name)

    def regs(self, **gprs: int) -> VcpuRegs:
        """A fresh SET_VCPU_REGS state for vCPU 0; keyword arguments override GPRs (rcx=...)."""
        r = _REGS_BY_MODE[self.mode](self.name)
        for reg, value in {**self.params, **gprs}.items():
            if reg not in GPR_NAMES:
                raise ValueError(f"{self.name}: {reg!r} is not a general-purpose register")
            setattr(r, reg, value)
        return r

    def memory(self) -> bytearray:
        """A zeroed RAM image of :attr:`mem_size` bytes with the guest loaded at :attr:`load_gpa`."""
        img = self.image()
        mem = bytearray(self.mem_size)
        mem[self.load_gpa : self.load_gpa + len(img)] = img
        return mem

    def to_json_dict(self) -> dict[str, Any]:
        """A description for ``acrn`` tools (the register state in the VcpuRegs JSON form)."""
        return {
            "name": self.name,
            "description": self.description,
            "mode": self.mode,
            "load_gpa": self.load_gpa,
            "mem_size": self.mem_size,
            "expected_output": self.expected_output,
            "regs": self.regs().to_json_dict(hex_values=True),
        }


GUESTS: Final[dict[str, Guest]] = {
    g.name: g
    for g in (
        Guest("hello_real", "real mode (CR0 0x30, CS 0:0x8000) prints a line on COM1", "real",
              expected_output="hello from real mode\n"),
        Guest("hello_protected", "32-bit protected mode, acrn-dm bzImage style, prints a line", "protected",
              expected_output="hello from protected mode\n"),
        Guest("hello_long", "64-bit long mode entered directly (paging, EFER.LMA, CS.L), prints a line",
              "long", expected_output="hello from long mode\n"),
        Guest("probe_real", "prints the landed real-mode state as KEY=0xHEX lines and probes the DS limit",
              "real"),
        Guest("probe_protected", "prints the landed protected-mode state as KEY=0xHEX lines", "protected"),
        Guest("probe_long", "prints the landed long-mode state as KEY=0xHEX lines", "long"),
        Guest("spin", "an endless jmp-to-self loop (for kick/PAUSE tests)", "protected"),
        Guest("triple_fault", "loads an empty IDT and executes ud2: triple fault (shutdown)", "protected"),
        Guest("debugexit", "writes AL (RAX) to the debug-exit port 0xF4", "protected",
              expected_output="", params={"rax": DEBUGEXIT_DEFAULT_VALUE}),
        Guest("compute", "a counted loop (ECX iterations), then prints COUNT and SUM", "protected",
              expected_output=compute_output(COMPUTE_DEFAULT_COUNT), params={"rcx": COMPUTE_DEFAULT_COUNT}),
        Guest("io_loop", "ECX one-byte OUTs to port DX (0x80), then halts: one exit each", "protected",
              expected_output="", params={"rcx": IO_LOOP_DEFAULT_COUNT, "rdx": IO_LOOP_DEFAULT_PORT}),
        Guest("irq_count", "an IDT, PIC, IOAPIC and LAPIC set up; prints a line per interrupt it receives",
              "protected"),
        Guest("smp_hello", "the BSP starts AP 1 with INIT/SIPI through the LAPIC ICR; the AP prints (needs SMP)",
              "protected", expected_output=SMP_HELLO_OUTPUT.format(rbx=0)),
        Guest("pci_probe", "probes PCI config space through 0xCF8/0xCFC, reports each value read to port "
              "0xE0", "protected", expected_output=""),
        Guest("ioevent_probe", "reads and writes a notify port (DX) and MMIO address (ESI) as a virtio "
              "driver kicks a queue; reports reads to port 0xE0", "protected", expected_output="",
              params={"rdx": IOEVENT_PORT, "rsi": IOEVENT_MMIO, "rcx": IOEVENT_MATCH, "rbx": IOEVENT_OTHER}),
        Guest("syscall_user", "kernel/user split: int3 at CPL 0, two SYSCALL/SYSRET round trips from user "
              "mode, then a user #PF; prints the state each arrives with", "long"),
    )
}  # fmt: skip


def get(name: str) -> Guest:
    """The guest called ``name``; KeyError names the known guests."""
    try:
        return GUESTS[name]
    except KeyError:
        raise KeyError(f"no built-in guest {name!r}; known: {', '.join(sorted(GUESTS))}") from None
