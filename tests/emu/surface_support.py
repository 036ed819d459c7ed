"""Helpers for the running-guest surface tests (no tests here).

Two ways to drive a guest: :func:`session` is acrn-dm's whole main sequence (``VmSession``: the ioreq
loop on its own thread answers every request, a :class:`Reports` device records what the probe
guests write to port 0xE0); :class:`RawVm` is a VM whose only default client is the test itself,
so that a request can be left in flight on purpose.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from acrn import HsmError
from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.machine import Machine
from acrn.guests import GUESTS, REPORT_PORT
from acrn.hsm import Hsm, Vm
from acrn.regs.model import VcpuRegs
from acrn.user_memory import HostMemory

ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]


def machine_fixture(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A fresh machine on the accelerator named by the test's parameter (both, through ACCELS)."""
    m = Machine(accel=str(request.param))
    yield m
    m.runtime.close()


class Reports:
    """The report port of the probe guests: every dword written to port 0xE0, in order."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.values.append(value)


def session(machine: Machine, guest: str, regs: VcpuRegs | None = None) -> tuple[VmSession, Reports]:
    """A VmSession with the guest loaded and a :class:`Reports` device on port 0xE0."""
    g = GUESTS[guest]
    s = VmSession(
        name=guest[:15],
        mem_size=g.mem_size,
        device=EmulatedDevice(machine),
        accel=machine.runtime.accel_name,
    )
    try:
        s.load(g.load_gpa, g.image())
        s.set_regs(regs if regs is not None else g.regs())
        reports = Reports()
        s.bus.register_pio(REPORT_PORT, 4, reports)
    except BaseException:
        s.close()
        raise
    return s, reports


def eventfd_count(fd: int) -> int:
    """The eventfd counter without consuming it."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("eventfd-count:"):
                return int(line.split()[1], 16)
    raise AssertionError("no eventfd-count in fdinfo")


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll a condition no event reports (e.g. a slot state nobody is told about)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class RawVm:
    """A VM on its own fd whose default ioreq client is the test: requests stay until it acts."""

    def __init__(self, machine: Machine, guest: str, regs: VcpuRegs | None = None, name: str = "raw") -> None:
        self.machine = machine
        self.guest = GUESTS[guest]
        self.dev = EmulatedDevice(machine)
        self.hsm = Hsm(self.dev)
        #: Memory the VM may still have pinned (e.g. an interrupt-monitor page): freed after close.
        self.keep: list[HostMemory] = []
        try:
            self.vm: Vm = self.hsm.create_vm(name)
            ram = self.vm.map_ram(0, self.guest.mem_size)
            ram.write(self.guest.load_gpa, self.guest.image())
            self.regs = regs if regs is not None else self.guest.regs()
            self.vm.set_vcpu_regs(self.regs)
        except BaseException:
            self.hsm.close()
            raise

    @property
    def slot(self) -> object:
        return self.vm.ioreq_buffer().req_slot[0]

    def attach(self, timeout: float = 20.0) -> None:
        """ATTACH_IOREQ_CLIENT, failing the test (not hanging it) if nothing arrives in time."""
        done = threading.Event()
        errors: list[HsmError] = []

        def run() -> None:
            try:
                self.vm.attach_ioreq_client()
            except HsmError as e:
                errors.append(e)
            finally:
                done.set()

        t = threading.Thread(target=run)
        t.start()
        if not done.wait(timeout):
            self.dev.interrupt_attach()
            t.join()
            raise AssertionError("no request reached the default client")
        t.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        """acrn-dm's teardown, tolerant of the state a test left: PAUSE, DESTROY_VM, close."""
        try:
            for step in (self.vm.pause, self.vm.destroy):
                with contextlib.suppress(HsmError):
                    step()
        finally:
            self.hsm.close()
            for mem in self.keep:
                mem.close()
            self.keep.clear()


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
