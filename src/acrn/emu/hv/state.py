"""The VM and vCPU state machines of the emulated hypervisor, as tables.

Sources: the state checks at the top of each ``hcall_*`` handler in
``hypervisor/common/hypercall.c`` and the transitions in ``hypervisor/arch/x86/guest/vm.c``.

Everything that decides *whether* a hypercall may act on a VM lives here: the legal VM states per
hypercall with the error ACRN returns otherwise, and the transitions each lifecycle event makes.
Handlers in :mod:`acrn.emu.hv.hypervisor` consult :data:`HC_STATE_RULES` before doing anything and
move VMs and vCPUs only through :func:`vm_transition` / :data:`VCPU_TRANSITIONS`, so the whole
protocol can be read on one screen (the h11 ``_state.py`` style).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final


class VmState(IntEnum):
    """``enum vm_state`` (hypervisor vm.h). There is no "VM_READY"."""

    POWERED_OFF = 0
    CREATED = 1
    RUNNING = 2
    READY_TO_POWEROFF = 3
    PAUSED = 4


class VcpuState(IntEnum):
    """``enum vcpu_state`` (hypervisor vcpu.h)."""

    OFFLINE = 0
    INIT = 1
    RUNNING = 2
    ZOMBIE = 3


class Severity(Enum):
    """How a hypercall's rule uses ``is_severity_pass`` (target severity <= the Service VM's)."""

    IGNORED = "ignored"
    REQUIRED = "required"
    #: SET_MEMORY_REGIONS: a higher-severity VM is protected only while it is RUNNING.
    REQUIRED_IF_RUNNING = "required_if_running"


@dataclass(frozen=True)
class StateRule:
    """The whole-call precondition of one hypercall; ``error`` is returned when it fails."""

    allowed: frozenset[VmState]
    error: int
    severity: Severity = Severity.IGNORED
    needs_ioreq_buffer: bool = False


_S = VmState
_ALIVE: Final = frozenset({_S.CREATED, _S.RUNNING, _S.READY_TO_POWEROFF, _S.PAUSED})
_CREATED: Final = frozenset({_S.CREATED})
_CREATED_PAUSED: Final = frozenset({_S.CREATED, _S.PAUSED})
EINVAL: Final = -errno.EINVAL
ENOTTY: Final = -errno.ENOTTY

#: The hypercalls' state preconditions, keyed by the hypercall's dispatch index (``hcall_id & 0xFF``).
#: CREATE_VM's rule is about the *config slot* found by name.  Hypercalls missing here have no VM-state
#: precondition.
HC_STATE_RULES: Final[dict[int, StateRule]] = {
    0x10: StateRule(frozenset({_S.POWERED_OFF}), -1),  # CREATE_VM
    0x11: StateRule(frozenset({_S.PAUSED}), -1),  # DESTROY_VM
    0x12: StateRule(_CREATED, -1, needs_ioreq_buffer=True),  # START_VM
    0x13: StateRule(_ALIVE, -1),  # PAUSE_VM (a no-op in some states, see VM_TRANSITIONS)
    0x15: StateRule(frozenset({_S.PAUSED}), -1),  # RESET_VM
    # SET_VCPU_REGS: not POWERED_OFF and not RUNNING (hcall_set_vcpu_regs).
    0x16: StateRule(frozenset({_S.CREATED, _S.PAUSED, _S.READY_TO_POWEROFF}), -1),
    0x23: StateRule(_ALIVE, -1, Severity.REQUIRED),  # INJECT_MSI
    0x24: StateRule(_ALIVE, EINVAL),  # VM_INTR_MONITOR
    0x25: StateRule(_ALIVE, -1, Severity.REQUIRED),  # SET_IRQLINE
    0x30: StateRule(_CREATED, -1),  # SET_IOREQ_BUFFER
    0x31: StateRule(_ALIVE, -1, Severity.REQUIRED, needs_ioreq_buffer=True),  # NOTIFY_REQUEST_FINISH
    0x41: StateRule(_ALIVE, -1),  # VM_GPA2HPA
    0x42: StateRule(_ALIVE, -1, Severity.REQUIRED_IF_RUNNING),  # VM_SET_MEMORY_REGIONS
    0x43: StateRule(_ALIVE, -1),  # VM_WRITE_PROTECT_PAGE
    0x53: StateRule(_CREATED, -1),  # SET_PTDEV_INTR
    0x54: StateRule(_CREATED_PAUSED, -1),  # RESET_PTDEV_INTR
    0x55: StateRule(_CREATED, EINVAL),  # ASSIGN_PCIDEV
    0x56: StateRule(_CREATED_PAUSED, EINVAL),  # DEASSIGN_PCIDEV
    0x57: StateRule(_CREATED, EINVAL),  # ASSIGN_MMIODEV
    0x58: StateRule(_CREATED_PAUSED, EINVAL),  # DEASSIGN_MMIODEV
    0x59: StateRule(_CREATED, EINVAL),  # CREATE_VDEV (hv: ADD_VDEV)
    0x5A: StateRule(_CREATED_PAUSED, EINVAL),  # DESTROY_VDEV (hv: REMOVE_VDEV)
    0x80: StateRule(_CREATED_PAUSED, -1),  # PM_GET_CPU_STATE
}


def check_state(hc_idx: int, state: VmState, severity_pass: bool, has_ioreq_buffer: bool) -> int | None:
    """The error :data:`HC_STATE_RULES` gives for this call on a VM in ``state``, or None if it may
    proceed."""
    rule = HC_STATE_RULES.get(hc_idx)
    if rule is None:
        return None
    ok = state in rule.allowed
    if rule.severity is Severity.REQUIRED:
        ok = ok and severity_pass
    elif rule.severity is Severity.REQUIRED_IF_RUNNING:
        ok = ok and (severity_pass or state != VmState.RUNNING)
    if rule.needs_ioreq_buffer:
        ok = ok and has_ioreq_buffer
    return None if ok else rule.error


class VmEvent(Enum):
    CREATE = "create"
    START = "start"
    PAUSE = "pause"
    RESET = "reset"
    DESTROY = "destroy"
    #: The guest of an RTVM powers itself off (``poweroff_if_rt_vm``).
    RT_POWEROFF = "rt_poweroff"


#: VM transitions per event.  A state missing from an event's map means "no change".  PAUSE of a
#: RUNNING VM is listed separately because it depends on severity (``hcall_pause_vm``).
VM_TRANSITIONS: Final[dict[VmEvent, dict[VmState, VmState]]] = {
    VmEvent.CREATE: {_S.POWERED_OFF: _S.CREATED},
    VmEvent.START: {_S.CREATED: _S.RUNNING},
    VmEvent.PAUSE: {_S.CREATED: _S.PAUSED, _S.READY_TO_POWEROFF: _S.PAUSED},
    VmEvent.RESET: {_S.PAUSED: _S.CREATED},
    VmEvent.DESTROY: {_S.PAUSED: _S.POWERED_OFF},
    VmEvent.RT_POWEROFF: {_S.CREATED: _S.READY_TO_POWEROFF, _S.RUNNING: _S.READY_TO_POWEROFF},
}
#: PAUSE moves a RUNNING VM only when the target passes the severity check.
PAUSE_RUNNING_NEEDS_SEVERITY_PASS: Final = True


def vm_transition(event: VmEvent, state: VmState, severity_pass: bool = True) -> VmState:
    """The VM state after ``event``; unchanged where the table has no entry."""
    if event is VmEvent.PAUSE and state == VmState.RUNNING:
        return VmState.PAUSED if severity_pass or not PAUSE_RUNNING_NEEDS_SEVERITY_PASS else state
    return VM_TRANSITIONS[event].get(state, state)


#: What each VM-level event does to the VM's vCPUs (``hypervisor/arch/x86/guest/vm.c``).  START is special:
#: only the BSP (vCPU 0) goes RUNNING; APs stay INIT until the guest sends INIT/SIPI.
VCPU_TRANSITIONS: Final[dict[VmEvent, VcpuState]] = {
    VmEvent.CREATE: VcpuState.INIT,
    VmEvent.PAUSE: VcpuState.ZOMBIE,
    VmEvent.RESET: VcpuState.INIT,
    VmEvent.DESTROY: VcpuState.OFFLINE,
}
BSP_VCPU_ID: Final = 0
