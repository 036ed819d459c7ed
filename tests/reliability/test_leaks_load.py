"""Leaks and load (issue 7 part 3): many VM lifecycles and many live VMs in one process, closing an
fd under a running VM, and concurrent ioctls from many threads on their own fds.

Open fds, threads and RSS are measured before and after; limits are generous (machines are noisy)
and the figures are printed (``-s`` shows them).  CI runs reduced counts; the full ones (1,000
cycles, 100 live VMs) are marked ``slow`` (``python -m pytest tests/reliability -m slow -s``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from acrn import HsmError, uapi
from acrn.device import EmulatedDevice
from acrn.emu.hv import VmState
from acrn.emu.machine import Machine
from acrn.emu.platform import SEVERITY_RTVM, SEVERITY_SERVICE_VM, SEVERITY_STANDARD_VM, Platform, VmConfig
from acrn.guests import GUESTS
from acrn.hsm import Hsm

ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]


@dataclass
class Usage:
    fds: int
    threads: int
    rss_kib: int

    @staticmethod
    def now() -> Usage:
        rss = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return Usage(len(os.listdir("/proc/self/fd")), threading.active_count(), rss)


def many_slots_platform(n: int) -> Platform:
    """A board with ``n`` dynamic post-launched slots (the default has 12), each on pCPU 1."""
    static = uapi.GUEST_FLAG_STATIC_VM
    configs = [VmConfig("ACRN_Service_VM", "service", static, 0b11, SEVERITY_SERVICE_VM)]
    configs += [VmConfig("", "post", 0, 0b10, SEVERITY_STANDARD_VM) for _ in range(n)]
    configs += [VmConfig("RT", "post", static, 0b10, SEVERITY_RTVM)]
    return Platform(pcpu_num=2, max_vm_num=n + 2, vm_configs=configs)


@pytest.fixture(params=ACCELS)
def accel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def machine(accel: str) -> Iterator[Machine]:
    m = Machine(many_slots_platform(100), accel=accel)
    yield m
    m.runtime.close()


def spin_vm(machine: Machine, name: str = "") -> Hsm:
    """A started VM whose vCPU 0 spins in the guest (2 MiB RAM, the ``spin`` guest)."""
    g = GUESTS["spin"]
    hsm = Hsm(EmulatedDevice(machine))
    vm = hsm.create_vm(name)
    ram = vm.map_ram(0, g.mem_size)
    ram.write(g.load_gpa, g.image())
    vm.set_vcpu_regs(g.regs())
    vm.start()
    return hsm


def settle(before: Usage) -> Usage:
    """Usage after the joined threads are gone (daemon threads end shortly after the join)."""
    import time

    deadline = time.monotonic() + 5
    now = Usage.now()
    while now.threads > before.threads and time.monotonic() < deadline:
        time.sleep(0.01)
        now = Usage.now()
    return now


def assert_released(machine: Machine) -> None:
    assert machine.hv.vms() == []
    assert machine.hsm.pins.count() == 0
    assert machine.runtime.vms == {}
    assert machine.memory._starts == []


def lifecycle_cycles(machine: Machine, n: int) -> None:
    before = Usage.now()
    for _ in range(n):
        hsm = spin_vm(machine)
        assert hsm.vm is not None
        hsm.vm.pause()
        hsm.vm.destroy()
        hsm.close()
    after = settle(before)
    print(f"\n{n} create/start/pause/destroy cycles: {before} -> {after}")
    assert_released(machine)
    assert after.fds <= before.fds
    assert after.threads <= before.threads
    assert after.rss_kib - before.rss_kib < 64 * 1024, "RSS grew by more than 64 MiB"


def live_vms(machine: Machine, n: int) -> None:
    before = Usage.now()
    hsms = [spin_vm(machine) for _ in range(n)]
    during = Usage.now()
    running = [vm for vm in machine.hv.vms() if vm.state == VmState.RUNNING]
    assert len(running) == n
    for hsm in hsms:
        assert hsm.vm is not None
        hsm.vm.pause()
        hsm.vm.destroy()
        hsm.close()
    after = settle(before)
    print(f"\n{n} VMs alive at once: {before} -> {during} -> {after}")
    assert during.threads >= before.threads + n  # one vCPU thread each
    assert_released(machine)
    assert after.fds <= before.fds and after.threads <= before.threads
    # Guest RAM is unmapped on destroy and a soft VM's engine memory is handed back to the system
    # (about 1 MiB each, which the C heap would otherwise keep): RSS returns to where it was.
    # Kept by the heap without the hand-back: 18 MiB after 20 soft VMs, 85 MiB after 100.
    bound_kib = 8 * 1024 + n * 256
    assert after.rss_kib - before.rss_kib < bound_kib, f"RSS grew by more than {bound_kib} KiB"


def test_create_start_pause_destroy_cycles_leak_nothing(machine: Machine) -> None:
    lifecycle_cycles(machine, 50)


def test_twenty_vms_alive_at_once_then_released(machine: Machine) -> None:
    live_vms(machine, 20)


@pytest.mark.slow
def test_thousand_lifecycle_cycles_leak_nothing(machine: Machine) -> None:
    lifecycle_cycles(machine, 1000)


@pytest.mark.slow
def test_hundred_vms_alive_at_once_then_released(machine: Machine) -> None:
    live_vms(machine, 100)


def test_close_of_fd_with_running_vm_releases_everything(machine: Machine) -> None:
    before = Usage.now()
    hsm = spin_vm(machine)
    hsm.close()  # no PAUSE: ACRN would leak the VM (docs/differences.md); the emulator must not
    after = settle(before)
    assert_released(machine)
    assert after.fds <= before.fds and after.threads <= before.threads


def test_close_of_fd_with_running_rtvm_releases_everything(machine: Machine) -> None:
    # PAUSE does not stop a higher-severity VM (hcall_pause_vm), so the release's destroy fails.
    before = Usage.now()
    hsm = spin_vm(machine, "RT")
    assert hsm.vm is not None
    hsm.vm.pause()
    vm = machine.hv.vm(hsm.vm.vmid)
    assert vm is not None and vm.state == VmState.RUNNING
    with pytest.raises(HsmError):
        hsm.vm.destroy()
    hsm.close()
    after = settle(before)
    assert_released(machine)
    assert after.fds <= before.fds and after.threads <= before.threads


def test_concurrent_ioctls_on_own_fds_do_not_interfere(accel: str) -> None:
    machine = Machine(many_slots_platform(16), accel=accel)
    errors: list[BaseException] = []
    rounds = 5
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                hsm = Hsm(EmulatedDevice(machine))
                vm = hsm.create_vm(f"t{i}")
                vm.map_ram(0, 1 << 20)
                vm.set_vcpu_regs(GUESTS["spin"].regs())
                vm.set_irqline(4, 0)
                vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_CNT)
                with pytest.raises(HsmError):
                    vm.reset()  # CREATED, not PAUSED: -1
                vm.pause()
                vm.destroy()
                hsm.close()
        except BaseException as e:
            errors.append(e)

    before = Usage.now()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert_released(machine)
        after = settle(before)
        assert after.fds <= before.fds
    finally:
        machine.runtime.close()
