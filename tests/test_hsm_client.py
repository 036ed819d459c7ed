"""acrn.hsm: the typed client speaks the exact ABI and reports failures as HsmError(errno, ioctl)."""

from __future__ import annotations

import errno

import pytest

from acrn import HsmError, uapi
from acrn.device import EmulatedDevice
from acrn.emu.hv import VmState
from acrn.emu.machine import Machine
from acrn.hsm import Hsm, open_vm
from acrn.regs import VcpuRegs
from acrn.user_memory import HostMemory, IoreqPage


@pytest.fixture
def machine() -> Machine:
    return Machine()


def test_create_vm_returns_vmid_and_vcpu_num_from_the_write_back(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("client-a")
        hv_vm = machine.hv.vm(vm.vmid)
        assert hv_vm is not None and hv_vm.name == "client-a"
        assert vm.vcpu_num == hv_vm.vcpu_num > 0
        assert vm.vmid >= 1


def test_create_vm_with_affinity_gives_one_vcpu_per_pcpu(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        assert hsm.create_vm("two", cpu_affinity=0b0110).vcpu_num == 2


def test_name_longer_than_15_bytes_is_refused_before_the_ioctl(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm, pytest.raises(ValueError, match="at most 15"):
        hsm.create_vm("x" * 16)


def test_errors_carry_errno_and_ioctl_name(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("errs")
        with pytest.raises(HsmError) as e:
            vm.reset()  # RESET needs PAUSED: hypervisor -1 -> EPERM (hcall_reset_vm)
        assert e.value.errno == errno.EPERM
        assert e.value.operation == "ACRN_IOCTL_RESET_VM"
        assert "ACRN_IOCTL_RESET_VM: EPERM" in str(e.value)


def test_raw_ioctl_before_create_vm_is_einval(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm, pytest.raises(HsmError) as e:
        hsm.ioctl(uapi.ACRN_IOCTL_START_VM)
    assert e.value.errno == errno.EINVAL


def test_set_vcpu_regs_lands_and_vcpu_state_reads_it_back(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("regs")
        vm.set_vcpu_regs(
            VcpuRegs(cr0=0x31, cs_sel=0x10, cs_ar=0xC09B, cs_limit=0xFFFFFFFF, rip=0x1000, rbx=7)
        )
        st = vm.vcpu_state(0)
        assert (st.rip, st.rbx, st.cs.selector, st.mode) == (0x1000, 7, 0x10, "protected")
        assert st.ds.limit == 0xFFFFFFFF and st.ds.ar == 0xC093  # set_vcpu_regs


def test_set_vcpu_regs_vcpu_id_argument_overrides_without_mutating(machine: Machine) -> None:
    regs = VcpuRegs(cr0=0x30, rip=0x10, cs_ar=0x9F, cs_limit=0xFFFF)
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("ap")
        vm.set_vcpu_regs(regs, vcpu_id=1)
        assert regs.vcpu_id == 0
        assert vm.vcpu_state(1).rip == 0x10


def test_map_ram_maps_page_aligned_memory_into_the_ept(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("ram")
        ram = vm.map_ram(0x100000, 3 * 4096 + 1)
        assert ram.size == 4 * 4096 and ram.address % 4096 == 0
        regions = machine.hv.vm(vm.vmid).memory_regions  # type: ignore[union-attr]
        assert [(r.gpa, r.hpa, r.size) for r in regions] == [(0x100000, ram.address, ram.size)]
        assert [(s.user_vm_pa, s.length) for s in vm.memsegs] == [(0x100000, ram.size)]


def test_close_releases_the_vm_and_its_memory(machine: Machine) -> None:
    hsm = Hsm(EmulatedDevice(machine))
    vm = hsm.create_vm("closing")
    ram = vm.map_ram(0, 4096)
    vmid = vm.vmid
    vm.pause()
    hsm.close()
    assert machine.hv.vm(vmid) is None
    assert ram.closed and vm.ioreq_page.closed


def test_caller_provided_ioreq_page_is_not_closed_by_the_client(machine: Machine) -> None:
    page = IoreqPage()
    with Hsm(EmulatedDevice(machine)) as hsm:
        hsm.create_vm("own-page", ioreq_page=page)
        assert machine.hv.vm(hsm.vm.vmid).ioreq_buffer == page.address  # type: ignore[union-attr]
    assert not page.closed
    page.close()


def test_lifecycle_through_the_client(machine: Machine) -> None:
    hsm, vm = open_vm("life", kind="emulated", machine=machine)
    vm.create_ioreq_client()
    state = lambda: machine.hv.vm(vm.vmid).state  # type: ignore[union-attr]  # noqa: E731
    assert state() == VmState.CREATED
    vm.pause()
    assert state() == VmState.PAUSED
    vm.reset()
    assert state() == VmState.CREATED
    vm.pause()
    vm.destroy()
    assert machine.hv.vm(vm.vmid) is None
    hsm.close()


def test_irqline_and_msi_and_pm_queries(machine: Machine) -> None:
    with Hsm(EmulatedDevice(machine)) as hsm:
        vm = hsm.create_vm("irq")
        vm.set_irqline(4, uapi.GSI_RAISING_PULSE)
        vm.inject_msi(0xFEE00000, 0x30)
        with pytest.raises(HsmError) as e:
            vm.inject_msi(0x12345000, 0x30)  # not an MSI address: hypervisor -1
        assert e.value.errno == errno.EPERM
        cx = vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_CNT)
        assert isinstance(cx, int) and cx == len(machine.platform.cx_states)
        data = vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_DATA, state_num=1)
        assert isinstance(data, uapi.acrn_cstate_data)
        assert data.latency == machine.platform.cx_states[0].latency


def test_host_memory_bounds_are_checked() -> None:
    with HostMemory(4096) as mem:
        mem.write(4090, b"123456")
        assert mem.read(4090, 6) == b"123456"
        with pytest.raises(ValueError):
            mem.write(4095, b"ab")
        with pytest.raises(ValueError):
            mem.read(-1, 1)
