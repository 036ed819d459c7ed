"""The SYSCALL repair (acrn.emu.accel.syscall_repair) against a fake vCPU and guest memory: when the trap
goes in, how a broken SYSCALL is told from a genuine #PF, what the repaired state is (SDM SYSCALL),
and how a genuine fault goes on with the handler's original first instruction."""

from __future__ import annotations

import ctypes
import struct

import pytest

from acrn.arch import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, CpuState, DescriptorTable, Segment
from acrn.emu.accel import syscall_repair as sr
from acrn.emu.accel.syscall_repair import Outcome, SlotMemory, SyscallRepair, parse_syscall_user

RAM = 0x20000
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
IDT = 0x4000
HANDLER = 0x5000
LSTAR = 0x6000
STAR = 0x0023_0010_0000_0000
KSTACK = 0x8000  # the frame is pushed just below this
USER_RSP = 0x9F00
NOP3 = bytes.fromhex("0f 1f 00")


class FakeMemory:
    """Guest-physical RAM in a bytearray (the repair's GuestPhysical)."""

    def __init__(self) -> None:
        self.ram = bytearray(RAM)

    def read(self, gpa: int, size: int) -> bytes | None:
        return bytes(self.ram[gpa : gpa + size]) if gpa + size <= RAM else None

    def write(self, gpa: int, data: bytes) -> bool:
        if gpa + len(data) > RAM:
            return False
        self.ram[gpa : gpa + len(data)] = data
        return True


class FakeVcpu:
    def __init__(self, state: CpuState, msrs: dict[int, int]) -> None:
        self.state = state
        self.msrs = msrs
        self.sets = 0

    def get_state(self) -> CpuState:
        return self.state.copy()

    def set_state(self, state: CpuState) -> None:
        self.state = state.copy()
        self.sets += 1

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        return {i: self.msrs[i] for i in indices if i in self.msrs}


def long_mode_state() -> CpuState:
    st = CpuState()
    st.cr0 = CR0_PG | CR0_PE
    st.cr4 = CR4_PAE
    st.efer = EFER_LMA | EFER_LME
    st.cr3 = PML4
    st.cs = Segment(0x10, 0, 0xFFFFFFFF, 0xA09B)
    st.ss = Segment(0x18, 0, 0xFFFFFFFF, 0xC093)
    st.idtr = DescriptorTable(IDT, 32 * 16 - 1)
    return st


def make_guest(first: bytes = NOP3, gate_present: bool = True) -> FakeMemory:
    """Identity-mapped low 1 GiB (2 MiB pages), an IDT whose vector 14 points at HANDLER."""
    mem = FakeMemory()
    struct.pack_into("<Q", mem.ram, PML4, PDPT | 3)
    struct.pack_into("<Q", mem.ram, PDPT, PD | 3)
    for i in range(512):
        struct.pack_into("<Q", mem.ram, PD + 8 * i, (i << 21) | 0x83)
    attrs = 0x8E00 if gate_present else 0x0E00
    struct.pack_into("<HHHHII", mem.ram, IDT + 14 * 16, HANDLER & 0xFFFF, 0x10, attrs, HANDLER >> 16, 0, 0)
    mem.ram[HANDLER : HANDLER + len(first)] = first
    return mem


def installed(first: bytes = NOP3) -> tuple[FakeMemory, FakeVcpu, SyscallRepair]:
    mem = make_guest(first)
    vcpu = FakeVcpu(long_mode_state(), {sr.MSR_LSTAR: LSTAR, sr.MSR_STAR: STAR})
    repair = SyscallRepair(mem)
    repair.look(vcpu)
    assert repair.installed
    return mem, vcpu, repair


def trapped(vcpu: FakeVcpu, mem: FakeMemory, *, rip: int, cs: int, rflags: int = 0x10002) -> CpuState:
    """The state at the trap: the CPU delivered a #PF (error code 5) with this frame onto KSTACK."""
    frame = struct.pack("<6Q", 5, rip, cs, rflags, USER_RSP, 0x2B)
    rsp = KSTACK - len(frame)
    mem.ram[rsp:KSTACK] = frame
    st = vcpu.get_state()
    st.rip, st.rsp = HANDLER, rsp
    st.rcx, st.r11 = 0x401005, 0x202  # what the broken SYSCALL left (return RIP, old RFLAGS)
    vcpu.state = st
    return st.copy()


# -- installation -------------------------------------------------------------------------------
def test_no_trap_until_lstar_is_set() -> None:
    mem = make_guest()
    vcpu = FakeVcpu(long_mode_state(), {sr.MSR_LSTAR: 0})
    repair = SyscallRepair(mem)
    repair.look(vcpu)
    assert not repair.installed and mem.ram[HANDLER] == 0x0F
    vcpu.msrs[sr.MSR_LSTAR] = LSTAR
    repair.look(vcpu)
    assert repair.installed and mem.ram[HANDLER] == sr.INT3
    assert repair.original.startswith(NOP3)
    assert repair.owns(HANDLER) and not repair.owns(HANDLER + 1)


@pytest.mark.parametrize(
    "change",
    [
        "paging off",
        "not long mode",
        "idt too short",
        "gate not present",
        "handler already int3",
        "handler unmapped",
    ],
)
def test_no_trap_while_the_guest_is_not_ready(change: str) -> None:
    mem = make_guest(b"\xcc" if change == "handler already int3" else NOP3, change != "gate not present")
    st = long_mode_state()
    if change == "paging off":
        st.cr0 &= ~CR0_PG
    elif change == "not long mode":
        st.efer = 0
    elif change == "idt too short":
        st.idtr = DescriptorTable(IDT, 14 * 16)
    elif change == "handler unmapped":
        struct.pack_into("<Q", mem.ram, PD, 0)  # GVA 0-2 MiB not present
    before = bytes(mem.ram)
    repair = SyscallRepair(mem)
    repair.look(FakeVcpu(st, {sr.MSR_LSTAR: LSTAR}))
    assert not repair.installed
    assert bytes(mem.ram) == before


def test_an_overwritten_trap_is_dropped_and_installed_again_from_the_new_bytes() -> None:
    mem, vcpu, repair = installed()
    clac = bytes.fromhex("0f 01 ca")
    mem.ram[HANDLER : HANDLER + 3] = clac  # e.g. alternatives wrote clac over the site
    repair.poll(vcpu)  # notices, and looks again at once (the interval has not started)
    assert repair.installed and mem.ram[HANDLER] == sr.INT3
    assert repair.original.startswith(clac)


def test_a_kept_trap_costs_no_vcpu_access() -> None:
    _mem, vcpu, repair = installed()

    class Untouchable(FakeVcpu):
        def get_state(self) -> CpuState:
            raise AssertionError("poll read the state although the trap is in place")

        def get_msrs(self, indices: list[int]) -> dict[int, int]:
            raise AssertionError("poll read MSRs although the trap is in place")

    repair.poll(Untouchable(vcpu.state, {}))
    assert repair.installed


def test_looks_before_runs_are_rate_limited() -> None:
    mem = make_guest()
    calls = []

    class Counting(FakeVcpu):
        def get_msrs(self, indices: list[int]) -> dict[int, int]:
            calls.append(indices)
            return {}

    repair = SyscallRepair(mem)
    vcpu = Counting(long_mode_state(), {})
    for _ in range(100):
        repair.poll(vcpu)
    assert len(calls) == 1  # one look, then none within INSTALL_INTERVAL
    repair.look(vcpu)  # an explicit look (emulation failure) is never limited
    assert len(calls) == 2


def test_forget_takes_the_trap_out() -> None:
    mem, _vcpu, repair = installed()
    repair.forget()
    assert not repair.installed and bytes(mem.ram[HANDLER : HANDLER + 3]) == NOP3


def test_forget_leaves_memory_that_was_reloaded_alone() -> None:
    mem, _vcpu, repair = installed()
    mem.ram[HANDLER] = 0x55  # a new image is there now
    repair.forget()
    assert mem.ram[HANDLER] == 0x55 and not repair.installed


# -- telling and repairing ----------------------------------------------------------------------
def test_a_user_mode_fault_at_lstar_is_completed_as_syscall() -> None:
    mem, vcpu, repair = installed()
    trapped(vcpu, mem, rip=LSTAR, cs=0x33, rflags=0x10002)
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.REPAIRED
    st = vcpu.state
    assert st.rip == LSTAR
    assert st.cs == Segment(0x10, 0, 0xFFFFFFFF, sr.SYSCALL_CS_AR)  # STAR[47:32] & ~3
    assert st.ss == Segment(0x18, 0, 0xFFFFFFFF, sr.SYSCALL_SS_AR)  # + 8
    assert st.rsp == USER_RSP  # SYSCALL does not switch stacks
    assert st.rflags == 0x2  # the saved (masked) RFLAGS without RF
    assert (st.rcx, st.r11) == (0x401005, 0x202)  # left as the CPU set them
    assert repair.repaired == 1 and mem.ram[HANDLER] == sr.INT3  # the trap stays


def test_star_rpl_bits_are_ignored_for_the_kernel_selectors() -> None:
    mem, vcpu, repair = installed()
    vcpu.msrs[sr.MSR_STAR] = 0x0023_0013_0000_0000
    trapped(vcpu, mem, rip=LSTAR, cs=0x33)
    repair.handle(vcpu, vcpu.get_state())
    assert (vcpu.state.cs.selector, vcpu.state.ss.selector) == (0x10, 0x18)


@pytest.mark.parametrize(
    ("rip", "cs"),
    [(0x401000, 0x33), (LSTAR, 0x10), (LSTAR + 1, 0x33)],
    ids=["user fault elsewhere", "kernel fault at lstar", "user fault next to lstar"],
)
def test_a_genuine_page_fault_goes_on_into_the_handler(rip: int, cs: int) -> None:
    mem, vcpu, repair = installed()
    st = trapped(vcpu, mem, rip=rip, cs=cs)
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.SKIPPED
    assert vcpu.state.rip == HANDLER + 3  # past the handler's 3-byte NOP
    assert vcpu.state.cs == st.cs and vcpu.state.rsp == st.rsp  # the exception stays delivered
    assert repair.repaired == 0 and repair.passed == 1


def test_an_unreadable_frame_is_a_genuine_fault() -> None:
    _mem, vcpu, repair = installed()
    st = vcpu.get_state()
    st.rip, st.rsp = HANDLER, 0x7FFF_0000_0000  # not mapped
    vcpu.state = st
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.SKIPPED


@pytest.mark.parametrize("nop", sr.NOPS, ids=lambda b: b.hex())
def test_every_nop_form_is_skipped_whole(nop: bytes) -> None:
    mem, vcpu, repair = installed(nop + b"\xfc")  # then cld
    trapped(vcpu, mem, rip=0x401000, cs=0x33)
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.SKIPPED
    assert vcpu.state.rip == HANDLER + len(nop)


@pytest.mark.parametrize(("insn", "ac"), [("0f01ca", 0), ("0f01cb", 1)], ids=["clac", "stac"])
def test_clac_and_stac_are_applied(insn: str, ac: int) -> None:
    mem, vcpu, repair = installed(bytes.fromhex(insn))
    trapped(vcpu, mem, rip=0x401000, cs=0x33, rflags=0x202)
    vcpu.state.rflags = 0x2 | (0 if ac else sr.RFLAGS_AC)
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.FLAG
    assert vcpu.state.rip == HANDLER + 3
    assert bool(vcpu.state.rflags & sr.RFLAGS_AC) == bool(ac)


def test_any_other_first_instruction_asks_for_a_step_with_the_original_bytes() -> None:
    push14 = bytes.fromhex("6a 0e")
    mem, vcpu, repair = installed(push14)
    st = trapped(vcpu, mem, rip=0x401000, cs=0x33)
    assert repair.handle(vcpu, vcpu.get_state()) is Outcome.STEP
    assert vcpu.state.rip == st.rip  # nothing done: the caller steps it
    repair.restore()
    assert bytes(mem.ram[HANDLER : HANDLER + 2]) == push14
    repair.rearm()
    assert mem.ram[HANDLER] == sr.INT3


# -- memory and the probe's parser ---------------------------------------------------------------
def test_slot_memory_reads_and_writes_process_memory_by_gpa() -> None:
    a = ctypes.create_string_buffer(0x2000)
    b = ctypes.create_string_buffer(b"\x11" * 0x1000, 0x1000)
    m = SlotMemory()
    m.map(0, 0x2000, ctypes.addressof(a), True)
    m.map(0x100000, 0x1000, ctypes.addressof(b), False)
    assert m.write(0x10, b"\xcc") and a.raw[0x10] == 0xCC
    assert m.read(0x10, 1) == b"\xcc"
    assert m.read(0x100000, 2) == b"\x11\x11"
    assert not m.write(0x100000, b"\x00")  # read-only slot
    assert m.read(0x1FFF, 2) is None  # crosses the end of a slot
    m.unmap(0, 0x1000)  # not a mapping as made: ignored
    assert m.read(0, 1) is not None
    m.unmap(0, 0x2000)
    assert m.read(0, 1) is None


def test_parse_syscall_user_output() -> None:
    text = "#BP\nUSER\nSYSCALL\nCS=0x10\nRCX=0x8103\nFAULT\nVECTOR=0x0E\nCS=0x33\nnoise\n"
    assert parse_syscall_user(text) == [
        {"kind": 2},
        {"kind": 0, "CS": 0x10, "RCX": 0x8103},
        {"kind": 1, "VECTOR": 14, "CS": 0x33},
    ]


def test_the_probe_says_not_needed_where_kvm_is_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    from acrn.emu.accel.kvm import KvmAccelerator

    monkeypatch.setattr(KvmAccelerator, "available", staticmethod(lambda: (False, "no /dev/kvm here")))
    result = sr.probe.__wrapped__()
    assert not result.needed and "no /dev/kvm here" in result.output
