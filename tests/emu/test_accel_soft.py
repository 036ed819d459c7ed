"""Soft-accelerator (unicorn) specifics: hidden segment state, the engine thread, its limits.

The behaviour shared with KVM is in test_accel_conformance.py; these tests cover what only the
soft accelerator has (the CPU-context layout, the I/O rendezvous, abandoning a pending exit, the
documented exception/#UD reports).  Guests are hand-assembled bytes with their source beside.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrn.arch import (
    CR0_PE,
    EFER_LMA,
    RFLAGS_FIXED1,
    RFLAGS_IF,
    SEGMENT_NAMES,
    CpuState,
    DescriptorTable,
    Segment,
)
from acrn.emu.accel.base import (
    EmulationFailureExit,
    EntryFailureExit,
    HaltExit,
    KickExit,
    MmioExit,
    PioExit,
    ShutdownExit,
)

from . import accel_guests as g

pytestmark = pytest.mark.soft
JOIN_TIMEOUT = 60.0  # hang guard only, never a timing assertion

# .code16: mov (0x0000),%al ; out %al,$0x10 ; hlt
READ_DS_0 = bytes.fromhex("a00000e610f4")
# .code32: xor %ecx,%ecx ; div %ecx      (#DE)
DIV_ZERO = bytes.fromhex("31c9f7f1")
# .code16: in $0x11,%al ; hlt
IN_HLT = bytes.fromhex("e411f4")
# .code16: mov $0x7,%al ; out %al,$0x12 ; hlt
OUT7 = bytes.fromhex("b007e612f4")
# .code16: inc %bx ; jmp .-1   (spins, counting in BX)
COUNT_SPIN = bytes.fromhex("43ebfd")


@dataclass
class Soft:
    vm: object
    ram: g.GuestRam
    vcpu: object


@pytest.fixture
def soft() -> Iterator[Soft]:
    from acrn.emu.accel.soft import SoftAccelerator

    vm = SoftAccelerator().create_vm()
    ram = g.GuestRam()
    try:
        vm.map_memory(0, g.RAM_SIZE, ram.addr)
        g.write_page_tables(ram)
        yield Soft(vm, ram, vm.create_vcpu(0))
    finally:
        vm.close()
        ram.close()


def _vcpu(s: Soft):  # type: ignore[no-untyped-def]
    return s.vcpu


def test_available_names_unicorn_2_1() -> None:
    from acrn.emu.accel.soft import ACCELERATOR

    ok, why = ACCELERATOR.available()
    assert ok, why
    assert why.startswith("unicorn 2.1.")
    assert ACCELERATOR.name == "soft"


def test_cpu_context_layout_is_verified() -> None:
    import unicorn

    from acrn.emu.accel import soft_layout

    assert soft_layout.verify(unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)) == ""


# ---- state --------------------------------------------------------------------------------------

_u64 = st.integers(0, 2**64 - 1)
_u32 = st.integers(0, 2**32 - 1)
_u16 = st.integers(0, 0xFFFF)
# Access rights as VMX defines them (bits 11:8 reserved, so not generated); P set for the
# code/stack segments the mode needs, anything for the rest (the shadow keeps them exact).
_ar = st.integers(0, 0x1FFFF).map(lambda a: a & ~0xF00)
_flags = st.sets(st.sampled_from([0, 2, 4, 6, 7, 8, 9, 10, 11])).map(
    lambda bits: sum(1 << b for b in bits) | RFLAGS_FIXED1
)


@st.composite
def _states(draw: st.DrawFn, base: CpuState) -> CpuState:
    s = base.copy()
    for name in ("ds", "es", "fs", "gs", "ldtr", "tr"):
        setattr(s, name, Segment(draw(_u16), draw(_u32), draw(_u32), draw(_ar)))
    s.gdtr = DescriptorTable(draw(_u32), draw(_u16))
    s.idtr = DescriptorTable(draw(_u32), draw(_u16))
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11"):
        setattr(s, name, draw(_u64))
    s.r12, s.r13, s.r14, s.r15 = draw(_u64), draw(_u64), draw(_u64), draw(_u64)
    s.rflags = draw(_flags)
    s.rip = draw(_u32)
    s.cr2 = draw(_u64)
    return s


@pytest.mark.parametrize(
    "base",
    [g.real_mode_state(), g.protected_mode_state(), g.long_mode_state()],
    ids=["real", "protected", "long"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_valid_states_round_trip(soft: Soft, base: CpuState, data: st.DataObject) -> None:
    state = data.draw(_states(base))
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    assert vcpu.get_state().to_dict() == state.to_dict()


def test_hidden_segment_base_is_used_not_selector(soft: Soft) -> None:
    # DS selector 0 with base 0x1100: real mode would compute base 0; the hidden base wins.
    soft.ram.write(g.DATA_IN_GPA, b"\x5a")
    state = g.real_mode_state()
    state.ds = Segment(0, g.DATA_IN_GPA, 0xFFFF, 0x93)
    soft.ram.write(g.CODE_GPA, READ_DS_0)
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    assert vcpu.run() == PioExit(0x10, 1, True, 0x5A)


def test_reset_vector_state_runs_from_hidden_cs_base(soft: Soft) -> None:
    # ACRN's reset landing: CS selector 0xF000 with base 0xFFFF0000 is not selector<<4.
    # Here base 0 + RIP 0x1000 with selector 0xF000 (selector<<4 would be 0xF0000: no RAM).
    soft.ram.write(g.CODE_GPA, OUT7)
    state = g.real_mode_state()
    state.cs = Segment(0xF000, 0, 0xFFFF, 0x9F)
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    assert vcpu.run() == PioExit(0x12, 1, True, 7)
    assert vcpu.get_state().cs == Segment(0xF000, 0, 0xFFFF, 0x9F)


def test_guest_segment_reload_reads_back_from_descriptor(soft: Soft) -> None:
    # .code32: mov $0x18,%ax ; mov %ax,%ds ; hlt   with GDT[3] = flat data 0x00CF93000000FFFF
    soft.ram.write(
        0x500, bytes(8) * 2 + bytes.fromhex("ffff0000009bcf00") + bytes.fromhex("ffff00000093cf00")
    )
    soft.ram.write(g.CODE_GPA, bytes.fromhex("66b818008ed8f4"))
    state = g.protected_mode_state()
    state.ds = Segment(0x18, 0x1234, 0xFFF, 0x10093)  # unusable bit set by the host
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    assert vcpu.get_state().ds.ar == 0x10093  # exact while the guest keeps the segment
    assert isinstance(vcpu.run(), HaltExit)
    ds = vcpu.get_state().ds
    assert (ds.selector, ds.base, ds.limit, ds.ar & 0xF0FF) == (0x18, 0, 0xFFFFFFFF, 0xC093)


def test_efer_lma_is_exact_outside_long_mode(soft: Soft) -> None:
    vcpu = _vcpu(soft)
    vcpu.set_state(g.long_mode_state())
    vcpu.set_state(g.protected_mode_state())  # leaving long mode must clear LMA
    got = vcpu.get_state()
    assert got.efer & EFER_LMA == 0
    assert got.mode == "protected"


def test_inconsistent_efer_lma_is_entry_failure(soft: Soft) -> None:
    state = g.protected_mode_state()
    state.efer = EFER_LMA  # LMA without LME and CR0.PG
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    exit_ = vcpu.run()
    assert isinstance(exit_, EntryFailureExit)
    assert "EFER.LMA" in exit_.detail


# ---- exits --------------------------------------------------------------------------------------


def test_io_exit_rip_is_at_the_instruction(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, IN_HLT)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == PioExit(0x11, 1, False)
    assert vcpu.get_state().rip == g.CODE_GPA  # completes (and advances) on the next run
    vcpu.complete_read(0x1AB)  # masked to the access size
    assert isinstance(vcpu.run(), HaltExit)
    got = vcpu.get_state()
    assert (got.rax & 0xFF, got.rip) == (0xAB, g.CODE_GPA + 3)


def test_mmio_exit_rip_is_at_the_instruction(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, g.LM_OUT)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.long_mode_state())
    assert vcpu.run() == MmioExit(0x200000, 8, True, 0x1122334455667788)
    assert vcpu.get_state().rip == g.CODE_GPA + 10  # the mov to memory, after movabs


def test_hlt_reports_rflags_if_and_rip_after_hlt(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, g.STI_HLT)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(True)
    got = vcpu.get_state()
    assert got.rflags & RFLAGS_IF and got.rip == g.CODE_GPA + 2


def test_exception_is_shutdown_naming_the_vector(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, DIV_ZERO)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.protected_mode_state())
    exit_ = vcpu.run()
    assert isinstance(exit_, ShutdownExit)
    assert exit_.detail == f"exception #DE at rip={g.CODE_GPA + 2:#x}"


def test_ud2_is_shutdown_not_emulation_failure(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, g.PM_UD)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.protected_mode_state())
    assert vcpu.run() == ShutdownExit(f"exception #UD at rip={g.CODE_GPA:#x}")


def test_invalid_opcode_is_emulation_failure_with_bytes(soft: Soft) -> None:
    # 0x0f 0x04 is undefined on x86-64 (and not a UD opcode): unicorn raises #UD.
    soft.ram.write(g.CODE_GPA, bytes.fromhex("0f04"))
    vcpu = _vcpu(soft)
    vcpu.set_state(g.long_mode_state())
    exit_ = vcpu.run()
    assert isinstance(exit_, EmulationFailureExit)
    assert exit_.suberror == 1 and exit_.insn_bytes[:2] == b"\x0f\x04"


def test_fetch_from_unmapped_memory_is_emulation_failure(soft: Soft) -> None:
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state(rip=0xF000))  # inside RAM, then jump out of it
    soft.ram.write(0xF000, bytes.fromhex("ea00000020"))  # ljmp $0x2000,$0 -> 0x20000 (MMIO)
    exit_ = vcpu.run()
    assert isinstance(exit_, EmulationFailureExit)
    assert "0x0" in exit_.detail or "non-RAM" in exit_.detail


def test_map_memory_rejects_unaligned_and_overlapping(soft: Soft) -> None:
    with pytest.raises(ValueError, match="aligned"):
        soft.vm.map_memory(0x10800, 0x1000, soft.ram.addr)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="overlaps"):
        soft.vm.map_memory(0x1000, 0x1000, soft.ram.addr)  # type: ignore[attr-defined]


def test_unmap_then_access_is_mmio(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, READ_DS_0)
    soft.vm.unmap_memory(0, g.RAM_SIZE)  # type: ignore[attr-defined]
    soft.vm.map_memory(0, 0x2000, soft.ram.addr)  # type: ignore[attr-defined]
    state = g.real_mode_state()
    state.ds = Segment(0, 0x3000, 0xFFFF, 0x93)
    vcpu = _vcpu(soft)
    vcpu.set_state(state)
    assert vcpu.run() == MmioExit(0x3000, 1, False)


# ---- kick, abandon, close ------------------------------------------------------------------------


def _wait_in_guest(vcpu: object) -> None:
    cv = vcpu._cv  # type: ignore[attr-defined]
    with cv:
        assert cv.wait_for(lambda: vcpu._in_guest, timeout=JOIN_TIMEOUT)  # type: ignore[attr-defined]


def test_kick_stops_a_spinning_guest(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, COUNT_SPIN)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state())
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    _wait_in_guest(vcpu)  # the engine is inside emu_start (or just entering it)
    vcpu.kick()
    t.join(JOIN_TIMEOUT)
    assert result == [KickExit()]
    vcpu.kick()  # kick while not running: the next run returns at once
    assert vcpu.run() == KickExit()


def test_set_state_abandons_a_pending_read(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, IN_HLT)
    soft.ram.write(0x2000, OUT7)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == PioExit(0x11, 1, False)
    vcpu.set_state(g.real_mode_state(rip=0x2000))
    assert vcpu.run() == PioExit(0x12, 1, True, 7)
    assert isinstance(vcpu.run(), HaltExit)


def test_close_releases_engine_thread(no_leaks: None) -> None:
    from acrn.emu.accel.soft import SoftAccelerator

    before = threading.active_count()
    vm = SoftAccelerator().create_vm()
    ram = g.GuestRam()
    vm.map_memory(0, g.RAM_SIZE, ram.addr)
    vcpu = vm.create_vcpu(0)
    ram.write(g.CODE_GPA, IN_HLT)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == PioExit(0x11, 1, False)  # engine thread parked inside the callback
    assert threading.active_count() == before + 1
    vm.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="closed"):
        vcpu.run()
    ram.close()


def test_all_segments_survive_round_trip_in_every_mode(soft: Soft) -> None:
    vcpu = _vcpu(soft)
    for make in (g.real_mode_state, g.protected_mode_state, g.long_mode_state):
        state = make()
        vcpu.set_state(state)
        got = vcpu.get_state()
        for name in SEGMENT_NAMES:
            assert got.segment(name) == state.segment(name), name
        assert bool(got.cr0 & CR0_PE) == bool(state.cr0 & CR0_PE)


# ---- synchronous I/O handler (base.SyncIoVcpu) --------------------------------------------------

# .code16: 1: out %al,$0x10 ; jmp 1b
OUT_SPIN = bytes.fromhex("e610ebfc")
# .code16: out %al,$0x10 ; out %al,$0x11 ; hlt     (both OUTs in one translated block)
TWO_OUTS = bytes.fromhex("e610e611f4")


def _exit(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> PioExit | MmioExit:
    """The exit an I/O handler's arguments describe (for comparing with the accesses expected)."""
    return MmioExit(address, size, is_write, value) if is_mmio else PioExit(address, size, is_write, value)


class Recorder:
    """An I/O handler that records each access and answers reads from a table (else 0)."""

    def __init__(self, reads: dict[int, int] | None = None) -> None:
        self.seen: list[PioExit | MmioExit] = []
        self.threads: set[int] = set()
        self.reads = reads or {}

    def __call__(self, is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        ex = _exit(is_mmio, address, size, is_write, value)
        self.seen.append(ex)
        self.threads.add(threading.get_ident())
        where = ex.port if isinstance(ex, PioExit) else ex.address
        return 0 if ex.is_write else self.reads.get(where, 0)


def test_sync_io_is_advertised() -> None:
    from acrn.emu.accel.base import sync_io_vcpu
    from acrn.emu.accel.soft import SoftVcpu

    assert SoftVcpu.sync_io is True
    assert sync_io_vcpu(object()) is None  # type: ignore[arg-type]


def test_io_handler_gets_every_access_on_the_run_thread_and_run_returns_only_halt(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, g.OUT_IN)
    vcpu = _vcpu(soft)
    rec = Recorder({0x11: 0x1AB, 0x3F8: 0x5678})
    vcpu.set_io_handler(rec)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(False)
    assert rec.seen == [
        PioExit(0x10, 1, True, 0x41),
        PioExit(0x3F8, 2, True, 0x1234),
        PioExit(0x3F8, 4, True, 0xDEADBEEF),
        PioExit(0x11, 1, False),
        PioExit(0x3F8, 2, False),
    ]
    assert rec.threads == {threading.get_ident()}
    got = vcpu.get_state()
    assert (got.rbx & 0xFF, got.rcx & 0xFFFF) == (0xAB, 0x5678)  # read values masked to the size
    assert vcpu._thread is None  # type: ignore[attr-defined]  # no engine thread in this mode


def test_io_handler_mmio_read_value_lands_in_the_register(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, g.MMIO)  # 0x20000 is beyond the guest's RAM: MMIO
    vcpu = _vcpu(soft)
    rec = Recorder({0x20020: 0xCAFEF00D})
    vcpu.set_io_handler(rec)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(False)
    assert rec.seen == [MmioExit(0x20010, 2, True, 0xBEEF), MmioExit(0x20020, 4, False)]
    assert vcpu.get_state().rax & 0xFFFF_FFFF == 0xCAFEF00D


def test_io_handler_returning_none_abandons_the_block_and_run_returns_kick(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, TWO_OUTS)
    vcpu = _vcpu(soft)
    seen: list[int] = []

    def parked(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        ex = _exit(is_mmio, address, size, is_write, value)
        assert isinstance(ex, PioExit)
        seen.append(ex.port)
        return None

    vcpu.set_io_handler(parked)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == KickExit()
    assert seen == [0x10]  # the rest of the block ran with its I/O suppressed
    rec = Recorder()
    vcpu.set_io_handler(rec)
    vcpu.set_state(g.real_mode_state())  # reloaded, as the runtime does at RESET
    assert vcpu.run() == HaltExit(False)
    assert [e.port for e in rec.seen if isinstance(e, PioExit)] == [0x10, 0x11]


def test_kick_inside_io_handler_completes_the_access_then_returns_kick(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, OUT_SPIN)
    vcpu = _vcpu(soft)
    calls: list[PioExit | MmioExit] = []

    def kicking(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        calls.append(_exit(is_mmio, address, size, is_write, value))
        vcpu.kick()
        return 0

    vcpu.set_io_handler(kicking)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == KickExit()
    assert calls == [PioExit(0x10, 1, True, 0)]
    assert vcpu.get_state().rip == g.CODE_GPA  # stopped at the next block: the OUT again


def test_kick_while_io_handler_blocks_returns_at_once_and_run_returns_kick(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, OUT_SPIN)
    vcpu = _vcpu(soft)
    entered, release = threading.Event(), threading.Event()

    def blocking(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        entered.set()
        assert release.wait(JOIN_TIMEOUT)
        return 0

    vcpu.set_io_handler(blocking)
    vcpu.set_state(g.real_mode_state())
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    assert entered.wait(JOIN_TIMEOUT)
    kicker = threading.Thread(target=vcpu.kick)
    kicker.start()
    kicker.join(JOIN_TIMEOUT)
    assert not kicker.is_alive()  # kick does not wait for a handler that blocks
    release.set()
    t.join(JOIN_TIMEOUT)
    assert result == [KickExit()]


def test_kick_stops_a_spinning_guest_with_io_handler(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, COUNT_SPIN)
    vcpu = _vcpu(soft)
    vcpu.set_io_handler(Recorder())
    vcpu.set_state(g.real_mode_state())
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    _wait_in_guest(vcpu)
    vcpu.kick()
    t.join(JOIN_TIMEOUT)
    assert result == [KickExit()]


def test_io_handler_exception_propagates_from_run_and_the_vcpu_stays_usable(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, TWO_OUTS)
    vcpu = _vcpu(soft)

    def broken(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        raise RuntimeError("device model bug")

    vcpu.set_io_handler(broken)
    vcpu.set_state(g.real_mode_state())
    with pytest.raises(RuntimeError, match="device model bug"):
        vcpu.run()
    assert not vcpu._in_guest  # type: ignore[attr-defined]
    vcpu.set_io_handler(Recorder())
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(False)


def test_set_io_handler_none_returns_exits_from_run_again(soft: Soft) -> None:
    soft.ram.write(g.CODE_GPA, TWO_OUTS)
    vcpu = _vcpu(soft)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == PioExit(0x10, 1, True, 0)  # engine thread waits in the callback
    rec = Recorder()
    vcpu.set_io_handler(rec)  # abandons the outstanding exit, ends the engine thread
    assert vcpu._thread is None  # type: ignore[attr-defined]
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(False) and len(rec.seen) == 2
    vcpu.set_io_handler(None)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == PioExit(0x10, 1, True, 0)


@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_runtime_handles_soft_io_on_the_vcpu_thread(fast: bool) -> None:
    from acrn.device import EmulatedDevice
    from acrn.dm.vmm import VmSession
    from acrn.emu.machine import Machine
    from acrn.guests import GUESTS

    guest = GUESTS["io_loop"]
    machine = Machine(accel="soft")
    try:
        with VmSession(
            mem_size=guest.mem_size, device=EmulatedDevice(machine), accel="soft", fast_path=fast
        ) as s:
            s.load(guest.load_gpa, guest.image())
            s.set_regs(guest.regs(rcx=50))
            result = s.run(timeout=JOIN_TIMEOUT)
            avcpu = machine.runtime.vms[s.vm.vmid].vcpus[0].avcpu
            assert avcpu._io_handler is not None  # type: ignore[attr-defined]
            assert avcpu._thread is None  # type: ignore[attr-defined]
        assert result.reason == "halt", result.summary()
        assert result.exits["pio"] == 50
    finally:
        machine.runtime.close()


def test_fpu_state_round_trips_and_computes_on_the_soft_cpu() -> None:
    """ST(i) is stack-relative in FpuState and physical in unicorn: TOP must be honoured both ways."""
    import struct as _struct

    from acrn.arch import FpuState
    from acrn.emu.accel.soft import SoftAccelerator

    def f80(x: float) -> bytes:
        # 80-bit extended from a positive normal double: explicit integer bit, 15-bit exponent.
        bits = _struct.unpack("<Q", _struct.pack("<d", x))[0]
        exp = ((bits >> 52) & 0x7FF) - 1023 + 16383
        mant = (1 << 63) | ((bits & ((1 << 52) - 1)) << 11)
        return mant.to_bytes(8, "little") + exp.to_bytes(2, "little")

    vm = SoftAccelerator().create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        state = FpuState(
            fcw=0x37F, fsw=5 << 11, ftw=(1 << 5) | (1 << 6),  # ST0 = physical 5, ST1 = physical 6
            st=[f80(2.0), f80(0.5)] + [bytes(10)] * 6,
            xmm=[bytes([i] * 16) for i in range(16)], mxcsr=0x1F80,
        )  # fmt: skip
        vcpu.set_fpu_state(state)  # type: ignore[attr-defined]
        back = vcpu.get_fpu_state()  # type: ignore[attr-defined]
        assert back.top == 5 and back.ftw == state.ftw
        assert back.st[:2] == state.st[:2] and back.xmm == state.xmm and back.mxcsr == 0x1F80
    finally:
        vm.close()


def test_msrs_round_trip_on_the_soft_cpu() -> None:
    from acrn.emu.accel.fallback import CARRIED_MSRS
    from acrn.emu.accel.soft import SoftAccelerator

    vm = SoftAccelerator().create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        values = {index: 0xFFFF_8000_0000_1000 + n * 8 for n, index in enumerate(CARRIED_MSRS)}
        values[0x174] = 0x10  # SYSENTER_CS: a selector
        values[0x277] = 0x0007_0406_0007_0406  # PAT: its reset value
        values[0xC0000103] = 7  # TSC_AUX: 32 bits
        vcpu.set_msrs(values)  # type: ignore[attr-defined]
        assert vcpu.get_msrs(list(CARRIED_MSRS)) == values  # type: ignore[attr-defined]
    finally:
        vm.close()
