"""Faults from the guest (issue 7 part 2): each ends or continues as ``acrn.dm.vmm`` documents,
and nothing is leaked afterwards (threads, fds, pins, hypervisor and runtime VMs).

Every test runs on KVM and on the soft accelerator where available.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.vmm import FAULT_REASONS, STATUS_FAULT, STATUS_TIMEOUT, VmSession
from acrn.emu.hv import VmState
from acrn.emu.machine import Machine
from acrn.guests import GUESTS, Guest

ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]


@pytest.fixture(params=ACCELS)
def machine(request: pytest.FixtureRequest, no_leaks: None) -> Iterator[Machine]:
    m = Machine(accel=str(request.param))
    yield m
    m.runtime.close()
    assert m.hv.vms() == [] and m.hsm.pins.count() == 0 and m.runtime.vms == {}


def session(
    machine: Machine, guest: Guest, *, fast: bool = False, image: bytes | None = None, **gprs: int
) -> VmSession:
    s = VmSession(
        mem_size=guest.mem_size,
        device=EmulatedDevice(machine),
        accel=machine.runtime.accel_name,
        fast_path=fast,
    )
    s.load(guest.load_gpa, image if image is not None else guest.image())
    s.set_regs(guest.regs(**gprs))
    return s


class PortLog:
    """A bus device recording every write."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append(value)


def test_triple_fault_stops_the_vm_and_a_reset_runs_it_again(machine: Machine) -> None:
    with session(machine, GUESTS["triple_fault"]) as s:
        r = s.run(timeout=30)
        assert r.reason in FAULT_REASONS and r.status == STATUS_FAULT, r.summary()
        if machine.runtime.accel_name == "kvm":
            assert r.reason == "shutdown"
        # Documented: the vCPU is parked until RESET; acrn-dm's reset sequence then reruns it.
        s.vm.reset()
        hello = GUESTS["hello_protected"]
        s.load(hello.load_gpa, hello.image())
        s.set_regs(hello.regs())
        s.output.clear()
        r2 = s.run(timeout=30)
    assert r2.reason == "halt" and r2.output.decode() == hello.expected_output


def test_entry_failure_is_reported_with_the_refused_state(machine: Machine) -> None:
    # ACRN accepts CR0.PG without CR0.PE at SET_VCPU_REGS (it checks CR0 only at first entry,
    # init_guest_state); the processor then refuses VM entry.
    g = GUESTS["hello_protected"]
    with session(machine, g) as s:
        regs = g.regs()
        regs.cr0 = (regs.cr0 & ~1) | 0x80000000
        s.set_regs(regs)
        r = s.run(timeout=30)
    assert r.reason == "entry-failure" and r.status == STATUS_FAULT, r.summary()
    assert r.report is not None and r.report.state is not None
    assert r.output == b""


def test_runaway_guest_times_out_and_is_paused(machine: Machine) -> None:
    with session(machine, GUESTS["spin"]) as s:
        r = s.run(timeout=0.3)
        assert r.reason == "timeout" and r.status == STATUS_TIMEOUT
        vm = machine.hv.vm(s.vm.vmid)
        assert vm is not None and vm.state == VmState.PAUSED
        assert not machine.runtime.vms[s.vm.vmid].vcpus[0].in_guest


@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_guest_hammering_io_gets_every_exit_handled(machine: Machine, fast: bool) -> None:
    n = 2000
    g = GUESTS["io_loop"]
    with session(machine, g, fast=fast, rcx=n, rdx=0x80) as s:
        log = PortLog()
        s.bus.register_pio(0x80, 1, log)
        r = s.run(timeout=120)
    assert r.reason == "halt", r.summary()
    assert r.exits["pio"] == n
    # io_loop writes the low byte of its down-counter: n, n-1, ..., 1.
    assert log.writes == [i & 0xFF for i in range(n, 0, -1)]


# mov eax, [0x400000]; out 0x80, al; mov [0x400004], eax; cli; hlt  (RAM is 2 MiB: 4 MiB is unmapped)
UNMAPPED_CODE = (
    b"\xa1" + struct.pack("<I", 0x400000) + b"\xe6\x80" + b"\xa3" + struct.pack("<I", 0x400004) + b"\xfa\xf4"
)


@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_guest_touching_unmapped_memory_reads_all_ones_and_continues(machine: Machine, fast: bool) -> None:
    g = GUESTS["io_loop"]  # its 32-bit GDT and register state; the code at `start` is replaced
    image = bytearray(g.image())
    start = g.symbols()["start"] - g.load_gpa
    image[start : start + len(UNMAPPED_CODE)] = UNMAPPED_CODE
    with session(machine, g, fast=fast, image=bytes(image)) as s:
        log = PortLog()
        s.bus.register_pio(0x80, 1, log)
        r = s.run(timeout=30)
    assert r.reason == "halt", r.summary()
    # An unclaimed MMIO read is all-ones (acrn-dm's vm_loop); the write is dropped.
    assert log.writes == [0xFF]
    assert r.exits["mmio"] == 2
    assert r.states[0]["rax"] & 0xFFFFFFFF == 0xFFFFFFFF
