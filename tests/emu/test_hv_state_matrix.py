"""The hypercalls' state rules (``hypervisor/common/hypercall.c``): every lifecycle-relevant hypercall in
every VM state, with arguments that are otherwise valid, so that only the state rule (and severity, for an
RTVM) decides the result.

The expectations are written out from ACRN's handlers, not derived from ``HC_STATE_RULES``.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable

import pytest

from acrn import uapi
from acrn.emu.hv import Hypervisor, VmState

from .test_hv_lifecycle import Page, create, set_buffer, set_regs, vcpu_regs

S = VmState
EINVAL = -errno.EINVAL
_KEEP: list[object] = []


def _vm(hv: Hypervisor, state: VmState) -> int:
    """A normal-severity VM in ``state``; READY_TO_POWEROFF needs an RTVM (its guest powered off)."""
    rt = state == S.READY_TO_POWEROFF
    name = b"POST_RT_VM1" if rt else b"matrix"
    ret, cv = create(hv, name, uapi.GUEST_FLAG_RT if rt else 0)
    assert ret == 0
    vmid = int(cv.vmid)
    page = Page()
    _KEEP.append(page)
    assert set_buffer(hv, vmid, page) == 0
    if state != S.CREATED:
        assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    if state == S.PAUSED:
        assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    if rt:
        hv.poweroff_rt_vm(vmid)
    vm = hv.vm(vmid)
    assert vm is not None and vm.state == state
    return vmid


def _struct_call(hcid: int, data: bytes) -> Callable[[Hypervisor, int], int]:
    def call(hv: Hypervisor, vmid: int) -> int:
        with hv.memory.kernel_copy(data) as kc:
            return hv.hypercall(hcid, vmid, kc.gpa)

    return call


def _set_buffer(hv: Hypervisor, vmid: int) -> int:
    page = Page()
    _KEEP.append(page)
    return set_buffer(hv, vmid, page)


def _intr_monitor(hv: Hypervisor, vmid: int) -> int:
    page = Page()
    _KEEP.append(page)
    ctypes.c_uint64.from_address(page.addr).value = uapi.INTR_CMD_GET_DATA  # buf_cnt 0
    return hv.hypercall(uapi.HC_VM_INTR_MONITOR, vmid, page.addr)


def _pm_cx_cnt(hv: Hypervisor, vmid: int) -> int:
    out = Page()
    _KEEP.append(out)
    return hv.hypercall(
        uapi.HC_PM_GET_CPU_STATE, uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_CX_CNT), out.addr
    )


CALLS: dict[str, Callable[[Hypervisor, int], int]] = {
    "START_VM": lambda hv, v: hv.hypercall(uapi.HC_START_VM, v),
    "PAUSE_VM": lambda hv, v: hv.hypercall(uapi.HC_PAUSE_VM, v),
    "RESET_VM": lambda hv, v: hv.hypercall(uapi.HC_RESET_VM, v),
    "DESTROY_VM": lambda hv, v: hv.hypercall(uapi.HC_DESTROY_VM, v),
    "SET_VCPU_REGS": lambda hv, v: set_regs(hv, v, vcpu_regs()),
    "SET_IOREQ_BUFFER": _set_buffer,
    "INJECT_MSI": _struct_call(uapi.HC_INJECT_MSI, bytes(uapi.acrn_msi_entry(0xFEE00000, 0x30))),
    "SET_IRQLINE": lambda hv, v: hv.hypercall(
        uapi.HC_SET_IRQLINE, v, uapi.irqline_value(4, uapi.GSI_SET_LOW)
    ),
    "NOTIFY_REQUEST_FINISH": lambda hv, v: hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, v, 0),
    "VM_INTR_MONITOR": _intr_monitor,
    "PM_GET_CPU_STATE": _pm_cx_cnt,
}

C, R, P, T = S.CREATED, S.RUNNING, S.PAUSED, S.READY_TO_POWEROFF
#: The states in which each call succeeds here (T is an RTVM, which fails the
#: severity check of INJECT_MSI, SET_IRQLINE and NOTIFY_REQUEST_FINISH), and the error otherwise.
ALLOWED: dict[str, tuple[set[VmState], int]] = {
    "START_VM": ({C}, -1),
    "PAUSE_VM": ({C, R, P, T}, -1),
    "RESET_VM": ({P}, -1),
    "DESTROY_VM": ({P}, -1),
    "SET_VCPU_REGS": ({C, P, T}, -1),
    "SET_IOREQ_BUFFER": ({C}, -1),
    "INJECT_MSI": ({C, R, P}, -1),
    "SET_IRQLINE": ({C, R, P}, -1),
    "NOTIFY_REQUEST_FINISH": ({C, R, P}, -1),
    "VM_INTR_MONITOR": ({C, R, P, T}, EINVAL),
    "PM_GET_CPU_STATE": ({C, P}, -1),
}


@pytest.mark.parametrize("state", [C, R, P, T], ids=lambda s: s.name)
@pytest.mark.parametrize("name", list(CALLS))
def test_state_rule(name: str, state: VmState) -> None:
    hv = Hypervisor()
    vmid = _vm(hv, state)
    allowed, error = ALLOWED[name]
    assert CALLS[name](hv, vmid) == (0 if state in allowed else error)


@pytest.mark.parametrize("name", list(CALLS))
def test_powered_off_target(name: str) -> None:
    # A slot that was created and destroyed again: POWERED_OFF, but a reachable vmid.
    hv = Hypervisor()
    vmid = _vm(hv, S.PAUSED)
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == 0
    assert CALLS[name](hv, vmid) == ALLOWED[name][1]


def test_failed_state_rule_changes_nothing() -> None:
    hv = Hypervisor()
    vmid = _vm(hv, S.RUNNING)
    vm = hv.vm(vmid)
    assert vm is not None
    before = (vm.state, [v.state for v in vm.vcpus], vm.vcpus[0].regs.copy())
    for name in ("START_VM", "RESET_VM", "DESTROY_VM", "SET_VCPU_REGS", "SET_IOREQ_BUFFER"):
        assert CALLS[name](hv, vmid) == -1
    assert (vm.state, [v.state for v in vm.vcpus], vm.vcpus[0].regs) == before
