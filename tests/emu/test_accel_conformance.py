"""Accelerator conformance: every accelerator loads and reads back state and reports exits alike.

Parameterized over the accelerators whose module imports and whose ``available()`` is true
(``kvm``, ``soft``); a missing one is skipped with its reason.  Guests and states come from
:mod:`tests.emu.accel_guests`; they are tiny because this machine's /dev/kvm runs ~1M guest
instructions per second (README.md, "Booting Linux").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from acrn.arch import CR0_PG, RFLAGS_FIXED1, RFLAGS_IF, CpuState
from acrn.emu.accel import availability, get_accelerator
from acrn.emu.accel.base import (
    AccelVcpu,
    AccelVm,
    EntryFailureExit,
    HaltExit,
    KickExit,
    MmioExit,
    PioExit,
    ShutdownExit,
    VmExit,
)

from . import accel_guests as g

ACCELS = [
    pytest.param("kvm", marks=pytest.mark.kvm, id="kvm"),
    pytest.param("soft", marks=pytest.mark.soft, id="soft"),
]
#: Generous: only a hung accelerator should ever hit it (no timing assertions).
JOIN_TIMEOUT = 60.0


@dataclass
class Machine:
    """A VM with 64 KiB of RAM at GPA 0 and one vCPU."""

    vm: AccelVm
    ram: g.GuestRam
    vcpu: AccelVcpu

    def load(self, code: bytes, state: CpuState) -> None:
        self.ram.write(g.CODE_GPA, code)
        self.vcpu.set_state(state)

    def run_until(self, stop: Callable[[VmExit], bool], limit: int = 32) -> list[VmExit]:
        """Run, answering every read with 0, until ``stop(exit)``; return all exits."""
        exits: list[VmExit] = []
        for _ in range(limit):
            e = self.vcpu.run()
            exits.append(e)
            if stop(e):
                return exits
            if isinstance(e, PioExit | MmioExit) and not e.is_write:
                self.vcpu.complete_read(0)
        raise AssertionError(f"no stop exit within {limit} exits: {exits}")


def _not_io(e: VmExit) -> bool:
    return not isinstance(e, PioExit | MmioExit)


@pytest.fixture(params=ACCELS)
def accel_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    ok, why = availability(name)
    if not ok:
        pytest.skip(f"accelerator {name} unavailable: {why}")
    return name


@pytest.fixture
def machine(accel_name: str) -> Iterator[Machine]:
    vm = get_accelerator(accel_name).create_vm()
    ram = g.GuestRam()
    try:
        vm.map_memory(0, g.RAM_SIZE, ram.addr)
        yield Machine(vm, ram, vm.create_vcpu(0))
    finally:
        vm.close()
        ram.close()


def _with_distinct_gprs(st: CpuState) -> CpuState:
    """Give every GPR its own value, so a swapped register in a mapping cannot go unnoticed."""
    for i, n in enumerate(("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12")):
        setattr(st, n, 0x0101010101010101 * (i + 1))
    st.r13, st.r14, st.r15 = 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x7F
    st.rsp = 0x8FF0
    st.cr2 = 0xDEAD0000
    st.rflags = RFLAGS_FIXED1 | 0x8D5  # CF PF AF ZF SF OF
    return st


# ---- state -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_state",
    [g.real_mode_state, g.protected_mode_state, g.long_mode_state],
    ids=["real", "protected", "long"],
)
def test_state_round_trip(machine: Machine, make_state: Callable[[], CpuState]) -> None:
    g.write_page_tables(machine.ram)
    st = _with_distinct_gprs(make_state())
    machine.vcpu.set_state(st)
    got = machine.vcpu.get_state()
    assert got.to_dict() == st.to_dict()


def test_state_round_trip_keeps_segment_access_rights_bits(machine: Machine) -> None:
    # AVL (bit 12) and DPL/accessed bits on data segments travel through the mapping unchanged.
    st = g.protected_mode_state()
    st.fs.ar = 0xD0F3  # G, D/B, AVL, P, DPL 3, S, type 3
    st.gs.ar = 0xC0B1  # DPL 1, type 1 (read-only, accessed)
    machine.vcpu.set_state(st)
    got = machine.vcpu.get_state()
    assert (got.fs.ar, got.gs.ar) == (0xD0F3, 0xC0B1)


# ---- port I/O ----------------------------------------------------------------------------------
def test_out_reports_port_size_and_value(machine: Machine) -> None:
    machine.load(g.OUT_IN, g.real_mode_state())
    exits = [machine.vcpu.run() for _ in range(3)]
    assert exits == [
        PioExit(0x10, 1, True, 0x41),
        PioExit(0x3F8, 2, True, 0x1234),
        PioExit(0x3F8, 4, True, 0xDEADBEEF),
    ]


def test_in_complete_read_value_lands_in_register(machine: Machine) -> None:
    machine.load(g.OUT_IN, g.real_mode_state())
    for _ in range(3):
        machine.vcpu.run()
    assert machine.vcpu.run() == PioExit(0x11, 1, False)
    machine.vcpu.complete_read(0x5A)
    assert machine.vcpu.run() == PioExit(0x3F8, 2, False)
    machine.vcpu.complete_read(0x12345678)  # wider than the access: only 2 bytes are loaded
    assert isinstance(machine.vcpu.run(), HaltExit)
    st = machine.vcpu.get_state()
    assert st.rbx & 0xFF == 0x5A
    assert st.rcx & 0xFFFF == 0x5678
    assert st.rax == 0xDEAD5678  # IN AX keeps the upper half of EAX


def test_rep_outsb_exits_once_per_element(machine: Machine) -> None:
    machine.ram.write(g.DATA_IN_GPA, b"abc")
    machine.load(g.REP_OUTSB, g.real_mode_state())
    exits = machine.run_until(_not_io)
    assert exits == [PioExit(0x3F8, 1, True, v) for v in b"abc"] + [HaltExit(False)]
    assert machine.vcpu.get_state().rcx & 0xFFFF == 0


def test_rep_insw_reads_once_per_element_into_memory(machine: Machine) -> None:
    machine.load(g.REP_INSW, g.real_mode_state())
    for value in (0x1111, 0x2222, 0x3333):
        assert machine.vcpu.run() == PioExit(0x60, 2, False)
        machine.vcpu.complete_read(value)
    assert isinstance(machine.vcpu.run(), HaltExit)
    assert machine.ram.read(g.DATA_OUT_GPA, 6) == bytes.fromhex("111122223333")


# ---- MMIO ----------------------------------------------------------------------------------------
def test_mmio_write_and_read_to_unmapped_gpa(machine: Machine) -> None:
    machine.load(g.MMIO, g.real_mode_state())
    assert machine.vcpu.run() == MmioExit(0x20010, 2, True, 0xBEEF)
    assert machine.vcpu.run() == MmioExit(0x20020, 4, False)
    machine.vcpu.complete_read(0xCAFEF00D)
    assert isinstance(machine.vcpu.run(), HaltExit)
    assert machine.vcpu.get_state().rax == 0xCAFEF00D


def test_read_only_memory_write_is_mmio_exit(accel_name: str) -> None:
    vm = get_accelerator(accel_name).create_vm()
    ram = g.GuestRam()
    try:
        ram.write(g.RO_GPA, b"\x01\x02")
        vm.map_memory(0, g.RO_GPA, ram.addr)
        vm.map_memory(g.RO_GPA, g.RAM_SIZE - g.RO_GPA, ram.addr + g.RO_GPA, writable=False)
        vcpu = vm.create_vcpu(0)
        ram.write(g.CODE_GPA, g.RO_WRITE)
        vcpu.set_state(g.real_mode_state())
        assert vcpu.run() == MmioExit(g.RO_GPA, 2, True, 0x1234)
        assert isinstance(vcpu.run(), HaltExit)  # reads of the read-only page are plain RAM
        assert vcpu.get_state().rbx & 0xFFFF == 0x0201
        assert ram.read(g.RO_GPA, 2) == b"\x01\x02"
    finally:
        vm.close()
        ram.close()


def test_protected_mode_guest_reads_memory_and_exits(machine: Machine) -> None:
    machine.ram.write(g.DATA_IN_GPA, b"abcd")
    machine.load(g.PM_OUT, g.protected_mode_state())
    assert machine.vcpu.run() == PioExit(0x10, 4, True, 0x64636261)
    assert machine.vcpu.run() == MmioExit(0x100000, 4, True, 0xCAFEF00D)
    assert isinstance(machine.vcpu.run(), HaltExit)


def test_long_mode_guest_runs_through_page_tables(machine: Machine) -> None:
    g.write_page_tables(machine.ram)
    machine.load(g.LM_OUT, g.long_mode_state())
    assert machine.vcpu.run() == MmioExit(0x200000, 8, True, 0x1122334455667788)
    assert machine.vcpu.run() == PioExit(0x10, 4, True, 0x55667788)
    assert machine.vcpu.run() == MmioExit(0x200008, 8, False)
    machine.vcpu.complete_read(0x0102030405060708)
    assert isinstance(machine.vcpu.run(), HaltExit)
    assert machine.vcpu.get_state().rbx == 0x0102030405060708


# ---- HLT, shutdown, entry failure -----------------------------------------------------------------
def test_hlt_with_if_clear_is_halt_exit_interrupts_disabled(machine: Machine) -> None:
    machine.load(g.CLI_HLT, g.real_mode_state())
    assert machine.vcpu.run() == HaltExit(False)
    assert machine.vcpu.get_state().rip == g.CODE_GPA + 2  # HLT is complete


def test_hlt_with_if_set_is_halt_exit_interrupts_enabled(machine: Machine) -> None:
    machine.load(g.STI_HLT, g.real_mode_state())
    assert machine.vcpu.run() == HaltExit(True)
    assert machine.vcpu.get_state().rflags & RFLAGS_IF


def test_triple_fault_is_shutdown_exit(machine: Machine) -> None:
    # ud2 with an empty IDT: #UD cannot be delivered -> #GP -> #DF -> shutdown.
    machine.load(g.PM_UD, g.protected_mode_state())
    assert isinstance(machine.vcpu.run(), ShutdownExit)


def test_invalid_state_is_entry_failure_exit(machine: Machine) -> None:
    # CR0.PG without CR0.PE is architecturally invalid.  KVM refuses it at KVM_SET_SREGS; the
    # accelerator reports that as the next run's EntryFailureExit, as a VM entry would.  (This
    # machine's KVM does not check segment access rights at entry: a not-present CS still runs.)
    st = g.real_mode_state()
    st.cr0 |= CR0_PG
    machine.ram.write(g.CODE_GPA, g.CLI_HLT)
    machine.vcpu.set_state(st)
    assert isinstance(machine.vcpu.run(), EntryFailureExit)


def test_valid_state_after_entry_failure_runs(machine: Machine) -> None:
    st = g.real_mode_state()
    st.cr0 |= CR0_PG
    machine.ram.write(g.CODE_GPA, g.CLI_HLT)
    machine.vcpu.set_state(st)
    assert isinstance(machine.vcpu.run(), EntryFailureExit)
    machine.vcpu.set_state(g.real_mode_state())
    assert machine.vcpu.run() == HaltExit(False)


# ---- kick ------------------------------------------------------------------------------------------
def test_kick_from_another_thread_ends_spinning_guest(machine: Machine) -> None:
    machine.load(g.SPIN, g.real_mode_state())
    result: list[VmExit] = []
    entering = threading.Event()

    def vcpu_thread() -> None:
        entering.set()
        result.append(machine.vcpu.run())

    t = threading.Thread(target=vcpu_thread)
    t.start()
    assert entering.wait(JOIN_TIMEOUT)
    machine.vcpu.kick()
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive(), "kick did not end the spinning guest"
    assert result == [KickExit()]


def test_kick_before_run_makes_next_run_return_kick(machine: Machine) -> None:
    machine.load(g.CLI_HLT, g.real_mode_state())
    machine.vcpu.kick()
    assert machine.vcpu.run() == KickExit()
    assert machine.vcpu.get_state().rip == g.CODE_GPA  # the guest did not run


def test_kick_is_consumed_by_one_kick_exit(machine: Machine) -> None:
    machine.load(g.CLI_HLT, g.real_mode_state())
    machine.vcpu.kick()
    assert machine.vcpu.run() == KickExit()
    assert machine.vcpu.run() == HaltExit(False)


# ---- resources --------------------------------------------------------------------------------------
def test_close_leaves_no_fd_behind(accel_name: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    ram = g.GuestRam()
    vm = get_accelerator(accel_name).create_vm()
    vm.map_memory(0, g.RAM_SIZE, ram.addr)
    vcpu = vm.create_vcpu(0)
    ram.write(g.CODE_GPA, g.CLI_HLT)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == HaltExit(False)
    vm.close()
    ram.close()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_close_is_idempotent(accel_name: str) -> None:
    vm = get_accelerator(accel_name).create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu.close()
    vcpu.close()
    vm.close()
    vm.close()
