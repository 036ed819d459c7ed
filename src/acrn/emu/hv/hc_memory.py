"""The memory hypercalls (``hypervisor/common/hypercall.c``): set a VM's memory regions (its EPT),
write-protect a page, translate a GPA."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hv.state import EINVAL
from acrn.emu.hv.vm import EptRegion
from acrn.emu.service_vm_memory import PAGE_SIZE

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target
    from acrn.emu.hv.vm import HvVm


def hcall_set_vm_memory_regions(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    data = hv.memory.read(p1, ctypes.sizeof(uapi.vm_memory_region_batch))
    if data is None:
        return -1
    batch = uapi.vm_memory_region_batch.from_buffer_copy(data)
    ret = -1  # an empty batch returns -1, a failed copy keeps the previous region's result
    changed = False
    op_size = ctypes.sizeof(uapi.vm_memory_region_op)
    for idx in range(batch.regions_num):
        raw = hv.memory.read(int(batch.regions_gpa) + idx * op_size, op_size)
        if raw is None:
            break
        ret = _set_vm_memory_region(hv, vm, uapi.vm_memory_region_op.from_buffer_copy(raw))
        if ret < 0:
            break  # earlier regions stay applied
        changed = True
    if changed:
        hv._notify.memory_changed(vm)
    return ret


def _set_vm_memory_region(hv: Hypervisor, vm: HvVm, op: uapi.vm_memory_region_op) -> int:
    size, gpa, attr = int(op.size), int(op.user_vm_pa), int(op.attr)
    if size & (PAGE_SIZE - 1):
        return EINVAL
    if op.type == uapi.MR_ADD:
        if not hv.memory.valid(int(op.service_vm_pa), size):
            return EINVAL  # not valid in the Service VM's EPT
        vm.ept_add(EptRegion(gpa, int(op.service_vm_pa), size, attr & uapi.ACRN_MEM_ACCESS_RIGHT_MASK,
                             _memtype(attr)))  # fmt: skip
        return 0
    # Every other type (DEL, but also MODIFY or garbage) takes ACRN's delete branch.
    if not vm.is_mapped(gpa, size):
        return EINVAL
    vm.ept_del(gpa, size)
    return 0


def _memtype(attr: int) -> int:
    """ACRN's memory-type priority for a region: WB > WT > WC > WP > UC (``hcall_set_vm_memory_regions``)."""
    for t in (uapi.ACRN_MEM_TYPE_WB, uapi.ACRN_MEM_TYPE_WT, uapi.ACRN_MEM_TYPE_WC, uapi.ACRN_MEM_TYPE_WP):
        if attr & t:
            return t
    return uapi.ACRN_MEM_TYPE_UC


def hcall_gpa_to_hpa(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    data = hv.memory.read(p2, 16)
    if data is None:
        return -1
    hpa = vm.gpa2hpa(int.from_bytes(data[:8], "little"))
    if hpa is None:
        return -1
    return 0 if hv.memory.write(p2, data[:8] + hpa.to_bytes(8, "little")) else EINVAL


def hcall_write_protect_page(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    data = hv.memory.read(p2, 16)  # struct wp_data {u64 gpa; u8 set; u8 pad[7]}
    if data is None:
        return -1
    gpa, set_wp = int.from_bytes(data[:8], "little"), data[8] != 0
    if not t.severity_pass() or gpa & (PAGE_SIZE - 1) or not vm.is_mapped(gpa, PAGE_SIZE):
        return EINVAL
    region = next(r for r in vm.memory_regions if r.gpa <= gpa < r.end)
    prot = region.prot & ~uapi.ACRN_MEM_ACCESS_WRITE if set_wp else region.prot | uapi.ACRN_MEM_ACCESS_WRITE
    vm.ept_add(EptRegion(gpa, region.hpa + (gpa - region.gpa), PAGE_SIZE, prot, region.memtype))
    hv._notify.memory_changed(vm)
    return 0
