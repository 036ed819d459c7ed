"""The Python API's footguns, closed: typed, early, clear errors, and a live read of a paused vCPU."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from acrn import HsmError
from acrn.device import EmulatedDevice, KernelDevice
from acrn.emu.machine import Machine
from acrn.guests import GUESTS
from acrn.hsm import Hsm, Vm
from acrn.regs import VcpuRegs


@pytest.fixture
def hsm() -> Iterator[Hsm]:
    with Hsm(EmulatedDevice(Machine(accel="soft"))) as h:
        yield h


def test_second_create_vm_on_one_hsm_is_refused_not_orphaned(hsm: Hsm) -> None:
    first = hsm.create_vm("first")
    with pytest.raises(HsmError) as e:
        hsm.create_vm("second")
    assert e.value.errno == errno.EBUSY and e.value.operation == "ACRN_IOCTL_CREATE_VM"
    assert f"VM {first.vmid}" in str(e.value) and "open another Hsm" in str(e.value)
    assert hsm.vm is first


def test_create_vm_after_destroy_is_refused_the_fd_keeps_its_destroyed_flag(hsm: Hsm) -> None:
    vm = hsm.create_vm("once")
    vm.pause()
    vm.destroy()
    assert vm.destroyed
    with pytest.raises(HsmError, match="held VM") as e:
        hsm.create_vm("twice")
    assert e.value.errno == errno.EBUSY


@pytest.mark.parametrize("gpa", [-1, -0x1000, 1 << 64, (1 << 64) - 0x1000 + 1])
def test_gpa_that_would_wrap_is_a_value_error_naming_it(hsm: Hsm, gpa: int) -> None:
    vm = hsm.create_vm("gpa")
    with pytest.raises(ValueError, match="gpa"):
        vm.map_ram(gpa, 0x1000)
    with pytest.raises(ValueError, match="user_vm_pa"):
        vm.set_memseg(0, gpa, 0x1000, 0x1000, 7)
    assert vm.memsegs == []


def test_non_positive_length_is_a_value_error(hsm: Hsm) -> None:
    vm = hsm.create_vm("len")
    with pytest.raises(ValueError, match="length"):
        vm.map_ram(0, 0)


def test_set_vcpu_regs_of_the_wrong_type_is_a_type_error(hsm: Hsm) -> None:
    vm = hsm.create_vm("type")
    with pytest.raises(TypeError, match=r"regs must be an acrn\.regs\.VcpuRegs, got str"):
        vm.set_vcpu_regs("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vcpu_id"):
        vm.set_vcpu_regs(VcpuRegs(), vcpu_id=-1)


def test_open_without_the_kernel_device_is_an_hsm_error_with_the_fix(tmp_path: object) -> None:
    with pytest.raises(HsmError) as e:
        KernelDevice(path="/nonexistent/acrn_hsm")
    assert e.value.errno == errno.ENOENT
    assert "no ACRN HSM driver here" in str(e.value) and "emulated" in str(e.value)
    with pytest.raises(HsmError):
        Hsm.open("kernel", path="/nonexistent/acrn_hsm")


def test_set_vcpu_regs_eperm_carries_the_validators_reason(hsm: Hsm) -> None:
    vm = hsm.create_vm("cr0")
    with pytest.raises(HsmError) as e:
        vm.set_vcpu_regs(VcpuRegs(cr0=0x11, cs_ar=0x9B, cs_limit=0xFFFF))
    assert e.value.errno == errno.EPERM  # what the kernel gives (ACRN's -1)
    assert "acrn.cr0.ne" in e.value.detail and "NE (bit 5)" in e.value.detail
    assert "spec" not in e.value.detail


def test_create_vm_einval_names_the_platforms_pcpu_limit(hsm: Hsm) -> None:
    with pytest.raises(HsmError) as e:
        hsm.create_vm("wide", cpu_affinity=0b11110)
    assert e.value.errno == errno.EINVAL
    assert "pCPUs [1, 2, 3, 4]" in e.value.detail and "at most 3 vCPUs" in e.value.detail


def _running(hsm: Hsm, name: str = "spin") -> Vm:
    g = GUESTS[name]
    vm = hsm.create_vm(name)
    ram = vm.map_ram(0, g.mem_size)
    ram.write(g.load_gpa, g.image())
    vm.set_vcpu_regs(g.regs())
    vm.create_ioreq_client()
    vm.start()
    return vm


@pytest.mark.soft
def test_destroying_a_running_vm_says_pause_first(hsm: Hsm) -> None:
    vm = _running(hsm)
    with pytest.raises(HsmError) as e:
        vm.destroy()
    assert e.value.errno == errno.EPERM
    assert "the VM is RUNNING" in e.value.detail and "pause() first" in e.value.detail
    vm.pause()


@pytest.mark.soft
def test_vcpu_state_is_live_when_paused_and_refused_while_running(hsm: Hsm) -> None:
    # compute: a counted loop, then an OUT to the UART that nobody serves, so the vCPU waits there.
    vm = _running(hsm, "compute")
    with pytest.raises(HsmError) as e:
        vm.vcpu_state(0)
    assert e.value.errno == errno.EBUSY and "pause() first" in str(e.value)
    runtime = hsm.device.machine.runtime  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runner = runtime.vms[vm.vmid].vcpus.get(0)
        if runner is not None and runner.counts.pio:
            break
        time.sleep(0.01)
    vm.pause()
    live = vm.vcpu_state(0)
    landed_rip = GUESTS["compute"].regs().rip
    assert live.rip != landed_rip and live.rdx != 0 and live.rsp != 0x7000  # where it stopped
    # After SET_VCPU_REGS on the paused VM, the landed state is the newer one.
    regs = GUESTS["compute"].regs()
    regs.rip = 0x8100
    vm.set_vcpu_regs(regs)
    assert vm.vcpu_state(0).rip == 0x8100
