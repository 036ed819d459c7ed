"""The VM lifecycle hypercalls (``hypervisor/common/hypercall.c``): create, destroy, start, pause,
reset a VM, create a vCPU, set a vCPU's registers.  Every state change goes through the tables of
:mod:`acrn.emu.hv.state`; the listeners hear of it after it is made."""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hv.io_req import free_slots
from acrn.emu.hv.state import (
    BSP_VCPU_ID,
    EINVAL,
    VcpuEvent,
    VcpuState,
    VmEvent,
    VmState,
    vcpu_transition,
    vm_transition,
)
from acrn.rules import is_valid_cr0_cr4, land_vcpu_regs, reset_vcpu_state

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target
    from acrn.emu.hv.vm import HvVm

log = logging.getLogger(__name__)


def hcall_create_vm(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    cfg = t.config
    ret = -1
    vmid_out: int | None = None
    data = hv.memory.read(p1, ctypes.sizeof(uapi.acrn_vm_creation))
    if data is not None and t.state == VmState.POWERED_OFF:
        cv = uapi.acrn_vm_creation.from_buffer_copy(data)
        mask = uapi.DM_OWNED_GUEST_FLAG_MASK
        cfg.guest_flags = (cfg.guest_flags & ~mask) | (int(cv.vm_flag) & mask)
        # A post-launched VM may only choose pCPUs from the slot's affinity; 0 = all of them.
        if int(cv.cpu_affinity) & ~cfg.cpu_affinity == 0:
            pcpu_bitmap = int(cv.cpu_affinity) or cfg.cpu_affinity
            if pcpu_bitmap == 0 and not cfg.guest_flags & uapi.GUEST_FLAG_STATIC_VM:
                # emulator choice (acrn.emu.hv.hypervisor's module doc)
                pcpu_bitmap = hv._configured_affinity[t.abs_id]
            lapic_pt = cfg.guest_flags & uapi.GUEST_FLAG_LAPIC_PASSTHROUGH
            if lapic_pt and not cfg.guest_flags & uapi.GUEST_FLAG_RT:
                log.debug("create_vm: LAPIC_PASSTHROUGH without RT")
            else:
                vm = create_vm(hv, t, pcpu_bitmap)
                if vm is not None:
                    vmid_out = vm.vmid
                    cv.vmid = vm.vmid
                    cv.vcpu_num = vm.vcpu_num
                else:
                    cv.vmid = uapi.ACRN_INVALID_VMID  # create_vm failed: the call still returns 0
                ret = 0 if hv.memory.write(p1, bytes(cv)) else EINVAL
    if (ret != 0 or vmid_out is None) and not cfg.guest_flags & uapi.GUEST_FLAG_STATIC_VM:
        cfg.name = ""
    if vmid_out is not None:
        vm = hv._vms[t.abs_id]
        hv._notify.vm_created(vm)
    return ret


def create_vm(hv: Hypervisor, t: Target, pcpu_bitmap: int) -> HvVm | None:
    """``create_vm`` (``vm.c``): the checks pyacrn can make, then the VM in its slot."""
    cfg = t.config
    if pcpu_bitmap & ~hv.platform.all_pcpus:
        return None  # prepare_vcpu on a pCPU the board does not have
    if cfg.guest_flags & uapi.GUEST_FLAG_SECURE_WORLD_ENABLED and not cfg.sworld:
        return None  # no secure-world memory reserved for this slot (get_sworld_vm_index < 0)
    if cfg.name == "":
        cfg.name = f"ACRN VM_{t.abs_id}"  # create_vm names an anonymous VM after its id
    vm = hv._build_vm(t.abs_id, cfg, pcpu_bitmap, vm_transition(VmEvent.CREATE, VmState.POWERED_OFF))
    hv._vms[t.abs_id] = vm
    return vm


def hcall_destroy_vm(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
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
    del hv._vms[t.abs_id]
    if vm.ioreq_buffer is not None:
        hv._slot_views.pop(vm.ioreq_buffer, None)
    hv._notify.vm_destroyed(vm)
    return 0


def hcall_start_vm(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    vm.state = vm_transition(VmEvent.START, vm.state)
    # Only the BSP is launched; APs wait in INIT for the guest's INIT/SIPI.
    bsp = vm.vcpus[BSP_VCPU_ID]
    bsp.state = vcpu_transition(VcpuEvent.LAUNCH, bsp.state)
    hv._notify.vm_started(vm)
    return 0


def hcall_pause_vm(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    new = vm_transition(VmEvent.PAUSE, vm.state, t.severity_pass())
    if new != vm.state:
        pause_vm(hv, vm, new)
    # 0 even when nothing changed (PAUSED again, or a RUNNING higher-severity VM): hcall_pause_vm.
    return 0


def pause_vm(hv: Hypervisor, vm: HvVm, new: VmState) -> None:
    """``pause_vm``: every vCPU a zombie, then the VM's new state, then the listeners."""
    for vcpu in vm.vcpus:
        vcpu.state = vcpu_transition(VcpuEvent.PAUSE, vcpu.state)
    vm.state = new
    hv._notify.vm_paused(vm)


def hcall_reset_vm(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    for vcpu in vm.vcpus:
        vcpu.regs = reset_vcpu_state()
        vcpu.set_regs = None
        vcpu.tsc_aux = 0  # COLD_RESET is not INIT_RESET
        vcpu.state = vcpu_transition(VcpuEvent.RESET, vcpu.state)
        vcpu.io_type = None
    if vm.ioreq_buffer is not None:
        free_slots(hv, vm)
    vm.ioapic_lines.clear()  # vIOAPIC/vPIC reset
    vm.pic_lines.clear()
    vm.state = vm_transition(VmEvent.RESET, vm.state)
    hv._notify.vm_reset(vm)
    return 0


def hcall_create_vcpu(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    return 0


def hcall_set_vcpu_regs(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    # hcall_set_vcpu_regs, in order; its state check is the HC_STATE_RULES one.
    vm = t.vm
    assert vm is not None
    if p2 == 0:
        return -1
    data = hv.memory.read(p2, ctypes.sizeof(uapi.acrn_vcpu_regs))
    if data is None:
        return -1
    vr = uapi.acrn_vcpu_regs.from_buffer_copy(data)
    if vr.vcpu_id >= hv.platform.pcpu_num:  # MAX_VCPUS_PER_VM, not the VM's vCPU count
        return -1
    vcpu = vm.vcpu(vr.vcpu_id)
    if vcpu is None or vcpu.state == VcpuState.OFFLINE:
        return -1
    if not is_valid_cr0_cr4(int(vr.vcpu_regs.cr0), int(vr.vcpu_regs.cr4), hv.platform.cr_masks):
        return -1
    if hv.strict_arch and _arch_errors(hv, data):
        return -1  # emulator option, off by default: ACRN itself accepts these states
    vcpu.regs = land_vcpu_regs(vr.vcpu_regs, vcpu.regs)
    vcpu.set_regs = data
    return 0


def _arch_errors(hv: Hypervisor, blob: bytes) -> list[str]:
    """Errors the processor's VM-entry checks would raise for this state (acrn.regs.validate)."""
    from acrn.regs.model import VcpuRegs
    from acrn.regs.validate import validate

    found = validate(VcpuRegs.from_bytes(blob), level="arch", platform=hv.platform)
    return [f.message for f in found if f.severity == "error" and f.level == "arch"]
