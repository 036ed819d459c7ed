"""INJECT_MSI, SET_IRQLINE, VM_INTR_MONITOR, PM_GET_CPU_STATE and the passthrough/vdev ioctls
(``acrn_dev_ioctl``, ``pmcmd_ioctl``)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from acrn import uapi

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)


def test_inject_msi_passes_a_kernel_copy(env: Env) -> None:
    vmid = env.create()
    msi = uapi.acrn_msi_entry(0xFEE00000, 0x30)
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_INJECT_MSI, msi) == 0
    ((hcid, p1, p2, _),) = spy.calls
    assert (hcid, p1) == (uapi.HC_INJECT_MSI, vmid) and p2 != ctypes.addressof(msi)
    assert env.vm().msis == [(0xFEE00000, 0x30)]


def test_inject_msi_hypervisor_minus_one_is_eperm(env: Env) -> None:
    env.create()
    assert env.err(uapi.ACRN_IOCTL_INJECT_MSI, uapi.acrn_msi_entry(0x12345000, 0x30)) == errno.EPERM


def test_set_irqline_takes_the_value_itself(env: Env) -> None:
    vmid = env.create()
    value = uapi.irqline_value(5, uapi.GSI_SET_HIGH)
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_SET_IRQLINE, value) == 0
    assert spy.calls[0][:3] == (uapi.HC_SET_IRQLINE, vmid, value)
    assert env.vm().ioapic_lines.get(5) == 1


def test_set_irqline_bad_gsi_is_eperm(env: Env) -> None:
    env.create()
    assert env.err(uapi.ACRN_IOCTL_SET_IRQLINE, uapi.irqline_value(4000, 0)) == errno.EPERM


def test_vm_intr_monitor_pins_the_page_base(env: Env) -> None:
    vmid = env.create()
    page = env.mem()
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_VM_INTR_MONITOR, page.addr + 0x10) == 0
    assert spy.calls[0][:3] == (uapi.HC_VM_INTR_MONITOR, vmid, page.addr)
    assert env.vm().intr_monitor_page == page.addr
    assert env.machine.hsm.vms[0].monitor_page == page.addr


def test_vm_intr_monitor_unmapped_is_efault(env: Env) -> None:
    env.create()
    spy = HypercallSpy(env.machine)
    assert env.err(uapi.ACRN_IOCTL_VM_INTR_MONITOR, 0x1000) == errno.EFAULT
    assert spy.calls == []


def test_vm_intr_monitor_replaces_and_unpins_previous_page(env: Env) -> None:
    env.create()
    a, b = env.mem(), env.mem()
    env.dev.ioctl(uapi.ACRN_IOCTL_VM_INTR_MONITOR, a.addr)
    env.dev.ioctl(uapi.ACRN_IOCTL_VM_INTR_MONITOR, b.addr)
    assert env.machine.hsm.pins.count() == 2  # ioreq page + b


def test_vm_intr_monitor_failure_unpins(env: Env) -> None:
    env.create()
    page = env.mem()
    page.write(4, (49).to_bytes(4, "little"))  # buf_cnt > 48: -EINVAL from the hypervisor
    assert env.err(uapi.ACRN_IOCTL_VM_INTR_MONITOR, page.addr) == errno.EINVAL
    assert env.machine.hsm.pins.count() == 1 and env.machine.hsm.vms[0].monitor_page is None


def test_pm_get_cpu_state_unknown_type_returns_0_untouched(env: Env) -> None:
    env.create()
    buf = bytearray(uapi.pm_cmd(env.dev.vmid, 0, 0, 0x7F).to_bytes(8, "little"))
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == 0
    assert spy.calls == [] and int.from_bytes(buf, "little") == uapi.pm_cmd(env.dev.vmid, 0, 0, 0x7F)


def test_pm_get_cpu_state_cx_cnt_writes_back_8_bytes(env: Env) -> None:
    vmid = env.create()
    cmd = uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_CX_CNT)
    buf = bytearray(cmd.to_bytes(8, "little") + b"\xaa" * 8)
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == 0
    assert spy.calls[0][:2] == (uapi.HC_PM_GET_CPU_STATE, cmd)  # the command word, not the fd's vmid
    assert buf[:8] == len(env.machine.platform.cx_states).to_bytes(8, "little")
    assert buf[8:] == b"\xaa" * 8


def test_pm_get_cpu_state_cx_data_writes_back_32_bytes(env: Env) -> None:
    vmid = env.create()
    buf = bytearray(uapi.pm_cmd(vmid, 0, 1, uapi.ACRN_PMCMD_GET_CX_DATA).to_bytes(8, "little") + bytes(24))
    assert env.dev.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == 0
    assert bytes(buf) == env.machine.platform.cx_states[0].to_bytes()


def test_pm_get_cpu_state_data_into_8_byte_buffer_is_efault(env: Env) -> None:
    vmid = env.create()
    buf = bytearray(uapi.pm_cmd(vmid, 0, 1, uapi.ACRN_PMCMD_GET_CX_DATA).to_bytes(8, "little"))
    assert env.err(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == errno.EFAULT


def test_pm_get_cpu_state_px_data_is_eperm(env: Env) -> None:
    vmid = env.create()
    buf = bytearray(uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_PX_DATA).to_bytes(8, "little") + bytes(40))
    assert env.err(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == errno.EPERM
    assert buf[8:] == bytes(40)


def test_pm_get_cpu_state_vmid_comes_from_the_word(env: Env) -> None:
    env.create()
    d2 = env.open()
    other = env.create(b"other", dev=d2, ioreq_buf=env.mem().addr)
    d2.ioctl(uapi.ACRN_IOCTL_START_VM)  # RUNNING: -1 for PM queries
    buf = bytearray(uapi.pm_cmd(other, 0, 0, uapi.ACRN_PMCMD_GET_CX_CNT).to_bytes(8, "little"))
    assert env.err(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf) == errno.EPERM


PASSTHROUGH = [
    (uapi.ACRN_IOCTL_SET_PTDEV_INTR, uapi.acrn_ptdev_irq, uapi.HC_SET_PTDEV_INTR),
    (uapi.ACRN_IOCTL_RESET_PTDEV_INTR, uapi.acrn_ptdev_irq, uapi.HC_RESET_PTDEV_INTR),
    (uapi.ACRN_IOCTL_ASSIGN_PCIDEV, uapi.acrn_pcidev, uapi.HC_ASSIGN_PCIDEV),
    (uapi.ACRN_IOCTL_DEASSIGN_PCIDEV, uapi.acrn_pcidev, uapi.HC_DEASSIGN_PCIDEV),
    (uapi.ACRN_IOCTL_ASSIGN_MMIODEV, uapi.acrn_mmiodev, uapi.HC_ASSIGN_MMIODEV),
    (uapi.ACRN_IOCTL_DEASSIGN_MMIODEV, uapi.acrn_mmiodev, uapi.HC_DEASSIGN_MMIODEV),
    (uapi.ACRN_IOCTL_CREATE_VDEV, uapi.acrn_vdev, uapi.HC_CREATE_VDEV),
    (uapi.ACRN_IOCTL_DESTROY_VDEV, uapi.acrn_vdev, uapi.HC_DESTROY_VDEV),
]


@pytest.mark.parametrize(
    ("cmd", "ctype", "hcid"), PASSTHROUGH, ids=[uapi.IOCTL_NAMES[c] for c, _, _ in PASSTHROUGH]
)
def test_passthrough_ioctls_memdup_and_call(
    env: Env, cmd: int, ctype: type[ctypes.Structure], hcid: int
) -> None:
    vmid = env.create()
    arg = bytearray(range(ctypes.sizeof(ctype)))
    seen: list[bytes] = []
    real = env.hv.hypercall

    def spy(h: int, p1: int = 0, p2: int = 0) -> int:
        if h == hcid:
            seen.append(env.machine.memory.read(p2, ctypes.sizeof(ctype)) or b"")
            assert p1 == vmid
        return real(h, p1, p2)

    env.hv.hypercall = spy  # type: ignore[method-assign]
    try:
        env.dev.ioctl(cmd, arg)
    except OSError as e:
        assert e.errno != errno.EFAULT  # whatever the hypervisor answers, it answered
    assert seen == [bytes(arg)]


@pytest.mark.parametrize(
    ("cmd", "ctype", "hcid"), PASSTHROUGH, ids=[uapi.IOCTL_NAMES[c] for c, _, _ in PASSTHROUGH]
)
def test_passthrough_ioctls_short_buffer_is_efault(
    env: Env, cmd: int, ctype: type[ctypes.Structure], hcid: int
) -> None:
    env.create()
    assert env.err(cmd, bytearray(ctypes.sizeof(ctype) - 1)) == errno.EFAULT


def test_create_vdev_unknown_id_is_einval_from_hypervisor(env: Env) -> None:
    env.create()
    assert env.err(uapi.ACRN_IOCTL_CREATE_VDEV, uapi.acrn_vdev()) == errno.EINVAL
