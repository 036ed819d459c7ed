"""SET_MEMSEG / UNSET_MEMSEG, the kernel side (``drivers/virt/acrn/mm.c``: ``acrn_vm_memseg_map``,
``acrn_vm_memseg_unmap``, ``acrn_vm_ram_map``).

RAM: ``vma_base`` is a user address of this process; its pages are "pinned" (must be mapped
writable: the kernel always pins with FOLL_WRITE) and handed to the hypervisor as Service VM
physical addresses, which in the emulator are the same addresses (see ``acrn.emu.service_vm_memory``).
The batch has one region per SET_MEMSEG instead of one per compound page (see :func:`_regions`).

Emulator difference: the VM_PFNMAP path (device memory mapped with remap_pfn_range) is not
modelled; every RAM range goes through the pinning path.
"""

from __future__ import annotations

import errno
import logging

from acrn import uapi
from acrn.emu.hsm.uaccess import PAGE_MASK, Fault
from acrn.emu.hsm.vm import ACRN_MEM_MAPPING_MAX, HsmVm
from acrn.emu.service_vm_memory import PAGE_SIZE

log = logging.getLogger("acrn.emu.hsm")


def _regions(vma_base: int, size: int, user_vm_pa: int, attr: int) -> list[uapi.vm_memory_region_op]:
    """The ADD regions of a pinned RAM range (``acrn_vm_ram_map``).

    The kernel builds one region per compound page, because the pages' physical addresses are
    scattered.  In the emulator a page's "physical" address is its virtual address, so the pages of
    one user range are contiguous and the batch is one region with the same effect (and a cost
    independent of the size).
    """
    return [
        uapi.vm_memory_region_op(
            type=uapi.MR_ADD,
            attr=uapi.ACRN_MEM_TYPE_WB | (attr & uapi.ACRN_MEM_ACCESS_RIGHT_MASK),
            user_vm_pa=user_vm_pa,
            service_vm_pa=vma_base,
            size=size,
        )
    ]


def set_memory_regions(vm: HsmVm, regions: list[uapi.vm_memory_region_op]) -> int:
    """HC_VM_SET_MEMORY_REGIONS with a kernel copy of the batch header and of the regions."""
    mem = vm.driver.memory
    array = (uapi.vm_memory_region_op * len(regions))(*regions)
    with mem.kernel_copy(bytes(array)) as kregions:
        batch = uapi.vm_memory_region_batch(vmid=vm.vmid, regions_num=len(regions), regions_gpa=kregions.gpa)
        with mem.kernel_copy(bytes(batch)) as kbatch:
            return vm.hypercall(uapi.HC_VM_SET_MEMORY_REGIONS, kbatch.gpa, 0)


def _region(
    type_: int, attr: int, user_vm_pa: int, service_vm_pa: int, size: int
) -> uapi.vm_memory_region_op:
    return uapi.vm_memory_region_op(
        type=type_, attr=attr, user_vm_pa=user_vm_pa, service_vm_pa=service_vm_pa, size=size
    )


def ram_map(vm: HsmVm, memmap: uapi.acrn_vm_memmap) -> int:
    """``acrn_vm_ram_map``."""
    nr_pages = memmap.len >> 12
    if nr_pages == 0:
        return -errno.EINVAL
    size = nr_pages * PAGE_SIZE  # the length is truncated to whole pages
    # pin_user_pages_fast rounds the start down to its page: the regions begin at that page's
    # physical address, so an offset within the first page is dropped (as for the ioreq page).
    base = memmap.vma_base & PAGE_MASK
    pins = vm.driver.pins
    try:
        pins.pin(base, size)
    except Fault:
        return -errno.EFAULT
    if vm.regions_mapping_count >= ACRN_MEM_MAPPING_MAX:
        log.warning("VM %d: run out of memory mapping slots", vm.vmid)
        pins.unpin(base, size)
        return -errno.ENOMEM
    vm.regions_mapping_count += 1
    ret = set_memory_regions(vm, _regions(base, size, memmap.user_vm_pa, memmap.attr))
    if ret < 0:
        vm.regions_mapping_count -= 1
        pins.unpin(base, size)
        return ret
    vm.ram_mappings.append((base, size))
    return ret


def memseg_map(vm: HsmVm, memmap: uapi.acrn_vm_memmap) -> int:
    """``acrn_vm_memseg_map``: RAM pins user pages; MMIO is one UC region; other types -EINVAL."""
    if memmap.type == uapi.ACRN_MEMMAP_RAM:
        return ram_map(vm, memmap)
    if memmap.type != uapi.ACRN_MEMMAP_MMIO:
        return -errno.EINVAL
    # The caller's memory-type bits are ignored: MMIO is always UC (acrn_vm_memseg_map).
    attr = uapi.ACRN_MEM_TYPE_UC | (memmap.attr & uapi.ACRN_MEM_ACCESS_RIGHT_MASK)
    return set_memory_regions(
        vm, [_region(uapi.MR_ADD, attr, memmap.user_vm_pa, memmap.service_vm_pa, memmap.len)]
    )


def memseg_unmap(vm: HsmVm, memmap: uapi.acrn_vm_memmap) -> int:
    """``acrn_vm_memseg_unmap``: MMIO only; one DEL region."""
    if memmap.type != uapi.ACRN_MEMMAP_MMIO:
        return -errno.EINVAL
    return set_memory_regions(vm, [_region(uapi.MR_DEL, 0, memmap.user_vm_pa, 0, memmap.len)])


def all_ram_unmap(vm: HsmVm) -> None:
    """``acrn_vm_all_ram_unmap``: unpin everything; ``regions_mapping_count`` is not reset."""
    for base, size in vm.ram_mappings:
        vm.driver.pins.unpin(base, size)
    vm.ram_mappings.clear()
