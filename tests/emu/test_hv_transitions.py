"""The state tables bind: every VM and vCPU change goes through a transition function that refuses
a pair its table lacks, and the hypercall tables are keyed by the hypercalls' names."""

from __future__ import annotations

import pytest

from acrn import uapi
from acrn.emu.hv import Hypervisor
from acrn.emu.hv.state import (
    HC_STATE_RULES,
    VCPU_TRANSITIONS,
    VM_TRANSITIONS,
    IllegalTransition,
    VcpuEvent,
    VcpuState,
    VmEvent,
    VmState,
    hc_index,
    may_transition,
    vcpu_transition,
    vm_transition,
)


@pytest.mark.parametrize("event", list(VmEvent))
@pytest.mark.parametrize("state", list(VmState))
def test_a_vm_transition_is_the_tables_or_refused(event: VmEvent, state: VmState) -> None:
    if state in VM_TRANSITIONS[event]:
        assert may_transition(event, state)
        assert vm_transition(event, state) == VM_TRANSITIONS[event][state]
    else:
        assert not may_transition(event, state)
        with pytest.raises(IllegalTransition, match=f"VM {state.name} cannot take {event.name}"):
            vm_transition(event, state)


def test_pause_of_a_running_vm_needs_the_severity_check_and_is_otherwise_a_no_op() -> None:
    assert vm_transition(VmEvent.PAUSE, VmState.RUNNING, severity_pass=True) == VmState.PAUSED
    assert vm_transition(VmEvent.PAUSE, VmState.RUNNING, severity_pass=False) == VmState.RUNNING


@pytest.mark.parametrize("event", list(VcpuEvent))
@pytest.mark.parametrize("state", list(VcpuState))
def test_a_vcpu_transition_is_the_tables_or_refused(event: VcpuEvent, state: VcpuState) -> None:
    if state in VCPU_TRANSITIONS[event]:
        assert vcpu_transition(event, state) == VCPU_TRANSITIONS[event][state]
    else:
        with pytest.raises(IllegalTransition):
            vcpu_transition(event, state)


def test_the_life_of_a_vm_walks_only_legal_vcpu_pairs() -> None:
    """ACRN's order: CREATE (INIT), START (BSP RUNNING), a SIPI (AP RUNNING), PAUSE (ZOMBIE),
    RESET (INIT), PAUSE again, DESTROY (OFFLINE)."""
    bsp = ap = vcpu_transition(VcpuEvent.CREATE, VcpuState.OFFLINE)
    bsp = vcpu_transition(VcpuEvent.LAUNCH, bsp)
    ap = vcpu_transition(VcpuEvent.SIPI, ap)
    assert (bsp, ap) == (VcpuState.RUNNING, VcpuState.RUNNING)
    bsp, ap = (vcpu_transition(VcpuEvent.PAUSE, v) for v in (bsp, ap))
    bsp, ap = (vcpu_transition(VcpuEvent.RESET, v) for v in (bsp, ap))
    assert (bsp, ap) == (VcpuState.INIT, VcpuState.INIT)
    bsp, ap = (vcpu_transition(VcpuEvent.PAUSE, v) for v in (bsp, ap))
    assert {vcpu_transition(VcpuEvent.DESTROY, v) for v in (bsp, ap)} == {VcpuState.OFFLINE}
    with pytest.raises(IllegalTransition):
        vcpu_transition(VcpuEvent.LAUNCH, VcpuState.ZOMBIE)  # a zombie is never launched again


def test_the_state_rules_are_keyed_by_the_dispatch_index_of_named_hypercalls() -> None:
    named = {
        hc_index(getattr(uapi, n)) for n in dir(uapi) if n.startswith("HC_") and not n.startswith("HC_ID")
    }
    assert set(HC_STATE_RULES) <= named
    assert hc_index(uapi.HC_NOTIFY_REQUEST_FINISH) == 0x31 and hc_index(0x12345631) == 0x31


def test_an_ap_started_by_the_guest_runs_and_a_started_or_paused_vcpu_is_left_alone() -> None:
    hv = Hypervisor()
    vm = hv.service_vm
    vcpu = vm.vcpus[1]
    assert vcpu.state == VcpuState.RUNNING  # the Service VM runs from boot
    hv.vcpu_started(0, 1)  # not waiting in INIT: nothing happens
    assert vcpu.state == VcpuState.RUNNING
    vcpu.state = VcpuState.INIT
    hv.vcpu_started(0, 1)
    assert vcpu.state == VcpuState.RUNNING
    hv.vcpu_started(0, 99)  # no such vCPU: nothing happens
