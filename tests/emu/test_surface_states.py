"""Every state rule of docs/ioctls.md that involves a running VM, checked on a guest that is running.

One ``spin`` guest per accelerator runs for the whole table; each row is one ioctl with the errno
ACRN gives while the VM is RUNNING (a bare hypervisor -1 is EPERM).  The passthrough and vdev
ioctls are bookkeeping in the emulator (no physical device can be handed over), so the rows below
also show what the records look like through the hypervisor's state.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable, Iterator

import pytest

from acrn import HsmError, uapi
from acrn.emu.hv import VmState
from acrn.emu.hv.hypervisor import MCS9900_DEV_ID
from acrn.emu.machine import Machine
from acrn.user_memory import HostMemory

from .surface_support import ACCELS, RawVm, wait_until

EPERM, EINVAL, EEXIST = errno.EPERM, errno.EINVAL, errno.EEXIST
USB_BDF, VIRT_BDF = 0x00A0, 0x0018  # a physical function of the default platform, and its guest BDF


def pcidev() -> uapi.acrn_pcidev:
    return uapi.acrn_pcidev(type=uapi.ACRN_PTDEV_QUIRK_ASSIGN, virt_bdf=VIRT_BDF, phys_bdf=USB_BDF)


def mmiodev() -> uapi.acrn_mmiodev:
    d = uapi.acrn_mmiodev()
    ctypes.memmove(d.name, b"TPM", 3)
    d.res[0].user_vm_pa, d.res[0].service_vm_pa, d.res[0].size = 0xFED40000, 0xFED40000, 0x5000
    return d


def vdev() -> uapi.acrn_vdev:
    d = uapi.acrn_vdev(slot=0x0020)
    d.id.value = MCS9900_DEV_ID
    return d


def ptdev(vm: object, reset: bool) -> None:
    fn = vm.reset_ptdev_intr if reset else vm.set_ptdev_intr  # type: ignore[attr-defined]
    fn(VIRT_BDF, USB_BDF, 5, 5, False)


def in_guest(machine: Machine, vmid: int) -> bool:
    vmrt = machine.runtime.vms.get(vmid)
    return bool(vmrt and 0 in vmrt.vcpus and vmrt.vcpus[0].in_guest)


@pytest.fixture(scope="module", params=ACCELS)
def running(request: pytest.FixtureRequest) -> Iterator[tuple[Machine, RawVm]]:
    m = Machine(accel=str(request.param))
    r = RawVm(m, "spin", name="running")
    r.vm.create_ioreq_client()
    r.vm.start()
    wait_until(lambda: in_guest(m, r.vm.vmid), "vCPU 0 in the guest")
    yield m, r
    r.close()
    m.runtime.close()


Call = Callable[[RawVm], object]

#: (rule, call, errno while RUNNING): docs/ioctls.md per ioctl and HC_STATE_RULES.
REFUSED_WHILE_RUNNING: list[tuple[str, Call, int]] = [
    ("start_vm_needs_created", lambda r: r.vm.start(), EPERM),
    ("reset_vm_needs_paused", lambda r: r.vm.reset(), EPERM),
    ("destroy_vm_needs_paused", lambda r: r.vm.destroy(), EPERM),
    ("set_vcpu_regs_refused_while_running", lambda r: r.vm.set_vcpu_regs(r.regs), EPERM),
    ("create_ioreq_client_twice_is_eexist", lambda r: r.vm.create_ioreq_client(), EEXIST),
    ("assign_pcidev_needs_created", lambda r: r.vm.assign_pcidev(pcidev()), EINVAL),
    ("deassign_pcidev_needs_created_or_paused", lambda r: r.vm.deassign_pcidev(pcidev()), EINVAL),
    ("assign_mmiodev_needs_created", lambda r: r.vm.assign_mmiodev(mmiodev()), EINVAL),
    ("deassign_mmiodev_needs_created_or_paused", lambda r: r.vm.deassign_mmiodev(mmiodev()), EINVAL),
    ("create_vdev_needs_created", lambda r: r.vm.create_vdev(vdev()), EINVAL),
    ("destroy_vdev_needs_created_or_paused", lambda r: r.vm.destroy_vdev(vdev()), EINVAL),
    ("set_ptdev_intr_needs_created", lambda r: ptdev(r.vm, reset=False), EPERM),
    ("reset_ptdev_intr_needs_created_or_paused", lambda r: ptdev(r.vm, reset=True), EPERM),
    ("pm_cx_cnt_refused_while_running", lambda r: r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_CNT), EPERM),
    (
        "pm_cx_data_refused_while_running",
        lambda r: r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_DATA, state_num=1),
        EPERM,
    ),
]


@pytest.mark.parametrize(
    ("rule", "call", "err"), REFUSED_WHILE_RUNNING, ids=[r[0] for r in REFUSED_WHILE_RUNNING]
)
def test_refused_while_running(running: tuple[Machine, RawVm], rule: str, call: Call, err: int) -> None:
    m, r = running
    with pytest.raises(HsmError) as e:
        call(r)
    assert e.value.errno == err
    vm = m.hv.vm(r.vm.vmid)
    assert vm is not None and vm.state == VmState.RUNNING  # nothing changed
    assert vm.pcidevs == {} and vm.mmiodevs == [] and vm.vdevs == {} and vm.ptdev_intx == []


def test_inject_msi_allowed_while_running(running: tuple[Machine, RawVm]) -> None:
    m, r = running
    r.vm.inject_msi(0xFEE00000, 0x30)
    assert (0xFEE00000, 0x30) in m.hv.vm(r.vm.vmid).msis  # type: ignore[union-attr]


def test_set_irqline_allowed_while_running(running: tuple[Machine, RawVm]) -> None:
    m, r = running
    r.vm.set_irqline(4, uapi.GSI_SET_HIGH)
    assert m.hv.vm(r.vm.vmid).ioapic_lines[4] == 1  # type: ignore[union-attr]
    r.vm.set_irqline(4, uapi.GSI_SET_LOW)
    assert m.hv.vm(r.vm.vmid).ioapic_lines[4] == 0  # type: ignore[union-attr]


def test_vm_intr_monitor_allowed_while_running(running: tuple[Machine, RawVm]) -> None:
    _, r = running
    page = HostMemory(4096)
    r.keep.append(page)  # pinned until the VM is destroyed
    words = (ctypes.c_uint64 * 2).from_address(page.address)
    words[0] = uapi.INTR_CMD_GET_DATA | (48 << 32)
    r.vm.vm_intr_monitor(page)
    assert words[0] >> 32 == 0  # no passthrough interrupt: no (irq, count) pair written


def test_notify_request_finish_allowed_while_running(running: tuple[Machine, RawVm]) -> None:
    _, r = running
    r.vm.notify_request_finish(0)  # no request in flight: COMPLETE, and the hypervisor ignores it
    wait_until(lambda: r.vm.ioreq_buffer().req_slot[0].processed != uapi.ACRN_IOREQ_STATE_PENDING, "slot")


def test_set_and_unset_mmio_memseg_allowed_while_running(running: tuple[Machine, RawVm]) -> None:
    m, r = running
    bar = HostMemory(4096)  # stands for a device's MMIO: a Service VM physical range
    try:
        r.vm.map_mmio(0xE0000000, bar.address, 0x1000)
        regions = m.hv.vm(r.vm.vmid).memory_regions  # type: ignore[union-attr]
        assert any(reg.gpa == 0xE0000000 and reg.hpa == bar.address for reg in regions)
        r.vm.unset_memseg(uapi.ACRN_MEMMAP_MMIO, 0xE0000000, bar.address, 0x1000)
        regions = m.hv.vm(r.vm.vmid).memory_regions  # type: ignore[union-attr]
        assert not any(reg.gpa == 0xE0000000 for reg in regions)
    finally:
        bar.close()


def test_pm_get_cpu_state_targets_the_vm_in_the_command_word(running: tuple[Machine, RawVm]) -> None:
    # From the running VM's fd, a query for another, CREATED VM succeeds (pmcmd_ioctl).
    m, r = running
    other = RawVm(m, "spin", name="pm-target")
    try:
        count = r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_CNT, vmid=other.vm.vmid)
        assert count == len(m.platform.cx_states)
    finally:
        other.close()


# ---------------------------------------------------------------- passthrough bookkeeping over a run
@pytest.fixture(params=ACCELS)
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = Machine(accel=str(request.param))
    yield m
    m.runtime.close()


def test_assignments_made_while_created_survive_the_run_and_go_when_paused(machine: Machine) -> None:
    r = RawVm(machine, "spin", name="passthru")
    try:
        r.vm.assign_pcidev(pcidev())
        r.vm.set_ptdev_intr(VIRT_BDF, USB_BDF, 5, 5, False)
        r.vm.assign_mmiodev(mmiodev())
        r.vm.create_vdev(vdev())
        r.vm.create_ioreq_client()
        r.vm.start()
        wait_until(lambda: in_guest(machine, r.vm.vmid), "vCPU 0 in the guest")
        vm = machine.hv.vm(r.vm.vmid)
        assert vm is not None
        assert vm.pcidevs[VIRT_BDF].phys_bdf == USB_BDF
        assert [(e.virt_pin, e.phys_pin) for e in vm.ptdev_intx] == [(5, 5)]
        assert len(vm.mmiodevs) == 1 and 0x0020 in vm.vdevs
        r.vm.pause()
        r.vm.reset_ptdev_intr(VIRT_BDF, USB_BDF, 5, 5, False)
        r.vm.deassign_pcidev(pcidev())
        r.vm.deassign_mmiodev(mmiodev())
        r.vm.destroy_vdev(vdev())
        assert vm.pcidevs == {} and vm.ptdev_intx == [] and vm.mmiodevs == [] and vm.vdevs == {}
        # SET_PTDEV_INTR needs CREATED, RESET accepts PAUSED: a second reset finds no device (-1).
        with pytest.raises(HsmError) as e:
            r.vm.reset_ptdev_intr(VIRT_BDF, USB_BDF, 5, 5, False)
        assert e.value.errno == EPERM
    finally:
        r.close()


def test_pm_data_comes_from_the_platform_configuration(machine: Machine) -> None:
    r = RawVm(machine, "spin", name="pm")
    try:
        r.vm.create_ioreq_client()
        r.vm.start()
        wait_until(lambda: in_guest(machine, r.vm.vmid), "vCPU 0 in the guest")
        r.vm.pause()  # PM queries need CREATED or PAUSED
        cx = machine.platform.cx_states
        assert r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_CNT) == len(cx)
        for n, state in enumerate(cx, start=1):
            data = r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_DATA, state_num=n)
            assert bytes(data) == state.to_bytes()  # type: ignore[arg-type]
        for bad in (0, len(cx) + 1):  # index must be 1..cx_cnt
            with pytest.raises(HsmError) as e:
                r.vm.pm_get_cpu_state(uapi.ACRN_PMCMD_GET_CX_DATA, state_num=bad)
            assert e.value.errno == EPERM
        for px in (uapi.ACRN_PMCMD_GET_PX_CNT, uapi.ACRN_PMCMD_GET_PX_DATA):  # no vHWP, no Px passthrough
            with pytest.raises(HsmError) as e:
                r.vm.pm_get_cpu_state(px)
            assert e.value.errno == EPERM
    finally:
        r.close()
