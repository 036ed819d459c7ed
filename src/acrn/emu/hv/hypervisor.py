"""The emulated ACRN hypervisor: VM config slots, hypercall dispatch, the public interface.

Pure state and rules (no threads, fds or KVM).  The emulated HSM driver calls :meth:`Hypervisor.hypercall`
exactly as the kernel issues VMCALLs: parameters are "Service VM physical addresses", which in pyacrn
are addresses in this process (:mod:`acrn.emu.service_vm_memory`).  A runtime drives running vCPUs from the
state kept here and learns about changes through :class:`HvListener` callbacks (:mod:`acrn.emu.hv.listener`).

One concern a file, after ACRN's sources: this one is ``hypervisor/arch/x86/guest/vmcall.c`` (dispatch,
``parse_target_vm``) and the table of handlers; the handlers are plain functions grouped as the sections of
``hypervisor/common/hypercall.c`` are (:mod:`~acrn.emu.hv.hc_general`, :mod:`~acrn.emu.hv.hc_vm`,
:mod:`~acrn.emu.hv.hc_irq`, :mod:`~acrn.emu.hv.hc_ioreq`, :mod:`~acrn.emu.hv.hc_memory`,
:mod:`~acrn.emu.hv.hc_devices`, :mod:`~acrn.emu.hv.hc_pm`); the ioreq page's hypervisor side is
:mod:`acrn.emu.hv.io_req` (``hypervisor/dm/io_req.c``); the state rules are :mod:`acrn.emu.hv.state`.

Emulator choices where ACRN has no observable answer (each is documented at its handler):
* physical devices do not exist: PCI/MMIO passthrough and vdevs are bookkeeping only (``hc_devices``);
* a dynamic slot created with ``cpu_affinity == 0`` uses the slot's platform-configured pCPUs
  (ACRN would have overwritten them with the creator's 0 and built a VM with no vCPU; ``hc_vm``);
* debug/profiling, sbuf and asyncio hypercalls are recognised but return -1 (not emulated).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from acrn import uapi
from acrn.arch import CpuState
from acrn.emu.hv import hc_devices, hc_general, hc_ioreq, hc_irq, hc_memory, hc_pm, hc_vm
from acrn.emu.hv.hc_devices import IVSHMEM_DEV_ID as IVSHMEM_DEV_ID
from acrn.emu.hv.hc_devices import MCS9900_DEV_ID as MCS9900_DEV_ID
from acrn.emu.hv.hc_devices import VRP_DEV_ID as VRP_DEV_ID
from acrn.emu.hv.hc_general import HV_API_MAJOR_VERSION as HV_API_MAJOR_VERSION
from acrn.emu.hv.hc_general import HV_API_MINOR_VERSION as HV_API_MINOR_VERSION
from acrn.emu.hv.io_req import VcpuIoreq as VcpuIoreq
from acrn.emu.hv.io_req import vm_slot
from acrn.emu.hv.listener import Broadcast
from acrn.emu.hv.listener import HvListener as HvListener
from acrn.emu.hv.state import (
    EINVAL,
    ENOTTY,
    HC_GET_HW_INFO,
    HC_INITIALIZE_TRUSTY,
    HC_PROFILING_OPS,
    HC_SAVE_RESTORE_SWORLD_CTX,
    HC_SETUP_HV_NPK_LOG,
    HC_STATE_RULES,
    HC_SWITCH_EE,
    HC_TEE_VCPU_BOOT_DONE,
    HC_WORLD_SWITCH,
    Severity,
    VcpuEvent,
    VcpuState,
    VmEvent,
    VmState,
    check_state,
    hc_index,
    may_transition,
    vcpu_transition,
    vm_transition,
)
from acrn.emu.hv.vm import HvVm, Vcpu
from acrn.emu.platform import SEVERITY_SERVICE_VM, Platform, VmConfig
from acrn.emu.service_vm_memory import ServiceVmMemory

log = logging.getLogger(__name__)

_U16: Final = 0xFFFF


@dataclass
class Target:
    """The VM a hypercall resolved to: a config slot and its live VM (None while POWERED_OFF)."""

    abs_id: int
    config: VmConfig
    vm: HvVm | None

    @property
    def state(self) -> VmState:
        return self.vm.state if self.vm is not None else VmState.POWERED_OFF

    def severity_pass(self) -> bool:
        """``is_severity_pass``: the target's severity is at most the Service VM's."""
        return self.config.severity <= SEVERITY_SERVICE_VM

    def has_buffer(self) -> bool:
        return self.vm is not None and self.vm.ioreq_buffer is not None


#: Dispatch indexes whose table entry carries permission flags (Trusty, TEE): the Service VM's guest
#: flags never contain them, so they are -ENOTTY for it
#: (``hypervisor/arch/x86/guest/vmcall.c: dispatch_hypercall``).
_PERMISSION_FLAGGED: Final = frozenset(
    hc_index(h)
    for h in (
        HC_INITIALIZE_TRUSTY,
        HC_WORLD_SWITCH,
        HC_SAVE_RESTORE_SWORLD_CTX,
        HC_TEE_VCPU_BOOT_DONE,
        HC_SWITCH_EE,
    )
)
#: Handlers ACRN has but pyacrn does not emulate (debug, sbuf, asyncio): they answer -1.
_NOT_EMULATED: Final = frozenset(
    hc_index(h)
    for h in (
        uapi.HC_ASYNCIO_ASSIGN,
        uapi.HC_ASYNCIO_DEASSIGN,
        uapi.HC_SETUP_SBUF,
        HC_SETUP_HV_NPK_LOG,
        HC_PROFILING_OPS,
        HC_GET_HW_INFO,
    )
)

#: A handler: ``hcall_xxx(hv, target, param1, param2)`` -> the signed RAX value.
Handler: TypeAlias = Callable[["Hypervisor", Target, int, int], int]

#: The handlers by dispatch index (NOTIFY_REQUEST_FINISH has its own entry in Hypervisor.hypercall),
#: as ``hypervisor/arch/x86/guest/vmcall.c: hc_dispatch_table`` has them.
_HANDLERS: Final[dict[int, Handler]] = {
    **dict.fromkeys(_NOT_EMULATED | _PERMISSION_FLAGGED, hc_general.hcall_not_emulated),
    **{
        hc_index(hcid): handler
        for hcid, handler in (
            (uapi.HC_GET_API_VERSION, hc_general.hcall_get_api_version),
            (uapi.HC_SOS_REMOVE_CPU, hc_general.hcall_service_vm_offline_cpu),
            (uapi.HC_SET_CALLBACK_VECTOR, hc_general.hcall_set_callback_vector),
            (uapi.HC_CREATE_VM, hc_vm.hcall_create_vm),
            (uapi.HC_DESTROY_VM, hc_vm.hcall_destroy_vm),
            (uapi.HC_START_VM, hc_vm.hcall_start_vm),
            (uapi.HC_PAUSE_VM, hc_vm.hcall_pause_vm),
            (uapi.HC_CREATE_VCPU, hc_vm.hcall_create_vcpu),
            (uapi.HC_RESET_VM, hc_vm.hcall_reset_vm),
            (uapi.HC_SET_VCPU_REGS, hc_vm.hcall_set_vcpu_regs),
            (uapi.HC_INJECT_MSI, hc_irq.hcall_inject_msi),
            (uapi.HC_VM_INTR_MONITOR, hc_irq.hcall_vm_intr_monitor),
            (uapi.HC_SET_IRQLINE, hc_irq.hcall_set_irqline),
            (uapi.HC_SET_IOREQ_BUFFER, hc_ioreq.hcall_set_ioreq_buffer),
            (uapi.HC_VM_GPA2HPA, hc_memory.hcall_gpa_to_hpa),
            (uapi.HC_VM_SET_MEMORY_REGIONS, hc_memory.hcall_set_vm_memory_regions),
            (uapi.HC_VM_WRITE_PROTECT_PAGE, hc_memory.hcall_write_protect_page),
            (uapi.HC_SET_PTDEV_INTR, hc_devices.hcall_set_ptdev_intr_info),
            (uapi.HC_RESET_PTDEV_INTR, hc_devices.hcall_reset_ptdev_intr_info),
            (uapi.HC_ASSIGN_PCIDEV, hc_devices.hcall_assign_pcidev),
            (uapi.HC_DEASSIGN_PCIDEV, hc_devices.hcall_deassign_pcidev),
            (uapi.HC_ASSIGN_MMIODEV, hc_devices.hcall_assign_mmiodev),
            (uapi.HC_DEASSIGN_MMIODEV, hc_devices.hcall_deassign_mmiodev),
            (uapi.HC_CREATE_VDEV, hc_devices.hcall_add_vdev),
            (uapi.HC_DESTROY_VDEV, hc_devices.hcall_remove_vdev),
            (uapi.HC_PM_GET_CPU_STATE, hc_pm.hcall_get_cpu_pm_state),
        )
    },
}

_CREATE_VM_IDX: Final = hc_index(uapi.HC_CREATE_VM)

#: The HC_STATE_RULES entry of HC_NOTIFY_REQUEST_FINISH, applied inline by its shortcut (the shape that code
#: relies on is asserted here; a test compares it with check_state for every state).
_NOTIFY_IDX: Final = hc_index(uapi.HC_NOTIFY_REQUEST_FINISH)
_NOTIFY_RULE: Final = HC_STATE_RULES[_NOTIFY_IDX]
assert _NOTIFY_RULE.severity is Severity.REQUIRED and _NOTIFY_RULE.needs_ioreq_buffer
_NOTIFY_ALLOWED: Final = tuple(_NOTIFY_RULE.allowed)


class Hypervisor:
    """The emulated ACRN hypervisor as the Service VM sees it through hypercalls."""

    def __init__(self, platform: Platform | None = None, memory: ServiceVmMemory | None = None) -> None:
        self.platform = platform if platform is not None else Platform.default()
        self.memory = memory if memory is not None else ServiceVmMemory()
        #: Held during every hypercall and every runtime entry point; re-entrant for listeners.
        self.lock = threading.RLock()
        #: Refuse (-1) SET_VCPU_REGS states that fail the processor's VM-entry checks (level ``arch``
        #: of acrn.regs.validate).  Off by default, since ACRN accepts them.
        self.strict_arch = False
        # ACRN mutates its vm_configs (dynamic names, DM-owned flags, affinity): work on copies.
        self.vm_configs: list[VmConfig] = [dataclasses.replace(c) for c in self.platform.vm_configs]
        self._configured_affinity = [c.cpu_affinity for c in self.platform.vm_configs]
        self.service_vm_id = self.platform.service_vm_id
        #: The upcall vector the HSM is notified on (HC_SET_CALLBACK_VECTOR changes it).
        self.upcall_vector = self.platform.default_upcall_vector
        self._vms: dict[int, HvVm] = {}
        #: Views of the 16 slots of each ioreq page in use, made once per page (the hot path).
        self._slot_views: dict[int, list[tuple[uapi.acrn_io_request, memoryview]]] = {}
        self._notify = Broadcast()
        self._upcall: Callable[[], None] | None = None
        svc = self.vm_configs[self.service_vm_id]
        booted = vm_transition(VmEvent.START, vm_transition(VmEvent.CREATE, VmState.POWERED_OFF))
        self.service_vm = self._build_vm(self.service_vm_id, svc, svc.cpu_affinity, booted)
        for v in self.service_vm.vcpus:  # the Service VM runs from boot on
            v.state = vcpu_transition(VcpuEvent.LAUNCH, v.state)
        self._vms[self.service_vm_id] = self.service_vm

    # ------------------------------------------------------------------ public interface
    def hypercall(self, hcid: int, param1: int = 0, param2: int = 0) -> int:
        """VMCALL from the Service VM at CPL 0: dispatch by ``hcid & 0xFF`` (``dispatch_hypercall``),
        resolve the target VM (relative vmid; pre-launched or out of range -> -ENOTTY), run the handler
        under the lock and return the signed RAX value."""
        param1 &= (1 << 64) - 1
        param2 &= (1 << 64) - 1
        if hc_index(hcid) == _NOTIFY_IDX:
            return self._notify_request_finish(param1, param2)
        with self.lock:
            # Only the low byte indexes the table; the 0x80 << 24 prefix is never checked.
            idx = hc_index(hcid)
            handler = _HANDLERS.get(idx)
            if handler is None or idx in _PERMISSION_FLAGGED:
                return ENOTTY
            target = self._parse_target(hcid & ((1 << 64) - 1), param1)
            if target is None or target.config.load_order == "pre":
                return ENOTTY
            if idx != _CREATE_VM_IDX:  # CREATE_VM checks its slot itself (its failure path clears names)
                err = check_state(idx, target.state, target.severity_pass(), target.has_buffer())
                if err is not None:
                    return err
            ret = handler(self, target, param1, param2)
            log.debug("hypercall %#x(%#x, %#x) -> %d", hcid, param1, param2, ret)
            return ret

    def _notify_request_finish(self, param1: int, param2: int) -> int:
        """HC_NOTIFY_REQUEST_FINISH (``hcall_notify_ioreq_finish``), once per I/O exit, whatever
        the bits above the dispatch byte: the steps of :meth:`hypercall` (target ``(u16)param1``,
        as ``parse_target_vm`` gives for this id; -ENOTTY for a pre-launched one; the HC_STATE_RULES
        check) without building the generic target, then the handler."""
        with self.lock:
            abs_id = (self.service_vm_id + (param1 & _U16)) & _U16
            if abs_id >= self.platform.max_vm_num:
                return ENOTTY
            config = self.vm_configs[abs_id]
            if config.load_order == "pre":
                return ENOTTY
            vm = self._vms.get(abs_id)
            # check_state's NOTIFY rule (_NOTIFY_RULE: alive, severity required, buffer needed),
            # with the allowed states compared by identity rather than hashed.
            if (
                vm is None
                or vm.state not in _NOTIFY_ALLOWED
                or config.severity > SEVERITY_SERVICE_VM
                or vm.ioreq_buffer is None
            ):
                return _NOTIFY_RULE.error
            # No debug log here, unlike the other hypercalls: this one runs on every I/O exit.
            vcpu_id = param2 & _U16
            if vcpu_id >= vm.vcpu_num:
                return -1
            if not vm.is_polling_ioreq:
                self._notify.request_completed(vm, vcpu_id)  # signal_event(VCPU_EVENT_IOREQ)
            return 0

    def vm(self, rel_vmid: int) -> HvVm | None:
        """The live VM with this relative id (the Service VM is 0 by default), or None."""
        with self.lock:
            return self._vms.get(self._abs(rel_vmid))

    def vms(self) -> list[HvVm]:
        """Every live User VM (the Service VM, ``service_vm``, is not listed)."""
        with self.lock:
            return [vm for i, vm in sorted(self._vms.items()) if i != self.service_vm_id]

    def vcpu_state(self, rel_vmid: int, vcpu_id: int) -> CpuState:
        """A copy of the landed architectural state of a vCPU; KeyError if there is no such vCPU."""
        with self.lock:
            vm = self.vm(rel_vmid)
            vcpu = vm.vcpu(vcpu_id) if vm is not None else None
            if vcpu is None:
                raise KeyError(f"no vCPU {vcpu_id} in VM {rel_vmid}")
            return vcpu.regs.copy()

    def add_listener(self, listener: HvListener) -> None:
        with self.lock:
            self._notify.listeners.append(listener)

    def remove_listener(self, listener: HvListener) -> None:
        with self.lock:
            if listener in self._notify.listeners:
                self._notify.listeners.remove(listener)

    def set_upcall(self, callback: Callable[[], None] | None) -> None:
        """Register the HSM's upcall handler (what vector 0xF3 runs in the Service VM kernel)."""
        with self.lock:
            self._upcall = callback

    def vcpu_started(self, rel_vmid: int, vcpu_id: int) -> None:
        """Runtime hook: the guest started an AP with INIT/SIPI, VCPU_INIT -> VCPU_RUNNING
        (``vlapic.c: vlapic_process_init_sipi``); nothing if the vCPU is not waiting in INIT."""
        with self.lock:
            vm = self.vm(rel_vmid)
            vcpu = vm.vcpu(vcpu_id) if vm is not None else None
            if vcpu is not None and vcpu.state == VcpuState.INIT:
                vcpu.state = vcpu_transition(VcpuEvent.SIPI, vcpu.state)

    def poweroff_rt_vm(self, rel_vmid: int) -> None:
        """Runtime hook: the guest of an RTVM powered itself off (``poweroff_if_rt_vm``)."""
        with self.lock:
            vm = self.vm(rel_vmid)
            if (
                vm is not None
                and vm.guest_flags & uapi.GUEST_FLAG_RT
                and may_transition(VmEvent.RT_POWEROFF, vm.state)
            ):
                vm.state = vm_transition(VmEvent.RT_POWEROFF, vm.state)

    def force_shutdown(self, rel_vmid: int) -> bool:
        """Emulator only: pause and destroy a VM whatever its severity (ACRN would leak it when its
        fd is closed while it runs, see ``docs/differences.md``; the emulator frees it instead).  False if
        absent."""
        with self.lock:
            vm = self.vm(rel_vmid)
            if vm is None:
                return False
            t = Target(vm.abs_id, vm.config, vm)
            if vm.state != VmState.PAUSED:  # whatever its severity
                hc_vm.pause_vm(self, vm, vm_transition(VmEvent.PAUSE, vm.state))
            hc_vm.hcall_destroy_vm(self, t, 0, 0)
            return True

    # ------------------------------------------------------------------ public interface: ioreq (io_req.py)
    def ioreq_slot(self, rel_vmid: int, vcpu_id: int) -> uapi.acrn_io_request | None:
        """A live view of a vCPU's slot in the VM's shared ioreq page, or None without a buffer."""
        with self.lock:
            vm = self.vm(rel_vmid)
            if vm is None or vm.ioreq_buffer is None or not 0 <= vcpu_id < uapi.ACRN_IO_REQUEST_MAX:
                return None
            return vm_slot(self, vm, vcpu_id)

    def vcpu_ioreq(self, rel_vmid: int, vcpu_id: int) -> VcpuIoreq | None:
        """A :class:`VcpuIoreq` for a vCPU of a live VM with an ioreq page, else None."""
        with self.lock:
            vm = self._vms.get(self._abs(rel_vmid))
            vcpu = vm.vcpu(vcpu_id) if vm is not None else None
            if vm is None or vcpu is None or vm.ioreq_buffer is None:
                return None
            return VcpuIoreq(self, rel_vmid, vcpu_id, vm, vcpu, vm.ioreq_buffer)

    def insert_request(
        self,
        rel_vmid: int,
        vcpu_id: int,
        type: int,
        reqs: bytes | None = None,
        *,
        direction: int = uapi.ACRN_IOREQ_DIR_READ,
        address: int = 0,
        size: int = 0,
        value: int = 0,
    ) -> int:
        """``acrn_insert_request`` for a vCPU (:meth:`VcpuIoreq.insert`): the 64-byte ``reqs``
        union, or the fields of a PIO/MMIO request; -EINVAL without the VM, vCPU or page."""
        ioreq = self.vcpu_ioreq(rel_vmid, vcpu_id)
        if ioreq is None:
            return EINVAL
        return ioreq.insert(type, direction, address, size, value, reqs)

    def request_state(self, rel_vmid: int, vcpu_id: int) -> int | None:
        """The ``processed`` state of a vCPU's slot, or None without a buffer."""
        with self.lock:
            vm = self.vm(rel_vmid)
            if vm is None or vm.ioreq_buffer is None or vm.vcpu(vcpu_id) is None:
                return None
            return int(vm_slot(self, vm, vcpu_id).processed)

    def complete_request(self, rel_vmid: int, vcpu_id: int) -> int | None:
        """``dm_emulate_io_complete``'s post-work for a vCPU (:meth:`VcpuIoreq.complete`)."""
        ioreq = self.vcpu_ioreq(rel_vmid, vcpu_id)
        return None if ioreq is None else ioreq.complete()

    # ------------------------------------------------------------------ helpers
    def _abs(self, rel_vmid: int) -> int:
        return (self.service_vm_id + rel_vmid) & _U16  # rel_vmid_2_vmid is u16 arithmetic

    def _rel(self, abs_id: int) -> int:
        return (abs_id - self.service_vm_id) & _U16

    def _slot_target(self, abs_id: int) -> Target | None:
        if abs_id >= self.platform.max_vm_num:
            return None
        return Target(abs_id, self.vm_configs[abs_id], self._vms.get(abs_id))

    def _parse_target(self, hcid: int, param1: int) -> Target | None:
        """``parse_target_vm``: it switches on the FULL hypercall id, unlike the dispatch (``vmcall.c``),
        so e.g. 0x10 without the 0x80 prefix runs CREATE_VM's handler on the slot ``(u16)param1``."""
        if hcid == uapi.HC_CREATE_VM:
            data = self.memory.read(param1, ctypes.sizeof(uapi.acrn_vm_creation))
            if data is None:
                return None
            cv = uapi.acrn_vm_creation.from_buffer_copy(data)
            name = _vm_name(bytes(cv.uuid.b))
            abs_id = self._vmid_by_name(name)
            if abs_id is None:
                abs_id = self._allocate_dynamic_vmid(name, int(cv.cpu_affinity))
            return None if abs_id is None else self._slot_target(abs_id)
        if hcid == uapi.HC_PM_GET_CPU_STATE:
            return self._slot_target(self._abs((param1 & uapi.PMCMD_VMID_MASK) >> uapi.PMCMD_VMID_SHIFT))
        if hcid == uapi.HC_VM_SET_MEMORY_REGIONS:
            data = self.memory.read(param1, ctypes.sizeof(uapi.vm_memory_region_batch))
            if data is None:
                return None
            return self._slot_target(self._abs(uapi.vm_memory_region_batch.from_buffer_copy(data).vmid))
        if hcid in (uapi.HC_GET_API_VERSION, uapi.HC_SOS_REMOVE_CPU, uapi.HC_SET_CALLBACK_VECTOR) or hcid in (
            0x80000061,
            0x80000062,
            0x80000063,
        ):
            return self._slot_target(self.service_vm_id)
        return self._slot_target(self._abs(param1 & _U16))

    def _vmid_by_name(self, name: str) -> int | None:
        if name == "":
            return None
        for i, c in enumerate(self.vm_configs):
            if c.name == name:
                return i
        return None

    def _allocate_dynamic_vmid(self, name: str, cpu_affinity: int) -> int | None:
        for i, c in enumerate(self.vm_configs):
            if c.is_dynamic:
                # ACRN copies the creator's name and affinity into the slot before any check.
                c.name = name
                c.cpu_affinity = cpu_affinity
                return i
        return None

    def _build_vm(self, abs_id: int, cfg: VmConfig, pcpu_bitmap: int, state: VmState) -> HvVm:
        vm = HvVm(
            vmid=self._rel(abs_id),
            abs_id=abs_id,
            name=cfg.name,
            config=cfg,
            state=state,
            guest_flags=cfg.guest_flags,
            cpu_affinity=pcpu_bitmap,
        )
        pcpus = [p for p in range(64) if pcpu_bitmap >> p & 1]
        for vcpu_id, pcpu in enumerate(pcpus):
            # Every vLAPIC gets its pCPU's physical LAPIC ID, in every VM (ACRN v3.3
            # hypervisor/arch/x86/guest/vlapic.c: vlapic_init, "Set vLAPIC ID to be same as pLAPIC
            # ID"); acrn-dm writes those IDs into the guest's MADT from the Service VM's.  The
            # emulated board numbers its LAPICs by pCPU id.
            vm.vcpus.append(Vcpu(vcpu_id, pcpu, pcpu, vcpu_transition(VcpuEvent.CREATE, VcpuState.OFFLINE)))
        return vm


def _vm_name(raw: bytes) -> str:
    """The NUL-terminated VM name the hypervisor reads from ``acrn_vm_creation.uuid`` (``docs/abi.md``)."""
    return raw.split(b"\0", 1)[0].decode("latin-1")
