"""The general hypercalls (``hypervisor/common/hypercall.c``): the API version, offlining a
Service VM vCPU, the upcall vector; and the answer of the ones pyacrn does not emulate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from acrn.emu.hv.state import BSP_VCPU_ID, EINVAL, VcpuEvent, VcpuState, vcpu_transition

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target

HV_API_MAJOR_VERSION: Final = 1
HV_API_MINOR_VERSION: Final = 0
VECTOR_DYNAMIC_START: Final = 0x20
NR_MAX_VECTOR: Final = 0xFF


def hcall_not_emulated(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    """Debug/profiling, sbuf and asyncio hypercalls, and the permission-flagged ones: -1."""
    return -1


def hcall_get_api_version(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    data = HV_API_MAJOR_VERSION.to_bytes(4, "little") + HV_API_MINOR_VERSION.to_bytes(4, "little")
    return 0 if hv.memory.write(p1, data) else EINVAL


def hcall_service_vm_offline_cpu(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    lapic_id = p1 & 0xFFFFFFFF
    for vcpu in hv.service_vm.vcpus:
        if vcpu.lapic_id == lapic_id and vcpu.state != VcpuState.OFFLINE:
            if vcpu.vcpu_id == BSP_VCPU_ID:
                return -1  # the BSP is never offlined
            vcpu.state = vcpu_transition(VcpuEvent.OFFLINE, vcpu.state)
    return 0


def hcall_set_callback_vector(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    if p1 > NR_MAX_VECTOR or p1 < VECTOR_DYNAMIC_START:
        return EINVAL
    hv.upcall_vector = p1
    return 0
