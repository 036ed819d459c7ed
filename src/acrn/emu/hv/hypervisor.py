"""The emulated ACRN hypervisor: VM config slots, hypercall dispatch and handlers, ioreq insertion.

Pure state and rules (no threads, fds or KVM).  The emulated HSM driver calls :meth:`Hypervisor.hypercall`
exactly as the kernel issues VMCALLs: parameters are "Service VM physical addresses", which in pyacrn
are addresses in this process (:mod:`acrn.emu.service_vm_memory`).  A runtime drives running vCPUs from the
state kept here and learns about changes through :class:`HvListener` callbacks.

Emulator choices where ACRN has no observable answer (each is documented at its handler):
* physical devices do not exist: PCI/MMIO passthrough and vdevs are bookkeeping only;
* a dynamic slot created with ``cpu_affinity == 0`` uses the slot's platform-configured pCPUs
  (ACRN would have overwritten them with the creator's 0 and built a VM with no vCPU);
* debug/profiling, sbuf and asyncio hypercalls are recognised but return -1 (not emulated).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from acrn import uapi
from acrn.arch import CpuState
from acrn.emu.hv.state import (
    BSP_VCPU_ID,
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
from acrn.emu.hv.vm import EptRegion, HvVm, PtdevIntx, Vcpu
from acrn.emu.platform import (
    NR_VPIC_PINS_TOTAL,
    REDIR_ENTRIES_HW,
    SEVERITY_SERVICE_VM,
    VIOAPIC_RTE_NUM,
    Platform,
    VmConfig,
)
from acrn.emu.service_vm_memory import ServiceVmMemory
from acrn.rules import is_valid_cr0_cr4, land_vcpu_regs, reset_vcpu_state

log = logging.getLogger(__name__)

HV_API_MAJOR_VERSION: Final = 1
HV_API_MINOR_VERSION: Final = 0
VECTOR_DYNAMIC_START: Final = 0x20
NR_MAX_VECTOR: Final = 0xFF
PAGE_SIZE: Final = 4096
_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
_U64: Final = (1 << 64) - 1
#: The 64-byte ``reqs`` union holding a PIO / MMIO request, zero-filled after it (as the copy of a
#: zero-initialised union is), and the head both share: direction at 0, size at 16.
_PIO_REQS: Final = struct.Struct("<IIQQI36x")
_MMIO_REQS: Final = struct.Struct("<IIQQQ32x")
_REQS_HEAD: Final = struct.Struct("<I12xQ")
_REQS_OFFSET: Final = uapi.acrn_io_request.reqs.offset

# Hypervisor-emulated vdev ids (hcall_add_vdev's table): vendor | device << 16.
IVSHMEM_DEV_ID: Final = 0x1AF4 | (0x1110 << 16)
MCS9900_DEV_ID: Final = 0x9710 | (0x9900 << 16)
VRP_DEV_ID: Final = 0x8086 | (0x9D14 << 16)

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
_CREATE_VM_IDX: Final = hc_index(uapi.HC_CREATE_VM)


class HvListener:
    """What the hypervisor tells about state changes: subclass it and override what you need.

    The callbacks run synchronously under ``Hypervisor.lock``, after the state changed, on the
    thread that made the hypercall.  They must not block; they may read the hypervisor's state.
    """

    def vm_created(self, vm: HvVm) -> None:
        """CREATE_VM made ``vm``."""

    def vm_started(self, vm: HvVm) -> None:
        """START_VM: the BSP is RUNNING."""

    def vm_paused(self, vm: HvVm) -> None:
        """PAUSE_VM (or the emulator's forced shutdown) made every vCPU a zombie."""

    def vm_reset(self, vm: HvVm) -> None:
        """RESET_VM: the vCPUs are back in INIT with their power-on registers."""

    def vm_destroyed(self, vm: HvVm) -> None:
        """DESTROY_VM: ``vm`` is gone."""

    def memory_changed(self, vm: HvVm) -> None:
        """SET_MEMORY_REGIONS or WRITE_PROTECT_PAGE changed the EPT."""

    def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
        """NOTIFY_REQUEST_FINISH signalled the vCPU's IOREQ event."""

    def irqline(self, vm: HvVm, gsi: int, op: int) -> None:
        """SET_IRQLINE was accepted."""

    def msi(self, vm: HvVm, addr: int, data: int) -> None:
        """INJECT_MSI was accepted."""


class _Broadcast(HvListener):
    """Every registered listener, called in order: the hypervisor's one typed way to notify."""

    def __init__(self) -> None:
        self.listeners: list[HvListener] = []

    def vm_created(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_created(vm)

    def vm_started(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_started(vm)

    def vm_paused(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_paused(vm)

    def vm_reset(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_reset(vm)

    def vm_destroyed(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_destroyed(vm)

    def memory_changed(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.memory_changed(vm)

    def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
        for listener in list(self.listeners):
            listener.request_completed(vm, vcpu_id)

    def irqline(self, vm: HvVm, gsi: int, op: int) -> None:
        for listener in list(self.listeners):
            listener.irqline(vm, gsi, op)

    def msi(self, vm: HvVm, addr: int, data: int) -> None:
        for listener in list(self.listeners):
            listener.msi(vm, addr, data)


@dataclass
class _Target:
    """The VM a hypercall resolved to: a config slot and its live VM (None while POWERED_OFF)."""

    abs_id: int
    config: VmConfig
    vm: HvVm | None

    @property
    def state(self) -> VmState:
        return self.vm.state if self.vm is not None else VmState.POWERED_OFF


_Handler = Callable[[_Target, int, int], int]

#: The HC_STATE_RULES entry of HC_NOTIFY_REQUEST_FINISH, applied inline by its shortcut (the shape that code
#: relies on is asserted here; a test compares it with check_state for every state).
_NOTIFY_IDX: Final = hc_index(uapi.HC_NOTIFY_REQUEST_FINISH)
_NOTIFY_RULE: Final = HC_STATE_RULES[_NOTIFY_IDX]
assert _NOTIFY_RULE.severity is Severity.REQUIRED and _NOTIFY_RULE.needs_ioreq_buffer
_NOTIFY_ALLOWED: Final = tuple(_NOTIFY_RULE.allowed)


class VcpuIoreq:
    """One vCPU's slot of a VM's ioreq page: the hypervisor side of that vCPU's I/O exits.

    The only implementation of ``acrn_insert_request`` and of ``dm_emulate_io_complete``'s
    post-work (``hypervisor/dm/io_req.c``); :meth:`Hypervisor.insert_request` and
    :meth:`Hypervisor.complete_request` bind one and call it.  The VM, vCPU and slot are looked up
    once; every call checks under ``hv.lock`` that the same live VM still has the same page and
    otherwise looks them up again by vmid (a VM destroyed and created again, a page set again), so
    a binding is never stale.  Without a live VM, vCPU or page, insert is -EINVAL and complete None,
    as ACRN's checks give.
    """

    __slots__ = ("abs_id", "buf", "hv", "polling", "raw", "rel_vmid", "slot", "vcpu", "vcpu_id", "vm")

    def __init__(self, hv: Hypervisor, rel_vmid: int, vcpu_id: int, vm: HvVm, vcpu: Vcpu, buf: int) -> None:
        self.hv = hv
        self.rel_vmid = rel_vmid
        self.vcpu_id = vcpu_id
        self._bind(vm, vcpu, buf)

    def _bind(self, vm: HvVm, vcpu: Vcpu, buf: int) -> None:
        self.abs_id = vm.abs_id
        self.vm = vm
        self.vcpu = vcpu
        self.buf = buf
        self.slot, self.raw = self.hv._slot(buf, self.vcpu_id)
        self.polling = vm.is_polling_ioreq  # guest flags and load order are fixed for a VM's life

    def bound(self) -> bool:
        """Whether the binding holds, looking it up again if not (caller holds ``hv.lock``)."""
        hv = self.hv
        vm = self.vm
        if hv._vms.get(self.abs_id) is vm and vm.ioreq_buffer == self.buf:
            return True
        live = hv._vms.get(hv._abs(self.rel_vmid))
        vcpu = live.vcpu(self.vcpu_id) if live is not None else None
        if live is None or vcpu is None or live.ioreq_buffer is None:
            return False
        self._bind(live, vcpu, live.ioreq_buffer)
        return True

    def insert(
        self, type: int, direction: int, address: int, size: int, value: int, reqs: bytes | None = None
    ) -> int:
        """``acrn_insert_request``: put a request in the slot, then fire the upcall (outside the lock).

        Needs the slot FREE (else -EINVAL).  Writes ``type`` and the 64-byte ``reqs`` union whole,
        as ACRN copies it: either the given bytes or a PIO/MMIO request built from the fields
        (``value`` as given: 0 for a read), zeros after it; then completion_polling = 1 in polling
        mode (never 0), then processed = PENDING, the store that hands the request over.
        """
        hv = self.hv
        with hv.lock:
            vm = self.vm
            if (hv._vms.get(self.abs_id) is not vm or vm.ioreq_buffer != self.buf) and not self.bound():
                return EINVAL
            slot = self.slot
            if slot.processed != uapi.ACRN_IOREQ_STATE_FREE:
                return EINVAL
            slot.type = type
            if reqs is not None:
                data = bytes(reqs)[:64].ljust(64, b"\0")
                self.raw[_REQS_OFFSET : _REQS_OFFSET + 64] = data
                direction, size = _REQS_HEAD.unpack_from(data)
            elif type == uapi.ACRN_IOREQ_TYPE_MMIO:
                direction, size = direction & _U32, size & _U64
                _MMIO_REQS.pack_into(self.raw, _REQS_OFFSET, direction, 0, address & _U64, size, value & _U64)
            else:
                direction, size = direction & _U32, size & _U64
                _PIO_REQS.pack_into(self.raw, _REQS_OFFSET, direction, 0, address & _U64, size, value & _U32)
            if self.polling:
                slot.completion_polling = 1
            vcpu = self.vcpu
            vcpu.io_type, vcpu.io_direction, vcpu.io_size = type, direction, size
            slot.processed = uapi.ACRN_IOREQ_STATE_PENDING
            upcall = hv._upcall
        if upcall is not None:
            upcall()
        return 0

    def complete(self) -> int | None:
        """``dm_emulate_io_complete``'s post-work, only for a COMPLETE slot, which it frees.

        Returns None when the slot was not COMPLETE (nothing done), else the value a read returns
        (PIO/PCICFG: ``pio_request.value`` masked to the access size; MMIO: ``mmio_request.value``),
        0 for writes and for ZOMBIE vCPUs (whose slot is just freed).  The hypervisor uses the type
        *it* inserted: a PORTIO the kernel rewrote to PCICFG keeps PIO post-work, which works
        because their first 28 bytes match.
        """
        hv = self.hv
        with hv.lock:
            vm = self.vm
            if (hv._vms.get(self.abs_id) is not vm or vm.ioreq_buffer != self.buf) and not self.bound():
                return None
            slot = self.slot
            if slot.processed != uapi.ACRN_IOREQ_STATE_COMPLETE:
                return None
            value = 0
            vcpu = self.vcpu
            if vcpu.io_direction == uapi.ACRN_IOREQ_DIR_READ and vcpu.state != VcpuState.ZOMBIE:
                if vcpu.io_type == uapi.ACRN_IOREQ_TYPE_MMIO:
                    value = int(slot.reqs.mmio_request.value)
                elif vcpu.io_type in (uapi.ACRN_IOREQ_TYPE_PORTIO, uapi.ACRN_IOREQ_TYPE_PCICFG):
                    size = vcpu.io_size if 1 <= vcpu.io_size <= 4 else 4
                    value = int(slot.reqs.pio_request.value) & ((1 << (8 * size)) - 1)
            slot.processed = uapi.ACRN_IOREQ_STATE_FREE
            return value


_T = TypeVar("_T", bound=ctypes.Structure)


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
        self._notify = _Broadcast()
        self._upcall: Callable[[], None] | None = None
        svc = self.vm_configs[self.service_vm_id]
        booted = vm_transition(VmEvent.START, vm_transition(VmEvent.CREATE, VmState.POWERED_OFF))
        self.service_vm = self._build_vm(self.service_vm_id, svc, svc.cpu_affinity, booted)
        for v in self.service_vm.vcpus:  # the Service VM runs from boot on
            v.state = vcpu_transition(VcpuEvent.LAUNCH, v.state)
        self._vms[self.service_vm_id] = self.service_vm
        #: The handlers by dispatch index (NOTIFY_REQUEST_FINISH has its own entry in hypercall()).
        self._handlers: dict[int, _Handler] = {
            hc_index(hcid): handler
            for hcid, handler in (
                (uapi.HC_GET_API_VERSION, self._hc_get_api_version),
                (uapi.HC_SOS_REMOVE_CPU, self._hc_service_vm_offline_cpu),
                (uapi.HC_SET_CALLBACK_VECTOR, self._hc_set_callback_vector),
                (uapi.HC_CREATE_VM, self._hc_create_vm),
                (uapi.HC_DESTROY_VM, self._hc_destroy_vm),
                (uapi.HC_START_VM, self._hc_start_vm),
                (uapi.HC_PAUSE_VM, self._hc_pause_vm),
                (uapi.HC_CREATE_VCPU, self._hc_create_vcpu),
                (uapi.HC_RESET_VM, self._hc_reset_vm),
                (uapi.HC_SET_VCPU_REGS, self._hc_set_vcpu_regs),
                (uapi.HC_INJECT_MSI, self._hc_inject_msi),
                (uapi.HC_VM_INTR_MONITOR, self._hc_vm_intr_monitor),
                (uapi.HC_SET_IRQLINE, self._hc_set_irqline),
                (uapi.HC_SET_IOREQ_BUFFER, self._hc_set_ioreq_buffer),
                (uapi.HC_VM_GPA2HPA, self._hc_gpa2hpa),
                (uapi.HC_VM_SET_MEMORY_REGIONS, self._hc_set_memory_regions),
                (uapi.HC_VM_WRITE_PROTECT_PAGE, self._hc_write_protect_page),
                (uapi.HC_SET_PTDEV_INTR, self._hc_set_ptdev_intr),
                (uapi.HC_RESET_PTDEV_INTR, self._hc_reset_ptdev_intr),
                (uapi.HC_ASSIGN_PCIDEV, self._hc_assign_pcidev),
                (uapi.HC_DEASSIGN_PCIDEV, self._hc_deassign_pcidev),
                (uapi.HC_ASSIGN_MMIODEV, self._hc_assign_mmiodev),
                (uapi.HC_DEASSIGN_MMIODEV, self._hc_deassign_mmiodev),
                (uapi.HC_CREATE_VDEV, self._hc_add_vdev),
                (uapi.HC_DESTROY_VDEV, self._hc_remove_vdev),
                (uapi.HC_PM_GET_CPU_STATE, self._hc_get_cpu_pm_state),
            )
        }
        for idx in _NOT_EMULATED | _PERMISSION_FLAGGED:
            self._handlers[idx] = self._hc_not_emulated

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
            handler = self._handlers.get(idx)
            if handler is None or idx in _PERMISSION_FLAGGED:
                return ENOTTY
            target = self._parse_target(hcid & ((1 << 64) - 1), param1)
            if target is None or target.config.load_order == "pre":
                return ENOTTY
            if idx != _CREATE_VM_IDX:  # CREATE_VM checks its slot itself (its failure path clears names)
                err = check_state(idx, target.state, self._severity_pass(target), self._has_buffer(target))
                if err is not None:
                    return err
            ret = handler(target, param1, param2)
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
            t = _Target(vm.abs_id, vm.config, vm)
            if vm.state != VmState.PAUSED:  # whatever its severity
                self._pause(vm, vm_transition(VmEvent.PAUSE, vm.state))
            self._hc_destroy_vm(t, 0, 0)
            return True

    # ------------------------------------------------------------------ ioreq, hypervisor side
    def _slot(self, buf: int, vcpu_id: int) -> tuple[uapi.acrn_io_request, memoryview]:
        """The slot of ``vcpu_id`` in the page at ``buf``: a struct view and a byte view."""
        views = self._slot_views.get(buf)
        if views is None:
            views = []
            for i in range(uapi.ACRN_IO_REQUEST_MAX):
                req = uapi.acrn_io_request.from_address(buf + i * ctypes.sizeof(uapi.acrn_io_request))
                views.append((req, memoryview(req).cast("B")))
            self._slot_views[buf] = views
        return views[vcpu_id]

    def _ioreq_slot(self, vm: HvVm, vcpu_id: int) -> uapi.acrn_io_request:
        assert vm.ioreq_buffer is not None
        return self._slot(vm.ioreq_buffer, vcpu_id)[0]

    def ioreq_slot(self, rel_vmid: int, vcpu_id: int) -> uapi.acrn_io_request | None:
        """A live view of a vCPU's slot in the VM's shared ioreq page, or None without a buffer."""
        with self.lock:
            vm = self.vm(rel_vmid)
            if vm is None or vm.ioreq_buffer is None or not 0 <= vcpu_id < uapi.ACRN_IO_REQUEST_MAX:
                return None
            return self._ioreq_slot(vm, vcpu_id)

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
            return int(self._ioreq_slot(vm, vcpu_id).processed)

    def complete_request(self, rel_vmid: int, vcpu_id: int) -> int | None:
        """``dm_emulate_io_complete``'s post-work for a vCPU (:meth:`VcpuIoreq.complete`)."""
        ioreq = self.vcpu_ioreq(rel_vmid, vcpu_id)
        return None if ioreq is None else ioreq.complete()

    # ------------------------------------------------------------------ helpers
    def _abs(self, rel_vmid: int) -> int:
        return (self.service_vm_id + rel_vmid) & _U16  # rel_vmid_2_vmid is u16 arithmetic

    def _rel(self, abs_id: int) -> int:
        return (abs_id - self.service_vm_id) & _U16

    def _severity_pass(self, t: _Target) -> bool:
        return t.config.severity <= SEVERITY_SERVICE_VM

    @staticmethod
    def _has_buffer(t: _Target) -> bool:
        return t.vm is not None and t.vm.ioreq_buffer is not None

    def _slot_target(self, abs_id: int) -> _Target | None:
        if abs_id >= self.platform.max_vm_num:
            return None
        return _Target(abs_id, self.vm_configs[abs_id], self._vms.get(abs_id))

    def _parse_target(self, hcid: int, param1: int) -> _Target | None:
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

    # ------------------------------------------------------------------ handlers: general
    def _hc_not_emulated(self, t: _Target, p1: int, p2: int) -> int:
        return -1

    def _hc_get_api_version(self, t: _Target, p1: int, p2: int) -> int:
        data = HV_API_MAJOR_VERSION.to_bytes(4, "little") + HV_API_MINOR_VERSION.to_bytes(4, "little")
        return 0 if self.memory.write(p1, data) else EINVAL

    def _hc_service_vm_offline_cpu(self, t: _Target, p1: int, p2: int) -> int:
        lapic_id = p1 & 0xFFFFFFFF
        for vcpu in self.service_vm.vcpus:
            if vcpu.lapic_id == lapic_id and vcpu.state != VcpuState.OFFLINE:
                if vcpu.vcpu_id == BSP_VCPU_ID:
                    return -1  # the BSP is never offlined
                vcpu.state = vcpu_transition(VcpuEvent.OFFLINE, vcpu.state)
        return 0

    def _hc_set_callback_vector(self, t: _Target, p1: int, p2: int) -> int:
        if p1 > NR_MAX_VECTOR or p1 < VECTOR_DYNAMIC_START:
            return EINVAL
        self.upcall_vector = p1
        return 0

    # ------------------------------------------------------------------ handlers: VM lifecycle
    def _hc_create_vm(self, t: _Target, p1: int, p2: int) -> int:
        cfg = t.config
        ret = -1
        vmid_out: int | None = None
        data = self.memory.read(p1, ctypes.sizeof(uapi.acrn_vm_creation))
        if data is not None and t.state == VmState.POWERED_OFF:
            cv = uapi.acrn_vm_creation.from_buffer_copy(data)
            mask = uapi.DM_OWNED_GUEST_FLAG_MASK
            cfg.guest_flags = (cfg.guest_flags & ~mask) | (int(cv.vm_flag) & mask)
            # A post-launched VM may only choose pCPUs from the slot's affinity; 0 = all of them.
            if int(cv.cpu_affinity) & ~cfg.cpu_affinity == 0:
                pcpu_bitmap = int(cv.cpu_affinity) or cfg.cpu_affinity
                if pcpu_bitmap == 0 and not cfg.guest_flags & uapi.GUEST_FLAG_STATIC_VM:
                    pcpu_bitmap = self._configured_affinity[t.abs_id]  # emulator choice, module doc
                lapic_pt = cfg.guest_flags & uapi.GUEST_FLAG_LAPIC_PASSTHROUGH
                if lapic_pt and not cfg.guest_flags & uapi.GUEST_FLAG_RT:
                    log.debug("create_vm: LAPIC_PASSTHROUGH without RT")
                else:
                    vm = self._create_vm(t, pcpu_bitmap)
                    if vm is not None:
                        vmid_out = vm.vmid
                        cv.vmid = vm.vmid
                        cv.vcpu_num = vm.vcpu_num
                    else:
                        cv.vmid = uapi.ACRN_INVALID_VMID  # create_vm failed: the call still returns 0
                    ret = 0 if self.memory.write(p1, bytes(cv)) else EINVAL
        if (ret != 0 or vmid_out is None) and not cfg.guest_flags & uapi.GUEST_FLAG_STATIC_VM:
            cfg.name = ""
        if vmid_out is not None:
            vm = self._vms[t.abs_id]
            self._notify.vm_created(vm)
        return ret

    def _create_vm(self, t: _Target, pcpu_bitmap: int) -> HvVm | None:
        cfg = t.config
        if pcpu_bitmap & ~self.platform.all_pcpus:
            return None  # prepare_vcpu on a pCPU the board does not have
        if cfg.guest_flags & uapi.GUEST_FLAG_SECURE_WORLD_ENABLED and not cfg.sworld:
            return None  # no secure-world memory reserved for this slot (get_sworld_vm_index < 0)
        if cfg.name == "":
            cfg.name = f"ACRN VM_{t.abs_id}"  # create_vm names an anonymous VM after its id
        vm = self._build_vm(t.abs_id, cfg, pcpu_bitmap, vm_transition(VmEvent.CREATE, VmState.POWERED_OFF))
        self._vms[t.abs_id] = vm
        return vm

    def _hc_destroy_vm(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        vm.state = vm_transition(VmEvent.DESTROY, vm.state)
        for vcpu in vm.vcpus:
            vcpu.state = vcpu_transition(VcpuEvent.DESTROY, vcpu.state)
        vm.memory_regions = []
        vm.pcidevs.clear()
        vm.mmiodevs.clear()
        vm.vdevs.clear()
        vm.ptdev_intx.clear()
        cfg = t.config
        cfg.guest_flags &= ~uapi.DM_OWNED_GUEST_FLAG_MASK
        if not cfg.guest_flags & uapi.GUEST_FLAG_STATIC_VM:
            cfg.name = ""
        del self._vms[t.abs_id]
        if vm.ioreq_buffer is not None:
            self._slot_views.pop(vm.ioreq_buffer, None)
        self._notify.vm_destroyed(vm)
        return 0

    def _hc_start_vm(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        vm.state = vm_transition(VmEvent.START, vm.state)
        # Only the BSP is launched; APs wait in INIT for the guest's INIT/SIPI.
        bsp = vm.vcpus[BSP_VCPU_ID]
        bsp.state = vcpu_transition(VcpuEvent.LAUNCH, bsp.state)
        self._notify.vm_started(vm)
        return 0

    def _hc_pause_vm(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        new = vm_transition(VmEvent.PAUSE, vm.state, self._severity_pass(t))
        if new != vm.state:
            self._pause(vm, new)
        # 0 even when nothing changed (PAUSED again, or a RUNNING higher-severity VM): hcall_pause_vm.
        return 0

    def _pause(self, vm: HvVm, new: VmState) -> None:
        """``pause_vm``: every vCPU a zombie, then the VM's new state, then the listeners."""
        for vcpu in vm.vcpus:
            vcpu.state = vcpu_transition(VcpuEvent.PAUSE, vcpu.state)
        vm.state = new
        self._notify.vm_paused(vm)

    def _hc_reset_vm(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        for vcpu in vm.vcpus:
            vcpu.regs = reset_vcpu_state()
            vcpu.set_regs = None
            vcpu.tsc_aux = 0  # COLD_RESET is not INIT_RESET
            vcpu.state = vcpu_transition(VcpuEvent.RESET, vcpu.state)
            vcpu.io_type = None
        if vm.ioreq_buffer is not None:
            for i in range(uapi.ACRN_IO_REQUEST_MAX):
                self._ioreq_slot(vm, i).processed = uapi.ACRN_IOREQ_STATE_FREE
        vm.ioapic_lines.clear()  # vIOAPIC/vPIC reset
        vm.pic_lines.clear()
        vm.state = vm_transition(VmEvent.RESET, vm.state)
        self._notify.vm_reset(vm)
        return 0

    def _hc_create_vcpu(self, t: _Target, p1: int, p2: int) -> int:
        return 0

    def _hc_set_vcpu_regs(self, t: _Target, p1: int, p2: int) -> int:
        # hcall_set_vcpu_regs, in order; its state check is the HC_STATE_RULES one.
        vm = t.vm
        assert vm is not None
        if p2 == 0:
            return -1
        data = self.memory.read(p2, ctypes.sizeof(uapi.acrn_vcpu_regs))
        if data is None:
            return -1
        vr = uapi.acrn_vcpu_regs.from_buffer_copy(data)
        if vr.vcpu_id >= self.platform.pcpu_num:  # MAX_VCPUS_PER_VM, not the VM's vCPU count
            return -1
        vcpu = vm.vcpu(vr.vcpu_id)
        if vcpu is None or vcpu.state == VcpuState.OFFLINE:
            return -1
        if not is_valid_cr0_cr4(int(vr.vcpu_regs.cr0), int(vr.vcpu_regs.cr4), self.platform.cr_masks):
            return -1
        if self.strict_arch and self._arch_errors(data):
            return -1  # emulator option, off by default: ACRN itself accepts these states
        vcpu.regs = land_vcpu_regs(vr.vcpu_regs, vcpu.regs)
        vcpu.set_regs = data
        return 0

    def _arch_errors(self, blob: bytes) -> list[str]:
        """Errors the processor's VM-entry checks would raise for this state (acrn.regs.validate)."""
        from acrn.regs.model import VcpuRegs
        from acrn.regs.validate import validate

        found = validate(VcpuRegs.from_bytes(blob), level="arch", platform=self.platform)
        return [f.message for f in found if f.severity == "error" and f.level == "arch"]

    # ------------------------------------------------------------------ handlers: interrupts
    def _hc_inject_msi(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        data = self.memory.read(p2, ctypes.sizeof(uapi.acrn_msi_entry))
        if data is None:
            return -1
        msi = uapi.acrn_msi_entry.from_buffer_copy(data)
        addr, value = int(msi.msi_addr), int(msi.msi_data)
        if (addr >> 20) & 0xFFF != 0xFEE:  # not an MSI address: vlapic_inject_msi refuses it
            return -1
        vm.msis.append((addr, value))
        self._notify.msi(vm, addr, value)
        return 0

    def _hc_set_irqline(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        gsi, op = p2 & 0xFFFFFFFF, (p2 >> 32) & 0xFFFFFFFF  # {u32 gsi; u32 op} by value
        gsi_count = REDIR_ENTRIES_HW if t.config.load_order == "service" else VIOAPIC_RTE_NUM
        if gsi >= gsi_count:
            return -1
        final = {
            uapi.GSI_SET_HIGH: 1,
            uapi.GSI_SET_LOW: 0,
            uapi.GSI_RAISING_PULSE: 0,
            uapi.GSI_FALLING_PULSE: 1,
        }.get(op)
        if final is not None:  # any other op does nothing but still succeeds
            if gsi < NR_VPIC_PINS_TOTAL:
                vm.pic_lines[0 if gsi == 2 else gsi] = final  # the PIT: IOAPIC pin 2 is PIC IRQ 0
            vm.ioapic_lines[gsi] = final
        self._notify.irqline(vm, gsi, op)
        return 0

    def _hc_vm_intr_monitor(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        size = 8 + 8 * 2 * uapi.MAX_PTDEV_NUM
        if not self.memory.valid(p2, size, write=True):
            return EINVAL
        page = (ctypes.c_uint64 * (size // 8)).from_address(p2)
        cmd, buf_cnt = page[0] & 0xFFFFFFFF, page[0] >> 32
        if buf_cnt > 2 * uapi.MAX_PTDEV_NUM:
            return EINVAL
        if cmd == uapi.INTR_CMD_GET_DATA:
            words = 0
            for entry in vm.ptdev_intx:  # (physical irq, count) pairs; nothing fires physically
                if words + 2 > buf_cnt:
                    break
                page[1 + words], page[2 + words] = entry.phys_pin, 0
                words += 2
            page[0] = cmd | (words << 32)
        elif cmd == uapi.INTR_CMD_DELAY_INT:
            vm.intr_inject_delay_ms = int(page[1])
        else:
            return EINVAL
        vm.intr_monitor_page = p2
        return 0

    # ------------------------------------------------------------------ handlers: ioreq
    def _hc_set_ioreq_buffer(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        data = self.memory.read(p2, 8)
        if data is None:
            return -1
        iobuf = int.from_bytes(data, "little")
        if not self.memory.valid(iobuf, uapi.ACRN_IO_REQUEST_BUFFER_SIZE, write=True):
            vm.ioreq_buffer = None  # unmapped GPA: the buffer is dropped (hcall_set_ioreq_buffer)
            return -1
        vm.ioreq_buffer = iobuf
        for i in range(uapi.ACRN_IO_REQUEST_MAX):
            self._ioreq_slot(vm, i).processed = uapi.ACRN_IOREQ_STATE_FREE
        return 0

    # ------------------------------------------------------------------ handlers: memory
    def _hc_set_memory_regions(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        data = self.memory.read(p1, ctypes.sizeof(uapi.vm_memory_region_batch))
        if data is None:
            return -1
        batch = uapi.vm_memory_region_batch.from_buffer_copy(data)
        ret = -1  # an empty batch returns -1, a failed copy keeps the previous region's result
        changed = False
        op_size = ctypes.sizeof(uapi.vm_memory_region_op)
        for idx in range(batch.regions_num):
            raw = self.memory.read(int(batch.regions_gpa) + idx * op_size, op_size)
            if raw is None:
                break
            ret = self._set_memory_region(vm, uapi.vm_memory_region_op.from_buffer_copy(raw))
            if ret < 0:
                break  # earlier regions stay applied
            changed = True
        if changed:
            self._notify.memory_changed(vm)
        return ret

    def _set_memory_region(self, vm: HvVm, op: uapi.vm_memory_region_op) -> int:
        size, gpa, attr = int(op.size), int(op.user_vm_pa), int(op.attr)
        if size & (PAGE_SIZE - 1):
            return EINVAL
        if op.type == uapi.MR_ADD:
            if not self.memory.valid(int(op.service_vm_pa), size):
                return EINVAL  # not valid in the Service VM's EPT
            vm.ept_add(EptRegion(gpa, int(op.service_vm_pa), size, attr & uapi.ACRN_MEM_ACCESS_RIGHT_MASK,
                                 _memtype(attr)))  # fmt: skip
            return 0
        # Every other type (DEL, but also MODIFY or garbage) takes ACRN's delete branch.
        if not vm.is_mapped(gpa, size):
            return EINVAL
        vm.ept_del(gpa, size)
        return 0

    def _hc_gpa2hpa(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        data = self.memory.read(p2, 16)
        if data is None:
            return -1
        hpa = vm.gpa2hpa(int.from_bytes(data[:8], "little"))
        if hpa is None:
            return -1
        return 0 if self.memory.write(p2, data[:8] + hpa.to_bytes(8, "little")) else EINVAL

    def _hc_write_protect_page(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        data = self.memory.read(p2, 16)  # struct wp_data {u64 gpa; u8 set; u8 pad[7]}
        if data is None:
            return -1
        gpa, set_wp = int.from_bytes(data[:8], "little"), data[8] != 0
        if not self._severity_pass(t) or gpa & (PAGE_SIZE - 1) or not vm.is_mapped(gpa, PAGE_SIZE):
            return EINVAL
        region = next(r for r in vm.memory_regions if r.gpa <= gpa < r.end)
        prot = (
            region.prot & ~uapi.ACRN_MEM_ACCESS_WRITE if set_wp else region.prot | uapi.ACRN_MEM_ACCESS_WRITE
        )
        vm.ept_add(EptRegion(gpa, region.hpa + (gpa - region.gpa), PAGE_SIZE, prot, region.memtype))
        self._notify.memory_changed(vm)
        return 0

    # ------------------------------------------------------------------ handlers: devices
    def _read_struct(self, addr: int, cls: type[_T]) -> _T | None:
        data = self.memory.read(addr, ctypes.sizeof(cls))
        return None if data is None else cls.from_buffer_copy(data)

    def _ptdev_lookup(self, vm: HvVm, irq: uapi.acrn_ptdev_irq) -> tuple[bool, bool] | None:
        """(pic_pin, virt_pin_ok) for a valid INTx request on an assigned device, else None."""
        if irq.type != uapi.ACRN_PTDEV_IRQ_INTX:
            return None
        dev = vm.pcidevs.get(int(irq.virt_bdf))
        if dev is None or dev.phys_bdf != irq.phys_bdf:
            return None
        pic_pin = (irq.intx.is_pic_pin & 0xFF) != 0  # the hypervisor reads a bool + 3 reserved bytes
        gsi_count = NR_VPIC_PINS_TOTAL if pic_pin else VIOAPIC_RTE_NUM
        return pic_pin, irq.intx.virt_pin < gsi_count

    def _hc_set_ptdev_intr(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        irq = self._read_struct(p2, uapi.acrn_ptdev_irq)
        found = self._ptdev_lookup(vm, irq) if irq is not None else None
        if irq is None or found is None:
            return -1
        pic_pin, virt_ok = found
        if not virt_ok or irq.intx.phys_pin >= self.platform.phys_gsi_num:
            return -1
        self._remove_intx(vm, int(irq.intx.virt_pin), pic_pin)
        vm.ptdev_intx.append(
            PtdevIntx(
                int(irq.virt_bdf), int(irq.phys_bdf), int(irq.intx.virt_pin), int(irq.intx.phys_pin), pic_pin
            )
        )
        return 0

    def _hc_reset_ptdev_intr(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        irq = self._read_struct(p2, uapi.acrn_ptdev_irq)
        found = self._ptdev_lookup(vm, irq) if irq is not None else None
        if irq is None or found is None or not found[1]:
            return -1
        self._remove_intx(vm, int(irq.intx.virt_pin), found[0])
        return 0

    @staticmethod
    def _remove_intx(vm: HvVm, virt_pin: int, pic_pin: bool) -> None:
        vm.ptdev_intx = [e for e in vm.ptdev_intx if not (e.virt_pin == virt_pin and e.pic_pin == pic_pin)]

    def _phys_bdf_owner(self, phys_bdf: int) -> HvVm | None:
        for vm in self._vms.values():
            if any(d.phys_bdf == phys_bdf for d in vm.pcidevs.values()):
                return vm
        return None

    def _hc_assign_pcidev(self, t: _Target, p1: int, p2: int) -> int:
        # Physical devices do not exist here: the platform lists the BDFs the Service VM "owns";
        # one that is unknown or already given to a VM is -ENODEV, as vpci_assign_pcidev says.
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_pcidev)
        if dev is None:
            return EINVAL
        if dev.phys_bdf not in self.platform.pci_devices or self._phys_bdf_owner(int(dev.phys_bdf)):
            return -errno.ENODEV
        vm.pcidevs[int(dev.virt_bdf)] = dev
        return 0

    def _hc_deassign_pcidev(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_pcidev)
        if dev is None:
            return EINVAL
        cur = vm.pcidevs.get(int(dev.virt_bdf))
        if cur is None or cur.phys_bdf != dev.phys_bdf:
            return -errno.ENODEV
        del vm.pcidevs[int(dev.virt_bdf)]
        vm.ptdev_intx = [e for e in vm.ptdev_intx if e.virt_bdf != dev.virt_bdf]
        return 0

    def _hc_assign_mmiodev(self, t: _Target, p1: int, p2: int) -> int:
        # Bookkeeping only: resources must be page-aligned and not already given to a VM.
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_mmiodev)
        if dev is None:
            return EINVAL
        for res in dev.res:
            if res.size == 0:
                continue
            if (res.user_vm_pa | res.service_vm_pa | res.size) & (PAGE_SIZE - 1):
                return EINVAL
            lo, hi = int(res.service_vm_pa), int(res.service_vm_pa + res.size)
            for other in self._vms.values():
                for d in other.mmiodevs:
                    if any(r.size and r.service_vm_pa < hi and lo < r.service_vm_pa + r.size for r in d.res):
                        return EINVAL
        vm.mmiodevs.append(dev)
        return 0

    def _hc_deassign_mmiodev(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_mmiodev)
        if dev is None:
            return EINVAL
        for i, d in enumerate(vm.mmiodevs):
            if bytes(d.res) == bytes(dev.res):
                del vm.mmiodevs[i]
                return 0
        return EINVAL

    def _vdev_has_create(self, dev_id: int) -> bool | None:
        """None: not in the table; else whether the entry has a create op."""
        if dev_id == IVSHMEM_DEV_ID:
            return self.platform.ivshmem_enabled
        if dev_id in (MCS9900_DEV_ID, VRP_DEV_ID):
            return True
        return None

    def _hc_add_vdev(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_vdev)
        if dev is None or not self._vdev_has_create(int(dev.id.value)):
            return EINVAL
        bdf = int(dev.slot) & _U16
        if bdf in vm.vdevs or bdf in vm.pcidevs:
            return EINVAL  # the vBDF is taken
        vm.vdevs[bdf] = dev
        return 0

    def _hc_remove_vdev(self, t: _Target, p1: int, p2: int) -> int:
        vm = t.vm
        assert vm is not None
        dev = self._read_struct(p2, uapi.acrn_vdev)
        if dev is None or self._vdev_has_create(int(dev.id.value)) is None:
            return EINVAL
        bdf = int(dev.slot) & _U16  # the vdev is found by BDF = low 16 bits of slot
        if bdf not in vm.vdevs:
            return EINVAL
        del vm.vdevs[bdf]
        return 0

    # ------------------------------------------------------------------ handlers: PM
    def _hc_get_cpu_pm_state(self, t: _Target, p1: int, p2: int) -> int:
        cmd_type = p1 & uapi.PMCMD_TYPE_MASK
        cx = self.platform.cx_states
        if cmd_type == uapi.ACRN_PMCMD_GET_PX_CNT:
            # vHWP: continuous P-states, px_cnt 0; P-state passthrough is hard-wired off otherwise.
            if not t.config.vhwp:
                return -1
            return 0 if self.memory.write(p2, b"\0") else EINVAL
        if cmd_type == uapi.ACRN_PMCMD_GET_PX_DATA:
            return -1
        if cmd_type == uapi.ACRN_PMCMD_GET_CX_CNT:
            return 0 if self.memory.write(p2, bytes([len(cx)])) else EINVAL  # one byte
        if cmd_type == uapi.ACRN_PMCMD_GET_CX_DATA:
            n = (p1 & uapi.PMCMD_STATE_NUM_MASK) >> uapi.PMCMD_STATE_NUM_SHIFT
            if not cx or n == 0 or n > len(cx):
                return -1
            return 0 if self.memory.write(p2, cx[n - 1].to_bytes()) else EINVAL
        return -1


def _vm_name(raw: bytes) -> str:
    """The NUL-terminated VM name the hypervisor reads from ``acrn_vm_creation.uuid`` (``docs/abi.md``)."""
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _memtype(attr: int) -> int:
    """ACRN's memory-type priority for a region: WB > WT > WC > WP > UC (``hcall_set_vm_memory_regions``)."""
    for t in (uapi.ACRN_MEM_TYPE_WB, uapi.ACRN_MEM_TYPE_WT, uapi.ACRN_MEM_TYPE_WC, uapi.ACRN_MEM_TYPE_WP):
        if attr & t:
            return t
    return uapi.ACRN_MEM_TYPE_UC
