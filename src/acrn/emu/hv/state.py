"""The VM and vCPU state machines of the emulated hypervisor, as tables.

Sources: the state checks at the top of each ``hcall_*`` handler in
``hypervisor/common/hypercall.c`` and the transitions in ``hypervisor/arch/x86/guest/vm.c``.

Everything that decides *whether* a hypercall may act on a VM lives here: the legal VM states per
hypercall with the error ACRN returns otherwise, and the transitions each lifecycle event makes.
The dispatch in :mod:`acrn.emu.hv.hypervisor` consults :data:`HC_STATE_RULES` before any handler runs,
and the handlers (``acrn.emu.hv.hc_*``) move VMs and vCPUs only through :func:`vm_transition` /
:data:`VCPU_TRANSITIONS`, so the whole
protocol can be read on one screen (the h11 ``_state.py`` style).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

from acrn import uapi


class VmState(IntEnum):
    """``enum vm_state`` (hypervisor vm.h). There is no "VM_READY"."""

    POWERED_OFF = 0
    CREATED = 1
    RUNNING = 2
    READY_TO_POWEROFF = 3
    PAUSED = 4


class IllegalTransition(RuntimeError):
    """A VM or vCPU state change the tables below do not allow.

    The hypercall rules are checked before any handler acts, so this is never a client's or a
    guest's doing: it is a bug in the emulator, and it stops the change instead of making it.
    """


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


def hc_index(hcid: int) -> int:
    """The dispatch index of a hypercall id: its low byte (``vmcall.c: dispatch_hypercall``)."""
    return hcid & 0xFF


#: ACRN v3.3 hypercalls that ``<linux/acrn.h>`` does not name (``hypervisor/include/public/
#: acrn_hv_defs.h``): the debug, Trusty and TEE ones the Service VM cannot use here.
HC_SETUP_HV_NPK_LOG: Final = 0x80000061
HC_PROFILING_OPS: Final = 0x80000062
HC_GET_HW_INFO: Final = 0x80000063
HC_INITIALIZE_TRUSTY: Final = 0x80000070
HC_WORLD_SWITCH: Final = 0x80000071
HC_SAVE_RESTORE_SWORLD_CTX: Final = 0x80000072
HC_TEE_VCPU_BOOT_DONE: Final = 0x80000090
HC_SWITCH_EE: Final = 0x80000091

_I = hc_index

#: The hypercalls' state preconditions, keyed by the hypercall's dispatch index (``hc_index``).
#: CREATE_VM's rule is about the *config slot* found by name.  Hypercalls missing here have no VM-state
#: precondition.
HC_STATE_RULES: Final[dict[int, StateRule]] = {
    _I(uapi.HC_CREATE_VM): StateRule(frozenset({_S.POWERED_OFF}), -1),
    _I(uapi.HC_DESTROY_VM): StateRule(frozenset({_S.PAUSED}), -1),
    _I(uapi.HC_START_VM): StateRule(_CREATED, -1, needs_ioreq_buffer=True),
    # PAUSE_VM is a no-op in some states (see VM_TRANSITIONS).
    _I(uapi.HC_PAUSE_VM): StateRule(_ALIVE, -1),
    _I(uapi.HC_RESET_VM): StateRule(frozenset({_S.PAUSED}), -1),
    # SET_VCPU_REGS: not POWERED_OFF and not RUNNING (hcall_set_vcpu_regs).
    _I(uapi.HC_SET_VCPU_REGS): StateRule(frozenset({_S.CREATED, _S.PAUSED, _S.READY_TO_POWEROFF}), -1),
    _I(uapi.HC_INJECT_MSI): StateRule(_ALIVE, -1, Severity.REQUIRED),
    _I(uapi.HC_VM_INTR_MONITOR): StateRule(_ALIVE, EINVAL),
    _I(uapi.HC_SET_IRQLINE): StateRule(_ALIVE, -1, Severity.REQUIRED),
    _I(uapi.HC_SET_IOREQ_BUFFER): StateRule(_CREATED, -1),
    _I(uapi.HC_NOTIFY_REQUEST_FINISH): StateRule(_ALIVE, -1, Severity.REQUIRED, needs_ioreq_buffer=True),
    _I(uapi.HC_VM_GPA2HPA): StateRule(_ALIVE, -1),
    _I(uapi.HC_VM_SET_MEMORY_REGIONS): StateRule(_ALIVE, -1, Severity.REQUIRED_IF_RUNNING),
    _I(uapi.HC_VM_WRITE_PROTECT_PAGE): StateRule(_ALIVE, -1),
    _I(uapi.HC_SET_PTDEV_INTR): StateRule(_CREATED, -1),
    _I(uapi.HC_RESET_PTDEV_INTR): StateRule(_CREATED_PAUSED, -1),
    _I(uapi.HC_ASSIGN_PCIDEV): StateRule(_CREATED, EINVAL),
    _I(uapi.HC_DEASSIGN_PCIDEV): StateRule(_CREATED_PAUSED, EINVAL),
    _I(uapi.HC_ASSIGN_MMIODEV): StateRule(_CREATED, EINVAL),
    _I(uapi.HC_DEASSIGN_MMIODEV): StateRule(_CREATED_PAUSED, EINVAL),
    _I(uapi.HC_CREATE_VDEV): StateRule(_CREATED, EINVAL),  # the hypervisor's ADD_VDEV
    _I(uapi.HC_DESTROY_VDEV): StateRule(_CREATED_PAUSED, EINVAL),  # the hypervisor's REMOVE_VDEV
    _I(uapi.HC_PM_GET_CPU_STATE): StateRule(_CREATED_PAUSED, -1),
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


#: VM transitions per event: every legal (event, state) pair, no-ops included; any other pair
#: is refused (:class:`IllegalTransition`).  PAUSE of a RUNNING VM depends on severity
#: (``hcall_pause_vm``), so :func:`vm_transition` decides that one.
VM_TRANSITIONS: Final[dict[VmEvent, dict[VmState, VmState]]] = {
    VmEvent.CREATE: {_S.POWERED_OFF: _S.CREATED},
    VmEvent.START: {_S.CREATED: _S.RUNNING},
    VmEvent.PAUSE: {
        _S.CREATED: _S.PAUSED,
        _S.RUNNING: _S.PAUSED,
        _S.READY_TO_POWEROFF: _S.PAUSED,
        _S.PAUSED: _S.PAUSED,  # PAUSE of a paused VM: 0 and nothing happens
    },
    VmEvent.RESET: {_S.PAUSED: _S.CREATED},
    VmEvent.DESTROY: {_S.PAUSED: _S.POWERED_OFF},
    # poweroff_if_rt_vm: not when paused or powered off.
    VmEvent.RT_POWEROFF: {
        _S.CREATED: _S.READY_TO_POWEROFF,
        _S.RUNNING: _S.READY_TO_POWEROFF,
        _S.READY_TO_POWEROFF: _S.READY_TO_POWEROFF,
    },
}
#: PAUSE moves a RUNNING VM only when the target passes the severity check.
PAUSE_RUNNING_NEEDS_SEVERITY_PASS: Final = True


def vm_transition(event: VmEvent, state: VmState, severity_pass: bool = True) -> VmState:
    """The VM state after ``event``; :class:`IllegalTransition` for a pair the table lacks."""
    new = VM_TRANSITIONS[event].get(state)
    if new is None:
        raise IllegalTransition(f"VM {state.name} cannot take {event.name}")
    if event is VmEvent.PAUSE and state == VmState.RUNNING and PAUSE_RUNNING_NEEDS_SEVERITY_PASS:
        return new if severity_pass else state
    return new


def may_transition(event: VmEvent, state: VmState) -> bool:
    """Whether ``event`` is legal for a VM in ``state`` (for callers that act only then)."""
    return state in VM_TRANSITIONS[event]


class VcpuEvent(Enum):
    """What moves a vCPU (``hypervisor/arch/x86/guest/vcpu.c``, ``vm.c``, ``vlapic.c``)."""

    CREATE = "create"  # prepare_vcpu: VCPU_INIT
    LAUNCH = "launch"  # launch_vcpu: the BSP at START (and the Service VM's at boot)
    SIPI = "sipi"  # the guest's INIT/SIPI started an AP
    PAUSE = "pause"  # zombie_vcpu, by pause_vm
    RESET = "reset"  # reset_vcpu, by reset_vm
    DESTROY = "destroy"  # offline_vcpu, by destroy_vm
    OFFLINE = "offline"  # HC_SOS_REMOVE_CPU on a Service VM vCPU


_V = VcpuState
#: vCPU transitions per event; any other pair is refused (:class:`IllegalTransition`).
VCPU_TRANSITIONS: Final[dict[VcpuEvent, dict[VcpuState, VcpuState]]] = {
    VcpuEvent.CREATE: {_V.OFFLINE: _V.INIT},
    VcpuEvent.LAUNCH: {_V.INIT: _V.RUNNING},
    VcpuEvent.SIPI: {_V.INIT: _V.RUNNING},
    VcpuEvent.PAUSE: {_V.INIT: _V.ZOMBIE, _V.RUNNING: _V.ZOMBIE, _V.ZOMBIE: _V.ZOMBIE},
    VcpuEvent.RESET: {_V.ZOMBIE: _V.INIT},
    VcpuEvent.DESTROY: {_V.ZOMBIE: _V.OFFLINE},
    VcpuEvent.OFFLINE: {_V.INIT: _V.OFFLINE, _V.RUNNING: _V.OFFLINE},
}


def vcpu_transition(event: VcpuEvent, state: VcpuState) -> VcpuState:
    """The vCPU state after ``event``; :class:`IllegalTransition` for a pair the table lacks."""
    new = VCPU_TRANSITIONS[event].get(state)
    if new is None:
        raise IllegalTransition(f"vCPU {state.name} cannot take {event.name}")
    return new


BSP_VCPU_ID: Final = 0
