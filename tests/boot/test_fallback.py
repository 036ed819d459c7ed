"""The KVM emulation-failure fallback and the hybrid accelerator (acrn.emu.accel.fallback).

The guest executes, in 64-bit mode, the instructions this machine's KVM cannot emulate
(README.md, "Booting Linux"): popcnt, clac, stac, lock cmpxchg16b, int3 (with an IDT whose #BP handler sets
R8).  On a KVM that can run them natively the fallback is simply never used; the results must be
the same either way.
"""

from __future__ import annotations

import contextlib
import struct
import types
from collections.abc import Iterator

import pytest

from acrn.arch import CpuState
from acrn.dm.setup import preset_regs
from acrn.emu.accel.base import AccelVcpu, HaltExit, PioExit, ShutdownExit, VmExit
from acrn.emu.accel.fallback import (
    FallbackAccelerator,
    FallbackVcpu,
    HybridAccelerator,
    mnemonic,
    soft_exception_vector,
    software_interrupt_length,
)
from acrn.regs.model import DescriptorPtr
from acrn.rules import land_vcpu_regs
from acrn.user_memory import HostMemory

ENTRY = 0x8000
IDT = 0x6000
DATA = 0x10000
HANDLER = ENTRY + 0x100
# mov rdi,0xf0f0; popcnt rax,rdi; mov r9,rax; clac; stac; mov rax,1; mov rdx,2; mov rbx,0x33; mov rcx,0x44;
# lock cmpxchg16b [rsi]; int3; out 0x80,al; hlt      (handler at +0x100: mov r8,0x1234; iretq)
CODE = bytes.fromhex(
    "48c7c7f0f00000" "f3480fb8c7" "4989c1" "0f01ca" "0f01cb" "48c7c001000000" "48c7c202000000"
    "48c7c333000000" "48c7c144000000" "f0480fc70e" "cc" "e680" "f4"
)  # fmt: skip
HANDLER_CODE = bytes.fromhex("49c7c03412000048cf")


def _idt_gate(offset: int, selector: int = 0x08) -> bytes:
    return struct.pack(
        "<HHBBHII", offset & 0xFFFF, selector, 0, 0x8E, (offset >> 16) & 0xFFFF, offset >> 32, 0
    )


class Guest:
    def __init__(self, accel: FallbackAccelerator) -> None:
        self.accel = accel
        self.mem = HostMemory(2 << 20)
        self.vm = accel.create_vm()
        self.vm.map_memory(0, self.mem.size, self.mem.address)
        regs = preset_regs("long", ENTRY, self.mem.size, self.mem.write)
        regs.rsi = DATA
        regs.idt = DescriptorPtr(IDT, 16 * 32 - 1)
        self.mem.write(ENTRY, CODE)
        self.mem.write(HANDLER, HANDLER_CODE)
        self.mem.write(IDT + 3 * 16, _idt_gate(HANDLER))
        self.mem.write(DATA, struct.pack("<QQ", 1, 2))  # matches rdx:rax, so cmpxchg16b stores
        self.vcpu: AccelVcpu = self.vm.create_vcpu(0)
        self.vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))

    def run(self, limit: int = 50) -> list[VmExit]:
        seen: list[VmExit] = []
        for _ in range(limit):
            ex = self.vcpu.run()
            seen.append(ex)
            if isinstance(ex, HaltExit | ShutdownExit) or type(ex).__name__ == "EmulationFailureExit":
                break
        return seen

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.mem.close()


@pytest.fixture
def kvm_guest() -> Iterator[Guest]:
    from acrn.emu.accel.kvm import KvmAccelerator

    g = Guest(FallbackAccelerator(KvmAccelerator(irqchip=False)))
    yield g
    g.close()


def _check_results(g: Guest, exits: list[VmExit]) -> None:
    assert isinstance(exits[-1], HaltExit), exits[-1]
    assert any(isinstance(e, PioExit) and e.port == 0x80 for e in exits)
    st = g.vcpu.get_state()
    assert st.r9 == 8  # popcnt(0xF0F0)
    assert st.r8 == 0x1234  # the #BP handler ran through the IDT and returned
    assert st.rflags & (1 << 18)  # stac after clac: AC set
    assert struct.unpack("<QQ", g.mem.read(DATA, 16)) == (0x33, 0x44)  # cmpxchg16b stored rcx:rbx
    assert st.rip == ENTRY + len(CODE)


@pytest.mark.kvm
@pytest.mark.soft
def test_fallback_completes_instructions_kvm_cannot_emulate(kvm_guest: Guest) -> None:
    exits = kvm_guest.run()
    _check_results(kvm_guest, exits)
    ev = kvm_guest.accel.stats.events
    # On a KVM that runs them natively there is nothing to count; here each one fell back once.
    assert set(ev) <= {"popcnt", "clac", "stac", "lock cmpxchg16b", "int3", "f0480fc7", "f3480fb8"}
    assert all(n == 1 for n in ev.values())
    if ev.get("int3"):
        assert kvm_guest.accel.stats.injected["#BP"] == 1


@pytest.mark.kvm
@pytest.mark.soft
def test_hybrid_starts_on_soft_and_switches_to_kvm_at_the_first_exception() -> None:
    from acrn.emu.accel.kvm import KvmAccelerator

    g = Guest(HybridAccelerator(KvmAccelerator(irqchip=False)))
    try:
        exits = g.run()
        _check_results(g, exits)
        assert g.accel.stats.switches == 1  # the int3 (no IDT delivery on the soft CPU) moved it
        assert "int3" in g.accel.stats.events  # then KVM re-ran int3 and the fallback injected #BP
    finally:
        g.close()


def test_soft_exception_reports_parse() -> None:
    assert soft_exception_vector(ShutdownExit("exception #GP at rip=0x8000")) == (13, 0x8000)
    assert soft_exception_vector(ShutdownExit("exception #DB at rip=0x10")) == (1, 0x10)
    assert soft_exception_vector(ShutdownExit("triple fault")) is None
    # INT n with a vector the soft CPU has no name for (it used to end the VM in 'shutdown').
    assert soft_exception_vector(ShutdownExit("exception vector 128 at rip=0xc00a")) == (128, 0xC00A)
    assert soft_exception_vector(ShutdownExit("exception vector x at rip=0x1")) is None


@pytest.mark.parametrize(
    ("before", "vector", "length"),
    [
        (b"\x90\xcc", 3, 1),  # int3
        (b"\xcd\x03", 3, 2),  # int 3: two bytes, not the one of int3
        (b"\x90\xce", 4, 1),  # into
        (b"\xcd\x80", 0x80, 2),  # int 0x80
        (b"\xcd\xcc", 0xCC, 2),  # int 0xcc (its last byte looks like an int3)
        (b"\x0f\x0b", 6, 0),  # ud2: a fault, RIP already at the instruction
        (b"\xcd\x80", 0x81, 0),  # not this vector's instruction
        (b"\xcd\x0e", 14, 0),  # a #PF after bytes that read "int 0xe" is taken for the fault it likely is
        (b"", 3, 0),  # nothing readable before RIP
    ],
)
def test_software_interrupt_length_from_the_bytes_before_rip(before: bytes, vector: int, length: int) -> None:
    assert software_interrupt_length(before, vector) == length


class _RecordingKvm:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.state: CpuState | None = None

    def set_state(self, st: CpuState) -> None:
        self.state = st.copy()

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        self.calls.append(("exception", vector, error_code))

    def inject_interrupt(self, vector: int) -> None:
        self.calls.append(("interrupt", vector, None))


def _int_n_at_cpl(cpl: int, gate_dpl: int, *, limit: int = 0x7FF) -> _RecordingKvm:
    """FallbackVcpu._software_interrupt for INT 0x80 stepped at CPL ``cpl`` (RIP past it), with a
    32-bit IDT whose gate 0x80 has DPL ``gate_dpl``."""
    idt = bytearray(0x800)
    gate = struct.pack("<HHBBH", 0x9000, 0x08, 0, 0x8E | (gate_dpl << 5), 0)
    idt[0x80 * 8 : 0x80 * 8 + 8] = gate
    st = CpuState(cr0=0x11, rip=0x1002)
    st.cs.selector = 0x1B if cpl == 3 else 0x08
    st.idtr.base, st.idtr.limit = 0x6000, limit

    def read(gpa: int, size: int) -> bytes | None:
        off = gpa - 0x6000
        return bytes(idt[off : off + size]) if off >= 0 and off + size <= len(idt) else None

    kvm = _RecordingKvm()
    vcpu = types.SimpleNamespace(kvm=kvm, _vm=types.SimpleNamespace(soft=types.SimpleNamespace(
        memory=types.SimpleNamespace(read=read))))  # fmt: skip
    vcpu._inject = lambda vector, error_code=None: FallbackVcpu._inject(vcpu, vector, error_code)  # type: ignore[arg-type]
    FallbackVcpu._software_interrupt(vcpu, st, 0x80)  # type: ignore[arg-type]
    return kvm


def test_int_n_is_injected_as_an_interrupt_when_the_gate_dpl_allows_it() -> None:
    assert _int_n_at_cpl(0, 0).calls == [("interrupt", 0x80, None)]
    assert _int_n_at_cpl(3, 3).calls == [("interrupt", 0x80, None)]


def test_int_n_through_a_gate_below_cpl_is_gp_with_the_vector_in_the_error_code() -> None:
    # SDM INT n: "IF software interrupt and gate DPL < CPL THEN #GP(vector * 8 + 2)", a fault:
    # RIP back at the two-byte instruction.
    kvm = _int_n_at_cpl(3, 0)
    assert kvm.calls == [("exception", 13, 0x80 * 8 + 2)]
    assert kvm.state is not None and kvm.state.rip == 0x1000


def test_mnemonics_of_the_quick_instructions() -> None:
    assert mnemonic(b"\xcc\xf4") == "int3"
    assert mnemonic(b"\x0f\x01\xca") == "clac"
    assert mnemonic(b"\x0f\x01\xcb") == "stac"


@contextlib.contextmanager
def code_vcpu(code: bytes, data: bytes, cr4: int = 0) -> Iterator[tuple[AccelVcpu, HostMemory]]:
    """A long-mode vCPU on KVM with the fallback, ``code`` at ENTRY, ``data`` at DATA (RSI)."""
    from acrn.emu.accel.kvm import KvmAccelerator

    accel = FallbackAccelerator(KvmAccelerator(irqchip=False))
    mem = HostMemory(2 << 20)
    vm = accel.create_vm()
    try:
        vm.map_memory(0, mem.size, mem.address)
        regs = preset_regs("long", ENTRY, mem.size, mem.write)
        regs.rsi = DATA
        regs.cr4 |= cr4
        mem.write(ENTRY, code)
        mem.write(DATA, data)
        vcpu = vm.create_vcpu(0)
        vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
        try:
            yield vcpu, mem
        finally:
            vcpu.close()
    finally:
        vm.close()
        mem.close()


# movdqu xmm0,[rsi]; movdqu xmm1,[rsi+16]; paddd xmm0,xmm1; pshufb xmm0,[rsi+48]; movdqu [rsi+32],xmm0; hlt
SSE_CODE = bytes.fromhex("f30f6f06f30f6f4e10660ffec1660f38004630f30f7f4620f4")


@pytest.mark.kvm
@pytest.mark.soft
def test_sse_instructions_see_and_return_the_guest_xmm_registers() -> None:
    a = [1, 2, 3, 0xFFFFFFFF]
    b = [10, 20, 30, 2]
    shuffle = bytes(range(15, -1, -1))  # reverse the 16 bytes
    data = struct.pack("<4I", *a) + struct.pack("<4I", *b) + bytes(16) + shuffle
    with code_vcpu(SSE_CODE, data, cr4=(1 << 9) | (1 << 10)) as (vcpu, mem):  # OSFXSR | OSXMMEXCPT
        ex = vcpu.run()
        assert isinstance(ex, HaltExit), ex
        summed = struct.pack("<4I", *((x + y) & 0xFFFFFFFF for x, y in zip(a, b, strict=True)))
        assert mem.read(DATA + 32, 16) == summed[::-1]


@pytest.mark.kvm
@pytest.mark.soft
def test_hybrid_switch_waits_for_the_outstanding_io_of_the_soft_cpu() -> None:
    from acrn.emu.accel.fallback import HybridVm
    from acrn.emu.accel.kvm import KvmAccelerator

    accel = HybridAccelerator(KvmAccelerator(irqchip=True))
    mem = HostMemory(2 << 20)
    vm = accel.create_vm()
    assert isinstance(vm, HybridVm)
    try:
        vm.map_memory(0, mem.size, mem.address)
        regs = preset_regs("long", ENTRY, mem.size, mem.write)
        mem.write(ENTRY, bytes.fromhex("e680e681faf4"))  # out 0x80,al; out 0x81,al; cli; hlt
        vcpu = vm.create_vcpu(0)
        vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
        ports = []
        ex = vcpu.run()
        assert isinstance(ex, PioExit) and ex.port == 0x80
        ports.append(ex.port)
        vm.set_ioapic_line(5, True)  # an interrupt line: every vCPU must move to KVM
        for _ in range(10):
            ex = vcpu.run()
            if isinstance(ex, PioExit):
                ports.append(ex.port)
            if isinstance(ex, HaltExit):
                break
        assert ports == [0x80, 0x81]  # the first OUT was not executed a second time by KVM
        assert vm.switch_requested.is_set()
        vcpu.close()
    finally:
        vm.close()
        mem.close()


# fninit; fldpi; fld1; faddp; fstpl [rsi]; fld1; fld1; hlt     (x87 arithmetic: this KVM cannot
# emulate it, so each instruction is stepped on the soft CPU; the stack must survive every crossing)
X87_CODE = bytes.fromhex("dbe3" "d9eb" "d9e8" "dec1" "dd1e" "d9e8" "d9e8" "f4")  # fmt: skip
ONE_80 = (0x8000000000000000).to_bytes(8, "little") + (0x3FFF).to_bytes(2, "little")


@pytest.mark.kvm
@pytest.mark.soft
def test_x87_stack_crosses_between_kvm_and_the_soft_cpu() -> None:
    import math

    with code_vcpu(X87_CODE, bytes(8)) as (vcpu, mem):
        ex = vcpu.run()
        assert isinstance(ex, HaltExit), ex
        assert struct.unpack("<d", mem.read(DATA, 8))[0] == 1 + math.pi
        fpu = vcpu.get_fpu()  # type: ignore[attr-defined]
        assert (fpu.fsw >> 11) & 7 == 6  # two values pushed after the store popped the stack empty
        assert fpu.ftwx == 0b1100_0000  # physical registers 6 and 7 in use
        assert bytes(fpu.fpr[0])[:10] == ONE_80 and bytes(fpu.fpr[1])[:10] == ONE_80


def test_fpu_state_converts_to_and_from_kvm_fpu() -> None:
    from acrn.arch import FpuState
    from acrn.emu.accel import kvm_abi as abi
    from acrn.emu.accel.fallback import fpu_from_kvm, fpu_to_kvm

    st = FpuState(
        fcw=0x27F, fsw=5 << 11 | 0x41, ftw=0b1110_0000, fop=0x1EB, fip=0x8004, fdp=0x10000,
        st=[bytes([i] * 10) for i in range(8)], xmm=[bytes([0x80 + i] * 16) for i in range(16)], mxcsr=0x9FC0,
    )  # fmt: skip
    raw = abi.kvm_fpu()
    fpu_to_kvm(st, raw)
    assert bytes(raw.fpr[3]) == bytes([3] * 10) + bytes(6)
    assert (raw.fcw, raw.fsw, raw.ftwx, raw.last_opcode, raw.mxcsr) == (
        0x27F,
        5 << 11 | 0x41,
        0xE0,
        0x1EB,
        0x9FC0,
    )
    assert fpu_from_kvm(raw) == st
