"""SET_MEMSEG / UNSET_MEMSEG, the kernel side (spec 6.5).

RAM: ``vma_base`` is a user address of this process; its pages are "pinned" (must be mapped
writable: the kernel always pins with FOLL_WRITE) and handed to the hypervisor as Service VM
physical addresses, which in the emulator are the same addresses (see ``acrn.emu.hostmem``).
One region is made per compound page: per 4 KB page, or per huge page inside a hugetlb mapping.

Emulator difference: the VM_PFNMAP path (device memory mapped with remap_pfn_range) is not
modelled; every RAM range goes through the pinning path.
"""

from __future__ import annotations

import errno
import logging

from acrn import uapi
from acrn.emu.hostmem import PAGE_SIZE
from acrn.emu.hsm.uaccess import Fault
from acrn.emu.hsm.vm import ACRN_MEM_MAPPING_MAX, HsmVm

log = logging.getLogger("acrn.emu.hsm")


def _page_sizes(start: int, end: int) -> list[tuple[int, int, int]]:
    """(vma start, vma end, kernel page size) of the mappings overlapping [start, end), from smaps."""
    out: list[tuple[int, int, int]] = []
    cur: tuple[int, int] | None = None
    with open("/proc/self/smaps", "rb") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if b"-" in first and not first.endswith(b":"):
                lo, hi = (int(x, 16) for x in first.split(b"-"))
                cur = (lo, hi) if lo < end and hi > start else None
            elif cur is not None and first == b"KernelPageSize:":
                out.append((cur[0], cur[1], int(line.split()[1]) * 1024))
    return out


def _regions(
    vm: HsmVm, vma_base: int, size: int, user_vm_pa: int, attr: int
) -> list[uapi.vm_memory_region_op]:
    """One ADD region per compound page, ``user_vm_pa`` increasing (``acrn_vm_ram_map``)."""
    huge = [(lo, hi, ps) for lo, hi, ps in _page_sizes(vma_base, vma_base + size) if ps > PAGE_SIZE]
    regions: list[uapi.vm_memory_region_op] = []
    off = 0
    while off < size:
        va = vma_base + off
        step = PAGE_SIZE
        for lo, hi, ps in huge:
            if lo <= va < hi and va % ps == 0:
                step = min(ps, size - off)
                break
        regions.append(
            uapi.vm_memory_region_op(
                type=uapi.MR_ADD,
                attr=uapi.ACRN_MEM_TYPE_WB | (attr & uapi.ACRN_MEM_ACCESS_RIGHT_MASK),
                user_vm_pa=(user_vm_pa + off) & ((1 << 64) - 1),
                service_vm_pa=va,
                size=step,
            )
        )
        off += step
    return regions


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
    base = memmap.vma_base
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
    ret = set_memory_regions(vm, _regions(vm, base, size, memmap.user_vm_pa, memmap.attr))
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
    # The caller's memory-type bits are ignored: MMIO is always UC (spec 12.18).
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
    """``acrn_vm_all_ram_unmap``: unpin everything; ``regions_mapping_count`` is not reset (spec 12.12)."""
    for base, size in vm.ram_mappings:
        vm.driver.pins.unpin(base, size)
    vm.ram_mappings.clear()
