"""A minimal VMM for the built-in guests: land the register state the way ACRN does, run one vCPU
on an accelerator, and dispatch port I/O to a bus with a 16550 and the debug-exit port."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from acrn.arch import CpuState
from acrn.dm.bus import IoBus
from acrn.dm.devices import DebugExit, Uart16550
from acrn.emu.accel import availability, get_accelerator
from acrn.emu.accel.base import Accelerator, AccelVcpu, MmioExit, PioExit, VmExit
from acrn.guests import Guest
from acrn.regs.model import VcpuRegs

#: Both accelerators, each with the mark that makes conftest skip it where it cannot run.
ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]


@dataclass
class GuestRun:
    """What one run of a guest produced."""

    output: str
    exit: VmExit
    state: CpuState
    exits: int
    debugexit_status: int | None
    #: Port writes to ports no device claims, in order: (port, size, value).
    other_writes: list[tuple[int, int, int]] = field(default_factory=list)


@contextmanager
def loaded_vcpu(accel: Accelerator, guest: Guest, regs: VcpuRegs | None = None) -> Iterator[AccelVcpu]:
    """A VM with the guest's RAM mapped at GPA 0 and vCPU 0 in the state ACRN lands for ``regs``."""
    from acrn.rules import land_vcpu_regs

    regs = regs if regs is not None else guest.regs()
    mem = mmap.mmap(-1, guest.mem_size)
    window = (ctypes.c_char * guest.mem_size).from_buffer(mem)
    vm = accel.create_vm()
    try:
        mem[:] = bytes(guest.memory())
        vm.map_memory(0, guest.mem_size, ctypes.addressof(window))
        vcpu = vm.create_vcpu(0)
        vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
        yield vcpu
    finally:
        vm.close()
        del window
        mem.close()


def run_guest(
    accel: Accelerator,
    guest: Guest,
    regs: VcpuRegs | None = None,
    *,
    max_exits: int = 20000,
    before_run: Callable[[AccelVcpu], None] | None = None,
) -> GuestRun:
    """Run ``guest`` to its first non-I/O exit (HLT, shutdown, kick...) or the debug-exit write."""
    with loaded_vcpu(accel, guest, regs) as vcpu:
        out = bytearray()
        bus = IoBus()
        Uart16550(output=out.extend).attach(bus)
        dbg = DebugExit()
        dbg.attach(bus)
        others: list[tuple[int, int, int]] = []
        if before_run is not None:
            before_run(vcpu)
        exits = 0
        while True:
            ex = vcpu.run()
            exits += 1
            if isinstance(ex, PioExit):
                if ex.is_write:
                    if not bus.try_pio_write(ex.port, ex.size, ex.value):
                        others.append((ex.port, ex.size, ex.value))
                    if dbg.status is not None:
                        break
                else:
                    vcpu.complete_read(bus.pio_read(ex.port, ex.size))
            elif isinstance(ex, MmioExit):
                if ex.is_write:
                    bus.mmio_write(ex.address, ex.size, ex.value)
                else:
                    vcpu.complete_read(bus.mmio_read(ex.address, ex.size))
            else:
                break
            if exits >= max_exits:
                raise AssertionError(f"{guest.name}: still running after {exits} exits; output {out!r}")
        return GuestRun(out.decode(errors="replace"), ex, vcpu.get_state(), exits, dbg.status, others)


@pytest.fixture
def accel(request: pytest.FixtureRequest) -> Iterator[Accelerator]:
    """The accelerator named by the test's ``accel_name`` parameter (skipped if unavailable)."""
    name: str = request.param
    ok, why = availability(name)
    if not ok:
        pytest.skip(f"{name} accelerator unavailable: {why}")
    yield get_accelerator(name)
